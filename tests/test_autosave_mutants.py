"""Crash-recovery cases found by mutation testing (benchmarks/README.md, correction/autosave.py).

What a user gets back after a crash must be the right file with the right facts: the
edit count, the time (UTC), the caller's metadata, newest first, never a temporary or a
foreign file, never a pickle executed, and a recovery file per (image, layer). The
throttle's defaults and bounds are the documented ones, and pruning counts what it
removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
import pathlib
import shutil
import time

import numpy as np
import platformdirs
import pytest

from napari_spineseg.correction import autosave
from napari_spineseg.correction.autosave import Autosaver, discard, find_recoveries, restore
from napari_spineseg.errors import SaveRefusedError, SpinesegError
from test_correction_autosave import SHA, Clock


def _labels() -> np.ndarray:
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 1:3, 1:4] = 1
    return lab


def _saver(tmp_path, layer="sub-01_T2w_seg", sha=SHA, clock=None, **kw) -> Autosaver:
    src = tmp_path / "data" / "sub-01_T2w.nii.gz"
    return Autosaver(tmp_path / "cache", src, sha, layer, clock=clock or Clock(), **kw)


def test_entry_carries_every_fact(tmp_path):
    saver = _saver(tmp_path)
    saver.note_edit(3)
    saver.note_edit(2)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    path = saver.maybe_save(_labels(), now=2000.0, metadata={"classes": {"1": "cord"}})
    (entry,) = find_recoveries(tmp_path / "data" / "sub-01_T2w.nii.gz", SHA, tmp_path / "cache")
    assert entry.path == path
    assert entry.source_path == str(tmp_path / "data" / "sub-01_T2w.nii.gz")
    assert (entry.layer_name, entry.n_edits, entry.shape, entry.dtype) == (
        "sub-01_T2w_seg",
        5,
        (3, 4, 5),
        "|u1",
    )
    saved_at = dt.datetime.fromisoformat(entry.saved_at)
    assert entry.saved_at.endswith("+00:00") and before <= saved_at
    labels, meta = restore(entry)
    np.testing.assert_array_equal(labels, _labels())
    assert meta == {"classes": {"1": "cord"}}


def test_one_recovery_file_per_image_and_layer(tmp_path):
    first = _saver(tmp_path).path
    assert _saver(tmp_path).path == first  # the same image and layer: overwritten
    assert _saver(tmp_path, layer="lesion_seg").path != first
    assert _saver(tmp_path, sha="cd" * 32).path != first
    assert len(first.stem) == 24


def test_default_folder_is_the_user_cache(monkeypatch):
    monkeypatch.delenv(autosave.ENV_VAR, raising=False)
    expected = pathlib.Path(platformdirs.user_cache_dir("napari-spineseg")) / "autosave"
    assert autosave.autosave_dir() == expected


def test_throttle_defaults_are_20_edits_or_60_seconds(tmp_path):
    clock = Clock()
    saver = _saver(tmp_path, clock=clock)
    saver.note_edit(19)
    assert not saver.due()
    saver.note_edit()
    assert saver.due()
    saver.save(_labels())
    saver.note_edit()
    clock.t += 59.9
    assert not saver.due()
    clock.t += 0.1  # exactly 60 s since the last save
    assert saver.due()
    saver.discard()
    assert saver.unsaved_edits == 0 and not saver.due()


def test_refusal_to_write_next_to_the_data_in_full(tmp_path):
    src = tmp_path / "sub-01_T2w.nii.gz"
    with pytest.raises(SaveRefusedError) as info:
        Autosaver(tmp_path, src, SHA, "seg")
    assert str(info.value) == (
        f"autosave folder {tmp_path} is the folder of {src}: recovery files are never "
        "written next to the data; unset SPINESEG_AUTOSAVE_DIR or point it to another folder"
    )


def test_cache_folder_is_private_and_made_with_its_parents(tmp_path):
    saver = Autosaver(tmp_path / "a" / "b" / "cache", tmp_path / "x.nii.gz", SHA, "seg")
    umask = os.umask(0o022)
    try:
        saver.save(_labels())
    finally:
        os.umask(umask)
    assert (tmp_path / "a" / "b" / "cache").stat().st_mode & 0o777 == 0o700


def test_failed_write_leaves_no_temporary_and_reports_the_error(tmp_path, monkeypatch):
    saver = _saver(tmp_path)
    seen = []

    def full_disk(src, dst):
        seen.append(pathlib.Path(src))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        saver.save(_labels())
    (tmp,) = seen  # a hidden .tmp-*.npz next to its destination (an atomic replace)
    assert tmp.parent == tmp_path / "cache"
    assert tmp.name.startswith(".tmp-") and tmp.name.endswith(".npz")
    assert list((tmp_path / "cache").iterdir()) == []


def test_temporaries_and_unreadable_files_are_skipped_not_stopped_at(tmp_path):
    saver = _saver(tmp_path)
    good = saver.save(_labels())
    cache = tmp_path / "cache"
    for i in range(20):  # whatever order the folder lists them in
        shutil.copy(good, cache / f".tmp-{i:02d}.npz")  # a save killed before its replace
        (cache / f"corrupt{i:02d}.npz").write_bytes(b"not a zip")
    entries = find_recoveries(tmp_path / "data" / "sub-01_T2w.nii.gz", SHA, cache)
    assert [e.path for e in entries] == [good]


def test_a_pickle_in_a_recovery_folder_is_never_run(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    marker = tmp_path / "pickle_ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    np.savez(cache / "evil.npz", meta=np.array([Payload()], dtype=object), labels=_labels())
    assert find_recoveries(tmp_path / "x.nii.gz", SHA, cache) == []
    assert not marker.exists()


def test_newest_first_and_the_default_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(autosave.ENV_VAR, str(tmp_path / "cache"))
    times = iter([dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)])

    class FixedClock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return next(times)

    monkeypatch.setattr(autosave, "datetime", FixedClock)
    src = tmp_path / "data" / "sub-01_T2w.nii.gz"
    older = Autosaver(None, src, SHA, "cord_seg").save(_labels())
    newer = Autosaver(None, src, SHA, "lesion_seg").save(_labels())
    assert [e.path for e in find_recoveries(src, SHA)] == [newer, older]
    assert autosave.prune(30.0) == 0  # both fresh (mtime now), default folder


def test_restore_refuses_a_dtype_its_metadata_does_not_say(tmp_path):
    saver = _saver(tmp_path)
    saver.save(_labels())
    (entry,) = find_recoveries(tmp_path / "data" / "sub-01_T2w.nii.gz", SHA, tmp_path / "cache")
    wrong = dataclasses.replace(entry, dtype="<i2")
    with pytest.raises(SpinesegError) as info:
        restore(wrong)
    assert str(info.value) == (
        f"recovery file {entry.path} holds uint8 (3, 4, 5), its metadata says <i2 (3, 4, 5); "
        "discard it"
    )
    discard(entry)
    discard(entry)  # already gone: fine
    assert not entry.path.exists()


def test_prune_age_bound_and_count(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    assert autosave.prune(30.0, tmp_path / "missing") == 0
    now = time.time()
    ages = {"fresh": 29 * 86400, "old_a": 30 * 86400 + 10, "old_b": 40 * 86400}
    for name, age in ages.items():
        path = cache / f"{name}.npz"
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    for i in range(10):  # unremovable old entries (folders) are passed over, not stopped at
        folder = cache / f"dir{i}.npz"
        folder.mkdir()
        os.utime(folder, (now - 40 * 86400, now - 40 * 86400))
    assert autosave.prune(30.0, cache) == 2
    assert sorted(p.name for p in cache.glob("*.npz") if p.is_file()) == ["fresh.npz"]


def test_prune_default_age_is_30_days(tmp_path, monkeypatch):
    monkeypatch.setenv(autosave.ENV_VAR, str(tmp_path))
    path = tmp_path / "month_old.npz"
    path.write_bytes(b"x")
    then = time.time() - 30.5 * 86400
    os.utime(path, (then, then))
    assert autosave.prune() == 1 and not path.exists()


def test_failed_cleanup_does_not_hide_the_write_error(tmp_path, monkeypatch):
    saver = _saver(tmp_path)

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    def refused(path, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "replace", full_disk)
    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(OSError, match="No space left on device"):
        saver.save(_labels())
