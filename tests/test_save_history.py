"""What a save leaves on disk: one copy per replaced version, no debris, the right names.

Covers the persistence rules of ``io/writer.py`` and ``io/atomic.py``: identical versions
are not archived twice, temporaries of killed saves are removed and never counted, long
names get short temporaries, the lock file is gone after a save, a replaced mask keeps
its permission bits, and verification really runs on what was written.
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg import sidecar
from napari_spineseg.errors import GeometryWarning, SaveRefusedError
from napari_spineseg.io import atomic, from_nifti, load, save_labels, writer
from napari_spineseg.io.volume import read_nifti


@pytest.fixture
def source(tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(fx.write_image(tmp_path / "t2.nii.gz", fx.phantom(), fx.oblique_affine()))


def _mask(seed: int) -> np.ndarray:
    return (fx.phantom(seed=seed) % 3).astype(np.uint8)


def _kept(target: Path) -> list[bytes]:
    return [p.read_bytes() for p in writer.history_versions(target)]


def _everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _debris(folder: Path) -> list[str]:
    return [n for n in _everything(folder) if "spineseg-tmp" in n or "spineseg-lock" in n]


# ------------------------------------------------------------------ identical versions


def test_save_save_all_and_save_on_close_keep_one_copy(source):
    """Three saves of the same edits replace nothing: the history gains nothing."""
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    v0 = target.read_bytes()
    save_labels(_mask(1), target, like=source)
    v1 = target.read_bytes()
    for _ in range(3):  # Save, Save all, save-on-close
        save_labels(_mask(1), target, like=source)
    assert target.read_bytes() == v1
    assert _kept(target) == [v0]
    save_labels(_mask(2), target, like=source)
    assert _kept(target) == [v0, v1]
    save_labels(_mask(1), target, like=source)  # back to an older version: kept again
    assert _kept(target) == [v0, v1, _kept(target)[-1]] and _kept(target)[-1] != v1


def test_a_version_already_kept_is_not_archived_again(source):
    """A save killed after archiving but before replacing leaves the target == the newest
    kept version; the next save must not store it a second time."""
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    save_labels(_mask(1), target, like=source)
    writer._archive(target, new_digest="0" * 64)  # the state such a kill leaves
    assert _kept(target)[-1] == target.read_bytes() and len(_kept(target)) == 2
    save_labels(_mask(2), target, like=source)
    assert len(_kept(target)) == 2


# ------------------------------------------------------------------ debris


def test_stale_temporaries_are_removed_and_never_counted(source):
    folder = source.path.parent
    target = folder / "t2_seg.nii.gz"
    for seed in range(writer.HISTORY_KEEP):
        save_labels(_mask(seed), target, like=source)
    history = writer.history_folder(target)
    ours = [
        folder / ".t2_seg.spineseg-tmp-4242-0badcafe.nii.gz",  # what a killed save leaves
        atomic.temp_path(target),
        history / ".t2_seg.spineseg-tmp-77-deadbeef.nii.gz",  # a killed archive copy
        folder / ".t2_seg.nii.gz.spineseg-lock",  # a killed holder's lock file
    ]
    others = [
        folder / ".t2.spineseg-tmp-4242-0badcafe.nii.gz",  # another target's temporary
        folder / ".t2_seg.spineseg-tmp-note.nii.gz",  # not a name we make
        folder / "notes.txt",
        history / "README",
    ]
    for path in ours + others:
        path.write_bytes(b"half a mask")
    versions = [p.name for p in writer.history_versions(target)]
    assert len(versions) == writer.HISTORY_KEEP - 1 and not any("tmp" in v for v in versions)
    save_labels(_mask(99), target, like=source)
    assert [p for p in ours if p.exists()] == []
    assert all(p.read_bytes() == b"half a mask" for p in others)
    assert len(writer.history_versions(target)) == writer.HISTORY_KEEP


def test_the_finally_cleanup_never_masks_the_real_error(source, monkeypatch):
    """The temporary cannot be removed after a refused save: the refusal is reported (not
    the cleanup's PermissionError), and the next save removes the leftover."""
    folder = source.path.parent
    target = folder / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()

    def refuse(*args, **kwargs):
        raise SaveRefusedError(f"{target}: injected verification failure")

    real_unlink = os.unlink

    def stuck(path, *args, **kwargs):
        if "spineseg-tmp" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(writer, "_verify", refuse)
    monkeypatch.setattr(os, "unlink", stuck)
    with pytest.raises(SaveRefusedError, match="injected verification failure"):
        save_labels(_mask(1), target, like=source)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert len([n for n in _debris(folder) if "tmp" in n]) == 1
    save_labels(_mask(1), target, like=source)
    assert _debris(folder) == []


def test_lock_is_exclusive_and_leaves_nothing(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()
    monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 0.3)
    with atomic.target_lock(target):  # another process (or window) is saving it
        assert atomic.lock_path(target).exists()
        with pytest.raises(SaveRefusedError, match="has been saving this file") as info:
            save_labels(_mask(1), target, like=source)
        assert str(target) in str(info.value) and "Try again" in str(info.value)
    assert target.read_bytes() == before
    assert _debris(source.path.parent) == []


def test_lock_handover_between_threads_serialises_saves(source):
    """Threads saving one target: each sees the previous one's complete result."""
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    errors: list[BaseException] = []

    def save(seed: int) -> None:
        try:
            save_labels(_mask(seed), target, like=source)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(seed,)) for seed in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    kept = [np.asanyarray(nib.load(p).dataobj) for p in writer.history_versions(target)]
    final = np.asanyarray(nib.load(target).dataobj)
    seeds = {s for s in range(7) for a in [*kept, final] if np.array_equal(a, _mask(s))}
    assert seeds == set(range(7)) and len(kept) == 6
    assert _debris(source.path.parent) == []


# ------------------------------------------------------------------ names and targets


def test_a_legal_241_character_name_saves_and_keeps_history(source):
    folder = source.path.parent
    target = folder / ("s" * 234 + ".nii.gz")
    assert len(target.name) == 241
    long_temp = f".{'s' * 234}.spineseg-tmp-{os.getpid()}-0123abcd.nii.gz"
    assert len(long_temp) > atomic.name_max(folder), "the plain temporary would not fit"
    save_labels(_mask(0), target, like=source)
    stale = atomic.temp_path(target)  # the short form, as a killed save would leave it
    stale.write_bytes(b"half")
    save_labels(_mask(1), target, like=source)
    assert np.array_equal(np.asanyarray(nib.load(target).dataobj), _mask(1))
    assert len(writer.history_versions(target)) == 1
    assert not stale.exists() and _debris(folder) == []


def test_the_longest_legal_name_saves(source):
    """255 bytes: its .nii.gz sibling (258) cannot even be looked up; its sidecar cannot
    exist, which the sidecar writer says."""
    folder = source.path.parent
    target = folder / ("s" * 251 + ".nii")
    save_labels(_mask(0), target, like=source)
    save_labels(_mask(1), target, like=source)
    assert len(writer.history_versions(target)) == 1 and _debris(folder) == []
    with pytest.raises(SaveRefusedError, match="256 bytes long") as info:
        sidecar.write(target, {})
    assert "Choose a shorter name" in str(info.value)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_a_name_the_file_system_cannot_hold_is_refused(source, ext):
    folder = source.path.parent
    target = folder / ("s" * (256 - len(ext)) + ext)
    with pytest.raises(SaveRefusedError, match="256 bytes long but this file system allows"):
        save_labels(_mask(0), target, like=source)
    assert _everything(folder) == ["t2.nii.gz"]


def test_a_folder_as_target_is_refused(source):
    folder = source.path.parent
    target = folder / "t2_seg.nii.gz"
    target.mkdir()
    (target / "inside.txt").write_text("keep me")
    with pytest.raises(SaveRefusedError, match="is a folder") as info:
        save_labels(_mask(0), target, like=source)
    assert str(target) in str(info.value)
    assert _everything(folder) == ["t2.nii.gz", "t2_seg.nii.gz/inside.txt"]


# ------------------------------------------------------------------ archive mechanics


def test_archive_is_a_hard_link_so_needs_no_space(source):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    inode = target.stat().st_ino
    save_labels(_mask(1), target, like=source)
    (kept,) = writer.history_versions(target)
    assert kept.stat().st_ino == inode and kept.stat().st_nlink == 1
    assert target.stat().st_ino != inode


def test_archive_copies_where_links_fail_and_a_full_disk_keeps_everything(source, monkeypatch):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    v0 = target.read_bytes()

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    save_labels(_mask(1), target, like=source)
    assert _kept(target) == [v0]
    v1 = target.read_bytes()

    real_write_new = atomic.write_new

    def full(path, payload, mode=None):
        if writer.HISTORY_DIR in str(path):
            with open(path, "xb") as fh:  # the copy starts, then the disk is full
                fh.write(payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_new(path, payload, mode)

    monkeypatch.setattr(atomic, "write_new", full)
    with pytest.raises(SaveRefusedError, match="cannot keep the previous version") as info:
        save_labels(_mask(2), target, like=source)
    assert "disk is full" in str(info.value) and "nothing was replaced" in str(info.value)
    assert target.read_bytes() == v1 and _kept(target) == [v0]
    assert _debris(source.path.parent) == []


def test_a_replaced_mask_keeps_its_permission_bits(source):
    target = source.path.parent / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    target.chmod(0o664)  # group-writable in a lab share
    save_labels(_mask(1), target, like=source)
    assert target.stat().st_mode & 0o777 == 0o664


# ------------------------------------------------------------------ verification


@pytest.mark.parametrize(
    ("ext", "corrupt", "match"),
    [
        (".nii", lambda b: b[:362] + bytes([b[362] ^ 0x01]) + b[363:], r"\(voxel values\)"),
        (".nii", lambda b: b[:283] + bytes([b[283] ^ 0x40]) + b[284:], r"\(srow_x\)"),
        (".nii.gz", lambda b: b[: len(b) // 2], "could not be read back"),
    ],
    ids=["voxel", "sform", "truncated"],
)
def test_verification_refuses_what_the_disk_did_not_store(
    source, monkeypatch, ext, corrupt, match
):
    """A write that silently stores other bytes (bad disk, flaky share) is caught by the
    re-read before anything is replaced: the check itself is what is tested here."""
    target = source.path.parent / f"t2_seg{ext}"
    save_labels(_mask(0), target, like=source)
    before = target.read_bytes()
    corrupt_disk_writes(monkeypatch, corrupt)
    with pytest.raises(SaveRefusedError, match=match) as info:
        save_labels(_mask(1), target, like=source)
    assert str(target) in str(info.value) and "nothing was replaced" in str(info.value)
    assert target.read_bytes() == before
    assert writer.history_versions(target) == []
    assert _debris(source.path.parent) == []


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("field", ["pixdim", "quatern_b"])
def test_nan_header_fields_are_copied_bit_for_bit(tmp_path, field, endian):
    """A NaN pixdim or quaternion next to a valid sform (scanners write both): the mask
    gets the same bits, since NaN != NaN would refuse every such save."""
    img = nib.Nifti1Image(fx.phantom(), fx.oblique_affine())
    hdr = img.header
    hdr.set_sform(fx.oblique_affine(), code=2)
    if field == "pixdim":
        hdr["pixdim"][2] = np.float32("nan")
        hdr["qform_code"] = 0
    else:
        hdr["quatern_b"] = np.float32("nan")
    if endian == ">":
        hdr = hdr.as_byteswapped(">")
    path = tmp_path / "nan.nii"
    nib.Nifti1Image(fx.phantom(), None, header=hdr).to_filename(path)
    src_img = read_nifti(path)
    assert src_img.header.endianness == endian and np.isnan(src_img.header[field]).any()
    vol = from_nifti(src_img, path)  # what any loader policy hands the writer
    out = save_labels(_mask(0), tmp_path / "nan_seg.nii", like=vol)
    back = read_nifti(out).header
    for name in (field, "srow_x", "srow_y", "srow_z", "qform_code", "sform_code"):
        assert writer._same_bits(back[name], src_img.header[name]), name
    assert np.isnan(back[field]).any()
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), _mask(0))


def corrupt_disk_writes(monkeypatch, corrupt) -> None:
    """Every file the writer writes gets ``corrupt(payload)`` on disk instead (a bad disk,
    a flaky share): what the re-read verification must catch."""
    real_write_new = atomic.write_new
    monkeypatch.setattr(
        atomic,
        "write_new",
        lambda path, payload, mode=None: real_write_new(path, corrupt(payload), mode),
    )
