"""The Review panel's view of the current result: layer picker, summary, sparkline, slice
table and the slice the viewer shows. Reads the layer's review state; edits nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QHeaderView

from ...correction.review import LayerReview
from ...errors import SpinesegError


def unwrap(obj: Any) -> Any:
    """The object behind napari's plugin proxy (states are keyed by the real layer)."""
    return getattr(obj, "__wrapped__", obj)


class ReviewPanel:
    """What the Review panel shows of the current result (a section of ``ReviewWidget``).

    Reads the widget's ``viewer``, ``states`` and the widgets made by ``layout``.
    """

    @property
    def state(self) -> LayerReview | None:
        """The review state of the layer picked in the panel."""
        key = self.layer_combo.currentData()
        return self.states.get(key) if key is not None else None

    def select_layer(self, layer: Any) -> LayerReview:
        layer = unwrap(layer)
        state = self._bind(layer)
        if state is None:
            raise SpinesegError(
                f"layer {layer.name!r} is not a segmentation napari-spineseg knows"
            )
        self._update_layer_combo(select=layer)
        return state

    def _on_layer_renamed(self, event: Any = None) -> None:
        self._update_layer_combo()

    def _update_layer_combo(self, select: Any = None) -> None:
        current = self.layer_combo.currentData()
        want = id(unwrap(select)) if select is not None else current
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for key, st in self.states.items():
            self.layer_combo.addItem(str(st.layer.name), key)
        idx = self.layer_combo.findData(want)
        self.layer_combo.setCurrentIndex(idx if idx >= 0 else (0 if self.states else -1))
        self.layer_combo.blockSignals(False)
        self._show_current()

    def _show_current(self) -> None:
        state = self.state
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        if state is not None:
            for v, name in state.classes.items():
                self.class_combo.addItem(f"{v}: {name}", v)
            idx = self.class_combo.findData(int(state.layer.selected_label))
            self.class_combo.setCurrentIndex(max(idx, 0))
            n = state.tracker.shape[0]
            for sb in (self.interp_a, self.interp_b, self.slab_first, self.slab_last):
                sb.setRange(0, n - 1)
            if state.needs_cord_partner:  # its cord may have been edited meanwhile
                state.table = state._compute_table(state.table)
        self.class_combo.blockSignals(False)
        self._update_panel()
        if state is not None and self.slab_first.value() == 0 and self.slab_last.value() == 0:
            self.suggest_slab()

    def _update_panel(self) -> None:
        state = self.state
        if state is None:
            self.summary_label.setText("No segmentation yet: run the Segment widget.")
            self.edits_label.setText("No edits.")
            self.sparkline.set_data(np.zeros(0), np.zeros(0, bool), None)
            self.table_model.set_table(None)
            return
        summ = state.summary()
        lines = []
        for s in summ.values():
            if s.first is None:
                lines.append(f"<b>{s.name}</b>: empty")
            else:
                lines.append(
                    f"<b>{s.name}</b>: {s.volume_mm3:.0f} mm³, slices {s.first}–{s.last} "
                    f"({s.length_mm:.0f} mm)"
                )
        if state.needs_cord_partner:
            partner = state.cord_partner() if state.cord_partner is not None else None
            lines.append(
                f"Lesions checked against the cord of <i>{partner.layer.name}</i>."
                if partner is not None
                else "No cord mask on this grid: open the _sc_seg mask to check that "
                "lesions lie in the cord."
            )
        self.summary_label.setText("<br>".join(lines))
        profiles = [s.area_profile for s in summ.values() if s.area_profile is not None]
        csa = np.sum(profiles, axis=0) if profiles else np.zeros(state.tracker.shape[0])
        self.sparkline.set_data(csa, state.table.flagged(), self.current_slice())
        self._update_edits_label()
        self._fill_table()

    def _update_edits_label(self) -> None:
        state = self.state
        if state is None:
            return
        e = state.edits
        if not e.has_edits:
            text = "No edits (the layer equals the model output)."
        else:
            sl = list(e.slices)
            shown = ", ".join(str(s) for s in sl[:12]) + (" ..." if len(sl) > 12 else "")
            per = "; ".join(
                f"{state.classes.get(v, v)} +{e.added.get(v, 0)}/−{e.removed.get(v, 0)}"
                for v in sorted(set(e.added) | set(e.removed))
            )
            text = f"{e.changed_voxels} voxels changed on {len(sl)} slice(s) ({shown}). {per}"
        if state.dirty:
            text += " <i>Unsaved.</i>"
        self.edits_label.setText(text)

    def _fill_table(self) -> None:
        state = self.state
        self.table_model.set_table(
            None if state is None else state.table,
            self.sort_combo.currentData() or "severity",
            self.only_flagged.isChecked(),
        )
        header = self.table_view.horizontalHeader()
        if self.table_model.columnCount() > 1:
            header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # Flags: the rest

    def table_slices(self) -> list[int]:
        """The slices in the table, top to bottom (as shown)."""
        return self.table_model.slices()

    def _selected_slices(self) -> list[int]:
        rows = self.table_view.selectionModel().selectedRows()
        return [self.table_model.slice_at(i.row()) for i in sorted(rows, key=lambda i: i.row())]

    def _on_row_clicked(self, row: int) -> None:
        if 0 <= row < self.table_model.rowCount():
            self.go_to_slice(self.table_model.slice_at(row))

    def _on_class(self) -> None:
        state = self.state
        value = self.class_combo.currentData()
        if state is not None and value is not None:
            state.layer.selected_label = int(value)

    def current_slice(self) -> int | None:
        state = self.state
        if state is None:
            return None
        axis = self.viewer.dims.ndim - 3
        z = self.viewer.dims.point[axis]
        s = round((z - state.layer.translate[-3]) / state.layer.scale[-3])
        return int(np.clip(s, 0, state.tracker.shape[0] - 1))

    def go_to_slice(self, index: int) -> None:
        """Show axial slice ``index`` of the current result (display slice, superior = 0)."""
        state = self.state
        if state is None:
            return
        axis = self.viewer.dims.ndim - 3
        z = state.layer.translate[-3] + int(index) * state.layer.scale[-3]
        self.viewer.dims.set_point(axis, z)
        self._on_dims()

    def mark_reviewed(self, slices, value: bool = True) -> None:
        state = self.state
        if state is None or not len(slices):
            return
        state.table.set_reviewed(slices, value)
        self._update_panel()
