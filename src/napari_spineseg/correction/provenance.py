"""The record of a manual correction, appended to the mask's JSON sidecar.

SCT writes ``{"GeneratedBy": [{"Name": "spinalcordtoolbox: sct_deepseg ...", ...}]}``
next to each mask, and SCT's ``manual-correction`` scripts append
``{"Name": "Manual", "Author": <rater>, "Date": "%Y-%m-%d %H:%M:%S"}`` (and set
``"SpatialReference": "orig"``) when a rater corrects it. We append the same entry, so
existing pipelines read our sidecars unchanged, plus what napari-spineseg knows about the
correction under the ``"napari-spineseg"`` key: voxels changed per class, slabs refined
or trimmed, tools used and slices marked reviewed. Slice indices are display slices
(axis 0 of the viewer, superior -> inferior), as stated in the record.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .edits import EditSummary

SLICE_CONVENTION = "display axis 0 (superior to inferior, one axial slice per index)"


def correction_record(
    author: str,
    *,
    date: str | None = None,
    classes: Mapping[int, str] | None = None,
    edits: EditSummary | None = None,
    slabs_refined: Iterable[tuple[int, int]] = (),
    slabs_trimmed: Iterable[tuple[int, int]] = (),
    tools_used: Iterable[str] = (),
    reviewed_slices: Iterable[int] = (),
    version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``GeneratedBy`` entry for one correction session.

    ``date`` defaults to the local time in manual-correction's format. Slabs are
    half-open ``(start, stop)`` display slice ranges. ``extra`` is merged into the
    napari-spineseg details (e.g. the task, or the slice axis in file voxel order).
    """
    if version is None:
        from .. import __version__ as version
    details: dict[str, Any] = {"Version": str(version), "SliceIndices": SLICE_CONVENTION}
    if edits is not None:
        details["VoxelsChanged"] = edits.by_class(classes or {})
        details["VoxelsChangedTotal"] = edits.changed_voxels
        details["SlicesEdited"] = list(edits.slices)
    details["SlabsRefined"] = [[int(a), int(b)] for a, b in slabs_refined]
    details["SlabsTrimmed"] = [[int(a), int(b)] for a, b in slabs_trimmed]
    details["ToolsUsed"] = sorted(set(tools_used))
    details["ReviewedSlices"] = sorted({int(s) for s in reviewed_slices})
    if extra:
        details.update(extra)
    return {
        "Name": "Manual",
        "Author": author,
        "Date": date if date is not None else time.strftime("%Y-%m-%d %H:%M:%S"),
        "napari-spineseg": details,
    }


def extend_sidecar(existing: Mapping[str, Any] | None, record: Mapping[str, Any]) -> dict:
    """A new sidecar dict: ``existing`` (untouched) with ``record`` appended to
    ``GeneratedBy``; ``SpatialReference`` set to ``"orig"`` when absent, as
    manual-correction does (the mask is saved on the source image's grid)."""
    if "Name" not in record:
        raise ValueError("a GeneratedBy record needs a 'Name' (e.g. 'Manual')")
    out = copy.deepcopy(dict(existing or {}))
    generated = out.get("GeneratedBy")
    if generated is None:
        generated = []
    elif not isinstance(generated, list):
        generated = [generated]  # a single entry written as an object: keep it, first
    out["GeneratedBy"] = [*generated, copy.deepcopy(dict(record))]
    out.setdefault("SpatialReference", "orig")
    return out
