"""Batch segmentation on dask.distributed: per-item errors, one model load per worker,
outputs identical to api.segment + api.save, the `spineseg batch` command.

The model is the committed tiny stand-in of the 7T task (ivadomed ONNX), installed
offline into a temporary model store; the scans are small phantoms plus one truncated file.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api, cli, segmentation
from napari_spineseg.batch import INSTALL_HINT, default_workers, segment_many
from napari_spineseg.errors import ModelNotInstalledError, SpinesegError, UntrustedModelError
from napari_spineseg.models import store
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")

TASK = "gm_sc_7t_t2star"
SUFFIXES = ("_7t_multiclass_sc", "_7t_multiclass_gm")
ZIP_7T = (
    Path(__file__).parent
    / "data/models/gm_sc_7t/model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip"
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The tiny 7T model installed once; the env is set before any worker process starts."""
    if not ZIP_7T.is_file():
        pytest.skip(f"tiny 7T release zip not committed ({ZIP_7T})")
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.ENV_MODELS_DIR, str(root))
        mp.setenv("SPINESEG_NUM_THREADS", "1")
        api.install(TASK, ZIP_7T, trust=True, log=None)
        yield root


@pytest.fixture(autouse=True)
def _env(models_dir, monkeypatch):
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(models_dir))
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")
    segmentation.clear_engine_cache()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three phantoms (three orientations, two folders) and a truncated .nii.gz."""
    root = tmp_path_factory.mktemp("scans")
    paths = []
    for i, axcodes in enumerate(("RAS", "PSR", "LAS")):
        img, _ = cord_phantom(shape=(48, 40, 12), axcodes=axcodes, gm=True, seed=i)
        folder = root / f"sub-{i}" / "anat"
        folder.mkdir(parents=True)
        path = folder / f"sub-{i}_T2starw.nii.gz"
        nib.save(img, path)
        paths.append(path)
    bad = root / "sub-9_T2starw.nii.gz"
    data = paths[0].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return paths + [bad]


def _outputs_of(path: Path, folder: Path) -> list[Path]:
    stem = path.name[: -len(".nii.gz")]
    return [folder / f"{stem}{s}.nii.gz" for s in SUFFIXES]


# ------------------------------------------------------------------ code run in workers


def _count_loads() -> None:
    """Wrap the engine's loader in this (worker) process so that loads can be counted."""
    from napari_spineseg.engines.ivadomed_onnx import IvadomedOnnxModel

    orig = IvadomedOnnxModel.load.__func__

    @functools.wraps(orig)
    def counting(cls, *args, **kwargs):
        IvadomedOnnxModel._test_loads += 1
        return orig(cls, *args, **kwargs)

    IvadomedOnnxModel._test_loads = 0
    IvadomedOnnxModel.load = classmethod(counting)


def _read_loads() -> int:
    from napari_spineseg.engines.ivadomed_onnx import IvadomedOnnxModel

    return IvadomedOnnxModel._test_loads


def _worker_threads() -> str | None:
    return os.environ.get("SPINESEG_NUM_THREADS")


# ------------------------------------------------------------------ process cluster


@pytest.mark.slow
def test_process_workers_load_once_keep_going_and_match_api(scans, tmp_path):
    out = tmp_path / "derivatives"
    seen = []
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_count_loads)
        items = segment_many(
            scans, TASK, out_dir=out, client=client, threads_per_worker=2, progress=seen.append
        )
        loads = client.run(_read_loads)
        threads = client.run(_worker_threads)

    assert [it.path for it in items] == scans  # input order, whatever finished first
    assert [it.ok for it in items] == [True, True, True, False], [it.error for it in items]
    bad = items[-1]
    assert bad.outputs is None
    assert str(scans[-1]) in bad.error and "truncated or corrupt" in bad.error
    for it in items[:3]:
        assert it.outputs == _outputs_of(it.path, out)
        assert it.seconds > 0 and it.worker in loads
        for p in it.outputs:
            side = json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text())
            assert side["GeneratedBy"][0]["Task"] == TASK
    assert not list(out.glob("sub-9*"))

    # The engine cache lives in the worker process: one load per worker that segmented.
    used = {it.worker for it in items[:3]}
    assert all(n <= 1 for n in loads.values()), loads
    assert sum(loads.values()) == len(used) < 3
    assert all(threads[w] == "2" for w in used)

    assert seen[0].stage.startswith("dask dashboard: http://")  # once, before any file
    assert [p.step for p in seen] == [0, 1, 2, 3, 4] and seen[-1].fraction == 1.0
    assert sum("failed" in p.stage for p in seen) == 1

    # Exactly what api.segment + api.save give in this process (voxels and geometry).
    for it in items[:3]:
        ref = api.segment(it.path, task=TASK, device="cpu", return_probabilities=False)
        src = nib.load(it.path)
        for suffix, p in zip(SUFFIXES, it.outputs, strict=True):
            got = nib.load(p)
            assert np.array_equal(np.asarray(got.dataobj), ref.outputs[suffix].labels)
            assert got.get_data_dtype() == np.uint8
            assert np.array_equal(got.affine, src.affine)
            assert np.array_equal(got.header.get_qform(), src.header.get_qform())
            assert got.header["sform_code"] == src.header["sform_code"]


@pytest.mark.slow
def test_own_cluster_writes_next_to_inputs_notes_4d_and_closes(scans, tmp_path):
    img = nib.load(scans[1])
    data = np.asarray(img.dataobj)
    four_d = tmp_path / "sub-4_T2starw.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine, img.header), four_d)
    plain = tmp_path / "sub-5_T2starw.nii.gz"
    nib.save(img, plain)

    items = segment_many([four_d, plain], TASK, n_workers=1)

    assert all(it.ok for it in items), [it.error for it in items]
    for it in items:
        assert it.outputs == _outputs_of(it.path, tmp_path)
    assert "4D (2 volumes)" in items[0].notes[0] and items[1].notes == []
    # mean of two equal volumes = the volume: same masks as the 3D file
    for a, b in zip(items[0].outputs, items[1].outputs, strict=True):
        assert np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
        assert nib.load(a).shape == img.shape
    # the LocalCluster started for the batch is gone: no client, no worker process
    with pytest.raises(ValueError, match="No clients found"):
        distributed.default_client()
    assert multiprocessing.active_children() == []


# ------------------------------------------------------------------ errors before any work


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a cluster would be started."""

    def refuse(*a, **k):
        raise AssertionError("a LocalCluster was started for a batch that cannot run")

    monkeypatch.setattr(distributed, "LocalCluster", refuse)


def test_not_installed_task_fails_once_before_starting_workers(scans, no_cluster):
    with pytest.raises(ModelNotInstalledError, match="spineseg install lesion_sci_t2"):
        segment_many(scans[:2], "lesion_sci_t2")


def test_untrusted_custom_model_is_refused(scans, tmp_path, no_cluster):
    folder = tmp_path / "my_model"
    folder.mkdir()
    with pytest.raises(UntrustedModelError, match="trust=True"):
        segment_many(scans[:1], model=folder)


def test_inputs_that_would_write_the_same_files_are_refused(scans, tmp_path, no_cluster):
    other = tmp_path / scans[0].name  # same name, other folder
    other.write_bytes(scans[0].read_bytes())
    with pytest.raises(SpinesegError, match="would write the same output files"):
        segment_many([scans[0], other], TASK, out_dir=tmp_path / "out")
    with pytest.raises(SpinesegError, match="listed twice"):
        segment_many([scans[0], scans[0]], TASK)
    # without out_dir they go next to their own inputs: no clash
    from napari_spineseg.batch import _check_names

    _check_names([scans[0], other], None)


def test_bad_arguments(scans, no_cluster):
    with pytest.raises(SpinesegError, match="no input files"):
        segment_many([], TASK)
    with pytest.raises(SpinesegError, match="threads_per_worker must be >= 1"):
        segment_many(scans, TASK, threads_per_worker=0)
    with pytest.raises(SpinesegError, match="give a task"):
        segment_many(scans, None)


def test_missing_dask_says_how_to_install(scans, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(SpinesegError) as err:
        segment_many(scans[:1], TASK)
    assert INSTALL_HINT in str(err.value) and "dask.distributed" in str(err.value)


def test_default_workers_divides_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(1) == cores
    assert default_workers(cores) == 1
    assert default_workers(10 * cores) == 1


# ------------------------------------------------------------------ CLI (threaded cluster)


@pytest.fixture
def inproc_scheduler():
    """A threaded LocalCluster in this process; the CLI connects to it by address."""
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_cli_batch_table_and_exit_codes(scans, tmp_path, inproc_scheduler, capsys):
    out = tmp_path / "o"
    argv = ["batch", TASK, "-i", str(scans[0]), str(scans[-1]), "-o", str(out)]
    assert cli.main([*argv, "--scheduler", inproc_scheduler, "--threads", "3"]) == 1
    res = capsys.readouterr()
    assert "Traceback" not in res.err and "[2/2]" in res.err
    lines = res.out.splitlines()
    assert lines[0].split()[:2] == ["STATUS", "SECONDS"]
    assert any(
        ln.startswith("ok") and "sub-0_T2starw_7t_multiclass_sc.nii.gz" in ln for ln in lines
    )
    assert any(ln.startswith("FAILED") and "truncated or corrupt" in ln for ln in lines)
    assert lines[-1] == "1 of 2 segmented, 1 failed"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(
        p.name for p in _outputs_of(scans[0], out)
    )
    # a threaded worker lives in this process: the user's thread setting is left alone
    assert os.environ["SPINESEG_NUM_THREADS"] == "1"

    assert cli.main(["batch", TASK, "-i", str(scans[1]), "-o", str(out), "-q",
                     "--scheduler", inproc_scheduler]) == 0  # fmt: skip
    res = capsys.readouterr()
    assert res.err == "" and res.out.splitlines()[-1] == "1 of 1 segmented, 0 failed"


def test_cli_batch_user_errors_exit_1(scans, capsys, no_cluster):
    assert cli.main(["batch", "-i", str(scans[0])]) == 1
    assert "give a TASK" in capsys.readouterr().err
    assert cli.main(["batch", "rootlets", "-i", str(scans[0])]) == 1
    err = capsys.readouterr().err
    assert "spineseg install rootlets" in err and "Traceback" not in err


def test_the_run_options_travel_to_the_workers_as_one_object(
    scans, tmp_path, inproc_scheduler, monkeypatch
):
    """Validated once here (keywords over ``options``), sent as is, recorded in the sidecar."""
    received = []
    segment = api.segment

    def spy(path, *args, **kwargs):
        received.append(kwargs["options"])
        return segment(path, *args, **kwargs)

    monkeypatch.setattr(api, "segment", spy)  # the worker is a thread of this process
    base = RunOptions(task=TASK, device="cpu", largest=True, remove_small="5vox 5vox")
    out = tmp_path / "o"
    items = segment_many(
        scans[:1], options=base, threshold=0.3, out_dir=out, client=inproc_scheduler
    )
    assert items[0].ok, items[0].error
    assert received == [base.with_(threshold=0.3)]
    side = json.loads(
        _outputs_of(scans[0], out)[0].with_suffix("").with_suffix(".json").read_text()
    )
    settings = side["GeneratedBy"][0]["Settings"]
    assert settings["threshold"] == 0.3 and settings["largest"] is True
    assert settings["remove_small"] == ["5vox", "5vox"] and settings["profile"] == "sct"


def test_bad_options_are_refused_before_any_worker_starts(scans, no_cluster):
    with pytest.raises(SpinesegError, match="threshold must be between 0 and 1, got 2"):
        segment_many(scans[:1], TASK, threshold=2)
    with pytest.raises(SpinesegError, match="unknown inference profile 'turbo'"):
        segment_many(scans[:1], options=RunOptions(task=TASK), profile="turbo")


def test_on_a_given_cluster_a_missing_model_is_reported_per_item(scans, inproc_scheduler):
    # The calling process does not check a cluster of your own (its workers may have
    # another model store): each item says what the worker found.
    items = segment_many(scans[:2], "lesion_sci_t2", client=inproc_scheduler)
    assert [it.ok for it in items] == [False, False]
    assert all("spineseg install lesion_sci_t2" in it.error for it in items)


# ------------------------------------------------------------------ a worker that dies

# Runs in every worker process the batch's cluster starts, restarted ones included: the
# worker segmenting TARGET kills its own process (as the kernel's OOM killer would), as
# long as fewer than KILLS deaths are recorded in LOG.
_KILLER = """
import os, signal
from pathlib import Path
import napari_spineseg.api as api

_segment = api.__dict__.setdefault("_segment_unpatched", api.segment)  # imported twice


def _segment_or_die(path, *args, **kwargs):
    log = Path({log!r})
    if Path(path).name == {target!r} and len(log.read_text().split()) < {kills}:
        with log.open("a") as f:
            f.write(f"{{os.getpid()}}\\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return _segment(path, *args, **kwargs)


api.segment = _segment_or_die
"""


def _batch_with_a_dying_worker(scans, tmp_path, kills: int):
    import dask

    log = tmp_path / "deaths.txt"
    log.write_text("")
    preload = _KILLER.format(log=str(log), target=scans[1].name, kills=kills)
    out = tmp_path / "out"
    t0 = time.monotonic()
    with dask.config.set({"distributed.worker.preload": [preload]}):
        items = segment_many(scans, TASK, out_dir=out, n_workers=2)
    assert time.monotonic() - t0 < 60  # a restart is seconds, not a hang
    return items, out, log.read_text().split()


@pytest.mark.slow
def test_a_killed_worker_is_retried_once_and_nothing_else_is_lost(scans, tmp_path):
    items, out, deaths = _batch_with_a_dying_worker(scans, tmp_path, kills=1)

    assert len(deaths) == 1, [
        it.error for it in items
    ]  # the file's first worker died; the retry ran it
    assert [it.ok for it in items] == [True, True, True, False], [it.error for it in items]
    for it in items[:3]:
        assert it.outputs == _outputs_of(it.path, out) and all(p.is_file() for p in it.outputs)
    assert "truncated or corrupt" in items[3].error
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for it in items[:3] for p in it.outputs for n in (p.name, p.name[:-7] + ".json")
    )


@pytest.mark.slow
def test_a_file_whose_worker_dies_twice_is_reported_and_the_others_complete(scans, tmp_path):
    items, out, deaths = _batch_with_a_dying_worker(scans, tmp_path, kills=5)

    assert len(deaths) == 2 and len(set(deaths)) == 2  # two worker processes, then given up
    assert [it.ok for it in items] == [True, False, True, False]
    dead = items[1]
    assert dead.outputs is None and dead.error.startswith(
        "the worker process running it died twice: out of memory?"
    )
    for it in (items[0], items[2]):
        assert it.outputs == _outputs_of(it.path, out)
    # nothing of the dead file, no temporary debris: only the two good files' masks + JSON
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n
        for it in (items[0], items[2])
        for p in it.outputs
        for n in (p.name, p.name[:-7] + ".json")
    )


# ------------------------------------------------------------------ progress output


def test_the_dashboard_is_announced_once_before_the_files(scans):
    import importlib.util

    seen = []
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
    ) as cluster:  # fmt: skip
        items = segment_many(
            scans[:2], TASK, client=cluster.scheduler_address, progress=seen.append
        )
        link = cluster.dashboard_link
    assert all(it.ok for it in items)
    assert [(p.step, p.total) for p in seen] == [(0, 2), (1, 2), (2, 2)]
    assert link.startswith("http://") and ":8787/" not in link  # the port it was given
    port = link.split(":")[2].split("/")[0]
    assert seen[0].stage.startswith("dask dashboard: http://")
    assert f":{port}/status" in seen[0].stage  # the client's name for the scheduler host
    no_pages = " (its pages need bokeh: pip install bokeh)"
    assert seen[0].stage.endswith(no_pages) == (importlib.util.find_spec("bokeh") is None)
    assert sum("dashboard" in p.stage for p in seen) == 1


def test_progress_lines_without_a_terminal_and_a_bar_on_one(scans):
    import io

    from napari_spineseg.progress import Progress
    from napari_spineseg.study.commands import terminal_progress

    reports = [Progress(0.0, "dask dashboard: http://127.0.0.1:8787/status", 0, 2)]
    reports += [Progress(1 / 2, "a.nii.gz: ok", 1, 2), Progress(1.0, "b.nii.gz: failed", 2, 2)]

    log = io.StringIO()  # a pipe or a log file: plain lines, no bar, no carriage returns
    show = terminal_progress(log)
    for p in reports:
        show(p)
    assert log.getvalue() == (
        "[0/2] dask dashboard: http://127.0.0.1:8787/status\n"
        "[1/2] a.nii.gz: ok\n"
        "[2/2] b.nii.gz: failed\n"
    )

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    pytest.importorskip("tqdm")
    term = Terminal()
    show = terminal_progress(term)
    for p in reports:
        show(p)
    text = term.getvalue()
    for line in ("[0/2] dask dashboard", "[1/2] a.nii.gz: ok", "[2/2] b.nii.gz: failed"):
        assert line in text
    assert "\r" in text and "2/2" in text.rsplit("[2/2] b.nii.gz: failed", 1)[1]  # the bar


def test_cli_batch_prints_plain_lines_when_stderr_is_not_a_terminal(
    scans, tmp_path, inproc_scheduler, capsys
):
    argv = ["batch", TASK, "-i", str(scans[0]), "-o", str(tmp_path), "--scheduler"]
    assert cli.main([*argv, inproc_scheduler]) == 0
    first, second = capsys.readouterr().err.splitlines(keepends=True)  # no bar drawn
    assert first.startswith("[0/1] dask dashboard: http://") and "\r" not in first
    assert second == f"[1/1] {scans[0].name}: ok\n"
