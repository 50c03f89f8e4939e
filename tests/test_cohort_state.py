"""The Qt-free cohort review queue: cases from a derivatives folder or a QC YAML, open /
save (mask + history + manual-correction sidecar entry) / approve / next, the queue file
read back by a second session, the two-reviewer warning."""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings

import numpy as np
import pytest

from napari_spineseg import __version__, sidecar
from napari_spineseg.errors import SpinesegError
from napari_spineseg.io import load
from napari_spineseg.study import bids
from napari_spineseg.study.state import (
    CONFIG_ENV,
    CaseOpenWarning,
    CohortSession,
    next_mark,
    remember_rater,
    remembered_rater,
)
from test_cohort_bids import segment_demo_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    summary = segment_demo_bids(root)
    return root, summary.deriv


@pytest.fixture
def deriv(segmented, tmp_path):
    """A fresh copy of the segmented dataset for each test (the queue file changes)."""
    root, deriv = segmented
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    out = copy / deriv.relative_to(root)
    desc = out / "dataset_description.json"
    desc.write_text(desc.read_text().replace(root.as_uri(), copy.as_uri()))
    plan = out / bids.STATE_DIR / bids.PLAN_JSON
    plan.write_text(plan.read_text().replace(str(root), str(copy)))
    return out


def test_cases_open_save_approve_next_and_a_new_session_finds_the_state(deriv):
    s = CohortSession.open_path(deriv, rater="Jane Doe")
    assert [c.id for c in s.cases] == [
        f"sub-{a}/ses-{b}/anat/sub-{a}_ses-{b}_T2w.nii.gz"
        for a in ("00", "01")
        for b in ("01", "02")
    ]
    assert [c.status for c in s.cases] == ["to do"] * 4
    opened = s.open(0)
    time.sleep(0.2)  # the reviewer looks at the case
    assert s.cases[0].status == "in progress"
    cord = opened.labels["_cord_seg"]
    assert set(opened.labels) == {"_cord_seg", "_csf_seg"} and cord.any()
    assert opened.classes["_cord_seg"] == {1: "cord"}
    mask_path = s.cases[0].masks["_cord_seg"]
    before = np.asarray(load(mask_path).data).copy()
    original_sidecar = sidecar.read(mask_path)

    # paint: 7 voxels of cord added on slice 3, every cord voxel of slice 5 removed
    edited = cord.copy()
    free = np.argwhere(edited[3] == 0)[:7]
    edited[3][tuple(free.T)] = 1
    removed = int((edited[5] == 1).sum())
    edited[5][edited[5] == 1] = 0
    written = s.save({"_cord_seg": edited})
    assert written == [mask_path]

    back = load(mask_path)
    assert np.array_equal(np.asarray(back.display_data()), edited)
    assert np.array_equal(back.affine, load(s.cases[0].image).affine)
    history = list((mask_path.parent / ".spineseg-history").rglob("*.nii.gz"))
    assert len(history) == 1 and np.array_equal(np.asarray(load(history[0]).data), before)
    side = sidecar.read(mask_path)
    assert side["GeneratedBy"][:-1] == original_sidecar["GeneratedBy"]  # kept, appended to
    assert side["Sources"] == original_sidecar["Sources"]
    manual = side["GeneratedBy"][-1]
    assert manual["Name"] == "Manual" and manual["Author"] == "Jane Doe"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", manual["Date"])
    details = manual["napari-spineseg"]
    assert details["VoxelsChanged"] == {"cord": {"added": 7, "removed": removed}}
    assert details["Version"] == __version__ and details["TimeSpentSeconds"] >= 0.2
    assert s.cases[0].status == "corrected" and s.cases[0].rater == "Jane Doe"
    assert "Manual" not in str(sidecar.read(s.cases[0].masks["_csf_seg"]))  # not saved

    s.approve()
    assert s.cases[0].status == "approved"
    s.next()
    assert s.index == 1 and s.cases[1].status == "in progress"
    assert s.cases[0].seconds > 0

    # the next day's session (or a colleague) reads the queue from the folder
    other = CohortSession.open_path(deriv, rater="Max")
    assert [c.status for c in other.cases] == ["approved", "in progress", "to do", "to do"]
    assert other.cases[0].rater == "Jane Doe" and other.cases[0].seconds > 0
    with pytest.warns(CaseOpenWarning, match=r"ses-02_T2w.nii.gz is open by Jane Doe on .*"):
        other.open(1)
    s.close()  # Jane leaves case 1 after Max opened it: the queue still says Max has it
    with pytest.warns(CaseOpenWarning, match=r"ses-02_T2w.nii.gz is open by Max on "):
        CohortSession(deriv, rater="Eve").open(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a case nobody has open: no warning
        other.open(2)
    rows = {r.image: r.state for r in bids.status(deriv)}
    assert rows[s.cases[0].id] == "corrected"  # batch resume will not redo it


def test_a_qc_yaml_filters_the_queue_to_its_failures(deriv, tmp_path):
    images = [c.image for c in CohortSession(deriv).cases]
    yml = tmp_path / "qc_fail.yml"
    yml.write_text(f"FILES_SEG:\n- {images[1]}\n- {images[3]}\n")
    s = CohortSession.open_path(yml, rater="R")  # derivatives found from the images
    assert [c.image for c in s.cases] == [images[1], images[3]]
    assert [c.qc for c in s.cases] == ["fail", "fail"]
    assert s.rows()[0]["qc"] == "fail" and s.rows()[0]["status"] == "to do"
    elsewhere = tmp_path / "x" / "qc_fail.yml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("FILES_SEG:\n- /nowhere/sub-09_T2w.nii.gz\n")
    with pytest.raises(SpinesegError, match="cannot tell which derivatives folder .*deriv="):
        CohortSession.open_path(elsewhere)
    with pytest.raises(SpinesegError, match="no segmented case among the QC YAML's images"):
        CohortSession.open_path(elsewhere, deriv=deriv)


def test_user_errors(deriv):
    s = CohortSession(deriv, rater="R")
    with pytest.raises(SpinesegError, match=r"no case is open: call open\(i\) or next\(\)"):
        s.save({})
    with pytest.raises(SpinesegError, match="status 'done': use one of to do, in progress"):
        s.set_status(0, "done")
    s.open(0)
    with pytest.raises(SpinesegError, match=r"no mask with suffix \['_sc_seg'\]"):
        s.save({"_sc_seg": np.zeros(3)})
    with pytest.raises(SpinesegError, match="labels of shape"):
        s.save({"_cord_seg": np.zeros((2, 2, 2), np.uint8)})
    (deriv / bids.STATE_DIR / "cohort.json").write_text("{not json")
    with pytest.raises(SpinesegError, match="cohort.json: unreadable review queue"):
        s.rows()


# A reviewer's session in its own process: opens and closes case 0 ROUNDS times (each
# visit lasting exactly 1 s on a fake clock) and approves case 1 + WHO, starting together
# with the other reviewer when the GO file appears.
REVIEWER = """
import sys, time, warnings
from pathlib import Path
from napari_spineseg.study import state
deriv, who, rounds, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
clock = iter(range(10**6))
state.time.monotonic = lambda: float(next(clock))
warnings.simplefilter("ignore", state.CaseOpenWarning)  # the other reviewer has it open
s = state.CohortSession(deriv, rater=f"reviewer {who}")
while not go.exists():
    time.sleep(0.001)
for i in range(rounds):
    s.open(0)
    s.close()
    s.set_status(1 + who, state.STATUSES[i % 4])
s.set_status(1 + who, "approved")
"""


def test_two_sessions_updating_the_queue_at_once_lose_nothing(deriv, tmp_path):
    import os
    import subprocess
    import sys

    go, rounds = tmp_path / "go", 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    reviewers = [
        subprocess.Popen(
            [sys.executable, "-c", REVIEWER, str(deriv), str(who), str(rounds), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in (0, 1)
    ]
    time.sleep(1.0)  # both sessions read the folder
    go.touch()
    for p in reviewers:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    s = CohortSession(deriv)
    # every visit's second counted (a lost read-modify-write would drop some), both
    # reviewers' last decisions kept, and no case left open
    assert s.cases[0].seconds == 2 * rounds
    assert [c.status for c in s.cases[1:3]] == ["approved", "approved"]
    entries = json.loads(s.state_path.read_text())["cases"]
    assert not any("open_by" in e for e in entries.values())
    assert not [p.name for p in s.state_path.parent.iterdir() if "spineseg-" in p.name]


def test_qc_marks_cycle_as_in_sct_and_are_kept_in_the_queue(deriv, tmp_path):
    assert [next_mark(m) for m in ("", "pass", "fail", "artifact")] == [
        "pass",
        "fail",
        "artifact",
        "",
    ]
    s = CohortSession(deriv, rater="R")
    s.mark(1, "artifact")
    s.mark(3, "artifact")
    s.mark(0, "fail")
    assert [c.qc for c in CohortSession(deriv).cases] == ["fail", "artifact", "", "artifact"]
    yml = s.write_marks_yaml(tmp_path / "qc_artifact.yml", "artifact")
    assert yml.read_text() == "FILES_SEG:\n" + "".join(f'- "{s.cases[i].image}"\n' for i in (1, 3))
    s.mark(0, "")
    assert s.write_marks_yaml(tmp_path / "none.yml").read_text() == "# No rows matched\n"
    with pytest.raises(SpinesegError, match="QC mark 'good': use one of pass, fail, artifact"):
        s.mark(0, "good")
    # a newer triage in the QC report wins over the queue's marks, until marked again
    (deriv.parent / "qc_fail.yml").write_text(f"FILES_SEG:\n- {s.cases[1].image}\n")
    failed = CohortSession.open_path(deriv.parent / "qc_fail.yml")
    assert [(c.id, c.qc) for c in failed.cases] == [(s.cases[1].id, "fail")]
    failed.mark(0, "pass")
    assert failed.rows()[0]["qc"] == "pass" and CohortSession(deriv).cases[1].qc == "pass"


def test_the_rater_is_remembered_per_user_and_a_bad_config_never_blocks(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    assert remembered_rater() == ""
    remember_rater("  Jane Doe ")
    assert remembered_rater() == "Jane Doe"
    assert json.loads((tmp_path / "config" / "rater.json").read_text()) == {"rater": "Jane Doe"}
    (tmp_path / "config" / "rater.json").write_text("{not json")
    assert remembered_rater() == ""  # asked again, nothing raised
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "file" / "config"))  # cannot be created
    remember_rater("Max")
    assert "could not remember the rater" in caplog.text
