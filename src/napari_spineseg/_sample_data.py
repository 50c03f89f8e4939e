"""npe2 sample data: a synthetic spinal-cord phantom (T2w-like image + cord/CSF mask).

Why a phantom and not a real scan: sample data must open offline, instantly and with a
known truth. The phantom is stored in a permuted, flipped voxel order ("PSR", as SCT's
``t2.nii.gz``), so opening it exercises the same reorientation as a real file: the
slider walks down the cord and the axial view is radiological.
"""

from __future__ import annotations

import numpy as np

from .layers import LayerDataTuple, labels_layer_data_like, volume_layer_data
from .phantom import PHANTOM_LABELS

_CORD, _CSF = PHANTOM_LABELS["cord"], PHANTOM_LABELS["csf"]
#: Names and colours of the phantom's classes.
PHANTOM_CLASSES = {_CORD: "spinal cord", _CSF: "CSF"}
PHANTOM_COLORS = {_CORD: (1.0, 0.25, 0.25, 1.0), _CSF: (0.25, 0.6, 1.0, 1.0)}
SAMPLE_SHAPE = (72, 72, 32)  # RAS voxels: x (R-L), y (A-P), z (S-I, along the cord)
SAMPLE_ZOOMS = (0.7, 0.7, 2.5)
SAMPLE_AXCODES = "PSR"


def cord_phantom() -> list[LayerDataTuple]:
    """[image, labels] layer data on one grid; the labels save as a NIfTI on that grid."""
    from .io import from_nifti
    from .phantom import cord_phantom as make_phantom

    image, labels = make_phantom(
        shape=SAMPLE_SHAPE, zooms=SAMPLE_ZOOMS, axcodes=SAMPLE_AXCODES, seed=0
    )
    volume = from_nifti(image)
    image_layer = volume_layer_data(volume, as_labels=False, name="cord phantom (T2w-like)")
    labels_display = volume.geometry.to_display(np.asanyarray(labels.dataobj))
    labels_layer = labels_layer_data_like(
        labels_display,
        volume,
        name="cord phantom mask",
        classes=PHANTOM_CLASSES,
        colors=PHANTOM_COLORS,
    )
    return [image_layer, labels_layer]
