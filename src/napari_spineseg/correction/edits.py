"""What the reviewer changed: the current labels against the model's output.

The widget calls :meth:`EditTracker.diff` after every paint event to show "n voxels
edited on slices ..." and, at save time, to write the provenance record. The tracker
keeps per-slice, per-class counts and recomputes only the slices a paint event touched
(``bbox=`` / ``slices=`` hints): on a 64x320x320 uint8 volume a hinted call takes about
0.1-0.5 ms and a full comparison 2-20 ms (measured on a loaded 2-core CPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import LabelsError


@dataclass(frozen=True)
class EditSummary:
    """Net differences between the current labels and the model output.

    ``added[v]``: voxels that are class ``v`` now but were another value in the model
    output; ``removed[v]``: voxels the model gave to ``v`` that are now another value.
    Background (0) is not reported. ``slices`` lists the display slices with at least one
    changed voxel and ``per_slice`` their changed-voxel counts.
    """

    added: dict[int, int]
    removed: dict[int, int]
    changed_voxels: int
    slices: tuple[int, ...]
    per_slice: dict[int, int]

    @property
    def has_edits(self) -> bool:
        return self.changed_voxels > 0

    def net(self, value: int) -> int:
        """Voxel count of class ``value`` now minus in the model output."""
        return self.added.get(value, 0) - self.removed.get(value, 0)

    def by_class(self, classes: Mapping[int, str]) -> dict[str, dict[str, int]]:
        """``{name: {"added": n, "removed": m}}`` for the provenance record (unknown
        values are named by their number)."""
        values = sorted(set(self.added) | set(self.removed))
        return {
            classes.get(v, str(v)): {
                "added": self.added.get(v, 0),
                "removed": self.removed.get(v, 0),
            }
            for v in values
        }


class EditTracker:
    """Compares label arrays with a frozen copy of the model output.

    Assumes the current labels start equal to ``model_output``. Hints passed to
    :meth:`diff` must cover every change since the previous call; when in doubt call
    ``diff(current)`` without hints (full recomputation).
    """

    def __init__(self, model_output: np.ndarray) -> None:
        original = np.array(model_output, copy=True)
        if original.ndim != 3 or not np.issubdtype(original.dtype, np.integer):
            raise LabelsError(
                f"EditTracker needs a 3D integer label array, got {original.dtype} "
                f"{original.shape}"
            )
        if original.size and original.min() < 0:
            raise LabelsError("EditTracker: label values must not be negative")
        original.flags.writeable = False
        self._original = original
        n = original.shape[0]
        k = int(original.max()) + 1 if original.size else 1
        self._added = np.zeros((n, k), dtype=np.int64)
        self._removed = np.zeros((n, k), dtype=np.int64)
        self._changed = np.zeros(n, dtype=np.int64)
        self._stale: set[int] = set()

    @property
    def model_output(self) -> np.ndarray:
        """The baseline labels (read-only)."""
        return self._original

    @property
    def shape(self) -> tuple[int, ...]:
        return self._original.shape

    def rebase(self, start: int, new_values: np.ndarray) -> None:
        """Replace the baseline on slices ``start:start+len(new_values)`` (after a
        crop-and-refine: the refined prediction is the new model output there)."""
        new_values = np.asarray(new_values)
        stop = start + new_values.shape[0]
        if start < 0 or stop > self.shape[0] or new_values.shape[1:] != self.shape[1:]:
            raise LabelsError(
                f"rebase: {new_values.shape} at slice {start} does not fit {self.shape}"
            )
        original = self._original.copy()
        original[start:stop] = new_values
        original.flags.writeable = False
        self._original = original
        self._stale.update(range(start, stop))

    def _grow(self, k: int) -> None:
        if k > self._added.shape[1]:
            pad = ((0, 0), (0, k - self._added.shape[1]))
            self._added = np.pad(self._added, pad)
            self._removed = np.pad(self._removed, pad)

    def _recompute(self, current: np.ndarray, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        if rows.size == rows[-1] - rows[0] + 1:  # contiguous: a view, no copy
            sel = slice(int(rows[0]), int(rows[-1]) + 1)
        else:
            sel = rows
        cur = current[sel]
        orig = self._original[sel]
        # flatnonzero on the flat mask is several times faster than a 3D np.nonzero
        flat = np.flatnonzero(cur != orig)
        self._added[rows] = 0
        self._removed[rows] = 0
        self._changed[rows] = 0
        if flat.size == 0:
            return
        zs = flat // (cur.shape[1] * cur.shape[2])
        c = cur.reshape(-1)[flat].astype(np.int64)
        o = orig.reshape(-1)[flat].astype(np.int64)
        if c.min() < 0:
            raise LabelsError("EditTracker: label values must not be negative")
        k = max(self._added.shape[1], int(c.max()) + 1, int(o.max()) + 1)
        self._grow(k)
        m = rows.size
        self._added[rows] = np.bincount(zs * k + c, minlength=m * k).reshape(m, k)
        self._removed[rows] = np.bincount(zs * k + o, minlength=m * k).reshape(m, k)
        self._changed[rows] = np.bincount(zs, minlength=m)

    def diff(
        self,
        current: np.ndarray,
        *,
        bbox: tuple[slice, ...] | None = None,
        slices: Iterable[int] | None = None,
    ) -> EditSummary:
        """Edits in ``current`` against the model output.

        ``bbox`` (a tuple of slices, e.g. the bounding box of a paint stroke) or
        ``slices`` (display slice indices) restrict the recomputation to those axial
        slices; counts of the other slices are taken from the previous calls.
        """
        current = np.asarray(current)
        if current.shape != self.shape:
            raise LabelsError(
                f"EditTracker: labels of shape {current.shape} do not match the model "
                f"output {self.shape}"
            )
        n = self.shape[0]
        if bbox is None and slices is None:
            rows = np.arange(n)
        else:
            todo = set(self._stale)
            if bbox is not None:
                todo.update(range(*bbox[0].indices(n)))
            if slices is not None:
                todo.update(int(s) for s in slices)
            rows = np.array(sorted(todo), dtype=np.int64)
            if rows.size and (rows[0] < 0 or rows[-1] >= n):
                raise IndexError(f"slice index out of range 0..{n - 1}")
        self._recompute(current, rows)
        self._stale.clear()

        added = self._added.sum(axis=0)
        removed = self._removed.sum(axis=0)
        touched = np.flatnonzero(self._changed)
        return EditSummary(
            added={v: int(added[v]) for v in np.flatnonzero(added) if v != 0},
            removed={v: int(removed[v]) for v in np.flatnonzero(removed) if v != 0},
            changed_voxels=int(self._changed.sum()),
            slices=tuple(int(s) for s in touched),
            per_slice={int(s): int(self._changed[s]) for s in touched},
        )
