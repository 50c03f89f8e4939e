"""The review state of one Labels layer: edits, QC table, autosave, tools, saving.

The Review widget keeps one :class:`LayerReview` per result layer. It is the glue between
the napari layer (its data, its undo history, its paint events) and the rest of
:mod:`napari_spineseg.correction`. It has no widgets and imports neither napari nor Qt
(the layer is duck-typed: ``data``, ``data_setitem``, ``scale``, ``metadata`` and napari's
undo/redo stacks), so scripts and tests use it on a plain ``napari.layers.Labels``
without a viewer (``session.state``, ``session.select(layer)``).

Every change goes through ``layer.data_setitem`` (one napari undo step each); the edit
tracker compares the layer with the frozen model output; ``dirty`` means "the labels
differ from the last saved (or loaded) version" and drives the unsaved-edits prompt.

Undo and redo: napari replays its history without a paint event (only a ``set_data``
refresh, and none at all for a hidden layer), so nothing here is a log of events. Each
:meth:`LayerReview.refresh` compares napari's undo/redo stacks with those seen at the
previous refresh: the atoms that entered or left the undo stack name the slices to
recompute, and every recorded fact (a tool used, a slab trimmed or refined, the refined
reference) is tied to the history atom that applied it, so it is withdrawn when that
atom is undone and restored when it is redone. Numbers in the saved record come from a
full comparison of the saved array with the model output, never from the hints.

Saving goes through :func:`napari_spineseg.saving.save_mask`, the function ``api.save``
uses. Where a layer's saves go (and whether replacing a file needs the reviewer's
consent) is the :attr:`LayerReview.save_target` hook: the cohort review points it at
the study's derivatives.
"""

from __future__ import annotations

import getpass
import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import correction
from ..errors import LabelsError, SaveRefusedError, SpinesegError
from .edits import EditSummary
from .qc import ClassSummary, EdgeSlabs, SliceTable, is_cord_name, is_lesion_name
from .refine import SlabChange
from .tools import Edit

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


def _history(layer: Any) -> tuple[dict[int, Any], dict[int, Any], bool] | None:
    """Atoms of napari's undo and redo stacks by id, and whether the undo stack is full.

    napari keeps them in ``Labels._undo_history``/``_redo_history`` (deques of history
    items, each a list of atoms); None when this napari has no such stacks."""
    undo = getattr(layer, "_undo_history", None)
    redo = getattr(layer, "_redo_history", None)
    if undo is None or redo is None:
        return None
    undo_atoms = {id(a): a for item in undo for a in item}
    redo_atoms = {id(a): a for item in redo for a in item}
    full = undo.maxlen is not None and len(undo) >= undo.maxlen
    return undo_atoms, redo_atoms, full


def _atom_slices(atom: Any, n: int) -> set[int] | None:
    """Display slices (axis 0) an undo atom changes; None when its format is unknown."""
    try:
        key = getattr(atom, "slice_key", None)
        if key is not None:  # napari's _MaskedPaintAtom: a bounding box
            return set(range(*key[0].indices(n)))
        idx = np.asarray(atom[0][0])  # data_setitem's (indices, before, after)
        return set(np.unique(idx).tolist()) if idx.size else set()
    except Exception:  # noqa: BLE001  an atom format we do not know: recompute all
        return None


def _napari_tool(atom: Any, layer: Any) -> str:
    """The name a napari edit is recorded under: eraser (label 0), fill, polygon or brush."""
    if int(getattr(atom, "new_value", 1)) == 0:
        return "napari eraser"
    mode = str(getattr(layer, "mode", "")).lower()
    return f"napari {mode}" if mode in ("fill", "polygon") else "napari brush"


def _slice_checksums(data: np.ndarray, rows: Iterable[int] | None = None) -> dict[int, int]:
    """CRC-32 of each axial slice (the 'changed since saved' test, ~1.5 ms per 5 MB)."""
    data = np.asarray(data)
    rows = range(data.shape[0]) if rows is None else rows
    return {int(z): zlib.crc32(np.ascontiguousarray(data[z])) for z in rows}


@dataclass
class Fact:
    """One recorded fact of the correction, live while the napari atom applying it is.

    ``kind``: "tool" (value: its name), "trimmed" or "refined" (value: the slab);
    ``atom``: the history atom itself (held, so its id is never reused by a new atom;
    None: nothing to undo, or gone from napari's history: the state is final);
    ``rebase``: the tracker's rebase handle of a refine."""

    kind: str
    value: Any
    atom: Any
    live: bool = True
    rebase: int | None = None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


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
        #: weak reference to the review state of the cord mask this lesion mask is checked
        #: against ("lesion outside cord"): SCT writes cord and lesion as separate files
        self.cord_partner: Any = None
        #: a mask opened from disk (not a Segment result): saved over itself by default,
        #: its sidecar (as loaded) extended with this session's record
        self.from_file = (
            self.run is None and info.get("role") == "labels" and self.volume.path is not None
        )
        self._loaded_sidecar: dict[str, Any] = {}
        if self.from_file:
            from .. import sidecar

            self._loaded_sidecar = sidecar.read(self.volume.path)
        self.probabilities: dict[int, np.ndarray] = dict(info.get("probabilities") or {})
        baseline = info.get("model_output")
        if baseline is None or np.shape(baseline) != np.shape(layer.data):
            baseline = np.array(layer.data, copy=True)
        self.tracker = correction.EditTracker(baseline)
        self.spacing = tuple(float(s) for s in layer.scale[-3:])
        self.facts: list[Fact] = []
        self.saved_paths: list[Path] = []
        self._seen = _history(layer)
        self._pending: set[int] = set()
        self._pending_full = False
        self._checksums = _slice_checksums(layer.data)
        self._saved_checksums = dict(self._checksums)
        self._force_dirty = False
        self.edits: EditSummary = self.tracker.diff(layer.data)
        # computed on the worker with the layer data; used once (stale after any edit)
        ready = info.pop("qc_table", None)
        fits = isinstance(ready, SliceTable) and ready.n_slices == self.tracker.shape[0]
        self.table: SliceTable = ready if fits else self._compute_table(None)
        #: the suffix of the cord output the worker's table checked lesions against
        self.table_cord_suffix: str | None = info.pop("qc_cord_suffix", None) if fits else None
        self._autosave_lock = threading.Lock()
        #: where this layer's saves go instead (None: :meth:`save` writes beside the
        #: source): a callable ``(path, author) -> written path``. The cohort review
        #: writes into the study's derivatives with its own record; such a save replaces
        #: the case's own mask without asking (its previous version is kept).
        self.save_handler: Callable[[str | Path | None, str | None], Path] | None = None
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

    @property
    def slabs_refined(self) -> list[tuple[int, int]]:
        """Refined slabs whose Apply is not undone."""
        return [f.value for f in self.facts if f.kind == "refined" and f.live]

    @property
    def slabs_trimmed(self) -> list[tuple[int, int]]:
        return [f.value for f in self.facts if f.kind == "trimmed" and f.live]

    @property
    def tools_used(self) -> set[str]:
        """Tools whose edits are in the labels now (an undone tool is not listed)."""
        return {f.value for f in self.facts if f.kind == "tool" and f.live}

    @property
    def dirty(self) -> bool:
        """The labels differ from the last saved (or loaded) version."""
        if self._pending_full or self._pending or self.history_moved():
            self.refresh(table=False)
        return self._force_dirty or self._checksums != self._saved_checksums

    @dirty.setter
    def dirty(self, value: bool) -> None:
        """``False``: the user chose to drop the changes (they are no longer 'unsaved')."""
        self._force_dirty = bool(value)
        if not value:
            # the labels as they are now become "saved": bring the checksums up to date first
            if self._pending_full or self._pending or self.history_moved():
                self.refresh(table=False)
            self._saved_checksums = dict(self._checksums)

    def note_paint(self, event: Any = None) -> None:
        """A napari paint event (a new history item): schedule its slices."""
        if self.autosaver is not None:
            self.autosaver.note_edit()
        self._pending_full = self._pending_full or self._seen is None

    def on_paint_event(self, event: Any = None) -> None:
        """Connected to ``layer.events.paint``."""
        self.note_paint(event)
        self._tell()

    def on_reload_event(self, event: Any = None) -> None:
        """Connected to ``layer.events.reload`` / ``data`` (assignment of a new array)."""
        self.note_reload(event)
        self._tell()

    def on_set_data_event(self, event: Any = None) -> None:
        """Connected to ``layer.events.set_data`` (napari's refresh after undo/redo, and
        after every slicing): tell the listener only when the history moved."""
        if self.history_moved():
            self._tell()

    def _tell(self) -> None:
        fn = self.listener() if self.listener is not None else None
        if fn is not None:
            fn(self)

    def note_reload(self, event: Any = None) -> None:
        """Data changed outside the undo history (assignment): full diff."""
        self._pending_full = True

    def history_moved(self) -> bool:
        """napari's undo/redo stacks differ from those seen at the last refresh."""
        now = _history(self.layer)
        if now is None or self._seen is None:
            return True
        return now[0].keys() != self._seen[0].keys() or now[1].keys() != self._seen[1].keys()

    def _sync_history(self) -> None:
        """Slices changed by atoms that entered or left the undo stack since the last
        refresh, and the live state of every fact (see the module docstring)."""
        now = _history(self.layer)
        before, self._seen = self._seen, now
        if now is None or before is None:
            self._pending_full = True
            return
        undo, redo, full = now
        self._note_napari_strokes(before[0])
        n = self.tracker.shape[0]
        for aid in undo.keys() ^ before[0].keys():
            rows = _atom_slices(undo.get(aid) or before[0].get(aid), n)
            if rows is None:
                self._pending_full = True
            else:
                self._pending |= rows
        for fact in self.facts:
            if fact.atom is None:
                continue
            aid = id(fact.atom)
            if aid in undo:
                live = True
            elif aid in redo:
                live = False
            else:  # gone from napari's history: the state is final
                # it left the undo stack without being undone: it fell off the bottom of
                # a full stack (permanent); otherwise it was undone and the redo stack
                # cleared by a new edit before we looked; gone from redo: undone for good
                live = full if aid in before[0] else fact.live if aid in before[1] else False
                fact.atom = None
            if live != fact.live:
                fact.live = live
                if fact.rebase is not None:
                    self.tracker.set_rebase_active(fact.rebase, live)

    def _note_napari_strokes(self, seen: dict[int, Any]) -> None:
        """A fact per napari brush stroke, fill or eraser stroke new on the undo stack.

        napari records them as mask atoms (one history item per stroke); our own tools
        write through ``data_setitem`` and record their facts themselves. The fact holds
        the stroke's first atom, so undoing the stroke removes the tool from the record
        like any other fact."""
        held = {id(f.atom) for f in self.facts if f.atom is not None}
        for item in getattr(self.layer, "_undo_history", ()):
            first = item[0] if item else None
            if first is None or id(first) in seen or id(first) in held:
                continue
            if hasattr(first, "new_value") and hasattr(first, "slice_key"):
                self.facts.append(Fact("tool", _napari_tool(first, self.layer), first))

    def refresh(self, *, table: bool = True, full: bool = False) -> EditSummary:
        """Bring the edit summary (and the QC table) up to date with the layer's data.

        ``full``: compare every slice (what the saved record uses); otherwise only the
        slices that napari's history says changed since the last refresh."""
        self._sync_history()
        data = self.layer.data
        if full or self._pending_full:
            self.edits = self.tracker.diff(data)
            self._checksums = _slice_checksums(data)
        else:
            self.edits = self.tracker.diff(data, slices=sorted(self._pending))
            self._checksums.update(_slice_checksums(data, self._pending))
        self._pending.clear()
        self._pending_full = False
        if table:
            self.table = self._compute_table(self.table)
        return self.edits

    @property
    def needs_cord_partner(self) -> bool:
        """A lesion mask without a cord class (SCT's ``_lesion_seg``)."""
        names = self.classes.values()
        return any(is_lesion_name(n) for n in names) and not any(is_cord_name(n) for n in names)

    @property
    def cord_values(self) -> tuple[int, ...]:
        return tuple(v for v, n in self.classes.items() if is_cord_name(n))

    def cord_reference(self) -> np.ndarray | None:
        """The paired cord mask (boolean, this layer's grid), or None."""
        partner = self.cord_partner() if self.cord_partner is not None else None
        if partner is None or np.shape(partner.layer.data) != np.shape(self.layer.data):
            return None
        return np.isin(np.asarray(partner.layer.data), partner.cord_values)

    def _compute_table(self, previous: SliceTable | None) -> SliceTable:
        return correction.slice_table(
            self.layer.data,
            self.spacing,
            self.classes,
            probabilities=self.probabilities or None,
            cord_reference=self.cord_reference(),
            previous=previous,
        )

    def summary(self) -> dict[int, ClassSummary]:
        """Per-class size and extent, from the current table (no pass over the labels)."""
        return self.table.summary()

    def edge_slabs(self, n: int = 3) -> EdgeSlabs:
        return correction.edge_slices(self.table, n=n)

    # ---------------------------------------------------------------- edits
    def apply(self, edit: Edit, tool: str) -> int:
        """Apply a tool's edit as one napari undo step; returns the voxels changed."""
        self._apply(edit, Fact("tool", tool, None))
        self.refresh()
        return edit.n_voxels

    def _apply(self, edit: Edit, *facts: Fact) -> None:
        """``data_setitem`` as one undo step; the facts follow its history atom."""
        atom = None  # nothing changed: nothing to undo, the fact is permanent
        if edit.n_voxels:
            self._sync_history()  # what happened before this edit is not ours
            undo = getattr(self.layer, "_undo_history", None)
            top = id(undo[-1][-1]) if undo else None
            self.layer.data_setitem(edit.indices, edit.values)
            if undo and id(undo[-1][-1]) != top:
                atom = undo[-1][-1]
        for fact in facts:
            # an edit that changed nothing is not recorded, except a refine: its
            # prediction still becomes the reference of the slab
            if edit.n_voxels or fact.kind == "refined":
                fact.atom = atom
                self.facts.append(fact)

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
        self._apply(
            change.edit,
            Fact("tool", "trim", None),
            Fact("trimmed", (int(slab[0]), int(slab[1])), None),
        )
        self.refresh()
        return change.edit.n_voxels

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
        new = np.asarray(refined)[start - crop[0] : stop - crop[0]].astype(
            self.tracker.model_output.dtype
        )
        handle = self.tracker.rebase(start, new)
        self._apply(
            change.edit,
            Fact("tool", "refine", None),
            Fact("refined", (start, stop), None, rebase=handle),
        )
        self.refresh()
        return change.edit.n_voxels

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
        """Beside the source with the task's SCT file name (``<image><suffix>.nii.gz``);
        a mask opened from disk: its own file."""
        if self.from_file:
            return Path(self.volume.path)
        if self.volume.path is None:
            raise SaveRefusedError(
                f"{self.layer.name}: the image was not read from a file, so there is no default "
                "output name; choose a path (Save as...)"
            )
        suffix = self.suffix or "_seg"
        return Path(self.volume.path).parent / f"{self.volume.name}{suffix}.nii.gz"

    def correction_record(self, author: str | None = None) -> dict:
        """The correction record of the labels as they are now (full comparison)."""
        self.refresh(table=False, full=True)
        return correction.correction_record(
            author or getpass.getuser(),
            classes=self.classes,
            edits=self.edits,
            slabs_refined=self.slabs_refined,
            slabs_trimmed=self.slabs_trimmed,
            tools_used=sorted(self.tools_used),
            reviewed_slices=self.table.reviewed_slices(),
            extra={
                "Layer": str(self.layer.name),
                "Task": (self.run or {}).get("task"),
                "Classes": {str(k): v for k, v in self.classes.items()},
            },
        )

    def save(self, path: str | Path | None = None, author: str | None = None) -> Path:
        """Write the mask on the source grid (exact header, atomic, previous version kept)
        and its JSON sidecar: the model's ``GeneratedBy`` entry (or the sidecar a mask
        opened from disk came with) plus the correction record.

        With a :attr:`save_handler`, the save is the handler's (the cohort's derivatives).
        """
        if self.save_handler is not None:
            return self.save_handler(path, author)
        from ..saving import save_mask

        target = Path(path) if path is not None else self.default_path()
        record = self.correction_record(author)  # from the very array written below
        details = record["napari-spineseg"]
        touched = (
            details.get("VoxelsChangedTotal")
            or details["SlabsRefined"]
            or details["SlabsTrimmed"]
            or details["ReviewedSlices"]
        )
        # an untouched result keeps its model entry alone; a mask with no other entry
        # gets the record so the sidecar says who saved it
        keep_record = bool(touched) or not (self.provenance or self._loaded_sidecar)
        written = save_mask(
            self.volume.geometry.to_file(np.asarray(self.layer.data)),
            target,
            like=self.volume,
            classes=self.classes,
            provenance=self.provenance or None,
            output=self.suffix,
            loaded=self._loaded_sidecar,
            record=record if keep_record else None,
            replace_like=self.from_file and _same_file(target, self.volume.path),
        )
        self.dirty = False  # the checksums of the saved array (refreshed above)
        self.saved_paths.append(written)
        if self.autosaver is not None:
            self.autosaver.discard()
        return written

    def needs_confirmation(self, path: str | Path | None = None) -> Path | None:
        """The file a save to ``path`` would replace when this session did not write it
        (a reference mask of the same name: ask first), else None. Saves through a
        :attr:`save_handler` never ask: the handler owns its target."""
        if self.save_handler is not None:
            return None
        target = Path(path) if path is not None else self.default_path()
        if not target.exists() or any(_same_file(target, p) for p in self.saved_paths):
            return None
        return target

    # ---------------------------------------------------------------- autosave
    def autosave_snapshot(self, force: bool = False) -> tuple[np.ndarray, dict] | None:
        """A copy of the labels to autosave (GUI thread), or None when nothing is due."""
        if self.autosaver is None:
            return None
        if self.history_moved():
            self.refresh(table=False)
        if not self.dirty:
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
