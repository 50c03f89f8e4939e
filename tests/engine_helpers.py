"""Test helpers that run *inside* an engine process (imported there by name: ``tests/``
is on the worker's ``sys.path``, as pytest puts it on this one's)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SLEEP_STAGE = "predict: sleeping"


def sleep_in_predict(seconds: float) -> None:
    """From now on the nnU-Net engine of this process reports once, then sleeps
    ``seconds`` inside ``predict`` without reporting: a model that ignores cooperative
    cancellation (the report says where it is, so a test can act then)."""
    from napari_spineseg.engines import nnunet

    real = getattr(nnunet.NnunetModel.predict, "__wrapped__", nnunet.NnunetModel.predict)

    @functools.wraps(real)
    def slow(self, image, report, *args, **kwargs):
        report(0.0, SLEEP_STAGE)
        time.sleep(seconds)
        return real(self, image, report, *args, **kwargs)

    nnunet.NnunetModel.predict = slow


def phantom_path(folder, name: str = "sub-01_T2w.nii.gz"):
    """The widget tests' phantom (PSR voxel order) written to ``folder/name``."""
    import nibabel as nib

    from napari_spineseg.phantom import cord_phantom

    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    path = folder / name
    nib.save(img, path)
    return path


def loaded_engines() -> list[int]:
    """Runs in the engine process: the ids of the models its engine cache holds."""
    from napari_spineseg import segmentation

    return [id(e) for e in segmentation._ENGINES.values()]


@contextlib.contextmanager
def dask_scheduler(folder: Path):
    """A dask scheduler and one worker (with its nanny) on 127.0.0.1, as a lab's GPU box
    runs them; yields ``(address, {"scheduler": Popen, "worker": Popen})``."""
    info = folder / "scheduler.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    procs = {}
    try:
        procs["scheduler"] = subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--port", "0"]
            + ["--scheduler-file", str(info), *common],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 60
        while not (info.exists() and info.stat().st_size):
            assert time.monotonic() < end and procs["scheduler"].poll() is None, "no scheduler"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", *common],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        yield address, procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def connect_when_ready(engine, timeout: float = 60.0) -> None:
    """Connect ``engine`` (a RemoteEngine) once its worker has registered."""
    from napari_spineseg.errors import EngineStoppedError

    end = time.monotonic() + timeout
    while True:
        try:
            engine.client  # noqa: B018 - connects, or says there is no worker yet
            return
        except EngineStoppedError:
            assert time.monotonic() < end, "the dask worker did not register"
            engine.close()
            time.sleep(0.2)


def worker_pid(engine, not_this: int | None = None, timeout: float = 60.0) -> int:
    """The engine worker's process id (with ``not_this``: once a new worker has replaced
    that one)."""
    end = time.monotonic() + timeout
    while True:
        try:
            (pid,) = engine.client.run(os.getpid).values()
            if pid != not_this:
                return pid
        except (OSError, ValueError):  # the killed worker is still listed, or none is
            pass
        assert time.monotonic() < end, "no new engine worker"
        time.sleep(0.1)
