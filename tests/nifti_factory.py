"""Generator of good, odd and broken NIfTI files for the I/O tests.

Every file is built from raw header fields (``raw_nifti``) rather than through nibabel's
image writer, so a test controls exactly what is on disk: slope 0, an almost-unit
quaternion, a wrong ``sizeof_hdr``, big-endian data... Nothing here depends on the
plugin; the expected outcome of each case lives with its test.

Cases follow the bad-input matrix of ``research/nifti.md`` §3.4 (A1-A19).
"""

from __future__ import annotations

import gzip
import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

#: A small, non-cubic grid: every axis length differs, so a swapped axis changes the shape.
PHANTOM_SHAPE = (7, 6, 5)
ZOOMS = (0.8, 0.9, 2.5)


def phantom(shape: tuple[int, ...] = PHANTOM_SHAPE, dtype=np.int16, seed: int = 0) -> np.ndarray:
    """An array whose voxels all hold different values (any reordering is detectable)."""
    n = int(np.prod(shape))
    values = np.random.default_rng(seed).permutation(n) + 1
    return values.reshape(shape).astype(dtype)


def oblique_affine(zooms=ZOOMS, degrees: float = 0.0, offset=(-10.0, 20.0, -30.0)) -> np.ndarray:
    """RAS affine with voxel size ``zooms``, rotated ``degrees`` about the x axis."""
    t = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms)
    aff[:3, 3] = offset
    return aff


def all_axcodes() -> list[tuple[str, str, str]]:
    """The 48 axis orientations (6 permutations x 8 flips), as nibabel axis codes."""
    pairs = (("R", "L"), ("A", "P"), ("S", "I"))
    return [
        tuple(pairs[p][s] for p, s in zip(perm, signs))
        for perm in itertools.permutations(range(3))
        for signs in itertools.product((0, 1), repeat=3)
    ]


def reoriented(
    data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Store the same anatomy (``data`` on ``affine``) in the voxel order ``axcodes``."""
    start = nio.io_orientation(affine)
    transform = nio.ornt_transform(start, nio.axcodes2ornt(axcodes))
    out = np.ascontiguousarray(nio.apply_orientation(data, transform))
    new_affine = affine @ nio.inv_ornt_aff(transform, data.shape[:3])
    return out, new_affine


def raw_header(
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    cls=nib.Nifti1Header,
    **fields,
):
    """A header for ``data``, both forms from ``affine``; ``fields`` override raw values."""
    hdr = cls()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    if affine is None:
        affine = oblique_affine()
    hdr.set_qform(affine, code=qform_code)
    hdr.set_sform(affine, code=sform_code)
    hdr.set_xyzt_units("mm", "sec")
    for name, value in fields.items():
        hdr[name] = value
    return hdr


def raw_nifti(data: np.ndarray, hdr, *, endian: str = "<") -> bytes:
    """Single-file NIfTI bytes: header, 4-byte extension flag, data (Fortran order)."""
    if endian != hdr.endianness:
        hdr = hdr.as_byteswapped(endian)
    block = hdr.binaryblock
    offset = 352 if len(block) == 348 else 544
    hdr = hdr.copy()
    hdr["vox_offset"] = offset
    block = hdr.binaryblock
    arr = np.asarray(data)
    if arr.dtype.names is None:
        arr = arr.astype(arr.dtype.newbyteorder(endian))
    return block + b"\x00" * (offset - len(block)) + arr.tobytes(order="F")


def write(path: Path, payload: bytes, *, gz: bool | None = None) -> Path:
    """Write ``payload``, gzipped when the name ends in .gz (or ``gz`` says so)."""
    if gz is None:
        gz = path.name.lower().endswith(".gz")
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def write_image(path: Path, data: np.ndarray, affine=None, **fields) -> Path:
    """Write ``data`` with a fully specified header (``fields`` as in :func:`raw_header`)."""
    return write(path, raw_nifti(data, raw_header(data, affine, **fields)))


def patch(path: Path, offset: int, value: bytes) -> Path:
    """Overwrite raw header bytes of an uncompressed file in place."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(value)
    return path


def noisy(shape=(40, 30, 20), seed: int = 1) -> np.ndarray:
    """Incompressible int16 data (so a half-length .nii.gz cuts into the voxels)."""
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.int16)


def sparse_large_nii(path: Path, shape=(1024, 1024, 513), dtype=np.float32) -> Path:
    """A valid uncompressed NIfTI larger than 2 GiB that takes no disk space (sparse)."""
    hdr = raw_header(np.empty((1, 1, 1), dtype=dtype), oblique_affine((1.0, 1.0, 1.0)))
    hdr.set_data_shape(shape)
    head = raw_nifti(np.empty(0, dtype=dtype), hdr)
    size = len(head) + int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


# ------------------------------------------------------------------ refused inputs
# name -> (builder(folder) -> path, words the error message must contain)


def _truncated_gz(folder: Path) -> Path:
    d = noisy()
    full = gzip.compress(raw_nifti(d, raw_header(d)), mtime=0)
    return write(folder / "truncated.nii.gz", full[: len(full) // 2], gz=False)


def _truncated_nii(folder: Path) -> Path:
    d = noisy()
    return write(folder / "truncated.nii", raw_nifti(d, raw_header(d))[:-1000])


def _header_only(folder: Path) -> Path:
    d = noisy()
    return write(folder / "header_only.nii", raw_nifti(d, raw_header(d))[:352])


def _empty(folder: Path) -> Path:
    return write(folder / "empty.nii.gz", b"", gz=False)


def _random_nii(folder: Path) -> Path:
    rnd = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return write(folder / "random.nii", b"\x00\x00" + rnd)


def _random_gz(folder: Path) -> Path:
    rnd = np.random.default_rng(8).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return write(folder / "random.nii.gz", b"\x00\x00" + rnd, gz=False)


def _no_extension(folder: Path) -> Path:
    d = phantom()
    return write(folder / "scan", raw_nifti(d, raw_header(d)), gz=False)


def _gz_not_gzipped(folder: Path) -> Path:
    d = phantom()
    return write(folder / "plain.nii.gz", raw_nifti(d, raw_header(d)), gz=False)


def _nii_gzipped(folder: Path) -> Path:
    d = phantom()
    return write(folder / "zipped.nii", raw_nifti(d, raw_header(d)), gz=True)


def _bad_magic(folder: Path) -> Path:
    d = phantom()
    return write(folder / "badmagic.nii", raw_nifti(d, raw_header(d, magic=b"xyz")))


def _sizeof_hdr(folder: Path) -> Path:
    d = phantom()
    return write(folder / "sizeof.nii", raw_nifti(d, raw_header(d, sizeof_hdr=123)))


def _analyze_pair(folder: Path) -> Path:
    img = nib.AnalyzeImage(phantom(), np.diag([*ZOOMS, 1.0]))
    img.to_filename(str(folder / "analyze.hdr"))
    return folder / "analyze.hdr"


def _analyze_img(folder: Path) -> Path:
    return _analyze_pair(folder).with_suffix(".img")


def _complex64(folder: Path) -> Path:
    d = phantom().astype(np.complex64) * (1 + 1j)
    return write(folder / "complex.nii.gz", raw_nifti(d, raw_header(d)))


def _rgb24(folder: Path) -> Path:
    rgb = np.zeros(PHANTOM_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = phantom(dtype=np.uint8)
    hdr = raw_header(np.zeros(PHANTOM_SHAPE, np.uint8))
    hdr["datatype"], hdr["bitpix"] = 128, 24
    return write(folder / "rgb.nii.gz", raw_nifti(rgb, hdr))


def _five_d(folder: Path) -> Path:
    d = np.zeros((*PHANTOM_SHAPE, 1, 3), dtype=np.float32)
    payload = raw_nifti(d, raw_header(d, intent_code=1007))
    return write(folder / "warp_template2anat.nii.gz", payload)


def _nan_affine(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d, qform_code=0)
    hdr["srow_x"] = [np.nan, 0, 0, 0]
    return write(folder / "nan_affine.nii", raw_nifti(d, hdr))


def _raw_patch(name: str, offset: int, fmt: str, *values, **fields) -> Callable[[Path], Path]:
    """A valid phantom file whose raw header bytes at ``offset`` are overwritten."""

    def build(folder: Path) -> Path:
        d = phantom()
        payload = bytearray(raw_nifti(d, raw_header(d, **fields)))
        payload[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
        return write(folder / name, bytes(payload))

    return build


def _bad_quaternion_only(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d, sform_code=0)
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = 0.9, 0.9, 0.0  # b²+c²+d² = 1.62
    return write(folder / "badquat_qonly.nii.gz", raw_nifti(d, hdr))


def _nifti2_dim0(folder: Path) -> Path:
    d = phantom()
    payload = bytearray(raw_nifti(d, raw_header(d, cls=nib.Nifti2Header)))
    payload[16:24] = struct.pack("<q", -1)
    return write(folder / "two_dim0.nii.gz", bytes(payload))


def _claims_huge_gz(folder: Path) -> Path:
    """A 400-byte .nii.gz whose header claims 30000³ int16 voxels (54 TB)."""
    d = phantom()
    payload = bytearray(raw_nifti(d, raw_header(d)))
    payload[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    return write(folder / "huge_claim.nii.gz", bytes(payload))


def _huge_voxels_qform_only(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d, sform_code=0)
    hdr["pixdim"][1:4] = [1e38, 1e38, 1e38]
    return write(folder / "huge_voxels.nii.gz", raw_nifti(d, hdr))


def _zero_sform_column(folder: Path) -> Path:
    """Column k=2 of the sform is zero (reported as 'oblique, 90 degrees' before)."""
    d = phantom()
    hdr = raw_header(d, qform_code=0, sform_code=1)
    for row in ("srow_x", "srow_y", "srow_z"):
        values = np.array(hdr[row])
        values[2] = 0.0
        hdr[row] = values
    return write(folder / "zero_column.nii.gz", raw_nifti(d, hdr))


def _coplanar_sform(folder: Path) -> Path:
    """Columns 1 and 2 of the sform are the same direction: a flat, singular grid."""
    d = phantom()
    hdr = raw_header(d, qform_code=0, sform_code=1)
    hdr["srow_x"] = [0.8, 0.0, 0.0, 1.0]
    hdr["srow_y"] = [0.0, 0.9, 0.9, 2.0]
    hdr["srow_z"] = [0.0, 0.0, 1e-6, 3.0]
    return write(folder / "coplanar.nii.gz", raw_nifti(d, hdr))


def _nan_pixdim_with_sform(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d, qform_code=0)
    hdr["pixdim"][3] = np.nan
    return write(folder / "nan_pixdim.nii.gz", raw_nifti(d, hdr))


def _inf_pixdim_with_sform(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d, qform_code=0)
    hdr["pixdim"][1] = np.inf
    return write(folder / "inf_pixdim.nii.gz", raw_nifti(d, hdr))


def _nan_quaternion(folder: Path) -> Path:
    d = phantom()
    hdr = raw_header(d)
    hdr["quatern_b"] = np.nan
    return write(folder / "nan_quaternion.nii.gz", raw_nifti(d, hdr))


def _bad_time_unit_4d(folder: Path) -> Path:
    d = phantom(shape=(*PHANTOM_SHAPE, 2))
    hdr = raw_header(d)
    hdr["xyzt_units"] = 2 | 56
    return write(folder / "bad_time_unit.nii.gz", raw_nifti(d, hdr))


def _gzip_crc(folder: Path) -> Path:
    """The voxels decode but the gzip CRC says they are not what was written."""
    d = noisy()
    payload = bytearray(gzip.compress(raw_nifti(d, raw_header(d)), mtime=0))
    payload[-8] ^= 0xFF
    return write(folder / "bad_crc.nii.gz", bytes(payload), gz=False)


def _slices_of_600mm(folder: Path) -> Path:
    """Wider than any scanner's field of view (found by the fuzzer: segmenting such a grid
    at the model's 0.8 mm took minutes instead of being refused)."""
    d = phantom()
    return write_image(folder / "600mm.nii.gz", d, oblique_affine((0.8, 0.9, 600.0)))


REFUSED: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "truncated .nii.gz": (_truncated_gz, ("truncated",)),
    "truncated .nii": (_truncated_nii, ("truncated", "expected")),
    "header-only .nii": (_header_only, ("truncated", "expected")),
    "empty file": (_empty, ("empty",)),
    "random bytes .nii": (_random_nii, ("not a nifti",)),
    "random bytes .nii.gz": (_random_gz, ("gzip",)),
    "no extension": (_no_extension, (".nii",)),
    ".nii.gz not gzipped": (_gz_not_gzipped, ("not gzip", "rename")),
    ".nii gzipped": (_nii_gzipped, ("gzip", "rename")),
    "bad magic": (_bad_magic, ("magic",)),
    "sizeof_hdr wrong": (_sizeof_hdr, ("header size",)),
    "ANALYZE .hdr": (_analyze_pair, ("analyze",)),
    "ANALYZE .img": (_analyze_img, ("analyze",)),
    "complex64": (_complex64, ("complex",)),
    "RGB24": (_rgb24, ("rgb",)),
    "5D warping field": (_five_d, ("5d",)),
    "NaN in the affine": (_nan_affine, ("nan",)),
    "qform not a rotation, no sform": (_bad_quaternion_only, ("not a rotation", "no sform")),
    "vox_offset inf": (_raw_patch("vox_inf.nii.gz", 108, "<f", np.inf), ("vox_offset = inf",)),
    "vox_offset NaN": (_raw_patch("vox_nan.nii.gz", 108, "<f", np.nan), ("vox_offset = nan",)),
    "vox_offset 0": (_raw_patch("vox_zero.nii", 108, "<f", 0.0), ("vox_offset = 0", "352")),
    "xyzt_units spatial code 7": (
        _raw_patch("units7.nii.gz", 123, "<B", 7 | 8),
        ("xyzt_units = 15", "spatial unit code 7", "set_xyzt_units"),
    ),
    "xyzt_units time code 56, 4D": (_bad_time_unit_4d, ("time unit code 56",)),
    "NIfTI-2 dim[0] = -1": (_nifti2_dim0, ("dim[0] = -1", "1 to 7")),
    "dim claims 54 TB in a .nii.gz": (_claims_huge_gz, ("claims", "can hold at most", "dim")),
    "zero dimension": (_raw_patch("dim_zero.nii", 44, "<h", 0), ("dim[2] = 0",)),
    "datatype uint8, bitpix 16": (
        _raw_patch("bitpix.nii.gz", 70, "<h", 2),
        ("datatype 2 has 8 bits", "bitpix says 16"),
    ),
    "unknown datatype code": (
        _raw_patch("dtype999.nii.gz", 70, "<h", 999),
        ("datatype code 999",),
    ),
    "voxel size 1e38 mm, qform only": (_huge_voxels_qform_only, ("1e+38 mm", "degenerate")),
    "slices of 600 mm": (_slices_of_600mm, ("voxel axis 3 a length of 600 mm", "500 mm")),
    "zero column in the sform": (_zero_sform_column, ("length of 0 mm", "singular")),
    "coplanar sform axes": (_coplanar_sform, ("coplanar", "singular")),
    "NaN pixdim with a valid sform": (_nan_pixdim_with_sform, ("pixdim[3] is nan",)),
    "inf pixdim with a valid sform": (_inf_pixdim_with_sform, ("pixdim[1] is inf",)),
    "NaN quaternion": (_nan_quaternion, ("quatern_b", "nan")),
    "gzip CRC damaged": (_gzip_crc, ("corrupt gzip stream", "checksum", "copy")),
    "scl_inter NaN with a slope": (
        _raw_patch("inter_nan.nii.gz", 112, "<ff", 2.0, float("nan")),
        ("scl_inter is nan", "scaling is corrupt"),
    ),
}


# ------------------------------------------------------------- loaded with a warning
# name -> (builder(folder) -> (path, expected file-order data), words of the warning or ())


def _qs_shift(mm: float) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def build(folder: Path) -> tuple[Path, np.ndarray]:
        d = phantom()
        hdr = raw_header(d)
        srow = np.array(hdr["srow_x"], dtype=float)
        srow[3] += mm
        hdr["srow_x"] = srow
        return write(folder / f"qs_{mm:g}mm.nii.gz", raw_nifti(d, hdr)), d

    return build


def _no_codes(folder: Path):
    d = phantom()
    return write_image(folder / "nocodes.nii.gz", d, qform_code=0, sform_code=0), d


def _sheared(folder: Path):
    d = phantom()
    hdr = raw_header(d, qform_code=0, sform_code=2)
    hdr["srow_x"] = [0.8, 0.3, 0.0, -10.0]  # x depends on j: shear
    return write(folder / "sheared.nii.gz", raw_nifti(d, hdr)), d


def _pixdim_mismatch(folder: Path):
    d = phantom()
    hdr = raw_header(d, np.diag([1.0, 1.0, 1.0, 1.0]), qform_code=0, sform_code=2)
    hdr["pixdim"] = [1, 0.5, 0.5, 2.0, 1, 1, 1, 1]
    return write(folder / "pixdim.nii.gz", raw_nifti(d, hdr)), d


def _micron(folder: Path):
    d = phantom()
    hdr = raw_header(d)
    hdr.set_xyzt_units("micron", "sec")
    return write(folder / "micron.nii.gz", raw_nifti(d, hdr)), d


def _slope0(folder: Path):
    d = phantom()
    return write_image(folder / "slope0.nii.gz", d, scl_slope=0.0, scl_inter=5.0), d


def _slope(folder: Path):
    d = phantom()
    path = write_image(folder / "slope.nii.gz", d, scl_slope=2.5, scl_inter=-10.0)
    return path, d.astype(np.float64) * 2.5 - 10.0


def _nan_inf(folder: Path):
    d = phantom(dtype=np.float32)
    d[0, 0, 0], d[1, 2, 3], d[6, 5, 4] = np.nan, np.inf, -np.inf
    return write_image(folder / "mtr.nii.gz", d), d


def _quaternion(folder: Path):
    """SCT #3703: b²+c²+d² slightly above 1 with sform_code 0 (only the qform places it)."""
    d = phantom()
    hdr = raw_header(d, qform_code=1, sform_code=0)
    # 180 degrees about x (not oblique); float32(1.0000003)² = 1 + 7.2e-7
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = 1.0000003, 0.0, 0.0
    return write(folder / "quaternion.nii.gz", raw_nifti(d, hdr)), d


def _ni1(folder: Path):
    d = phantom()
    return write(folder / "ni1.nii", raw_nifti(d, raw_header(d, magic=b"ni1"))), d


def _big_endian(folder: Path):
    d = phantom()
    return write(folder / "big.nii.gz", raw_nifti(d, raw_header(d), endian=">")), d


def _nifti2(folder: Path):
    d = phantom()
    return write(folder / "two.nii.gz", raw_nifti(d, raw_header(d, cls=nib.Nifti2Header))), d


def _uppercase(folder: Path):
    d = phantom()
    return write_image(folder / "UPPER.NII.GZ", d), d


def _unicode(folder: Path):
    d = phantom()
    sub = folder / "dossier à espaces ü"
    sub.mkdir(exist_ok=True)
    return write_image(sub / "sujet T2w é.nii.gz", d), d


def _dtype(dtype) -> Callable[[Path], tuple[Path, np.ndarray]]:
    def build(folder: Path):
        d = phantom(dtype=np.int64)  # values 1..210, all different
        if np.dtype(dtype) == np.int8:
            d = d % 120
        d = d.astype(dtype)
        if np.dtype(dtype).kind in "if":
            d[0, 0, 0] = -5  # a negative value survives
        return write_image(folder / f"{np.dtype(dtype).name}.nii.gz", d), d

    return build


def _zero_pixdim_with_sform(folder: Path):
    """nibabel reads a zero pixdim as 1 (its documented fix); the sform places the voxels."""
    d = phantom()
    hdr = raw_header(d, qform_code=0)
    hdr["pixdim"][2] = 0.0
    return write(folder / "zero_pixdim.nii.gz", raw_nifti(d, hdr)), d


def _bad_quaternion_with_sform(folder: Path):
    """b²+c²+d² = 1.62: no rotation; the sform is valid and places the image."""
    d = phantom()
    hdr = raw_header(d)
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = 0.9, 0.9, 0.0
    return write(folder / "badquat_sform.nii.gz", raw_nifti(d, hdr)), d


def _tiny_voxels(folder: Path):
    d = phantom()
    return write_image(folder / "tiny.nii.gz", d, oblique_affine((5e-4, 5e-4, 5e-4))), d


def _big_voxels(folder: Path):
    d = phantom()
    return write_image(folder / "big.nii.gz", d, oblique_affine((0.8, 0.9, 150.0))), d


LOADED: dict[str, tuple[Callable[[Path], tuple[Path, np.ndarray]], tuple[str, ...]]] = {
    "q/s differ 1e-4 mm": (_qs_shift(1e-4), ()),
    "q/s differ 0.01 mm": (_qs_shift(0.01), ("qform and sform differ",)),
    "q/s differ 10 mm": (_qs_shift(10.0), ("qform and sform disagree", "10 mm")),
    "both codes 0": (_no_codes, ("no orientation",)),
    "sheared sform": (_sheared, ("shear",)),
    "pixdim != affine": (_pixdim_mismatch, ("voxel size differs",)),
    "xyzt units micron": (_micron, ("micron",)),
    "scl_slope 0": (_slope0, ("scl_slope is 0",)),
    "scl_slope 2.5 inter -10": (_slope, ()),
    "NaN and Inf voxels": (_nan_inf, ("nan or infinite",)),
    "almost-unit quaternion": (_quaternion, ()),
    "qform not a rotation, valid sform": (
        _bad_quaternion_with_sform,
        ("not a rotation", "using the sform"),
    ),
    "zero pixdim with a valid sform": (_zero_pixdim_with_sform, ("voxel size differs",)),
    "voxels of 0.5 µm": (_tiny_voxels, ("implausible voxel size", "0.0005")),
    "slices of 150 mm": (_big_voxels, ("implausible voxel size", "150")),
    "ni1 magic in a .nii": (_ni1, ()),
    "big-endian": (_big_endian, ()),
    "NIfTI-2": (_nifti2, ()),
    "uppercase .NII.GZ": (_uppercase, ()),
    "unicode and spaces": (_unicode, ()),
    **{
        f"dtype {np.dtype(t).name}": (_dtype(t), ())
        for t in (
            np.uint8,
            np.int8,
            np.int16,
            np.uint16,
            np.int32,
            np.uint32,
            np.int64,
            np.float32,
            np.float64,
        )
    },
}
