"""Crop-and-refine merge and trim (napari_spineseg.correction.refine)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spineseg.correction.refine import merge_slab, slab_with_margin, trim_slab
from napari_spineseg.correction.tools import apply_edit
from napari_spineseg.errors import LabelsError


def test_slab_with_margin_is_clipped():
    assert slab_with_margin(10, 20, 64, 8) == (2, 28)
    assert slab_with_margin(2, 5, 64, 8) == (0, 13)
    assert slab_with_margin(60, 64, 64, 8) == (52, 64)
    assert slab_with_margin(3, 4, 64, 0) == (3, 4)
    with pytest.raises(
        LabelsError,
        match=r"^slab \[5, 5\) is not a non-empty range of slices inside 0\.\.64: pick a first "
        "slice above the last one, both inside the volume$",
    ):
        slab_with_margin(5, 5, 64, 2)
    with pytest.raises(LabelsError, match="slab"):
        slab_with_margin(60, 70, 64, 2)
    with pytest.raises(LabelsError, match="margin"):
        slab_with_margin(1, 4, 64, -1)


@pytest.fixture
def volumes():
    original = np.zeros((10, 6, 6), np.uint8)
    original[:, 2:4, 2:4] = 1  # model output: cord everywhere
    current = original.copy()
    current[1, 0, 0] = 1  # user edit at the top (inside the slab)
    current[7, 2, 2] = 0  # user edit outside the slab
    refined = np.zeros((6, 6, 6), np.uint8)  # prediction for crop [0, 6)
    refined[:, 1:5, 1:5] = 1  # the new model sees a wider cord
    return original, current, refined


def test_merge_replaces_only_the_slab_and_keeps_user_edits(volumes):
    original, current, refined = volumes
    frozen = [a.copy() for a in volumes]
    res = merge_slab(current, original, refined, slab=(1, 4), crop=(0, 6))
    for a, b in zip(volumes, frozen):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    m = res.merged
    np.testing.assert_array_equal(m[1:4, 1:5, 1:5], 1)  # refined inside the slab
    assert m[1, 0, 0] == 1  # the user's edit is kept
    np.testing.assert_array_equal(m[:1], current[:1])  # margin: untouched
    np.testing.assert_array_equal(m[4:], current[4:])  # outside: untouched (edit at 7)
    assert res.n_changed == 3 * 12  # the ring of 12 new voxels on slices 1..3
    assert res.kept_edits == 1  # (1, 0, 0): refined says 0, the user said 1
    np.testing.assert_array_equal(res.change_mask, m != current)
    np.testing.assert_array_equal(apply_edit(current, res.edit), m)


def test_merge_keeps_the_reviewers_erasures_and_relabels_inside_the_slab(volumes):
    """An edit is any voxel the reviewer changed, not only a voxel they painted: erasing
    cord the model found (value -> 0) or repainting it with another class must survive a
    refine that predicts the cord there again."""
    original, current, refined = volumes
    current = current.copy()
    current[2, 2, 2] = 0  # erased: the model said cord, the reviewer says background
    current[3, 3, 3] = 2  # relabelled: cord -> class 2
    res = merge_slab(current, original, refined, slab=(1, 4), crop=(0, 6))
    assert refined[2, 2, 2] == 1 and refined[3, 3, 3] == 1  # the refine says cord
    assert res.merged[2, 2, 2] == 0  # the erasure is kept
    assert res.merged[3, 3, 3] == 2  # and so is the relabel
    assert res.kept_edits == 3  # (1, 0, 0) painted, (2, 2, 2) erased, (3, 3, 3) relabelled
    # everything else inside the slab is the refined prediction
    slab = np.zeros(current.shape, bool)
    slab[1:4] = True
    edited = current != original
    np.testing.assert_array_equal(res.merged[slab & ~edited], refined[1:4][~edited[1:4]])
    np.testing.assert_array_equal(res.merged[edited], current[edited])


def test_merge_without_keep_edits_takes_the_prediction(volumes):
    original, current, refined = volumes
    res = merge_slab(current, original, refined, slab=(1, 4), keep_edits=False, crop=(0, 6))
    assert res.merged[1, 0, 0] == 0 and res.kept_edits == 0
    assert res.n_changed == 3 * 12 + 1


def test_merge_default_crop_is_the_slab(volumes):
    original, current, refined = volumes
    res = merge_slab(current, original, refined[1:4], slab=(1, 4))
    np.testing.assert_array_equal(
        res.merged, merge_slab(current, original, refined, (1, 4), crop=(0, 6)).merged
    )


@pytest.mark.parametrize("crop", [(0, 10), (1, 5), (2, 4)])
def test_merge_takes_the_slab_from_wherever_the_crop_starts(volumes, crop):
    """The refined array covers ``crop`` (here also past the 6-pixel in-plane size, and
    starting after slice 0): its slab rows are found by the crop's start."""
    original, current, _ = volumes
    prediction = np.zeros(current.shape, np.uint8)  # the model's labels for the whole volume
    prediction[:, 1:5, 1:5] = 1
    prediction[2, 5, 5] = 1  # one voxel that only slice 2 has
    res = merge_slab(current, original, prediction[crop[0] : crop[1]], (2, 4), crop=crop)
    reference = merge_slab(current, original, prediction[2:4], (2, 4))
    np.testing.assert_array_equal(res.merged, reference.merged)
    assert res.merged[2, 5, 5] == 1 and res.merged[3, 5, 5] == 0


def test_merge_accepts_the_largest_label_the_layer_holds(volumes):
    """255 fits a uint8 layer (the refusal is for 256 and more, tested below)."""
    original, current, refined = volumes
    refined = refined.copy()
    refined[2, 0, 1] = 255
    res = merge_slab(current, original, refined, (1, 4), crop=(0, 6))
    assert res.merged[2, 0, 1] == 255 and res.merged.dtype == np.uint8


def test_merge_shape_errors(volumes):
    original, current, refined = volumes
    with pytest.raises(
        LabelsError,
        match=r"^refined prediction has shape \(6, 6, 6\), expected \(3, 6, 6\) \(slices 1\.\.3 "
        "on the labels' in-plane grid\\)$",
    ):
        merge_slab(current, original, refined, slab=(1, 4))  # forgot crop=
    with pytest.raises(LabelsError, match="does not cover"):
        merge_slab(current, original, refined, slab=(1, 8), crop=(0, 6))
    with pytest.raises(
        LabelsError,
        match=r"^current labels \(10, 6, 6\) and model output \(5, 6, 6\) must be the same 3D "
        "grid$",
    ):
        merge_slab(current, original[:5], refined, slab=(1, 4), crop=(0, 6))
    with pytest.raises(LabelsError, match="in-plane grid"):
        merge_slab(current, original, refined[:, :5], slab=(1, 4), crop=(0, 6))
    wide = refined.astype(np.int16)
    wide[2, 0, 0] = 300  # a label id a uint8 layer cannot hold: refused, not wrapped to 44
    with pytest.raises(LabelsError, match="does not fit the layer's uint8"):
        merge_slab(current, original, wide, slab=(1, 4), crop=(0, 6))


def test_trim_clears_the_slab_or_some_classes():
    lab = np.zeros((6, 4, 4), np.uint8)
    lab[:, 1:3, 1:3] = 1
    lab[:, 0, 0] = 2
    res = trim_slab(lab, (4, 6))
    assert res.kept_edits == 0  # a trim keeps nothing of the old labels in its slab
    np.testing.assert_array_equal(res.merged[4:], 0)
    np.testing.assert_array_equal(res.merged[:4], lab[:4])
    assert res.n_changed == 2 * 5
    res = trim_slab(lab, (0, 2), values=[2])
    assert res.n_changed == 2 and (res.merged[:2] == 1).sum() == 8
    assert lab[0, 0, 0] == 2  # input untouched
    with pytest.raises(LabelsError, match=r"slab \[4, 9\) is not a non-empty range .* 0\.\.6"):
        trim_slab(lab, (4, 9))
    with pytest.raises(
        LabelsError, match=r"^trim_slab needs a 3D label array, got shape \(4, 4\)$"
    ):
        trim_slab(lab[0], (0, 1))
