"""Archive cases found by mutation testing (benchmarks/README.md, models/archives.py).

The zip-bomb limits at their exact values (a genuine 100 MB model must install), the
streaming of members in bounded chunks with real byte counts, and the refusals' full
texts (a user reads them; fragments let a garbled message through).
"""

from __future__ import annotations

import io
import stat
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from napari_spineseg.errors import ModelNotInstalledError
from napari_spineseg.models import archives
from napari_spineseg.models.archives import (
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    RATIO_FLOOR,
    member_problem,
    open_zip,
    safe_extract,
)

RECREATE = "re-create the archive with standard (Deflate) compression and no password"


def sized_archive(path: Path, size: int) -> Path:
    """A file of ``size`` bytes on disk (sparse): what ``_plan`` reads of the archive."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def plan(tmp_path, monkeypatch, archive_size: int, declared: int) -> int:
    """``_plan`` of one member declaring ``declared`` bytes in an archive of that size."""
    monkeypatch.setattr(archives, "_free_bytes", lambda folder: 10**15)
    archive = sized_archive(tmp_path / "model.zip", archive_size)
    info = zipfile.ZipInfo("model/checkpoint_final.pth")
    info.file_size = declared
    return archives._plan(archive, [info], tmp_path / "target")


def refusal(archive: Path, what: str) -> str:
    return f"{archive}: refused to extract: {what} (unsafe archive, nothing was installed)"


# ------------------------------------------------------------------ zip-bomb limits


def test_a_genuine_100_mb_model_compressing_1_1_to_1_is_accepted(tmp_path, monkeypatch):
    assert plan(tmp_path, monkeypatch, 91_000_000, 100_000_000) == 100_000_000


def test_the_ratio_limit_is_exact_above_the_floor(tmp_path, monkeypatch):
    size = 1_000_000
    assert plan(tmp_path, monkeypatch, size, MAX_RATIO * size) == MAX_RATIO * size
    with pytest.raises(ModelNotInstalledError) as err:
        plan(tmp_path, monkeypatch, size, MAX_RATIO * size + 1)
    assert str(err.value) == refusal(
        tmp_path / "model.zip",
        "1.0 MB expand to 200.0 MB (200:1; real models compress less than 200:1: a zip bomb?)",
    )


def test_no_ratio_is_asked_of_archives_expanding_to_at_most_64_mib(tmp_path, monkeypatch):
    # JSON and tiny test models compress far better than 200:1; the floor lets them in
    assert plan(tmp_path, monkeypatch, 10, RATIO_FLOOR) == RATIO_FLOOR
    with pytest.raises(ModelNotInstalledError, match=r"\(6,710,886:1; real models"):
        plan(tmp_path, monkeypatch, 10, RATIO_FLOOR + 1)


def test_the_total_limit_is_exact(tmp_path, monkeypatch):
    size = MAX_TOTAL_BYTES // 100  # 100:1, under the ratio limit
    assert plan(tmp_path, monkeypatch, size, MAX_TOTAL_BYTES) == MAX_TOTAL_BYTES
    with pytest.raises(ModelNotInstalledError) as err:
        plan(tmp_path, monkeypatch, size, MAX_TOTAL_BYTES + 1)
    assert str(err.value) == refusal(
        tmp_path / "model.zip",
        "it expands to 20.00 GB, more than the 20.00 GB any model needs (a zip bomb?)",
    )


# ------------------------------------------------------------------ streaming


class Reader:
    """A member reader that yields ``n`` bytes and records the sizes asked for."""

    def __init__(self, n: int) -> None:
        self.data = io.BytesIO(b"\0" * n)
        self.asked: list[object] = []

    def read(self, size=-1):
        self.asked.append(size)
        return self.data.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeZip:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def open(self, info):
        return self.reader


def write_member(tmp_path, declared_member: int, actual: int, total: int, declared: int):
    info = zipfile.ZipInfo("model/checkpoint_final.pth")
    info.file_size = declared_member
    reader = Reader(actual)
    created: list[Path] = []
    out = archives._write_member(
        FakeZip(reader), info, tmp_path / "ckpt", tmp_path / "m.zip", total, declared, created
    )
    return out, reader, created


def test_members_stream_in_1_mib_chunks_and_the_running_total_is_returned(tmp_path):
    mib = 1 << 20
    out, reader, created = write_member(tmp_path, 5 * mib // 2, 5 * mib // 2, 7, 10 * mib)
    assert out == 7 + 5 * mib // 2  # bytes written so far by the whole extraction
    assert set(reader.asked) == {mib}  # never "read it all": a 2 GB checkpoint stays on disk
    assert (tmp_path / "ckpt").stat().st_size == 5 * mib // 2 and created == [tmp_path / "ckpt"]


def test_a_member_longer_than_declared_is_refused_across_chunks(tmp_path):
    mib = 1 << 20
    # each 1 MiB chunk is under the declared 1.5 MiB; together they are not
    with pytest.raises(ModelNotInstalledError) as err:
        write_member(tmp_path, 3 * mib // 2, 5 * mib // 2, 0, 100 * mib)
    assert str(err.value) == (
        f"{tmp_path / 'm.zip'}: refused to extract: member 'model/checkpoint_final.pth' "
        "expands beyond the 1,572,864 bytes its header declares (a zip bomb?); nothing was "
        "installed"
    )


def test_the_archive_total_is_counted_over_every_member(tmp_path):
    mib = 1 << 20
    # this member is honest, but with what earlier members wrote the archive's declared
    # total is passed: refused
    with pytest.raises(ModelNotInstalledError, match="expands beyond the 3,145,728 bytes"):
        write_member(tmp_path, 3 * mib, 3 * mib, 8 * mib, 10 * mib)
    out, _, _ = write_member(tmp_path, 3 * mib, 3 * mib, 7 * mib, 10 * mib)
    assert out == 10 * mib  # exactly the declared total is fine


def test_extracting_a_large_member_holds_one_chunk_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "_free_bytes", lambda folder: 10**12)
    z = tmp_path / "big.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model/checkpoint_final.pth", b"\1" * (16 << 20))
    tracemalloc.start()
    try:
        safe_extract(z, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"{peak / 2**20:.1f} MiB held for a 16 MiB member"
    assert (tmp_path / "out/model/checkpoint_final.pth").stat().st_size == 16 << 20


# ------------------------------------------------------------------ messages in full


def info_named(name: str, *, method: int = zipfile.ZIP_DEFLATED, mode: int = 0o644):
    info = zipfile.ZipInfo(name)
    info.compress_type = method
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def test_member_problems_read_in_full():
    link = info_named("model/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert member_problem(link) == "is a symbolic link"
    assert member_problem(info_named("/etc/passwd")) == "has an absolute path"
    assert member_problem(info_named("C:/x.pth")) == "has an absolute path"
    assert member_problem(info_named("C:")) == "has an absolute path"  # a drive, on Windows
    assert member_problem(info_named("model/../../x")) == "contains '..'"
    assert member_problem(info_named("model/ok.json")) is None
    assert member_problem(info_named("a", method=98)) == (
        f"uses PPMd compression (method 98), which cannot be read here; {RECREATE}"
    )
    assert member_problem(info_named("a", method=77)) == (
        f"uses an unknown compression (method 77), which cannot be read here; {RECREATE}"
    )


def test_open_zip_refuses_a_folder_in_full(tmp_path):
    with pytest.raises(ModelNotInstalledError) as err:
        open_zip(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a regular file, so not a zip archive"


def test_a_model_folder_that_cannot_be_made_is_named_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "_free_bytes", lambda folder: 10**12)
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("model/dataset.json", "{}")
    blocker = tmp_path / "models"
    blocker.write_text("a file where the store's folder should be")
    target = blocker / "task"
    with pytest.raises(ModelNotInstalledError) as err:
        safe_extract(z, target)
    assert str(err.value) == (
        f"{z}: member (the model folder) cannot be extracted into {target} "
        "(Not a directory); nothing was installed"
    )
    assert blocker.read_text().startswith("a file")
