"""npe2 writer: a Labels layer -> a NIfTI mask on its source image's exact grid.

The layer is in display order (see :mod:`napari_spineseg.io.geometry`); the file must be
in the *source's* voxel order with the source's header, or other tools will not overlay
it. The grid comes from ``metadata["spineseg"]["volume"]`` (layers made by the reader or
the widgets). A layer created in napari ("New labels") has no metadata since napari 0.7,
and npe2 passes the writer only ``(path, data, meta)``, so the grid is then recovered
from the image layers of the current viewer that share the layer's shape, scale and
translate (:func:`napari_spineseg.layers.find_volume_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import LabelsError
from .io import Volume, save_labels
from .layers import find_volume_for


def write_labels(path: str, data: Any, meta: Mapping[str, Any]) -> list[str]:
    """Save one Labels layer; return the written path (npe2 single-layer writer)."""
    volume = _volume_for(data, meta)
    name = meta.get("name") or "labels"
    labels = _spatial_labels(np.asarray(data), volume, name)
    file_order = volume.geometry.to_file(labels)
    # An edited mask opened from disk may be saved over itself (history keeps the old
    # one); save_labels still refuses to overwrite an image.
    role = ((meta.get("metadata") or {}).get("spineseg") or {}).get("role")
    written = save_labels(file_order, path, like=volume, replace_like=role == "labels")
    return [str(written)]


def _volume_for(data: Any, meta: Mapping[str, Any]) -> Volume:
    spineseg = (meta.get("metadata") or {}).get("spineseg") or {}
    volume = spineseg.get("volume")
    if isinstance(volume, Volume):
        return volume
    state = {**meta, "data": data}
    return find_volume_for(state, _viewer_layers(), shape=np.shape(data))


def _viewer_layers() -> list:
    """Layers of the current napari viewer (empty outside napari)."""
    try:
        import napari
    except ImportError:  # pragma: no cover - napari is a dependency
        return []
    viewer = napari.current_viewer()
    return list(viewer.layers) if viewer is not None else []


def _spatial_labels(data: np.ndarray, volume: Volume, name: str) -> np.ndarray:
    """The 3D display-order mask; a 4D layer (time first) must hold one 3D mask."""
    shape = tuple(volume.geometry.display_shape)
    if data.shape == shape:
        return data
    if data.ndim == 4 and tuple(data.shape[1:]) == shape:
        painted = [i for i in range(data.shape[0]) if np.any(data[i])]
        if not painted:
            return data[0]
        first = data[painted[0]]
        if len(painted) == 1 or all(np.array_equal(data[i], first) for i in painted[1:]):
            return first
        raise LabelsError(
            f"{name}: labels differ between volumes {painted} of the 4D series; a mask has "
            "one 3D grid. Paint in a single volume (or copy the mask to all of them)"
        )
    raise LabelsError(
        f"{name}: labels have shape {data.shape} but the source "
        f"{volume.name} is {shape} in display order: a mask must be on its image's grid"
    )
