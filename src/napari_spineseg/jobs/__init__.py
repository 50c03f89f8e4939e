"""The widgets' long work as Qt-free generator cores (segment an image, refine a slab).

:mod:`.runner` runs a blocking call as a generator of progress reports (cancellable),
:mod:`.segment` holds the segment and refine jobs, :mod:`.result_layers` turns a result
into napari layer data on the worker. napari's thread workers run these cores in the
viewer (:mod:`napari_spineseg._qt.workers`); scripts and tests use :func:`run_sync`.
"""

from .result_layers import ImageSnapshot, result_layer_data
from .runner import CANCELLED, run_sync, steps
from .segment import refine_job, run_segmentation, segment_job

__all__ = [
    "CANCELLED",
    "ImageSnapshot",
    "refine_job",
    "result_layer_data",
    "run_segmentation",
    "run_sync",
    "segment_job",
    "steps",
]
