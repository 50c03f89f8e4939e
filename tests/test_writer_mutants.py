"""Mask-saving cases found by mutation testing (benchmarks/README.md, io/writer.py, io/atomic.py).

A refused save is only useful if its message says what happened and what to do: each
refusal is compared word for word (the file, the folder, the OS reason, the fix), with the
target left as it was and no temporary left behind. The verification after writing is
tested on the fields it exists for (pixdim, scaling, a dtype with the same values), by
changing the bytes that reach the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import GeometryWarning, SaveRefusedError
from napari_spineseg.io import atomic, load, save_labels, writer

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
    real_replace = os.replace

    def refusing(src, dst, *args, **kwargs):
        if Path(dst) == target:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refusing)
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
    real_write_new = atomic.write_new
    monkeypatch.setattr(
        atomic,
        "write_new",
        lambda path, payload, mode=None: real_write_new(path, corrupt(payload), mode),
    )
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
