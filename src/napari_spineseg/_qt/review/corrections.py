"""The Correct section's actions: the class to paint and the tools (one undo step each)."""

from __future__ import annotations

from ...correction.review import LayerReview
from ...errors import SpinesegError


class CorrectionActions:
    """Paint and the correction tools (a section of ``ReviewWidget``): each action is
    one undo step on the current layer's review state, then the panel is refreshed."""

    def class_value(self) -> int:
        state = self.state
        if state is None:
            raise SpinesegError("no segmentation to correct: run the Segment widget first")
        value = self.class_combo.currentData()
        return int(value if value is not None else next(iter(state.classes)))

    def set_class(self, value_or_name: int | str) -> None:
        """Pick the class to paint (value or name); sets the layer's selected label."""
        state = self._require()
        for v, name in state.classes.items():
            if value_or_name in (v, name):
                self.class_combo.setCurrentIndex(self.class_combo.findData(v))
                return
        raise SpinesegError(f"no class {value_or_name!r} in {state.layer.name} ({state.classes})")

    def start_painting(self) -> None:
        state = self._require()
        self._on_class()
        self.viewer.layers.selection.active = state.layer
        state.layer.mode = "paint"

    def _require(self) -> LayerReview:
        state = self.state
        if state is None:
            raise SpinesegError("no segmentation to review: run the Segment widget first")
        return state

    def _after_edit(self, n: int, what: str) -> int:
        self._update_panel()
        self.refine_label.setText(f"{what}: {n} voxels changed (Ctrl+Z undoes it).")
        return n

    def interpolate(self, slice_a: int, slice_b: int) -> int:
        state = self._require()
        return self._after_edit(
            state.interpolate(self.class_value(), slice_a, slice_b), "Interpolate"
        )

    def remove_small(self, min_voxels: int) -> int:
        state = self._require()
        return self._after_edit(state.remove_small(self.class_value(), min_voxels), "Remove small")

    def fill_holes(self, mode: str = "2d") -> int:
        state = self._require()
        return self._after_edit(state.fill_holes(self.class_value(), mode), "Fill holes")

    def trim(self, slab: tuple[int, int]) -> int:
        state = self._require()
        return self._after_edit(state.trim(slab), f"Trim slices {slab[0]}–{slab[1] - 1}")
