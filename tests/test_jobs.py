"""The widgets' jobs without Qt or a viewer (``napari_spineseg.jobs``).

The segment and refine generator cores are consumed with the synchronous runner, as
stardist-napari tests its plugin function, on the shipped demo model: what they return
must be exactly what ``api.segment`` gives, in display order, with the run options kept
for refine. The runner itself: progress relayed, errors re-raised, a model that ignores
cancellation cut off within the grace period.
"""

from __future__ import annotations

import threading
import time

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.errors import SpinesegError, TaskError
from napari_spineseg.io import load
from napari_spineseg.io.geometry import crop_display
from napari_spineseg.jobs import (
    CANCELLED,
    ImageSnapshot,
    refine_job,
    run_sync,
    runner,
    segment_job,
    steps,
)
from napari_spineseg.layers import volume_layer_data
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom
from napari_spineseg.progress import CancelToken, Progress

OPTIONS = RunOptions(model=str(demo_model_folder()), trust=True, device="cpu", remove_small="3vox")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    path = tmp_path_factory.mktemp("jobs") / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    return load(path)


@pytest.fixture(scope="module")
def expected(volume):
    """What a script gets from the same options (the jobs must add nothing)."""
    return api.segment(
        volume, model=OPTIONS.model, trust=True, device="cpu", remove_small=["3vox"]
    )


def image_layer(volume):
    from napari.layers import Layer

    return Layer.create(*volume_layer_data(volume, as_labels=False))


def test_segment_job_returns_the_results_of_api_segment_as_display_layers(volume, expected):
    layer = image_layer(volume)
    snapshot = ImageSnapshot.of(layer)
    layer.translate = (5.0, 5.0, 5.0)  # moved while the model runs: the snapshot counts
    reports: list[Progress] = []
    layers = run_sync(segment_job(snapshot, OPTIONS, CancelToken()), reports.append)

    assert [kw["name"] for _, kw, _ in layers] == [f"{layer.name}{s}" for s in expected.outputs]
    for (data, kwargs, kind), (suffix, output) in zip(
        layers, expected.outputs.items(), strict=True
    ):
        assert kind == "labels"
        np.testing.assert_array_equal(data, volume.geometry.to_display(output.labels))
        meta = kwargs["metadata"]["spineseg"]
        assert meta["suffix"] == suffix and meta["image_layer"] == layer.name
        assert meta["volume"] is volume
        # the run is kept JSON-safe and comes back as the same options (refine re-runs it)
        assert meta["run"] == OPTIONS.as_dict()
        assert RunOptions.from_dict(meta["run"]) == OPTIONS
        frozen = meta["model_output"]
        np.testing.assert_array_equal(frozen, data)
        assert not frozen.flags.writeable and frozen is not data
        assert meta["qc_table"].n_slices == data.shape[0]
        assert tuple(kwargs["scale"]) == snapshot.scale[-3:]
        assert tuple(kwargs["translate"]) == snapshot.translate[-3:] != (5.0, 5.0, 5.0)
        assert meta["classes"] == output.classes
    assert reports and reports[-1] == Progress(1.0, "preparing layers")
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions)


def test_a_cancelled_segment_job_returns_cancelled_and_no_layers(volume):
    cancel = CancelToken()
    cancel.cancel()
    snapshot = ImageSnapshot.of(image_layer(volume))
    assert run_sync(segment_job(snapshot, OPTIONS, cancel)) is CANCELLED


def test_refine_job_segments_the_display_crop_in_display_order(volume, expected):
    suffix = next(iter(expected.outputs))
    crop = (4, 12)
    got = run_sync(refine_job(volume, OPTIONS, suffix, crop, CancelToken()))
    display = volume.geometry.to_display(np.asarray(volume.data))
    assert got.shape == (crop[1] - crop[0], *display.shape[1:])
    alone = api.segment(
        crop_display(volume, *crop),
        model=OPTIONS.model,
        trust=True,
        device="cpu",
        remove_small=["3vox"],
    )
    np.testing.assert_array_equal(got, alone.outputs[suffix].labels)
    assert got.any()  # the crop holds cord: an empty answer would prove nothing


def test_refine_job_names_a_missing_output(volume, expected):
    outputs = ", ".join(expected.outputs)
    with pytest.raises(TaskError, match=rf"no output '_nope' \(it has {outputs}\)"):
        run_sync(refine_job(volume, OPTIONS, "_nope", (0, 8), CancelToken()))


def test_a_layer_not_opened_by_the_plugin_is_refused_with_the_fix():
    from napari.layers import Image

    with pytest.raises(
        SpinesegError,
        match=r"'plain' was not opened with napari-spineseg.*"
        r"viewer.open\(path, plugin='napari-spineseg'\)",
    ):
        ImageSnapshot.of(Image(np.zeros((4, 4, 4)), name="plain"))


# ----------------------------------------------------------------------------- runner


def test_steps_relays_progress_and_returns_the_result():
    def work(progress, cancel, factor):
        for i in range(3):
            progress(Progress((i + 1) / 4, f"stage {'abc'[i]}"))
            time.sleep(runner.POLL_S * 1.5)
        return 7 * factor

    reports: list[Progress] = []
    assert run_sync(steps(work, cancel=CancelToken(), factor=6), reports.append) == 42
    assert [r.stage for r in reports] == ["stage a", "stage b", "stage c"]


def test_steps_reraises_the_error_of_the_call():
    def broken(progress, cancel):
        raise TaskError("bad input: use another file")

    with pytest.raises(TaskError, match="bad input: use another file"):
        run_sync(steps(broken, cancel=CancelToken()))


def test_a_call_that_ignores_cancel_is_cut_off_and_the_next_run_waits_for_it():
    started, release = threading.Event(), threading.Event()

    def stubborn(progress, cancel):
        started.set()
        release.wait(10)  # never reaches a cancellation point until released
        return "late"

    cancel = CancelToken()
    gen = steps(stubborn, cancel=cancel)
    next(gen)
    assert started.wait(5)
    cancel.cancel()
    t0 = time.monotonic()
    assert run_sync(gen) is CANCELLED
    assert time.monotonic() - t0 < runner.CANCEL_GRACE_S + 0.5

    # a new run waits for the cut-off call (two predictions never share one engine)
    waits: list[str] = []
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        result = run_sync(
            steps(lambda progress, cancel: "next", cancel=CancelToken()),
            lambda p: waits.append(p.stage),
        )
    finally:
        timer.cancel()
        release.set()
    assert result == "next"
    assert "waiting for the cancelled run to stop" in waits


def test_the_worker_thread_warms_what_the_first_labels_layer_would_compute_on_the_gui_thread():
    """Issue 8: the first Labels layer of a session built vispy's 13 dash patterns (for its
    polygon-tool overlay) on the GUI thread: a 65 ms stall. The worker-thread warm-up
    must fill vispy's process-wide cache (checked in a fresh interpreter: another test
    may already have filled it here)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from vispy.visuals.line import dash_atlas\n"
        "assert dash_atlas._make_pattern.cache_info().currsize == 0\n"
        "from napari_spineseg.jobs.result_layers import warm_up_label_colormap\n"
        "warm_up_label_colormap({0: 'transparent', 1: 'red'}, np.dtype('uint8'))\n"
        "print(dash_atlas._make_pattern.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split()[-1] == "13"
