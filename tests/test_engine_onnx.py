"""The ivadomed ONNX engine (SCT task gm_sc_7t_t2star) against an independent re-implementation.

The model under test is the tiny stand-in built by ``scripts/build_onnx_7t.py`` (same ONNX
contract and JSON as the real ``model_7t_multiclass_gm_sc_unet2d``). The fidelity test
re-implements ivadomed's published inference steps here, with plain loops, so that a
mistake in the engine's vectorised version (crop rounding, zoom axes, orientation, noise
floor, 18-connectivity) shows up as a difference.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio
from scipy import ndimage

from napari_spineseg.engines.base import Prediction
from napari_spineseg.engines.ivadomed_onnx import (
    MODEL_NAME,
    IvadomedOnnxModel,
    min_sizes_per_class,
    normalize_instance,
)
from napari_spineseg.errors import Cancelled, ModelNotInstalledError, SpinesegError
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom
from napari_spineseg.postprocess import MinSize
from napari_spineseg.progress import CancelToken, Reporter

HERE = Path(__file__).resolve().parent
MODEL_ROOT = HERE / "data" / "models" / "gm_sc_7t"
MODEL_DIR = MODEL_ROOT / MODEL_NAME
ZIP = MODEL_ROOT / "model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip"
SCT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/sct_testing_data"


@pytest.fixture(scope="module")
def model() -> IvadomedOnnxModel:
    return IvadomedOnnxModel.load(MODEL_DIR, device="cpu")


def _truth(lab: nib.Nifti1Image) -> dict[str, np.ndarray]:
    data = np.asarray(lab.dataobj)
    return {"sc": np.isin(data, (1, 4)), "gm": data == 4}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _in_ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A voxel array on ``affine``'s grid, losslessly reoriented to RAS (world comparison)."""
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(arr, affine)).dataobj)


# ------------------------------------------------------------------------------------------
# Independent reference: ivadomed segment_volume + SCT's options, written out plainly.
# ------------------------------------------------------------------------------------------


def _ivadomed_normalize(crop: np.ndarray) -> np.ndarray:
    """ivadomed ``transforms.NormalizeInstance.__call__`` on the tensor ``NumpyToTensor`` made."""
    import torch

    sample = torch.from_numpy(np.ascontiguousarray(crop))
    if sample.std() < 1e-5:
        return (sample - sample.mean()).numpy()
    return ((sample - sample.mean()) / sample.std()).numpy()


def reference_segment(folder: Path, image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Return (soft probabilities after pred_to_nib's noise floor, SCT's binary masks).

    Both are (X, Y, Z, 2) in the input's voxel order, channels in target_suffix order.
    """
    import onnxruntime as ort

    cfg = json.loads((folder / f"{MODEL_NAME}.json").read_text())
    hspace = cfg["transformation"]["Resample"]["hspace"]
    wspace = cfg["transformation"]["Resample"]["wspace"]
    th, tw = cfg["transformation"]["CenterCrop"]["size"]
    thr = cfg["postprocessing"]["binarize_prediction"]["thr"]
    min_size = cfg["postprocessing"]["remove_small"]["thr"]
    session = ort.InferenceSession(str(folder / f"{MODEL_NAME}.onnx"))

    canonical = nib.as_closest_canonical(image)
    data = canonical.get_fdata(dtype=np.float32)
    zx, zy = canonical.header.get_zooms()[:2]
    nx, ny, nz = data.shape
    pred = np.zeros((nx, ny, nz, 2), dtype=np.float64)
    for z in range(nz):
        sl = data[:, :, z]
        if sl.std() == 0:  # SliceFilter(filter_empty_input=True)
            continue
        res = ndimage.zoom(sl[:, :, None], (zx / hspace, zy / wspace, 1.0), order=2)[:, :, 0]
        h, w = res.shape
        fh = int(round((h - th) / 2.0))
        fw = int(round((w - tw) / 2.0))
        crop = np.zeros((th, tw), dtype=np.float32)
        for i in range(th):
            for j in range(tw):
                if 0 <= fh + i < h and 0 <= fw + j < w:
                    crop[i, j] = res[fh + i, fw + j]
        crop = _ivadomed_normalize(crop)
        out = session.run(None, {"input": crop[None, None].astype(np.float32)})[0][0]
        for c in range(2):
            back = np.zeros((h, w), dtype=np.float32)
            for i in range(h):
                for j in range(w):
                    if 0 <= i - fh < th and 0 <= j - fw < tw:
                        back[i, j] = out[c, i - fh, j - fw]
            full = ndimage.zoom(back[:, :, None], (nx / h, ny / w, 1.0), order=1)[:, :, 0]
            pred[:, :, z, c] = full
    # Back to the input orientation through nibabel's own image API.
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.io_orientation(image.affine))
    soft = np.stack(
        [
            np.asarray(nib.Nifti1Image(pred[..., c], canonical.affine).as_reoriented(ornt).dataobj)
            for c in range(2)
        ],
        axis=-1,
    )
    soft[soft <= 0.01] = 0
    binary = (soft >= thr).astype(np.uint8)
    struct18 = np.zeros((3, 3, 3), bool)
    for d in np.ndindex(3, 3, 3):
        struct18[d] = sum(abs(k - 1) for k in d) <= 2
    for c in range(2):
        labels, n = ndimage.label(binary[..., c], structure=struct18)
        for k in range(1, n + 1):
            if (labels == k).sum() < min_size:
                binary[..., c][labels == k] = 0
    return soft, binary


# ------------------------------------------------------------------------------------------
# (a) fidelity
# ------------------------------------------------------------------------------------------


def test_fidelity_matches_independent_reimplementation(model):
    # 111 x 97 at 0.22 mm resamples to 139 x 121: a crop with a .5 offset on one axis and a
    # zero-padding with a -.5 offset on the other (Python rounds half to even); PSR voxel
    # order, an int16 image, and one constant slice that must be skipped.
    img, _ = cord_phantom(shape=(111, 97, 6), zooms=(0.22, 0.22, 1.5), axcodes="PSR", seed=11)
    data = np.asarray(img.dataobj).copy()
    data[:, 2, :] = 0  # axis 1 is S in PSR: one axial slice constant
    img = nib.Nifti1Image(data, img.affine, img.header)

    soft, binary = reference_segment(MODEL_DIR, img)
    pred = model.predict(img, Reporter())

    assert isinstance(pred, Prediction)
    for c, name in enumerate(("sc", "gm")):
        assert pred.maps[name].shape == img.shape
        assert pred.maps[name].dtype == np.uint8
        assert pred.probabilities[name].dtype == np.float32
        np.testing.assert_allclose(pred.probabilities[name], soft[..., c], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(pred.maps[name], binary[..., c])
    assert pred.maps["sc"].any() and pred.maps["gm"].any()
    assert pred.classes == {"sc": {1: "spinal cord"}, "gm": {1: "grey matter"}}
    assert pred.info["slices_skipped"] == 1


def test_default_postprocessing_is_scts():
    """SCT deletes keep_largest/fill_holes; binarize 0.5 and remove_small 3 vox remain."""
    m = IvadomedOnnxModel.load(MODEL_DIR, device="cpu")
    steps, soft = m._postprocessing_steps(None, None, False, False)
    assert [name for name, _ in steps] == [
        "remove_noise",
        "binarize_prediction",
        "uncertainty",
        "remove_small",
    ]
    assert dict(steps)["binarize_prediction"] == {"thr": 0.5}
    assert not soft
    steps, _ = m._postprocessing_steps(None, None, True, True)
    assert [name for name, _ in steps][:2] == ["remove_noise", "keep_largest"]
    assert "fill_holes" in dict(steps)


def test_remove_small_uses_18_connectivity_per_class(model):
    probs = np.zeros((8, 8, 8, 2), np.float32)
    probs[1, 1, 1, 0] = probs[2, 2, 1, 0] = probs[3, 3, 1, 0] = 0.9  # 3 voxels, edge-connected
    probs[6, 6, 6, 0] = probs[6, 6, 5, 0] = 0.9  # 2 voxels: removed (< 3)
    probs[3, 3, 3, 1] = probs[4, 4, 4, 1] = probs[5, 5, 5, 1] = 0.9  # corner-connected only
    steps, _ = model._postprocessing_steps(None, None, False, False)
    out = model._apply_postprocessing(probs, steps, (1.0, 1.0, 1.0))
    assert out[..., 0].sum() == 3 and out[1, 1, 1, 0] == 1 and out[6, 6, 6, 0] == 0
    # Corners do not connect with 18-connectivity: three single voxels, all removed.
    assert out[..., 1].sum() == 0
    steps, _ = model._postprocessing_steps(None, "4vox", False, False)
    out = model._apply_postprocessing(probs, steps, (1.0, 1.0, 1.0))
    assert out.sum() == 0
    steps, _ = model._postprocessing_steps(None, 0, False, False)
    out = model._apply_postprocessing(probs, steps, (1.0, 1.0, 1.0))
    assert out.sum() == 8  # remove_small off: every voxel >= 0.5 stays


def test_remove_small_settings_and_bad_values(model):
    assert min_sizes_per_class("5mm3", 2) == [MinSize(5, "mm3")] * 2
    assert [m.voxels((0.5, 0.5, 2.0)) for m in min_sizes_per_class("5mm3", 2)] == [10, 10]
    assert min_sizes_per_class(["10", "20vox"], 2) == [MinSize(10), MinSize(20)]
    assert min_sizes_per_class({"unit": "vox", "thr": 3}, 2) == [MinSize(3)] * 2
    assert min_sizes_per_class({"unit": "mm3", "thr": [4, 8]}, 2) == [
        MinSize(4, "mm3"),
        MinSize(8, "mm3"),
    ]
    with pytest.raises(SpinesegError, match="3 values for 2 classes"):
        min_sizes_per_class(["10", "20", "10vox"], 2)
    with pytest.raises(SpinesegError, match="cannot read 'three'"):
        min_sizes_per_class("three", 2)
    with pytest.raises(SpinesegError, match="unit must be 'vox' or 'mm3'"):
        min_sizes_per_class({"unit": "cm3", "thr": 3}, 2)
    with pytest.raises(SpinesegError, match="threshold must be between 0 and 1, got 1.5"):
        RunOptions(threshold=1.5)  # refused when the options are made, before the engine
    with pytest.raises(SpinesegError, match=r"threshold must be in \[0, 1\]"):
        model._postprocessing_steps(1.5, None, False, False)  # the engine's own guard


def test_normalize_instance_is_ivadomeds_to_the_bit():
    """Unbiased std on a float32 tensor, and centring only below std 1e-5 (not == 0)."""
    import torch

    rng = np.random.default_rng(7)
    for k in range(40):
        x = rng.standard_normal((128, 128)) * rng.uniform(1, 3000) + rng.uniform(0, 2000)
        x = x.astype(np.float32)
        x[: k % 50] = 0  # background rows, as a crop past the edge of the slice
        ours = normalize_instance(x)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, _ivadomed_normalize(x))
    # the numpy population std would differ: this guards the N - 1
    t = torch.from_numpy(x)
    assert not np.array_equal(ours, (x - x.mean()) / x.std())
    assert float(t.std()) == pytest.approx(x.std(ddof=1), rel=1e-6)
    # std just below 1e-5 (but not 0): only centred, as ivadomed
    flat = np.full((128, 128), 100.0, np.float32)
    flat[0, 0] += 1e-3  # unbiased std ~7.8e-6
    assert 0 < float(torch.from_numpy(flat).std()) < 1e-5
    np.testing.assert_array_equal(normalize_instance(flat), flat - np.float32(flat.mean()))
    np.testing.assert_array_equal(normalize_instance(flat), _ivadomed_normalize(flat))


def test_keep_largest_and_fill_holes_when_switched_on(model):
    probs = np.zeros((12, 12, 12, 2), np.float32)
    probs[0:2, 0:2, 0:2, 0] = 0.8  # 8 voxels, isolated: dropped
    probs[5:12, 5:12, 5:12, 0] = 0.9  # 343 voxels: the largest object
    probs[2:7, 2:7, 2:7, 1] = 0.9  # a hollow cube in class 1, overlapping the big blob
    probs[3:6, 3:6, 3:6, 1] = 0.0
    steps, _ = model._postprocessing_steps(None, 0, True, True)
    out = model._apply_postprocessing(probs, steps, (1.0, 1.0, 1.0))
    assert out[0:2, 0:2, 0:2, 0].sum() == 0 and out[5:12, 5:12, 5:12, 0].all()
    # ivadomed labels the 4D (x, y, z, class) array, so the class-1 cube is part of the
    # largest object through the overlap; fill_holes then fills its inside.
    assert out[2:7, 2:7, 2:7, 1].all()


# ------------------------------------------------------------------------------------------
# (b) accuracy of the stand-in on synthetic truth
# ------------------------------------------------------------------------------------------


def test_dice_against_synthetic_truth(model):
    img, lab = cord_phantom(shape=(112, 112, 8), zooms=(0.22, 0.22, 2.0), seed=4242, gm=True)
    seen = []
    pred = model.predict(img, Reporter(seen.append))
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("batch 1/1" in p.stage for p in seen)
    truth = _truth(lab)
    dice = {k: _dice(pred.maps[k], truth[k]) for k in ("sc", "gm")}
    assert dice["sc"] >= 0.95, dice
    assert dice["gm"] >= 0.95, dice


# ------------------------------------------------------------------------------------------
# (c) orientation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axcodes", ["SPL", "PSR"])
def test_non_canonical_copy_gives_identical_labels_in_world_space(model, axcodes):
    kw = {"shape": (96, 90, 5), "zooms": (0.25, 0.25, 2.0), "seed": 5, "gm": True}
    ras_img, _ = cord_phantom(axcodes="RAS", **kw)
    other_img, other_lab = cord_phantom(axcodes=axcodes, **kw)
    ras = model.predict(ras_img, Reporter())
    other = model.predict(other_img, Reporter())
    for name in ("sc", "gm"):
        assert other.maps[name].shape == other_img.shape
        # On the file grid the masks overlap the truth (voxel order handled)...
        assert _dice(other.maps[name], _truth(other_lab)[name]) > 0.8
        # ...and in world space they are the RAS run's, voxel for voxel.
        np.testing.assert_array_equal(_in_ras(other.maps[name], other_img.affine), ras.maps[name])
        np.testing.assert_array_equal(
            _in_ras(other.probabilities[name], other_img.affine), ras.probabilities[name]
        )


# ------------------------------------------------------------------------------------------
# (d) empty slices, 2D and single-slice inputs
# ------------------------------------------------------------------------------------------


def test_empty_and_constant_slices_give_zeros(model):
    img, _ = cord_phantom(shape=(90, 90, 5), zooms=(0.25, 0.25, 2.0), seed=3, gm=True)
    data = np.asarray(img.dataobj).copy()
    data[:, :, 1] = 0
    data[:, :, 3] = 500
    pred = model.predict(nib.Nifti1Image(data, img.affine, img.header), Reporter())
    for name in ("sc", "gm"):
        for z in (1, 3):
            assert not pred.maps[name][:, :, z].any()
            assert not pred.probabilities[name][:, :, z].any()
        assert pred.maps[name][:, :, 2].any()
    assert pred.info["slices_skipped"] == 2

    blank = model.predict(
        nib.Nifti1Image(np.zeros((40, 40, 3), np.float32), np.eye(4)), Reporter()
    )
    assert all(not m.any() for m in blank.maps.values())
    assert blank.info["slices_run"] == 0


def test_2d_and_single_slice_inputs(model):
    img, lab = cord_phantom(shape=(100, 100, 4), zooms=(0.22, 0.22, 2.0), seed=8, gm=True)
    data = np.asarray(img.dataobj)[:, :, 2]
    one = nib.Nifti1Image(data[:, :, None], img.affine)
    flat = nib.Nifti1Image(data, img.affine)
    p3 = model.predict(one, Reporter())
    p2 = model.predict(flat, Reporter())
    assert p3.maps["sc"].shape == (100, 100, 1)
    assert p2.maps["sc"].shape == (100, 100)
    for name in ("sc", "gm"):
        np.testing.assert_array_equal(p2.maps[name], p3.maps[name][:, :, 0])
    assert _dice(p3.maps["sc"][:, :, 0], _truth(lab)["sc"][:, :, 2]) > 0.9


def test_soft_output_with_threshold_zero(model):
    img, _ = cord_phantom(shape=(90, 90, 4), zooms=(0.25, 0.25, 2.0), seed=9, gm=True)
    hard = model.predict(img, Reporter())
    soft = model.predict(img, Reporter(), RunOptions(threshold=0))
    p = soft.probabilities["sc"]
    assert soft.info["soft"] and not hard.info["soft"]
    assert ((p > 0) & (p < 1)).any()  # genuinely soft
    assert p[p > 0].min() > 0.01  # pred_to_nib's noise floor
    np.testing.assert_array_equal(soft.maps["sc"], hard.maps["sc"])


# ------------------------------------------------------------------------------------------
# (e) cancellation
# ------------------------------------------------------------------------------------------


def test_cancel_through_reporter_raises_cancelled(model):
    img, _ = cord_phantom(shape=(48, 48, 45), zooms=(0.3, 0.3, 1.0), seed=2)  # 3 batches of 20
    token = CancelToken()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        model.predict(img, Reporter(on_progress, token))
    assert [p.step for p in seen] == [0, 1]  # stopped at the next report, batch 2 never ran
    assert seen[-1].total == 3 and "batch 1/3" in seen[-1].stage


# ------------------------------------------------------------------------------------------
# (f) real scan end to end
# ------------------------------------------------------------------------------------------


def test_real_t2s_scan_end_to_end(model):
    path = SCT_DATA / "t2s" / "t2s.nii.gz"
    if not path.exists():
        pytest.skip(f"SCT testing data not found at {path}")
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    pred = model.predict(img, Reporter())
    for name in ("sc", "gm"):
        assert pred.maps[name].shape == img.shape
        assert set(np.unique(pred.maps[name])) <= {0, 1}
        prob = pred.probabilities[name]
        assert prob.shape == img.shape and prob.dtype == np.float32
        assert prob.min() >= 0 and prob.max() <= 1
    assert pred.info["slices_run"] == img.shape[2]


# ------------------------------------------------------------------------------------------
# (g) installation problems, release zip
# ------------------------------------------------------------------------------------------


def test_missing_onnx_raises_model_not_installed(tmp_path):
    shutil.copy(MODEL_DIR / f"{MODEL_NAME}.json", tmp_path)
    with pytest.raises(ModelNotInstalledError) as err:
        IvadomedOnnxModel.load(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and ".onnx" in msg
    assert "spineseg install gm_sc_7t_t2star" in msg

    with pytest.raises(ModelNotInstalledError, match="does not exist"):
        IvadomedOnnxModel.load(tmp_path / "nowhere")


def test_missing_json_or_corrupt_onnx(tmp_path):
    shutil.copy(MODEL_DIR / f"{MODEL_NAME}.onnx", tmp_path)
    with pytest.raises(ModelNotInstalledError, match=f"{MODEL_NAME}.json"):
        IvadomedOnnxModel.load(tmp_path)
    shutil.copy(MODEL_DIR / f"{MODEL_NAME}.json", tmp_path)
    data = (tmp_path / f"{MODEL_NAME}.onnx").read_bytes()
    (tmp_path / f"{MODEL_NAME}.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotInstalledError, match="corrupt"):
        IvadomedOnnxModel.load(tmp_path)


def test_release_zip_layout_and_checksum(tmp_path):
    digest, name = (MODEL_ROOT / "SHA256").read_text().split()
    assert name == ZIP.name
    assert hashlib.sha256(ZIP.read_bytes()).hexdigest() == digest
    with zipfile.ZipFile(ZIP) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path)
    top = "model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012"
    assert f"{top}/{MODEL_NAME}/{MODEL_NAME}.onnx" in names
    assert f"{top}/{MODEL_NAME}/{MODEL_NAME}.json" in names
    # The unzipped archive loads from its top folder (recursive search), same weights.
    m = IvadomedOnnxModel.load(tmp_path / top, device="cpu")
    assert m.onnx_path.read_bytes() == (MODEL_DIR / f"{MODEL_NAME}.onnx").read_bytes()
    assert m.target_suffix == ("_7t_multiclass_sc", "_7t_multiclass_gm")
    assert m.crop_size == (128, 128) and m.hspace == m.wspace == 0.17578125
    size = sum(p.stat().st_size for p in MODEL_ROOT.rglob("*") if p.is_file())
    assert size < 300_000


def test_onnx_contract_matches_the_real_model(model):
    (inp,) = model.session.get_inputs()
    (out,) = model.session.get_outputs()
    assert inp.name == "input" and out.name == "output"
    assert inp.shape[1] in (1, "num_channels")
    x = np.zeros((3, 1, 128, 128), np.float32)
    y = model.session.run(None, {"input": x})[0]
    assert y.shape == (3, 2, 128, 128) and y.dtype == np.float32
    assert (y >= 0).all() and (y <= 1).all()
