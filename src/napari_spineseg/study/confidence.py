"""The model's per-slice confidence, kept in a mask's sidecar when the batch writes it.

Why: the confidence of the Review panel (:mod:`napari_spineseg.correction.qc`: the mean
of ``max(p, 1 - p)`` over a class's voxels on an axial slice) needs the model's
probability maps, and those are far too large to keep with the masks of a cohort. The
batch reduces them, while they are in memory, to a few numbers per class and drops them;
the Cohort table ("lowest confidence") and the QC report's ``low_confidence`` flag then
read those numbers from the sidecars, without a NIfTI file being opened.

The record is a key of the model's ``GeneratedBy`` entry (it describes that run's output,
so a manual correction appended later leaves it as it was)::

    "ModelConfidence": {
        "Definition": "...", "Threshold": 0.75,
        "SliceAxis": {"FileAxis": 2, "Reversed": true},
        "Classes": {
            "cord": {"Lowest": 0.8123, "Slice": 14, "FileIndex": 5,
                     "LowSlices": [], "LowFileIndices": []},
            "csf": null
        }
    }

``Slice``/``LowSlices`` are display slices (axis 0 of the viewer, 0 = most superior:
the Review panel's and the QC mosaic's numbers); ``FileIndex``/``LowFileIndices`` the
same slices as 0-based voxel indices along the file's axis ``FileAxis`` (0, 1, 2 = i, j,
k: what FSLeyes and SCT show). ``LowSlices`` are the slices the class raises
``low_confidence`` on (:func:`~napari_spineseg.correction.qc.slice_table`, threshold
``Threshold``). A class is ``null`` when the model gave no probability map for it (models
that output labels); a class absent from the mask has ``Lowest: null``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..correction.qc import SliceTable
    from ..io.geometry import DisplayGeometry
    from ..segmentation import SegmentationResult

#: the key of the record in the model's GeneratedBy entry
RECORD_KEY = "ModelConfidence"
DEFINITION = (
    "per axial slice and class: mean of max(p, 1-p) over the voxels where p > 0.5 or the "
    "mask has the class (napari_spineseg.correction.qc)"
)
_DIGITS = 4  # 1e-4 of a confidence in [0.5, 1]: finer than anything shown or compared


def slice_axis(geometry: DisplayGeometry) -> tuple[int, bool]:
    """The file axis that the display slices walk along, and whether it runs the other
    way (display slice ``s`` is then file index ``n - 1 - s``)."""
    for file_axis, (display_axis, flip) in enumerate(np.asarray(geometry.transform)):
        if int(display_axis) == 0:
            return file_axis, bool(flip < 0)
    raise ValueError(f"display geometry without a slice axis: {geometry.transform!r}")


def record_of(
    table: SliceTable, geometry: DisplayGeometry, with_probability: Iterable[int]
) -> dict[str, Any]:
    """The sidecar record of one mask from its QC table (computed with the model's
    probabilities for the classes ``with_probability``; the others are ``null``)."""
    from ..correction.qc import LOW_CONFIDENCE

    axis, reverse = slice_axis(geometry)
    n = table.n_slices
    given = {int(v) for v in with_probability}

    def in_file(slices: Iterable[int]) -> list[int]:
        return [n - 1 - s if reverse else s for s in slices]

    classes: dict[str, Any] = {}
    for v, name in table.classes.items():
        if v not in given:
            classes[name] = None
            continue
        conf = table.confidence[v]
        low = np.flatnonzero(table.class_flags["low_confidence"][v]).tolist()
        known = ~np.isnan(conf)
        where = int(np.flatnonzero(known)[np.argmin(conf[known])]) if known.any() else None
        classes[name] = {
            "Lowest": None if where is None else round(float(conf[where]), _DIGITS),
            "Slice": where,
            "FileIndex": None if where is None else in_file([where])[0],
            "LowSlices": low,
            "LowFileIndices": in_file(low),
        }
    return {
        "Definition": DEFINITION,
        "Threshold": LOW_CONFIDENCE,
        "SliceAxis": {"FileAxis": axis, "Reversed": reverse},
        "Classes": classes,
    }


def records_of(result: SegmentationResult) -> dict[str, dict[str, Any]]:
    """SCT suffix -> the record of that output file of ``result`` (see the module doc).

    Computed on the display grid with :func:`~napari_spineseg.correction.qc.slice_table`,
    as the Review panel computes its table for a fresh result, so that the numbers are
    the ones a reviewer would see in napari. Works on views of the arrays: nothing the
    size of the volume is copied beyond what the table itself needs.
    """
    from ..correction import qc
    from ..jobs.result_layers import _probability_for  # the one class -> map mapping

    geometry = result.source.geometry
    out = {}
    for suffix, output in result.outputs.items():
        probs = _probability_for(output, result.probabilities, result.task)
        display = {v: geometry.to_display(p) for v, p in probs.items()}
        table = qc.slice_table(
            geometry.to_display(output.labels),
            geometry.scale,
            output.classes,
            probabilities=display or None,
        )
        out[suffix] = record_of(table, geometry, display)
    return out


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class MaskConfidence:
    """What a mask's sidecar says of the model's confidence.

    ``record``: the model entry's record (None: none written, e.g. a mask from before
    this record existed); ``corrected``: a manual correction was appended after that
    entry, so the mask is no longer the output the record describes.
    """

    record: Mapping[str, Any] | None
    corrected: bool = False

    def lowest(self) -> tuple[float, str, int, int | None] | None:
        """(confidence, class, display slice, file index) of the least confident class
        slice; None when the model gave no confidence (no record, no probability maps,
        or no class in the mask)."""
        best = None
        for name, c in self._classes().items():
            if not (_is_number(c.get("Lowest")) and _is_index(c.get("Slice"))):
                continue
            if best is None or float(c["Lowest"]) < best[0]:
                index = c.get("FileIndex") if _is_index(c.get("FileIndex")) else None
                best = (float(c["Lowest"]), str(name), int(c["Slice"]), index)
        return best

    def low_slices(self) -> list[int]:
        """Display slices on which some class is below the record's threshold."""
        out: set[int] = set()
        for c in self._classes().values():
            low = c.get("LowSlices")
            if isinstance(low, list):
                out.update(s for s in low if _is_index(s))
        return sorted(out)

    def flagged_slices(self) -> list[int]:
        """The record's ``low_confidence`` slices while the mask is still the model's
        output (none once corrected: they describe the model's, not the mask's): what the
        review queue and the QC report add to the flags computed from the mask."""
        return [] if self.corrected else self.low_slices()

    def _classes(self) -> dict[str, dict[str, Any]]:
        """The record's classes that have a confidence (a sidecar edited by hand may hold
        anything: what is not a record is skipped, never an error in the table)."""
        classes = self.record.get("Classes") if isinstance(self.record, Mapping) else None
        if not isinstance(classes, Mapping):
            return {}
        return {str(k): c for k, c in classes.items() if isinstance(c, Mapping)}

    def has_probabilities(self) -> bool:
        """The record exists and some class had a probability map."""
        return bool(self._classes())


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read(sidecar_data: Mapping[str, Any]) -> MaskConfidence:
    """The confidence record of a mask from its sidecar's data (``sidecar.read``)."""
    entries = sidecar_data.get("GeneratedBy")
    if not isinstance(entries, list):
        return MaskConfidence(None)
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get(RECORD_KEY), dict):
            later = entries[i + 1 :]
            corrected = any(isinstance(e, dict) and e.get("Name") == "Manual" for e in later)
            return MaskConfidence(entry[RECORD_KEY], corrected)
    return MaskConfidence(None)


@dataclass(frozen=True)
class CaseConfidence:
    """The lowest model confidence over the masks of one case (the Cohort column).

    ``value`` is None (a blank cell) when no mask has a confidence; ``corrected``: a mask
    was corrected since the model wrote it (the value still describes the model's output).
    """

    value: float | None
    where: str = ""  # "cord, slice 14 (file k=5)"
    corrected: bool = False
    note: str = ""  # why the cell is blank, or which slices are below the threshold
    masks: dict[str, MaskConfidence] = field(default_factory=dict)

    def text(self) -> str:
        """The cell: ``0.81``, ``0.81*`` once corrected, blank when unknown."""
        if self.value is None:
            return ""
        return f"{self.value:.2f}" + ("*" if self.corrected else "")

    def tooltip(self) -> str:
        if self.value is None:
            return self.note
        lines = [f"lowest model confidence {self.value:.4f}: {self.where}"]
        if self.note:
            lines.append(self.note)
        if self.corrected:
            lines.append("* corrected since: the value is the model output's, not the mask's")
        return "\n".join(lines)


_AXES = "ijk"


def case_confidence(masks: Mapping[str, MaskConfidence]) -> CaseConfidence:
    """Combine the masks of a case (SCT suffix -> :class:`MaskConfidence`)."""
    best = None
    for suffix, m in masks.items():
        low = m.lowest()
        if low is not None and (best is None or low[0] < best[1][0]):
            best = (suffix, low)
    corrected = any(m.corrected for m in masks.values())
    if best is None:
        if any(m.record is not None for m in masks.values()):
            note = "the model gave no probabilities (it outputs labels): no confidence"
        else:
            note = "no confidence recorded (masks written before it was; --overwrite redoes them)"
        return CaseConfidence(None, corrected=corrected, note=note, masks=dict(masks))
    suffix, (value, name, slice_, file_index) = best
    record = masks[suffix].record or {}
    slice_axis_ = record.get("SliceAxis")
    axis = slice_axis_.get("FileAxis") if isinstance(slice_axis_, Mapping) else None
    where = f"{name} ({suffix}), slice {slice_}"
    if file_index is not None and axis in (0, 1, 2):
        where += f" (file {_AXES[axis]}={file_index})"
    parts = []
    for s, m in masks.items():
        if m.record is not None and m.has_probabilities():
            low = m.low_slices()
            parts.append(f"{s}: {', '.join(map(str, low)) if low else 'none'}")
    threshold = record.get("Threshold")
    note = f"slices below {threshold}: " + "; ".join(parts) if parts else ""
    return CaseConfidence(value, where, corrected, note, dict(masks))
