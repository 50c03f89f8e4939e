"""BIDS-style JSON sidecars next to saved masks (SCT's ``GeneratedBy`` provenance).

SCT writes ``<mask>.json`` = ``{"GeneratedBy": [{"Name": "spinalcordtoolbox: sct_deepseg
...", "Version", "CodeURL", "ModelURL"}]}`` next to every output, and
``spinalcordtoolbox/manual-correction`` appends ``{"Name": "Manual", "Author", "Date"}``
after a correction. We write the same structure (``Name`` "napari-spineseg", plus the task,
the model's SHA-256 and the settings) so those tools keep working, and the review widget
appends its correction record with :func:`append_generated_by`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .io.checks import split_nifti_name


def sidecar_path(nifti_path: str | os.PathLike) -> Path:
    """``sub-01_T2w_seg.nii.gz`` -> ``sub-01_T2w_seg.json``."""
    p = Path(nifti_path)
    base, _ext = split_nifti_name(p.name)
    return p.with_name(base + ".json")


def read(nifti_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a mask ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(sidecar_path(nifti_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(nifti_path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write the sidecar atomically (temporary file + ``os.replace``)."""
    target = sidecar_path(nifti_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=4, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def generated_by(provenance: dict[str, Any], output: str | None = None) -> dict[str, Any]:
    """The ``GeneratedBy`` entry of one saved output, from a run's provenance."""
    entry: dict[str, Any] = {
        "Name": "napari-spineseg",
        "Version": provenance.get("version"),
        "CodeURL": provenance.get("code_url"),
        "Task": provenance.get("task"),
        "ModelURL": provenance.get("model_url"),
        "ModelSHA256": provenance.get("model_sha256"),
        "Settings": provenance.get("settings"),
        "Device": provenance.get("device"),
    }
    if output:
        entry["Output"] = output
    if provenance.get("notes"):
        entry["Notes"] = provenance["notes"]
    if provenance.get("postprocessing"):
        entry["PostProcessing"] = provenance["postprocessing"]
    return entry


def write_generated_by(nifti_path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Start a fresh sidecar for a newly generated mask (replaces an older one)."""
    return write(nifti_path, {"GeneratedBy": [entry]})


def append_generated_by(nifti_path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Append an entry (e.g. a manual correction) to a mask's sidecar, keeping the rest."""
    data = read(nifti_path)
    items = data.get("GeneratedBy")
    if not isinstance(items, list):
        items = []
    items.append(entry)
    data["GeneratedBy"] = items
    return write(nifti_path, data)
