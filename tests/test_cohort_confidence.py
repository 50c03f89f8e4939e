"""The model's per-slice confidence kept by the batch in each mask's sidecar: the record
is exactly what correction/qc.py computes from the same probabilities, a model that
outputs labels gives none (never 1.0), a resumed batch keeps it and --overwrite redoes
it, the Cohort queue shows the lowest value and the QC report the low-confidence slices.

The model is the shipped demo model; one phantom has three display slices with inverted
contrast, on which the model hesitates (its confidence drops below 0.75 there).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api, catalog, segmentation, sidecar
from napari_spineseg.correction import qc
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.io import load
from napari_spineseg.study import bids, confidence, qc_report
from napari_spineseg.study.commands import segment_bids
from napari_spineseg.study.state import CohortSession
from test_cohort_bids import MODEL, make_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")

DOUBTFUL = slice(6, 9)  # display slices whose contrast is inverted in the doubtful image
SUFFIXES = ("_cord_seg", "_csf_seg")


def invert_slices(path: Path, slices: slice = DOUBTFUL) -> None:
    """Invert the image's contrast on some display slices (written back in file order)."""
    vol = load(path)
    data = np.asarray(vol.data, np.float32)
    disp = vol.geometry.to_display(data).copy()
    disp[slices] = disp.max() - disp[slices]
    img = nib.load(path)
    nib.save(nib.Nifti1Image(vol.geometry.to_file(disp), img.affine, img.header), path)


@pytest.fixture(scope="module")
def study(tmp_path_factory, client):
    """One subject, two sessions; ses-02 is the doubtful image. Segmented once."""
    root = tmp_path_factory.mktemp("bids")
    images = make_bids(root, subjects=1)
    invert_slices(images[1])
    summary = segment_bids(root, None, model=MODEL, trust=True, client=client)
    assert len(summary.done) == 2, summary.failed
    return root, images, summary.deriv


@pytest.fixture
def deriv(study, tmp_path):
    """A fresh copy of the segmented study (tests that change it)."""
    root, _, deriv = study
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    out = copy / deriv.relative_to(root)
    for f in (out / "dataset_description.json", out / bids.STATE_DIR / bids.PLAN_JSON):
        f.write_text(f.read_text().replace(str(root), str(copy)))
    return out


def _masks(deriv: Path, image: Path) -> dict[str, Path]:
    folder = bids.derivative_folder(deriv, image)
    stem = image.name[: -len(".nii.gz")]
    return {s: folder / f"{stem}{s}.nii.gz" for s in SUFFIXES}


def _record(mask: Path) -> dict:
    return sidecar.read(mask)["GeneratedBy"][0][confidence.RECORD_KEY]


# ----------------------------------------------------------------------------- the record


def test_the_record_is_what_slice_table_computes_from_the_same_probabilities(study):
    root, images, deriv = study
    seen_low = False
    for image in images:
        # the same model on the same file, in this process, with its probabilities
        result = api.segment(image, model=MODEL, trust=True, device="cpu")
        vol = result.source
        g = vol.geometry
        for suffix, mask in _masks(deriv, image).items():
            (value, name), *_ = result.outputs[suffix].classes.items()
            labels = g.to_display(np.asarray(load(mask).data))
            assert np.array_equal(labels, g.to_display(result.outputs[suffix].labels))
            table = qc.slice_table(
                labels, g.scale, {value: name}, {name: g.to_display(result.probabilities[name])}
            )
            conf = table.confidence[value]
            low = np.flatnonzero(conf < qc.LOW_CONFIDENCE).tolist()
            rec = _record(mask)
            assert rec["Threshold"] == qc.LOW_CONFIDENCE
            entry = rec["Classes"][name]
            assert entry["Lowest"] == round(float(np.nanmin(conf)), 4)
            assert entry["Slice"] == int(np.nanargmin(conf))
            assert entry["LowSlices"] == low
            # the file's voxel index of those display slices: the index along FileAxis
            axis = rec["SliceAxis"]["FileAxis"]
            index = np.indices(g.file_shape)[axis]
            shown = g.to_display(index)  # each display slice holds one file index
            files = [entry["FileIndex"], *entry["LowFileIndices"]]
            for s, f in zip([entry["Slice"], *low], files, strict=True):
                assert np.all(shown[s] == f)
            seen_low |= bool(low)
            if image == images[1] and suffix == "_cord_seg":
                assert low == [6, 7, 8]  # the inverted slices, none else
                assert entry["Lowest"] < 0.7 and 6 <= entry["Slice"] <= 8
            if image == images[0]:
                assert low == [] and entry["Lowest"] > qc.LOW_CONFIDENCE
    assert seen_low
    # the run key is the one of the same flags without the record (the resume test's)
    entry = sidecar.read(_masks(deriv, images[0])["_cord_seg"])["GeneratedBy"][0]
    assert entry[bids.RUN_KEY] == bids.load_plan(deriv).key
    size = sidecar.sidecar_path(_masks(deriv, images[1])["_cord_seg"]).stat().st_size
    assert size < 4096  # a compact record, not a probability map


@pytest.fixture
def label_only_backend(monkeypatch, tmp_path):
    """A registered engine that outputs labels only (tests/engine_threshold.py)."""
    from napari_spineseg.engines import register_engine, unregister_engine

    segmentation.clear_engine_cache()
    register_engine("threshold_test", "engine_threshold:ThresholdEngine")
    yield replace(catalog.custom_task(demo_model_folder()), backend="threshold_test")
    unregister_engine("threshold_test")
    segmentation.clear_engine_cache()


def test_a_model_without_probabilities_gives_no_confidence_never_one(
    label_only_backend, study, client, tmp_path
):
    from napari_spineseg.batch import segment_many

    _, images, _ = study
    out = tmp_path / "out"
    (item,) = segment_many(
        images[:1], label_only_backend, model=MODEL, trust=True, out_dir=out, client=client
    )
    assert item.ok, item.error
    masks = dict(zip(SUFFIXES, item.outputs, strict=True))
    assert np.asarray(nib.load(masks["_cord_seg"]).dataobj).any()  # it did segment
    for suffix, mask in masks.items():
        rec = _record(mask)
        assert rec["Classes"] == {suffix.split("_")[1]: None}
    case = confidence.case_confidence(
        {s: confidence.read(sidecar.read(p)) for s, p in masks.items()}
    )
    assert case.value is None and case.text() == ""
    assert "gave no probabilities" in case.tooltip()
    # masks written before the record existed: blank too, and the tooltip says why
    old = confidence.case_confidence({"_cord_seg": confidence.read({"GeneratedBy": [{}]})})
    assert old.value is None and "--overwrite" in old.tooltip()


def test_resume_keeps_the_record_and_overwrite_recomputes_it(deriv, client):
    root = deriv.parent.parent
    images = sorted(root.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))
    mask = _masks(deriv, images[1])["_cord_seg"]
    before = _record(mask)
    again = segment_bids(root, None, model=MODEL, trust=True, client=client)
    assert again.done == [] and len(again.skipped) == 2
    assert _record(mask) == before
    # a record changed by hand shows that --overwrite really recomputes it
    data = sidecar.read(mask)
    data["GeneratedBy"][0][confidence.RECORD_KEY]["Classes"]["cord"]["Lowest"] = 0.123
    sidecar.write(mask, data)
    assert segment_bids(root, None, model=MODEL, trust=True, client=client).done == []
    assert _record(mask)["Classes"]["cord"]["Lowest"] == 0.123  # skipped: kept as is
    over = segment_bids(root, None, model=MODEL, trust=True, client=client, overwrite=True)
    assert len(over.done) == 2
    assert _record(mask) == before
    # without the record (confidence=False) the key and the masks are the same
    from napari_spineseg.batch import segment_many

    (item,) = segment_many(
        images[1:2],
        model=MODEL,
        trust=True,
        out_dir=deriv.parent / "plain",
        client=client,
        confidence=False,
    )
    plain = item.outputs[0]
    assert confidence.RECORD_KEY not in sidecar.read(plain)["GeneratedBy"][0]
    assert np.array_equal(np.asarray(nib.load(plain).dataobj), np.asarray(nib.load(mask).dataobj))


# ----------------------------------------------------------------------------- readers


def test_the_queue_shows_the_lowest_confidence_and_marks_a_corrected_case(deriv):
    s = CohortSession(deriv, rater="R")
    clean, doubtful = s.cases
    lows = {
        suffix: _record(p)["Classes"][suffix.split("_")[1]] for suffix, p in doubtful.masks.items()
    }
    lowest = min(c["Lowest"] for c in lows.values())
    assert doubtful.confidence.value == lowest
    assert doubtful.row()["confidence"] == f"{lowest:.2f}"
    assert clean.confidence.value > qc.LOW_CONFIDENCE > doubtful.confidence.value
    tip = doubtful.confidence.tooltip()
    assert "slice " in tip and "(file j=" in tip and "_cord_seg: 6, 7, 8" in tip

    # opening: the record's low slices join the flags computed from the masks
    opened = s.open(1)
    low_slices = set(lows["_cord_seg"]["LowSlices"]), set(lows["_csf_seg"]["LowSlices"])
    assert s.cases[1].flags["low_confidence"] == sum(map(len, low_slices))
    # a correction: the value stays the model's, marked; the flag is the model's no more
    edited = opened.labels["_cord_seg"].copy()
    edited[7] = 0
    s.save({"_cord_seg": edited})
    assert s.cases[1].confidence.value == lowest and s.cases[1].confidence.corrected
    assert s.rows()[1]["confidence"] == f"{lowest:.2f}*"
    s.close()
    again = CohortSession(deriv)
    assert again.cases[1].row()["confidence"] == f"{lowest:.2f}*"
    again.open(1)
    assert again.cases[1].flags.get("low_confidence", 0) == len(low_slices[1])  # csf only


def test_the_qc_report_flags_the_records_low_slices(deriv, tmp_path):
    index = qc_report.write_report(deriv, tmp_path / "qc", jobs=1)
    rows = {r["id"]: r for r in _rows(index)}
    doubtful = rows["sub-00_ses-02_T2w_cord_seg"]
    rec = _record(deriv / doubtful["mask_rel"])["Classes"]["cord"]
    assert doubtful["flags"]["low_confidence"] == rec["LowSlices"] == [6, 7, 8]
    assert doubtful["confidence"] == {
        "lowest": rec["Lowest"],
        "class": "cord",
        "slice": rec["Slice"],
        "corrected": False,
    }
    assert "low_confidence" not in rows["sub-00_ses-01_T2w_cord_seg"]["flags"]
    assert rows["sub-00_ses-01_T2w_cord_seg"]["confidence"]["lowest"] > qc.LOW_CONFIDENCE
    # corrected since: the mask is no longer the output the record describes
    mask = deriv / doubtful["mask_rel"]
    time.sleep(0.01)
    sidecar.append_generated_by(mask, {"Name": "Manual", "Author": "R"})
    again = qc_report.write_report(deriv, tmp_path / "qc", jobs=1)  # the sidecar changed
    row = next(r for r in _rows(again) if r["id"] == "sub-00_ses-02_T2w_cord_seg")
    assert "low_confidence" not in row["flags"] and row["confidence"]["corrected"] is True


def _rows(index: Path) -> list[dict]:
    text = index.read_text(encoding="utf-8")
    start = text.index('<script id="qc-data" type="application/json">')
    start = text.index(">", start) + 1
    return json.loads(text[start : text.index("</script>", start)])["rows"]


def test_a_thousand_cases_read_their_confidence_quickly_and_open_no_nifti(
    study, tmp_path, monkeypatch
):
    """The queue of a 1,000-image study is built from the sidecars alone."""
    root, images, deriv = study
    masks = _masks(deriv, images[1])
    big = tmp_path / "deriv"
    (big / bids.STATE_DIR).mkdir(parents=True)
    shutil.copy(deriv / "dataset_description.json", big)
    plan = json.loads((deriv / bids.STATE_DIR / bids.PLAN_JSON).read_text())
    plan["images"] = [f"sub-{i:04d}/anat/sub-{i:04d}_T2w.nii.gz" for i in range(1000)]
    (big / bids.STATE_DIR / bids.PLAN_JSON).write_text(json.dumps(plan))
    for rel in plan["images"]:
        folder = big / Path(rel).parent
        folder.mkdir(parents=True)
        stem = Path(rel).name[: -len(".nii.gz")]
        for suffix, mask in masks.items():
            (folder / f"{stem}{suffix}.nii.gz").write_bytes(b"")  # never read
            shutil.copy(sidecar.sidecar_path(mask), folder / f"{stem}{suffix}.json")

    import napari_spineseg.io as nio

    def refuse(*a, **k):
        raise AssertionError("a NIfTI file was opened to build the queue")

    monkeypatch.setattr(nio, "load", refuse)
    t0 = time.perf_counter()
    s = CohortSession(big, rater="R")
    rows = s.rows()
    took = time.perf_counter() - t0
    assert len(rows) == 1000
    expected = min(_record(m)["Classes"][s[1:].split("_")[0]]["Lowest"] for s, m in masks.items())
    assert {c.confidence.value for c in s.cases} == {expected}
    assert took < 3.0, f"building the queue of 1000 cases took {took:.2f} s"


@pytest.mark.parametrize(
    "record",
    [
        "not a record",
        {"Classes": "cord"},
        {"Classes": {"cord": {"Lowest": "0.5", "Slice": 3}}},
        {"Classes": {"cord": {"Lowest": 0.5, "Slice": None, "LowSlices": "6,7"}}},
        {"Classes": {"cord": {"Lowest": float("nan"), "Slice": 3, "LowSlices": [-1, True]}}},
        {"Classes": {"cord": {"Lowest": True, "Slice": 3}}, "SliceAxis": [1]},
    ],
)
def test_a_sidecar_edited_by_hand_gives_a_blank_never_an_error(record):
    data = {"GeneratedBy": [{"Name": "napari-spineseg", confidence.RECORD_KEY: record}]}
    mask = confidence.read(data)
    assert mask.lowest() is None and mask.low_slices() == []
    case = confidence.case_confidence({"_cord_seg": mask})
    assert case.value is None and case.text() == "" and case.tooltip()


def test_the_lowest_class_and_slice_of_a_case_and_its_text():
    def mask(lowest, slice_, file_index, low, manual=False):
        rec = {
            "Threshold": 0.75,
            "SliceAxis": {"FileAxis": 2, "Reversed": False},
            "Classes": {
                "sc": {"Lowest": lowest, "Slice": slice_, "FileIndex": file_index,
                       "LowSlices": low, "LowFileIndices": low},
                "other": None,
            },
        }  # fmt: skip
        entries = [{"Name": "napari-spineseg", confidence.RECORD_KEY: rec}]
        return confidence.read({"GeneratedBy": entries + [{"Name": "Manual"}] * manual})

    case = confidence.case_confidence(
        {"_sc_seg": mask(0.9, 4, 4, []), "_lesion_seg": mask(0.7, 12, 12, [11, 12], True)}
    )
    assert case.value == 0.7 and case.corrected and case.text() == "0.70*"
    assert case.where == "sc (_lesion_seg), slice 12 (file k=12)"
    assert "slices below 0.75: _sc_seg: none; _lesion_seg: 11, 12" in case.tooltip()
    assert case.masks["_sc_seg"].corrected is False  # a correction of the other mask
