"""Saving a mask with its sidecar: the one save path of ``api.save`` and the widgets.

:func:`save_mask` writes the labels on the source's grid (``io.save_labels``: exact
header, atomic, previous version kept under ``.spineseg-history/``) and then the JSON
sidecar next to it, built one way for every caller: a fresh ``GeneratedBy`` entry when the
mask comes from a model run (SCT's structure, plus our task, model hash and settings), or
the sidecar the mask was opened with; a manual-correction record appended when there is
one. ``api.save`` (scripts, CLI, batch) and the Review widget's Save both call it, so a
mask saved either way has the same name, sidecar and history.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .io import Volume


def mask_sidecar(
    *,
    classes: Mapping[int, str],
    provenance: Mapping[str, Any] | None = None,
    output: str | None = None,
    loaded: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
    entry_extra: Mapping[str, Any] | None = None,
    sidecar_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar of a saved mask (see the module docstring).

    ``provenance``: the run that made the labels (its ``GeneratedBy`` entry starts a fresh
    sidecar, with ``output``'s suffix, the ``classes`` and ``entry_extra``); otherwise the
    sidecar starts from ``loaded`` (what the mask was opened with). ``record``: a
    correction record appended to ``GeneratedBy``; ``sidecar_extra``: top-level keys
    (e.g. BIDS ``Sources``).
    """
    from . import sidecar
    from .correction import extend_sidecar

    if provenance is not None:
        entry = sidecar.generated_by(dict(provenance), output=output)
        entry["Classes"] = {str(k): v for k, v in classes.items()}
        entry.update(entry_extra or {})
        data: dict[str, Any] = {"GeneratedBy": [entry]}
    else:
        data = dict(loaded or {})
    if record is not None:
        data = extend_sidecar(data, record)
    data.update(sidecar_extra or {})
    return data


def save_mask(
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    like: Volume,
    classes: Mapping[int, str],
    provenance: Mapping[str, Any] | None = None,
    output: str | None = None,
    loaded: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
    replace_like: bool = False,
    entry_extra: Mapping[str, Any] | None = None,
    sidecar_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``labels`` (file voxel order) to ``path`` on ``like``'s grid, then its sidecar.

    ``replace_like``: ``path`` may be ``like``'s own file (an edited mask saved over
    itself; never an image). The sidecar arguments are those of :func:`mask_sidecar`.
    Returns the written mask path. Raises :class:`~napari_spineseg.errors.SaveRefusedError`
    (or another ``SpinesegError``) naming the file when it cannot be written.
    """
    from . import sidecar
    from .io import save_labels

    data = mask_sidecar(
        classes=classes,
        provenance=provenance,
        output=output,
        loaded=loaded,
        record=record,
        entry_extra=entry_extra,
        sidecar_extra=sidecar_extra,
    )
    written = Path(save_labels(labels, path, like=like, replace_like=replace_like))
    sidecar.write(written, data)
    return written
