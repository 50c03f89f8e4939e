"""Writing label masks that every neuroimaging tool overlays exactly on their source.

The mask gets the *source's* header: qform, sform, their codes, pixdim, xyzt_units and
dim_info are copied byte for byte (never rebuilt from an affine, which moves the qform
by float32 noise and changes the codes), so whichever rule a tool uses to pick a
transform (FSL: sform, ITK: either), it picks the same one for image and mask.

Saving never destroys anything: the source image path is refused, a ``.nii``/``.nii.gz``
sibling (which ITK would open instead) is refused, the data go to a temporary file in the
target folder that is re-read and verified (bit for bit) before an atomic ``os.replace``
(safe even when the old mask is memory-mapped), and a replaced mask is kept under
``.spineseg-history/`` (atomically, once per distinct version). A save holds the
target's lock from start to end, so concurrent saves queue instead of losing a version,
and removes what killed saves left (see :mod:`napari_spineseg.io.atomic`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gzip
import hashlib
import io
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LabelsError, SaveRefusedError, SpinesegError
from . import atomic
from .checks import split_nifti_name
from .volume import QUATERNION_THRESHOLD, Volume, load, read_nifti

#: Header fields that must be byte-identical between a source and its mask.
GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
    "dim_info",
)
HISTORY_DIR = ".spineseg-history"
HISTORY_KEEP = 10
NIFTI_INTENT_LABEL = 1002
#: A kept version: ``<UTC time>_<first 8 hex of its SHA-256><ext>``.
_VERSION_NAME = re.compile(r"\d{8}T\d{12}Z_(?P<digest>[0-9a-f]{8})\.nii(?:\.gz)?", re.IGNORECASE)
_CORRUPTION_FIX = (
    "The disk or network share may be corrupting data: save to another disk, and keep "
    "your edits open meanwhile"
)


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every label is <= 255, int16 when <= 32767; refuse beyond or below 0.

    uint8 and int16 are read *and written* by every tool (FSL, AFNI, FreeSurfer, SPM,
    ITK); uint16/int64 are not (FSL and AFNI convert uint16, nobody takes int64).
    """
    if labels.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise LabelsError(f"labels must be >= 0 (found {lo})")
    if hi <= 255:
        return np.dtype(np.uint8)
    if hi <= 32767:
        return np.dtype(np.int16)
    raise LabelsError(
        f"label value {hi} does not fit in int16 (max 32767), the widest label type that "
        "FSL, AFNI and ITK all read and write"
    )


def as_label_array(labels, threshold: float | None = None) -> np.ndarray:
    """Validate ``labels`` as integer label values (never guess for float/bool data).

    A float or boolean array is refused unless ``threshold`` is given, in which case
    voxels ``>= threshold`` become 1 (ivadomed/SCT binarisation).
    """
    arr = np.asanyarray(labels)
    if threshold is not None:
        if arr.dtype.kind not in "biuf":
            raise LabelsError(f"cannot threshold data of type {arr.dtype}")
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0) >= float(threshold)
        return arr.astype(np.uint8)
    if arr.dtype.kind == "b":
        raise LabelsError(
            "boolean mask: pass threshold=0.5 to store it as 0/1, or convert it explicitly "
            "(mask.astype(np.uint8))"
        )
    if arr.dtype.kind == "f":
        raise LabelsError(
            f"floating-point mask ({arr.dtype}): refusing to guess. Pass threshold=0.5 to "
            "binarise a probability map, or cast integer labels explicitly "
            "(np.rint(mask).astype(np.int16))"
        )
    if arr.dtype.kind not in "iu":
        raise LabelsError(f"labels must be integers, not {arr.dtype}")
    return np.asarray(arr)


def save_labels(
    labels,
    path: str | os.PathLike,
    like: Volume | str | os.PathLike,
    *,
    threshold: float | None = None,
    keep_history: bool = True,
    descrip: str | None = None,
    replace_like: bool = False,
) -> Path:
    """Write ``labels`` (file voxel order) to ``path`` on the grid of ``like``.

    ``replace_like=True`` allows ``path`` to be ``like`` itself when ``like`` is a mask
    (an edited mask saved in place; the history keeps the previous version). An image is
    never overwritten, whatever the flag. Returns the written path. Raises
    :class:`LabelsError` for values that cannot be stored exactly and
    :class:`SaveRefusedError` when writing would lose or hide data.
    """
    source = like if isinstance(like, Volume) else load(like)
    target = Path(path).expanduser()
    base, ext = split_nifti_name(target)
    if not ext:
        raise SaveRefusedError(f"{target}: a mask must be saved as .nii or .nii.gz")
    target = target.absolute()
    atomic.check_target(target)  # first: a name too long makes every later check fail
    if not (replace_like and source.looks_like_labels()):
        _refuse_source(target, source)
    _refuse_sibling(target)

    arr = as_label_array(labels, threshold)
    spatial = source.spatial_shape
    if arr.shape != spatial:
        if arr.size == int(np.prod(spatial)) and arr.squeeze().shape == tuple(
            s for s in spatial if s != 1
        ):
            arr = arr.reshape(spatial)  # e.g. (x, y, 1) for a 2D source
        else:
            raise LabelsError(
                f"labels have shape {arr.shape} but {source.path} has spatial shape {spatial}: "
                "a mask must be on its image's grid"
            )
    dtype = label_dtype(arr)
    # Fortran order = NIfTI voxel order: no transpose copy here, in nibabel or in _verify.
    arr = np.asfortranarray(arr, dtype=dtype)

    img = _mask_image(arr, source, descrip)
    payload = img.to_bytes()
    compressed = ext.lower() == ".nii.gz"
    if compressed:
        # Deterministic gzip: no file name, mtime 0 -> same data, same bytes.
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=1) as gz:
            gz.write(payload)
        payload = buf.getvalue()

    folder = target.parent
    if not folder.is_dir():
        raise SaveRefusedError(f"{target}: folder {folder} does not exist")
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise atomic.refusal(exc, target) from None
    if free < 2 * len(payload) + (1 << 20):
        raise SaveRefusedError(
            f"{target}: not enough free space in {folder} ({free} bytes free, "
            f"{len(payload)} needed); nothing was written, your edits are still in memory"
        )
    with atomic.target_lock(target):
        _replace_verified(target, payload, arr, source, keep_history)
    return target


def _replace_verified(
    target: Path, payload: bytes, arr: np.ndarray, source: Volume, keep_history: bool
) -> None:
    """Write, verify, archive the previous version, swap in: the caller holds the lock.

    The order is what makes a kill at any moment harmless: the target is only ever
    replaced by a verified complete file, and only after the version it held is safely
    in the history; whatever a kill leaves (a temporary, an unpruned version) is
    removed by the next save.
    """
    folder = target.parent
    history = history_folder(target)
    atomic.remove_stale_temps(target)
    atomic.remove_stale_temps(target, history)
    tmp = atomic.temp_path(target)
    try:
        try:
            # A replaced mask keeps its permission bits (e.g. group-writable in a lab share).
            atomic.write_new(tmp, payload, atomic.permission_bits(target))
        except OSError as exc:
            raise atomic.refusal(exc, target) from None
        _verify(tmp, arr, source, target)
        if keep_history and target.exists():
            _archive(target, hashlib.sha256(payload).hexdigest())
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise atomic.refusal(exc, target, "replace") from None
        atomic.fsync_dir(folder)
    finally:
        atomic.discard(tmp)
    if keep_history:
        _prune(history)


def _same_bits(a, b) -> bool:
    """Equal bit patterns, whatever the byte order: NaN == NaN here, unlike ``==``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.newbyteorder("=") != b.dtype.newbyteorder("=") or a.shape != b.shape:
        return False
    a = a if a.dtype.isnative else a.byteswap().view(a.dtype.newbyteorder())
    b = b if b.dtype.isnative else b.byteswap().view(b.dtype.newbyteorder())
    return a.tobytes() == b.tobytes()


def _mask_image(arr: np.ndarray, source: Volume, descrip: str | None):
    src_hdr = source.header
    hdr = src_hdr.copy()
    if hdr.endianness != "<":
        hdr = hdr.as_byteswapped("<")
    hdr.quaternion_threshold = QUATERNION_THRESHOLD
    hdr.set_data_shape(arr.shape)
    # set_data_shape resets pixdim beyond the rank to 1: a 2D source keeps its slice
    # thickness (pixdim[3]), which its qform uses.
    hdr["pixdim"][1:4] = src_hdr["pixdim"][1:4]
    hdr.set_data_dtype(arr.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_intent(NIFTI_INTENT_LABEL, name="label")
    hdr["cal_min"] = 0
    hdr["cal_max"] = float(arr.max()) if arr.size else 0
    hdr["vox_offset"] = 0  # let nibabel place the data right after the header
    if descrip is not None:
        hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    hdr.extensions.clear()  # AFNI/DICOM extensions describe the source, not the mask
    cls = nib.Nifti2Image if isinstance(source.nifti, nib.Nifti2Image) else nib.Nifti1Image
    img = cls(arr, None, header=hdr)
    # nibabel leaves q/s-forms alone when affine is None; assert it did.
    for name in GEOMETRY_FIELDS:
        if not _same_bits(img.header[name], src_hdr[name]):
            raise SpinesegError(f"internal error: header field {name} changed while saving")
    return img


def _verify(tmp: Path, arr: np.ndarray, source: Volume, target: Path) -> None:
    """Re-read the temporary file and compare data and geometry before it replaces anything.

    Header fields are compared bit for bit: a NaN pixdim or quaternion that the source
    holds must be copied as is, and NaN != NaN would refuse every such mask.
    """
    try:
        back = read_nifti(tmp, mmap=False)
        data = np.asanyarray(back.dataobj)
        slope, inter = back.dataobj.slope, back.dataobj.inter
    except Exception as exc:  # nibabel/zlib raise many types for a corrupt file
        raise SaveRefusedError(
            f"{target}: the written file could not be read back ({type(exc).__name__}: "
            f"{exc}); nothing was replaced. {_CORRUPTION_FIX}"
        ) from None
    problems = []
    if data.shape != arr.shape or data.dtype != arr.dtype or not np.array_equal(data, arr):
        problems.append("voxel values")
    for name in GEOMETRY_FIELDS:
        if not _same_bits(back.header[name], source.header[name]):
            problems.append(name)
    # every pixdim of the grid is kept, also beyond the rank (a 2D source's slice thickness)
    if not _same_bits(back.header["pixdim"][:4], source.header["pixdim"][:4]):
        problems.append("pixdim")
    if slope != 1 or inter != 0:
        problems.append("scaling")
    if problems:
        raise SaveRefusedError(
            f"{target}: the written file failed verification ({', '.join(problems)}); "
            f"nothing was replaced. {_CORRUPTION_FIX}"
        )


def _refuse_source(target: Path, source: Volume) -> None:
    if source.path is None:
        return
    src = Path(source.path)
    same = False
    try:
        same = target.exists() and os.path.samefile(target, src)
    except OSError:
        same = False
    if same or target.resolve() == src.resolve():
        raise SaveRefusedError(
            f"{target} is the source image: refusing to overwrite it with a mask "
            "(choose another name, e.g. with a _seg suffix)"
        )


def _refuse_sibling(target: Path) -> None:
    base, ext = split_nifti_name(target)
    other = base + (".nii" if ext.lower() == ".nii.gz" else ".nii.gz")
    try:
        exists = Path(other).exists()
    except OSError:  # e.g. a name too long to exist on this file system
        exists = False
    if exists:
        raise SaveRefusedError(
            f"{other} exists next to {target.name}: ITK-based tools (ITK-SNAP, Slicer, ANTs) "
            "open the .nii even when asked for the .nii.gz, so they would show the stale "
            "file. Rename or remove it first"
        )


def history_folder(target: Path) -> Path:
    """Where the versions ``target`` replaced are kept (one folder per mask name)."""
    base, _ = split_nifti_name(target.name)
    return target.parent / HISTORY_DIR / base


def history_versions(target: Path) -> list[Path]:
    """The kept versions of ``target``, oldest first (temporaries are never versions)."""
    return _versions(history_folder(target))


def _versions(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in sorted(names) if _VERSION_NAME.fullmatch(n)]


def _kept_digest(version: Path) -> str:
    """The SHA-256 prefix a kept version's name records."""
    return _VERSION_NAME.fullmatch(version.name)["digest"]


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _archive(target: Path, new_digest: str) -> Path | None:
    """Keep the version ``target`` holds before it is replaced; None when already kept.

    Skipped when the new file has the same bytes (nothing is replaced) or the newest
    kept version has them (Save, Save all and save-on-close in a row keep one copy).
    Atomic: a hard link (no copy, no space needed) or, where links are not possible, a
    copy to a temporary renamed into place, so a kill or a full disk never leaves a
    truncated file among the versions.
    """
    folder = history_folder(target)
    _, ext = split_nifti_name(target)
    try:
        digest = _sha256(target)
        if digest == new_digest:
            return None
        kept = _versions(folder)
        if kept and _kept_digest(kept[-1]) == digest[:8] and _sha256(kept[-1]) == digest:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            dest = folder / f"{stamp}_{digest[:8]}{ext}"
            if not dest.exists():
                break
        _link_or_copy(target, dest)
        atomic.fsync_dir(folder)
    except OSError as exc:
        raise atomic.refusal(exc, target, "archive", folder) from None
    return dest


def _link_or_copy(target: Path, dest: Path) -> None:
    if not target.is_symlink():  # a link to a symlink's file would share a live inode
        try:
            os.link(target, dest)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            # EXDEV, EPERM (FAT, SMB, protected_hardlinks), EMLINK...: copy instead
    tmp = atomic.temp_path(target, dest.parent)
    try:
        with open(target, "rb") as src:
            atomic.write_new(tmp, src.read(), atomic.permission_bits(target))
        shutil.copystat(target, tmp)
        os.replace(tmp, dest)
    finally:
        atomic.discard(tmp)


def _prune(folder: Path) -> None:
    """Keep the newest :data:`HISTORY_KEEP` versions (best effort: a failure loses nothing)."""
    for old in _versions(folder)[:-HISTORY_KEEP]:
        with contextlib.suppress(OSError):
            old.unlink()
