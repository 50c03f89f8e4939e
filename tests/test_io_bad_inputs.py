"""The bad-input matrix (research/nifti.md §3.4 A1-A19): never a silently wrong image.

Every refused file raises :class:`NiftiError` whose message names the file and the
problem; every accepted odd file loads with its voxels intact and, when other tools
would show it differently, a :class:`GeometryWarning` that says so.
"""

from __future__ import annotations

import gzip
import re
import struct
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
    assert message == f"{path}: {info.value.problem}"
    assert info.value.path == str(path)
    # The words are looked for in the problem, not in the file name ("empty.nii.gz").
    for word in words:
        assert word in info.value.problem.lower(), f"{case}: {word!r} not in {message!r}"


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


# ------------------------------------------------------------- every refusal in full
# What the user reads: the problem, the numbers from the header and the fix, word for word
# (the file name is checked apart, so a word of it cannot stand in for the problem).

FIX = (
    "re-export the image from its source, or repair the header with nibabel "
    "(img = nib.load(path); img.header...; nib.save(img, new_path))"
)
ANALYZE = (
    "ANALYZE/NIfTI pair (.hdr/.img) is not supported: its orientation is not reliable "
    "across tools; convert it to a single .nii.gz (e.g. `fslchfiletype NIFTI_GZ`)"
)
NOT_NIFTI = "not a NIfTI file (header size field is neither 348 nor 540: corrupt?)"
VOX_OFFSET = (
    "the voxel data of a single-file NIfTI-{} start at byte {} or later (corrupt header); "
)
DEGENERATE = (
    "degenerate geometry (no image has voxels outside 1e-06 ... 500 mm, and a zero column "
    "makes the grid singular); " + FIX
)

FULL_PROBLEMS: dict[str, str | re.Pattern] = {
    "truncated .nii.gz": "file is truncated or corrupt (Compressed file ended before the "
    "end-of-stream marker was reached)",
    "truncated .nii": "file is truncated: expected 48352 bytes, found 47352 (incomplete copy?)",
    "header-only .nii": "file is truncated: expected 48352 bytes, found 352 (incomplete copy?)",
    "empty file": "empty file (0 bytes)",
    "random bytes .nii": NOT_NIFTI,
    "random bytes .nii.gz": "named .nii.gz but it is not gzip-compressed (rename it to .nii)",
    "no extension": "not a .nii or .nii.gz file name",
    ".nii.gz not gzipped": "named .nii.gz but it is not gzip-compressed (rename it to .nii)",
    ".nii gzipped": "is gzip-compressed but named .nii (rename it to .nii.gz)",
    "bad magic": "bad NIfTI magic b'xyz\\x00': an ANALYZE 7.5 or corrupt header. Refusing, "
    "because its orientation would be guessed (ITK would show it unflipped at the origin)",
    "sizeof_hdr wrong": NOT_NIFTI,
    "ANALYZE .hdr": ANALYZE,
    "ANALYZE .img": ANALYZE,
    "complex64": "unsupported complex64 data (take the magnitude first, e.g. "
    "`fslcomplex -realabs`)",
    "RGB24": "unsupported RGB24 colour data (not a scalar MRI volume)",
    "5D warping field": "5D data (7, 6, 5, 1, 3) (a vector or warping field?): only 2D, 3D "
    "and 4D images can be shown and segmented",
    "NaN in the affine": "header field srow_x holds NaN or infinity: the orientation is "
    "corrupt; " + FIX,
    "qform not a rotation, no sform": "the qform quaternion is not a rotation (b²+c²+d² = 1.62 > "
    "1, corrupt qform) and there is no sform to use instead; " + FIX,
    "vox_offset inf": "vox_offset = inf: " + VOX_OFFSET.format(1, 352) + FIX,
    "vox_offset NaN": "vox_offset = nan: " + VOX_OFFSET.format(1, 352) + FIX,
    "vox_offset 0": "vox_offset = 0.0: " + VOX_OFFSET.format(1, 352) + FIX,
    "xyzt_units spatial code 7": "xyzt_units = 15: unknown spatial unit code 7 (valid: "
    "0 unknown, 1 meter, 2 mm, 3 micron), so the voxel size cannot be interpreted; fix it "
    "with nibabel: img.header.set_xyzt_units('mm')",
    "xyzt_units time code 56, 4D": "xyzt_units = 58: unknown time unit code 56 in a 4D "
    "series (valid: 8 s, 16 ms, 24 µs, 32 Hz, 40 ppm, 48 rad/s); fix it with nibabel: "
    "img.header.set_xyzt_units('mm', 'sec')",
    "NIfTI-2 dim[0] = -1": "dim[0] = -1: the number of dimensions must be 1 to 7 (corrupt "
    "header); " + FIX,
    "dim claims 54 TB in a .nii.gz": "the header claims 54,000,000,000,352 bytes of image "
    "data but a 411-byte .nii.gz can hold at most 424,152: its dimensions (dim) or "
    "vox_offset are corrupt; " + FIX,
    "zero dimension": "dim[2] = 0 in shape (7, 0, 5): every dimension must be at least 1 "
    "(an empty or corrupt image)",
    "datatype uint8, bitpix 16": "datatype 2 has 8 bits per voxel but the header's bitpix "
    "says 16: tools disagree on how to read such a file (corrupt or hand-edited header); " + FIX,
    "unknown datatype code": "datatype code 999 is not a NIfTI voxel type that can be read "
    "(corrupt header, or 1-bit/unknown data); " + FIX,
    "voxel size 1e38 mm, qform only": "the qform gives voxel axis 1 a length of 1e+38 mm: "
    + DEGENERATE,
    "slices of 600 mm": "the sform gives voxel axis 3 a length of 600 mm: " + DEGENERATE,
    "zero column in the sform": "the sform gives voxel axis 3 a length of 0 mm: " + DEGENERATE,
    "coplanar sform axes": "the sform's voxel axes are (nearly) coplanar (|det| / product "
    "of voxel sizes = 1.1e-06): singular, degenerate geometry with no 3D position for each "
    "voxel; " + FIX,
    "NaN pixdim with a valid sform": "pixdim[3] is nan: the voxel size is undefined "
    "(ITK-based tools read it from pixdim and cannot open the file); " + FIX,
    "inf pixdim with a valid sform": "pixdim[1] is inf: the voxel size is undefined "
    "(ITK-based tools read it from pixdim and cannot open the file); " + FIX,
    "NaN quaternion": "header field quatern_b holds NaN or infinity: the orientation is "
    "corrupt; " + FIX,
    # the CRC values come from Python's gzip module
    "gzip CRC damaged": re.compile(
        re.escape("corrupt gzip stream: the voxels do not match the file's checksum (")
        + r"CRC check failed 0x[0-9a-f]+ != 0x[0-9a-f]+"
        + re.escape("); the file was damaged in a copy or on disk: copy or export it again")
    ),
    "scl_inter NaN with a slope": "scl_slope is 2 but scl_inter is nan: the intensity "
    "scaling is corrupt; " + FIX,
}


def _assert_refused(path: Path, expected: str | re.Pattern) -> None:
    with pytest.raises(NiftiError) as info:
        load(path)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.problem}"
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(info.value.problem), info.value.problem
    else:
        assert info.value.problem == expected


def test_every_refusal_case_has_its_full_message():
    assert set(FULL_PROBLEMS) == set(fx.REFUSED)


@pytest.mark.parametrize("case", list(FULL_PROBLEMS))
def test_refusal_message_in_full(case, tmp_path):
    _assert_refused(fx.REFUSED[case][0](tmp_path), FULL_PROBLEMS[case])


def _nifti(folder: Path, name: str, data=None, *, raw: dict | None = None, **fields) -> Path:
    """A phantom file (``fields`` as in ``fx.raw_header``), then raw bytes patched:
    ``raw`` maps an offset to (struct format, values)."""
    data = fx.phantom() if data is None else data
    payload = bytearray(fx.raw_nifti(data, fx.raw_header(data, **fields)))
    for offset, (fmt, values) in (raw or {}).items():
        payload[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    gz = name.endswith(".gz")
    return fx.write(folder / name, bytes(payload), gz=gz)


def _missing(folder: Path) -> Path:
    return folder / "never_written.nii.gz"


def _folder(folder: Path) -> Path:
    (folder / "looks_like.nii.gz").mkdir()
    return folder / "looks_like.nii.gz"


def _named(name: str):
    """Any bytes under a refused name: the name alone decides (nothing is parsed)."""
    return lambda folder: fx.write(folder / name, b"\x00" * 400, gz=False)


def _header_bytes(n: int):
    def build(folder: Path) -> Path:
        d = fx.phantom()
        return fx.write(folder / f"cut{n}.nii", fx.raw_nifti(d, fx.raw_header(d))[:n])

    return build


def _gzip_cut_in_header(folder: Path) -> Path:
    d = fx.phantom()
    stream = gzip.compress(fx.raw_nifti(d, fx.raw_header(d)), mtime=0)
    return fx.write(folder / "cut_gz.nii.gz", stream[:30], gz=False)


def _nifti2_patched(name: str, offset: int, fmt: str, *values):
    return fx._raw_patch(name, offset, fmt, *values, cls=nib.Nifti2Header)


def _raw_patch_h(name: str, offset: int, value: int):
    return fx._raw_patch(name, offset, "<h", value)


def _no_codes_600mm(folder: Path) -> Path:
    d = fx.phantom()
    affine = fx.oblique_affine((0.8, 0.9, 600.0))
    return fx.write_image(folder / "nocodes600.nii.gz", d, affine, qform_code=0, sform_code=0)


def _pixdim_only(name: str, k: int, value: float):
    """The sform is fine; pixdim[k] (what ITK-based tools and resampling read) is not."""

    def build(folder: Path) -> Path:
        d = fx.phantom()
        hdr = fx.raw_header(d, qform_code=0)
        hdr["pixdim"][k] = value
        return fx.write(folder / name, fx.raw_nifti(d, hdr))

    return build


def _bad_time_code_micron_4d(folder: Path) -> Path:
    d = fx.phantom(shape=(*fx.PHANTOM_SHAPE, 2))
    hdr = fx.raw_header(d)
    hdr["xyzt_units"] = 3 | 56  # micron (a valid spatial code) with an unknown time code
    return fx.write(folder / "micron_time56.nii.gz", fx.raw_nifti(d, hdr))


MORE_REFUSED: dict[str, tuple] = {
    "missing file": (_missing, "no such file"),
    "a folder named .nii.gz": (_folder, "is a folder, not a NIfTI file"),
    ".hdr": (_named("pair.hdr"), ANALYZE),
    ".img": (_named("pair.img"), ANALYZE),
    ".hdr.gz": (_named("pair.hdr.gz"), ANALYZE),
    ".img.gz": (_named("pair.img.gz"), ANALYZE),
    "upper-case .HDR": (_named("PAIR.HDR"), ANALYZE),
    "347 bytes": (_header_bytes(347), "file is truncated: 347 bytes, a NIfTI header has 348"),
    # a whole header but not its 4-byte extension flag: the size check speaks, with numbers
    "348 bytes": (
        _header_bytes(348),
        "file is truncated: expected 772 bytes, found 348 (incomplete copy?)",
    ),
    "gzip stream cut inside the header": (
        _gzip_cut_in_header,
        "corrupt gzip stream (Compressed file ended before the end-of-stream marker was reached)",
    ),
    "NIfTI-1 dim[0] = -1": (
        _raw_patch_h("dim0_neg.nii", 40, -1),
        "dim[0] = -1: the number of dimensions must be 1 to 7 (corrupt header); " + FIX,
    ),
    "dim[0] = 0": (
        _raw_patch_h("dim0_zero.nii", 40, 0),
        "dim[0] = 0: the number of dimensions must be 1 to 7 (corrupt header); " + FIX,
    ),
    "dim[0] = 8": (
        _raw_patch_h("dim0_8.nii", 40, 8),
        "dim[0] = 8: the number of dimensions must be 1 to 7 (corrupt header); " + FIX,
    ),
    "negative dimension": (
        _raw_patch_h("dim_neg.nii", 44, -6),
        "dim[2] = -6 in shape (7, -6, 5): every dimension must be at least 1 (an empty or "
        "corrupt image)",
    ),
    # the first dimension below 1 is named, not the first dimension equal to 1
    "a 1 then a 0": (
        lambda folder: _nifti(folder, "dim_1_0.nii", raw={40: ("<4h", (3, 7, 1, 0))}),
        "dim[3] = 0 in shape (7, 1, 0): every dimension must be at least 1 (an empty or "
        "corrupt image)",
    ),
    "negative bitpix": (
        _raw_patch_h("bitpix_neg.nii", 72, -8),
        "datatype 4 has 16 bits per voxel but the header's bitpix says -8: tools disagree on "
        "how to read such a file (corrupt or hand-edited header); " + FIX,
    ),
    "NIfTI-2 negative bitpix": (
        _nifti2_patched("two_bitpix.nii", 14, "<h", -16),
        "datatype 4 has 16 bits per voxel but the header's bitpix says -16: tools disagree "
        "on how to read such a file (corrupt or hand-edited header); " + FIX,
    ),
    "NIfTI-2 vox_offset -1": (
        _nifti2_patched("two_vox.nii", 168, "<q", -1),
        "vox_offset = -1: " + VOX_OFFSET.format(2, 544) + FIX,
    ),
    "NIfTI-2 bad magic": (
        _nifti2_patched("two_magic.nii", 4, "<8s", b"n+3\x00\r\n\x1a\n"),
        "bad NIfTI-2 magic b'n+3\\x00\\r\\n\\x1a\\n': corrupt header",
    ),
    "scl_inter NaN with slope 1": (
        fx._raw_patch("inter_nan_slope1.nii", 112, "<ff", 1.0, float("nan")),
        "scl_slope is 1 but scl_inter is nan: the intensity scaling is corrupt; " + FIX,
    ),
    "no orientation codes, slices of 600 mm": (
        _no_codes_600mm,
        "the pixdim gives voxel axis 3 a length of 600 mm: " + DEGENERATE,
    ),
    "pixdim[1] of 1000 mm with a valid sform": (
        _pixdim_only("pixdim1_1000.nii.gz", 1, 1000.0),
        "pixdim[1] = 1e+03 mm: no image has voxels outside 1e-06 ... 500 mm, and models "
        "resample with it; " + FIX,
    ),
    "pixdim[3] of 1000 mm with a valid sform": (
        _pixdim_only("pixdim3_1000.nii.gz", 3, 1000.0),
        "pixdim[3] = 1e+03 mm: no image has voxels outside 1e-06 ... 500 mm, and models "
        "resample with it; " + FIX,
    ),
    "unknown time code in a micron 4D series": (
        _bad_time_code_micron_4d,
        "xyzt_units = 59: unknown time unit code 56 in a 4D series (valid: 8 s, 16 ms, 24 µs, "
        "32 Hz, 40 ppm, 48 rad/s); fix it with nibabel: img.header.set_xyzt_units('mm', 'sec')",
    ),
    "7D": (
        lambda folder: _nifti(folder, "seven.nii", np.zeros((2, 1, 1, 1, 1, 1, 2), np.int16)),
        "7D data (2, 1, 1, 1, 1, 1, 2) (a vector or warping field?): only 2D, 3D and 4D "
        "images can be shown and segmented",
    ),
}


@pytest.mark.parametrize("case", list(MORE_REFUSED))
def test_more_refusals_in_full(case, tmp_path):
    build, expected = MORE_REFUSED[case]
    _assert_refused(build(tmp_path), expected)


# ---------------------------------------------------- odd but valid files, warnings in full

IMPLAUSIBLE = (
    "implausible voxel size ({} mm, outside 1 µm ... 100 mm): check the header's units and "
    "pixdim; models resample the image to their own voxel size"
)


def _odd_header(name: str, shape=fx.PHANTOM_SHAPE, affine=None, **fields):
    """A phantom whose header fields (``pixdim`` as {index: value}) are set after the forms."""
    pixdim = fields.pop("pixdim", {})
    units = fields.pop("xyzt_units", None)

    def build(folder: Path) -> Path:
        d = fx.phantom(shape=shape)
        hdr = fx.raw_header(d, affine, **fields)
        for k, value in pixdim.items():
            hdr["pixdim"][k] = value
        if units is not None:
            hdr["xyzt_units"] = units
        return fx.write(folder / name, fx.raw_nifti(d, hdr))

    return build


def _unused_dims_zero(folder: Path) -> Path:
    """Writers often leave dim[4..7] at 0 on a 3D image: they are not dimensions."""
    return fx._raw_patch("unused0.nii", 40, "<8h", 3, 7, 6, 5, 0, 0, 0, 0)(folder)


FOUR_D = (*fx.PHANTOM_SHAPE, 2)

#: name -> (builder, the exact warnings kept in ``Volume.warnings``)
LOADED_IN_FULL: dict[str, tuple] = {
    # pixdim[0] is qfac and pixdim[4] the time step: neither is a voxel size
    "pixdim[0] NaN": (_odd_header("qfac_nan.nii.gz", pixdim={0: np.nan}), []),
    "3D, pixdim[4] NaN": (_odd_header("tr_nan.nii.gz", pixdim={4: np.nan}), []),
    "3D, pixdim[4] 0": (_odd_header("tr_zero3d.nii.gz", pixdim={4: 0.0}), []),
    "4D, time step 0 (unknown)": (_odd_header("tr_zero.nii.gz", FOUR_D, pixdim={4: 0.0}), []),
    "4D, time step 3000 ms": (_odd_header("tr_ms.nii.gz", FOUR_D, pixdim={4: 3000.0}), []),
    "3D with an unknown time code": (_odd_header("time56.nii.gz", xyzt_units=2 | 56), []),
    "4D in micron and seconds": (
        _odd_header("micron4d.nii.gz", FOUR_D, xyzt_units=3 | 8),
        [
            "spatial unit is 'micron': napari shows the stored numbers as mm, ITK-based "
            "tools rescale them"
        ],
    ),
    "4D in meter and seconds": (
        _odd_header("meter4d.nii.gz", FOUR_D, xyzt_units=1 | 8),
        [
            "spatial unit is 'meter': napari shows the stored numbers as mm, ITK-based "
            "tools rescale them"
        ],
    ),
    "unused dims set to 0": (_unused_dims_zero, []),
    "NIfTI-2 with the ni2 (pair) magic in a .nii": (
        _odd_header("ni2.nii", cls=nib.Nifti2Header, magic=b"ni2"),
        [],
    ),
    # the bounds are inclusive: 500 mm is possible (warned), 100 mm plausible (silent)
    "slices of exactly 500 mm": (
        _odd_header("500mm.nii.gz", affine=fx.oblique_affine((0.8, 0.9, 500.0))),
        [IMPLAUSIBLE.format("0.8, 0.9, 500")],
    ),
    "slices of exactly 100 mm": (
        _odd_header("100mm.nii.gz", affine=fx.oblique_affine((0.8, 0.9, 100.0))),
        [],
    ),
    # the voxel sizes are the lengths of the affine's columns (not of its rows)
    "oblique slices of 150 mm": (
        _odd_header("oblique150.nii.gz", affine=fx.oblique_affine((0.8, 0.9, 150.0), 30.0)),
        [
            IMPLAUSIBLE.format("0.8, 0.9, 150"),
            # 30° about x moves the (y, z) corner 2 r sin(15°) = 155 mm, r = hypot(2.25, 300)
            "oblique acquisition (30.00 degrees from the scanner axes): shown on the nearest "
            "axis-aligned grid, so napari's world coordinates are off by up to 1.6e+02 mm at "
            "the edges of the field of view; voxels and saved masks are exact",
        ],
    ),
    # pixdim alone implausible (the sform is fine): still worth a warning
    "pixdim[1] of 200 mm": (
        _odd_header("pixdim1_200.nii.gz", qform_code=0, pixdim={1: 200.0}),
        [
            IMPLAUSIBLE.format("0.8, 0.9, 2.5"),
            "voxel size differs between pixdim (200, 0.9, 2.5 mm) and the affine "
            "(0.8, 0.9, 2.5 mm): ITK-SNAP/Slicer use pixdim, FSL/nibabel the affine",
        ],
    ),
    "pixdim[3] of 200 mm": (
        _odd_header("pixdim3_200.nii.gz", qform_code=0, pixdim={3: 200.0}),
        [
            IMPLAUSIBLE.format("0.8, 0.9, 2.5"),
            "voxel size differs between pixdim (0.8, 0.9, 200 mm) and the affine "
            "(0.8, 0.9, 2.5 mm): ITK-SNAP/Slicer use pixdim, FSL/nibabel the affine",
        ],
    ),
    "qform not a rotation, valid sform": (
        fx.LOADED["qform not a rotation, valid sform"][0],
        [
            "the qform quaternion is not a rotation (b²+c²+d² = 1.62 > 1, corrupt qform): "
            "using the sform, as FSL and nibabel do; ITK-based tools (ITK-SNAP, Slicer, ANTs) "
            "may refuse this file or place it differently"
        ],
    ),
    "scl_slope 0 with scl_inter 5": (
        fx.LOADED["scl_slope 0"][0],
        [
            "scl_slope is 0 with scl_inter 5: no scaling applied (NIfTI standard); ITK-based "
            "tools add the intercept anyway"
        ],
    ),
    "scl_slope 0 with scl_inter 0 (no scaling, nothing to say)": (
        _odd_header("slope0_inter0.nii.gz", scl_slope=0.0, scl_inter=0.0),
        [],
    ),
    "NIfTI-2, scl_slope 0 with scl_inter 5": (
        _odd_header("two_slope0.nii.gz", cls=nib.Nifti2Header, scl_slope=0.0, scl_inter=5.0),
        [
            "scl_slope is 0 with scl_inter 5: no scaling applied (NIfTI standard); ITK-based "
            "tools add the intercept anyway"
        ],
    ),
}


@pytest.mark.parametrize("case", list(LOADED_IN_FULL))
def test_loaded_with_warnings_in_full(case, tmp_path):
    build, expected = LOADED_IN_FULL[case]
    built = build(tmp_path)
    path = built[0] if isinstance(built, tuple) else built
    vol, geometry = _load_recording(path)
    assert vol.warnings == expected
    assert geometry == [f"{path.name}: {w}" for w in expected]
