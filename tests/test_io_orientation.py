"""Display geometry in all 48 axis orientations (research/nifti.md §3.4 B5).

The same anatomy stored in any voxel order must give the *same* display array, the same
napari transform and the same world position for every voxel, and a mask painted on the
display must land back in the file's own voxel order.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import GeometryWarning
from napari_spineseg.io import load, save_labels
from napari_spineseg.io.geometry import RAS_TO_DISPLAY, DisplayGeometry

CODES = fx.all_axcodes()
TAG = (2, 4, 1)  # a voxel of the RAS phantom, found again by its unique value


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def _write_orientations(folder: Path, affine: np.ndarray):
    base = fx.phantom()
    for axcodes in CODES:
        data, aff = fx.reoriented(base, affine, axcodes)
        assert nib.aff2axcodes(aff) == axcodes
        yield axcodes, data, aff, fx.write_image(folder / f"{''.join(axcodes)}.nii.gz", data, aff)


def test_48_orientations_same_display_same_world(tmp_path):
    assert len(set(CODES)) == 48
    base = fx.phantom()
    affine = fx.oblique_affine()  # RAS, non-isotropic voxels
    tag_value = base[TAG]
    tag_world = RAS_TO_DISPLAY @ nib.affines.apply_affine(affine, TAG)
    reference = None
    for axcodes, data, _aff, path in _write_orientations(tmp_path, affine):
        vol = _load(path)
        geom = vol.geometry
        assert geom.file_axcodes == axcodes
        display = vol.display_data()
        if reference is None:
            reference = (display.copy(), geom)
        # same anatomy -> identical display array and napari transform
        assert np.array_equal(display, reference[0]), axcodes
        assert geom.display_shape == reference[1].display_shape
        np.testing.assert_allclose(geom.scale, reference[1].scale, rtol=1e-6)
        np.testing.assert_allclose(geom.translate, reference[1].translate, atol=1e-4)
        # the tagged voxel: napari world position = translate + scale * display index
        d_idx = np.argwhere(display == tag_value)
        assert len(d_idx) == 1
        world = np.asarray(geom.translate) + np.asarray(geom.scale) * d_idx[0]
        np.testing.assert_allclose(world, tag_world, atol=1e-4)
        # display -> file restores the stored voxel order exactly
        assert np.array_equal(geom.to_file(display), data)
        np.testing.assert_allclose(
            geom.world_to_file_index(world), np.argwhere(data == tag_value)[0], atol=1e-5
        )


def test_48_orientations_masks_save_in_file_order(tmp_path):
    """Paint on the display array; the saved mask is in each file's own voxel order."""
    base = fx.phantom()
    base_mask = (base % 5).astype(np.uint8)  # all 48 files get this anatomy's mask
    for axcodes, _data, _aff, path in _write_orientations(tmp_path, fx.oblique_affine()):
        vol = _load(path)
        expected, _ = fx.reoriented(base_mask, fx.oblique_affine(), axcodes)
        # what napari would hold: the mask in display order
        display_mask = _load_display_mask(base_mask, vol.geometry)
        out = save_labels(
            vol.geometry.to_file(display_mask), path.with_name("m_" + path.name), like=vol
        )
        saved = nib.load(str(out))
        assert np.array_equal(np.asanyarray(saved.dataobj), expected), axcodes
        assert np.array_equal(saved.affine, nib.load(str(path)).affine)


def _load_display_mask(base_mask: np.ndarray, geometry: DisplayGeometry) -> np.ndarray:
    ras = DisplayGeometry.from_affine(fx.oblique_affine(), base_mask.shape)
    display = ras.to_display(base_mask)
    assert display.shape == geometry.display_shape
    return display


def test_oblique_orientations_share_one_display_grid(tmp_path):
    """10 degrees of obliquity: nearest-grid display, still identical across orientations."""
    affine = fx.oblique_affine(degrees=10.0)
    displays, translates = [], []
    for axcodes, data, _, path in _write_orientations(tmp_path, affine):
        with pytest.warns(GeometryWarning, match="oblique acquisition"):
            vol = load(path)
        assert vol.geometry.obliquity_deg == pytest.approx(10.0, abs=0.01)
        displays.append(vol.display_data())
        translates.append(vol.geometry.translate)
        assert np.array_equal(vol.geometry.to_file(displays[-1]), data), axcodes
    assert all(np.array_equal(d, displays[0]) for d in displays)
    np.testing.assert_allclose(translates, [translates[0]] * len(translates), atol=1e-4)


@pytest.mark.parametrize("axcodes", CODES, ids=["".join(c) for c in CODES])
def test_napari_transform_is_diagonal_positive_and_not_mirrored(axcodes):
    """2D slices and the 3D view agree: display -> world is a positive diagonal scale.

    napari renders 3D with the layer's scale/translate; a negative scale or a permuted
    affine would mirror the 3D view relative to the 2D slices (or relative to RAS).
    """
    assert np.allclose(RAS_TO_DISPLAY @ RAS_TO_DISPLAY.T, np.eye(3))
    assert np.linalg.det(RAS_TO_DISPLAY) == pytest.approx(1.0)  # a rotation: no mirror
    data, aff = fx.reoriented(fx.phantom(), fx.oblique_affine(), axcodes)
    geom = DisplayGeometry.from_affine(aff, data.shape)
    # display voxel -> display world, from the exact affine
    lin = RAS_TO_DISPLAY @ geom.display_affine[:3, :3]
    np.testing.assert_allclose(lin, np.diag(geom.scale), atol=1e-12)
    assert all(s > 0 for s in geom.scale)
    kwargs = geom.layer_kwargs()
    assert kwargs["scale"] == geom.scale and kwargs["units"] == ("mm", "mm", "mm")
    np.testing.assert_allclose(
        np.asarray(geom.translate), RAS_TO_DISPLAY @ geom.display_affine[:3, 3], atol=1e-12
    )


def test_2d_file_round_trips_as_2d(tmp_path):
    data = fx.phantom(shape=(7, 6))
    path = fx.write_image(tmp_path / "slice.nii.gz", data, fx.oblique_affine())
    assert int(nib.load(str(path)).header["dim"][0]) == 2
    vol = _load(path)
    assert vol.shape == (7, 6) and vol.ndim_spatial == 2
    display = vol.display_data()
    assert display.ndim == 3 and 1 in display.shape  # a single slice for napari
    back = vol.geometry.to_file(display)
    assert back.shape == (7, 6) and np.array_equal(back, data)
    out = save_labels(back % 3, tmp_path / "slice_seg.nii.gz", like=vol)
    saved = nib.load(str(out))
    assert int(saved.header["dim"][0]) == 2 and saved.shape == (7, 6)
    assert np.array_equal(np.asanyarray(saved.dataobj), data % 3)
