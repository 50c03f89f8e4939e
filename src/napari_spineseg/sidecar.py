"""BIDS-style JSON sidecars next to saved masks (SCT's ``GeneratedBy`` provenance).

SCT writes ``<mask>.json`` = ``{"GeneratedBy": [{"Name": "spinalcordtoolbox: sct_deepseg
...", "Version", "CodeURL", "ModelURL"}]}`` next to every output, and
``spinalcordtoolbox/manual-correction`` appends ``{"Name": "Manual", "Author", "Date"}``
after a correction. We write the same structure (``Name`` "napari-spineseg", plus the task,
the model's SHA-256 and the settings) so those tools keep working; a saved mask's
sidecar is built by :func:`napari_spineseg.saving.mask_sidecar` (the model's entry, or the
sidecar the mask came with, plus a correction record).

A sidecar is replaced atomically under the same per-file lock as masks
(:mod:`napari_spineseg.io.atomic`), so an append from two processes keeps both entries,
and it gets its mask's permission bits: colleagues who can read a mask in a shared
folder can read its record too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .io import atomic
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
    """Write the sidecar of ``nifti_path`` atomically, with the mask's permission bits.

    Raises :class:`~napari_spineseg.errors.SaveRefusedError` naming the sidecar when the
    folder refuses it (read-only, full, name too long).
    """
    target = sidecar_path(nifti_path).absolute()
    atomic.check_target(target)
    with atomic.target_lock(target):
        return _write_locked(nifti_path, target, data)


def _write_locked(nifti_path: str | os.PathLike, target: Path, data: dict[str, Any]) -> Path:
    payload = (json.dumps(data, indent=4, ensure_ascii=False) + "\n").encode("utf-8")
    return atomic.replace_locked(target, payload, atomic.permission_bits(Path(nifti_path)))


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


def append_generated_by(nifti_path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Append an entry (e.g. a manual correction) to a mask's sidecar, keeping the rest.

    Read and rewrite happen under the sidecar's lock: concurrent appends all survive.
    """
    target = sidecar_path(nifti_path).absolute()
    atomic.check_target(target)
    with atomic.target_lock(target):
        data = read(nifti_path)
        items = data.get("GeneratedBy")
        if not isinstance(items, list):
            items = []
        items.append(entry)
        data["GeneratedBy"] = items
        return _write_locked(nifti_path, target, data)
