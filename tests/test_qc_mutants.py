"""QC table cases found by mutation testing (benchmarks/README.md, correction/qc.py).

Each test pins what a reviewer relies on when walking the slice list: which classes are
cord or lesion, the area-jump median over its exact neighbours (in mm², also for small
voxels), the confidence region, lesions touching the cord in-plane only, the ranking of
slices and its tie-breaks, the review marks, the rows shown, the summary of an absent
class and the crop-and-refine suggestion at both ends of the cord. Expected values are
worked out by hand or by a few lines of numpy that follow the module docstring, never
taken from the code under test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_spineseg.correction.qc import (
    edge_slices,
    is_cord_name,
    is_lesion_name,
    slice_table,
    summary,
)
from napari_spineseg.errors import LabelsError

SPACING = (2.0, 0.5, 0.8)  # pixel area 0.4 mm²


def disk(radius: int = 4, shape=(16, 16), center=(8, 8)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


DISK = disk()
A = int(DISK.sum())  # 49 pixels


def cylinder(first: int = 3, last: int = 16, n: int = 20) -> np.ndarray:
    lab = np.zeros((n, 16, 16), np.uint8)
    lab[first : last + 1][:, DISK] = 1
    return lab


def flagged(table) -> dict[str, list[int]]:
    return {f: np.flatnonzero(v).tolist() for f, v in table.flags.items()}


# ------------------------------------------------------------------- class guesses
@pytest.mark.parametrize(
    "name, cord",
    [
        ("sc", True),
        (" SC ", True),
        ("wm", True),
        ("gm", True),
        ("Spinal Cord", True),
        ("white matter", True),
        ("cord", True),
        ("csf", False),
        ("lesion", False),
        ("label 1", False),
    ],
)
def test_cord_names(name, cord):
    assert is_cord_name(name) is cord


def test_lesion_names():
    assert is_lesion_name(" MS Lesion ") and not is_lesion_name("sc")


def test_explicit_class_sets_override_the_names():
    """Classes named only by number: the caller says which is cord and which lesion."""
    lab = cylinder()
    lab[5, 0, 0] = 1  # a second cord component
    lab[12, 0, 15] = 2  # a lesion far from the cord
    classes = {1: "label 1", 2: "label 2"}
    t = slice_table(lab, SPACING, classes, cord_classes=np.array([1]), lesion_classes=[2.0])
    assert t.cord_classes == (1,) and t.lesion_classes == (2,)
    assert type(t.cord_classes[0]) is int and type(t.lesion_classes[0]) is int
    assert flagged(t)["extra_components"] == [5]
    assert flagged(t)["lesion_outside_cord"] == [12]
    # by the names alone neither class is cord, so nothing is checked against a cord
    guessed = slice_table(lab, SPACING, classes)
    assert guessed.cord_classes == () and guessed.lesion_classes == ()
    assert flagged(guessed)["extra_components"] == []


def test_a_class_neither_cord_nor_lesion_is_checked_for_area_jumps():
    lab = cylinder()
    lab[3:17, 0:4, 0:4] = 2  # CSF: 16 pixels per slice ...
    lab[10, 0:4, 4:8] = 2  # ... 32 on slice 10
    t = slice_table(lab, SPACING, {1: "sc", 2: "csf"})
    assert t.cord_classes == (1,) and t.lesion_classes == ()
    assert flagged(t)["area_jump"] == [10]
    assert np.flatnonzero(t.class_flags["area_jump"][2]).tolist() == [10]


def test_a_table_without_classes_is_empty_and_clean():
    t = slice_table(np.zeros((6, 5, 5), np.uint8), SPACING, {})
    assert all(not v.any() and v.shape == (6,) for v in t.flags.values())
    conf = t.slice_confidence()
    assert conf.shape == (6,) and np.isnan(conf).all()
    assert t.order().tolist() == list(range(6))
    assert [r["confidence"] for r in t.rows()] == pytest.approx([np.nan] * 6, nan_ok=True)


# -------------------------------------------------------------------- area jumps
def _filled(counts, width: int = 20) -> np.ndarray:
    """One slice per count, holding that many pixels in one row-major component."""
    lab = np.zeros((len(counts), width, width), np.uint8)
    for z, c in enumerate(counts):
        lab[z].flat[:c] = 1
    return lab


def _reference_jumps(area: np.ndarray, tolerance: float = 0.30):
    """The module docstring's rule: median of the up to four neighbours (±2) in the
    extent, the slice excluded; at least two; flag past ``tolerance`` of it."""
    nz = np.flatnonzero(area)
    first, last = int(nz[0]), int(nz[-1])
    flag = np.zeros(area.size, bool)
    deviation = np.zeros(area.size)
    for i in range(first, last + 1):
        nb = [area[j] for j in (i - 2, i - 1, i + 1, i + 2) if first <= j <= last]
        if len(nb) < 2:
            continue
        med = float(np.median(nb))
        if med > 0:
            flag[i] = abs(area[i] - med) > tolerance * med
            deviation[i] = min(1.0, abs(area[i] - med) / med)
    return flag, np.where(flag, deviation, 0.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.1, 0.1)])
def test_area_jump_median_of_the_exact_neighbours(spacing):
    """Jumps at the first, second, last and second-to-last slices of the extent, a
    slope where the ±2 window matters, an island between gaps (median 0: reported by
    its gaps, not as a jump), a jump past 100 %; also with 0.1 mm pixels, whose areas
    are below 1 mm²."""
    counts = [0, 120, 49, 49, 20, 49, 49, 49, 0, 0, 45, 0, 0, 49, 60, 70, 80, 95, 49, 30, 0]
    lab = _filled(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero median
        t = slice_table(lab, spacing, {1: "sc"})
    pixel = spacing[1] * spacing[2]
    np.testing.assert_allclose(t.area[1], np.array(counts) * pixel)
    flag, magnitude = _reference_jumps(np.array(counts, float))
    assert flagged(t)["area_jump"] == np.flatnonzero(flag).tolist()
    np.testing.assert_allclose(t.magnitude["area_jump"], magnitude, atol=1e-12)
    assert {1, 4, 19} <= set(np.flatnonzero(flag).tolist()) and not flag[10]
    assert t.magnitude["area_jump"][1] == 1.0  # +145 %: capped at 1
    assert flagged(t)["empty"] == [8, 9, 11, 12]


def test_area_jump_needs_two_neighbours_so_a_three_slice_extent_is_checked():
    t = slice_table(_filled([0, 70, 50, 50, 0]), (1.0, 1.0, 1.0), {1: "sc"})
    assert flagged(t)["area_jump"] == [1]
    t = slice_table(_filled([0, 100, 50, 0]), (1.0, 1.0, 1.0), {1: "sc"})
    assert flagged(t)["area_jump"] == []  # one neighbour each: nothing to compare


def test_lesions_raise_neither_area_jump_nor_extra_components():
    lab = cylinder()
    lab[8, 8:10, 8:10] = 2  # 4 pixels inside the cord
    lab[9, 6:10, 6:10] = 2  # 16: +300 %
    lab[9, 12, 8] = 2  # and a second lesion on the same slice, at the cord's rim
    lab[10, 8:10, 8:10] = 2
    t = slice_table(lab, SPACING, {1: "sc", 2: "lesion"})
    assert t.components[2][9] == 2
    assert not t.class_flags["area_jump"][2].any()
    assert not t.class_flags["extra_components"][2].any()


# ------------------------------------------------------------ badness and ranking
def test_badness_sums_the_magnitudes_of_the_raised_flags():
    """Slice 5: a cord speck (1/50 outside the largest component) next to a lesion in
    two parts (half of it outside its largest part: not a cord fault). Slice 10: the
    cord 65 % larger than its neighbours, beside a lesion that triples (lesions are not
    judged by area) and CSF of constant area. Slice 14: the model at p = 0.6. Slice 15:
    a speck and p = 0.6 together."""
    lab = cylinder()
    lab[3:17, 0:2, 0:2] = 3  # CSF: 4 pixels on every cord slice
    lab[5, 0, 15] = 1
    lab[5, 13, 7:9] = 2  # touches the cord at (12, 8)
    lab[5, 8:10, 13] = 2  # touches the cord at (8, 12)
    lab[10][disk(5)] = 1  # 81 pixels
    lab[9, 13, 7:11] = 2
    lab[10, 14:16, 4:12] = 2  # 16 pixels under the larger disk (touching at (13, 8))
    lab[11, 13, 7:11] = 2
    lab[15, 0, 15] = 1
    p = np.where(lab == 1, 0.95, 0.02).astype(np.float32)
    p[14:16][lab[14:16] == 1] = 0.6
    t = slice_table(lab, SPACING, {1: "sc", 2: "lesion", 3: "csf"}, probabilities={"sc": p})
    assert flagged(t) == {
        "empty": [],
        "lesion_outside_cord": [],
        "extra_components": [5, 15],
        "area_jump": [10],
        "low_confidence": [14, 15],
    }
    expected = np.zeros(20)
    expected[5] = 1 / (A + 1)
    expected[10] = (81 - A) / A
    expected[14] = (0.75 - 0.6) / 0.75
    expected[15] = 1 / (A + 1) + (0.75 - 0.6) / 0.75
    np.testing.assert_allclose(t.badness(), expected, rtol=1e-6)


def test_empty_and_lesion_outside_count_one_each():
    lab = cylinder()
    lab[9] = 0  # a gap: empty (and an area jump of 100 %)
    lab[12, 0, 15] = 2  # a lesion away from the cord
    t = slice_table(lab, SPACING, {1: "sc", 2: "lesion"})
    assert t.flag_names(9) == ["empty", "area_jump"] and t.flag_names(12) == [
        "lesion_outside_cord"
    ]
    assert t.badness()[9] == 1.0 + 1.0 and t.badness()[12] == 1.0


def test_equal_severity_ranked_by_badness_then_superior_first():
    lab = cylinder()
    lab[5, 0, 0] = 1  # speck: 1/50 outside
    lab[8, 0:2, 0:2] = 1  # 4-pixel blob: 4/53 outside, +8 % area (no jump)
    lab[11, 15, 15] = 1  # speck
    t = slice_table(lab, SPACING, {1: "sc"})
    assert t.severity()[[5, 8, 11]].tolist() == [2, 2, 2]
    assert t.order(only_flagged=True).tolist() == [8, 5, 11]


def test_confidence_order_breaks_ties_by_severity():
    """Without probability maps every slice ties on confidence: most severe first."""
    lab = cylinder()
    lab[5, 0, 0] = 1  # extra component: 2
    lab[9] = 0  # empty + area jump: 10
    t = slice_table(lab, SPACING, {1: "sc"})
    order = t.order("confidence").tolist()
    assert order[:2] == [9, 5] and order[2:] == [i for i in range(20) if i not in (5, 9)]


def test_order_lists_reviewed_slices_unless_asked_to_hide_them():
    lab = cylinder()
    lab[5, 0, 0] = 1
    t = slice_table(lab, SPACING, {1: "sc"})
    t.set_reviewed(5)
    assert t.order(only_flagged=True).tolist() == [5]
    assert t.order(only_flagged=True, hide_reviewed=True).tolist() == []


def test_a_slice_with_only_low_confidence_is_flagged():
    lab = cylinder()
    p = np.where(lab == 1, 0.95, 0.0).astype(np.float32)
    p[7][DISK] = 0.7
    t = slice_table(lab, SPACING, {1: "sc"}, probabilities={1: p})
    assert t.severity()[7] == 1
    assert np.flatnonzero(t.flagged()).tolist() == [7]


# -------------------------------------------------------------------- confidence
def test_confidence_region_is_strictly_above_one_half_or_labelled():
    lab = cylinder()
    p = np.where(lab == 1, 0.9, 0.0).astype(np.float32)
    p[6, 0, 0:4] = 0.5  # the model undecided outside the labels: not the class
    p[8, 0, 0:2] = 0.8  # the model saw the class where the reviewer erased it: counted
    t = slice_table(lab, SPACING, {1: "sc"}, probabilities={"sc": p})
    assert t.confidence[1][6] == pytest.approx(0.9)
    assert t.confidence[1][8] == pytest.approx((A * 0.9 + 2 * 0.8) / (A + 2))


def test_confidence_counts_model_voxels_far_from_the_labels():
    """The table works in the labels' bounding box for speed; the model's voxels
    outside it still count (a blob the reviewer erased in a corner)."""
    lab = np.zeros((6, 40, 40), np.uint8)
    lab[:, 10:14, 10:14] = 1
    p = np.where(lab == 1, 0.95, 0.0).astype(np.float32)
    p[3, 35:37, 35:37] = 0.6
    t = slice_table(lab, (1.0, 1.0, 1.0), {1: "sc"}, probabilities={"sc": p})
    assert t.confidence[1][3] == pytest.approx((16 * 0.95 + 4 * 0.6) / 20)
    # a class erased everywhere: the model's hesitation is still seen and flagged
    p = np.zeros(lab.shape, np.float32)
    p[3, 35:37, 35:37] = 0.6
    t = slice_table(np.zeros_like(lab), (1.0, 1.0, 1.0), {1: "sc"}, probabilities={"sc": p})
    assert t.confidence[1][3] == pytest.approx(0.6)
    assert np.flatnonzero(t.flags["low_confidence"]).tolist() == [3]


def test_slice_confidence_is_the_lowest_class_confidence_without_numpy_warnings():
    """Slices where no class has a confidence stay NaN, quietly (no "All-NaN slice"
    RuntimeWarning in the reviewer's console)."""
    lab = cylinder()
    lab[5:8, 0:2, 0:2] = 2  # a second class on three slices only
    p1 = np.where(lab == 1, 0.9, 0.0).astype(np.float32)
    p2 = np.where(lab == 2, 0.6, 0.0).astype(np.float32)
    t = slice_table(lab, SPACING, {1: "sc", 2: "csf"}, probabilities={1: p1, 2: p2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conf = t.slice_confidence()
        order = t.order("confidence").tolist()
    expected = np.full(20, np.nan)
    expected[3:17] = 0.9
    expected[5:8] = 0.6
    np.testing.assert_allclose(conf, expected, rtol=1e-6)
    assert order[:3] == [5, 6, 7] and order[-6:] == [0, 1, 2, 17, 18, 19]


def test_confidence_of_a_single_voxel():
    lab = np.zeros((3, 6, 6), np.uint8)
    lab[1, 2, 2] = 1
    p = np.zeros(lab.shape, np.float32)
    p[1, 2, 2] = 0.8
    p[2, 3, 3] = 0.9  # the model alone, one voxel
    t = slice_table(lab, (1.0, 1.0, 1.0), {1: "sc"}, probabilities={"sc": p})
    np.testing.assert_allclose(t.confidence[1], [np.nan, 0.8, 0.9], rtol=1e-6)


# ------------------------------------------------------------ lesion outside cord
def test_a_lesion_touching_the_cord_by_a_corner_is_not_outside():
    lab = np.zeros((3, 10, 10), np.uint8)
    lab[:, 2:5, 2:5] = 1
    lab[1, 5, 5] = 2  # diagonal neighbour of the cord's corner (4, 4)
    lab[1, 6, 6] = 2  # diagonal neighbour of the first lesion voxel: the same lesion
    t = slice_table(lab, (1.0, 1.0, 1.0), {1: "sc", 2: "lesion"})
    assert flagged(t)["lesion_outside_cord"] == []


def test_a_lesion_is_judged_on_its_own_slice_only():
    """Cord next to the lesion on the slice above does not count; a lesion through
    two slices touching the cord on one is outside on the other."""
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[0:2, 2:5, 2:5] = 1  # cord on slices 0 and 1
    lab[0, 5, 2] = 2  # touches the cord on slice 0 ...
    lab[1, 7, 2] = 2  # ... not on slice 1 (two rows away)
    lab[2, 5, 2] = 2  # no cord on slice 2, cord right above on slice 1
    t = slice_table(lab, (1.0, 1.0, 1.0), {1: "sc", 2: "lesion"})
    assert flagged(t)["lesion_outside_cord"] == [1, 2]


# ------------------------------------------------------------------------ inputs
def test_a_mask_filling_the_whole_field_of_view():
    t = slice_table(np.ones((4, 5, 6), np.uint8), (1.0, 1.0, 1.0), {1: "sc"})
    assert t.area[1].tolist() == [30.0] * 4


def test_wrong_shapes_are_refused_in_full():
    lab = cylinder()
    with pytest.raises(LabelsError) as info:
        slice_table(lab, SPACING, {1: "sc"}, cord_reference=np.zeros((20, 16, 15)))
    assert str(info.value) == "cord_reference has shape (20, 16, 15), the labels (20, 16, 16)"
    with pytest.raises(LabelsError) as info:
        slice_table(lab, SPACING, {1: "sc"}, probabilities={"sc": np.zeros((20, 16))})
    assert str(info.value) == (
        "probability map of class 'sc' has shape (20, 16), the labels (20, 16, 16): pass "
        "maps on the labels' grid"
    )


# -------------------------------------------------------------------- review marks
def test_review_marks_take_napari_positions_and_any_iterable():
    t = slice_table(cylinder(), SPACING, {1: "sc"})
    t.set_reviewed(np.float64(4.0))  # napari's dims point is a float
    t.set_reviewed([0.0, 19.0])
    t.set_reviewed({7, 9})
    t.set_reviewed(x for x in (11,))
    assert t.reviewed_slices() == [0, 4, 7, 9, 11, 19]
    t.clear_reviewed()
    assert t.reviewed_slices() == [] and t.reviewed.dtype == bool


@pytest.mark.parametrize("bad", [[-1], [20], [3, 20]])
def test_review_marks_out_of_range_are_refused_in_full(bad):
    t = slice_table(cylinder(), SPACING, {1: "sc"})
    with pytest.raises(IndexError) as info:
        t.set_reviewed(bad)
    assert str(info.value) == f"slice index out of range 0..19: {bad}"
    assert t.reviewed_slices() == []


def test_rows_have_every_column():
    lab = cylinder()
    lab[5, 0, 0] = 1
    t = slice_table(lab, SPACING, {1: "sc"})
    t.set_reviewed(5)
    row = t.rows()[5]
    assert row == {
        "slice": 5,
        "severity": 2,
        "flags": ["extra_components"],
        "confidence": pytest.approx(np.nan, nan_ok=True),
        "reviewed": True,
        "area": {"sc": pytest.approx((A + 1) * 0.4)},
        "components": {"sc": 2},
        "class_confidence": {"sc": pytest.approx(np.nan, nan_ok=True)},
    }
    assert t.rows()[4]["reviewed"] is False


# ------------------------------------------------------------------------ summary
def test_table_summary_of_an_absent_class():
    t = slice_table(cylinder(), SPACING, {1: "sc", 2: "lesion"})
    s = t.summary()
    assert (s[1].value, s[1].name, s[1].voxels, s[1].first, s[1].last) == (1, "sc", 14 * A, 3, 16)
    assert s[1].length_mm == 28.0
    absent = s[2]
    assert (absent.value, absent.name, absent.voxels) == (2, "lesion", 0)
    assert (absent.first, absent.last, absent.length_mm, absent.area_profile) == (
        None,
        None,
        0.0,
        None,
    )


def test_summary_with_explicit_cord_classes():
    lab = cylinder()
    s = summary(lab, SPACING, {1: "label 1"}, cord_classes=[1])
    assert (s[1].value, s[1].name) == (1, "label 1")
    assert s[1].area_profile[3] == pytest.approx(A * 0.4)
    assert summary(lab, SPACING, {1: "label 1"})[1].area_profile is None


# ------------------------------------------------------------------- edge slices
def _poor(poor, first: int = 3, last: int = 16, extra=None):
    """A cord on ``first..last`` whose ``poor`` slices are flagged (low confidence)."""
    lab = cylinder(first, last)
    classes = {1: "sc"}
    if extra is not None:
        lab[extra[0] : extra[1] + 1, 0, 0] = 2
        classes[2] = "csf"
    t = slice_table(lab, SPACING, classes)
    for k in poor:
        t.flags["low_confidence"][k] = True
    return t


def test_edge_slices_default_looks_three_slices_in():
    assert edge_slices(_poor([6])).top is None
    assert edge_slices(_poor([5])).top == (5, 6)
    assert edge_slices(_poor([3]), n=1).top == (3, 4)
    assert edge_slices(_poor([4]), n=1).top is None
    with pytest.raises(ValueError) as info:
        edge_slices(_poor([3]), n=0)
    assert str(info.value) == "edge_slices(n=0): n must be at least 1"


def test_edge_slices_measure_the_cord_classes_only():
    """CSF reaching further than the cord does not move the cord's ends; with no cord
    class at all, every class's extent is used."""
    t = _poor([3, 16], extra=(0, 19))
    edges = edge_slices(t)
    assert (edges.top, edges.bottom, edges.poor_fraction) == ((3, 4), (16, 17), 2 / 14)
    t = slice_table(cylinder(), SPACING, {1: "label 1"})
    t.flags["low_confidence"][3] = True
    assert edge_slices(t).top == (3, 4)


def test_edge_slices_ignore_flags_outside_the_cord():
    """Flagged slices above and below the cord (a lesion there) are not the cord's
    ends and are not counted in its poor fraction."""
    edges = edge_slices(_poor([0, 1, 2, 4, 17, 18, 19]))
    assert (edges.top, edges.bottom) == ((4, 5), None)
    assert edges.poor_fraction == 1 / 14
    edges = edge_slices(_poor([2, 3, 4, 17]))
    assert (edges.top, edges.bottom) == ((3, 5), None)


def test_edge_runs_stop_at_the_cord_ends():
    edges = edge_slices(_poor([3, 4, 5, 14, 15, 16]), n=3)
    assert (edges.top, edges.bottom, edges.note) == ((3, 6), (14, 17), "")
    # runs flagged right up to the last (first) slice, and beyond it
    edges = edge_slices(_poor([0, 1, 2, 3, 16, 17, 18]))
    assert (edges.top, edges.bottom) == ((3, 4), (16, 17))


def test_edge_slices_of_a_short_cord():
    """Three cord slices, n = 3: the whole extent is searched from both ends."""
    edges = edge_slices(_poor([6], first=4, last=6), n=3)
    assert (edges.top, edges.bottom) == ((6, 7), (6, 7))
    edges = edge_slices(_poor([4], first=4, last=6), n=3)
    assert (edges.top, edges.bottom) == ((4, 5), (4, 5))


def test_bottom_run_is_searched_slice_by_slice_upwards():
    edges = edge_slices(_poor([15]), n=3)
    assert edges.bottom == (15, 16)
    edges = edge_slices(_poor([14]), n=3)
    assert edges.bottom == (14, 15)
    assert edge_slices(_poor([13]), n=3).bottom is None
    edges = edge_slices(_poor([12, 13, 14, 15, 16]), n=3)
    assert edges.bottom is None and edges.note == (
        "the poor run 12–16 is longer than 33% of the cord: review it slice by slice"
    )


def test_a_slab_of_exactly_a_third_is_suggested_without_a_note():
    """Cord of 12 slices (3..14): a third is 4 slices."""
    edges = edge_slices(_poor([3, 4, 5, 6, 13, 14], last=14))
    assert (edges.top, edges.bottom, edges.note) == ((3, 7), (13, 15), "")
    edges = edge_slices(_poor([3, 4, 11, 12, 13, 14], last=14))
    assert (edges.top, edges.bottom, edges.note) == ((3, 5), (11, 15), "")
    edges = edge_slices(_poor([3, 10, 11, 12, 13, 14], last=14))
    assert edges.bottom is None and edges.note == (
        "the poor run 10–14 is longer than 33% of the cord: review it slice by slice"
    )
    edges = edge_slices(_poor([3, 4, 5, 6, 7], last=14))
    assert edges.top is None and edges.note == (
        "the poor run 3–7 is longer than 33% of the cord: review it slice by slice"
    )


def test_poor_throughout_note_in_full():
    edges = edge_slices(_poor(range(3, 17)))
    assert edges.note == (
        "100% of the cord's slices are flagged: the result is poor throughout, so refining "
        "a slab will not fix it (check the task and the image contrast, or re-run the model)"
    )


def test_edge_runs_end_at_the_cord_ends_when_slabs_may_be_long():
    """Cord on slices 4..7, slabs allowed up to the whole cord: a run stops at the
    cord's last (first) slice even when the slice beyond it is flagged too."""
    edges = edge_slices(_poor([6, 7, 8], first=4, last=7), max_fraction=1.0)
    assert (edges.top, edges.bottom, edges.note) == ((6, 8), (6, 8), "")
    edges = edge_slices(_poor([3, 4, 5], first=4, last=7), max_fraction=1.0)
    assert (edges.top, edges.bottom, edges.note) == ((4, 6), (4, 6), "")


def test_edge_search_stays_inside_a_cord_shorter_than_n():
    """Cord on slices 4..5, n = 3: slices 3 and 6 are outside it, flagged or not."""
    for outside in ([3], [6], [3, 6]):
        edges = edge_slices(_poor(outside, first=4, last=5), n=3, max_fraction=1.0)
        assert (edges.top, edges.bottom, edges.note, edges.poor_fraction) == (
            None,
            None,
            "",
            0.0,
        )
