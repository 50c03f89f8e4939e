"""Crop-and-refine: re-run the model on a slab of slices and merge the result back.

Models often do worst at the ends of the field of view (the cord enters or leaves the
image). The reviewer picks a slab of axial slices ``[start, stop)``; the widget crops the
image to the slab plus a margin (:func:`slab_with_margin`: the network needs context
above and below), predicts, and :func:`merge_slab` writes the new labels into the slab
only, keeping every voxel the reviewer already corrected. :func:`trim_slab` clears a
slab instead (slices the mask should not cover). Both return a :class:`SlabChange` whose
``edit`` the widget applies with ``layer.data_setitem`` as one undo step, after showing
``change_mask`` as a preview.

Slabs are half-open ranges of display slices (axis 0, superior -> inferior).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import LabelsError
from .tools import Edit


@dataclass(frozen=True)
class SlabChange:
    """Result of a merge or trim: the new array, what changes, and the edit to apply.

    ``kept_edits`` counts the voxels inside the slab where the reviewer's value was kept
    over the new prediction (0 for a trim).
    """

    merged: np.ndarray
    change_mask: np.ndarray
    kept_edits: int

    @property
    def n_changed(self) -> int:
        return int(np.count_nonzero(self.change_mask))

    @property
    def edit(self) -> Edit:
        """Indices and values for ``layer.data_setitem`` (changed voxels only)."""
        return Edit(tuple(np.nonzero(self.change_mask)), self.merged[self.change_mask])


def _check_slab(slab: tuple[int, int], n_slices: int) -> tuple[int, int]:
    start, stop = (int(s) for s in slab)
    if not 0 <= start < stop <= n_slices:
        raise LabelsError(
            f"slab [{start}, {stop}) is not a non-empty range of slices inside 0..{n_slices}: "
            "pick a first slice above the last one, both inside the volume"
        )
    return start, stop


def slab_with_margin(start: int, stop: int, n_slices: int, margin: int) -> tuple[int, int]:
    """The range to crop for predicting slab ``[start, stop)``: ``margin`` slices of
    context on each side, clipped to the volume ``[0, n_slices)``."""
    start, stop = _check_slab((start, stop), n_slices)
    if margin < 0:
        raise LabelsError(f"slab margin must be >= 0 slices, got {margin}")
    return max(0, start - margin), min(n_slices, stop + margin)


def merge_slab(
    current: np.ndarray,
    model_output_original: np.ndarray,
    refined: np.ndarray,
    slab: tuple[int, int],
    keep_edits: bool = True,
    *,
    crop: tuple[int, int] | None = None,
) -> SlabChange:
    """Merge a refined prediction into the slab ``[start, stop)`` of ``current``.

    ``refined`` is the prediction for the cropped range ``crop`` (default: the slab
    itself) on the same in-plane grid. Inside the slab the labels become the refined ones,
    except, with ``keep_edits`` (default), voxels the reviewer changed
    (``current != model_output_original``), which keep the reviewer's value. Outside the
    slab nothing changes: the margin is context for the model, not part of the result.
    Inputs are never modified.
    """
    current = np.asarray(current)
    original = np.asarray(model_output_original)
    refined = np.asarray(refined)
    if current.ndim != 3 or original.shape != current.shape:
        raise LabelsError(
            f"current labels {current.shape} and model output {original.shape} must be the "
            "same 3D grid"
        )
    start, stop = _check_slab(slab, current.shape[0])
    c0, c1 = _check_slab(crop if crop is not None else (start, stop), current.shape[0])
    if not (c0 <= start and stop <= c1):
        raise LabelsError(
            f"the refined range [{c0}, {c1}) does not cover the slab [{start}, {stop})"
        )
    expected = (c1 - c0, *current.shape[1:])
    if refined.shape != expected:
        raise LabelsError(
            f"refined prediction has shape {refined.shape}, expected {expected} "
            f"(slices {c0}..{c1 - 1} on the labels' in-plane grid)"
        )
    predicted = refined[start - c0 : stop - c0]
    if predicted.size and np.issubdtype(current.dtype, np.integer):
        info = np.iinfo(current.dtype)
        if predicted.min() < info.min or predicted.max() > info.max:
            raise LabelsError(
                f"refined labels range {predicted.min()}..{predicted.max()} does not fit the "
                f"layer's {current.dtype}: convert the labels layer to a wider integer type"
            )
    merged = np.array(current, copy=True)
    new = predicted.astype(current.dtype, copy=True)
    kept = 0
    if keep_edits:
        mine = current[start:stop]
        edited = mine != original[start:stop]
        new[edited] = mine[edited]
        kept = int(np.count_nonzero(edited & (predicted != mine)))
    merged[start:stop] = new
    return SlabChange(merged, merged != current, kept)


def trim_slab(
    current: np.ndarray, slab: tuple[int, int], values: Iterable[int] | None = None
) -> SlabChange:
    """Clear the slices ``[start, stop)`` (only the classes in ``values`` if given)."""
    current = np.asarray(current)
    if current.ndim != 3:
        raise LabelsError(f"trim_slab needs a 3D label array, got shape {current.shape}")
    start, stop = _check_slab(slab, current.shape[0])
    merged = np.array(current, copy=True)
    block = merged[start:stop]
    if values is None:
        block[...] = 0
    else:
        block[np.isin(block, list(values))] = 0
    return SlabChange(merged, merged != current, 0)
