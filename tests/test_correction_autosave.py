"""Crash-recovery autosave (napari_spineseg.correction.autosave)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_spineseg.correction import autosave
from napari_spineseg.correction.autosave import Autosaver, discard, find_recoveries, restore
from napari_spineseg.errors import SaveRefusedError, SpinesegError

SHA = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def labels():
    lab = np.zeros((8, 16, 16), np.int16)
    lab[2:6, 4:9, 4:9] = 1
    lab[3, 5, 5] = 300
    return lab


def make(tmp_path, clock=None, **kw) -> Autosaver:
    src = tmp_path / "data" / "sub-01_T2w.nii.gz"
    return Autosaver(tmp_path / "cache", src, SHA, "sub-01_T2w_seg", clock=clock or Clock(), **kw)


def test_save_restore_roundtrip_is_exact(tmp_path, labels):
    saver = make(tmp_path)
    path = saver.save(labels, {"classes": {"1": "cord"}})
    assert path.parent == tmp_path / "cache" and path.suffix == ".npz"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temp left
    entries = find_recoveries(tmp_path / "data" / "sub-01_T2w.nii.gz", SHA, tmp_path / "cache")
    assert len(entries) == 1
    e = entries[0]
    assert (e.layer_name, e.shape, e.source_sha256) == ("sub-01_T2w_seg", (8, 16, 16), SHA)
    restored, meta = restore(e)
    assert restored.dtype == np.int16
    np.testing.assert_array_equal(restored, labels)
    assert meta == {"classes": {"1": "cord"}}
    discard(e)
    assert find_recoveries("x", SHA, tmp_path / "cache") == []


def test_overwrites_one_file_per_source_and_layer(tmp_path, labels):
    saver = make(tmp_path)
    saver.save(labels)
    labels[0, 0, 0] = 7
    saver.save(labels)
    other = Autosaver(tmp_path / "cache", tmp_path / "data" / "x.nii", SHA, "other")
    other.save(labels[:2])
    entries = find_recoveries(tmp_path / "data" / "sub-01_T2w.nii.gz", SHA, tmp_path / "cache")
    assert sorted(e.layer_name for e in entries) == ["other", "sub-01_T2w_seg"]
    assert entries[0].layer_name == "sub-01_T2w_seg"  # saved under that exact path: first
    assert restore(entries[0])[0][0, 0, 0] == 7
    assert find_recoveries("x", "cd" * 32, tmp_path / "cache") == []  # other content


def test_throttle_by_edit_count_and_time(tmp_path, labels):
    clock = Clock()
    saver = make(tmp_path, clock, every_edits=3, every_seconds=30)
    assert saver.maybe_save(labels) is None  # nothing edited
    saver.note_edit()
    saver.note_edit()
    assert not saver.due() and saver.maybe_save(labels) is None
    saver.note_edit()
    assert saver.maybe_save(labels) is not None  # 3 edits
    assert saver.unsaved_edits == 0 and not saver.due()
    clock.t += 10
    saver.note_edit()
    assert saver.maybe_save(labels) is None  # 1 edit, 10 s
    assert saver.maybe_save(labels, now=clock.t + 25) is not None  # 35 s since the save
    assert saver.last_saved == clock.t + 25
    clock.t += 100
    assert saver.maybe_save(labels) is None  # time alone never saves


def test_time_counts_from_the_first_edit_before_any_save(tmp_path, labels):
    clock = Clock()
    saver = make(tmp_path, clock, every_edits=100, every_seconds=30)
    clock.t += 500  # idle before the first edit
    saver.note_edit()
    assert not saver.due()
    clock.t += 31
    assert saver.due()


def test_env_var_and_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(autosave.ENV_VAR, str(tmp_path / "env"))
    assert autosave.autosave_dir() == tmp_path / "env"
    saver = Autosaver(None, tmp_path / "img.nii.gz", SHA, "seg")
    assert saver.path.parent == tmp_path / "env"
    monkeypatch.delenv(autosave.ENV_VAR)
    d = autosave.autosave_dir()
    assert d.name == "autosave" and "napari-spineseg" in str(d)


def test_refuses_to_write_next_to_the_data(tmp_path):
    with pytest.raises(SaveRefusedError, match="never written next to the data"):
        Autosaver(tmp_path, tmp_path / "img.nii.gz", SHA, "seg")


def test_corrupt_files_are_skipped_and_refused(tmp_path, labels):
    saver = make(tmp_path)
    saver.save(labels)
    (tmp_path / "cache" / "garbage.npz").write_bytes(b"not a zip")
    entries = find_recoveries("x", SHA, tmp_path / "cache")
    assert len(entries) == 1
    saver.path.write_bytes(b"truncated")
    with pytest.raises(SpinesegError, match="cannot be read"):
        restore(entries[0])
    assert find_recoveries("x", SHA, tmp_path / "nowhere") == []


def test_discard_after_save_and_prune(tmp_path, labels):
    saver = make(tmp_path)
    saver.save(labels)
    saver.discard()
    saver.discard()  # twice is fine
    assert not saver.path.exists()
    saver.save(labels)
    import os

    os.utime(saver.path, (0, 0))  # 1970
    assert autosave.prune(30, tmp_path / "cache") == 1
    assert not saver.path.exists()
