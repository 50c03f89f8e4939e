"""SCT's post-processing of segmentations, in SCT's order, on plain numpy arrays.

``sct_deepseg`` (``inference.segment_non_ivadomed``) applies, to each output file and in
this order: binarize with ``> -thr``, keep the largest connected object (``-largest 1``),
fill holes (``-fill-holes 1``, binary only, 3x3x3 structure) and remove objects smaller
than N voxels or N mm³ (``-remove-small``). Reproducing the same operations with the same
connectivity makes our masks identical to SCT's for the same prediction.

Connectivity (as in SCT / ivadomed): largest object uses scipy's default face
connectivity (6 in 3D); fill holes uses a full 3x3x3 structure; remove-small labels
objects with 18-connectivity (``generate_binary_structure(3, 2)``) and removes objects
with *fewer* than N voxels (N mm³ -> ``np.round(N / voxel volume)`` voxels, half to even).

Two ways to treat a multi-label file (rootlets, TotalSpineSeg):

* per class (:func:`postprocess_multilabel`, our default): each label value is its own
  mask, so ``-largest`` keeps the largest object *of every class*;
* SCT's (:func:`postprocess_foreground`, ``sct_compat``): SCT's functions see the label map
  as one foreground (every non-zero voxel), keep or drop whole connected objects with
  their values, and refuse ``-fill-holes`` on anything that is not 0/1.

``-remove-small`` command lines are read by :func:`resolve_remove_small`: wherever
``sct_deepseg`` accepts the tokens, the sizes are SCT's; where SCT refuses them (or, on
the 7T task, silently ignores them) the rules are in ``docs/tasks.md``.
"""

from __future__ import annotations

import math
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
        """Objects with fewer voxels than this are removed (for voxel size ``zooms``, mm).

        ``mm3``: ``np.round(value / voxel volume)`` as SCT and ivadomed (half to even:
        5 mm³ at 2 mm³ per voxel is 2 voxels). ``vox``: the value itself; a fractional
        count is rounded up (fewer than 10.5 voxels is fewer than 11).
        """
        if self.unit == "mm3":
            return int(np.round(self.value / float(np.prod([float(z) for z in zooms[:3]]))))
        return math.ceil(self.value)

    def __str__(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{v}{self.unit}"


def split_tokens(values: str | int | float | Sequence[str | int | float]) -> list[str]:
    """The values of a ``-remove-small`` setting, split on spaces and commas (a list of
    command-line tokens, or the widget's and the API's one-string form)."""
    if isinstance(values, str | int | float):
        values = [values]
    return [t for v in values for t in str(v).replace(",", " ").split()]


def parse_remove_small(values: str | int | float | Sequence[str] | None) -> list[MinSize]:
    """Parse ``-remove-small`` our friendly way: ``5mm3`` or ``10 20 10vox``.

    A unit written on any token applies to the tokens without one (SCT writes it once, on
    the last value); no unit means voxels; units are case-insensitive; decimals and commas
    are accepted. :func:`resolve_remove_small` decides when this reading is used.
    """
    if values is None:
        return []
    parsed: list[tuple[float, str | None]] = []
    for tok in split_tokens(values):
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


# ----------------------------------------------------------------------------- SCT's reading


@dataclass(frozen=True)
class SctReading:
    """What ``sct_deepseg`` itself makes of a ``-remove-small`` command line.

    ``status``: ``"applies"`` (``sizes`` are SCT's), ``"ignored"`` (SCT runs without the
    option, silently) or ``"refused"`` (SCT stops with an exception; ``reason`` says which).
    """

    status: str
    sizes: tuple[MinSize, ...] = ()
    reason: str = ""


def sct_reading(tokens: Sequence[str], *, ivadomed: bool, n_classes: int = 1) -> SctReading:
    """SCT 7.3's parsing of ``-remove-small``, literally.

    * nnU-Net / TotalSpineSeg tasks (``inference.segment_non_ivadomed``): the unit is
      ``mm3`` if the *last* token contains ``mm3``, else ``vox``; every token must pass
      ``int(token.replace(unit, ""))``; ``math.remove_small_objects`` then requires exactly
      one value (a 3D output has one "class"), applied to every output file.
    * the ivadomed 7T task (``ivadomed.inference.set_postprocessing_options``): unless the
      last token contains ``mm`` or ``vox`` the option is skipped without a word (the model
      JSON's 3 voxels stay); otherwise the same ``int()`` parsing, and
      ``Postprocessing.remove_small`` requires one value per class.
    """
    tokens = [str(t) for t in tokens]
    last = tokens[-1]
    if ivadomed and not ("mm" in last or "vox" in last):
        return SctReading(
            "ignored", reason="its last value has no unit (vox or mm3), so ivadomed skips it"
        )
    unit = "mm3" if "mm3" in last else "vox"
    values = []
    for tok in tokens:
        try:
            values.append(int(tok.replace(unit, "")))
        except ValueError:
            return SctReading(
                "refused",
                reason=f"int() cannot read {tok.replace(unit, '')!r} once the unit {unit!r} "
                "of the last value is removed",
            )
    expected = n_classes if ivadomed else 1
    if len(values) != expected:
        per = f"one per class ({n_classes})" if ivadomed else "one for all output files"
        return SctReading(
            "refused", reason=f"it takes exactly {expected} value(s), {per}; got {len(values)}"
        )
    return SctReading("applies", tuple(MinSize(v, unit) for v in values))


def resolve_remove_small(
    values: Sequence[str] | None,
    targets: Sequence[str],
    *,
    ivadomed: bool,
    sct_compat: bool = False,
    parsed: Sequence[MinSize] | None = None,
) -> tuple[list[MinSize] | None, list[str]]:
    """Minimum sizes, one per target, for a ``-remove-small`` command line; and notes.

    ``targets``: the output files (nnU-Net, TotalSpineSeg) or classes (7T) the values go
    to. Wherever ``sct_deepseg`` accepts the tokens the sizes are SCT's (``None`` where
    SCT ignores the option: the task's own default then applies). Where SCT refuses them,
    the friendly reading (:func:`parse_remove_small`: one value for all targets or one per
    target) is used and a note says so; with ``sct_compat`` a :class:`SpinesegError` says
    why SCT refuses them instead. ``parsed``: the values already read our way
    (``RunOptions.remove_small.sizes``), so they are not parsed again.
    """
    if not values:
        return None, []
    tokens = [str(v) for v in values]
    shown = " ".join(tokens)
    reading = sct_reading(tokens, ivadomed=ivadomed, n_classes=len(targets))
    if reading.status == "applies":
        sizes = list(reading.sizes)
        return (sizes * len(targets) if len(sizes) == 1 else sizes), []
    if reading.status == "ignored":
        return None, [
            f"-remove-small {shown} was ignored, as sct_deepseg ignores it ({reading.reason}); "
            f"the model's default applies. Write the unit on the last value (e.g. "
            f"`{shown}vox`) to use these sizes"
        ]
    if sct_compat:
        raise SpinesegError(
            f"-remove-small {shown}: sct_deepseg refuses this ({reading.reason}), so there is "
            "no SCT result to reproduce; leave out -sct-compat to use our reading (one value "
            f"for all, or one per {'class' if ivadomed else 'output file'}: "
            f"{', '.join(targets)})"
        )
    sizes = list(parsed) if parsed is not None else parse_remove_small(tokens)
    if len(sizes) not in (1, len(targets)):
        raise SpinesegError(
            f"-remove-small {shown}: give one value for all or one per "
            f"{'class' if ivadomed else 'output file'} ({len(targets)}: "
            f"{', '.join(targets)}); got {len(sizes)}"
        )
    sizes = sizes * len(targets) if len(sizes) == 1 else sizes
    read = ", ".join(f"{t} {s}" for t, s in zip(targets, sizes, strict=True))
    note = f"-remove-small {shown} read as {read} (sct_deepseg refuses it: {reading.reason})"
    return sizes, [note]


# ----------------------------------------------------------------------------- operations


def binarize(data: np.ndarray, threshold: float) -> np.ndarray:
    """``data > threshold`` as bool (SCT ``math.binarize``)."""
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


def postprocess_foreground(
    labels: np.ndarray,
    *,
    zooms: Sequence[float],
    largest: bool = False,
    fill: bool = False,
    min_size: MinSize | None = None,
    name: str = "the output",
) -> np.ndarray:
    """SCT's steps on one output file: every non-zero voxel is one foreground.

    Largest object -> fill holes -> remove small (``segment_non_ivadomed``'s order, after
    any ``-thr``). Removed objects are set to 0 and kept voxels keep their value, as
    ``deepseg_.postprocessing.keep_largest_object`` and ``math.remove_small_objects`` do.
    Filling holes needs a 0/1 map: SCT's ``fill_holes`` asserts it, here a
    :class:`SpinesegError` naming ``name`` does.
    """
    out = np.array(labels, copy=True)
    if largest:
        out[~keep_largest(out != 0)] = 0
    if fill:
        values = np.unique(out)
        if not np.isin(values, (0, 1)).all():
            raise SpinesegError(
                f"{name}: sct_deepseg cannot fill holes in a multi-label map (its fill_holes "
                f"asserts a binary input; values here: {values[values != 0][:8].tolist()}); "
                "add -thr to binarise first, as SCT's message says, or leave out -sct-compat "
                "to fill each class"
            )
        out = fill_holes(out != 0).astype(out.dtype)
    if min_size is not None:
        out[~remove_small(out != 0, min_size.voxels(zooms))] = 0
    return out


def postprocess_binary(
    mask: np.ndarray,
    *,
    zooms: Sequence[float],
    largest: bool = False,
    fill: bool = False,
    min_size: MinSize | None = None,
) -> np.ndarray:
    """Largest object -> fill holes -> remove small, on one binary mask (SCT's order)."""
    return postprocess_foreground(
        np.asarray(mask, dtype=bool), zooms=zooms, largest=largest, fill=fill, min_size=min_size
    )


def postprocess_multilabel(
    labels: np.ndarray,
    *,
    zooms: Sequence[float],
    largest: bool = False,
    fill: bool = False,
    min_sizes: dict[int, MinSize] | MinSize | None = None,
) -> np.ndarray:
    """The same steps per class of a multi-label map; filled holes only take background.

    Not SCT's rule (see :func:`postprocess_foreground`): on rootlets, ``-largest`` keeps the
    largest object of every spinal level here, but SCT keeps the one largest object of the
    whole map (every level not touching it is lost).
    """
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
