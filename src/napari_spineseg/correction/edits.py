"""What the reviewer changed: the current labels against the model's output.

Edit statistics are *derived from the data*, never from a log of paint events: undo and
redo in napari replay history without a paint event, so a log would drift from the
truth. The widget calls :meth:`EditTracker.diff` with the slices that may have changed
(found from napari's undo history, see ``_qt/review_state.py``) to show "n voxels edited
on slices ..."; the saved record always uses a full comparison (``diff(current)``).
The tracker keeps per-slice, per-class counts and recomputes only the hinted slices: on a
64x320x320 uint8 volume a hinted call takes about 0.1-0.5 ms and a full comparison
1.5-20 ms (measured on a loaded 2-core CPU).

A crop-and-refine makes the refined prediction the model output of its slab
(:meth:`EditTracker.rebase`); undoing that refine in napari must give the old reference
back, so each rebase is kept and can be switched off and on again
(:meth:`EditTracker.set_rebase_active`).
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
        self._first_output = original
        self._original = original
        #: rebases in the order they were made: [start, values, active]
        self._rebases: list[list] = []
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

    def rebase(self, start: int, new_values: np.ndarray) -> int:
        """Replace the baseline on slices ``start:start+len(new_values)`` (after a
        crop-and-refine: the refined prediction is the new model output there).

        Returns a handle for :meth:`set_rebase_active` (undo/redo of the refine)."""
        new_values = np.array(new_values, dtype=self._original.dtype, copy=True)
        stop = start + new_values.shape[0]
        if start < 0 or stop > self.shape[0] or new_values.shape[1:] != self.shape[1:]:
            raise LabelsError(
                f"rebase: {new_values.shape} at slice {start} does not fit {self.shape}"
            )
        new_values.flags.writeable = False
        self._rebases.append([int(start), new_values, True])
        self._rebuild(int(start), stop)
        return len(self._rebases) - 1

    def set_rebase_active(self, handle: int, active: bool) -> bool:
        """Switch a rebase off (its refine was undone) or on again (redone).

        The baseline of its slab becomes the first model output with the rebases still
        active applied in order. Returns True when anything changed."""
        entry = self._rebases[handle]
        if entry[2] == bool(active):
            return False
        entry[2] = bool(active)
        self._rebuild(entry[0], entry[0] + entry[1].shape[0])
        return True

    def rebase_active(self, handle: int) -> bool:
        return bool(self._rebases[handle][2])

    def _rebuild(self, start: int, stop: int) -> None:
        original = self._original.copy()
        original[start:stop] = self._first_output[start:stop]
        for a, values, active in self._rebases:
            b = a + values.shape[0]
            lo, hi = max(a, start), min(b, stop)
            if active and lo < hi:
                original[lo:hi] = values[lo - a : hi - a]
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
