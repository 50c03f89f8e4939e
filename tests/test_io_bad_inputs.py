"""The bad-input matrix (research/nifti.md §3.4 A1-A19): never a silently wrong image.

Every refused file raises :class:`NiftiError` whose message names the file and the
problem; every accepted odd file loads with its voxels intact and, when other tools
would show it differently, a :class:`GeometryWarning` that says so.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest

import nifti_factory as fx
from napari_spineseg.errors import GeometryWarning, NiftiError
from napari_spineseg.io import load


def _load_recording(path: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load(path)
    geometry = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    return vol, geometry


@pytest.mark.parametrize("case", list(fx.REFUSED))
def test_refused_with_a_message_naming_file_and_problem(case, tmp_path):
    build, words = fx.REFUSED[case]
    path = build(tmp_path)
    with pytest.raises(NiftiError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message, message
    assert info.value.path == str(path)
    for word in words:
        assert word in message.lower(), f"{case}: {word!r} not in {message!r}"


@pytest.mark.parametrize("case", list(fx.LOADED))
def test_loaded_intact_with_the_expected_warnings(case, tmp_path):
    build, words = fx.LOADED[case]
    path, expected = build(tmp_path)
    vol, geometry = _load_recording(path)
    assert vol.data.shape == expected.shape
    assert vol.data.dtype.isnative
    if expected.dtype.kind == "f":
        np.testing.assert_array_equal(vol.data, expected)  # NaN == NaN here
    else:
        assert vol.data.dtype == expected.dtype
        assert np.array_equal(vol.data, expected)
    if not words:
        assert geometry == [], f"{case}: unexpected warnings {geometry}"
        assert vol.warnings == []
    for word in words:
        assert any(word in w.lower() for w in geometry), f"{case}: no {word!r} in {geometry}"
        assert any(word in w.lower() for w in vol.warnings)
    assert all(w.startswith(path.name) for w in geometry), "warnings must name the file"


def test_scaled_integers_follow_the_standard(tmp_path):
    """slope 2.5 / inter -10 is applied (as float32); slope 0 means *no* scaling."""
    path, expected = fx.LOADED["scl_slope 2.5 inter -10"][0](tmp_path)
    vol, _ = _load_recording(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, expected, rtol=0, atol=1e-3)
    path, raw = fx.LOADED["scl_slope 0"][0](tmp_path)
    vol, geometry = _load_recording(path)
    assert vol.data.dtype == np.int16 and np.array_equal(vol.data, raw)  # not raw + 5
    assert any("no scaling applied" in w for w in geometry)


def test_qform_sform_thresholds_are_graded(tmp_path):
    """1e-4 mm (float32 noise, like mt1) is silent; 0.01 mm warns; 10 mm warns loudly."""
    messages = {}
    for mm in (1e-4, 0.01, 10.0):
        path, _ = fx._qs_shift(mm)(tmp_path)
        messages[mm] = " ".join(_load_recording(path)[1])
    assert "qform" not in messages[1e-4]
    assert "differ by" in messages[0.01] and "disagree" not in messages[0.01]
    assert "disagree by up to 10 mm" in messages[10.0]


def test_almost_unit_quaternion_places_the_image_like_sct(tmp_path):
    path, _ = fx.LOADED["almost-unit quaternion"][0](tmp_path)
    with pytest.raises(ValueError, match="w2 should be positive"):
        nib.load(str(path)).affine  # noqa: B018 - strict nibabel refuses it
    vol, _ = _load_recording(path)
    # 180 degrees about x: x kept, y and z flipped
    np.testing.assert_allclose(np.sign(np.diag(vol.affine)[:3]), [1, -1, -1])
    assert nib.Nifti1Header.quaternion_threshold > 0, "class threshold must be restored"


def test_sibling_nii_next_to_nii_gz_is_flagged(tmp_path):
    data = fx.phantom()
    path = fx.write_image(tmp_path / "scan.nii.gz", data)
    fx.write_image(tmp_path / "scan.nii", data)
    _, geometry = _load_recording(path)
    assert any("scan.nii exists next to this file" in w for w in geometry)


def test_header_extensions_are_read(tmp_path):
    data = fx.phantom()
    img = nib.Nifti1Image(data, fx.oblique_affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"AFNI says hi"))
    path = tmp_path / "ext.nii.gz"
    img.to_filename(str(path))
    vol, _ = _load_recording(path)
    assert np.array_equal(vol.data, data)
    assert len(vol.header.extensions) == 1


@pytest.mark.parametrize(
    "shape", [(7, 6), (7, 6, 1), (7, 6, 5, 1), (7, 6, 1, 3), (7, 6, 5, 3)], ids=str
)
def test_dimensionality(shape, tmp_path):
    """2D stays 2D, (x,y,1) stays 3D, 4D keeps its volumes (incl. single-slice 4D)."""
    data = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    vol, _ = _load_recording(fx.write_image(tmp_path / "d.nii.gz", data))
    assert vol.shape == shape
    assert vol.ndim_spatial == min(len(shape), 3)
    assert vol.is_4d == (len(shape) == 4)
    display = vol.display_data()
    assert display.ndim == (4 if len(shape) == 4 else 3)
    assert np.array_equal(vol.geometry.to_file(display), vol.data)


def test_file_over_2_gib_is_memory_mapped_not_read(tmp_path):
    """A19: a sparse 2 GiB float32 .nii opens in well under a second without reading it."""
    path = fx.sparse_large_nii(tmp_path / "huge.nii")
    try:
        assert path.stat().st_size > 2**31
        if path.stat().st_blocks * 512 > 64 << 20:
            pytest.skip("this file system does not support sparse files")
        proc = psutil.Process()
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        vol, _ = _load_recording(path)
        elapsed = time.perf_counter() - t0
        grown = proc.memory_info().rss - rss0
        assert isinstance(vol.data, np.memmap)
        display = vol.display_data()
        assert np.shares_memory(display, vol.data), "display array must be a view"
        assert display.shape == vol.geometry.display_shape
        assert vol.data.dtype == np.float32
        grown = max(grown, proc.memory_info().rss - rss0)
        assert elapsed < 5.0, f"load took {elapsed:.1f} s"
        assert grown < 100 << 20, f"RSS grew by {grown / 2**20:.0f} MB"
        del vol, display
    finally:
        path.unlink()


def test_gz_claiming_more_voxels_than_it_holds_never_allocates_them(tmp_path):
    """Within deflate's 1032:1 bound the claim cannot be refused up front: the voxels are
    decompressed into an array whose untouched pages cost nothing, so memory stays at
    what the file really holds, and the shortfall is reported as truncation."""
    import gzip
    import struct

    data = fx.noisy()  # incompressible: the .nii.gz is about as large as its voxels
    payload = bytearray(fx.raw_nifti(data, fx.raw_header(data)))
    size = len(gzip.compress(bytes(payload), mtime=0))
    claimed = (40, 30, int(900 * size / (40 * 30 * 2)))  # ~900x the file, under the bound
    payload[40:56] = struct.pack("<8h", 3, *claimed, 1, 1, 1, 1)
    path = fx.write(tmp_path / "claims_more.nii.gz", bytes(payload))
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    with pytest.raises(NiftiError, match="truncated or corrupt") as info:
        load(path)
    assert str(path) in str(info.value)
    grown = proc.memory_info().rss - rss0
    claimed_bytes = int(np.prod(claimed)) * 2
    assert claimed_bytes > 30 << 20
    assert grown < claimed_bytes // 4, (
        f"RSS grew by {grown >> 20} MB for a {claimed_bytes >> 20} MB claim"
    )
