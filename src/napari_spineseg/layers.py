"""Volumes and label maps -> napari layer data tuples (no napari import).

Why a separate, Qt-free module: the reader, the sample data, the widgets and notebook
users all need the *same* layer description of a NIfTI volume (display-order data, the
diagonal transform of :class:`~napari_spineseg.io.DisplayGeometry`, contrast, class names
and colours), and the writer needs to find the way back to the file. Keeping it free of
napari makes it testable without a display and keeps ``import napari_spineseg`` light.

Metadata contract (used by the writer and the widgets; keep these keys)::

    layer.metadata["spineseg"] = {
        "volume": Volume,        # the grid the layer is drawn on (header, geometry, path)
        "source_path": str,      # "" when the volume is in memory (phantom)
        "role": "image" | "labels",
        "classes": {value: name},
        "warnings": [str, ...],  # geometry findings of the reader
    }
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import LabelsError, SpinesegError
from .io import Volume

#: Colours for class values without an explicit colour (value 1, 2, ... in turn).
DEFAULT_PALETTE: tuple[tuple[float, float, float, float], ...] = (
    (1.00, 0.20, 0.20, 1.0),  # red
    (0.20, 0.55, 1.00, 1.0),  # blue
    (1.00, 0.85, 0.10, 1.0),  # yellow
    (0.20, 0.85, 0.30, 1.0),  # green
    (0.85, 0.30, 1.00, 1.0),  # violet
    (1.00, 0.55, 0.10, 1.0),  # orange
    (0.10, 0.90, 0.90, 1.0),  # cyan
    (1.00, 0.45, 0.75, 1.0),  # pink
)
#: Colour of painted values that have no class (visible, unlike napari's transparent default).
UNLISTED_COLOR = (1.0, 1.0, 1.0, 1.0)

#: Above this many voxels, contrast limits come from a strided sample (huge memmaps).
CONTRAST_SAMPLE = 4_000_000
#: Display window of images: these percentiles of the finite voxels (a robust range, as
#: MRI viewers use, so that a few bright voxels do not make the scan look dim).
CONTRAST_PERCENTILES = (0.5, 99.5)

_TIME_UNIT_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}

LayerDataTuple = tuple[Any, dict, str]


# ----------------------------------------------------------------------------- public
def volume_layer_data(
    volume: Volume,
    *,
    as_labels: bool | None = None,
    name: str | None = None,
    classes: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
) -> LayerDataTuple:
    """Describe ``volume`` as an Image or Labels layer in the display convention.

    ``as_labels=None`` uses :meth:`Volume.looks_like_labels`. Image data are a view of
    the volume (no copy, memory-mapped files stay on disk); label data are an integer
    copy, because napari paints into it and cannot paint values above 255 into uint8.
    """
    if as_labels is None:
        as_labels = volume.looks_like_labels()
    if as_labels and classes is None and volume.path is not None:
        classes = classes_for_mask(volume.path)
    data = volume.display_data()
    kwargs = _spatial_kwargs(volume, leading=volume.is_4d)
    kwargs["name"] = name or volume.name
    meta = _metadata(volume, "labels" if as_labels else "image", classes or {})
    kwargs["metadata"] = {"spineseg": meta}
    if as_labels:
        labels = label_array(data, source=str(volume.path or volume.name))
        kwargs.update(_class_kwargs(classes, colors, labels))
        return labels, kwargs, "labels"
    # Sample the file-order array: for a memory-mapped .nii it is contiguous, so the
    # sample reads a few runs of pages instead of touching the whole file.
    kwargs["contrast_limits"] = robust_contrast_limits(volume.data)
    kwargs["colormap"] = "gray"
    return data, kwargs, "image"


def labels_layer_data_like(
    labels_display: np.ndarray,
    image_volume: Volume,
    name: str,
    classes: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> LayerDataTuple:
    """A Labels layer for a result drawn on ``image_volume``'s grid (display order).

    The transform is the image's spatial one (a 3D result on a 4D series overlays every
    volume); the metadata points at the image, so saving writes on the image's grid.
    """
    geometry = image_volume.geometry
    labels = label_array(labels_display, source=name)
    if tuple(labels.shape[-3:]) != tuple(geometry.display_shape) or labels.ndim not in (3, 4):
        raise LabelsError(
            f"{name}: labels have shape {labels.shape} but the image "
            f"{image_volume.name} is {geometry.display_shape} in display order"
        )
    kwargs = _spatial_kwargs(image_volume, leading=labels.ndim == 4)
    kwargs["name"] = name
    meta = _metadata(image_volume, "labels", classes or {})
    meta.update(extra_meta or {})
    kwargs["metadata"] = {"spineseg": meta}
    kwargs.update(_class_kwargs(classes, colors, labels))
    return labels, kwargs, "labels"


def label_array(data: np.ndarray, source: str = "labels") -> np.ndarray:
    """A paintable integer copy: uint8 when values fit in 0..255, else int32.

    Float data are accepted only when every value is an integer (e.g. a mask saved as
    float32 by another tool); anything else raises :class:`LabelsError`.
    """
    arr = np.asanyarray(data)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        sample = _strided(arr, CONTRAST_SAMPLE)
        if not (np.isfinite(sample).all() and np.array_equal(sample, np.round(sample))):
            raise LabelsError(
                f"{source}: values are not integers (a probability map?); open it as an "
                "image, or threshold it before using it as labels"
            )
    elif arr.dtype.kind not in "iu":
        raise LabelsError(f"{source}: labels must be integers, not {arr.dtype}")
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind == "f" and (lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max):
        raise LabelsError(f"{source}: label values {lo:g}..{hi:g} do not fit in int32")
    dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int32
    return np.ascontiguousarray(arr, dtype=dtype)


def finite_contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite voxels; a strided sample for very large arrays.

    napari computes limits from all values, so one NaN or Inf gives a black or broken
    display; MRI files with NaN outside the brain/cord mask are common.
    """
    sample = _strided(np.asanyarray(data), CONTRAST_SAMPLE)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi)


def robust_contrast_limits(
    data: np.ndarray, percentiles: tuple[float, float] = CONTRAST_PERCENTILES
) -> tuple[float, float]:
    """The display window: ``percentiles`` of the finite voxels (a strided sample for
    very large arrays); the full finite range when that window is empty (binary or
    constant images). napari's contrast slider starts on this window; its right-click
    menu widens it to the full range."""
    sample = _strided(np.asanyarray(data), CONTRAST_SAMPLE)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        return finite_contrast_limits(sample)
    return (lo, hi)


def class_colormap(
    classes: Mapping[int, str] | None, colors: Mapping[int, Any] | None = None
) -> dict:
    """A ``{value: rgba}`` dict napari turns into a DirectLabelColormap.

    Values named in ``classes`` without a colour take :data:`DEFAULT_PALETTE` in turn;
    0 is transparent; ``None`` (every other value, e.g. one painted by hand) is white.
    """
    values = sorted({int(v) for v in (classes or {})} | {int(v) for v in (colors or {})})
    cmap: dict = {None: UNLISTED_COLOR, 0: (0.0, 0.0, 0.0, 0.0)}
    free = iter(DEFAULT_PALETTE * (1 + len(values) // len(DEFAULT_PALETTE)))
    for value in values:
        if value == 0:
            continue
        if colors and value in colors:
            cmap[value] = _rgba(colors[value])
        else:
            cmap[value] = next(free)
    return cmap


def find_volume_for(
    layer_or_state: Any,
    candidates: Iterable[Any],
    *,
    shape: tuple[int, ...] | None = None,
) -> Volume:
    """The spineseg Volume whose display grid a layer without metadata is drawn on.

    napari's "New labels" layer copies the selected image's scale and translate but not
    its metadata (napari >= 0.7), so the file geometry is recovered by matching shape,
    scale and translate against ``candidates`` (napari layers, layer states or layer
    data tuples carrying spineseg metadata). Image layers win over labels layers, then a
    layer whose name starts the new layer's name ("t2 - Labels" -> "t2").
    """
    own = _describe(layer_or_state)
    own_meta = own["metadata"].get("spineseg") if isinstance(own["metadata"], Mapping) else None
    if own_meta and own_meta.get("volume") is not None:
        return own_meta["volume"]
    shape = tuple(shape) if shape is not None else own["shape"]
    if shape is None:
        raise SpinesegError(f"layer {own['name']!r}: unknown data shape, cannot match it")
    scale = np.asarray(own["scale"], float)[-3:] if own["scale"] is not None else None
    translate = np.asarray(own["translate"], float)[-3:] if own["translate"] is not None else None
    found: list[tuple[int, Volume]] = []
    for cand in candidates:
        info = _describe(cand)
        meta = info["metadata"].get("spineseg") if isinstance(info["metadata"], Mapping) else None
        if not meta or meta.get("volume") is None:
            continue
        geometry = meta["volume"].geometry
        if len(shape) < 3 or tuple(shape[-3:]) != tuple(geometry.display_shape):
            continue
        if scale is not None and not np.allclose(scale, geometry.scale, atol=1e-6):
            continue
        if translate is not None and not np.allclose(translate, geometry.translate, atol=1e-4):
            continue
        rank = (0 if meta.get("role") == "image" else 2) + (
            0 if own["name"] and info["name"] and own["name"].startswith(info["name"]) else 1
        )
        found.append((rank, meta["volume"]))
    if not found:
        raise SpinesegError(
            f"layer {own['name']!r} (shape {tuple(shape)}) is not on the grid of any image "
            "opened with napari-spineseg, so its NIfTI geometry is unknown. Open the source "
            "image with napari-spineseg (viewer.open(path, plugin='napari-spineseg')), select "
            "it, create the labels layer from it (New labels) and draw on it, or save from "
            "Python with napari_spineseg.io.save_labels(labels, path, like=image_path)"
        )
    found.sort(key=lambda item: item[0])
    return found[0][1]


#: Masks written by SCT tools that are not ``sct_deepseg`` tasks (the tasks' own suffixes
#: are their ``OutputSpec.suffix`` in :mod:`napari_spineseg.catalog`): sct_deepseg_sc and
#: sct_propseg (``_seg``), sct_deepseg_gm (``_gmseg``), white matter (``_wmseg``).
SCT_TOOL_SUFFIXES: dict[str, dict[int, str]] = {
    "_seg": {1: "sc"},
    "_gmseg": {1: "gm"},
    "_wmseg": {1: "wm"},
}
#: What raters append to a mask's name: ``t2_seg-manual``, ``mt1_gmseg_goldstandard``.
_RATER_QUALIFIER = re.compile(r"[-_](manual|goldstandard|gold-standard|corr|corrected)$", re.I)


def sct_suffix_classes() -> dict[str, dict[int, str]]:
    """SCT file suffix -> class names of the mask it names, longest suffix first."""
    from .catalog import tasks

    table: dict[str, dict[int, str]] = dict(SCT_TOOL_SUFFIXES)
    for task in tasks():
        for out in task.outputs:
            table.setdefault(out.suffix, {int(v): str(n) for v, n in out.names.items()})
    return dict(sorted(table.items(), key=lambda item: -len(item[0])))


def classes_from_name(path: str | os.PathLike) -> tuple[str, dict[int, str]] | None:
    """(suffix, classes) from SCT's file naming, e.g. ``t2_fake_lesion_sc_seg.nii.gz``
    -> ("_sc_seg", {1: "sc"}), ``t2_seg-manual.nii.gz`` -> ("_seg", {1: "sc"});
    None when the name follows no SCT convention."""
    from .io.checks import split_nifti_name

    stem = os.path.basename(split_nifti_name(path)[0])
    stem = _RATER_QUALIFIER.sub("", stem)
    for suffix, classes in sct_suffix_classes().items():
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return suffix, dict(classes)
    return None


def classes_for_mask(path: str | os.PathLike) -> dict[int, str] | None:
    """Class names of a mask file: its JSON sidecar's ``Classes`` (what napari-spineseg
    and its API write), else SCT's suffix (:func:`classes_from_name`), else None."""
    from . import sidecar

    entries = sidecar.read(path).get("GeneratedBy")
    if isinstance(entries, dict):
        entries = [entries]
    for entry in reversed(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        details = entry.get("napari-spineseg")
        named = entry.get("Classes") or (
            details.get("Classes") if isinstance(details, dict) else None
        )
        if isinstance(named, dict) and named:
            try:
                return {int(k): str(v) for k, v in named.items()}
            except (TypeError, ValueError):
                continue
    found = classes_from_name(path)
    return found[1] if found else None


# ---------------------------------------------------------------------------- helpers
def _metadata(volume: Volume, role: str, classes: Mapping[int, str]) -> dict:
    return {
        "volume": volume,
        "source_path": str(volume.path) if volume.path is not None else "",
        "role": role,
        "classes": {int(k): str(v) for k, v in classes.items()},
        "warnings": list(volume.warnings),
    }


def _class_kwargs(
    classes: Mapping[int, str] | None, colors: Mapping[int, Any] | None, labels: np.ndarray
) -> dict:
    """``features`` (names shown on hover) and a direct colormap, when classes are known."""
    if not classes and not colors:
        return {}
    names = {0: "background", **{int(k): str(v) for k, v in (classes or {}).items()}}
    values = sorted(names)
    out: dict = {
        "features": {"index": np.asarray(values), "class": [names[v] for v in values]},
        "colormap": class_colormap(classes, colors),
    }
    return out


def _repetition_time(volume: Volume) -> float | None:
    """Seconds between volumes of a 4D series, when the header says so."""
    tr = float(volume.header["pixdim"][4])
    unit = volume.header.get_xyzt_units()[1]
    if np.isfinite(tr) and tr > 0 and unit in _TIME_UNIT_TO_S:
        return tr * _TIME_UNIT_TO_S[unit]
    return None


def _spatial_kwargs(volume: Volume, leading: bool) -> dict:
    """Transform kwargs; a leading volume axis is scaled by TR (s) when known, else 1."""
    if not leading:
        return volume.geometry.layer_kwargs()
    tr = _repetition_time(volume) if volume.is_4d else None
    kwargs = volume.geometry.layer_kwargs(leading=(tr or 1.0,))
    if tr:
        kwargs["axis_labels"] = ("time", *kwargs["axis_labels"][1:])
        kwargs["units"] = ("s", *kwargs["units"][1:])
    return kwargs


def _rgba(color: Any) -> tuple[float, float, float, float]:
    """Accept (r, g, b[, a]) in 0..1 or 0..255, or a colour name napari understands."""
    if isinstance(color, str):
        return color  # type: ignore[return-value]  # napari resolves names and hex
    arr = np.asarray(color, dtype=float).ravel()
    if arr.size not in (3, 4):
        raise ValueError(f"colour must have 3 or 4 components, got {color!r}")
    if arr.max() > 1.0:
        arr = arr / 255.0
    if arr.size == 3:
        arr = np.append(arr, 1.0)
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


def _strided(data: np.ndarray, max_items: int) -> np.ndarray:
    from .io.volume import _sample

    return _sample(data, max_items)


def _describe(obj: Any) -> dict:
    """name / metadata / scale / translate / shape of a layer, a state dict or a tuple."""
    if isinstance(obj, tuple) and len(obj) in (2, 3) and isinstance(obj[1], Mapping):
        data, state = obj[0], obj[1]
        return {
            "name": state.get("name"),
            "metadata": state.get("metadata") or {},
            "scale": state.get("scale"),
            "translate": state.get("translate"),
            "shape": tuple(np.shape(data)),
        }
    if isinstance(obj, Mapping):
        data = obj.get("data")
        return {
            "name": obj.get("name"),
            "metadata": obj.get("metadata") or {},
            "scale": obj.get("scale"),
            "translate": obj.get("translate"),
            "shape": tuple(np.shape(data)) if data is not None else None,
        }
    data = getattr(obj, "data", None)
    return {
        "name": getattr(obj, "name", None),
        "metadata": getattr(obj, "metadata", None) or {},
        "scale": getattr(obj, "scale", None),
        "translate": getattr(obj, "translate", None),
        "shape": tuple(np.shape(data)) if data is not None else None,
    }
