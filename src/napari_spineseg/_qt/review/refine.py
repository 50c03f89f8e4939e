"""Crop and refine in the Review panel: re-run the task on a slab, preview, Apply or Discard.

The refine runs on a napari worker (:func:`napari_spineseg.jobs.refine_job`, the model of
the layer's own run options); its result becomes a :class:`RefinePreview`, shown as a
temporary layer until Apply (one undo step, through the layer's review state) or Discard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...correction import SlabChange
from ...correction.review import LayerReview
from ...engine_process import widget_engine
from ...errors import SpinesegError
from ...jobs import CANCELLED, refine_job
from ...options import RunOptions
from ...progress import CancelToken, Progress
from ..workers import notify_error, start_worker, wait_for


@dataclass(frozen=True)
class RefineRequest:
    """One refine as started: the layer's review state, the slab to change (half-open
    display slices), the crop the model sees (slab + margin) and whether the reviewer's
    edits in the slab may be overwritten."""

    state: LayerReview
    slab: tuple[int, int]
    crop: tuple[int, int]
    overwrite: bool


@dataclass(frozen=True)
class RefinePreview:
    """A finished refine waiting for Apply or Discard: the change it would make, the
    model's labels for the crop, and the preview layer that shows it."""

    request: RefineRequest
    change: SlabChange
    refined: np.ndarray
    layer: Any  # the temporary napari Labels layer

    @property
    def state(self) -> LayerReview:
        return self.request.state


class RefineActions:
    """Crop and refine (a section of ``ReviewWidget``).

    Keeps ``worker`` and ``_cancel`` (the running refine) and ``_preview`` (the
    :class:`RefinePreview` waiting for Apply or Discard, or None).
    """

    def slab(self) -> tuple[int, int]:
        """The slab in the spin boxes as a half-open range ``(first, last + 1)``."""
        a, b = sorted((self.slab_first.value(), self.slab_last.value()))
        return a, b + 1

    def set_slab(self, slab: tuple[int, int]) -> None:
        self.slab_first.setValue(int(slab[0]))
        self.slab_last.setValue(int(slab[1]) - 1)

    def suggest_slab(self) -> tuple[int, int] | None:
        state = self.state
        if state is None:
            return None
        edges = state.edge_slabs()
        slab = edges.top or edges.bottom
        if slab is not None:
            self.set_slab(slab)
            self.refine_label.setText(
                f"Suggested: poor slices {slab[0]}–{slab[1] - 1} at the "
                f"{'superior' if slab is edges.top else 'inferior'} end of the cord."
            )
        elif edges.note:
            self.refine_label.setText(f"No slab suggested: {edges.note}.")
        else:
            self.refine_label.setText("No poor slices at the ends of the cord.")
        return slab

    def refine(
        self, slab: tuple[int, int], margin: int | None = None, overwrite: bool | None = None
    ):
        """Re-run the task on ``slab`` (+ margin) on a worker; a preview layer follows."""
        from ...correction import slab_with_margin

        state = self._require()
        if self.worker is not None:
            raise SpinesegError("a refine is already running: wait or cancel it")
        if not state.run:
            raise SpinesegError(
                f"'{state.layer.name}' was not made by the Segment widget, so the model to re-run "
                "is unknown: segment the image first"
            )
        self.discard_preview()
        margin = self.margin.value() if margin is None else int(margin)
        overwrite = self.overwrite.isChecked() if overwrite is None else bool(overwrite)
        n = state.tracker.shape[0]
        crop = slab_with_margin(slab[0], slab[1], n, margin)
        self._cancel = CancelToken()
        self.last_outcome = ""
        self.last_error = None
        self.refine_progress.setVisible(True)
        self.refine_progress.setValue(0)
        self.refine_label.setText(
            f"Refining slices {slab[0]}–{slab[1] - 1} (model sees {crop[0]}–{crop[1] - 1})..."
        )
        request = RefineRequest(state, (int(slab[0]), int(slab[1])), crop, overwrite)
        self.worker = start_worker(
            refine_job,
            state.volume,
            RunOptions.from_dict(state.run),
            state.suffix or "",
            crop,
            self._cancel,
            widget_engine(),  # the engine process (a warm model: no reload per refine)
            on_progress=self._on_refine_progress,
            on_returned=lambda value: self._on_refined(request, value),
            on_errored=self._on_refine_error,
            on_finished=self._on_refine_finished,
        )
        self._set_preview_buttons()
        return self.worker

    def _on_refine_progress(self, p: Progress) -> None:
        self.refine_progress.setValue(int(p.fraction * 1000))
        self.refine_label.setText(f"Refining: {p.stage}")

    def _on_refined(self, request: RefineRequest, value: Any) -> None:
        if value is CANCELLED:
            self.last_outcome = "cancelled"
            self.refine_label.setText("Refine cancelled: nothing changed.")
            return
        state = request.state
        change = state.merge(value, request.crop, request.slab, overwrite=request.overwrite)
        start, stop = request.slab
        preview = np.zeros_like(state.layer.data)
        preview[start:stop] = change.merged[start:stop]
        layer = self.viewer.add_labels(
            preview,
            name=f"{state.layer.name} refine preview",
            scale=state.layer.scale,
            translate=state.layer.translate,
            units=state.layer.units,  # else napari warns "Inconsistent units"
            axis_labels=state.layer.axis_labels,
            opacity=0.9,
        )
        layer.colormap = state.layer.colormap
        self._preview = RefinePreview(request, change, value, layer)
        self.last_outcome = "done"
        kept = f", kept {change.kept_edits} of your edited voxels" if change.kept_edits else ""
        self.refine_label.setText(
            f"Preview: {change.n_changed} voxels would change in slices {start}–{stop - 1}{kept}. "
            "Apply or Discard."
        )

    def _on_refine_error(self, exc: BaseException) -> None:
        self.last_outcome = "error"
        self.last_error = exc
        self.refine_label.setText(f"Refine failed: {exc}")
        notify_error(exc)

    def _on_refine_finished(self) -> None:
        self.worker = None
        self.refine_progress.setVisible(False)
        self._set_preview_buttons()

    def _set_preview_buttons(self) -> None:
        has = self._preview is not None
        busy = self.worker is not None
        self.apply_button.setEnabled(has and not busy)
        self.discard_button.setEnabled(has and not busy)
        self.refine_cancel.setEnabled(busy)
        self.refine_button.setEnabled(not busy)
        self.trim_button.setEnabled(not busy)

    def apply_preview(self) -> int:
        """Merge the previewed refine into the layer (one undo step)."""
        if self._preview is None:
            raise SpinesegError("nothing to apply: run Refine first")
        pv, (start, stop) = self._preview, self._preview.request.slab
        n = pv.state.apply_refine(pv.change, pv.refined, pv.request.crop, pv.request.slab)
        self.discard_preview()
        return self._after_edit(n, f"Refine slices {start}–{stop - 1}")

    def discard_preview(self) -> None:
        pv, self._preview = self._preview, None
        if pv is not None:
            if pv.layer in self.viewer.layers:
                self.viewer.layers.remove(pv.layer)
            # the "Preview ... Apply or Discard" line is stale now (Apply writes its own)
            self.refine_label.setText("Preview discarded: nothing changed.")
        self._set_preview_buttons()

    @property
    def preview_layer(self) -> Any:
        """The temporary layer of the refine preview (None when there is none)."""
        return None if self._preview is None else self._preview.layer

    def cancel(self) -> None:
        if self._cancel is not None and self.worker is not None:
            self._cancel.cancel()
            self.refine_label.setText("Cancelling...")

    def wait(self, timeout: float = 600.0) -> str:
        """Process Qt events until the refine worker ends; returns its outcome."""
        wait_for(lambda: self.worker is not None, timeout, "refine")
        return self.last_outcome
