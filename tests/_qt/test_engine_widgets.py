"""The widgets on the engine process (issue 8): a cold first run that never imports torch
into the viewer, an engine killed mid-run, and a remote engine.

Stall figures are printed, not asserted (a shared CI machine cannot promise 50 ms); the
goal and the one command are in benchmarks/README.md (``bench_engine_process.py``).
"""

from __future__ import annotations

import os
import signal
import sys
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
from napari_spineseg import api, engine_process
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.engine_process import LocalEngine
from napari_spineseg.errors import EngineStoppedError

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"model": str(demo_model_folder()), "trust": True, "device": "cpu"}


@pytest.fixture(scope="module")
def engine():
    eng = LocalEngine()
    yield eng
    eng.close()


@pytest.fixture
def on_engine():
    """Point the widgets at an engine for one test (the other widget tests run in-process)."""
    yield engine_process.use_for_widgets
    engine_process.use_for_widgets(None)


def start_session(viewer, path, engine):
    from napari_spineseg import review

    session = review(viewer, path, start=False, engine=engine, **OPTIONS)
    session.review_widget.prompt = lambda title, text: "discard"  # teardown closes napari
    session.review_widget.prompt_recovery = lambda text: "ignore"
    return session


def model_output(layer) -> np.ndarray:
    return np.asarray(layer.metadata["spineseg"]["model_output"])


@pytest.mark.qt
@pytest.mark.slow  # a fresh interpreter, napari, an engine process and its torch import
def test_cold_first_run_in_a_fresh_viewer_keeps_torch_out_of_it(tmp_path):
    from conftest import napari_gl_problem

    problem = napari_gl_problem()
    if problem:
        pytest.skip(problem)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_engine_process import cold_in_subprocess

    out = cold_in_subprocess(tmp_path, "process")
    assert out["fresh_interpreter"]
    for run in ("cold", "warm"):
        assert out[run]["outcome"] == "done", out[run]
    assert out["cold"]["layers"] == ["phantom_T2w_cord_seg", "phantom_T2w_csf_seg"]
    assert out["torch_in_viewer"] is False and out["nnunetv2_in_viewer"] is False
    print(
        f"\ncold first run: longest stall {out['cold']['longest_ms']:.0f} ms, "
        f"warm {out['warm']['longest_ms']:.0f} ms; viewer peak +{out['peak_extra_mb']} MB "
        f"(warm +{out['warm_peak_extra_mb']} MB)"
    )


@pytest.mark.qt
@pytest.mark.slow  # the killed engine's successor imports torch again
def test_a_killed_engine_leaves_the_viewer_its_layers_and_edits(
    viewer, tmp_path, engine, on_engine
):
    from napari_spineseg._qt.workers import wait_for

    session = start_session(viewer, phantom_path(tmp_path), engine)
    widget = session.segment_widget
    session.segment()
    assert widget.wait(300) == "done", widget.status.value
    layer = widget.last_layers[0]
    z = layer.data.shape[0] // 2
    layer.paint((z, 3, 3), 1)  # a reviewer's edit, on the GUI thread's undo history
    edited = layer.data.copy()
    assert not np.array_equal(edited, model_output(layer))
    names = [ly.name for ly in viewer.layers]

    engine.client.run(sleep_in_predict, 60)
    session.segment()
    wait_for(lambda: SLEEP_STAGE not in str(widget.status.value), 120, "the run")
    os.kill(worker_pid(engine), signal.SIGKILL)  # as the OOM killer does
    assert widget.wait(60) == "error"
    assert isinstance(widget.last_error, EngineStoppedError)
    assert "the engine process stopped: out of memory?" in str(widget.status.value)
    assert [ly.name for ly in viewer.layers] == names  # nothing from the killed run
    np.testing.assert_array_equal(layer.data, edited)  # the edit is intact

    session.segment()  # a fresh engine serves the next run
    assert widget.wait(300) == "done", widget.status.value
    again = widget.last_layers[0]
    assert again.name == f"{layer.name} (new)"
    np.testing.assert_array_equal(again.data, model_output(layer))


@pytest.mark.qt
@pytest.mark.slow  # a scheduler, a worker and its torch import
def test_the_widgets_run_on_a_remote_engine(viewer, tmp_path, on_engine):
    path = phantom_path(tmp_path)
    with dask_scheduler(tmp_path) as (address, _):
        connect_when_ready(engine_process.get_engine(address))
        session = start_session(viewer, path, address)
        widget = session.segment_widget
        session.segment()
        assert widget.wait(300) == "done", widget.status.value
        engine_process.get_engine(address).close()
    want = api.segment(path, **OPTIONS)
    geometry = session.image_layer.metadata["spineseg"]["volume"].geometry
    for layer, suffix in zip(widget.last_layers, ("_cord_seg", "_csf_seg"), strict=True):
        np.testing.assert_array_equal(layer.data, geometry.to_display(want.outputs[suffix].labels))
        provenance = layer.metadata["spineseg"]["provenance"]
        assert provenance["input"]["path"] == str(path)  # put back on this side


@pytest.mark.qt
def test_refine_runs_on_the_engine_with_the_model_still_loaded(
    viewer, tmp_path, engine, on_engine
):
    session = start_session(viewer, phantom_path(tmp_path), engine)
    session.segment()
    assert session.segment_widget.wait(300) == "done"
    session.select(session.segment_widget.last_layers[0])
    (loaded,) = engine.client.run(loaded_engines).values()
    preview = session.refine((4, 8), margin=2)  # crop-and-refine, on the engine
    assert preview is not None and preview.data.shape == session.state.layer.data.shape
    (after,) = engine.client.run(loaded_engines).values()
    assert after == loaded and len(loaded) == 1  # the same model object: no reload


@pytest.mark.qt
@pytest.mark.slow  # the killed engine's successor imports torch again
def test_cancel_in_the_widget_stops_a_run_that_ignores_it(viewer, tmp_path, engine, on_engine):
    import time

    from napari_spineseg._qt.workers import wait_for

    session = start_session(viewer, phantom_path(tmp_path), engine)
    widget = session.segment_widget
    names = [ly.name for ly in viewer.layers]
    engine.client.run(sleep_in_predict, 60)
    old = worker_pid(engine)
    session.segment()
    wait_for(lambda: SLEEP_STAGE not in str(widget.status.value), 120, "the run")
    t0 = time.monotonic()
    widget.cancel()
    assert widget.wait(30) == "cancelled"
    assert time.monotonic() - t0 < 3.0
    assert [ly.name for ly in viewer.layers] == names  # nothing added
    assert worker_pid(engine, not_this=old) != old  # the sleeping engine was killed
    session.segment()  # the next run gets a fresh engine
    assert widget.wait(300) == "done", widget.status.value
