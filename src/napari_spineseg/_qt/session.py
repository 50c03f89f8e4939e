"""Scripted review sessions: ``napari_spineseg.review(viewer, path, task=...)``.

Opens the image with the plugin's geometry, docks the Segment and Review widgets, starts
the task on the worker and returns at once. Every widget action is a plain method here
(or on ``session.segment_widget`` / ``session.review_widget``), so a notebook drives the
same code as the buttons::

    import napari, napari_spineseg
    viewer = napari.Viewer()
    s = napari_spineseg.review(viewer, "sub-01_T2w.nii.gz", task="lesion_sci_t2")
    s.wait()                      # or keep working: the viewer stays responsive
    s.table                       # per-slice QC of the current result
    s.trim((0, 3)); s.refine((40, 48)); s.apply()
    s.save_all()
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer

from ..errors import GeometryWarning, SpinesegError
from ..options import RunOptions, run_options
from .segment_widget import CUSTOM

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..correction.qc import SliceTable
    from ..correction.review import LayerReview
    from .review_widget import ReviewWidget
    from .segment_widget import SegmentWidget

PLUGIN = "napari-spineseg"
#: what ``review`` runs when given neither a task nor a model
DEFAULT_TASK = "lesion_sci_t2"
#: the widgets' display names in napari.yaml
SEGMENT_WIDGET = "Segment spinal cord"
REVIEW_WIDGET = "Review and correct"


class ReviewSession:
    """One image under review in a viewer (see the module docstring)."""

    segment_widget: SegmentWidget
    review_widget: ReviewWidget

    def __init__(self, viewer: napari.viewer.Viewer, image_layer: Any, run: RunOptions) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.run = run
        # through the manifest, as Plugins > napari-spineseg does: a widget already docked
        # from the menu (or by an earlier session) is reused, never duplicated. The two
        # docks share one tab stack: stacked, the long Segment form squeezes the Review
        # panel to a sliver on a laptop screen; the Review tab comes forward with results.
        self.segment_dock, self.segment_widget = viewer.window.add_plugin_dock_widget(
            PLUGIN, SEGMENT_WIDGET
        )
        self.review_dock, self.review_widget = viewer.window.add_plugin_dock_widget(
            PLUGIN, REVIEW_WIDGET, tabify=True
        )
        # Qt builds the tab bar on a later event-loop turn: raise the Segment tab then
        QTimer.singleShot(0, lambda: _raiser(self.segment_dock)([True]))
        self.segment_widget.on_results.append(_raiser(self.review_dock))
        self.segment_widget.image.value = image_layer
        # the widget shows the session's run, so that pressing Run again repeats it
        if run.model is not None:
            self.segment_widget.model.value = run.model
        else:  # cleared: FileEdit.value = "" would mean the current folder
            self.segment_widget.model.line_edit.value = ""
        self.segment_widget.trust.value = run.trust
        self.segment_widget.task.value = run.task or CUSTOM
        if run.device in self.segment_widget.device.choices:
            self.segment_widget.device.value = run.device

    # ---------------------------------------------------------------- running
    def segment(self):
        """Start the task on the worker (returns the worker; see :meth:`wait`)."""
        return self.segment_widget.segment(self.image_layer, run=self.run)

    def wait(self, timeout: float = 3600.0) -> str:
        """Process Qt events until the running job ends: "done", "cancelled" or "error"."""
        outcome = self.segment_widget.wait(timeout)
        self.review_widget.wait(timeout)
        if outcome == "error" and self.segment_widget.last_error is not None:
            warnings.warn(f"segmentation failed: {self.segment_widget.last_error}", stacklevel=2)
        return outcome

    def cancel(self) -> None:
        self.segment_widget.cancel()
        self.review_widget.cancel()

    # ---------------------------------------------------------------- results
    @property
    def layers(self) -> list[Any]:
        """The result layers under review."""
        return [st.layer for st in self.review_widget.states.values()]

    def select(self, layer_or_name: Any) -> LayerReview:
        """Review this result layer (a layer or its name)."""
        layer = (
            self.viewer.layers[layer_or_name] if isinstance(layer_or_name, str) else layer_or_name
        )
        return self.review_widget.select_layer(layer)

    @property
    def state(self) -> LayerReview:
        state = self.review_widget.state
        if state is None:
            raise SpinesegError("no result yet: call session.segment() and session.wait()")
        return state

    @property
    def table(self) -> SliceTable:
        """Per-slice QC table of the selected result (``table.rows()`` for plain dicts)."""
        return self.state.table

    @property
    def edits(self):
        """Edits against the model output (voxels per class and slice)."""
        return self.state.refresh(table=False)

    def go_to(self, slice_index: int) -> None:
        self.review_widget.go_to_slice(slice_index)

    def mark_reviewed(self, slices) -> None:
        self.review_widget.mark_reviewed(slices)

    # ---------------------------------------------------------------- correcting
    def set_class(self, value_or_name: int | str) -> None:
        self.review_widget.set_class(value_or_name)

    def interpolate(self, slice_a: int, slice_b: int) -> int:
        return self.review_widget.interpolate(slice_a, slice_b)

    def remove_small(self, min_voxels: int) -> int:
        return self.review_widget.remove_small(min_voxels)

    def fill_holes(self, mode: str = "2d") -> int:
        return self.review_widget.fill_holes(mode)

    def suggest_slab(self) -> tuple[int, int] | None:
        return self.review_widget.suggest_slab()

    def trim(self, slab: tuple[int, int]) -> int:
        """Clear display slices ``[start, stop)`` (one undo step)."""
        return self.review_widget.trim(slab)

    def refine(
        self,
        slab: tuple[int, int],
        margin: int | None = None,
        overwrite: bool = False,
        wait: bool = True,
        apply: bool = False,
    ):
        """Re-run the task on ``slab`` (+ ``margin`` slices of context) and preview it.

        With ``wait`` (default) returns the preview layer once ready; with ``apply`` the
        preview is merged at once (one undo step) and the number of changed voxels returned.
        """
        worker = self.review_widget.refine(slab, margin=margin, overwrite=overwrite)
        if not wait:
            return worker
        outcome = self.review_widget.wait()
        if outcome != "done":
            err = self.review_widget.last_error
            raise SpinesegError(f"refine {outcome}: {err}" if err else f"refine {outcome}")
        if apply:
            return self.apply()
        return self.review_widget.preview_layer

    def apply(self) -> int:
        """Merge the previewed refine (one undo step)."""
        return self.review_widget.apply_preview()

    def discard(self) -> None:
        self.review_widget.discard_preview()

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Save the selected result (beside the source by default) with its sidecar."""
        return self.review_widget.save(path)

    def save_all(self) -> list[Path]:
        """Save every result layer beside the source (SCT names) with sidecars."""
        return self.review_widget.save_all()


def _raiser(dock: Any):
    """A results callback that brings ``dock`` forward (weakly held: the widget must not
    keep a closed dock, or this session, alive)."""
    ref = weakref.ref(dock)

    def raise_dock(layers: list[Any]) -> None:
        target = ref()
        if layers and target is not None:
            with contextlib.suppress(RuntimeError):  # a closed dock: its Qt object is gone
                target.raise_()

    return raise_dock


def open_image(viewer: napari.viewer.Viewer, path: str | os.PathLike) -> Any:
    """Open a NIfTI image with napari-spineseg's geometry; returns the image layer."""
    from napari.layers import Layer

    from ..io import load
    from ..layers import volume_layer_data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeometryWarning)
        volume = load(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    data, kwargs, kind = volume_layer_data(volume, as_labels=False)
    return viewer.add_layer(Layer.create(data, kwargs, kind))


def review(
    viewer: napari.viewer.Viewer,
    image: str | os.PathLike | Any,
    task: str | None = None,
    model: str | os.PathLike | None = None,
    trust: bool = False,
    device: str = "auto",
    start: bool = True,
    engine: str | None = None,
    **options: Any,
) -> ReviewSession:
    """Open ``image`` (a path, or an image layer already in ``viewer``), dock the widgets
    and start ``task`` on a worker; returns a :class:`ReviewSession` at once.

    ``task`` and ``model`` mean what they mean in :func:`napari_spineseg.api.segment`: a
    ``model`` folder without a task is your lab's nnU-Net model, run with the classes of
    its own ``dataset.json`` (the widget's task "custom"); with a task, it replaces that
    task's model. With neither, the task is ``lesion_sci_t2`` (:data:`DEFAULT_TASK`).
    ``options``: ``threshold``, ``largest``, ``fill_holes``, ``remove_small``,
    ``test_time_aug`` as in :func:`napari_spineseg.api.segment` (any field of
    :class:`~napari_spineseg.options.RunOptions`), checked here before anything opens.
    ``engine``: where the widgets' runs go: ``"process"`` (the default: a persistent
    engine process, so the viewer never loads torch), ``"inprocess"``, or a dask scheduler
    address such as ``"tcp://gpu-box:8786"`` (a lab's GPU workstation); default
    ``$SPINESEG_ENGINE``.
    """
    if task is None and model is None:
        task = DEFAULT_TASK
    run = run_options(task=task, model=model, trust=trust, device=device, **options)
    if engine is not None:
        from ..engine_process import use_for_widgets

        use_for_widgets(engine)
    if isinstance(image, str | os.PathLike):
        layer = open_image(viewer, image)
    else:
        layer = image
    session = ReviewSession(viewer, layer, run)
    if start:
        session.segment()
    return session
