"""The "Review and correct" dock widget.

Sections, top to bottom, in the order a reviewer works:

* **Result**: which Labels layer; per-class volume and extent; the cross-sectional area
  profile along the cord (a sparkline: flagged slices in red, the current slice marked).
* **Slices**: the per-slice QC table (:func:`napari_spineseg.correction.slice_table`),
  sorted by severity or confidence; clicking a row moves the viewer to that slice;
  "Mark reviewed" records it.
* **Correct**: the class to paint (sets the layer's label and paint mode: napari's own
  brush, eraser, fill and Ctrl+Z), the edits made so far, and the helpers (interpolate
  between two slices, remove small components, fill holes), each one undo step.
* **Crop and refine**: a slab of slices (suggested from the poor slices at the cord's
  ends), Trim it, or Refine it: re-run the task on the slab plus a margin, preview, Apply
  as one undo step, keeping your edits unless "overwrite my edits" is ticked.
* **Save**: beside the source with SCT's file name, with the correction record in the
  JSON sidecar; "Save all" for every result layer.

Unsaved edits are announced before a layer or the viewer is closed (``prompt`` is an
attribute so tests and scripts answer it); edits are autosaved to the user cache and
offered back when the same image is segmented or opened again.

The class is assembled from one module per section of :mod:`._qt.review`: ``layout``
(the widgets), ``panel`` (what is shown of the current result), ``corrections``,
``refine`` (with its typed :class:`~._qt.review.refine.RefinePreview`), ``saving``,
``close_guard`` (unsaved-edits questions), ``autosave`` (recovery files), ``prompts``
(the message boxes), ``docking``, ``orientation`` and ``sparkline``. This module binds
the layers to their review state (:class:`napari_spineseg.correction.review.LayerReview`)
and routes napari's events.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QScrollArea

from ..correction.review import LayerReview, is_reviewable, spineseg_meta
from ..errors import SpinesegError
from ..progress import CancelToken
from .review.autosave import AUTOSAVE_POLL_MS, AutosaveRecovery
from .review.close_guard import CloseGuard
from .review.corrections import CorrectionActions
from .review.docking import DockTabber, raise_dock
from .review.layout import TABLE_ROWS, ReviewLayout
from .review.orientation import orientation_text, show_orientation
from .review.panel import ReviewPanel, unwrap
from .review.prompts import ask_recovery, ask_replace, ask_unsaved
from .review.refine import RefineActions, RefinePreview
from .review.saving import SaveActions
from .workers import notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["TABLE_ROWS", "ReviewWidget"]

DEBOUNCE_MS = 200


def _same_run(a: Any, b: Any) -> bool:
    """Two result layers of one Segment run (their outputs share one provenance record)."""
    pa = (spineseg_meta(a) or {}).get("provenance")
    pb = (spineseg_meta(b) or {}).get("provenance")
    return pa is not None and pa is pb


class ReviewWidget(
    ReviewLayout,
    ReviewPanel,
    CorrectionActions,
    RefineActions,
    SaveActions,
    CloseGuard,
    AutosaveRecovery,
    QScrollArea,
):
    """Review, correct, refine and save segmentation results (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        from .._reader import ensure_reader_preference, route_viewer_open

        ensure_reader_preference()  # drag and drop, File > Open
        route_viewer_open(viewer)  # viewer.open(path) from a script
        self.states: dict[int, LayerReview] = {}
        #: unsaved-edits prompt: (title, text) -> "save" | "discard" | "cancel"
        self.prompt: Callable[[str, str], str] = lambda t, x: ask_unsaved(self, t, x)
        #: recovery prompt: text -> "restore" | "discard" | "ignore"
        self.prompt_recovery: Callable[[str], str] = lambda x: ask_recovery(self, x)
        #: replace prompt (a file this session did not write): text -> True to replace
        self.prompt_replace: Callable[[str], bool] = lambda x: ask_replace(self, x)
        self._closing = False
        self.autosave_dir: str | None = None  # None: the per-user cache
        self.worker = None
        self._cancel: CancelToken | None = None
        self._preview: RefinePreview | None = None
        self._guarded_window = None
        self._removing: dict[int, int] = {}
        self.last_outcome = ""
        self.last_error: BaseException | None = None
        self._build()
        self._tabber = DockTabber(self)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._refresh_current)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setInterval(AUTOSAVE_POLL_MS)
        self._autosave_timer.timeout.connect(self.autosave)
        self._autosave_timer.start()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        viewer.dims.events.current_step.connect(self._on_dims)
        viewer.dims.events.order.connect(self._update_orientation)
        viewer.dims.events.ndisplay.connect(self._update_orientation)
        viewer.layers.events.inserted.connect(self._update_orientation)
        for layer in list(viewer.layers):
            self._bind(layer)
        self._update_layer_combo()
        self._update_orientation()
        self._guard_viewer_close()
        QTimer.singleShot(0, self._install_close_guard)

    def _bind(self, layer: Any) -> LayerReview | None:
        layer = unwrap(layer)
        if id(layer) in self.states or not is_reviewable(layer):
            return self.states.get(id(layer))
        state = LayerReview(layer, autosave_dir=self.autosave_dir)
        self.states[id(layer)] = state
        # bound methods only: napari's emitters hold them weakly, so the layer never
        # keeps this widget (and through it napari's window) alive
        state.listener = weakref.WeakMethod(self._on_state_event)
        layer.events.paint.connect(state.on_paint_event)
        layer.events.reload.connect(state.on_reload_event)
        layer.events.data.connect(state.on_reload_event)
        layer.events.set_data.connect(state.on_set_data_event)
        layer.events.name.connect(self._on_layer_renamed)
        self._pair_cord_layers()
        self._offer_recovery(state)
        return state

    def _pair_cord_layers(self) -> None:
        """Give each lesion-only mask the cord mask of its grid ("lesion outside cord").

        Preference: the cord output of the same Segment run, then a cord mask whose file
        name has the same stem (``t2_lesion_seg`` / ``t2_sc_seg``), then any cord mask
        drawn on the same grid."""
        from ..layers import classes_from_name

        def stem(st: LayerReview) -> str:
            name = str(st.layer.name)
            found = classes_from_name(name + ".nii.gz")
            return name[: -len(found[0])] if found else name

        for st in self.states.values():
            if not st.needs_cord_partner:
                continue
            best: tuple[int, LayerReview] | None = None
            for other in self.states.values():
                if (
                    other is st
                    or not other.cord_values
                    or np.shape(other.layer.data) != np.shape(st.layer.data)
                    or not np.allclose(other.layer.scale[-3:], st.layer.scale[-3:])
                    or not np.allclose(other.layer.translate[-3:], st.layer.translate[-3:])
                ):
                    continue
                rank = (
                    0 if _same_run(st.layer, other.layer) else 1 if stem(st) == stem(other) else 2
                )
                if best is None or rank < best[0]:
                    best = (rank, other)
            partner = best[1] if best is not None else None
            current = st.cord_partner() if st.cord_partner is not None else None
            if partner is not current:
                st.cord_partner = weakref.ref(partner) if partner is not None else None
                precomputed = (
                    partner is not None
                    and st.table_cord_suffix is not None
                    and st.table_cord_suffix == partner.suffix
                    and _same_run(st.layer, partner.layer)
                )
                if not precomputed:  # the worker checked it against this cord already
                    st.table = st._compute_table(st.table)
                st.table_cord_suffix = None

    def _on_inserted(self, event) -> None:
        layer = unwrap(event.value)
        idx = self._removing.pop(id(layer), None)
        if idx is not None:  # re-inserted after "Cancel": keep its state
            self._update_layer_combo()
            return
        if self._bind(layer) is not None:
            # the outputs of one run arrive one by one: keep its first (the cord) selected
            current = self.state
            same_run = current is not None and _same_run(current.layer, layer)
            self._update_layer_combo(select=None if same_run else layer)
            self._raise_dock()

    def _raise_dock(self) -> None:
        """Bring this panel's tab forward (a result to review has arrived)."""
        raise_dock(self)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        self._install_close_guard()

    @property
    def busy(self) -> bool:
        """Panel work is still pending (a debounced refresh, a result being bound)."""
        return self._debounce.isActive() or bool(getattr(self, "_to_bind", None))

    def _on_state_event(self, state: LayerReview) -> None:
        """A layer under review was painted or reloaded: update the panel (debounced)."""
        if state is self.state:
            self._debounce.start()

    def _refresh_current(self) -> None:
        for state in self.states.values():
            state.refresh(table=state is self.state)
        self._update_panel()

    def _on_dims(self, event=None) -> None:
        state = self.state
        if state is not None:
            self.sparkline.current = self.current_slice()
            self.sparkline.update()

    def _update_orientation(self, event: Any = None) -> None:
        """Orientation letters of the current view on the canvas (napari-spineseg layers
        are in the I, P, L display convention)."""
        text = ""
        if any(spineseg_meta(ly) for ly in self.viewer.layers):
            text = orientation_text(tuple(self.viewer.dims.order), self.viewer.dims.ndisplay)
        show_orientation(self.viewer, text)

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run a button action; user errors become notifications, never tracebacks."""
        try:
            return fn()
        except SpinesegError as exc:
            self._notify(exc)
        except ValueError as exc:
            self._notify(exc)
        return None

    def _notify(self, exc: BaseException) -> None:
        self.last_error = exc
        notify_error(exc)

    def _notify_info(self, text: str) -> None:
        from napari.utils.notifications import show_info

        show_info(text)
