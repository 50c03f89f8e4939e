"""`spineseg batch TASK -i BIDS_ROOT`: discovery, BIDS-derivatives layout, sidecars,
dataset_description, resume (also after a kill), --overwrite, --status.

The model is the tiny cord/CSF nnU-Net shipped for the demo; the dataset is phantoms in
``sub-*/ses-*/anat``. In-process runs use a threaded LocalCluster (fast); the kill test
runs the real command in its own process group and kills it mid-cohort.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import cli, sidecar
from napari_spineseg._sample_data import SAMPLE_AXCODES, SAMPLE_ZOOMS
from napari_spineseg.catalog import custom_task, get_task
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.io.writer import GEOMETRY_FIELDS
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom
from napari_spineseg.study import bids
from napari_spineseg.study.commands import run_key_settings, segment_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")

MODEL = str(demo_model_folder())
SUFFIXES = ("_cord_seg", "_csf_seg")
SHAPE = (56, 56, 20)


def segment_demo_bids(root: Path):
    """A synthetic BIDS dataset under ``root`` segmented with the demo model on an
    in-process one-worker cluster (the fixture the QC, state and widget tests start from)."""
    make_bids(root)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        return segment_bids(root, None, model=MODEL, trust=True, client=client)


def make_bids(root: Path, subjects: int = 2, sessions=("01", "02")) -> list[Path]:
    """Phantom T2w images in sub-*/ses-*/anat, plus files that must not be taken."""
    images = []
    for s in range(subjects):
        for ses in sessions:
            img, _ = cord_phantom(
                shape=SHAPE, zooms=SAMPLE_ZOOMS, axcodes=SAMPLE_AXCODES, seed=s * 7 + int(ses)
            )
            folder = root / f"sub-{s:02d}" / f"ses-{ses}" / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"sub-{s:02d}_ses-{ses}_T2w.nii.gz"
            nib.save(img, path)
            images.append(path)
    t1, _ = cord_phantom(shape=SHAPE, seed=99)
    nib.save(t1, root / "sub-00" / "ses-01" / "anat" / "sub-00_ses-01_T1w.nii.gz")
    (root / "derivatives" / "other" / "sub-00" / "anat").mkdir(parents=True)
    nib.save(t1, root / "derivatives/other/sub-00/anat/sub-00_T2w.nii.gz")
    (root / "dataset_description.json").write_text('{"Name": "phantoms", "BIDSVersion": "1.9.0"}')
    return images


@pytest.fixture(scope="module")
def done(tmp_path_factory, client):
    """A dataset segmented once into derivatives/spineseg."""
    root = tmp_path_factory.mktemp("bids")
    images = make_bids(root)
    summary = segment_bids(root, None, model=MODEL, trust=True, client=client)
    return root, images, summary


def _mask_paths(deriv: Path, image: Path) -> list[Path]:
    rel = image.parent.relative_to(image.parents[3])  # sub-XX/ses-YY/anat
    stem = image.name[: -len(".nii.gz")]
    return [deriv / rel / f"{stem}{s}.nii.gz" for s in SUFFIXES]


# ----------------------------------------------------------------------------- discovery


def test_discovery_takes_the_task_contrast_only(tmp_path):
    images = make_bids(tmp_path, subjects=1)
    spec = custom_task(MODEL)  # channel "T2w"
    assert bids.discover(tmp_path, spec) == sorted(images)
    assert bids.contrast_suffixes(get_task("lesion_sci_t2")) == ["T2w"]
    assert bids.contrast_suffixes(get_task("gm_sc_7t_t2star")) == ["T2starw"]
    assert bids.contrast_suffixes(get_task("spine")) is None  # any contrast
    t1 = bids.discover(tmp_path, spec, pattern="sub-*/ses-*/anat/*_T1w.nii.gz")
    assert [p.name for p in t1] == ["sub-00_ses-01_T1w.nii.gz"]
    with pytest.raises(bids.BidsError, match=r"no image matches pattern 'sub-\*/anat/\*_dwi"):
        bids.discover(tmp_path, spec, pattern="sub-*/anat/*_dwi.nii.gz")
    with pytest.raises(bids.BidsError, match="no image matches .*T2starw.*--pattern"):
        bids.discover(tmp_path, get_task("gm_sc_7t_t2star"))


def test_layout_names_and_entities(tmp_path):
    assert bids.derivative_folder(tmp_path, "sub-01_ses-02_T2w.nii.gz") == (
        tmp_path / "sub-01" / "ses-02" / "anat"
    )
    assert bids.derivative_folder(tmp_path, "sub-01_T2w.nii.gz") == tmp_path / "sub-01/anat"
    with pytest.raises(bids.BidsError, match=r"t2.nii.gz: not a BIDS file name .*sub-<label>"):
        bids.derivative_folder(tmp_path, "t2.nii.gz")
    spec = get_task("lesion_sci_t2")
    cli_defaults = {"threshold": None, "largest": None, "test_time_aug": False, "device": "cpu"}
    assert bids.run_key(spec, "abc", cli_defaults) == bids.run_key(spec, "abc", {})
    assert bids.run_key(spec, "abc", {"largest": True})["Settings"] == {"largest": True}
    # the key from RunOptions is the key derivatives were written with (the dict the
    # command built from the same flags before RunOptions): they still count as done
    flags = ["-largest", "1", "-fill-holes", "0", "-remove-small", "10", "5vox", "-thr", "0.3"]
    args = cli._parser().parse_args(["batch", "lesion_sci_t2", "-i", "ds", *flags])
    before = {
        "threshold": 0.3,
        "largest": True,
        "fill_holes": False,
        "remove_small": ["10", "5vox"],
        "test_time_aug": False,
        "label_vert": False,
        "sct_compat": False,
    }
    key = bids.run_key(spec, "abc", run_key_settings(cli.run_options_from_args(args)))
    assert key == bids.run_key(spec, "abc", before)
    assert key["Settings"] == {"largest": True, "remove_small": ["10", "5vox"], "threshold": 0.3}
    where = RunOptions(task="lesion_sci_t2", model="/m", trust=True, device="cuda:1")
    assert bids.run_key(spec, "abc", run_key_settings(where)) == bids.run_key(spec, "abc", {})
    fast = bids.run_key(spec, "abc", run_key_settings(RunOptions(profile="fast")))
    assert fast["Settings"] == {"profile": "fast"}  # other masks: not the same run
    names = bids.output_names(get_task("lesion_sci_t2"), "sub-01_T2w.nii.gz")
    assert names == {
        "_sc_seg": "sub-01_T2w_sc_seg.nii.gz",
        "_lesion_seg": "sub-01_T2w_lesion_seg.nii.gz",
    }


# ----------------------------------------------------------------------------- one batch


def test_derivatives_layout_sidecars_and_description(done):
    root, images, summary = done
    deriv = root / "derivatives" / "spineseg"
    assert summary.deriv == deriv and not summary.failed and len(summary.done) == 4
    written = sorted(
        p.relative_to(deriv).as_posix()
        for p in deriv.rglob("*.nii.gz")
        if ".spineseg-history" not in p.parts
    )
    expected = sorted(
        p.relative_to(deriv).as_posix() for i in images for p in _mask_paths(deriv, i)
    )
    assert written == expected  # the T1w and the other derivative were not taken
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] == bids.BIDS_VERSION
    gen = desc["GeneratedBy"][0]
    from napari_spineseg import __version__

    assert gen["Name"] == "napari-spineseg" and gen["Version"] == __version__
    assert desc["DatasetLinks"]["raw"] == root.as_uri()
    for image in images:
        src = nib.load(image)
        for mask in _mask_paths(deriv, image):
            side = sidecar.read(mask)
            assert side["Sources"] == [f"bids:raw:{image.relative_to(root).as_posix()}"]
            entry = side["GeneratedBy"][0]
            assert entry["Name"] == "napari-spineseg"
            assert entry[bids.RUN_KEY]["Task"] == custom_task(MODEL).id
            assert len(entry[bids.RUN_KEY]["ModelHash"]) == 64
            assert bids.image_of(mask) == image
            m = nib.load(mask)
            for f in GEOMETRY_FIELDS:
                assert np.array_equal(m.header[f], src.header[f]), f
            assert np.asanyarray(m.dataobj).any()
    assert not list(deriv.rglob("*.tmp")) and not list(deriv.rglob("*spineseg-tmp*"))


def test_rerun_skips_done_images_and_a_new_setting_redoes_them(done, client, tmp_path):
    root, images, _ = done
    deriv = root / "derivatives" / "spineseg"
    masks = [p for i in images for p in _mask_paths(deriv, i)]
    before = {p: p.stat().st_mtime_ns for p in masks}
    again = segment_bids(root, None, model=MODEL, trust=True, client=client)
    assert again.done == [] and len(again.skipped) == 4
    assert {p: p.stat().st_mtime_ns for p in masks} == before
    # a corrected mask is never recomputed without --overwrite, even with new settings
    corrected = _mask_paths(deriv, images[0])[0]
    img = nib.load(corrected)  # a rater erased one voxel and recorded it
    data = np.asanyarray(img.dataobj).copy()
    data[tuple(np.argwhere(data)[0])] = 0
    nib.save(nib.Nifti1Image(data, None, img.header), corrected)
    before[corrected] = corrected.stat().st_mtime_ns
    sidecar.append_generated_by(corrected, {"Name": "Manual", "Author": "R"})
    changed = segment_bids(
        root, None, model=MODEL, trust=True, client=client, options=RunOptions(largest=True)
    )
    assert sorted(changed.done) == sorted(i.relative_to(root).as_posix() for i in images[1:])
    assert changed.skipped == [images[0].relative_to(root).as_posix()]
    assert corrected.stat().st_mtime_ns == before[corrected]
    assert (
        sidecar.read(_mask_paths(deriv, images[1])[0])["GeneratedBy"][0][bids.RUN_KEY]["Settings"][
            "largest"
        ]
        is True
    )
    rows = {r.image: r.state for r in bids.status(deriv)}
    assert rows[images[0].relative_to(root).as_posix()] == "corrected"
    # --overwrite redoes everything; the replaced version is kept in the history
    over = segment_bids(
        root,
        None,
        model=MODEL,
        trust=True,
        client=client,
        options=RunOptions(largest=True),
        overwrite=True,
    )
    assert len(over.done) == 4
    assert list((corrected.parent / ".spineseg-history").glob("*cord_seg*"))


def test_failures_are_logged_with_their_message_and_cleared_on_success(tmp_path, client, capsys):
    root = tmp_path / "ds"
    images = make_bids(root, subjects=1)
    good = images[1].read_bytes()
    images[1].write_bytes(good[: len(good) // 2])  # truncated
    summary = segment_bids(root, None, model=MODEL, trust=True, client=client)
    rel = images[1].relative_to(root).as_posix()
    assert list(summary.failed) == [rel] and "truncated or corrupt" in summary.failed[rel]
    deriv = root / "derivatives" / "spineseg"
    assert cli.main(["batch", "--status", str(deriv)]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith(rel))
    assert line.split()[1] == "failed" and "truncated or corrupt" in line
    assert out[-1] == "1 done, 1 failed of 2"
    images[1].write_bytes(good)
    fixed = segment_bids(root, None, model=MODEL, trust=True, client=client)
    assert fixed.done == [rel] and fixed.skipped == [images[0].relative_to(root).as_posix()]
    assert bids.read_failures(deriv) == {}
    assert [r.state for r in bids.status(deriv)] == ["done", "done"]


def test_user_errors_name_the_folder_and_the_fix(tmp_path, capsys):
    assert cli.main(["batch", "--status", str(tmp_path)]) == 1
    assert "no batch recorded here" in capsys.readouterr().err
    assert cli.main(["batch", "-i", str(tmp_path / "x.nii.gz"), "--pattern", "*"]) == 1
    assert "--pattern needs a BIDS dataset folder" in capsys.readouterr().err
    assert cli.main(["batch", "--model", MODEL]) == 1
    assert "give images or a BIDS dataset with -i" in capsys.readouterr().err
    root = tmp_path / "ds"
    make_bids(root, subjects=1, sessions=("01",))
    deriv = tmp_path / "notderiv"
    deriv.mkdir()
    (deriv / "dataset_description.json").write_text('{"Name": "x", "DatasetType": "raw"}')
    with pytest.raises(bids.BidsError, match="is not a derivatives dataset .*'raw'"):
        segment_bids(root, None, model=MODEL, trust=True, deriv=deriv)


# ----------------------------------------------------------------------------- kill + resume


@pytest.mark.slow
def test_a_killed_cohort_run_resumes_where_it_stopped(tmp_path):
    root = tmp_path / "ds"
    images = make_bids(root, subjects=2)  # 4 images
    deriv = tmp_path / "deriv"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "SPINESEG_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "napari_spineseg.cli",
        "batch",
        "-i",
        str(root),
        "-o",
        str(deriv),
        "--model",
        MODEL,
        "--trust",
        "--workers",
        "1",
        "-q",
    ]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            finished = [i for i in images if bids.image_state(_plan(deriv), i) == "done"]
            if finished:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    rows = bids.status(deriv)
    states = [r.state for r in rows]
    assert "pending" in states and "done" in states
    done_before = {
        p: p.stat().st_mtime_ns
        for r, i in zip(rows, images, strict=True)
        if r.state == "done"
        for p in _mask_paths(deriv, i)
    }
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    n_done = len(done_before) // 2
    assert f"{4 - n_done} segmented, 0 failed, {n_done} skipped" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before
    assert [r.state for r in bids.status(deriv)] == ["done"] * 4
    assert not list(deriv.rglob("*.tmp")) and not list(deriv.rglob("*spineseg-tmp*"))


def _plan(deriv: Path) -> bids.Plan:
    try:
        return bids.load_plan(deriv)
    except bids.BidsError:  # not written yet
        return bids.Plan(deriv, deriv, custom_task(MODEL), (), {})
