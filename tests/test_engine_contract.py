"""The engine contract and the registry: a new backend is one module plus one line.

``engine_threshold.ThresholdEngine`` (a module of this test folder, as a lab's plugin
would ship it) is registered for a made-up backend and run through ``api.segment`` end
to end: registry lookup, load once (cache), ``after_load``, ``predict`` with the run's
options, the task layer's post-processing, provenance. Then every registry error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from engine_threshold import CUT, ThresholdEngine
from napari_spineseg import api, catalog, segmentation
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.engines import (
    Engine,
    engine_class,
    register_engine,
    registered_backends,
    unregister_engine,
)
from napari_spineseg.errors import TaskError
from napari_spineseg.models import store
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import PHANTOM_LABELS, cord_phantom

BACKEND = "threshold_test"
STRAY = (0, 0, 0)  # one voxel of "cord" intensity far from the cord


@pytest.fixture
def threshold_backend(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(tmp_path / "store"))
    ThresholdEngine.loads.clear()
    ThresholdEngine.calls.clear()
    segmentation.clear_engine_cache()
    register_engine(BACKEND, "engine_threshold:ThresholdEngine")  # the one registry line
    yield replace(catalog.custom_task(demo_model_folder()), backend=BACKEND)
    unregister_engine(BACKEND)
    segmentation.clear_engine_cache()


@pytest.fixture
def scan(tmp_path):
    """A PSR phantom whose intensities are its labels x 100, plus one stray cord voxel."""
    img, lab = cord_phantom(shape=(40, 36, 10), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=2)
    labels = np.asanyarray(lab.dataobj)
    assert labels[STRAY] == 0
    data = labels.astype(np.float32) * 2 * CUT
    data[labels == PHANTOM_LABELS["csf"]] = 1.5 * CUT
    data[STRAY] = 2 * CUT
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    return path, labels


def test_a_registered_engine_runs_through_api_segment(threshold_backend, scan):
    spec = threshold_backend
    path, labels = scan
    cord = labels == PHANTOM_LABELS["cord"]
    with_stray = cord.copy()
    with_stray[STRAY] = True
    demo = demo_model_folder()

    res = api.segment(path, task=spec, model=demo, trust=True, device="cpu", profile="fast")
    np.testing.assert_array_equal(res.outputs["_cord_seg"].labels, with_stray.astype(np.uint8))
    np.testing.assert_array_equal(
        res.outputs["_csf_seg"].labels, (labels == PHANTOM_LABELS["csf"]).astype(np.uint8)
    )
    assert res.outputs["_cord_seg"].classes == {1: "cord"}
    prov = res.provenance
    assert prov["backend"] == BACKEND and prov["device"] == "cpu (numpy)"
    assert prov["engine"] == {"engine": "threshold", "cut": CUT, "input": "sub-01_T2w.nii.gz"}
    assert prov["settings"]["profile"] == "fast" and prov["settings"]["largest"] is False
    assert prov["postprocessing"] == [] and prov["notes"] == []  # this engine has no profile
    ((folder, loaded_with),) = ThresholdEngine.loads
    assert folder == demo.resolve() and loaded_with.device == "cpu"
    call = ThresholdEngine.calls[-1]
    assert call["task"] == spec.id  # after_load saw the task
    assert call["options"] == RunOptions(
        task=spec.id, model=str(demo), trust=True, device="cpu", profile="fast"
    ).resolved(spec)  # the one options object, the task's defaults filled in
    assert call["name"] == "sub-01_T2w.nii.gz" and call["min_sizes"] is None

    # options= as the widgets pass them, a keyword on top; the same engine, not reloaded
    opts = RunOptions(task=spec.id, model=str(demo), trust=True, device="cpu", largest=True)
    again = api.segment(path, task=spec, options=opts)
    np.testing.assert_array_equal(again.outputs["_cord_seg"].labels, cord.astype(np.uint8))
    assert "_cord_seg: largest" in again.provenance["postprocessing"]
    kept = api.segment(path, task=spec, options=opts, largest=False)
    assert kept.outputs["_cord_seg"].labels[STRAY] == 1
    assert len(ThresholdEngine.loads) == 1  # same folder, same device: the cached engine

    written = api.save(again)
    side = json.loads(written[0].with_name("sub-01_T2w_cord_seg.json").read_text())
    assert side["GeneratedBy"][0]["Settings"]["largest"] is True


def test_an_unregistered_backend_fails_before_anything_loads(threshold_backend, scan):
    path, _ = scan
    spec = replace(threshold_backend, backend="no_such_backend")
    with pytest.raises(TaskError, match=r"no engine runs the backend 'no_such_backend' \(known:"):
        api.segment(path, task=spec, model=demo_model_folder(), trust=True)
    assert ThresholdEngine.loads == []


def test_registry_errors_name_the_backend_and_the_fix():
    with pytest.raises(TaskError, match=r"backend 'nope' \(known: ivadomed_onnx, nnunet, "):
        engine_class("nope")
    with pytest.raises(TaskError, match="'my_lab.engines' is not 'package.module:Class'"):
        register_engine("lab", "my_lab.engines")
    with pytest.raises(TaskError, match="is not a subclass of napari_spineseg.engines.Engine"):
        register_engine("lab", dict)
    with pytest.raises(TaskError, match="must be a non-empty name without spaces"):
        register_engine(" lab", ThresholdEngine)
    with pytest.raises(
        TaskError,
        match="'nnunet' already runs with napari_spineseg.engines.nnunet:NnunetModel; "
        "pass replace=True",
    ):
        register_engine("nnunet", ThresholdEngine)
    register_engine("nnunet", "napari_spineseg.engines.nnunet:NnunetModel")  # same: no-op
    assert engine_class("nnunet").__name__ == "NnunetModel"

    cases = {
        "no_such_module_xyz:Model": "cannot be imported: No module named 'no_such_module_xyz'",
        "engine_threshold:Missing": "module engine_threshold has no Missing",
        "engine_threshold:CUT": r"\(engine_threshold:CUT\) is not a subclass",
    }
    for path, message in cases.items():
        register_engine("lab", path, replace=True)
        with pytest.raises(TaskError, match=message):
            engine_class("lab")
    unregister_engine("lab")
    assert "lab" not in registered_backends()


def test_replacing_and_unregistering_a_builtin_restores_it():
    register_engine("nnunet", ThresholdEngine, replace=True)
    try:
        assert engine_class("nnunet") is ThresholdEngine
    finally:
        unregister_engine("nnunet")
    assert engine_class("nnunet").__name__ == "NnunetModel"


def test_an_engine_must_implement_load_and_predict():
    class Half(Engine):
        @classmethod
        def load(cls, source, options):
            return cls()

    with pytest.raises(TypeError, match="abstract method '?predict"):
        Half.load("folder", RunOptions())


def test_builtin_engines_are_imported_only_when_used():
    code = (
        "import sys\n"
        "from napari_spineseg import engines, segmentation\n"
        "print(engines.registered_backends())\n"
        "print(sorted(m for m in sys.modules if m.startswith('napari_spineseg.engines.')))\n"
        "print(engines.engine_class('ivadomed_onnx').__name__, "
        "'onnxruntime' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out == [
        "('ivadomed_onnx', 'nnunet', 'totalspineseg')",
        "['napari_spineseg.engines.base', 'napari_spineseg.engines.registry']",
        "IvadomedOnnxModel False False",
    ]
