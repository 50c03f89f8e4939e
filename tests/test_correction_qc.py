"""Per-slice QC table, class summary and edge-slab suggestion (napari_spineseg.correction.qc)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from napari_spineseg.correction.qc import EdgeSlabs, edge_slices, slice_table, summary
from napari_spineseg.errors import LabelsError

SPACING = (2.0, 0.5, 0.8)  # pixel area 0.4 mm², voxel volume 0.8 mm³
CLASSES = {1: "spinal_cord", 3: "lesion"}
DATA = Path(__file__).resolve().parents[1].parent / "shared/data/sct_testing_data"


def disk(shape=(16, 16), center=(8, 8), radius=4) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


DISK = disk()
A = int(DISK.sum())  # 49 pixels


def cylinder() -> np.ndarray:
    """Cord on slices 3..16 of 20."""
    lab = np.zeros((20, 16, 16), np.uint8)
    lab[3:17][:, DISK] = 1
    return lab


@pytest.fixture
def faulty() -> np.ndarray:
    """Cylinder with: slice 9 missing, an extra blob on slice 5, a lesion inside the cord
    on slice 7 and one outside the cord on slice 12."""
    lab = cylinder()
    lab[9] = 0
    lab[5, 0, 0] = 1
    lab[7, 7:9, 7:9] = 3
    lab[12, 14:16, 14:16] = 3
    return lab


def flagged(table) -> dict[str, list[int]]:
    return {f: np.flatnonzero(v).tolist() for f, v in table.flags.items()}


def test_area_and_components_are_exact(faulty):
    t = slice_table(faulty, SPACING, CLASSES)
    assert t.cord_classes == (1,) and t.lesion_classes == (3,)
    expected = np.zeros(20)
    expected[3:17] = A
    expected[9] = 0
    expected[5] = A + 1
    expected[7] = A - 4
    np.testing.assert_allclose(t.area[1], expected * 0.4)
    assert t.area[3][7] == pytest.approx(1.6) and t.area[3][12] == pytest.approx(1.6)
    assert t.components[1][5] == 2 and t.components[1][4] == 1 and t.components[1][9] == 0
    assert t.extent[1] == (3, 16) and t.extent[3] == (7, 12)


def test_flags_on_synthetic_faults(faulty):
    t = slice_table(faulty, SPACING, CLASSES)
    assert flagged(t) == {
        "empty": [9],
        "lesion_outside_cord": [12],
        "extra_components": [5],
        "area_jump": [9],
        "low_confidence": [],
    }
    assert t.flag_names(9) == ["empty", "area_jump"]
    # per-class detail: the lesion raised the outside flag, the cord the others
    assert np.flatnonzero(t.class_flags["lesion_outside_cord"][3]).tolist() == [12]
    assert not t.class_flags["empty"][3].any()  # lesions are not continuous: never "empty"


def test_diagonal_pixels_are_one_component():
    lab = cylinder()
    lab[5] = 0
    lab[5, 2, 2] = lab[5, 3, 3] = 1  # touching by a corner only: one 8-connected object
    t = slice_table(lab, SPACING, CLASSES)
    assert t.components[1][5] == 1


def test_area_jump_threshold_is_30_percent_of_neighbour_median():
    lab = cylinder()
    big = disk(radius=5)  # 81 pixels: +65 % of 49
    lab[10][big] = 1
    t = slice_table(lab, SPACING, CLASSES)
    assert flagged(t)["area_jump"] == [10]
    t = slice_table(lab, SPACING, CLASSES, jump_tolerance=0.7)
    assert flagged(t)["area_jump"] == []


def test_lesion_touching_the_cord_edge_is_inside():
    lab = cylinder()
    lab[8, 8, 12:14] = 3  # right next to the rim of the disk (radius 4 around column 8)
    t = slice_table(lab, SPACING, CLASSES)
    assert flagged(t)["lesion_outside_cord"] == []


def test_lesion_against_a_separate_cord_mask():
    cord = cylinder() > 0
    lesion = np.zeros_like(cord, dtype=np.uint8)
    lesion[6, 8, 8] = 1  # inside
    lesion[11, 0, 15] = 1  # outside
    t = slice_table(lesion, SPACING, {1: "lesion"}, cord_reference=cord)
    assert flagged(t)["lesion_outside_cord"] == [11]
    # without any cord there is nothing to compare with: never flagged
    t = slice_table(lesion, SPACING, {1: "lesion"})
    assert flagged(t)["lesion_outside_cord"] == []


def test_confidence_definition_and_low_confidence_flag():
    lab = cylinder()
    p = np.where(lab == 1, 0.95, 0.02).astype(np.float32)
    p[10][DISK] = 0.6
    p[4, 0, 0] = 0.3  # the model hesitated outside the labels: below 0.5, not counted
    t = slice_table(lab, SPACING, {1: "cord"}, probabilities={"cord": p})
    assert t.confidence[1][4] == pytest.approx(0.95)
    assert t.confidence[1][10] == pytest.approx(0.6)
    assert np.isnan(t.confidence[1][0])  # no cord, no model vote: no confidence
    assert flagged(t)["low_confidence"] == [10]

    # voxels painted as cord against the model lower the confidence: mean(max(p, 1-p))
    lab2 = lab.copy()
    lab2[4, 0, 0:2] = 1  # p = 0.3 and 0.02 there -> certainty 0.7 and 0.98
    t = slice_table(lab2, SPACING, {1: "cord"}, probabilities={1: p})
    assert t.confidence[1][4] == pytest.approx((A * 0.95 + 0.7 + 0.98) / (A + 2))


def test_confidence_counts_where_the_model_saw_the_class_outside_the_labels_box():
    """A hesitant blob the labels no longer hold (erased, or removed by -largest) far from
    the cord still counts: the region is p > 0.5 or labelled, not the labels' box."""
    lab = cylinder()
    p = np.where(lab == 1, 0.95, 0.02).astype(np.float32)
    p[4, 14:16, 14:16] = 0.55  # 4 voxels outside the cord's box (box rows/cols 3..13)
    t = slice_table(lab, SPACING, {1: "cord"}, probabilities={"cord": p})
    assert t.confidence[1][4] == pytest.approx((A * 0.95 + 4 * 0.55) / (A + 4))
    assert t.confidence[1][5] == pytest.approx(0.95)


def test_probability_of_wrong_shape_is_refused():
    lab = cylinder()
    with pytest.raises(LabelsError, match="probability map of class 'cord'"):
        slice_table(lab, SPACING, {1: "cord"}, probabilities={"cord": np.zeros((2, 2, 2))})


def test_bad_inputs_raise_labels_error():
    with pytest.raises(LabelsError, match="3D"):
        slice_table(np.zeros((4, 4), np.uint8), SPACING, CLASSES)
    with pytest.raises(LabelsError, match="spacing"):
        slice_table(np.zeros((4, 4, 4), np.uint8), (1, 0, 1), CLASSES)
    with pytest.raises(LabelsError, match="integer"):
        slice_table(np.zeros((4, 4, 4), np.float32), SPACING, CLASSES)


def test_order_by_severity_then_confidence(faulty):
    p = np.where(faulty > 0, 0.95, 0.02).astype(np.float32)
    p[14][faulty[14] == 1] = 0.6
    t = slice_table(faulty, SPACING, CLASSES, probabilities={"spinal_cord": p})
    assert t.order(only_flagged=True).tolist() == [9, 12, 5, 14]
    full = t.order().tolist()
    assert full[:4] == [9, 12, 5, 14] and sorted(full) == list(range(20))
    assert full[-6:] == [0, 1, 2, 17, 18, 19]  # no class, no confidence: last
    assert t.order("confidence")[0] == 14
    assert t.order("slice").tolist() == list(range(20))
    with pytest.raises(ValueError, match="severity"):
        t.order("size")


def test_reviewed_marks_hide_and_survive_recomputation(faulty):
    t = slice_table(faulty, SPACING, CLASSES)
    t.set_reviewed([9, 12])
    assert t.order(only_flagged=True, hide_reviewed=True).tolist() == [5]
    t.set_reviewed(12, False)
    assert t.reviewed_slices() == [9]
    t2 = slice_table(faulty, SPACING, CLASSES, previous=t)
    assert t2.reviewed_slices() == [9]
    t2.clear_reviewed()
    assert t2.reviewed_slices() == [] and t.reviewed_slices() == [9]
    with pytest.raises(IndexError):
        t.set_reviewed([20])


def test_rows_for_a_table_widget(faulty):
    t = slice_table(faulty, SPACING, CLASSES)
    row = t.rows()[5]
    assert row["slice"] == 5 and row["flags"] == ["extra_components"]
    assert row["area"]["spinal_cord"] == pytest.approx((A + 1) * 0.4)
    assert row["components"] == {"spinal_cord": 2, "lesion": 0}
    assert [r["slice"] for r in t.rows(t.order(only_flagged=True))] == [9, 12, 5]


def test_summary_volume_extent_profile(faulty):
    s = summary(faulty, SPACING, CLASSES)
    cord = s[1]
    n = 13 * A + 1 - 4
    assert cord.voxels == n and cord.volume_mm3 == pytest.approx(n * 0.8)
    assert (cord.first, cord.last, cord.length_mm) == (3, 16, 28.0)
    assert cord.area_profile[9] == 0 and cord.area_profile[3] == pytest.approx(A * 0.4)
    assert s[3].area_profile is None and s[3].voxels == 8
    assert (s[3].first, s[3].last, s[3].length_mm) == (7, 12, 12.0)
    empty = summary(np.zeros((4, 4, 4), np.uint8), SPACING, {1: "cord"})[1]
    assert (empty.voxels, empty.first, empty.length_mm) == (0, None, 0.0)


def test_edge_slices_top_and_bottom_runs():
    lab = cylinder()
    for k in (3, 4, 9, 16):  # top run 3-4, one bad middle slice, bottom slice 16
        lab[k, 0, 0] = 1
    t = slice_table(lab, SPACING, CLASSES)
    edges = edge_slices(t, n=3)
    assert (edges.top, edges.bottom) == ((3, 5), (16, 17))
    t.set_reviewed([16])
    assert edge_slices(t).bottom is None


def test_edge_slices_run_must_start_near_the_end():
    lab = cylinder()
    lab[6:8, 0, 0] = 1  # starts 3 slices below the top of the cord (3)
    t = slice_table(lab, SPACING, CLASSES)
    assert edge_slices(t, n=3).top is None
    assert edge_slices(t, n=4).top == (6, 8)
    with pytest.raises(ValueError):
        edge_slices(t, n=0)


def test_edge_slices_never_suggest_the_whole_cord():
    lab = cylinder()
    lab[3:17, 0, 0] = 1
    edges = edge_slices(slice_table(lab, SPACING, CLASSES))
    assert (edges.top, edges.bottom) == (None, None)
    assert edges.poor_fraction == 1.0 and "poor throughout" in edges.note


def _poor_cylinder(poor_slices) -> object:
    """The 14-slice cylinder (slices 3..16) with an extra speck on ``poor_slices``."""
    lab = cylinder()
    for k in poor_slices:
        lab[k, 0, 0] = 1
    return slice_table(lab, SPACING, CLASSES)


def test_edge_slab_at_most_a_third_of_the_cord():
    # extent 14 slices: a run of 4 (<= 14/3 = 4.67) is suggested, 5 is not
    assert edge_slices(_poor_cylinder(range(3, 7))).top == (3, 7)
    edges = edge_slices(_poor_cylinder(range(3, 8)))
    assert edges.top is None and "longer than 33%" in edges.note
    assert edge_slices(_poor_cylinder(range(13, 17))).bottom == (13, 17)


def test_poor_throughout_bound_is_half_the_cord():
    # 7 of 14 poor (exactly 50 %): still slab-worthy at each end; 8 of 14: poor throughout
    seven = [3, 4, 5, 8, 10, 15, 16]
    edges = edge_slices(_poor_cylinder(seven))
    assert (edges.top, edges.bottom, edges.poor_fraction) == ((3, 6), (15, 17), 0.5)
    edges = edge_slices(_poor_cylinder([*seven, 12]))
    assert (edges.top, edges.bottom) == (None, None) and edges.poor_fraction == 8 / 14


def test_area_jump_boundary_is_exactly_30_percent():
    """Neighbours of 100 pixels: 130 (30 %) passes, 131 fails; 70 passes, 69 fails."""
    lab = np.zeros((7, 20, 20), np.uint8)
    for z in range(7):
        lab[z, :10, :10] = 1  # 100 pixels
    spacing = (1.0, 1.0, 1.0)
    for extra, flagged_ in ((30, False), (31, True), (-30, False), (-31, True)):
        x = lab.copy()
        x[3] = 0
        n = 100 + extra
        x[3].flat[:n] = 1  # n pixels in one component (row-major fill of 20-wide rows)
        t = slice_table(x, spacing, {1: "sc"})
        assert bool(t.flags["area_jump"][3]) is flagged_, (extra, t.area[1][3])


def test_low_confidence_boundary_is_0_75():
    lab = np.zeros((3, 8, 8), np.uint8)
    lab[:, 2:6, 2:6] = 1
    for p_in, flagged_ in ((0.75, False), (0.745, True), (0.25, False), (0.255, True)):
        p = np.where(lab > 0, np.float32(p_in), np.float32(0.0))
        # p <= 0.5 inside the labels: the labels were painted where the model said no,
        # confidence max(p, 1-p) = 1 - p there
        t = slice_table(lab, (1.0, 1.0, 1.0), {1: "sc"}, probabilities={"sc": p})
        assert bool(t.flags["low_confidence"][1]) is flagged_, (p_in, t.confidence[1][1])


def test_severity_ties_are_ranked_by_how_far_past_the_bound():
    lab = cylinder()
    lab[5, 0, 0] = 1  # a 1-pixel speck: 1/50 outside the largest component
    lab[8, 0:4, 0:4] = 1  # a 16-pixel blob: 16/65
    lab[11, 14, 14] = 1  # another speck
    t = slice_table(lab, SPACING, CLASSES)
    assert t.order("severity", only_flagged=True).tolist() == [8, 5, 11]
    assert t.magnitude["extra_components"][8] == pytest.approx(16 / (A + 16))


def _ipl(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = nib.load(path)
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("I", "P", "L")))
    zooms = [0.0, 0.0, 0.0]
    for i, (j, _) in enumerate(ornt):
        zooms[int(j)] = float(img.header.get_zooms()[i])
    return apply_orientation(np.asanyarray(img.dataobj), ornt).astype(np.uint8), tuple(zooms)


def test_real_manual_cord_mask_has_a_plausible_profile():
    path = DATA / "t2" / "t2_seg-manual.nii.gz"
    if not path.exists():
        pytest.skip(f"SCT testing data not found at {path} (see ../shared/data/README.md)")
    lab, spacing = _ipl(path)
    assert lab.shape == (55, 60, 52) and spacing == (1.0, 1.0, 1.0)
    t = slice_table(lab, spacing, {1: "spinal_cord"})
    area = t.area[1]
    # cervical cord CSA is about 50-90 mm²; this manual mask covers every slice
    assert area.min() == pytest.approx(69.0) and area.max() == pytest.approx(85.0)
    assert t.extent[1] == (0, 54)
    assert not t.flagged().any()  # a clean manual mask raises no flag
    s = summary(lab, spacing, {1: "spinal_cord"})[1]
    assert s.volume_mm3 == pytest.approx(4275.0) and s.length_mm == 55.0
    assert edge_slices(t) == EdgeSlabs(None, None)


def test_empty_labels_give_an_empty_clean_table():
    t = slice_table(np.zeros((5, 8, 8), np.uint8), SPACING, CLASSES)
    assert t.extent == {1: None, 3: None} and not t.flagged().any()
    assert edge_slices(t) == EdgeSlabs(None, None)


def _calibration():
    """benchmarks/calibrate_flags.py: the script that recomputes docs/review.md's figures."""
    import importlib
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.calibrate_flags")


@pytest.mark.skipif(not DATA.exists(), reason=f"SCT example data not at {DATA}")
def test_calibration_manual_masks_mostly_pass():
    rows = _calibration().manual_figures(DATA)
    assert len(rows) == 8
    flagged = sum(r["flagged"] for r in rows)
    total = sum(r["slices"] for r in rows)
    assert total == 417 and flagged <= 5  # 1.2 % (docs/review.md)
    by_mask = {r["mask"]: r for r in rows}
    assert by_mask["t2/t2_seg-manual.nii.gz"]["flagged"] == 0
    # only area jumps, at the tapering ends or on 17 mm thick slices
    assert all(set(r["by_flag"]) <= {"area_jump"} for r in rows)


@pytest.mark.skipif(not DATA.exists(), reason=f"SCT example data not at {DATA}")
def test_calibration_each_fault_raises_its_flag_and_nothing_else():
    rows = _calibration().corruption_figures(DATA)
    assert {r["fault"] for r in rows} == {
        "slice missing",
        "extra blob",
        "area +50%",
        "lesion without cord",
    }
    for r in rows:
        assert r["caught"] == r["faults"] > 0, r
        if r["mask"] == "t2/t2_seg-manual.nii.gz":
            assert r["other slices flagged"] == 0, r


def test_table_summary_equals_the_summary_of_the_labels(faulty):
    t = slice_table(faulty, SPACING, CLASSES)
    direct = summary(faulty, SPACING, CLASSES)
    from_table = t.summary()
    assert direct.keys() == from_table.keys()
    for v in direct:
        a, b = direct[v], from_table[v]
        assert (a.voxels, a.first, a.last, a.length_mm) == (b.voxels, b.first, b.last, b.length_mm)
        assert a.volume_mm3 == pytest.approx(b.volume_mm3)
        if a.area_profile is None:
            assert b.area_profile is None
        else:
            np.testing.assert_allclose(a.area_profile, b.area_profile)
