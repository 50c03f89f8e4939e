"""Correction tools that propose edits instead of applying them.

Each tool returns an :class:`Edit` (the voxel indices and the new values) and never
touches its input, so the widget applies it with napari's history-aware
``layer.data_setitem(edit.indices, edit.values)`` (one Ctrl+Z step) and can preview or
count it first. Only voxels whose value actually changes are listed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import LabelsError


class Edit(NamedTuple):
    """Voxels to set: ``labels[indices] = values`` (indices as from ``np.nonzero``)."""

    indices: tuple[np.ndarray, ...]
    values: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.values.size)


def _no_edit(labels: np.ndarray) -> Edit:
    return Edit(tuple(np.zeros(0, np.intp) for _ in range(labels.ndim)), labels[:0, 0, 0].copy())


def apply_edit(labels: np.ndarray, edit: Edit) -> np.ndarray:
    """A copy of ``labels`` with ``edit`` applied (for headless use and tests)."""
    out = np.array(labels, copy=True)
    out[edit.indices] = edit.values
    return out


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise LabelsError(
            f"correction tools need a 3D integer label array, got {labels.dtype} {labels.shape}"
        )
    return labels


def _sdt(mask: np.ndarray, sampling) -> np.ndarray:
    """Signed distance (mm): negative inside, positive outside, |d| >= one pixel."""
    return ndimage.distance_transform_edt(~mask, sampling=sampling) - (
        ndimage.distance_transform_edt(mask, sampling=sampling)
    )


def _bbox(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``pad`` voxels (clipped), None if empty.

    The tools work inside it: outside, the class is absent, so components and holes are
    the same as on the full volume, at a fraction of the cost on a 320x320 grid.
    """
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        if idx.size == 0:
            return None
        box.append(slice(max(0, idx[0] - pad), min(mask.shape[axis], idx[-1] + 1 + pad)))
    return tuple(box)


def _shift(indices: tuple[np.ndarray, ...], box: tuple[slice, ...]) -> tuple[np.ndarray, ...]:
    return tuple(i + b.start for i, b in zip(indices, box))


def interpolate_between(
    labels: np.ndarray,
    value: int,
    slice_a: int,
    slice_b: int,
    *,
    spacing: tuple[float, float] | None = None,
    preserve_labels: bool = True,
) -> Edit:
    """Shape-based interpolation of class ``value`` between two corrected axial slices.

    On each slice strictly between ``slice_a`` and ``slice_b`` the class becomes the zero
    level set of the linear blend of the signed distance transforms of the two end
    slices (``d <= 0``): the outline morphs from one slice to the other, which a voxel-wise
    blend cannot do for shapes that move. Like every shape-based interpolation it
    shrinks the middle of a shape that moves by more than about its radius between the
    two slices: correct more slices in between then. ``spacing`` = in-plane voxel size (s1, s2) so
    distances are in mm on anisotropic pixels. Voxels of class ``value`` outside the
    interpolated shape become background; with ``preserve_labels`` (default) voxels of
    other classes are left alone, as napari's "preserve labels" brush does.
    """
    labels = _check(labels)
    n = labels.shape[0]
    a, b = sorted((int(slice_a), int(slice_b)))
    if a < 0 or b >= n:
        raise LabelsError(f"interpolation slices {slice_a}, {slice_b} are outside 0..{n - 1}")
    if b - a < 2:
        return _no_edit(labels)
    mask_a = labels[a] == value
    mask_b = labels[b] == value
    for s, m in ((a, mask_a), (b, mask_b)):
        if not m.any():
            raise LabelsError(
                f"slice {s} has no voxel of label {value}: paint the class on both end "
                "slices before interpolating"
            )
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    da, db = _sdt(mask_a, sampling), _sdt(mask_b, sampling)
    block = labels[a + 1 : b]
    new = block.copy()
    for k in range(a + 1, b):
        t = (k - a) / (b - a)
        inside = (1.0 - t) * da + t * db <= 0
        sl = new[k - a - 1]
        sl[(sl == value) & ~inside] = 0
        paint = inside & (sl == 0) if preserve_labels else inside
        sl[paint] = value
    changed = new != block
    zs, ys, xs = np.nonzero(changed)
    return Edit((zs + a + 1, ys, xs), new[changed])


def remove_small(
    labels: np.ndarray, value: int, min_voxels: int, *, connectivity: int = 3
) -> Edit:
    """Set to background the 3D components of class ``value`` smaller than ``min_voxels``.

    ``connectivity`` 1, 2 or 3 = face, edge or corner neighbours (3 = 26-connectivity,
    the default: a diagonal chain of voxels is one object).
    """
    labels = _check(labels)
    mask = labels == value
    box = _bbox(mask, pad=0)
    if box is None:
        return _no_edit(labels)
    structure = ndimage.generate_binary_structure(3, connectivity)
    lab, n = ndimage.label(mask[box], structure=structure)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < min_voxels
    small[0] = False
    drop = small[lab]
    return Edit(_shift(np.nonzero(drop), box), np.zeros(int(drop.sum()), labels.dtype))


def fill_holes(
    labels: np.ndarray, value: int, mode: str = "2d", *, preserve_labels: bool = True
) -> Edit:
    """Fill the holes of class ``value``.

    ``mode="2d"`` fills holes enclosed on each axial slice (what the reviewer sees),
    ``"3d"`` holes enclosed in 3D only (background not 6-connected to the border), and
    ``"both"`` the union. With ``preserve_labels`` (default) only background voxels are
    filled: a grey-matter "hole" in white matter stays grey matter.
    """
    labels = _check(labels)
    if mode not in ("2d", "3d", "both"):
        raise ValueError(f"fill_holes(mode={mode!r}): use '2d', '3d' or 'both'")
    full = labels == value
    box = _bbox(full, pad=1)  # the one-voxel ring keeps the outside connected
    if box is None:
        return _no_edit(labels)
    mask, labels = full[box], labels[box]
    holes = np.zeros_like(mask)
    if mode in ("2d", "both"):
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            holes[k] = ndimage.binary_fill_holes(mask[k])
    if mode in ("3d", "both"):
        holes |= ndimage.binary_fill_holes(mask)
    holes &= ~mask
    if preserve_labels:
        holes &= labels == 0
    return Edit(_shift(np.nonzero(holes), box), np.full(int(holes.sum()), value, labels.dtype))
