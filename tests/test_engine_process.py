"""The engine process and a remote engine (issue 8), without Qt.

One local engine process serves the whole module (started once: each test costs a run,
not an engine start); the tests that kill it leave a fresh one behind, as a user's next
run would find it. The model is the shipped demo model, so the voxels are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import (
    SLEEP_STAGE,
    connect_when_ready,
    dask_scheduler,
    loaded_engines,
    phantom_path,
    sleep_in_predict,
    worker_pid,
)
from napari_spineseg import api, engine_process, io
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.engine_process import KILL_AFTER_S, LocalEngine, RemoteEngine
from napari_spineseg.errors import (
    Cancelled,
    EngineStoppedError,
    SpinesegError,
    UntrustedModelError,
)
from napari_spineseg.options import RunOptions
from napari_spineseg.progress import CancelToken

pytest.importorskip("distributed")

OPTIONS = {"model": str(demo_model_folder()), "trust": True, "device": "cpu"}
RUN = RunOptions(**OPTIONS)  # what engines take: the one options type
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A model store of the module's own, and one inference thread (2-core CI), set
    before the engine starts: the engine process inherits this environment."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("engine")
    mp.setenv("SPINESEG_MODELS_DIR", str(root / "store"))
    mp.setenv("SPINESEG_NUM_THREADS", "1")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def engine(env):
    eng = LocalEngine()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def volume(env):
    return io.load(phantom_path(env))


@pytest.fixture(scope="module")
def in_process(volume):
    return api.segment(volume, **OPTIONS)


def assert_same_result(got, want):
    assert list(got.outputs) == list(want.outputs)
    for suffix, out in want.outputs.items():
        assert got.outputs[suffix].labels.dtype == out.labels.dtype
        np.testing.assert_array_equal(got.outputs[suffix].labels, out.labels)
        assert got.outputs[suffix].classes == out.classes
    assert list(got.probabilities) == list(want.probabilities)
    for name, p in want.probabilities.items():
        np.testing.assert_array_equal(got.probabilities[name], p)


def start_run(engine, volume, cancel=None):
    """A run on a thread: (thread, box with "result"/"error", the progress stages)."""
    box, stages = {}, []

    def target():
        try:
            box["result"] = engine.segment(volume, RUN, lambda p: stages.append(p.stage), cancel)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box, stages


def wait_for_stage(stages, stage, timeout=120.0):
    end = time.monotonic() + timeout
    while stage not in stages:
        assert time.monotonic() < end, f"no {stage!r} report in {timeout} s: {stages}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- local


def test_a_run_gives_the_in_process_voxels_and_streams_progress(engine, volume, in_process):
    reports, threads = [], set()

    def progress(p):
        reports.append(p)
        threads.add(threading.get_ident())

    result = engine.segment(volume, RUN, progress)
    assert_same_result(result, in_process)
    # the engine is another process, and the paths are put back on this side
    assert worker_pid(engine) != os.getpid()
    assert result.source is volume
    assert result.provenance["input"]["path"] == str(volume.path)
    assert result.provenance["input"]["shape"] == list(volume.shape)
    # progress arrived while it ran, in order, on the caller's thread
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions) and reports[-1].stage == "done"
    assert "loading model" in [p.stage for p in reports]
    assert threads == {threading.get_ident()}


def test_the_model_stays_loaded_between_runs(engine, volume):
    engine.segment(volume, RUN)
    (before,) = engine.client.run(loaded_engines).values()
    engine.segment(volume, RUN)
    (after,) = engine.client.run(loaded_engines).values()
    assert len(before) == 1 and after == before  # the same loaded model object


def test_api_segment_is_one_argument_away(engine, volume, in_process):
    result = api.segment(volume.path, engine=engine, **OPTIONS)
    assert_same_result(result, in_process)
    assert result.source.path == volume.path


def test_run_options_travel_and_errors_come_back_typed(engine, volume):
    options = RunOptions(**OPTIONS, remove_small="3vox")
    result = engine_process.segment(volume, options, engine=engine)
    assert result.provenance["settings"]["remove_small"] == ["3vox"]
    with pytest.raises(UntrustedModelError, match="trust=True"):
        engine.segment(volume, options.with_(trust=False))


@pytest.mark.slow  # a fresh engine process imports torch again
def test_cancel_stops_a_run_that_ignores_cancellation(engine, volume, in_process):
    engine.segment(volume, RUN)  # warm: the kill below must hit predict
    old_pid = worker_pid(engine)
    engine.client.run(sleep_in_predict, 60)
    cancel = CancelToken()
    thread, box, stages = start_run(engine, volume, cancel)
    wait_for_stage(stages, SLEEP_STAGE)
    t0 = time.monotonic()
    cancel.cancel()
    thread.join(KILL_AFTER_S + 5)
    took = time.monotonic() - t0
    assert not thread.is_alive(), "the run did not stop"
    assert isinstance(box.get("error"), Cancelled), box
    assert "did not stop within 1 s and was restarted" in str(box["error"])
    assert took < KILL_AFTER_S + 3, took
    # the sleeping engine was killed; a fresh one (no sleep) serves the next run
    assert worker_pid(engine, not_this=old_pid) != old_pid
    assert_same_result(engine.segment(volume, RUN), in_process)


@pytest.mark.slow  # a fresh engine process imports torch again
def test_a_killed_engine_is_reported_and_the_next_run_starts_fresh(engine, volume, in_process):
    engine.client.run(sleep_in_predict, 60)
    thread, box, stages = start_run(engine, volume)
    wait_for_stage(stages, SLEEP_STAGE)
    os.kill(worker_pid(engine), signal.SIGKILL)  # as the OOM killer does
    thread.join(30)
    assert not thread.is_alive()
    assert "result" not in box
    with pytest.raises(EngineStoppedError, match=r"the engine process stopped: out of memory\?"):
        raise box["error"]
    assert_same_result(engine.segment(volume, RUN), in_process)


def test_choosing_the_engine():
    assert engine_process.get_engine("process") is engine_process.get_engine(" process ")
    remote = engine_process.get_engine("tcp://127.0.0.1:1")
    assert isinstance(remote, RemoteEngine) and remote.address == "tcp://127.0.0.1:1"
    with pytest.raises(SpinesegError, match="use 'process'.*tcp://gpu-box:8786"):
        engine_process.get_engine("gpu-box")
    engine_process.use_for_widgets(None)
    try:
        os.environ.pop(engine_process.ENV_ENGINE, None)
        assert engine_process.widget_engine() == "process"
        os.environ[engine_process.ENV_ENGINE] = "tcp://127.0.0.1:1"
        assert engine_process.widget_engine() == "tcp://127.0.0.1:1"
        engine_process.use_for_widgets("inprocess")  # review(engine=...) wins
        assert engine_process.widget_engine() is None
    finally:
        os.environ.pop(engine_process.ENV_ENGINE, None)
        engine_process.use_for_widgets(None)


def test_an_unreachable_remote_engine_says_how_to_start_it(volume):
    remote = RemoteEngine("tcp://127.0.0.1:9", connect_timeout=1.0)
    with pytest.raises(
        EngineStoppedError, match=r"cannot reach the engine at tcp://127\.0\.0\.1:9"
    ):
        remote.segment(volume, RUN)


# ---------------------------------------------------------------------------- remote


@pytest.fixture
def scheduler(env, tmp_path):
    with dask_scheduler(tmp_path) as (address, procs):
        yield address, procs


@pytest.mark.slow  # a scheduler, a worker and its torch import
def test_a_remote_engine_runs_the_same_voxels_and_reports_a_lost_scheduler(
    scheduler, volume, in_process
):
    address, procs = scheduler
    remote = RemoteEngine(address)
    try:
        connect_when_ready(remote)
        result = remote.segment(volume, RUN)
        assert_same_result(result, in_process)
        assert result.source is volume
        assert result.provenance["input"]["path"] == str(volume.path)

        # Cancel on a remote worker that ignores it: its nanny restarts it
        remote.client.run(sleep_in_predict, 60)
        old = worker_pid(remote)
        cancel = CancelToken()
        thread, box, stages = start_run(remote, volume, cancel)
        wait_for_stage(stages, SLEEP_STAGE)
        cancel.cancel()
        thread.join(KILL_AFTER_S + 5)
        assert not thread.is_alive() and isinstance(box.get("error"), Cancelled), box
        new = worker_pid(remote, not_this=old)

        remote.client.run(sleep_in_predict, 60)  # the new worker sleeps too
        thread, box, stages = start_run(remote, volume)
        wait_for_stage(stages, SLEEP_STAGE)
        assert worker_pid(remote) == new
        procs["scheduler"].kill()
        thread.join(30)
        assert not thread.is_alive() and "result" not in box
        with pytest.raises(
            EngineStoppedError,
            match=f"lost the connection to the engine at {address}: its scheduler stopped",
        ):
            raise box["error"]
    finally:
        procs["worker"].kill()
        remote.close()


def test_the_viewer_side_imports_neither_torch_nor_dask_until_a_run():
    """Importing the engine modules (and listing the widget's devices) stays light: dask
    loads on the first run, torch never (a fresh interpreter tells)."""
    code = (
        "import sys; from napari_spineseg import engine_process, engine_task; "
        "d = engine_process.probe_devices(); "
        "assert d[0] == 'auto' and d[-1] == 'cpu', d; "
        "print(sorted(m for m in ('torch', 'distributed', 'nnunetv2') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow  # a fresh interpreter starts its own engine process
def test_a_script_without_a_main_guard_uses_the_engine_process(env, tmp_path):
    """A researcher's plain script (no ``if __name__ == "__main__":``) must not be run
    again inside the engine process (multiprocessing's spawn would import it there)."""
    path = phantom_path(tmp_path)
    marker = tmp_path / "script-ran"
    script = tmp_path / "segment_my_scan.py"
    script.write_text(
        "from pathlib import Path\n"
        "from napari_spineseg import api\n"
        f"marker = Path({str(marker)!r})\n"
        "with marker.open('a') as f:\n"
        "    f.write('ran\\n')\n"
        f"result = api.segment({str(path)!r}, model={OPTIONS['model']!r}, trust=True,\n"
        "                     device='cpu', engine='process')\n"
        "print('voxels', sum(int(o.labels.sum()) for o in result.outputs.values()))\n"
    )
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env_vars
    )
    assert out.returncode == 0, out.stderr[-3000:]
    want = sum(int(o.labels.sum()) for o in api.segment(path, **OPTIONS).outputs.values())
    assert f"voxels {want}" in out.stdout
    assert marker.read_text() == "ran\n"  # the script ran once: not again in the engine


def test_the_engine_is_not_the_sessions_default_dask_client(engine, volume):
    """A notebook's own dask work must not be sent to the engine's worker."""
    import distributed

    engine.segment(volume, RUN)
    with pytest.raises(ValueError, match="No clients found"):
        distributed.default_client()
