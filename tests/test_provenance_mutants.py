"""Correction-record cases found by mutation testing (benchmarks/README.md,
correction/provenance.py): the version written is the one asked for, the caller's extra
details are kept, and a sidecar extended with a record shares nothing with its inputs
(editing the result later must not change what the caller still holds)."""

from __future__ import annotations

import pytest

import napari_spineseg
from napari_spineseg.correction.provenance import correction_record, extend_sidecar


def test_version_given_or_the_package_version():
    assert correction_record("rater", version="1.2.3")["napari-spineseg"]["Version"] == "1.2.3"
    default = correction_record("rater")["napari-spineseg"]["Version"]
    assert default == str(napari_spineseg.__version__)


def test_extra_details_are_merged():
    record = correction_record("rater", extra={"Task": "seg_sc_contrast_agnostic"})
    assert record["napari-spineseg"]["Task"] == "seg_sc_contrast_agnostic"


def test_record_without_a_name_is_refused_in_full():
    with pytest.raises(
        ValueError, match=r"^a GeneratedBy record needs a 'Name' \(e\.g\. 'Manual'\)$"
    ):
        extend_sidecar({}, {"Author": "rater"})


def test_extended_sidecar_shares_nothing_with_its_inputs():
    existing = {"GeneratedBy": [{"Name": "spinalcordtoolbox", "Params": {"thr": 0.5}}]}
    record = {"Name": "Manual", "napari-spineseg": {"ToolsUsed": ["brush"]}}
    out = extend_sidecar(existing, record)
    assert out == {
        "GeneratedBy": [
            {"Name": "spinalcordtoolbox", "Params": {"thr": 0.5}},
            {"Name": "Manual", "napari-spineseg": {"ToolsUsed": ["brush"]}},
        ],
        "SpatialReference": "orig",
    }
    out["GeneratedBy"][0]["Params"]["thr"] = 0.9
    out["GeneratedBy"][1]["napari-spineseg"]["ToolsUsed"].append("fill")
    assert existing["GeneratedBy"][0]["Params"] == {"thr": 0.5}
    assert record["napari-spineseg"]["ToolsUsed"] == ["brush"]
