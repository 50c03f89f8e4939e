"""Qt-free review logic: per-slice QC, edit tracking, correction tools, crop-and-refine,
crash recovery and the correction provenance record.

Everything here works on plain numpy label arrays in the display orientation (axis 0 =
superior -> inferior, one axial slice per index) so the dock widgets stay thin and the
logic is unit-tested without a viewer. Tools never modify their input: they return the
voxels to set, which the widgets apply through napari's undoable ``data_setitem``.
"""

from __future__ import annotations

from .autosave import Autosaver, RecoveryEntry, autosave_dir, discard, find_recoveries, restore
from .edits import EditSummary, EditTracker
from .provenance import correction_record, extend_sidecar
from .qc import ClassSummary, EdgeSlabs, SliceTable, edge_slices, slice_table, summary
from .refine import SlabChange, merge_slab, slab_with_margin, trim_slab
from .tools import Edit, apply_edit, fill_holes, interpolate_between, remove_small

__all__ = [
    "Autosaver",
    "ClassSummary",
    "EdgeSlabs",
    "Edit",
    "EditSummary",
    "EditTracker",
    "RecoveryEntry",
    "SlabChange",
    "SliceTable",
    "apply_edit",
    "autosave_dir",
    "correction_record",
    "discard",
    "edge_slices",
    "extend_sidecar",
    "fill_holes",
    "find_recoveries",
    "interpolate_between",
    "merge_slab",
    "remove_small",
    "restore",
    "slab_with_margin",
    "slice_table",
    "summary",
    "trim_slab",
]
