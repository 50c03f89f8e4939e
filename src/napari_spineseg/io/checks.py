"""Checks on a NIfTI file *before* and *after* nibabel reads it.

nibabel is permissive and ITK-based tools are more so (they open truncated files as
zero-filled images, and files with a bad magic as ANALYZE with no orientation). A
segmentation tool must never show a silently wrong image, so every file goes through
:func:`sniff` (bytes on disk: compression, magic, size) and :func:`header_findings`
(geometry that other tools would interpret differently). Problems that make the image
wrong raise :class:`~napari_spineseg.errors.NiftiError`; problems that only make other
tools disagree become warnings attached to the volume.
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

#: q/s-form disagreement (mm) above which we warn, and above which we warn loudly.
QS_WARN_MM = 1e-3
QS_SEVERE_MM = 0.1


@dataclass(frozen=True)
class Sniffed:
    """What the bytes on disk say, before any parsing by nibabel."""

    compressed: bool
    version: int  # 1 or 2
    endian: str  # "<" or ">"
    expected_bytes: int | None  # vox_offset + data size (uncompressed), when computable
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
    expected = _expected_bytes(hdr, version, endian)
    scaling = _raw_scaling(hdr, version, endian)
    if not compressed and expected is not None and size < expected:
        raise NiftiError(
            p, f"file is truncated: expected {expected} bytes, found {size} (incomplete copy?)"
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


def _expected_bytes(hdr: bytes, version: int, endian: str) -> int | None:
    try:
        if version == 1:
            dims = struct.unpack(endian + "8h", hdr[40:56])
            (datatype, bitpix) = struct.unpack(endian + "hh", hdr[70:74])
            (vox_offset,) = struct.unpack(endian + "f", hdr[108:112])
        else:
            dims = struct.unpack(endian + "8q", hdr[16:80])
            (datatype, bitpix) = struct.unpack(endian + "hh", hdr[12:16])
            (vox_offset,) = struct.unpack(endian + "q", hdr[168:176])
    except struct.error:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    n = 1
    for d in dims[1 : ndim + 1]:
        n *= max(int(d), 1)
    return int(vox_offset) + n * bitpix // 8


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


def header_findings(img, raw_scaling: tuple[float, float] | None = None) -> list[str]:
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
    if qcode > 0 and scode > 0:
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
    unit = hdr.get_xyzt_units()[0]
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
