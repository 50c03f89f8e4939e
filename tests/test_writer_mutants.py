"""Mask-saving cases found by mutation testing (benchmarks/README.md, io/writer.py, io/atomic.py).

A refused save is only useful if its message says what happened and what to do: each
refusal is compared word for word (the file, the folder, the OS reason, the fix), with the
target left as it was and no temporary left behind. The verification after writing is
tested on the fields it exists for (pixdim, scaling, a dtype with the same values), by
changing the bytes that reach the disk.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import GeometryWarning, LabelsError, SaveRefusedError
from napari_spineseg.io import atomic, load, save_labels, writer
from test_save_history import corrupt_disk_writes

CORRUPTION_FIX = (
    "The disk or network share may be corrupting data: save to another disk, and keep "
    "your edits open meanwhile"
)


@pytest.fixture
def source(tmp_path: Path):
    path = fx.write_image(tmp_path / "sub-01_T2w.nii.gz", fx.phantom(), fx.oblique_affine())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def _mask(seed: int = 0) -> np.ndarray:
    return (fx.phantom(seed=seed) % 3).astype(np.uint8)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if atomic.TEMP_MARK in p.name]


# ------------------------------------------------------------------------ atomic.refusal


def test_refusal_messages_in_full(tmp_path):
    target = tmp_path / "t2_seg.nii.gz"
    history = tmp_path / ".spineseg-history" / "t2_seg"
    replace = atomic.refusal(OSError(errno.EXDEV, "Invalid cross-device link"), target, "replace")
    assert str(replace) == (
        f"{target}: cannot replace the file (Invalid cross-device link); it was left as it "
        "was, your edits are still in memory. Fix: check the folder, or save elsewhere"
    )
    archive = atomic.refusal(
        OSError(errno.ENOSPC, "No space left on device"), target, "archive", history
    )
    assert str(archive) == (
        f"{target}: cannot keep the previous version in {history} (No space left on device); "
        "nothing was replaced, your edits are still in memory. Fix: the disk is full: free "
        "some space or save to another disk"
    )
    # an error without errno or strerror (a plain message): shown as it is
    plain = atomic.refusal(OSError("the share went away"), target)
    assert str(plain) == (
        f"{target}: cannot write in {tmp_path} (the share went away); nothing was written, "
        "your edits are still in memory. Fix: check the folder, or save elsewhere"
    )


# -------------------------------------------------------------------- stale temporaries


def test_remove_stale_temps_counts_files_it_removed(tmp_path, caplog):
    target = tmp_path / "t2_seg.nii.gz"
    for _ in range(2):
        atomic.temp_path(target).write_bytes(b"left by a killed save")
    atomic.temp_path(target).mkdir()  # not a file: left alone, not counted, no error
    (tmp_path / "t2_seg.nii.gz.bak").write_bytes(b"not ours")
    with caplog.at_level(logging.INFO, logger="napari_spineseg.io.atomic"):
        assert atomic.remove_stale_temps(target) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{target}: removed 2 temporary file(s) left by an interrupted save"
    ]
    assert len(atomic.stale_temps(target)) == 1  # the folder
    assert (tmp_path / "t2_seg.nii.gz.bak").exists()


def test_temporary_name_of_exactly_the_limit_keeps_the_readable_form(tmp_path):
    limit = atomic.name_max(tmp_path)
    ext = ".nii.gz"
    overhead = len(f".{atomic.TEMP_MARK}{os.getpid()}-{'0' * 8}{ext}")
    exact = tmp_path / ("s" * (limit - overhead) + ext)
    assert len(atomic.temp_path(exact).name) == limit
    assert atomic.temp_path(exact).name.startswith(".sss")
    longer = tmp_path / ("s" * (limit - overhead + 1) + ext)
    assert atomic.temp_path(longer).name.startswith(atomic.TEMP_MARK)  # the hashed form


# ----------------------------------------------------------------------- writer refusals


def test_history_folder_is_named_after_the_mask():
    target = Path("/data/sub-01/anat/sub-01_T2w_seg.nii.gz")
    assert writer.history_folder(target) == Path(
        "/data/sub-01/anat/.spineseg-history/sub-01_T2w_seg"
    )


def test_failed_replace_leaves_the_target_in_full(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()
    refuse_replacing(monkeypatch, target, OSError(errno.EXDEV, "Invalid cross-device link"))
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(1), target, like=source)
    assert str(info.value) == (
        f"{target}: cannot replace the file (Invalid cross-device link); it was left as it "
        "was, your edits are still in memory. Fix: check the folder, or save elsewhere"
    )
    assert target.read_bytes() == before
    assert _temps(source.path.parent) == []


def test_failed_archive_names_the_history_folder(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()

    def full_disk(src, dest):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_link_or_copy", full_disk)
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(1), target, like=source)
    history = writer.history_folder(target)
    assert str(info.value) == (
        f"{target}: cannot keep the previous version in {history} (No space left on device); "
        "nothing was replaced, your edits are still in memory. Fix: the disk is full: free "
        "some space or save to another disk"
    )
    assert target.read_bytes() == before
    assert _temps(source.path.parent) == []


# --------------------------------------------------------------------- the verification


def _patch(offset: int, fmt: str, *values):
    def corrupt(payload: bytes) -> bytes:
        out = bytearray(payload)
        out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
        return bytes(out)

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "problems"),
    [
        (_patch(76 + 4 * 2, "<f", 0.5), "pixdim"),  # pixdim[2]: 0.9 mm on the source
        (_patch(112, "<f", 2.0), "voxel values, scaling"),  # scl_slope 2, scl_inter 0
        (_patch(116, "<f", 5.0), "voxel values, scaling"),  # scl_slope 1, scl_inter 5
        # int8 instead of uint8: labels 0-2 read back equal, but it is another type
        (_patch(70, "<hh", 256, 8), "voxel values"),
    ],
    ids=["pixdim", "slope", "intercept", "int8"],
)
def test_verification_names_every_field_the_disk_changed(source, monkeypatch, corrupt, problems):
    target = source.path.parent / "t2_seg.nii"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()
    corrupt_disk_writes(monkeypatch, corrupt)
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(1), target, like=source)
    assert str(info.value) == (
        f"{target}: the written file failed verification ({problems}); nothing was replaced. "
        + CORRUPTION_FIX
    )
    assert target.read_bytes() == before
    assert writer.history_versions(target) == []
    assert _temps(source.path.parent) == []


def test_unreadable_write_is_reported_with_the_reader_error(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"

    def unreadable(path, mmap=False):
        raise ValueError("not a gzip file")

    monkeypatch.setattr(writer, "read_nifti", unreadable)
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), target, like=source)
    assert str(info.value) == (
        f"{target}: the written file could not be read back (ValueError: not a gzip file); "
        "nothing was replaced. " + CORRUPTION_FIX
    )
    assert not target.exists() and _temps(source.path.parent) == []


# -------------------------------------------------------------------------- the lock


def test_save_waits_for_the_lock_then_gives_up_in_full(source, monkeypatch):
    """Another save of the same file holds the lock: this one waits, then refuses."""
    target = source.path.parent / "t2_seg.nii.gz"
    monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 1.0)
    # the lock held on a separate open file: flock makes the save wait
    with atomic.target_lock(target), pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), target, like=source)
    assert str(info.value) == (
        f"{target}: another program (or another napari window) has been saving this file "
        "for 1 s; nothing was written, your edits are still in memory. Try again when it "
        "has finished"
    )
    assert not target.exists() and _temps(source.path.parent) == []


def test_file_system_without_locks_saves_unlocked_with_a_warning(source, monkeypatch, caplog):
    """Some FUSE/SMB mounts answer flock with ENOLCK: the save goes ahead, logged."""
    target = source.path.parent / "t2_seg.nii.gz"
    failure = OSError(errno.ENOLCK, "No locks available")

    def no_locks(fd, operation):
        raise failure

    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 1.0)  # a wrong "busy" would refuse
    with caplog.at_level(logging.WARNING, logger="napari_spineseg.io.atomic"):
        save_labels(_mask(0), target, like=source)
    np.testing.assert_array_equal(load(target).data, _mask(0))
    assert [r.getMessage() for r in caplog.records] == [
        f"{target}: file locking unsupported here ({failure}): saving unlocked"
    ]


# ------------------------------------------------------------------- labels and dtype


def test_label_dtype_edges_and_message():
    assert writer.label_dtype(np.zeros(0, np.int64)) == np.uint8  # nothing to store
    assert writer.label_dtype(np.array([300])) == np.int16  # one voxel is still judged
    with pytest.raises(LabelsError) as info:
        writer.label_dtype(np.array([40000]))
    assert str(info.value) == (
        "label value 40000 does not fit in int16 (max 32767), the widest label type that "
        "FSL, AFNI and ITK all read and write"
    )


def test_label_array_refusals_in_full():
    probabilities = np.array([0.2, 0.5, np.nan, 0.9])
    binarised = writer.as_label_array(probabilities, threshold=0.5)
    assert binarised.dtype == np.uint8 and binarised.tolist() == [0, 1, 0, 1]
    cases = [
        (np.array(["a"]), 0.5, "cannot threshold data of type <U1"),
        (
            np.array([True]),
            None,
            "boolean mask: pass threshold=0.5 to store it as 0/1, or convert it explicitly "
            "(mask.astype(np.uint8))",
        ),
        (
            np.array([0.5], np.float32),
            None,
            "floating-point mask (float32): refusing to guess. Pass threshold=0.5 to binarise "
            "a probability map, or cast integer labels explicitly "
            "(np.rint(mask).astype(np.int16))",
        ),
        (np.array(["a"]), None, "labels must be integers, not <U1"),
    ]
    for labels, threshold, message in cases:
        with pytest.raises(LabelsError) as info:
            writer.as_label_array(labels, threshold)
        assert str(info.value) == message


def test_mask_on_another_grid_is_refused_even_with_the_same_voxel_count(source):
    target = source.path.parent / "t2_seg.nii.gz"
    transposed = _mask(0).transpose(2, 1, 0)  # (5, 6, 7): 210 voxels like (7, 6, 5)
    with pytest.raises(LabelsError) as info:
        save_labels(transposed, target, like=source)
    assert str(info.value) == (
        f"labels have shape (5, 6, 7) but {source.path} has spatial shape (7, 6, 5): "
        "a mask must be on its image's grid"
    )
    assert not target.exists()


def test_single_slice_source_takes_a_2d_mask(tmp_path):
    path = fx.write_image(tmp_path / "slice.nii.gz", fx.phantom((7, 6, 1)), fx.oblique_affine())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        src = load(path)
    mask = (fx.phantom((7, 6)) % 3).astype(np.uint8)
    out = save_labels(mask, tmp_path / "slice_seg.nii.gz", like=src)
    np.testing.assert_array_equal(load(out).data, mask.reshape(7, 6, 1))


# --------------------------------------------------------------- what the mask carries


def test_mask_header_marks_labels_and_keeps_the_description(source):
    target = source.path.parent / "t2_seg.nii.gz"
    description = "é" + "x" * 100  # not ASCII, and longer than the 80-byte field
    save_labels(_mask(0), target, like=source, descrip=description)
    hdr = load(target).header
    assert hdr.get_intent() == ("label", (), "label")
    assert (float(hdr["cal_min"]), float(hdr["cal_max"])) == (0.0, 2.0)
    assert hdr["descrip"].item() == b"?" + b"x" * 78  # 79 bytes and a terminating NUL


def test_compressed_mask_is_deterministic(source):
    """No file name, mtime 0, level 1 (XFL 4): the same labels give the same bytes."""
    first = save_labels(_mask(0), source.path.parent / "a_seg.nii.gz", like=source)
    second = save_labels(_mask(0), source.path.parent / "b_seg.nii.gz", like=source)
    raw = first.read_bytes()
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
    assert raw == second.read_bytes()


# ----------------------------------------------------------- refusals before any write


def test_free_space_bound_is_exact(source, monkeypatch):
    """A save needs twice the file (temporary + a copied version) and 1 MiB to spare."""
    target = source.path.parent / "t2_seg.nii"
    needed = 352 + 7 * 6 * 5  # header + uint8 voxels
    real_usage = shutil.disk_usage
    for free in (2 * needed + (1 << 20), 2 * needed + (1 << 20) - 1):
        usage = real_usage(source.path.parent)._replace(free=free)
        monkeypatch.setattr(shutil, "disk_usage", lambda folder, usage=usage: usage)
        if free == 2 * needed + (1 << 20):
            save_labels(_mask(0), target, like=source)
            continue
        with pytest.raises(SaveRefusedError) as info:
            save_labels(_mask(1), target, like=source)
        assert str(info.value) == (
            f"{target}: not enough free space in {target.parent} ({free} bytes free, "
            f"{needed} needed); nothing was written, your edits are still in memory"
        )
    np.testing.assert_array_equal(load(target).data, _mask(0))


def test_refusals_of_the_folder_in_full(source, monkeypatch):
    missing = source.path.parent / "no_such_folder" / "t2_seg.nii.gz"
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), missing, like=source)
    assert str(info.value) == f"{missing}: folder {missing.parent} does not exist"

    def unreadable(folder):
        raise OSError(errno.EACCES, "Permission denied")

    target = source.path.parent / "t2_seg.nii.gz"
    monkeypatch.setattr(shutil, "disk_usage", unreadable)
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), target, like=source)
    assert str(info.value) == (
        f"{target}: cannot write in {target.parent} (Permission denied); nothing was written, "
        "your edits are still in memory. Fix: you may not write there: save to another "
        "folder or ask for write access"
    )


def test_source_reached_through_a_hard_link_is_refused_in_full(source):
    link = source.path.parent / "t2_link.nii.gz"
    os.link(source.path, link)
    before = source.path.read_bytes()
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), link, like=source)
    assert str(info.value) == (
        f"{link} is the source image: refusing to overwrite it with a mask "
        "(choose another name, e.g. with a _seg suffix)"
    )
    assert source.path.read_bytes() == before


def test_mask_saved_again_after_its_source_was_moved(source):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    source.path.rename(source.path.parent / "moved.nii.gz")  # samefile() cannot stat it
    save_labels(_mask(1), target, like=source)
    np.testing.assert_array_equal(load(target).data, _mask(1))


def test_stale_sibling_refusal_in_full(source):
    target = source.path.parent / "t2_seg.nii.gz"
    sibling = source.path.parent / "t2_seg.nii"
    sibling.write_bytes(b"an older mask")
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(0), target, like=source)
    assert str(info.value) == (
        f"{sibling} exists next to t2_seg.nii.gz: ITK-based tools (ITK-SNAP, Slicer, ANTs) "
        "open the .nii even when asked for the .nii.gz, so they would show the stale file. "
        "Rename or remove it first"
    )


# ------------------------------------------------------------------- atomic primitives


def test_name_limit_is_asked_of_the_file_system(tmp_path, monkeypatch):
    """eCryptfs allows 143 bytes: temporaries must be named for that limit, not 255."""
    monkeypatch.setattr(os, "pathconf", lambda folder, name: {"PC_NAME_MAX": 143}[name])
    assert atomic.name_max(tmp_path) == 143


def test_write_new_never_overwrites_and_survives_a_refused_chmod(tmp_path, monkeypatch):
    existing = tmp_path / "kept.bin"
    existing.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        atomic.write_new(existing, b"new")
    assert existing.read_bytes() == b"old"

    def refused(fd, mode):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)  # some shares refuse chmod: best effort
    atomic.write_new(tmp_path / "fresh.bin", b"data", 0o640)
    assert (tmp_path / "fresh.bin").read_bytes() == b"data"


def test_fsync_of_a_folder_that_cannot_be_opened_is_skipped(tmp_path):
    assert atomic.fsync_dir(tmp_path / "gone") is None


def test_targets_that_are_not_files_are_refused_in_full(tmp_path):
    folder = tmp_path / "t2_seg.nii.gz"
    folder.mkdir()
    with pytest.raises(SaveRefusedError) as info:
        atomic.check_target(folder)
    assert str(info.value) == (
        f"{folder} is a folder: save the mask under a file name (inside it, or next to it); "
        "nothing was written"
    )
    pipe = tmp_path / "pipe_seg.nii.gz"
    os.mkfifo(pipe)
    with pytest.raises(SaveRefusedError) as info:
        atomic.check_target(pipe)
    assert str(info.value) == (
        f"{pipe} exists and is not a regular file (a pipe or a device?): choose another "
        "name; nothing was written"
    )


def test_lock_file_is_readable_by_colleagues_and_removed(tmp_path):
    """rw for all (less the umask): a colleague's save can open it; it is never left."""
    target = tmp_path / "t2_seg.nii.gz"
    umask = os.umask(0o022)
    try:
        with atomic.target_lock(target):
            assert atomic.lock_path(target).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
    assert not atomic.lock_path(target).exists()


# ---------------------------------------------------------------------- the history


def _kept(target: Path) -> list[np.ndarray]:
    return [np.asarray(load(v).data) for v in writer.history_versions(target)]


def test_version_kept_before_a_failed_replace_is_not_kept_twice(source, monkeypatch):
    """A replace that failed after archiving leaves the target's version as the newest
    kept one: the next save must not keep it a second time."""
    target = source.path.parent / "t2_seg.nii.gz"
    for seed in range(4):  # history: masks 0, 1, 2; the target holds mask 3
        save_labels(_mask(seed), target, like=source)
    refuse_replacing(monkeypatch, target, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(SaveRefusedError):
        save_labels(_mask(4), target, like=source)
    monkeypatch.undo()
    save_labels(_mask(4), target, like=source)
    kept = _kept(target)
    assert len(kept) == 4
    for version, seed in zip(kept, range(4), strict=True):
        np.testing.assert_array_equal(version, _mask(seed))


def test_version_names_are_in_utc_whatever_the_time_zone(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        save_labels(_mask(0), target, like=source)
        save_labels(_mask(1), target, like=source)
    finally:
        monkeypatch.undo()
        time.tzset()
    (version,) = writer.history_versions(target)
    stamp = dt.datetime.strptime(version.name[:21], "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 600


def test_pruning_that_cannot_delete_does_not_fail_the_save(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    monkeypatch.setattr(writer, "HISTORY_KEEP", 1)
    history = writer.history_folder(target)
    real_unlink = Path.unlink

    def protected(self, *args, **kwargs):
        if self.parent == history:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", protected)
    for seed in range(3):
        save_labels(_mask(seed), target, like=source)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(target).data, _mask(2))
    assert len(writer.history_versions(target)) == 2  # nothing could be pruned


def refuse_replacing(monkeypatch, target: Path, error: OSError) -> None:
    """``os.replace`` onto ``target`` fails with ``error`` (other renames still work)."""
    real_replace = os.replace

    def refusing(src, dst, *args, **kwargs):
        if Path(dst) == target:
            raise error
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refusing)
