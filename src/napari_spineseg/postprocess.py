"""SCT's post-processing of segmentations, in SCT's order, on plain numpy arrays.

``sct_deepseg`` (``inference.segment_non_ivadomed``) applies, to each output and in this
order: binarize at ``-thr``, keep the largest connected object (``-largest 1``), fill holes
(``-fill-holes 1``, binary only, 3x3x3 structure) and remove objects smaller than N voxels
or N mm³ (``-remove-small``, per class). Reproducing the same operations with the same
connectivity makes our masks identical to SCT's for the same prediction.

Connectivity (as in SCT / ivadomed): largest object uses scipy's default face
connectivity (6 in 3D); fill holes uses a full 3x3x3 structure; remove-small labels
objects with 18-connectivity (``generate_binary_structure(3, 2)``) and removes objects
with *fewer* than N voxels (N mm³ -> ``round(N / voxel volume)`` voxels).
Multi-label maps are processed one class at a time (fill holes only fills background).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import SpinesegError

_SMALL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(vox|mm3)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MinSize:
    """A remove-small threshold: ``value`` voxels or mm³."""

    value: float
    unit: str = "vox"  # "vox" | "mm3"

    def voxels(self, zooms: Sequence[float]) -> int:
        """Minimum object size in voxels for this voxel size (mm)."""
        if self.unit == "mm3":
            return int(np.round(self.value / float(np.prod(zooms[:3]))))
        return int(round(self.value))

    def __str__(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{v}{self.unit}"


def parse_remove_small(values: str | Sequence[str] | None) -> list[MinSize]:
    """Parse SCT's ``-remove-small`` syntax: ``5mm3`` or ``10 20 10vox`` (one per class).

    A unit written on any token applies to the tokens without one (SCT writes it once, on
    the last value); no unit means voxels.
    """
    if values is None:
        return []
    if isinstance(values, str | int | float):
        values = str(values).replace(",", " ").split()
    tokens = [str(v) for v in values]
    parsed: list[tuple[float, str | None]] = []
    for tok in tokens:
        m = _SMALL.match(tok)
        if not m:
            raise SpinesegError(
                f"-remove-small: cannot read {tok!r}; write a number with an optional unit, "
                "e.g. 10vox or 5mm3 (one value per class, like SCT)"
            )
        parsed.append((float(m.group(1)), m.group(2).lower() if m.group(2) else None))
    units = {u for _, u in parsed if u}
    if len(units) > 1:
        raise SpinesegError("-remove-small: use one unit (vox or mm3) for all values")
    unit = units.pop() if units else "vox"
    return [MinSize(v, u or unit) for v, u in parsed]


def binarize(data: np.ndarray, threshold: float) -> np.ndarray:
    """``data > threshold`` as bool (SCT ``binarize``)."""
    return np.asarray(data) > threshold


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected object (face connectivity); ties keep the first label."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (scipy ``binary_fill_holes`` with a 3x3x3 structure, as SCT)."""
    mask = np.asarray(mask, dtype=bool)
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    return ndimage.binary_fill_holes(mask, structure=structure)


def remove_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Remove objects with fewer than ``min_voxels`` voxels (18-connectivity, as ivadomed)."""
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1:
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 2)
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def postprocess_binary(
    mask: np.ndarray,
    *,
    zooms: Sequence[float],
    largest: bool = False,
    fill: bool = False,
    min_size: MinSize | None = None,
) -> np.ndarray:
    """Largest object -> fill holes -> remove small, on one binary mask (SCT's order)."""
    out = np.asarray(mask, dtype=bool)
    if largest:
        out = keep_largest(out)
    if fill:
        out = fill_holes(out)
    if min_size is not None:
        out = remove_small(out, min_size.voxels(zooms))
    return out


def postprocess_multilabel(
    labels: np.ndarray,
    *,
    zooms: Sequence[float],
    largest: bool = False,
    fill: bool = False,
    min_sizes: dict[int, MinSize] | MinSize | None = None,
) -> np.ndarray:
    """The same steps per class of a multi-label map; filled holes only take background."""
    labels = np.asarray(labels)
    out = labels.copy()
    for value in (int(v) for v in np.unique(labels) if v != 0):
        size = min_sizes.get(value) if isinstance(min_sizes, dict) else min_sizes
        if not (largest or fill or size):
            continue
        cls = labels == value
        new = keep_largest(cls) if largest else cls
        if fill:
            new = fill_holes(new) & ((labels == 0) | cls)
        if size is not None:
            new = remove_small(new, size.voxels(zooms))
        out[cls & ~new] = 0
        out[new & ~cls] = value
    return out
