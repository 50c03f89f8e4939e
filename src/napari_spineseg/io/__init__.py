"""NIfTI in and out with exact geometry (Qt-free).

``load`` gives a :class:`Volume` (file-order data, untouched header, display geometry);
``save_labels`` writes a mask on a source's grid, atomically and without loss.
"""

from .geometry import DISPLAY_AXCODES, DISPLAY_AXIS_LABELS, DisplayGeometry
from .volume import Volume, from_nifti, load
from .writer import label_dtype, save_labels

__all__ = [
    "DISPLAY_AXCODES",
    "DISPLAY_AXIS_LABELS",
    "DisplayGeometry",
    "Volume",
    "from_nifti",
    "label_dtype",
    "load",
    "save_labels",
]
