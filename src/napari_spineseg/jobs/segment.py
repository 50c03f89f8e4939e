"""What the widgets run on their workers: segment an image, refine a slab.

Each job is a generator core (run by :func:`napari_spineseg.jobs.runner.steps`) that runs
the task and then prepares everything the GUI thread needs
(:func:`~napari_spineseg.jobs.result_layers.result_layer_data`). The model runs in
:func:`run_segmentation`, the one place the jobs call :func:`napari_spineseg.api.segment`.
No Qt and no napari import here: tests run the jobs with :func:`~.runner.run_sync`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TaskError
from ..io.geometry import crop_display
from ..options import RunOptions
from ..progress import CancelToken, Progress, ProgressCallback
from .result_layers import ImageSnapshot, result_layer_data
from .runner import CANCELLED, steps

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from ..io import Volume
    from ..segmentation import SegmentationResult


def run_segmentation(
    image: Volume | nib.Nifti1Image,
    options: RunOptions,
    *,
    progress: ProgressCallback,
    cancel: CancelToken,
    return_probabilities: bool = True,
    engine: Any = None,
) -> SegmentationResult:
    """Run the model of ``options`` on ``image``: the one call of the segment and refine jobs.

    ``engine``: where the model runs (:func:`napari_spineseg.api.segment`'s argument):
    None in this process (scripts, tests), ``"process"`` the local engine process (the
    widgets: :func:`napari_spineseg.engine_process.widget_engine`), or a scheduler address.
    """
    from .. import api

    return api.segment(
        image,
        progress=progress,
        cancel=cancel,
        return_probabilities=return_probabilities,
        options=options,
        engine=engine,
    )


def segment_job(
    snapshot: ImageSnapshot, options: RunOptions, cancel: CancelToken, engine: Any = None
) -> Generator[Progress | None, None, Any]:
    """Segment the snapshot's volume; returns layer data tuples, or :data:`CANCELLED`."""
    result = yield from steps(
        run_segmentation, snapshot.volume, options, cancel=cancel, engine=engine
    )
    if result is CANCELLED:
        return CANCELLED
    yield Progress(1.0, "preparing layers")
    layers = result_layer_data(result, snapshot, options)
    _ = snapshot.volume.sha256  # hash the source here (autosave key), not on the GUI thread
    if cancel.cancelled:
        return CANCELLED
    return layers


def refine_job(
    volume: Volume,
    options: RunOptions,
    suffix: str,
    crop: tuple[int, int],
    cancel: CancelToken,
    engine: Any = None,
) -> Generator[Progress | None, None, Any]:
    """Re-run the task on display slices ``crop`` (slab + margin).

    Returns the new labels of output ``suffix`` for the crop, in display order, or
    :data:`CANCELLED`.
    """
    image = crop_display(volume, *crop)
    result = yield from steps(
        run_segmentation,
        image,
        options,
        cancel=cancel,
        return_probabilities=False,
        engine=engine,
    )
    if result is CANCELLED:
        return CANCELLED
    if suffix not in result.outputs:
        raise TaskError(
            f"the refine run has no output {suffix!r} (it has {', '.join(result.outputs)})"
        )
    return np.asarray(result.outputs[suffix].labels)
