"""Reader -> writer -> reload, without a viewer: what a user's saved mask will contain.

The npe2 reader and writer are called as napari calls them (``napari_get_reader(path)``
then the returned function; ``write_labels(path, data, meta)`` with the layer state).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import io
from napari_spineseg._reader import napari_get_reader
from napari_spineseg._writer import write_labels
from napari_spineseg.errors import GeometryWarning, LabelsError, NiftiError, SpinesegError
from napari_spineseg.layers import (
    find_volume_for,
    label_array,
    labels_layer_data_like,
    volume_layer_data,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/sct_testing_data"


def _data(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"SCT testing data not found at {p} (needs ../shared/data next to the repo)")
    return p


def _read(path) -> list:
    reader = napari_get_reader(str(path))
    assert reader is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return reader(str(path))


def _file_data(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


GEOMETRY_FIELDS = ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b")


def _same_geometry(a, b) -> None:
    ha, hb = nib.load(str(a)).header, nib.load(str(b)).header
    for field in GEOMETRY_FIELDS:
        assert np.array_equal(ha[field], hb[field]), field
    n = min(len(ha.get_data_shape()), 3)  # pixdim beyond a 2D file's rank is not geometry
    assert np.array_equal(ha["pixdim"][1 : n + 1], hb["pixdim"][1 : n + 1])


# ------------------------------------------------------------------------- reader
@pytest.mark.parametrize(
    "name", ["t2.nii", "a/b/T2.NII.GZ", "x.nii.gz", Path("p/q.nii.gz"), ["a.nii", "b.nii.gz"]]
)
def test_reader_claims_nifti_names(name):
    assert napari_get_reader(name) is not None


@pytest.mark.parametrize(
    "name", ["t2.tif", "t2.nii.bak", "folder", "x.hdr", "x.img", ["a.nii", "b.tif"], []]
)
def test_reader_declines_other_names(name):
    assert napari_get_reader(name) is None


def test_reader_decides_by_name_without_opening(tmp_path):
    # A file that does not exist yet: deciding must not touch the disk.
    assert napari_get_reader(str(tmp_path / "missing.nii.gz")) is not None


def test_reader_error_is_nifti_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not gzip at all")
    reader = napari_get_reader(str(bad))
    with pytest.raises(NiftiError, match=r"broken\.nii\.gz: named \.nii\.gz but it is not gzip"):
        reader(str(bad))


def test_reader_geometry_warning_is_a_warning():
    t2s = _data("t2s/t2s.nii.gz")
    with pytest.warns(GeometryWarning, match="oblique acquisition"):
        napari_get_reader(str(t2s))(str(t2s))


def test_t2_image_and_mask_layers_share_the_transform():
    (img, ikw, itype), (lab, lkw, ltype) = _read(_data("t2/t2.nii.gz")) + _read(
        _data("t2/t2_seg-manual.nii.gz")
    )
    assert (itype, ltype) == ("image", "labels")
    assert img.shape == lab.shape == (55, 60, 52)  # PSR file (60, 55, 52) -> I, P, L
    assert ikw["scale"] == lkw["scale"] and ikw["translate"] == lkw["translate"]
    assert ikw["axis_labels"] == ("S-I", "A-P", "R-L") and ikw["units"] == ("mm",) * 3
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    meta = lkw["metadata"]["spineseg"]
    assert meta["role"] == "labels" and meta["source_path"].endswith("t2_seg-manual.nii.gz")
    assert isinstance(meta["volume"], io.Volume)
    assert ikw["metadata"]["spineseg"]["role"] == "image"
    # robust window: 0.5th-99.5th percentiles, not min-max (a few bright voxels)
    lo, hi = np.percentile(np.asarray(img), (0.5, 99.5))
    assert ikw["contrast_limits"] == (float(lo), float(hi)) and hi < float(img.max())


def test_t2_display_axes_are_inferior_posterior_left():
    """Display voxel steps along axis 0/1/2 move Inferior/Posterior/Left in scanner space."""
    (_, kw, _) = _read(_data("t2/t2.nii.gz"))[0]
    vol = kw["metadata"]["spineseg"]["volume"]
    origin = vol.geometry.display_affine @ [0, 0, 0, 1]
    for axis, (ras_axis, sign) in enumerate([(2, -1), (1, -1), (0, -1)]):
        step = np.zeros(4)
        step[axis], step[3] = 1, 1
        delta = (vol.geometry.display_affine @ step - origin)[:3]
        assert np.argmax(np.abs(delta)) == ras_axis and np.sign(delta[ras_axis]) == sign


def test_4d_series_has_time_first():
    (data, kw, kind) = _read(_data("dmri/dmri.nii.gz"))[0]
    assert kind == "image"
    vol = kw["metadata"]["spineseg"]["volume"]
    assert data.shape[0] == 7 and data.shape[1:] == vol.geometry.display_shape
    assert len(kw["scale"]) == 4 and kw["scale"][1:] == vol.geometry.scale
    assert kw["scale"][0] == pytest.approx(float(vol.header["pixdim"][4]))
    np.testing.assert_array_equal(vol.geometry.to_file(np.asarray(data)), vol.data)


def test_nan_image_contrast_from_finite_values(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    arr[0, 0, 0] = np.nan
    arr[1, 0, 0] = np.inf
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), p)
    (_, kw, kind) = _read(p)[0]
    assert kind == "image"
    lo, hi = kw["contrast_limits"]
    finite = arr[np.isfinite(arr)]
    assert np.isfinite([lo, hi]).all()
    assert (lo, hi) == tuple(float(v) for v in np.percentile(finite, (0.5, 99.5)))


# ------------------------------------------------------------- round trips
def _roundtrip(layer, out: Path) -> Path:
    data, kw, kind = layer
    assert kind == "labels"
    written = write_labels(str(out), np.asarray(data), kw)
    assert written == [str(out.absolute())]
    return out


@pytest.mark.parametrize(
    "mask", ["t2/t2_seg-manual.nii.gz", "t2s/t2s_gmseg_manual.nii.gz", "mt/mt1_seg.nii.gz"]
)
def test_mask_roundtrip_is_exact(mask, tmp_path):
    src = _data(mask)
    out = _roundtrip(_read(src)[0], tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(_file_data(out), _file_data(src))
    _same_geometry(src, out)


def test_labels_drawn_on_image_save_on_its_grid_for_every_test_file(tmp_path):
    """t2 (PSR), t2s (oblique LAS), dmri (4D) and a 2D file: draw on the image, save."""
    twod = tmp_path / "slice2d.nii.gz"
    affine = np.array([[0, 0.5, 0, 3], [-0.5, 0, 0, 4], [0, 0, 2, 5], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.arange(30, dtype=np.int16).reshape(5, 6), affine), twod)
    sources = [
        _data("t2/t2.nii.gz"),
        _data("t2s/t2s.nii.gz"),
        _data("dmri/dmri.nii.gz"),
        twod,
    ]
    for src in sources:
        (_, kw, _) = _read(src)[0]
        vol = kw["metadata"]["spineseg"]["volume"]
        rng = np.random.default_rng(0)
        truth = rng.integers(0, 3, size=vol.spatial_shape).astype(np.uint8)
        layer = labels_layer_data_like(vol.geometry.to_display(truth), vol, "drawn")
        out = _roundtrip(layer, tmp_path / f"{io.load(src).name}_seg.nii.gz")
        np.testing.assert_array_equal(_file_data(out), truth)
        _same_geometry(src, out)


def test_painting_one_voxel_changes_exactly_that_voxel(tmp_path):
    src = _data("t2/t2_seg-manual.nii.gz")
    data, kw, _ = _read(src)[0]
    vol = kw["metadata"]["spineseg"]["volume"]
    display_index = (40, 7, 11)  # an arbitrary voxel, background in the manual mask
    assert data[display_index] == 0
    data[display_index] = 5
    out = _roundtrip((data, kw, "labels"), tmp_path / "painted.nii.gz")
    before, after = _file_data(src), _file_data(out)
    changed = np.argwhere(before != after)
    assert len(changed) == 1
    # The voxel napari shows at world position w is the one the file has there.
    world = np.array(kw["translate"]) + np.array(kw["scale"]) * display_index
    expected = np.rint(vol.geometry.world_to_file_index(world)).astype(int)
    assert tuple(changed[0]) == tuple(expected)
    assert after[tuple(expected)] == 5


def test_mask_can_be_saved_over_itself_with_history(tmp_path):
    src = _data("t2/t2_seg-manual.nii.gz")
    mask = tmp_path / "t2_seg.nii.gz"
    mask.write_bytes(src.read_bytes())
    data, kw, _ = _read(mask)[0]
    data[data == 1] = 2
    write_labels(str(mask), data, kw)
    assert set(np.unique(_file_data(mask))) == {0, 2}
    assert list((tmp_path / ".spineseg-history").rglob("*.nii.gz"))


def test_labels_drawn_on_image_never_overwrite_the_image(tmp_path):
    src = tmp_path / "t2.nii.gz"
    src.write_bytes(_data("t2/t2.nii.gz").read_bytes())
    (_, kw, _) = _read(src)[0]
    vol = kw["metadata"]["spineseg"]["volume"]
    layer = labels_layer_data_like(np.zeros(vol.geometry.display_shape, np.uint8), vol, "x")
    with pytest.raises(SpinesegError, match="is the source image"):
        write_labels(str(src), layer[0], layer[1])


def test_writer_refuses_layer_without_metadata_and_no_image(tmp_path):
    data = np.zeros((55, 60, 52), np.uint8)
    meta = {"name": "t2 - Labels", "scale": [1, 1, 1], "translate": [0, 0, 0], "metadata": {}}
    with pytest.raises(SpinesegError, match="(?i)open the source image with napari-spineseg"):
        write_labels(str(tmp_path / "x.nii.gz"), data, meta)
    assert not (tmp_path / "x.nii.gz").exists()


def test_find_volume_matches_new_labels_state_to_image():
    image = _read(_data("t2/t2.nii.gz"))[0]
    other = _read(_data("t2s/t2s.nii.gz"))[0]
    mask = _read(_data("t2/t2_seg-manual.nii.gz"))[0]
    state = {
        "name": "t2 - Labels",
        "scale": image[1]["scale"],
        "translate": image[1]["translate"],
        "metadata": {},
    }
    shape = image[0].shape
    vol = find_volume_for(state, [other, mask, image], shape=shape)
    assert vol is image[1]["metadata"]["spineseg"]["volume"]  # image wins over the mask
    moved = {**state, "translate": [t + 0.5 for t in state["translate"]]}
    with pytest.raises(SpinesegError, match="not on the grid"):
        find_volume_for(moved, [other, mask, image], shape=shape)


def test_4d_labels_collapse_to_the_painted_volume(tmp_path):
    src = _data("dmri/dmri.nii.gz")
    data, kw, _ = _read(src)[0]
    vol = kw["metadata"]["spineseg"]["volume"]
    labels = np.zeros(data.shape, np.uint8)  # what "New labels" makes from a 4D image
    labels[3, 2, 10:20, 10:20] = 1
    layer_meta = {"name": "dmri - Labels", "metadata": kw["metadata"]}
    out = tmp_path / "dmri_seg.nii.gz"
    write_labels(str(out), labels, layer_meta)
    np.testing.assert_array_equal(_file_data(out), vol.geometry.to_file(labels[3]))
    labels[4, 0, 0, 0] = 1
    with pytest.raises(LabelsError, match="differ between volumes"):
        write_labels(str(tmp_path / "bad.nii.gz"), labels, layer_meta)


# ------------------------------------------------------------- layer helpers
def test_label_array_dtypes():
    assert label_array(np.array([0, 255], np.int64)).dtype == np.uint8
    assert label_array(np.array([0, 256], np.int16)).dtype == np.int32
    assert label_array(np.array([0.0, 3.0], np.float32)).dtype == np.uint8
    with pytest.raises(LabelsError, match="not integers"):
        label_array(np.array([0.0, 0.5]))


def test_classes_give_names_and_colours():
    img, _ = _phantom_nifti()
    vol = io.from_nifti(img)
    data, kw, kind = volume_layer_data(
        vol, as_labels=True, classes={1: "cord", 2: "csf"}, colors={1: (255, 0, 0)}
    )
    assert kind == "labels"
    assert list(kw["features"]["index"]) == [0, 1, 2]
    assert kw["features"]["class"] == ["background", "cord", "csf"]
    assert kw["colormap"][1] == (1.0, 0.0, 0.0, 1.0)
    assert kw["colormap"][0][3] == 0.0 and kw["colormap"][2][3] == 1.0
    assert kw["metadata"]["spineseg"]["classes"] == {1: "cord", 2: "csf"}
    assert kw["metadata"]["spineseg"]["source_path"] == ""


def _phantom_nifti():
    from napari_spineseg.phantom import cord_phantom

    return cord_phantom(shape=(16, 16, 8), axcodes="PSR")


def test_sample_data_labels_save_on_phantom_grid(tmp_path):
    from napari_spineseg._sample_data import cord_phantom

    (img, ikw, itype), (lab, lkw, ltype) = cord_phantom()
    assert (itype, ltype) == ("image", "labels")
    assert ikw["scale"] == lkw["scale"] and ikw["translate"] == lkw["translate"]
    assert set(np.unique(lab)) == {0, 1, 2}
    vol = ikw["metadata"]["spineseg"]["volume"]
    assert vol.geometry.file_axcodes == ("P", "S", "R")
    out = tmp_path / "phantom_seg.nii.gz"
    write_labels(str(out), lab, lkw)
    saved = nib.load(str(out))
    assert nib.aff2axcodes(saved.affine) == ("P", "S", "R")
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), vol.geometry.to_file(lab))
    assert os.path.getsize(out) > 0


def test_demo_writes_verified_outputs(tmp_path, capsys):
    from napari_spineseg.demo import run_demo

    result = run_demo(tmp_path / "demo")
    assert nib.aff2axcodes(nib.load(str(result["image"])).affine) == ("P", "S", "R")
    mask = _file_data(result["mask"])
    assert set(np.unique(mask)) == {0, 1, 2}
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the shipped tiny nnU-Net ran through the public API and wrote SCT-named masks
    assert sorted(p.name for p in result["outputs"]) == [
        "phantom_T2w_cord_seg.nii.gz",
        "phantom_T2w_csf_seg.nii.gz",
    ]
    assert min(result["dice"].values()) >= 0.95
    for out in result["outputs"]:
        seg = _file_data(out)
        assert seg.shape == mask.shape and set(np.unique(seg)) <= {0, 1}
    assert str(tmp_path / "demo") in capsys.readouterr().out
    again = run_demo(tmp_path / "demo", verbose=False)  # a re-run replaces its files
    np.testing.assert_array_equal(_file_data(again["mask"]), mask)
