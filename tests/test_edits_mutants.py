"""Edit-tracking cases found by mutation testing (benchmarks/README.md, correction/edits.py).

What the review panel and the provenance record show must be right on every path: a class
only added or only removed, an all-background model output, slices that are not square,
hints that are not contiguous, a class first seen after a refine, rebases at the first and
last slice and overlapping ones switched off in any order. Expected counts are worked out
by hand from the voxels painted, and every hinted result is also compared with a fresh
full comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_spineseg.correction.edits import EditTracker
from napari_spineseg.errors import LabelsError


def _cord(shape=(6, 4, 5)) -> np.ndarray:
    """Slices of 4 x 5 voxels (not square) with a 2 x 2 'cord' (class 1) on every slice."""
    out = np.zeros(shape, np.uint8)
    out[:, 1:3, 1:3] = 1
    return out


def test_classes_only_added_or_only_removed():
    out = _cord()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[0, 1:3, 1:3] = 0  # cord erased on slice 0: 4 voxels
    cur[1, 0, 0:3] = 2  # lesion painted on slice 1: 3 voxels
    cur[3, 3, 3:5] = 7  # a value no class is named for: 2 voxels
    s = tracker.diff(cur)
    assert s.added == {2: 3, 7: 2} and s.removed == {1: 4}
    assert (s.net(1), s.net(2), s.net(7), s.net(5)) == (-4, 3, 2, 0)
    assert s.by_class({1: "cord", 2: "lesion"}) == {
        "cord": {"added": 0, "removed": 4},
        "lesion": {"added": 3, "removed": 0},
        "7": {"added": 2, "removed": 0},
    }
    assert s.slices == (0, 1, 3) and s.per_slice == {0: 4, 1: 3, 3: 2}
    assert s.changed_voxels == 9


def test_all_background_model_output():
    """The model found nothing (every voxel 0): the reviewer's painting is still counted."""
    out = np.zeros((3, 4, 5), np.uint8)
    cur = out.copy()
    cur[1, 2, 3] = 1
    s = EditTracker(out).diff(cur)
    assert (s.added, s.removed, s.per_slice) == ({1: 1}, {}, {1: 1})


def test_empty_volume_has_no_edits():
    s = EditTracker(np.zeros((0, 4, 4), np.uint8)).diff(np.zeros((0, 4, 4), np.uint8))
    assert not s.has_edits and s.slices == ()


def test_negative_labels_refused_in_full():
    negative = np.full((2, 3, 3), -1, np.int16)
    with pytest.raises(LabelsError, match=r"^EditTracker: label values must not be negative$"):
        EditTracker(negative)
    tracker = EditTracker(np.zeros((2, 3, 3), np.int16))
    with pytest.raises(LabelsError, match=r"^EditTracker: label values must not be negative$"):
        tracker.diff(negative)


def test_slice_hints_bounds_and_message():
    out = _cord()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[0, 0, 0] = 1
    assert tracker.diff(cur, slices=[0]).per_slice == {0: 1}  # slice 0 is a slice
    for bad in ([-1], [6], [0, 6]):
        with pytest.raises(IndexError, match=r"^slice index out of range 0\.\.5$"):
            tracker.diff(cur, slices=bad)


def test_hints_not_contiguous_and_a_new_class_on_non_square_slices():
    out = _cord()
    tracker = EditTracker(out)
    cur = out.copy()
    cur[1, 0, 0:2] = 1
    cur[2, 3, 0:4] = 1
    s = tracker.diff(cur, slices=[1, 2])
    assert s.per_slice == {1: 2, 2: 4} and s.added == {1: 6}
    cur[4, 0, 4] = 5  # a class above every value seen so far: the counts grow a column
    s = tracker.diff(cur, slices=[4])
    assert s.per_slice == {1: 2, 2: 4, 4: 1} and s.added == {1: 6, 5: 1}
    cur[0, 1:3, 1:3] = 0
    cur[3, 3, 4] = 2
    cur[2, 3, 0:4] = 0  # slice 2 undone
    s = tracker.diff(cur, slices=[0, 2, 3])  # not contiguous
    assert s.per_slice == {0: 4, 1: 2, 3: 1, 4: 1}
    assert s.added == {1: 2, 2: 1, 5: 1} and s.removed == {1: 4}
    assert s == EditTracker(out).diff(cur)


def test_rebase_at_both_ends_copies_and_keeps_the_baseline_read_only():
    out = _cord()
    tracker = EditTracker(out)
    refined = np.zeros((2, 4, 5), np.uint8)
    tracker.rebase(0, refined)  # from the first slice
    tracker.rebase(4, refined)  # to the last slice
    refined[:] = 3  # the caller's array is its own: still writeable, not the baseline
    assert not tracker.model_output.flags.writeable
    np.testing.assert_array_equal(tracker.model_output[[0, 1, 4, 5]], 0)
    np.testing.assert_array_equal(tracker.model_output[2:4], out[2:4])
    with pytest.raises(
        LabelsError, match=r"^rebase: \(2, 4, 5\) at slice 5 does not fit \(6, 4, 5\)$"
    ):
        tracker.rebase(5, refined)


def test_overlapping_rebases_switched_off_in_any_order():
    out = _cord()
    tracker = EditTracker(out)
    a = tracker.rebase(1, np.full((4, 4, 5), 2, np.uint8))  # slices 1-4
    b = tracker.rebase(0, np.full((3, 4, 5), 3, np.uint8))  # slices 0-2, made after a
    expected = out.copy()
    expected[1:5] = 2
    expected[0:3] = 3
    np.testing.assert_array_equal(tracker.model_output, expected)
    tracker.set_rebase_active(b, False)  # slices 1-2 go back to a's prediction
    expected[0] = out[0]
    expected[1:3] = 2
    np.testing.assert_array_equal(tracker.model_output, expected)
    tracker.set_rebase_active(a, False)
    np.testing.assert_array_equal(tracker.model_output, out)
    tracker.set_rebase_active(b, True)
    expected = out.copy()
    expected[0:3] = 3
    np.testing.assert_array_equal(tracker.model_output, expected)
    assert not tracker.model_output.flags.writeable


def test_class_first_seen_in_a_refined_prediction_then_erased():
    out = _cord()
    tracker = EditTracker(out)
    refined = out[2:4].copy()
    refined[:, 0, 0] = 4  # the refine predicts a class the first output never had
    tracker.rebase(2, refined)
    s = tracker.diff(out)  # the reviewer keeps the first output's voxels there
    assert s.removed == {4: 2} and s.added == {} and s.per_slice == {2: 1, 3: 1}
    assert s == tracker.diff(out, slices=[2, 3])
