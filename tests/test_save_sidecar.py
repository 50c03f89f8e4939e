"""JSON sidecars: atomic, readable by whoever can read the mask, no entry lost."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from napari_spineseg import sidecar
from napari_spineseg.errors import SaveRefusedError


def _mask(folder: Path, mode: int) -> Path:
    path = folder / "sub-01_T2w_seg.nii.gz"
    path.write_bytes(b"mask")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664, 0o600])
def test_sidecar_gets_the_mask_permission_bits(tmp_path, mode):
    """A mask 0644 in a shared folder gets a 0644 sidecar (tempfile's 0600 hid it)."""
    mask = _mask(tmp_path, mode)
    out = sidecar.write(mask, {"GeneratedBy": []})
    assert out == tmp_path / "sub-01_T2w_seg.json"
    assert out.stat().st_mode & 0o777 == mode
    mask.chmod(0o644)
    sidecar.append_generated_by(mask, {"Name": "Manual"})
    assert out.stat().st_mode & 0o777 == 0o644


def test_sidecar_without_a_mask_uses_the_umask(tmp_path):
    out = sidecar.write(tmp_path / "x_seg.nii.gz", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_sidecar_replace_is_atomic_and_leaves_nothing(tmp_path, monkeypatch):
    mask = _mask(tmp_path, 0o644)
    sidecar.write(mask, {"GeneratedBy": [{"Name": "first"}]})
    before = sidecar.sidecar_path(mask).read_bytes()
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SaveRefusedError, match="No space left on device") as info:
        sidecar.write(mask, {"GeneratedBy": [{"Name": "second"}]})
    assert "sub-01_T2w_seg.json" in str(info.value) and "free some space" in str(info.value)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sidecar.sidecar_path(mask).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sub-01_T2w_seg.json",
        "sub-01_T2w_seg.nii.gz",
    ]


def test_concurrent_appends_keep_every_entry(tmp_path):
    mask = _mask(tmp_path, 0o644)
    sidecar.write(mask, {"GeneratedBy": [{"Name": "napari-spineseg"}], "Keep": True})

    def append(worker: int) -> None:
        for i in range(5):
            sidecar.append_generated_by(mask, {"Name": "Manual", "Id": f"{worker}-{i}"})

    threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(sidecar.sidecar_path(mask).read_text(encoding="utf-8"))
    ids = sorted(e["Id"] for e in data["GeneratedBy"][1:])
    assert ids == sorted(f"{w}-{i}" for w in range(6) for i in range(5))
    assert data["Keep"] is True and data["GeneratedBy"][0] == {"Name": "napari-spineseg"}
    assert len(list(tmp_path.iterdir())) == 2
