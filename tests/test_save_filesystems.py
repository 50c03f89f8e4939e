"""Saving onto real read-only and full file systems (small tmpfs mounts).

chmod does not stop root, and an injected ``OSError`` only shows what we expect the
kernel to say; these tests let the kernel say it. They mount a tmpfs (root with mount
rights: CI containers run as root) and skip with the reason where mounting is not
allowed. Injected versions of the same failures, which run everywhere, are in
test_io_save_safety.py and test_save_history.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import sidecar
from napari_spineseg.errors import GeometryWarning, SaveRefusedError
from napari_spineseg.io import load, save_labels, writer

SHAPE = (64, 64, 40)  # 164 KB uncompressed: larger than the small disks below


def _mount(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")


def _remount(path: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """mount(path, size) -> a fresh tmpfs at ``path``; unmounted after the test."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "4m") -> Path:
        _mount(path, f"size={size}", "mode=0755")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _source(folder: Path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    data = np.random.default_rng(0).integers(0, 4000, SHAPE).astype(np.int16)
    path = folder / "t2.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def _mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, SHAPE).astype(np.uint8)  # incompressible


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_read_only_file_system(tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "ro")
    source = _source(disk)
    target = disk / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    sidecar.write(target, {"GeneratedBy": []})
    _remount(disk, "ro")
    before = _files(disk)
    with pytest.raises(SaveRefusedError, match="Read-only file system") as info:
        save_labels(_mask(1), target, like=source)
    message = str(info.value)
    assert str(target) in message and "save to another folder" in message
    assert "nothing was written" in message
    with pytest.raises(SaveRefusedError, match="Read-only file system") as info:
        sidecar.write(target, {"GeneratedBy": [{"Name": "Manual"}]})
    assert "t2_seg.json" in str(info.value)
    assert _files(disk) == before


def test_disk_too_full_is_refused_before_writing(tmp_path, tmpfs):
    source = _source(tmp_path)
    disk = tmpfs(tmp_path / "small", "128k")
    target = disk / "t2_seg.nii"
    with pytest.raises(SaveRefusedError, match="not enough free space"):
        save_labels(_mask(0), target, like=source)
    assert _files(disk) == {}


def test_disk_filling_up_during_the_write(tmp_path, tmpfs, monkeypatch):
    """The free-space check passed (another program filled the disk since): the kernel's
    ENOSPC mid-write leaves the target as it was and the disk as it was."""
    source = _source(tmp_path)
    disk = tmpfs(tmp_path / "small", "128k")
    target = disk / "t2_seg.nii.gz"
    plenty = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda _: plenty)
    save_labels(np.zeros(SHAPE, np.uint8), target, like=source)  # a few hundred bytes
    before, free_blocks = _files(disk), os.statvfs(disk).f_bfree
    with pytest.raises(SaveRefusedError, match="No space left on device") as info:
        save_labels(_mask(1), target, like=source)
    assert "free some space" in str(info.value) and str(target) in str(info.value)
    assert _files(disk) == before
    assert os.statvfs(disk).f_bfree == free_blocks


def test_disk_full_while_keeping_the_previous_version(tmp_path, tmpfs):
    """The history lives on another, full file system: no hard link across devices, the
    copy runs out of space; nothing is replaced and no truncated version is kept."""
    source = _source(tmp_path)
    target = tmp_path / "t2_seg.nii"
    save_labels(_mask(0), target, like=source)
    v0 = target.read_bytes()
    history = tmpfs(tmp_path / writer.HISTORY_DIR, "64k")
    with pytest.raises(SaveRefusedError, match="cannot keep the previous version") as info:
        save_labels(_mask(1), target, like=source)
    assert "No space left on device" in str(info.value) and "disk is full" in str(info.value)
    assert target.read_bytes() == v0
    assert writer.history_versions(target) == []
    assert [p.name for p in history.rglob("*") if p.is_file()] == []
    assert not [p for p in tmp_path.iterdir() if "spineseg-" in p.name and p != history]
    save_labels(_mask(1), target, like=source, keep_history=False)  # the user's way out
    assert target.read_bytes() != v0


def test_a_replaced_version_on_another_device_is_copied(tmp_path, tmpfs):
    source = _source(tmp_path)
    target = tmp_path / "t2_seg.nii"
    save_labels(_mask(0), target, like=source)
    v0 = target.read_bytes()
    tmpfs(tmp_path / writer.HISTORY_DIR, "1m")
    save_labels(_mask(1), target, like=source)
    (kept,) = writer.history_versions(target)
    assert kept.read_bytes() == v0 and kept.stat().st_dev != target.stat().st_dev
    assert os.listdir(kept.parent) == [kept.name]
