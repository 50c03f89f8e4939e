"""Checks on a NIfTI file *before* and *after* nibabel reads it.

nibabel is permissive and ITK-based tools are more so (they open truncated files as
zero-filled images, and files with a bad magic as ANALYZE with no orientation). A
segmentation tool must never show a silently wrong image, so every file goes through
:func:`sniff` (bytes on disk: compression, magic, dims, datatype/bitpix, vox_offset,
size, all before nibabel allocates anything), :func:`check_header` (fields nibabel parsed:
NaN/inf, units, quaternion, degenerate or implausible voxel axes) and
:func:`header_findings` (geometry that other tools would interpret differently).
Problems that make the image wrong or unusable raise
:class:`~napari_spineseg.errors.NiftiError` naming the file, the field and the fix;
problems that only make other tools disagree become warnings attached to the volume.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NiftiError

GZIP_MAGIC = b"\x1f\x8b"

#: NIfTI-1 datatype codes we refuse for images and masks, with the reason.
REFUSED_DATATYPES = {
    32: "complex64 data (take the magnitude first, e.g. `fslcomplex -realabs`)",
    1792: "complex128 data (take the magnitude first, e.g. `fslcomplex -realabs`)",
    2048: "complex256 data (take the magnitude first)",
    128: "RGB24 colour data (not a scalar MRI volume)",
    2304: "RGBA32 colour data (not a scalar MRI volume)",
    1536: "float128 data (not portable; convert to float32)",
}

#: Bits per voxel of each NIfTI datatype code nibabel can read (``bitpix`` must agree).
DATATYPE_BITS = {
    2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
    1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32,
}  # fmt: skip

#: q/s-form disagreement (mm) above which we warn, and above which we warn loudly.
QS_WARN_MM = 1e-3
QS_SEVERE_MM = 0.1

#: deflate never compresses better than 1032:1, so a ``.nii.gz`` of N bytes holds at most
#: this many times N bytes of voxels: a header claiming more is corrupt (checked before
#: anything is allocated, so a 2 EiB claim costs nothing).
MAX_DEFLATE_RATIO = 1032

#: Voxel sizes (mm) outside this range are implausible for MRI: loaded with a warning.
PLAUSIBLE_VOXEL_MM = (1e-3, 100.0)
#: Voxel sizes (mm) outside this range are refused: 1 nm, or larger than the field of
#: view of any scanner (50 cm). Models resample to their voxel size, so a grid of 10 m
#: voxels would take hours and tens of GB to segment instead of being refused.
POSSIBLE_VOXEL_MM = (1e-6, 500.0)
#: |det| / product of the column lengths below which the voxel axes are (nearly)
#: coplanar: the grid has no well-defined 3D geometry (a zero or repeated column).
MIN_AXIS_INDEPENDENCE = 1e-3

#: NIfTI xyzt_units codes (spatial: bits 0-2, time: bits 3-5).
SPATIAL_UNITS = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
TIME_UNITS = {0: "unknown", 8: "sec", 16: "msec", 24: "usec", 32: "hz", 40: "ppm", 48: "rads"}

#: Raw header fields that place the voxels; a NaN/inf in any of them means a corrupt header.
GEOMETRY_NUMBERS = (
    "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
    "srow_x", "srow_y", "srow_z",
)  # fmt: skip
#: How to fix a header by hand (shown in messages; nibabel is installed with the plugin).
FIX_WITH_NIBABEL = (
    "re-export the image from its source, or repair the header with nibabel "
    "(img = nib.load(path); img.header...; nib.save(img, new_path))"
)


@dataclass(frozen=True)
class Sniffed:
    """What the bytes on disk say, before any parsing by nibabel."""

    compressed: bool
    version: int  # 1 or 2
    endian: str  # "<" or ">"
    expected_bytes: int  # vox_offset + data size (uncompressed)
    #: raw (scl_slope, scl_inter): nibabel resets them to NaN in ``img.header`` on load
    scaling: tuple[float, float] | None = None


def split_nifti_name(path: str | os.PathLike) -> tuple[str, str]:
    """``/a/b/sub_T2w.nii.gz`` -> (``/a/b/sub_T2w``, ``.nii.gz``); case preserved."""
    s = str(path)
    low = s.lower()
    for ext in (".nii.gz", ".nii"):
        if low.endswith(ext):
            return s[: -len(ext)], s[-len(ext) :]
    return s, ""


def sibling_of(path: str | os.PathLike) -> Path:
    """``X.nii`` for ``X.nii.gz`` and vice versa (nifti_clib opens ``X.nii`` first)."""
    base, ext = split_nifti_name(path)
    return Path(base + (".nii" if ext.lower() == ".nii.gz" else ".nii.gz"))


def sniff(path: str | os.PathLike) -> Sniffed:
    """Check name, compression, magic and size of ``path``; raise NiftiError if unusable."""
    p = Path(path)
    if not p.exists():
        raise NiftiError(p, "no such file")
    if p.is_dir():
        raise NiftiError(p, "is a folder, not a NIfTI file")
    base, ext = split_nifti_name(p)
    low = p.name.lower()
    if low.endswith((".hdr", ".img", ".hdr.gz", ".img.gz")):
        raise NiftiError(
            p,
            "ANALYZE/NIfTI pair (.hdr/.img) is not supported: its orientation is not reliable "
            "across tools; convert it to a single .nii.gz (e.g. `fslchfiletype NIFTI_GZ`)",
        )
    if not ext:
        raise NiftiError(p, "not a .nii or .nii.gz file name")
    size = p.stat().st_size
    if size == 0:
        raise NiftiError(p, "empty file (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(2)
    compressed = head == GZIP_MAGIC
    if ext.lower() == ".nii.gz" and not compressed:
        raise NiftiError(p, "named .nii.gz but it is not gzip-compressed (rename it to .nii)")
    if ext.lower() == ".nii" and compressed:
        raise NiftiError(p, "is gzip-compressed but named .nii (rename it to .nii.gz)")
    try:
        if compressed:
            with gzip.open(p, "rb") as fh:
                hdr = fh.read(544)
        else:
            with open(p, "rb") as fh:
                hdr = fh.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiError(p, f"corrupt gzip stream ({exc})") from None
    version, endian = _magic(p, hdr)
    expected = _expected_bytes(p, hdr, version, endian)
    scaling = _raw_scaling(hdr, version, endian)
    if not compressed and size < expected:
        raise NiftiError(
            p, f"file is truncated: expected {expected} bytes, found {size} (incomplete copy?)"
        )
    if compressed and expected > MAX_DEFLATE_RATIO * size + 4096:
        raise NiftiError(
            p,
            f"the header claims {expected:,} bytes of image data but a {size:,}-byte .nii.gz "
            f"can hold at most {MAX_DEFLATE_RATIO * size:,}: its dimensions (dim) or "
            f"vox_offset are corrupt; {FIX_WITH_NIBABEL}",
        )
    if scaling is not None:
        slope, inter = scaling
        if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
            raise NiftiError(
                p,
                f"scl_slope is {slope:g} but scl_inter is {inter}: the intensity scaling is "
                "corrupt; " + FIX_WITH_NIBABEL,
            )
    return Sniffed(compressed, version, endian, expected, scaling)


def _magic(path: Path, hdr: bytes) -> tuple[int, str]:
    if len(hdr) < 348:
        raise NiftiError(path, f"file is truncated: {len(hdr)} bytes, a NIfTI header has 348")
    for endian in ("<", ">"):
        (sizeof,) = struct.unpack(endian + "i", hdr[:4])
        if sizeof in (348, 540):
            break
    else:
        raise NiftiError(
            path, "not a NIfTI file (header size field is neither 348 nor 540: corrupt?)"
        )
    if sizeof == 348:
        magic = hdr[344:348]
        if magic in (b"n+1\x00", b"ni1\x00"):
            return 1, endian
        raise NiftiError(
            path,
            f"bad NIfTI magic {magic!r}: an ANALYZE 7.5 or corrupt header. Refusing, because "
            "its orientation would be guessed (ITK would show it unflipped at the origin)",
        )
    magic = hdr[4:12]
    if magic[:3] in (b"n+2", b"ni2"):
        return 2, endian
    raise NiftiError(path, f"bad NIfTI-2 magic {magic!r}: corrupt header")


def _expected_bytes(path: Path, hdr: bytes, version: int, endian: str) -> int:
    """vox_offset + data size (uncompressed) from the raw header; NiftiError if impossible.

    Checked on the raw bytes because nibabel silently "fixes" some of these fields (a
    bitpix that disagrees with the datatype is overwritten) and allocates from others.
    """
    if version == 1:
        dims = struct.unpack(endian + "8h", hdr[40:56])
        datatype, bitpix = struct.unpack(endian + "hh", hdr[70:74])
        (vox_offset,) = struct.unpack(endian + "f", hdr[108:112])
        minimum_offset = 352
    else:
        dims = struct.unpack(endian + "8q", hdr[16:80])
        datatype, bitpix = struct.unpack(endian + "hh", hdr[12:16])
        (vox_offset,) = struct.unpack(endian + "q", hdr[168:176])
        minimum_offset = 544
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise NiftiError(
            path,
            f"dim[0] = {ndim}: the number of dimensions must be 1 to 7 (corrupt header); "
            + FIX_WITH_NIBABEL,
        )
    shape = dims[1 : ndim + 1]
    if min(shape) < 1:
        bad = next(i for i, d in enumerate(shape, start=1) if d < 1)
        raise NiftiError(
            path,
            f"dim[{bad}] = {shape[bad - 1]} in shape {tuple(shape)}: every dimension must be "
            "at least 1 (an empty or corrupt image)",
        )
    problem = datatype_problem(datatype)
    if problem:
        raise NiftiError(path, f"unsupported {problem}")
    bits = DATATYPE_BITS.get(datatype)
    if bits is None:
        raise NiftiError(
            path,
            f"datatype code {datatype} is not a NIfTI voxel type that can be read (corrupt "
            "header, or 1-bit/unknown data); " + FIX_WITH_NIBABEL,
        )
    if bitpix != bits:
        raise NiftiError(
            path,
            f"datatype {datatype} has {bits} bits per voxel but the header's bitpix says "
            f"{bitpix}: tools disagree on how to read such a file (corrupt or hand-edited "
            "header); " + FIX_WITH_NIBABEL,
        )
    if not (np.isfinite(vox_offset) and vox_offset >= minimum_offset):
        # nibabel reads from offset 0 when vox_offset is 0: the header bytes as voxels.
        raise NiftiError(
            path,
            f"vox_offset = {vox_offset}: the voxel data of a single-file NIfTI-{version} start "
            f"at byte {minimum_offset} or later (corrupt header); " + FIX_WITH_NIBABEL,
        )
    n = 1
    for d in shape:
        n *= int(d)
    return int(vox_offset) + n * bits // 8


def _raw_scaling(hdr: bytes, version: int, endian: str) -> tuple[float, float] | None:
    try:
        if version == 1:
            return struct.unpack(endian + "ff", hdr[112:120])
        return struct.unpack(endian + "dd", hdr[176:192])
    except struct.error:
        return None


def datatype_problem(datatype: int) -> str | None:
    """Why a NIfTI datatype code cannot be shown/segmented, or None if it can."""
    return REFUSED_DATATYPES.get(int(datatype))


def quaternion_norm2(hdr) -> float:
    """b² + c² + d² of the qform quaternion (above 1: no rotation has it)."""
    b, c, d = (float(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d"))
    return b * b + c * c + d * d


def qform_is_invalid(hdr, threshold: float) -> bool:
    """True when the qform is in use but its quaternion is not a rotation.

    ``threshold`` is the relaxed tolerance of the loader: b²+c²+d² up to 1 - threshold is
    accepted (scanners write 1 + 1e-7); a larger norm is garbage, not rounding.
    """
    return int(hdr["qform_code"]) > 0 and 1.0 - quaternion_norm2(hdr) < threshold


def check_header(path: Path, img, quaternion_threshold: float) -> list[str]:
    """Refuse headers whose geometry or units cannot be interpreted; return warnings.

    Runs on nibabel's header (after its own fixes: negative pixdim made positive, an
    invalid qfac set to 1). Refused: NaN/inf in the geometry fields or pixdim, unknown
    unit codes, a qform that is not a rotation with no sform to fall back on, voxel sizes
    no image can have, and degenerate voxel axes (singular affine). Warned: an invalid
    qform replaced by the sform, implausible voxel sizes.
    """
    hdr = img.header
    ndim = min(len(img.shape), 3)
    for name in GEOMETRY_NUMBERS:
        if not np.all(np.isfinite(np.asarray(hdr[name], dtype=np.float64))):
            raise NiftiError(
                path,
                f"header field {name} holds NaN or infinity: the orientation is corrupt; "
                + FIX_WITH_NIBABEL,
            )
    pixdim = np.asarray(hdr["pixdim"], dtype=np.float64)
    for k in range(1, 4):
        if not np.isfinite(pixdim[k]):
            raise NiftiError(
                path,
                f"pixdim[{k}] is {pixdim[k]}: the voxel size is undefined (ITK-based tools "
                "read it from pixdim and cannot open the file); " + FIX_WITH_NIBABEL,
            )
    units = int(hdr["xyzt_units"])
    if units & 0x07 not in SPATIAL_UNITS:
        raise NiftiError(
            path,
            f"xyzt_units = {units}: unknown spatial unit code {units & 0x07} (valid: 0 unknown, "
            "1 meter, 2 mm, 3 micron), so the voxel size cannot be interpreted; fix it with "
            "nibabel: img.header.set_xyzt_units('mm')",
        )
    if len(img.shape) > 3 and units & 0x38 not in TIME_UNITS:
        raise NiftiError(
            path,
            f"xyzt_units = {units}: unknown time unit code {units & 0x38} in a 4D series (valid: "
            "8 s, 16 ms, 24 µs, 32 Hz, 40 ppm, 48 rad/s); fix it with nibabel: "
            "img.header.set_xyzt_units('mm', 'sec')",
        )
    out: list[str] = []
    scode = int(hdr["sform_code"])
    if qform_is_invalid(hdr, quaternion_threshold):
        if scode <= 0:
            no_sform = " and there is no sform to use instead; "
            raise NiftiError(path, _bad_quaternion(hdr) + no_sform + FIX_WITH_NIBABEL)
        out.append(
            _bad_quaternion(hdr) + ": using the sform, as FSL and nibabel do; ITK-based tools "
            "(ITK-SNAP, Slicer, ANTs) may refuse this file or place it differently"
        )
    which = "sform" if scode > 0 else "qform" if int(hdr["qform_code"]) > 0 else "pixdim"
    lin = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    sizes = np.sqrt((lin**2).sum(axis=0))
    lo, hi = POSSIBLE_VOXEL_MM
    for k, size in enumerate(sizes, start=1):
        if not lo <= size <= hi:
            raise NiftiError(
                path,
                f"the {which} gives voxel axis {k} a length of {size:.3g} mm: degenerate "
                f"geometry (no image has voxels outside {lo:g} ... {hi:g} mm, and a zero "
                "column makes the grid singular); " + FIX_WITH_NIBABEL,
            )
    for k in range(1, ndim + 1):
        if not lo <= pixdim[k] <= hi:
            raise NiftiError(
                path,
                f"pixdim[{k}] = {pixdim[k]:.3g} mm: no image has voxels outside {lo:g} ... "
                f"{hi:g} mm, and models resample with it; " + FIX_WITH_NIBABEL,
            )
    independence = abs(np.linalg.det(lin)) / float(np.prod(sizes))
    if independence < MIN_AXIS_INDEPENDENCE:
        raise NiftiError(
            path,
            f"the {which}'s voxel axes are (nearly) coplanar (|det| / product of voxel sizes "
            f"= {independence:.2g}): singular, degenerate geometry with no 3D position for "
            "each voxel; " + FIX_WITH_NIBABEL,
        )
    lo, hi = PLAUSIBLE_VOXEL_MM
    shown = np.concatenate([sizes[:ndim], pixdim[1 : ndim + 1]])
    if np.any((shown < lo) | (shown > hi)):
        out.append(
            f"implausible voxel size ({', '.join(f'{v:.3g}' for v in sizes[:ndim])} mm, "
            f"outside {lo * 1000:g} µm ... {hi:g} mm): check the header's units and pixdim; "
            "models resample the image to their own voxel size"
        )
    return out


def _bad_quaternion(hdr) -> str:
    return (
        f"the qform quaternion is not a rotation (b²+c²+d² = {quaternion_norm2(hdr):.6g} > 1, "
        "corrupt qform)"
    )


def header_findings(
    img, raw_scaling: tuple[float, float] | None = None, qform_valid: bool = True
) -> list[str]:
    """Geometry warnings for a loaded NIfTI image (empty list = nothing to say).

    Each message says what other tools will do differently, so the user can decide
    whether to fix the header (``sct_image -set-sform-to-qform`` etc.) before working.
    ``raw_scaling`` is (scl_slope, scl_inter) as on disk (see :class:`Sniffed`).
    """
    hdr = img.header
    out: list[str] = []
    qcode = int(hdr["qform_code"])
    scode = int(hdr["sform_code"])
    if qcode == 0 and scode == 0:
        out.append(
            "no orientation in the header (qform_code = sform_code = 0): shown in voxel "
            "order; left/right cannot be trusted"
        )
    if qcode > 0 and scode > 0 and qform_valid:
        q = hdr.get_qform()
        s = hdr.get_sform()
        diff = _affine_distance_mm(q, s, img.shape[:3])
        if diff > QS_SEVERE_MM:
            out.append(
                f"qform and sform disagree by up to {diff:.3g} mm: FSL/nibabel (sform) and "
                "some ITK-based tools (qform) will place this image differently"
            )
        elif diff > QS_WARN_MM:
            out.append(f"qform and sform differ by {diff:.3g} mm (above SCT's 1e-3 tolerance)")
    if scode > 0:
        lin = hdr.get_sform()[:3, :3]
        cols = lin / np.maximum(np.linalg.norm(lin, axis=0), 1e-12)
        if np.abs(cols.T @ cols - np.eye(3)).max() > 1e-4:
            out.append(
                "the sform has shear (non-orthogonal axes): ITK-based tools (ITK-SNAP, ANTs, "
                "Slicer) will use the qform or refuse the file"
            )
    affine_zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=float)
    ndim = min(len(img.shape), 3)
    if ndim and not np.allclose(affine_zooms[:ndim], pixdim[:ndim], rtol=1e-4, atol=1e-6):
        out.append(
            "voxel size differs between pixdim "
            f"({', '.join(f'{v:.4g}' for v in pixdim[:ndim])} mm) and the affine "
            f"({', '.join(f'{v:.4g}' for v in affine_zooms[:ndim])} mm): ITK-SNAP/Slicer "
            "use pixdim, FSL/nibabel the affine"
        )
    unit = SPATIAL_UNITS.get(int(hdr["xyzt_units"]) & 0x07)
    if unit in ("meter", "micron"):
        out.append(
            f"spatial unit is {unit!r}: napari shows the stored numbers as mm, ITK-based "
            "tools rescale them"
        )
    slope, inter = raw_scaling if raw_scaling is not None else (hdr["scl_slope"], hdr["scl_inter"])
    if slope == 0 and inter not in (0,) and np.isfinite(inter):
        out.append(
            f"scl_slope is 0 with scl_inter {float(inter):g}: no scaling applied (NIfTI "
            "standard); ITK-based tools add the intercept anyway"
        )
    return out


def _affine_distance_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between the positions two affines give the corners of a grid."""
    shape = tuple(shape) + (1,) * (3 - len(shape))
    corners = np.array(np.meshgrid(*[[0, max(n - 1, 0)] for n in shape], indexing="ij"))
    corners = np.vstack([corners.reshape(3, -1), np.ones((1, 8))])
    return float(np.sqrt((((a - b) @ corners)[:3] ** 2).sum(axis=0)).max())
