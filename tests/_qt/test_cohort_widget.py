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
from napari_spineseg._qt.cohort_widget import COLUMNS
from napari_spineseg.io import load
from napari_spineseg.study import bids
from napari_spineseg.study.state import CohortSession
from test_cohort_bids import segment_demo_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")


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
