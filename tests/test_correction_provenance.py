"""Correction record for the JSON sidecar (napari_spineseg.correction.provenance)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_spineseg.correction.edits import EditTracker
from napari_spineseg.correction.provenance import correction_record, extend_sidecar

SCT = {
    "GeneratedBy": [
        {
            "Name": "spinalcordtoolbox: sct_deepseg spinalcord -i t2.nii.gz",
            "Version": "7.0",
            "CodeURL": "https://github.com/spinalcordtoolbox/spinalcordtoolbox",
            "ModelURL": "https://example.org/model.zip",
        }
    ]
}


def edits():
    out = np.zeros((5, 4, 4), np.uint8)
    out[1:4, 1:3, 1:3] = 1
    cur = out.copy()
    cur[2, 0, 0] = 1
    cur[3, 1, 1] = 0
    return EditTracker(out).diff(cur)


def test_record_has_sct_manual_fields_and_details():
    rec = correction_record(
        "Jane Rater",
        date="2026-01-02 03:04:05",
        classes={1: "cord"},
        edits=edits(),
        slabs_refined=[(0, 3)],
        slabs_trimmed=[(40, 45)],
        tools_used=["interpolate", "fill_holes", "interpolate"],
        reviewed_slices=[3, 1, 3],
        version="0.1.0",
    )
    assert {k: rec[k] for k in ("Name", "Author", "Date")} == {
        "Name": "Manual",
        "Author": "Jane Rater",
        "Date": "2026-01-02 03:04:05",
    }
    d = rec["napari-spineseg"]
    assert d["VoxelsChanged"] == {"cord": {"added": 1, "removed": 1}}
    assert d["VoxelsChangedTotal"] == 2 and d["SlicesEdited"] == [2, 3]
    assert d["SlabsRefined"] == [[0, 3]] and d["SlabsTrimmed"] == [[40, 45]]
    assert d["ToolsUsed"] == ["fill_holes", "interpolate"]
    assert d["ReviewedSlices"] == [1, 3]
    assert "superior to inferior" in d["SliceIndices"]
    json.dumps(rec)  # serialisable as is


def test_default_date_uses_manual_correction_format():
    rec = correction_record("R")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rec["Date"])
    assert "VoxelsChanged" not in rec["napari-spineseg"]
    assert rec["napari-spineseg"]["Version"]


def test_extend_sidecar_appends_and_keeps_sct_provenance():
    rec = correction_record("R", date="2026-01-01 00:00:00", version="0.1.0")
    before = json.loads(json.dumps(SCT))
    out = extend_sidecar(SCT, rec)
    assert before == SCT  # input untouched
    assert out["GeneratedBy"][0] == SCT["GeneratedBy"][0]
    assert out["GeneratedBy"][1] == rec and out["SpatialReference"] == "orig"
    out2 = extend_sidecar(out, rec)
    assert len(out2["GeneratedBy"]) == 3 and len(out["GeneratedBy"]) == 2


def test_extend_sidecar_from_nothing_or_a_single_object():
    rec = {"Name": "Manual", "Author": "R", "Date": "2026-01-01 00:00:00"}
    assert extend_sidecar(None, rec) == {"GeneratedBy": [rec], "SpatialReference": "orig"}
    single = {"GeneratedBy": {"Name": "tool"}, "SpatialReference": "custom"}
    out = extend_sidecar(single, rec)
    assert out["GeneratedBy"] == [{"Name": "tool"}, rec]
    assert out["SpatialReference"] == "custom"
    with pytest.raises(ValueError, match="Name"):
        extend_sidecar({}, {"Author": "R"})
