"""Edit tracking against the model output (napari_spineseg.correction.edits)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_spineseg.correction.edits import EditTracker
from napari_spineseg.errors import LabelsError


def model_output() -> np.ndarray:
    lab = np.zeros((10, 12, 12), np.uint8)
    lab[2:8, 4:8, 4:8] = 1  # 16 cord voxels per slice
    lab[4, 5:7, 5:7] = 3  # 4 lesion voxels
    return lab


def test_no_edit_reports_nothing():
    lab = model_output()
    summary = EditTracker(lab).diff(lab)
    assert not summary.has_edits
    assert (summary.added, summary.removed, summary.slices) == ({}, {}, ())


def test_added_removed_per_class_and_slices():
    out = model_output()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[3, 0, 0:3] = 1  # +3 cord
    cur[6, 4, 4:8] = 0  # -4 cord
    cur[4, 5, 5] = 1  # lesion -> cord: -1 lesion, +1 cord
    s = tracker.diff(cur)
    assert s.added == {1: 4}
    assert s.removed == {1: 4, 3: 1}
    assert s.net(1) == 0 and s.net(3) == -1
    assert s.changed_voxels == 8
    assert s.slices == (3, 4, 6)
    assert s.per_slice == {3: 3, 4: 1, 6: 4}
    assert s.by_class({1: "cord", 3: "lesion"}) == {
        "cord": {"added": 4, "removed": 4},
        "lesion": {"added": 0, "removed": 1},
    }


def test_tracker_keeps_its_own_copy():
    out = model_output()
    tracker = EditTracker(out)
    out[2, 0, 0] = 1  # the caller paints into the array it gave us
    assert tracker.diff(out).changed_voxels == 1
    with pytest.raises(ValueError):
        tracker.model_output[0, 0, 0] = 5  # read-only baseline


def test_bbox_hint_updates_only_those_slices_and_matches_full_diff():
    out = model_output()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[3, 0, 0] = 1
    tracker.diff(cur, bbox=(slice(3, 4), slice(0, 1), slice(0, 1)))
    cur[7, 4:6, 4:6] = 0
    cur[8, 1, 1] = 9  # a new label id the model never used
    hinted = tracker.diff(cur, bbox=(slice(7, 9), slice(1, 6), slice(1, 6)))
    full = EditTracker(out).diff(cur)
    assert hinted == full
    assert hinted.added == {1: 1, 9: 1} and hinted.removed == {1: 4}
    # undoing a stroke brings the slice back to "no edits"
    cur[3, 0, 0] = 0
    assert tracker.diff(cur, slices=[3]).slices == (7, 8)


def test_rebase_after_refine_counts_edits_against_the_new_prediction():
    out = model_output()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[2:4, 4:8, 4:8] = 0  # the user erased the cord on slices 2-3...
    assert tracker.diff(cur).removed == {1: 32}
    refined = np.zeros((2, 12, 12), np.uint8)  # ...and the refined model agrees
    tracker.rebase(2, refined)
    s = tracker.diff(cur, slices=[])  # stale slices are recomputed without a hint
    assert not s.has_edits
    with pytest.raises(LabelsError, match="does not fit"):
        tracker.rebase(9, refined)


def test_shape_mismatch_and_bad_inputs():
    tracker = EditTracker(model_output())
    with pytest.raises(LabelsError, match="do not match the model output"):
        tracker.diff(np.zeros((10, 12, 11), np.uint8))
    with pytest.raises(LabelsError, match="3D integer"):
        EditTracker(np.zeros((4, 4), np.uint8))
    with pytest.raises(IndexError):
        tracker.diff(model_output(), slices=[10])


def test_cost_on_a_64x320x320_volume():
    """A paint stroke's diff must be far below a frame (measured figures in the report)."""
    rng = np.random.default_rng(0)
    out = np.zeros((64, 320, 320), np.uint8)
    out[:, 140:180, 140:180] = 1
    out[:, 150:170, 150:170] = 2
    tracker = EditTracker(out)
    cur = out.copy()
    t0 = time.perf_counter()
    tracker.diff(cur)
    full = time.perf_counter() - t0
    hinted = []
    for _ in range(20):
        k = int(rng.integers(64))
        cur[k, 100:110, 100:110] = 1
        t0 = time.perf_counter()
        tracker.diff(cur, bbox=(slice(k, k + 1), slice(100, 110), slice(100, 110)))
        hinted.append(time.perf_counter() - t0)
    assert tracker.diff(cur) == EditTracker(out).diff(cur)
    assert full < 0.5 and np.median(hinted) < 0.05  # generous bounds on a shared CPU


def test_rebase_can_be_switched_off_and_on_with_undo_and_redo():
    """Undoing a refine's Apply must give the old reference back (and redo the new one);
    overlapping rebases apply in order."""
    out = model_output()
    tracker = EditTracker(out)
    refined = np.zeros((3, 12, 12), np.uint8)
    first = tracker.rebase(3, refined)  # slices 3..5 predicted empty
    second = tracker.rebase(5, np.ones((2, 12, 12), np.uint8))  # slices 5..6 all cord
    assert tracker.diff(out).changed_voxels == 16 + 16 + 2 * (144 - 16)  # slices 3, 4, 5, 6
    assert tracker.set_rebase_active(second, False)
    assert not tracker.set_rebase_active(second, False)  # already off: nothing changes
    np.testing.assert_array_equal(tracker.model_output[5], refined[2])
    np.testing.assert_array_equal(tracker.model_output[6], out[6])
    tracker.set_rebase_active(first, False)
    np.testing.assert_array_equal(tracker.model_output, out)
    assert tracker.diff(out, slices=[]).changed_voxels == 0  # stale slices recomputed
    tracker.set_rebase_active(second, True)
    assert tracker.rebase_active(second) and not tracker.rebase_active(first)
    np.testing.assert_array_equal(tracker.model_output[5:7], 1)
    np.testing.assert_array_equal(tracker.model_output[3:5], out[3:5])
