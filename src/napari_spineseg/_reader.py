"""npe2 reader: ``.nii``/``.nii.gz`` -> an Image or Labels layer in the display convention.

Why this exists next to napari's builtin reader: napari's builtins open NIfTI through
imageio/itk-free paths without the header, so the orientation is lost and a mask saved
from such a layer cannot be put back on the scanner grid. This reader keeps the
:class:`~napari_spineseg.io.Volume` in the layer metadata (see
:mod:`napari_spineseg.layers`), and the writer restores the file exactly.

Errors: :class:`~napari_spineseg.errors.NiftiError` propagates unchanged (its message
names the file and the fix; napari shows it in a notification). Geometry findings are
``warnings.warn`` (GeometryWarning) from :func:`napari_spineseg.io.load`, which napari
turns into warning notifications.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .layers import LayerDataTuple, volume_layer_data

_EXTENSIONS = (".nii", ".nii.gz")


def napari_get_reader(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> Callable[[str | Sequence[str]], list[LayerDataTuple]] | None:
    """Return :func:`read_nifti` when every path is named ``.nii``/``.nii.gz``, else None.

    Decides by name only (napari asks every reader plugin about every file dropped).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            return None
        if not os.fspath(p).lower().endswith(_EXTENSIONS):
            return None
    return read_nifti


def read_nifti(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    """Load each file (exact geometry) and describe it as a napari layer."""
    from .io import load

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [volume_layer_data(load(p)) for p in paths]
