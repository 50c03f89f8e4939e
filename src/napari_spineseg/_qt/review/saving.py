"""Save, Save as, Save all (asking before replacing a file this session did not write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from ...correction.review import LayerReview
from ...errors import SpinesegError
from .panel import unwrap


class SaveActions:
    """The Save section (a section of ``ReviewWidget``): saves go through each layer's
    :meth:`LayerReview.save`; ``prompt_replace`` is asked first when it would replace a
    file this session did not write."""

    def save(self, path: str | Path | None = None, layer: Any = None) -> Path | None:
        state = self.states.get(id(unwrap(layer))) if layer is not None else self._require()
        if state is None:
            raise SpinesegError(
                f"layer {getattr(layer, 'name', layer)!r} is not a reviewed result"
            )
        written = self._save_state(state, path)
        if written is None:
            self.save_label.setText("Not saved: the existing file was kept.")
            return None
        self.save_label.setText(f"Saved {written} (+ .json).")
        self._update_edits_label()
        return written

    def _save_state(self, state: LayerReview, path: str | Path | None = None) -> Path | None:
        """Save, asking first before replacing a file this session did not write."""
        existing = state.needs_confirmation(path)
        if existing is not None and not self.prompt_replace(
            f"{existing} exists and was not written in this session (a reference mask?). "
            "Replace it? Its previous version is kept under .spineseg-history/."
        ):
            return None
        return state.save(path)

    def save_all(self) -> list[Path]:
        out = [p for st in list(self.states.values()) if (p := self._save_state(st))]
        self.save_label.setText(
            ("Saved " + ", ".join(p.name for p in out) + " (+ .json).")
            if out
            else "Nothing saved."
        )
        self._update_edits_label()
        return out

    def _save_as_dialog(self) -> None:
        state = self._require()
        try:
            start = str(state.default_path())
        except SpinesegError:
            start = ""
        path, _ = QFileDialog.getSaveFileName(self, "Save mask", start, "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save(path)
