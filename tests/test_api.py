"""api.segment / api.save: SCT splitting, naming, sidecars, trust, cancel, engine cache."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api, catalog, segmentation
from napari_spineseg.engines.base import Prediction
from napari_spineseg.errors import (
    Cancelled,
    ModelNotInstalledError,
    SaveRefusedError,
    TaskError,
    UntrustedModelError,
)
from napari_spineseg.models import store
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom
from napari_spineseg.progress import CancelToken

ZIP_7T = (
    Path(__file__).parent
    / "data/models/gm_sc_7t/model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip"
)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(tmp_path / "store"))
    segmentation.clear_engine_cache()


@pytest.fixture
def image(tmp_path):
    img, _ = cord_phantom(shape=(48, 40, 12), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    return path


def test_fake_engine_split_regions_and_multilabel():
    """Binary files OR region values; engines with one map per class are accepted."""
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[0] = 1
    lab[1] = 2
    pred = Prediction(
        maps={"labels": lab},
        classes={"labels": {1: "sc", 2: "lesion"}},
        groups={"labels": {"sc": (1, 2), "lesion": (2,)}},
    )
    spec = catalog.get_task("lesion_sci_t2")
    outs, _ = segmentation.split_outputs(spec, pred, (1, 1, 1), RunOptions())
    assert (outs["_sc_seg"].labels == np.isin(lab, [1, 2])).all()
    assert (outs["_lesion_seg"].labels == (lab == 2)).all()
    assert outs["_sc_seg"].labels.dtype == np.uint8 and outs["_sc_seg"].classes == {1: "sc"}
    per_class = Prediction(
        maps={"sc": (lab > 0).astype(np.uint8), "gm": (lab == 2).astype(np.uint8)},
        classes={"sc": {1: "spinal cord"}, "gm": {1: "grey matter"}},
    )
    outs, _ = segmentation.split_outputs(
        catalog.get_task("gm_sc_7t_t2star"), per_class, (1, 1, 1), RunOptions()
    )
    assert outs["_7t_multiclass_gm"].labels.sum() == 16
    rootlets = Prediction(maps={"labels": lab * 3}, classes={"labels": {3: "lvl3", 6: "lvl6"}})
    outs, _ = segmentation.split_outputs(
        catalog.get_task("rootlets"), rootlets, (1, 1, 1), RunOptions()
    )
    assert set(np.unique(outs["_rootlets"].labels)) == {0, 3, 6}
    assert outs["_rootlets"].classes[3] == "C3 rootlets"
    bad = Prediction(maps={"labels": lab}, classes={"labels": {1: "canal"}})
    with pytest.raises(TaskError, match="no class sc"):
        segmentation.split_outputs(spec, bad, (1, 1, 1), RunOptions())


def test_missing_model_error_gives_the_install_command(image):
    with pytest.raises(ModelNotInstalledError, match="spineseg install lesion_sci_t2"):
        api.segment(image, task="lesion_sci_t2")


def test_custom_model_needs_trust(image, region_model):
    with pytest.raises(UntrustedModelError, match="pickles"):
        api.segment(image, model=region_model.parent.parent)


def test_segment_real_nnunet_engine_region_model(image, region_model, tmp_path):
    from napari_spineseg.engines.nnunet import NnunetModel

    seen = []
    res = api.segment(
        image,
        task="lesion_sci_t2",
        model=region_model,
        trust=True,
        device="cpu",
        progress=seen.append,
    )
    assert list(res.outputs) == ["_sc_seg", "_lesion_seg"]
    raw = NnunetModel.load(region_model, device="cpu", trust=True)
    raw.orientation = "RAS"  # SCT's fallback: no image_orientation, not RegionBasedLesionSeg
    labels = raw.predict(nib.load(image)).maps["labels"]
    sc, lesion = res.outputs["_sc_seg"].labels, res.outputs["_lesion_seg"].labels
    assert sc.shape == nib.load(image).shape  # file voxel order
    assert (sc == np.isin(labels, [1, 2])).all() and (lesion == (labels == 2)).all()
    assert set(res.probabilities) == {"sc", "lesion"}
    assert seen[-1].fraction == 1.0
    prov = res.provenance
    assert prov["task"] == "lesion_sci_t2" and prov["custom_model"] is True
    assert prov["device"] == "cpu" and prov["timings"]["predict_s"] > 0

    written = api.save(res)
    assert [p.name for p in written] == [
        "sub-01_T2w_sc_seg.nii.gz",
        "sub-01_T2w_lesion_seg.nii.gz",
    ]
    back = nib.load(written[0])
    assert np.array_equal(np.asarray(back.dataobj), sc)
    assert np.allclose(back.affine, nib.load(image).affine)
    side = json.loads((image.parent / "sub-01_T2w_sc_seg.json").read_text())
    gen = side["GeneratedBy"][0]
    assert gen["Name"] == "napari-spineseg" and gen["Task"] == "lesion_sci_t2"
    assert gen["ModelURL"].startswith("file:") and gen["Settings"]["test_time_aug"] is False

    one = tmp_path / "out" / "mask.nii.gz"
    names = api.output_paths(res, one)
    assert names == {
        "_sc_seg": tmp_path / "out/mask_sc_seg.nii.gz",
        "_lesion_seg": tmp_path / "out/mask_lesion_seg.nii.gz",
    }


def test_largest_and_remove_small_apply_per_output(image, region_model):
    res = api.segment(
        image,
        task="lesion_sci_t2",
        model=region_model,
        trust=True,
        device="cpu",
        largest=True,
        remove_small=["5", "100000vox"],
    )
    from scipy import ndimage

    assert ndimage.label(res.outputs["_sc_seg"].labels)[1] <= 1
    assert res.outputs["_lesion_seg"].labels.sum() == 0  # every lesion object < 100000 vox
    assert "_lesion_seg: remove_small 100000vox" in res.provenance["postprocessing"]


def test_engine_is_loaded_once(image, region_model, monkeypatch):
    from napari_spineseg.engines.nnunet import NnunetModel

    calls = []
    orig = NnunetModel.load.__func__

    def counting(cls, *a, **k):
        calls.append(a)
        return orig(cls, *a, **k)

    monkeypatch.setattr(NnunetModel, "load", classmethod(counting))
    for _ in range(2):
        api.segment(image, model=region_model, trust=True, device="cpu")
    assert len(calls) == 1


def test_cancel_raises_and_writes_nothing(image, region_model):
    token = CancelToken()

    def progress(p):
        if p.fraction > 0.1:
            token.cancel()

    with pytest.raises(Cancelled):
        api.segment(
            image, model=region_model, trust=True, device="cpu", progress=progress, cancel=token
        )
    assert sorted(p.name for p in image.parent.iterdir()) == ["sub-01_T2w.nii.gz"]


@pytest.mark.skipif(not ZIP_7T.is_file(), reason="tiny 7T release zip not built")
def test_7t_task_end_to_end_on_4d_input(tmp_path):
    api.install("gm_sc_7t_t2star", ZIP_7T, trust=True, log=None)
    img, _ = cord_phantom(gm=True)
    data = np.stack([np.asarray(img.dataobj)] * 2, axis=-1)
    img4 = nib.Nifti1Image(data, img.affine, img.header)
    p = tmp_path / "t2s.nii.gz"
    nib.save(img4, p)
    res = api.segment(p, task="gm_sc_7t_t2star", device="cpu")
    assert "4D (2 volumes)" in res.provenance["notes"][0]
    assert res.outputs["_7t_multiclass_sc"].labels.shape == img.shape
    ref = api.segment(img, task="gm_sc_7t_t2star", device="cpu")  # mean of equal volumes
    for s in ref.outputs:
        assert np.array_equal(ref.outputs[s].labels, res.outputs[s].labels)
    assert res.provenance["settings"]["threshold"] == 0.5
    assert len(api.save(res, tmp_path / "o" / "x.nii.gz")) == 2
    with pytest.raises(
        SaveRefusedError,
        match="not read from a file, so there is no default output name; pass out=<path>",
    ):
        api.output_paths(ref)  # in-memory image: no default name
