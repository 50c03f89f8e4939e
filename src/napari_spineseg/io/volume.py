"""Loading a NIfTI file into a :class:`Volume` that keeps everything needed to write back.

A Volume keeps the data in *file voxel order*, the nibabel image with its header and
affine untouched, and the path. Display order is a view computed by
:class:`~napari_spineseg.io.geometry.DisplayGeometry`; masks are written with the source
header (:func:`~napari_spineseg.io.writer.save_labels`), so nothing is re-derived.
Uncompressed ``.nii`` files are memory-mapped (opening a multi-GB file costs no RAM);
``.nii.gz`` has to be decompressed and is read once, eagerly, to the end of the stream
(so the gzip CRC is checked), so corruption surfaces at open time and never later inside
the viewer. Headers are checked before anything is allocated (:mod:`.checks`): a file
either loads with a finite, invertible geometry or is refused with a :class:`NiftiError`
that names the file, the field and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from ..errors import GeometryWarning, NiftiError
from . import checks
from .geometry import OBLIQUE_TOLERANCE_VOXEL, DisplayGeometry

log = logging.getLogger(__name__)

#: Relaxed quaternion check, as SCT does (#3703): scanners write b²+c²+d² = 1 + 1e-7.
QUATERNION_THRESHOLD = -1e-6

#: Above this many voxels, a memory-mapped file is sampled, never scanned, at open time.
LAZY_SCAN_ITEMS = 50_000_000

LABEL_NAME_HINTS = ("_seg", "_dseg", "_label-", "_mask", "_rootlets", "_totalspineseg", "_msk")


@dataclass
class Volume:
    """A NIfTI image as read from disk.

    ``nifti`` is the nibabel image (header untouched, use ``nifti.header`` for raw
    fields); ``data`` the array in file voxel order (lazy for ``.nii``); ``geometry``
    the display mapping; ``warnings`` what other tools may show differently.
    """

    path: Path | None
    nifti: nib.Nifti1Image
    geometry: DisplayGeometry
    warnings: list[str] = field(default_factory=list)
    _data: np.ndarray | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- basics
    @property
    def header(self):
        return self.nifti.header

    @property
    def affine(self) -> np.ndarray:
        return self.nifti.affine

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.nifti.shape)

    @property
    def ndim_spatial(self) -> int:
        return min(len(self.shape), 3)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[: self.ndim_spatial]

    @property
    def is_4d(self) -> bool:
        return len(self.shape) == 4

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms()[: self.ndim_spatial])

    @property
    def name(self) -> str:
        if self.path is None:
            return "volume"
        return checks.split_nifti_name(self.path.name)[0]

    @property
    def data(self) -> np.ndarray:
        """Voxels in file order, scaled per the NIfTI standard, native byte order."""
        if self._data is None:
            self._data = _read_data(self.path, self.nifti)
        return self._data

    def display_data(self) -> np.ndarray:
        """The data in display order (a view: no copy)."""
        return self.geometry.to_display(self.data)

    @cached_property
    def sha256(self) -> str:
        """Hash of the file bytes (identifies the source in sidecars and autosaves)."""
        if self.path is None:
            return ""
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    # ------------------------------------------------------------ inference
    def image3d(self, reduce: str = "mean") -> nib.Nifti1Image:
        """A 3D nibabel image on this grid, for models (2D files get a singleton axis).

        A 4D series is reduced over its 4th axis (``reduce="mean"`` as TotalSpineSeg
        does, or ``"first"``); the header (and so the geometry) is the source's.
        """
        data = self.data
        if self.is_4d:
            if reduce == "mean":
                data = np.asarray(data, dtype=np.float32).mean(axis=3)
            elif reduce == "first":
                data = np.asarray(data[..., 0])
            else:
                raise ValueError(f"reduce must be 'mean' or 'first', not {reduce!r}")
        data = np.asarray(data).reshape(self.geometry.file_shape)
        hdr = self.header.copy()
        hdr.set_data_shape(data.shape)
        hdr["pixdim"][1:4] = self._model_zooms()
        hdr.set_slope_inter(1, 0)
        if data.dtype.kind not in "iuf" or data.dtype.itemsize > 8:
            data = data.astype(np.float32)
        hdr.set_data_dtype(data.dtype)
        # Models (and the nibabel code they run) re-read this header with nibabel's strict
        # quaternion check: give them a clean qform (the saved masks use the source header).
        if checks.qform_is_invalid(self.header, QUATERNION_THRESHOLD):
            hdr["qform_code"] = 0  # not a rotation: the loader placed the image by its sform
        elif int(self.header["qform_code"]) > 0:
            hdr.set_qform(self.header.get_qform(), int(self.header["qform_code"]))
        # Pass the affine explicitly: with affine=None nibabel leaves ``img.affine`` unset.
        return type(self.nifti)(data, self.affine, header=hdr)

    def _model_zooms(self) -> np.ndarray:
        """pixdim[1:4] for models: the file's, except a 2D file's unusable slice thickness.

        ``load`` checks the in-plane sizes; the 3rd of a 2D file only matters to models,
        which get the affine's length of that axis when pixdim[3] is not a usable size.
        """
        zooms = np.asarray(self.header["pixdim"][1:4], dtype=np.float64).copy()
        lo, hi = checks.POSSIBLE_VOXEL_MM
        if self.ndim_spatial == 2 and not lo <= zooms[2] <= hi:
            zooms[2] = float(np.sqrt((np.asarray(self.affine)[:3, 2] ** 2).sum()))
        return zooms

    def looks_like_labels(self) -> bool:
        """Heuristic of the reader: should this file open as a Labels layer?

        True for NIFTI_INTENT_LABEL, a mask-like file name (``_seg``, ``_dseg``,
        ``_label-*``...), or integer-valued data with few distinct values.
        """
        if int(self.header["intent_code"]) == 1002:
            return True
        name = self.path.name.lower() if self.path is not None else ""
        if any(h in name for h in LABEL_NAME_HINTS) and self.integer_valued():
            return True
        return self.integer_valued() and _few_values(self.data)

    def integer_valued(self) -> bool:
        data = self.data
        if data.dtype.kind in "iub":
            return True
        if data.dtype.kind != "f":
            return False
        sample = _sample(data)
        return bool(np.all(np.isfinite(sample)) and np.all(sample == np.round(sample)))


def load(path: str | os.PathLike) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file; raise :class:`NiftiError` naming the file if unusable.

    Warnings about geometry (obliquity, q/s-form mismatch, odd units...) are emitted as
    :class:`GeometryWarning` and kept in ``Volume.warnings`` for the UI.
    """
    p = Path(path).expanduser()
    sniffed = checks.sniff(p)
    try:
        img = read_nifti(p, mmap="c" if not sniffed.compressed else False)
    except Exception as exc:  # nibabel raises many types for broken files
        if "w2 should be positive" in str(exc):  # qform-only, quaternion not a rotation
            _refuse_bad_quaternion(p)
        raise NiftiError(p, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(p, f"not a NIfTI image ({type(img).__name__})")
    img.header.quaternion_threshold = QUATERNION_THRESHOLD
    shape = img.shape
    if len(shape) > 4:
        raise NiftiError(
            p,
            f"{len(shape)}D data {shape} (a vector or warping field?): only 2D, 3D and 4D "
            "images can be shown and segmented",
        )
    if len(shape) < 2:
        raise NiftiError(
            p,
            f"1D data {shape}: only 2D, 3D and 4D images can be shown and segmented; if it "
            "holds an image, save it with its spatial dimensions (nibabel: nib.save("
            "nib.Nifti1Image(data.reshape(nx, ny, nz), affine), new_path))",
        )
    if len(shape) == 4 and shape[3] == 1:
        log.info("%s: 4D with a single volume, treated as 3D", p)
    if min(shape) < 1:
        raise NiftiError(p, f"empty dimension in shape {shape}")
    found = checks.check_header(p, img, QUATERNION_THRESHOLD)  # raises if unusable
    try:
        geometry = DisplayGeometry.from_affine(img.affine, shape[: min(len(shape), 3)])
    except ValueError as exc:
        raise NiftiError(p, str(exc)) from None
    qform_valid = not checks.qform_is_invalid(img.header, QUATERNION_THRESHOLD)
    found += checks.header_findings(img, raw_scaling=sniffed.scaling, qform_valid=qform_valid)
    sibling = checks.sibling_of(p)
    if sibling.exists():
        found.append(
            f"{sibling.name} exists next to this file: ITK-based tools (ITK-SNAP, Slicer, "
            "ANTs) open the .nii even when asked for the .nii.gz, so they may show the other one"
        )
    vox = min(geometry.scale)
    if geometry.max_displacement_mm > OBLIQUE_TOLERANCE_VOXEL * vox:
        found.append(
            f"oblique acquisition ({geometry.obliquity_deg:.2f} degrees from the scanner axes): "
            "shown on the nearest axis-aligned grid, so napari's world coordinates are off by "
            f"up to {geometry.max_displacement_mm:.2g} mm at the edges of the field of view; "
            "voxels and saved masks are exact"
        )
    volume = Volume(path=p, nifti=img, geometry=geometry, warnings=found)
    if sniffed.compressed:
        volume._data = _read_data(p, img)  # surfaces truncation now, not in the viewer
    data = volume.data
    if data.dtype.kind == "f":
        # A memory-mapped file is only sampled: scanning it all would read it into RAM.
        lazy = isinstance(data, np.memmap) and data.size > LAZY_SCAN_ITEMS
        bad = _count_nonfinite(_sample(data) if lazy else data)
        if bad:
            what = "some voxels (seen in a sample of this large file)" if lazy else f"{bad} voxels"
            found.append(
                f"{what} are NaN or infinite: contrast is set from finite values; "
                "models receive them as 0"
            )
    for msg in found:
        warnings.warn(f"{p.name}: {msg}", GeometryWarning, stacklevel=2)
    return volume


_RELAXED_LOCK = threading.Lock()


@contextlib.contextmanager
def _relaxed_quaternions(threshold: float = QUATERNION_THRESHOLD) -> Iterator[None]:
    """nibabel computes the affine *inside* ``nib.load``, with its strict class threshold."""
    with _RELAXED_LOCK:
        old = nib.Nifti1Header.quaternion_threshold
        nib.Nifti1Header.quaternion_threshold = threshold
        try:
            yield
        finally:
            nib.Nifti1Header.quaternion_threshold = old


def _refuse_bad_quaternion(path: Path) -> None:
    """Refuse a qform-only file whose quaternion nibabel cannot turn into a rotation.

    The refusal is :func:`checks.check_header`'s (it gives the quaternion's norm): the
    header is read once more with nibabel's quaternion check off, only to be checked.
    Should the check pass, the caller reports nibabel's own error.
    """
    with _relaxed_quaternions(threshold=-np.inf):
        img = nib.load(str(path), mmap=False)
    checks.check_header(path, img, QUATERNION_THRESHOLD)  # raises: qform-only, not a rotation


def read_nifti(path: str | os.PathLike, mmap: bool | str = False):
    """``nib.load`` that accepts scanner quaternions with b²+c²+d² slightly above 1.

    SCT relaxes the check the same way (#3703): such files come straight from scanners
    and every other tool reads them. The returned header keeps the relaxed threshold.
    """
    try:
        img = nib.load(str(path), mmap=mmap)
    except ValueError as exc:
        if "w2 should be positive" not in str(exc):
            raise
        with _relaxed_quaternions():
            img = nib.load(str(path), mmap=mmap)
            img.affine  # noqa: B018 - computed while the threshold is relaxed
    img.header.quaternion_threshold = QUATERNION_THRESHOLD
    return img


def from_nifti(img: nib.Nifti1Image, path: str | os.PathLike | None = None) -> Volume:
    """Wrap an in-memory nibabel image (e.g. a phantom) as a Volume."""
    shape = img.shape
    geometry = DisplayGeometry.from_affine(img.affine, shape[: min(len(shape), 3)])
    return Volume(path=Path(path) if path else None, nifti=img, geometry=geometry)


def _read_data(path: Path | None, img) -> np.ndarray:
    try:
        dataobj = img.dataobj
        slope = getattr(dataobj, "slope", 1.0)
        inter = getattr(dataobj, "inter", 0.0)
        scaled = not isinstance(dataobj, np.ndarray) and (slope != 1 or inter != 0)
        if path is not None and _is_gzip_proxy(dataobj, path):
            data = _read_gzip_array(path, dataobj)
            if scaled:  # as nibabel's get_fdata(dtype=float32) computes it
                data = apply_read_scaling(data, slope, inter).astype(np.float32, copy=False)
        elif scaled:
            # Scaled integers: float32 is enough and half the memory of nibabel's float64.
            data = img.get_fdata(dtype=np.float32)
        else:
            data = np.asanyarray(dataobj)
    except MemoryError:
        need = int(np.prod(img.shape)) * np.dtype(img.get_data_dtype()).itemsize
        raise NiftiError(
            path,
            f"not enough memory to read its {need / 2**30:.3g} GiB of voxels "
            f"(shape {img.shape}); use a machine with more memory, or crop the image first",
        ) from None
    except GzipChecksumError as exc:
        raise NiftiError(
            path,
            f"corrupt gzip stream: the voxels do not match the file's checksum ({exc}); "
            "the file was damaged in a copy or on disk: copy or export it again",
        ) from None
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        msg = str(exc)
        if isinstance(exc, EOFError) or "Expected" in msg or "end-of-stream" in msg:
            raise NiftiError(path, f"file is truncated or corrupt ({msg})") from None
        raise NiftiError(
            path, f"cannot read the voxel data ({type(exc).__name__}: {msg})"
        ) from None
    if data.dtype.names is None and not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))  # big-endian file: one copy
    if data.dtype.names is not None:
        raise NiftiError(path, "structured (RGB) data is not a scalar MRI volume")
    return data


#: Decompression chunk: bounds the transient copy Python's gzip makes per read.
GZIP_CHUNK = 4 << 20


def _is_gzip_proxy(dataobj, path: Path) -> bool:
    return (
        hasattr(dataobj, "offset")
        and getattr(dataobj, "order", "F") == "F"
        and path.name.lower().endswith(".gz")
    )


def _read_gzip_array(path: Path, dataobj) -> np.ndarray:
    """Decompress the voxels straight into their final array, in chunks.

    ``np.asanyarray(proxy)`` peaks at twice the array size: Python's
    ``GzipFile.readinto`` decompresses the whole request into a temporary ``bytes``
    before copying it. Reading in 4 MB chunks keeps the peak at the array + 4 MB.
    """
    import gzip

    dtype = np.dtype(dataobj.dtype)
    shape = tuple(int(s) for s in dataobj.shape)
    data = np.empty(shape, dtype=dtype, order="F")
    view = memoryview(data.reshape(-1, order="F")).cast("B")
    total = len(view)
    with gzip.open(path, "rb") as fh:
        fh.seek(int(dataobj.offset))
        pos = 0
        while pos < total:
            got = fh.readinto(view[pos : min(pos + GZIP_CHUNK, total)])
            if not got:
                raise EOFError(f"Expected {total} bytes of voxel data, got {pos}")
            pos += got
        _check_gzip_trailer(fh)
    return data


def _check_gzip_trailer(fh) -> None:
    """Read to the end of the stream: gzip checks its CRC and length only there.

    Without this, a damaged deflate block that still decodes would be shown as voxels.
    Data after the last gzip member (zero padding, other bytes) is ignored, as gunzip does.
    """
    import gzip

    try:
        while fh.read(GZIP_CHUNK):
            pass
    except gzip.BadGzipFile as exc:
        if "Not a gzipped file" not in str(exc):
            raise GzipChecksumError(str(exc)) from None


class GzipChecksumError(OSError):
    """The decompressed voxels do not match the gzip trailer (CRC or length)."""


def _sample(data: np.ndarray, max_items: int = 2_000_000) -> np.ndarray:
    """A subsample (whole array when small): cheap checks on huge memmaps."""
    n = data.size
    if n <= max_items:
        return np.asarray(data)
    if isinstance(data, np.memmap) and (data.flags.f_contiguous or data.flags.c_contiguous):
        # 16 contiguous runs spread over the file: a strided sample would touch every page.
        flat = data.reshape(-1, order="A")
        run = max_items // 16
        starts = np.linspace(0, n - run, 16).astype(np.int64)
        return np.concatenate([np.asarray(flat[s : s + run]) for s in starts])
    step = int(np.ceil((n / max_items) ** (1 / data.ndim)))
    return np.asarray(data[(slice(None, None, step),) * data.ndim])


def _few_values(data: np.ndarray, limit: int = 64) -> bool:
    # An image has many values: a small sample settles it without sorting millions.
    quick = _sample(data, max_items=65_536)
    if quick.dtype.kind == "f":
        quick = quick[np.isfinite(quick)]
    if np.unique(quick).size > limit:
        return False
    sample = _sample(data)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    return np.unique(sample).size <= limit


def _count_nonfinite(data: np.ndarray) -> int:
    # In blocks along the last axis: a memory-mapped multi-GB file is never copied.
    if data.size <= 50_000_000:
        return int(np.count_nonzero(~np.isfinite(data)))
    total = 0
    for i in range(data.shape[-1]):
        total += int(np.count_nonzero(~np.isfinite(data[..., i])))
    return total
