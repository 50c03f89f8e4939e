"""Saves killed at random moments, and saves racing each other, never lose a version.

A *version* is what the target held at some point. After any ``kill -9`` during a save,
the target must be a complete, verified version; every version it held before must be in
``.spineseg-history`` (the last ten of them, in order, once each); the next save must
leave no temporary and no lock file. Eight processes saving the same target at once must
end with every replaced version in the history, and every sidecar entry they appended.

The saving runs in a *zygote*: this file run as a script, which imports the plugin once
and forks one child per scenario (forking costs milliseconds, a fresh Python ~1 s), so a
short fixed-seed profile runs in CI. The long profile (hundreds of kills, many races) is
``SPINESEG_SAVE_SOAK=600 pytest -m slow tests/test_save_crash.py -s``; both print their
tallies.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the zygote needs os.fork")

KILL_SHAPE = (64, 64, 48)  # ~30 ms per save: random kills land in every phase of it
RACE_SHAPE = (32, 32, 16)
RACERS = 8
SEED = int(os.environ.get("SPINESEG_SAVE_SOAK_SEED", "0"))
SOAK = int(os.environ.get("SPINESEG_SAVE_SOAK", "0"))


# ----------------------------------------------------------------- versions


@functools.cache
def _base_labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.random.default_rng(7).integers(0, 4, shape).astype(np.uint8)
    labels.flags.writeable = False
    return labels


def version_labels(k: int, shape: tuple[int, ...]) -> np.ndarray:
    """Version ``k`` of the mask: fixed labels, ``k`` spelled in two voxels."""
    labels = _base_labels(shape).copy()
    labels[0, 0, 0], labels[1, 0, 0] = divmod(k, 250)
    return labels


def decode(path: Path, shape: tuple[int, ...]) -> int:
    """The version a file holds; fails unless it is complete and exactly that version."""
    data = np.asanyarray(nib.load(str(path)).dataobj)  # reads it all: gzip CRC checked
    k = int(data[0, 0, 0]) * 250 + int(data[1, 0, 0])
    assert np.array_equal(data, version_labels(k, shape)), f"{path} is not a clean version"
    return k


def make_source(folder: Path, shape: tuple[int, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(1).integers(0, 4000, shape).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-30, 20, -40)
    path = folder / "t2.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def debris(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if "spineseg-tmp" in p.name or "spineseg-lock" in p.name
    )


# ----------------------------------------------------------------- zygote (child side)


def _emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _save(source, target: Path, k: int, shape) -> None:
    from napari_spineseg import sidecar
    from napari_spineseg.io import save_labels

    save_labels(version_labels(k, shape), target, like=source)
    sidecar.write(target, {"version": k})


def _no_hard_links() -> None:
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    os.link = refuse  # the archive falls back to copy + rename, as on FAT or SMB


def _loop(cmd: dict) -> None:
    """Child: save versions start, start+1, ... until killed."""
    from napari_spineseg.io import load

    if cmd["mode"] == "copy":
        _no_hard_links()
    source = load(cmd["source"])
    target = Path(cmd["target"])
    _emit("ready")
    for k in range(cmd["start"], cmd["start"] + 1000):
        _save(source, target, k, KILL_SHAPE)
        _emit(f"saved {k}")


def _race(cmd: dict, ready: int, gate: int) -> None:
    """Child: say it is ready, wait at the gate, save one version, append a sidecar entry."""
    from napari_spineseg import sidecar
    from napari_spineseg.io import load, save_labels

    source = load(cmd["source"])
    os.write(ready, b"r")
    os.read(gate, 1)
    k = cmd["k"]
    save_labels(version_labels(k, RACE_SHAPE), Path(cmd["target"]), like=source)
    sidecar.append_generated_by(Path(cmd["target"]), {"Name": "racer", "Version": k})


def _serve() -> None:
    import warnings

    warnings.simplefilter("ignore")
    import napari_spineseg.io  # noqa: F401 - imported once, before any fork
    import napari_spineseg.sidecar  # noqa: F401

    children: dict[int, int] = {}
    for raw in sys.stdin:
        cmd = json.loads(raw)
        if cmd["cmd"] == "loop":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    _loop(cmd)
                except BaseException as exc:  # reported to the test, never silent
                    _emit(f"error {type(exc).__name__}: {exc}")
                    code = 1
                os._exit(code)
            _emit(f"child {pid}")
        elif cmd["cmd"] == "reap":
            _, status = os.waitpid(cmd["pid"], 0)
            _emit(f"reaped {status}")
        elif cmd["cmd"] == "race":
            gate_r, gate_w = os.pipe()
            ready_r, ready_w = os.pipe()
            for racer in cmd["racers"]:
                pid = os.fork()
                if pid == 0:
                    os.close(gate_w)
                    code = 0
                    try:
                        _race(racer, ready_w, gate_r)
                    except BaseException as exc:
                        _emit(f"error {type(exc).__name__}: {exc}")
                        code = 1
                    os._exit(code)
                children[pid] = racer["k"]
            os.close(gate_r)
            os.close(ready_w)
            waiting = 0
            while waiting < len(cmd["racers"]):  # every racer has loaded its source
                got = os.read(ready_r, 64)
                assert got, "a racer died before the gate"
                waiting += len(got)
            os.close(ready_r)
            os.write(gate_w, b"x" * len(cmd["racers"]))  # open the gate for all at once
            os.close(gate_w)
            codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
            children.clear()
            _emit(f"raced {json.dumps(codes)}")


# ----------------------------------------------------------------- zygote (test side)


class Zygote:
    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def lines_until(self, prefix: str) -> tuple[str, list[str]]:
        seen = []
        while True:
            line = self.proc.stdout.readline()
            assert line, f"zygote died; last lines: {seen[-5:]}"
            line = line.strip()
            assert not line.startswith("error"), line
            if line.startswith(prefix):
                return line, seen
            seen.append(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


# ----------------------------------------------------------------- kill -9


def _check_after_kill(folder: Path, target: Path, before: int, reported: int, tally) -> int:
    """What a kill may leave: returns the version the target holds."""
    from napari_spineseg.io import writer

    now = decode(target, KILL_SHAPE)
    assert now in (max(before, reported), reported + 1), (before, reported, now)
    kept = [decode(p, KILL_SHAPE) for p in writer.history_versions(target)]
    if kept:
        assert kept == list(range(kept[0], kept[-1] + 1)), kept  # in order, once each
    if now > 0:
        assert kept and kept[-1] in (now - 1, now), (now, kept)  # nothing lost
        assert len(kept) >= min(kept[-1] + 1, writer.HISTORY_KEEP), kept
        assert len(kept) <= writer.HISTORY_KEEP + 1, kept  # at most one not yet pruned
    record = json.loads((folder / "t2_seg.json").read_text())["version"]
    assert record in (now - 1, now), (record, now)  # the sidecar: complete, never ahead
    tally["advanced"] += now > before
    tally["archived, not replaced"] += bool(kept) and kept[-1] == now
    tally["left debris"] += bool(debris(folder))
    return now


def _kill_loop(zygote, tmp_path: Path, mode: str, kills: int, seed: int) -> dict:
    from napari_spineseg.io import load, writer

    folder = tmp_path / mode
    source_path = make_source(folder, KILL_SHAPE)
    source = load(source_path)
    target = folder / "t2_seg.nii.gz"
    _save(source, target, 0, KILL_SHAPE)
    rng = random.Random(seed)
    current = 0
    tally = dict.fromkeys(("kills", "advanced", "archived, not replaced", "left debris"), 0)
    for _ in range(kills):
        zygote.send(
            cmd="loop", source=str(source_path), target=str(target), start=current + 1, mode=mode
        )
        line, _ = zygote.lines_until("child ")
        pid = int(line.split()[1])
        zygote.lines_until("ready")
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        zygote.send(cmd="reap", pid=pid)
        line, seen = zygote.lines_until("reaped ")
        tally["kills"] += int(line.split()[1]) != 0
        saved = [int(s.split()[1]) for s in seen if s.startswith("saved ")]
        reported = saved[-1] if saved else current
        now = _check_after_kill(folder, target, current, reported, tally)
        # The next save completes: no debris, and exactly the last versions in the history.
        current = now + 1
        _save(source, target, current, KILL_SHAPE)
        assert debris(folder) == []
        kept = [decode(p, KILL_SHAPE) for p in writer.history_versions(target)]
        assert kept == list(range(max(0, current - writer.HISTORY_KEEP), current))
    assert decode(target, KILL_SHAPE) == current
    return tally


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_kill_9_during_saves_loses_nothing(zygote, tmp_path, mode):
    """15 kills per archive mode (hard link; copy + rename where links fail)."""
    tally = _kill_loop(zygote, tmp_path, mode, kills=15, seed=SEED)
    print(f"\nkill -9 ({mode}): {tally}")
    assert tally["kills"] == 15


@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="long profile: set SPINESEG_SAVE_SOAK=<kills per mode>")
@pytest.mark.parametrize("mode", ["link", "copy"])
def test_kill_9_soak(zygote, tmp_path, mode):
    tally = _kill_loop(zygote, tmp_path, mode, kills=SOAK, seed=SEED + 1)
    print(f"\nkill -9 soak ({mode}): {tally}")
    assert tally["kills"] == SOAK


# ----------------------------------------------------------------- races


def _race_trials(zygote, tmp_path: Path, trials: int) -> dict:
    from napari_spineseg import sidecar
    from napari_spineseg.io import load, save_labels, writer

    tally = {"trials": 0, "versions replaced": 0, "versions lost": 0}
    for trial in range(trials):
        folder = tmp_path / f"race{trial}"
        source_path = make_source(folder, RACE_SHAPE)
        target = folder / "t2_seg.nii.gz"
        save_labels(version_labels(0, RACE_SHAPE), target, like=load(source_path))
        racers = [
            {"source": str(source_path), "target": str(target), "k": k}
            for k in range(1, RACERS + 1)
        ]
        zygote.send(cmd="race", racers=racers)
        line, _ = zygote.lines_until("raced ")
        assert json.loads(line.split(" ", 1)[1]) == [0] * RACERS
        final = decode(target, RACE_SHAPE)
        kept = [decode(p, RACE_SHAPE) for p in writer.history_versions(target)]
        assert len(kept) == len(set(kept)), kept  # each replaced version kept once
        lost = set(range(RACERS + 1)) - set(kept) - {final}
        tally["versions lost"] += len(lost)
        tally["versions replaced"] += len(kept)
        assert not lost, f"trial {trial}: versions {sorted(lost)} lost (history {kept})"
        entries = sidecar.read(target)["GeneratedBy"]
        assert sorted(e["Version"] for e in entries) == list(range(1, RACERS + 1))
        assert debris(folder) == []
        tally["trials"] += 1
    return tally


def test_concurrent_saves_lose_no_version(zygote, tmp_path):
    tally = _race_trials(zygote, tmp_path, trials=6)
    print(f"\n{RACERS} concurrent saves: {tally}")
    assert tally == {"trials": 6, "versions replaced": 6 * RACERS, "versions lost": 0}


@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="long profile: set SPINESEG_SAVE_SOAK=<kills per mode>")
def test_concurrent_saves_soak(zygote, tmp_path):
    trials = max(1, SOAK // 10)
    tally = _race_trials(zygote, tmp_path, trials=trials)
    print(f"\n{RACERS} concurrent saves, soak: {tally}")
    assert tally["versions lost"] == 0


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _serve()
