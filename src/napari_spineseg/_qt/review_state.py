"""The review state of one Labels layer: edits, QC table, autosave, tools, export.

The Review widget keeps one :class:`LayerReview` per result layer. It is the glue between
the napari layer (its data, its undo history, its paint events) and the Qt-free logic of
:mod:`napari_spineseg.correction`; it has no widgets, so scripts and tests use it directly
(``session.state``, ``session.select(layer)``).

Every change goes through ``layer.data_setitem`` (one napari undo step each); the edit
tracker compares the layer with the frozen model output; ``dirty`` means "changed since
the last save" and drives the unsaved-edits prompt.
"""

from __future__ import annotations

import getpass
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import correction
from ..correction.edits import EditSummary
from ..correction.qc import ClassSummary, EdgeSlabs, SliceTable
from ..correction.refine import SlabChange
from ..correction.tools import Edit
from ..errors import LabelsError, SaveRefusedError, SpinesegError

log = logging.getLogger(__name__)


def spineseg_meta(layer: Any) -> dict | None:
    """The layer's ``metadata["spineseg"]`` (None when it has none)."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("spineseg")
    return info if isinstance(info, dict) else None


def is_reviewable(layer: Any) -> bool:
    """A 3D Labels layer drawn on a NIfTI grid known to napari-spineseg."""
    from napari.layers import Labels

    info = spineseg_meta(layer)
    return (
        isinstance(layer, Labels)
        and info is not None
        and info.get("volume") is not None
        and np.ndim(layer.data) == 3
    )


class LayerReview:
    """Review state of one Labels layer (see the module docstring)."""

    def __init__(self, layer: Any, autosave_dir: str | Path | None = None) -> None:
        info = spineseg_meta(layer)
        if info is None or info.get("volume") is None:
            raise SpinesegError(
                f"layer {layer.name!r} has no napari-spineseg geometry: segment an image with "
                "the Segment widget, or open a mask with napari-spineseg"
            )
        self.layer = layer
        self.volume = info["volume"]
        self.classes: dict[int, str] = {int(k): str(v) for k, v in info.get("classes", {}).items()}
        if not self.classes:
            present = [int(v) for v in np.unique(layer.data) if v]
            self.classes = {v: f"label {v}" for v in present} or {1: "label 1"}
        self.suffix: str | None = info.get("suffix")
        self.run: dict | None = info.get("run")
        self.provenance: dict | None = info.get("provenance")
        self.probabilities: dict[int, np.ndarray] = dict(info.get("probabilities") or {})
        baseline = info.get("model_output")
        if baseline is None or np.shape(baseline) != np.shape(layer.data):
            baseline = np.array(layer.data, copy=True)
        self.tracker = correction.EditTracker(baseline)
        self.spacing = tuple(float(s) for s in layer.scale[-3:])
        self.slabs_refined: list[tuple[int, int]] = []
        self.slabs_trimmed: list[tuple[int, int]] = []
        self.tools_used: set[str] = set()
        self.dirty = False
        self.saved_paths: list[Path] = []
        self.edits: EditSummary = self.tracker.diff(layer.data)
        self.table: SliceTable = self._compute_table(None)
        self._pending: set[int] = set()
        self._pending_full = False
        self._autosave_lock = threading.Lock()
        #: weak reference to a callable(state) told about paint/reload events (the widget)
        self.listener: Any = None
        self.autosaver: correction.Autosaver | None = None
        src = info.get("source_path") or ""
        if src:
            try:
                self.autosaver = correction.Autosaver(
                    autosave_dir,
                    src,
                    self.volume.sha256,
                    str(layer.name),
                    every_edits=10,
                    every_seconds=30.0,
                )
            except (SaveRefusedError, OSError) as exc:
                log.warning("autosave disabled for %s: %s", layer.name, exc)

    # ---------------------------------------------------------------- tracking
    @property
    def source_path(self) -> str:
        return str(self.volume.path) if self.volume.path is not None else ""

    def note_paint(self, event: Any = None) -> None:
        """Record the slices a napari paint event touched (applied by :meth:`refresh`)."""
        self.dirty = True
        if self.autosaver is not None:
            self.autosaver.note_edit()
        atoms = getattr(event, "value", None) if event is not None else None
        if not atoms:
            self._pending_full = True
            return
        for atom in atoms:
            try:
                key = getattr(atom, "slice_key", None)
                if key is not None:
                    self._pending.update(range(*key[0].indices(self.tracker.shape[0])))
                else:
                    idx = np.asarray(atom[0][0])
                    if idx.size:
                        self._pending.update(np.unique(idx).tolist())
            except Exception:  # an atom format we do not know: recompute everything
                self._pending_full = True

    def on_paint_event(self, event: Any = None) -> None:
        """Connected to ``layer.events.paint``."""
        self.note_paint(event)
        self._tell()

    def on_reload_event(self, event: Any = None) -> None:
        """Connected to ``layer.events.reload`` / ``data`` (undo, redo, assignment)."""
        self.note_reload(event)
        self._tell()

    def _tell(self) -> None:
        fn = self.listener() if self.listener is not None else None
        if fn is not None:
            fn(self)

    def note_reload(self, event: Any = None) -> None:
        """Data changed without a paint event (undo/redo, assignment): full diff."""
        self._pending_full = True
        self.dirty = True

    def refresh(self, *, table: bool = True) -> EditSummary:
        """Apply pending hints: update the edit summary (and the QC table)."""
        data = self.layer.data
        if self._pending_full:
            self.edits = self.tracker.diff(data)
        elif self._pending:
            self.edits = self.tracker.diff(data, slices=sorted(self._pending))
        self._pending.clear()
        self._pending_full = False
        if table:
            self.table = self._compute_table(self.table)
        return self.edits

    def _compute_table(self, previous: SliceTable | None) -> SliceTable:
        return correction.slice_table(
            self.layer.data,
            self.spacing,
            self.classes,
            probabilities=self.probabilities or None,
            previous=previous,
        )

    def summary(self) -> dict[int, ClassSummary]:
        return correction.summary(self.layer.data, self.spacing, self.classes)

    def edge_slabs(self, n: int = 3) -> EdgeSlabs:
        return correction.edge_slices(self.table, n=n)

    # ---------------------------------------------------------------- edits
    def apply(self, edit: Edit, tool: str) -> int:
        """Apply a tool's edit as one napari undo step; returns the voxels changed."""
        if edit.n_voxels == 0:
            return 0
        self.layer.data_setitem(edit.indices, edit.values)
        self.tools_used.add(tool)
        self.dirty = True
        self._pending.update(np.unique(edit.indices[0]).tolist())
        self.refresh()
        return edit.n_voxels

    def interpolate(self, value: int, slice_a: int, slice_b: int) -> int:
        edit = correction.interpolate_between(
            self.layer.data, value, slice_a, slice_b, spacing=self.spacing[1:]
        )
        return self.apply(edit, "interpolate")

    def remove_small(self, value: int, min_voxels: int) -> int:
        return self.apply(
            correction.remove_small(self.layer.data, value, int(min_voxels)), "remove_small"
        )

    def fill_holes(self, value: int, mode: str = "2d") -> int:
        return self.apply(correction.fill_holes(self.layer.data, value, mode), "fill_holes")

    def trim(self, slab: tuple[int, int], values: Iterable[int] | None = None) -> int:
        """Clear display slices ``[start, stop)`` (one undo step)."""
        change = correction.trim_slab(self.layer.data, slab, values)
        n = self.apply(change.edit, "trim")
        self.slabs_trimmed.append((int(slab[0]), int(slab[1])))
        return n

    def merge(
        self, refined: np.ndarray, crop: tuple[int, int], slab: tuple[int, int], overwrite=False
    ) -> SlabChange:
        """The change a refine would make (not applied: preview it, then :meth:`apply_refine`)."""
        return correction.merge_slab(
            self.layer.data,
            self.tracker.model_output,
            refined,
            slab,
            keep_edits=not overwrite,
            crop=crop,
        )

    def apply_refine(
        self, change: SlabChange, refined: np.ndarray, crop: tuple[int, int], slab: tuple[int, int]
    ) -> int:
        """Apply a previewed refine (one undo step); the refined prediction becomes the
        model output of the slab, so the reviewer's kept voxels still count as edits."""
        start, stop = int(slab[0]), int(slab[1])
        n = self.apply(change.edit, "refine")
        new = np.asarray(refined)[start - crop[0] : stop - crop[0]].astype(
            self.tracker.model_output.dtype
        )
        self.tracker.rebase(start, new)
        self._pending_full = True
        self.refresh()
        self.slabs_refined.append((start, stop))
        self.tools_used.add("refine")
        return n

    def restore_labels(self, labels: np.ndarray) -> int:
        """Set the layer to ``labels`` (a recovery) as one undo step."""
        labels = np.asarray(labels)
        if labels.shape != self.layer.data.shape:
            raise LabelsError(
                f"recovered labels {labels.shape} do not fit layer {self.layer.name!r} "
                f"{self.layer.data.shape}"
            )
        changed = labels != self.layer.data
        edit = Edit(tuple(np.nonzero(changed)), labels[changed].astype(self.layer.data.dtype))
        return self.apply(edit, "recovered")

    # ---------------------------------------------------------------- export
    def default_path(self) -> Path:
        """Beside the source with the task's SCT file name (``<image><suffix>.nii.gz``)."""
        if self.volume.path is None:
            raise SaveRefusedError(
                f"{self.layer.name}: the image was not read from a file, so there is no default "
                "output name; choose a path (Save as...)"
            )
        suffix = self.suffix or "_seg"
        return Path(self.volume.path).parent / f"{self.volume.name}{suffix}.nii.gz"

    def correction_record(self, author: str | None = None) -> dict:
        self.refresh(table=False)
        return correction.correction_record(
            author or getpass.getuser(),
            classes=self.classes,
            edits=self.edits,
            slabs_refined=self.slabs_refined,
            slabs_trimmed=self.slabs_trimmed,
            tools_used=sorted(self.tools_used),
            reviewed_slices=self.table.reviewed_slices(),
            extra={"Layer": str(self.layer.name), "Task": (self.run or {}).get("task")},
        )

    def save(self, path: str | Path | None = None, author: str | None = None) -> Path:
        """Write the mask on the source grid (exact header, atomic, previous version kept)
        and its JSON sidecar: the model's ``GeneratedBy`` entry plus the correction record."""
        from .. import sidecar
        from ..io import save_labels

        target = Path(path) if path is not None else self.default_path()
        labels = self.volume.geometry.to_file(np.asarray(self.layer.data))
        written = Path(save_labels(labels, target, like=self.volume))
        existing: dict[str, Any] = {}
        if self.provenance:
            entry = sidecar.generated_by(self.provenance, output=self.suffix)
            entry["Classes"] = {str(k): v for k, v in self.classes.items()}
            existing = {"GeneratedBy": [entry]}
        record = self.correction_record(author)
        details = record["napari-spineseg"]
        touched = (
            details.get("VoxelsChangedTotal")
            or details["SlabsRefined"]
            or details["SlabsTrimmed"]
            or details["ReviewedSlices"]
        )
        data = correction.extend_sidecar(existing, record) if touched or not existing else existing
        sidecar.write(written, data)
        self.dirty = False
        self.saved_paths.append(written)
        if self.autosaver is not None:
            self.autosaver.discard()
        return written

    # ---------------------------------------------------------------- autosave
    def autosave_snapshot(self, force: bool = False) -> tuple[np.ndarray, dict] | None:
        """A copy of the labels to autosave (GUI thread), or None when nothing is due."""
        if self.autosaver is None or not self.dirty:
            return None
        if not (force or self.autosaver.due()):
            return None
        return np.array(self.layer.data, copy=True), {"suffix": self.suffix or ""}

    def autosave_write(self, labels: np.ndarray, meta: dict) -> Path | None:
        """Write a snapshot (any thread; serialised)."""
        if self.autosaver is None:
            return None
        with self._autosave_lock:
            return self.autosaver.save(labels, meta)

    def recoveries(self) -> list:
        """Recovery files of this layer's source and name that fit its shape."""
        if not self.source_path:
            return []
        cache = self.autosaver.cache_dir if self.autosaver is not None else None
        return [
            e
            for e in correction.find_recoveries(self.source_path, self.volume.sha256, cache)
            if e.layer_name == str(self.layer.name) and tuple(e.shape) == self.layer.data.shape
        ]
