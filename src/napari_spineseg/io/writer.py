"""Writing label masks that every neuroimaging tool overlays exactly on their source.

The mask gets the *source's* header: qform, sform, their codes, pixdim, xyzt_units and
dim_info are copied byte for byte (never rebuilt from an affine, which moves the qform
by float32 noise and changes the codes), so whichever rule a tool uses to pick a
transform (FSL: sform, ITK: either), it picks the same one for image and mask.

Saving never destroys anything: the source image path is refused, a ``.nii``/``.nii.gz``
sibling (which ITK would open instead) is refused, the data go to a temporary file in the
target folder that is re-read and verified before an atomic ``os.replace`` (safe even
when the old mask is memory-mapped), and a replaced mask is kept under
``.spineseg-history/``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import io
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LabelsError, SaveRefusedError, SpinesegError
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
    free = shutil.disk_usage(folder).free
    if free < 2 * len(payload) + (1 << 20):
        raise SaveRefusedError(
            f"{target}: not enough free space in {folder} ({free} bytes free, "
            f"{len(payload)} needed); nothing was written, your edits are still in memory"
        )
    tmp = folder / f".{Path(base).name}.spineseg-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}"
    try:
        try:
            with open(tmp, "xb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise SaveRefusedError(
                f"{target}: cannot write in {folder} ({exc.strerror or exc}); nothing was "
                "written, your edits are still in memory"
            ) from None
        _verify(tmp, arr, source)
        if keep_history and target.exists():
            _archive(target)
        os.replace(tmp, target)
        _fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


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
        if not np.array_equal(img.header[name], src_hdr[name]):
            raise SpinesegError(f"internal error: header field {name} changed while saving")
    return img


def _verify(tmp: Path, arr: np.ndarray, source: Volume) -> None:
    """Re-read the temporary file and compare data and geometry before it replaces anything."""
    try:
        back = read_nifti(tmp, mmap=False)
        data = np.asanyarray(back.dataobj)
    except Exception as exc:
        raise SpinesegError(f"{tmp}: verification read failed ({exc}); nothing replaced") from None
    problems = []
    if data.shape != arr.shape or data.dtype != arr.dtype or not np.array_equal(data, arr):
        problems.append("voxel values")
    for name in GEOMETRY_FIELDS:
        if not np.array_equal(back.header[name], source.header[name]):
            problems.append(name)
    if not np.array_equal(back.header["pixdim"][:4], source.header["pixdim"][:4]):
        problems.append("pixdim")
    slope, inter = back.dataobj.slope, back.dataobj.inter
    if slope != 1 or inter != 0:
        problems.append("scaling")
    if problems:
        raise SpinesegError(
            f"saved mask failed verification ({', '.join(problems)}); nothing was replaced"
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
    if Path(other).exists():
        raise SaveRefusedError(
            f"{other} exists next to {target.name}: ITK-based tools (ITK-SNAP, Slicer, ANTs) "
            "open the .nii even when asked for the .nii.gz, so they would show the stale "
            "file. Rename or remove it first"
        )


def history_folder(target: Path) -> Path:
    base, _ = split_nifti_name(target.name)
    return target.parent / HISTORY_DIR / base


def _archive(target: Path) -> Path:
    """Copy the mask about to be replaced into the history folder (keep the last N)."""
    folder = history_folder(target)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()[:8]
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    _, ext = split_nifti_name(target)
    dest = folder / f"{stamp}_{digest}{ext}"
    shutil.copy2(target, dest)  # a copy: the target stays in place until os.replace
    versions = sorted(p for p in folder.iterdir() if p.is_file())
    for old in versions[:-HISTORY_KEEP]:
        with contextlib.suppress(OSError):
            old.unlink()
    return dest


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
