"""The Cohort dock widget end to end, headless: open a derivatives folder, paint, the
unsaved-edits prompt on next, save into the derivatives (history + manual-correction
entry), approve, the Review panel's own Save, keys, and the queue found again by a new
session. The derivatives come from the shipped demo model on phantoms."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

import napari_spineseg
from napari_spineseg import sidecar
from napari_spineseg._qt.cohort_widget import COLUMNS, FIT_COLUMNS, CohortWidget
from napari_spineseg.io import load
from napari_spineseg.study import bids
from napari_spineseg.study.qc_report import read_marks_yaml
from napari_spineseg.study.state import CONFIG_ENV, CohortSession
from test_cohort_bids import segment_demo_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")


@pytest.fixture(autouse=True)
def _own_config(tmp_path, monkeypatch):
    """The remembered rater in a folder of the test's, never the user's config."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    segment_demo_bids(root)
    return root


@pytest.fixture
def deriv(segmented, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(segmented, copy)
    out = copy / "derivatives" / "spineseg"
    for f in (out / "dataset_description.json", out / bids.STATE_DIR / bids.PLAN_JSON):
        f.write_text(f.read_text().replace(str(segmented), str(copy)))
    return out


def _paint(layer, index, value) -> None:
    layer.brush_size = 1
    layer.paint(tuple(int(i) for i in index), value, refresh=True)


def _manual(mask) -> list[dict]:
    return [e for e in sidecar.read(mask)["GeneratedBy"] if e.get("Name") == "Manual"]


def test_cohort_review_end_to_end(viewer, deriv, qtbot):
    w = napari_spineseg.cohort(viewer, deriv, rater="Jane Doe")
    review = w.review_widget
    assert w.table.rowCount() == 4 and w.session.index == 0
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "sub-00_ses-01_T2w",
        "sub-00_ses-01_T2w_cord_seg",
        "sub-00_ses-01_T2w_csf_seg",
    ]
    assert review.state.layer.name == names[1]  # the Review panel is on the cord mask
    statuses = [w.table.item(r, COLUMNS.index("status")).text() for r in range(4)]
    assert statuses == ["in progress", "to do", "to do", "to do"]

    cord = viewer.layers[1]
    free = np.argwhere(np.asarray(cord.data) == 0)[0]
    _paint(cord, free, 1)
    assert review.state.dirty and review.state.refresh(table=False).changed_voxels == 1
    review.prompt = lambda title, text: "cancel"
    assert w.next() is False and w.session.index == 0 and cord in viewer.layers
    review.prompt = lambda title, text: "save"
    time.sleep(0.1)
    assert w.next() is True and w.session.index == 1
    mask = w.cases[0].masks["_cord_seg"]
    assert np.asarray(load(mask).display_data())[tuple(free)] == 1
    (entry,) = _manual(mask)
    assert entry["Author"] == "Jane Doe"
    assert entry["napari-spineseg"]["VoxelsChanged"] == {"cord": {"added": 1, "removed": 0}}
    assert entry["napari-spineseg"]["TimeSpentSeconds"] > 0
    assert len(list((mask.parent / ".spineseg-history").rglob("*.nii.gz"))) == 1
    assert [layer.name for layer in viewer.layers][0] == "sub-00_ses-02_T2w"

    # approve (no edits): approved, and the next case opens; keys are bound on the viewer
    assert w.approve() is True and w.session.index == 2
    assert w.cases[1].status == "approved" and _manual(w.cases[1].masks["_cord_seg"]) == []
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str("Alt-Left")](viewer)
    assert w.session.index == 1
    viewer.keymap[KeyBinding.from_str("Alt-Right")](viewer)
    assert w.session.index == 2

    # the Review panel's own Save writes into the derivatives, never beside the raw image
    csf = next(layer for layer in viewer.layers if layer.name.endswith("_csf_seg"))
    review.select_layer(csf)
    on = np.argwhere(np.asarray(csf.data) == 1)[0]
    _paint(csf, on, 0)
    written = review.save()
    assert written == w.cases[2].masks["_csf_seg"]
    assert _manual(written)[0]["napari-spineseg"]["VoxelsChanged"] == {
        "csf": {"added": 0, "removed": 1}
    }
    raw = deriv.parent.parent
    assert not [p for p in raw.glob("sub-*/**/*_seg.nii.gz") if "derivatives" not in p.parts]
    assert not review.state.dirty  # no prompt when the case is left

    # the queue is in the folder: a new session (tomorrow, a colleague) finds it
    again = CohortSession(deriv, rater="Max")
    assert [c.status for c in again.cases] == ["corrected", "approved", "corrected", "to do"]
    assert again.cases[0].seconds > 0 and again.cases[1].rater == "Jane Doe"


def test_a_thousand_cases_fill_the_table_quickly(viewer, deriv):
    w = napari_spineseg.cohort(viewer, deriv, rater="R")
    w.session.cases = [c for c in w.session.cases for _ in range(250)]
    t0 = time.perf_counter()
    w.refresh_table()
    took = time.perf_counter() - t0
    assert w.table.rowCount() == 1000
    assert took < 2.0, f"filling 1000 rows took {took:.2f} s"


def test_the_rater_is_asked_once_and_remembered_for_the_next_session(viewer, deriv):
    w = napari_spineseg.cohort(viewer, deriv)
    assert w.rater.text() == ""  # nobody remembered yet
    asked = []
    w.ask_rater = lambda: asked.append("asked") or "Ann Rater"
    cord = viewer.layers[1]
    _paint(cord, np.argwhere(np.asarray(cord.data) == 0)[0], 1)
    (mask,) = w.save()
    w.approve()
    assert asked == ["asked"] and _manual(mask)[0]["Author"] == "Ann Rater"

    again = CohortWidget(viewer)  # tomorrow's session: the name is there, nothing asked
    again.ask_rater = lambda: pytest.fail("the rater was asked again")
    assert again.rater.text() == "Ann Rater"
    again.load(deriv)
    assert again.session.rater == "Ann Rater"


def test_every_column_fits_the_docked_table_and_keys_mark_like_sct_qc(
    make_gl_viewer, deriv, qtbot, tmp_path
):
    from qtpy.QtCore import Qt

    viewer = make_gl_viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    w = napari_spineseg.cohort(viewer, deriv, rater="Jane Doe")  # docked as the menu does
    w.dock.raise_()
    qtbot.wait(300)
    t = w.table
    assert t.horizontalScrollBar().maximum() == 0 and t.viewport().width() > 0
    font = t.fontMetrics()
    for c, key in enumerate(COLUMNS):
        left, width = t.columnViewportPosition(c), t.columnWidth(c)
        assert left >= 0 and left + width <= t.viewport().width(), key
        assert width >= 24, key
        if key in FIT_COLUMNS:  # never elided
            for r in range(t.rowCount()):
                assert font.horizontalAdvance(t.item(r, c).text()) < width, (key, r)
        else:  # elided, the full text on hover
            assert t.item(0, c).toolTip() == str(w.session.rows()[0][key])

    # SCT's QC keys on the table: F cycles pass -> fail -> artifact -> none, Enter opens
    row = next(r for r in range(t.rowCount()) if w._case_at(r) == 2)
    t.setFocus()
    t.setCurrentCell(row, 0)
    qc = COLUMNS.index("qc")
    seen = []
    for _ in range(4):
        qtbot.keyClick(t, Qt.Key.Key_F)
        seen.append(w.session.cases[2].qc)
    assert seen == ["pass", "fail", "artifact", ""]
    qtbot.keyClick(t, Qt.Key.Key_F)
    qtbot.keyClick(t, Qt.Key.Key_F)
    assert t.item(t.currentRow(), qc).text() == "fail" and w._case_at(t.currentRow()) == 2
    qtbot.keyClick(t, Qt.Key.Key_Return)
    assert w.session.index == 2 and viewer.layers[0].name == "sub-01_ses-01_T2w"

    # the mark is in the queue file, and exports as SCT's qc_fail.yml
    assert CohortSession(deriv).cases[2].qc == "fail"
    yml = w.session.write_marks_yaml(tmp_path / "qc_fail.yml")
    assert read_marks_yaml(yml) == {"FILES_SEG": [str(w.session.cases[2].image)]}
    assert [c.id for c in CohortSession.open_path(yml).cases] == [w.session.cases[2].id]


def _set_confidence(mask, lowest) -> None:
    """Give a mask's model record this lowest confidence (None: no record at all)."""
    from napari_spineseg.study.confidence import RECORD_KEY

    data = sidecar.read(mask)
    entry = data["GeneratedBy"][0]
    if lowest is None:
        entry.pop(RECORD_KEY)
    else:
        (cls,) = entry[RECORD_KEY]["Classes"].values()
        cls["Lowest"] = lowest
    sidecar.write(mask, data)


def test_the_lowest_confidence_column_sorts_as_numbers_with_blanks_last(viewer, deriv):
    from qtpy.QtCore import Qt

    from napari_spineseg._qt.cohort_widget import SORT_ROLE

    s = CohortSession(deriv)
    values = [0.8049, 0.8, None, 0.6]  # per case: the cord's lowest (csf: 0.99)
    for case, value in zip(s.cases, values, strict=True):
        _set_confidence(case.masks["_cord_seg"], value)
        _set_confidence(case.masks["_csf_seg"], None if value is None else 0.99)
    sidecar.append_generated_by(s.cases[1].masks["_cord_seg"], {"Name": "Manual", "Author": "R"})

    w = napari_spineseg.cohort(viewer, deriv, rater="R")
    t, c = w.table, COLUMNS.index("confidence")
    assert t.horizontalHeaderItem(c).text() == "lowest conf."
    shown = {w._case_at(r): t.item(r, c).text() for r in range(t.rowCount())}
    assert shown == {0: "0.80", 1: "0.80*", 2: "", 3: "0.60"}  # never 1.0 for "unknown"
    assert t.item(0, c).data(SORT_ROLE) == 0.8049 and t.item(2, c).data(SORT_ROLE) is None

    def order() -> list[int]:
        return [w._case_at(r) for r in range(t.rowCount())]

    t.sortByColumn(c, Qt.SortOrder.AscendingOrder)
    assert order() == [3, 1, 0, 2]  # as numbers ("0.80" < "0.80*" as text), blank last
    t.sortByColumn(c, Qt.SortOrder.DescendingOrder)
    assert order() == [0, 1, 3, 2]  # blank last in this order too
    w.refresh_table()  # a refresh keeps the order the user chose
    assert order() == [0, 1, 3, 2]
    tip = t.item(order().index(1), c).toolTip()
    assert "lowest model confidence 0.8000: cord (_cord_seg), slice" in tip
    assert "corrected since" in tip
    assert "no confidence recorded" in t.item(order().index(2), c).toolTip()
