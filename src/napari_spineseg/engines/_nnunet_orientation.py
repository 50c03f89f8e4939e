"""Orientation helpers for the nnU-Net engine: SCT naming and lossless reorientation.

nnU-Net learns whatever voxel order its training data had, so a model only works when the
input is fed in that order. SCT (``deepseg/inference.py``) therefore reorients every image
to the model's orientation (``dataset.json["image_orientation"]``, else
:func:`sct_fallback_orientation`) before inference and back afterwards. SCT names an axis
after the side it comes *from* (``LPI``: x runs from Left to right), nibabel after the
side it goes *to* (``RAS``), so every letter is the opposite one: SCT ``LPI`` == nibabel
``RAS``. Reorientation here is lossless (axis permutation and flips only, as nibabel's
``as_reoriented``), which is what SCT's ``change_orientation`` does too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_AXIS_OF = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def _check_axcodes(code: str, convention: str) -> str:
    letters = str(code).strip().upper()
    if len(letters) != 3 or any(c not in _OPPOSITE for c in letters):
        raise ValueError(
            f"{code!r} is not a {convention} orientation: expected 3 letters out of L/R, A/P, S/I"
        )
    if sorted(_AXIS_OF[c] for c in letters) != [0, 1, 2]:
        raise ValueError(
            f"{code!r} is not a {convention} orientation: each of L/R, A/P, S/I must appear once"
        )
    return letters


def sct_to_nibabel(code: str) -> str:
    """Convert an SCT orientation string (``LPI``) to nibabel axis codes (``RAS``).

    SCT letters say where each axis *starts*, nibabel's where it *points*; the conversion
    is the opposite letter on every axis (``RPI`` -> ``LAS``, ``AIL`` -> ``PSR``).
    """
    return "".join(_OPPOSITE[c] for c in _check_axcodes(code, "SCT"))


def nibabel_to_sct(code: str) -> str:
    """The inverse of :func:`sct_to_nibabel` (``RAS`` -> ``LPI``)."""
    return "".join(_OPPOSITE[c] for c in _check_axcodes(code, "nibabel"))


def sct_fallback_orientation(dataset_name: str | None) -> str:
    """SCT's model orientation (SCT naming) when ``dataset.json`` has no ``image_orientation``.

    ``inference.segment_nnunet`` (SCT 7.x): ``AIL`` when the plans' ``dataset_name``
    contains ``RegionBasedLesionSeg`` (the canproco lesion models), else ``LPI``. Applied
    to every nnU-Net model, catalog or custom, as SCT applies it to ``-custom-url`` models.
    (SCT 6.x also mapped names containing ``SCI`` to ``RPI``; 7.x dropped that rule, the
    SCIseg releases declare ``image_orientation: RPI`` themselves.)
    """
    return "AIL" if "RegionBasedLesionSeg" in str(dataset_name or "") else "LPI"


def orientation_transforms(affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Orientation transforms from an image with ``affine`` to ``axcodes``, and back.

    Uses the closest axis for each voxel axis (``nib.io_orientation``), as
    ``as_closest_canonical`` does, so oblique images are handled the way SCT/nibabel do.
    """
    import nibabel as nib

    current = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    target = nib.orientations.axcodes2ornt(tuple(_check_axcodes(axcodes, "nibabel")))
    forward = nib.orientations.ornt_transform(current, target)
    backward = nib.orientations.ornt_transform(target, current)
    return forward, backward


def apply_spatial(array: np.ndarray, transform: np.ndarray, first_spatial_axis: int = 0):
    """Apply an orientation transform to the 3 spatial axes starting at ``first_spatial_axis``.

    Returns a view (flips + transpose), never a resampled copy.
    """
    import nibabel as nib

    moved = np.moveaxis(array, range(first_spatial_axis, first_spatial_axis + 3), range(3))
    out = nib.orientations.apply_orientation(moved, transform)
    return np.moveaxis(out, range(3), range(first_spatial_axis, first_spatial_axis + 3))


def reorient_zooms(zooms: Sequence[float], transform: np.ndarray) -> tuple[float, ...]:
    """Voxel sizes in the axis order produced by ``transform`` (flips do not change them)."""
    order = np.argsort(np.asarray(transform)[:, 0])
    return tuple(float(zooms[int(i)]) for i in order)
