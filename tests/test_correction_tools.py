"""Correction tools that return edits (napari_spineseg.correction.tools)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spineseg.correction.tools import (
    apply_edit,
    fill_holes,
    interpolate_between,
    remove_small,
)
from napari_spineseg.errors import LabelsError


def square(lab, k, rows, cols, value=1):
    lab[k, rows[0] : rows[1], cols[0] : cols[1]] = value


def test_interpolation_of_identical_slices_reproduces_the_shape():
    lab = np.zeros((7, 12, 12), np.uint8)
    square(lab, 1, (3, 7), (2, 9))
    square(lab, 5, (3, 7), (2, 9))
    before = lab.copy()
    edit = interpolate_between(lab, 1, 1, 5)
    np.testing.assert_array_equal(lab, before)  # input untouched
    out = apply_edit(lab, edit)
    for k in (2, 3, 4):
        np.testing.assert_array_equal(out[k], lab[1])
    np.testing.assert_array_equal(out[[0, 6]], 0)
    assert edit.n_voxels == 3 * 28
    assert set(edit.indices[0].tolist()) == {2, 3, 4}


@pytest.mark.parametrize("first", [0, 1])
def test_interpolation_moves_a_shape_instead_of_blending_it(first):
    # a disk (r=4) moved by 4 columns: halfway, the same disk moved by 2. A voxel-wise
    # blend would give the union or the intersection of the end disks instead.
    yy, xx = np.mgrid[:21, :25]
    lab = np.zeros((first + 3, 21, 25), np.uint8)
    lab[first][(yy - 10) ** 2 + (xx - 8) ** 2 <= 16] = 1
    lab[first + 2][(yy - 10) ** 2 + (xx - 12) ** 2 <= 16] = 1
    out = apply_edit(lab, interpolate_between(lab, 1, first + 2, first))[first:]  # either order
    lab = lab[first:]
    mid = out[1] == 1
    moved = (yy - 10) ** 2 + (xx - 10) ** 2 <= 16
    ys, xs = np.nonzero(mid)
    assert xs.mean() == pytest.approx(10.0) and ys.mean() == pytest.approx(10.0)
    assert (mid & moved).sum() / (mid | moved).sum() > 0.95
    np.testing.assert_array_equal(out[[0, 2]], lab[[0, 2]])


def test_interpolation_replaces_class_between_but_preserves_other_labels():
    lab = np.zeros((5, 10, 10), np.uint8)
    square(lab, 0, (2, 6), (2, 6))
    square(lab, 4, (2, 6), (2, 6))
    lab[2, 8, 8] = 1  # stray cord voxel outside the interpolated shape: removed
    lab[2, 3, 3] = 2  # another class inside the shape: kept with preserve_labels
    out = apply_edit(lab, interpolate_between(lab, 1, 0, 4))
    assert out[2, 8, 8] == 0 and out[2, 3, 3] == 2
    assert (out[2] == 1).sum() == 15
    out = apply_edit(lab, interpolate_between(lab, 1, 0, 4, preserve_labels=False))
    assert out[2, 3, 3] == 1 and (out[2] == 1).sum() == 16


def _disk_mm(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    """Pixels whose centre lies within ``radius_mm`` of ``centre_mm`` (row, col in mm)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    dr = rows * spacing[0] - centre_mm[0]
    dc = cols * spacing[1] - centre_mm[1]
    return dr**2 + dc**2 <= radius_mm**2


@pytest.mark.parametrize("spacing", [(1.0, 3.0), (3.0, 1.0)])
def test_interpolation_measures_distances_in_mm_on_anisotropic_pixels(spacing):
    """A 5 mm disk moved by 6 mm between two slices is, halfway, the same disk moved by
    3 mm, on 1 x 3 mm pixels as on square ones. Measured in pixels instead, the disk is an
    ellipse whose short axis is shorter than the move, and its middle shrinks (19 instead
    of 29 pixels): the test fails if ``spacing`` is ignored or its axes are swapped."""
    shape = (21, 11) if spacing == (1.0, 3.0) else (11, 21)
    move = np.array([6.0, 0.0]) if spacing == (1.0, 3.0) else np.array([0.0, 6.0])
    centre = np.array([7.0, 15.0]) if spacing == (1.0, 3.0) else np.array([15.0, 7.0])
    lab = np.zeros((3, *shape), np.uint8)
    lab[0][_disk_mm(shape, spacing, centre, 5.0)] = 1
    lab[2][_disk_mm(shape, spacing, centre + move, 5.0)] = 1
    out = apply_edit(lab, interpolate_between(lab, 1, 0, 2, spacing=spacing))
    halfway = _disk_mm(shape, spacing, centre + move / 2, 5.0)
    assert halfway.sum() == 29
    np.testing.assert_array_equal(out[1] == 1, halfway)
    np.testing.assert_array_equal(out[[0, 2]], lab[[0, 2]])


def _signed_distance_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Reference by brute force: from each pixel centre, the distance in mm to the nearest
    pixel of the other set (the class from outside, the background from inside), negative
    inside."""
    points = np.argwhere(np.ones_like(mask, bool)) * np.asarray(spacing, float)
    inside = mask.ravel()
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
    to_class = np.where(inside[None, :], dist, np.inf).min(axis=1)
    to_background = np.where(~inside[None, :], dist, np.inf).min(axis=1)
    return np.where(inside, -to_background, to_class).reshape(mask.shape)


def test_interpolation_is_the_blend_of_signed_distances_in_mm():
    """Slices 1 and 5 (not 0 and 2): each slice between is ``(1 - t) d1 + t d5 <= 0`` with
    ``t`` = 1/4, 1/2, 3/4 and the distances in mm, here for a 6 mm disk moved by 12 mm
    along the 3 mm axis (shape-based interpolation shrinks its middle: documented)."""
    spacing = (1.0, 3.0)
    shape = (21, 15)
    start = _disk_mm(shape, spacing, (10.0, 12.0), 6.0)
    end = _disk_mm(shape, spacing, (10.0, 24.0), 6.0)
    lab = np.zeros((7, *shape), np.uint8)
    lab[1][start] = 1
    lab[5][end] = 1
    lab[3, 0, 0] = 2  # another class outside the shape: left alone (preserve_labels)
    out = apply_edit(lab, interpolate_between(lab, 1, 5, 1, spacing=spacing))
    d_start, d_end = _signed_distance_mm(start, spacing), _signed_distance_mm(end, spacing)
    for k, t in ((2, 0.25), (3, 0.5), (4, 0.75)):
        blend = (1 - t) * d_start + t * d_end
        assert np.abs(blend).min() > 1e-3  # no pixel on the fence: rounding cannot flip it
        np.testing.assert_array_equal(out[k] == 1, blend <= 0, f"slice {k}")
    assert [int((out[k] == 1).sum()) for k in (2, 3, 4)] == [20, 5, 20]
    assert out[3, 0, 0] == 2
    np.testing.assert_array_equal(out[[0, 1, 5, 6]], lab[[0, 1, 5, 6]])


def test_interpolation_between_adjacent_slices_changes_nothing():
    """Nothing lies between slices 2 and 3: an empty edit (even where the class is absent
    from one of them) that applies as a no-op, also on a one-voxel-wide volume."""
    lab = np.zeros((4, 1, 1), np.uint8)
    lab[2] = 1
    for a, b in ((2, 3), (3, 2), (2, 2)):
        edit = interpolate_between(lab, 1, a, b)
        assert edit.n_voxels == 0 and len(edit.indices) == 3
        assert all(i.dtype == np.intp and i.size == 0 for i in edit.indices)
        assert edit.values.dtype == lab.dtype
        np.testing.assert_array_equal(apply_edit(lab, edit), lab)


def test_interpolation_errors():
    lab = np.zeros((5, 6, 6), np.uint8)
    lab[0, 2, 2] = 1
    with pytest.raises(
        LabelsError,
        match="^slice 4 has no voxel of label 1: paint the class on both end slices before "
        "interpolating$",
    ):
        interpolate_between(lab, 1, 0, 4)
    with pytest.raises(LabelsError, match="outside 0..4"):
        interpolate_between(lab, 1, 0, 5)
    assert interpolate_between(lab, 1, 0, 1).n_voxels == 0  # adjacent: nothing between
    with pytest.raises(LabelsError, match="3D integer"):
        interpolate_between(lab.astype(float), 1, 0, 4)


def test_remove_small_components():
    lab = np.zeros((6, 10, 10), np.uint8)
    lab[1:5, 2:5, 2:5] = 1  # 36 voxels, kept
    lab[0, 8, 8] = 1  # 1 voxel
    lab[3, 7, 7] = lab[4, 8, 8] = 1  # 2 voxels touching by a corner: one object in 3D
    lab[5, 0, 0] = 2  # other class: untouched
    edit = remove_small(lab, 1, 3)
    out = apply_edit(lab, edit)
    assert edit.n_voxels == 3 and (edit.values == 0).all()
    assert (out == 1).sum() == 36 and out[5, 0, 0] == 2
    # with face connectivity the corner pair is two single voxels (still removed at 2)
    assert remove_small(lab, 1, 2, connectivity=1).n_voxels == 3
    assert remove_small(lab, 1, 2).n_voxels == 1
    assert remove_small(lab, 7, 5).n_voxels == 0
    assert edit.values.dtype == lab.dtype


def test_fill_holes_2d_3d_and_preserve_labels():
    lab = np.zeros((5, 9, 9), np.uint8)
    lab[1:4, 2:7, 2:7] = 1
    lab[2, 4, 4] = 0  # hole enclosed on its slice (and in 3D)
    lab[1:4, 5, 5] = 0  # tube through slices 1..3: enclosed in 2D on each slice, but open
    # to slice 0 (no cord there: the border of the volume) in 3D
    lab[3, 3, 3] = 2  # another class inside the cord: not overwritten
    # 2D: the hole on slice 2 and the tube voxels on 1..3 are all enclosed in-plane
    out2 = apply_edit(lab, fill_holes(lab, 1, "2d"))
    assert out2[2, 4, 4] == 1 and out2[1:4, 5, 5].tolist() == [1, 1, 1]
    assert out2[3, 3, 3] == 2
    # 3D: the tube is open to the top face (slice 0 has no cord) -> not a hole
    out3 = apply_edit(lab, fill_holes(lab, 1, "3d"))
    assert out3[2, 4, 4] == 1 and out3[1:4, 5, 5].tolist() == [0, 0, 0]
    both = fill_holes(lab, 1, "both")
    assert both.n_voxels == fill_holes(lab, 1, "2d").n_voxels == 4
    assert fill_holes(lab, 1, "3d").n_voxels == 1
    assert fill_holes(lab, 1, "2d", preserve_labels=False).n_voxels == 5
    assert fill_holes(lab, 7).n_voxels == 0  # a class that is absent: nothing to fill
    with pytest.raises(ValueError, match="use '2d', '3d' or 'both'"):
        fill_holes(lab, 1, "4d")


def test_edits_apply_through_a_data_setitem_like_call():
    lab = np.zeros((3, 5, 5), np.int16)
    lab[1, 1:4, 1:4] = 1
    lab[1, 2, 2] = 0
    edit = fill_holes(lab, 1)
    target = lab.copy()
    target[edit.indices] = edit.values  # what napari's layer.data_setitem does
    assert target[1, 2, 2] == 1 and edit.values.dtype == np.int16
    lab[2, 0, 0] = 1  # a speck: removed, with values in the labels' dtype
    assert remove_small(lab, 1, 2).values.dtype == np.int16


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cropped_tools_match_full_volume_reference(seed):
    """The tools work in the class's bounding box: same result as on the whole volume,
    including objects touching the volume border."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    lab = (ndimage.uniform_filter(rng.random((12, 30, 30)), 3) > 0.55).astype(np.uint8)
    lab[:, :8, :8] = 0
    lab[rng.random(lab.shape) < 0.02] = 2
    mask = lab == 1

    ref3 = ndimage.binary_fill_holes(mask) & (lab == 0)
    ref2 = np.stack([ndimage.binary_fill_holes(m) for m in mask]) & (lab == 0)
    np.testing.assert_array_equal(apply_edit(lab, fill_holes(lab, 1, "3d")) == 1, mask | ref3)
    np.testing.assert_array_equal(apply_edit(lab, fill_holes(lab, 1, "2d")) == 1, mask | ref2)

    cc, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(cc.ravel())
    keep = mask & (sizes[cc] >= 5)
    np.testing.assert_array_equal(apply_edit(lab, remove_small(lab, 1, 5)) == 1, keep)
