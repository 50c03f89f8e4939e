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
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..correction.review import LayerReview, is_reviewable, spineseg_meta
from ..errors import SpinesegError
from ..jobs import CANCELLED, refine_job
from ..options import RunOptions
from ..progress import CancelToken, Progress
from .workers import notify_error, start_worker, wait_for

if TYPE_CHECKING:  # pragma: no cover
    import napari

FLAG_LABELS = {
    "empty": "gap",
    "lesion_outside_cord": "lesion outside cord",
    "extra_components": "extra components",
    "area_jump": "area jump",
    "low_confidence": "low confidence",
}
DEBOUNCE_MS = 200
#: rows of the slice table visible at least
TABLE_ROWS = 10
AUTOSAVE_POLL_MS = 2000


def ask_unsaved(parent: QWidget | None, title: str, text: str) -> str:
    """Default unsaved-edits prompt: a Save / Discard / Cancel dialog."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    box.setStandardButtons(
        QMessageBox.StandardButton.Save
        | QMessageBox.StandardButton.Discard
        | QMessageBox.StandardButton.Cancel
    )
    box.setDefaultButton(QMessageBox.StandardButton.Save)
    answer = box.exec()
    return {
        QMessageBox.StandardButton.Save: "save",
        QMessageBox.StandardButton.Discard: "discard",
    }.get(QMessageBox.StandardButton(answer), "cancel")


def ask_replace(parent: QWidget | None, text: str) -> bool:
    """Default replace prompt: Replace / Cancel (Cancel is the default)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Replace a mask?")
    box.setText(text)
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    return box.clickedButton() is replace


def ask_recovery(parent: QWidget | None, text: str) -> str:
    """Default recovery prompt: Restore / Discard / Not now."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Recover unsaved edits?")
    box.setText(text)
    restore = box.addButton("Restore", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton("Not now", QMessageBox.ButtonRole.RejectRole)
    box.exec()
    clicked = box.clickedButton()
    return "restore" if clicked is restore else "discard" if clicked is discard else "ignore"


class Sparkline(QWidget):
    """Cross-sectional area along the cord (one bar per slice, superior on the left)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values = np.zeros(0)
        self.flagged = np.zeros(0, bool)
        self.current: int | None = None
        #: called with the slice index of a clicked bar
        self.on_click: Callable[[int], None] | None = None
        self.setMinimumHeight(56)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Cord cross-sectional area (mm²) per slice, superior (left) to inferior; "
            "click a bar to show that slice"
        )
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def slice_at(self, x: float) -> int | None:
        """The slice whose bar is at ``x`` pixels from the left (None when empty)."""
        n = self.values.size
        if n == 0 or self.width() <= 0:
            return None
        return int(np.clip(x * n / self.width(), 0, n - 1))

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        index = self.slice_at(event.position().x())
        if index is not None and self.on_click is not None:
            self.on_click(index)
        super().mousePressEvent(event)

    def set_data(self, values: np.ndarray, flagged: np.ndarray, current: int | None) -> None:
        self.values = np.asarray(values, float)
        self.flagged = np.asarray(flagged, bool)
        self.current = current
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        n = self.values.size
        w, h = self.width(), self.height()
        top = 14
        p.setPen(QColor(200, 200, 200))
        vmax = float(np.nanmax(self.values)) if n and np.isfinite(self.values).any() else 0.0
        if n:  # nothing at all before the first result
            p.drawText(4, 11, f"CSA, max {vmax:.1f} mm²" if vmax else "CSA: no cord class")
        if n and vmax > 0:
            bw = w / n
            for i, v in enumerate(self.values):
                bh = (h - top - 2) * (v / vmax if np.isfinite(v) else 0)
                color = QColor(230, 80, 80) if self.flagged[i] else QColor(120, 190, 255)
                p.fillRect(QRectF(i * bw, h - bh, max(bw - 0.5, 1.0), bh), color)
            if self.current is not None and 0 <= self.current < n:
                p.setPen(QPen(QColor(255, 255, 0), 2))
                x = (self.current + 0.5) * bw
                p.drawLine(int(x), top, int(x), h)
        p.end()


#: Display axes (I, P, L convention, docs/architecture.md): letters at index 0 and at the end
_AXIS_LETTERS = (("S", "I"), ("A", "P"), ("R", "L"))
_VIEW_NAMES = {(1, 2): "axial", (0, 1): "sagittal", (0, 2): "coronal"}
ORIENTATION_OVERLAY = "spineseg_orientation"


def orientation_text(order: tuple[int, ...], ndisplay: int) -> str:
    """The canvas orientation line for napari's dims order, e.g. axial
    ``"axial   ↑A  ↓P  ←R  →L"``; empty in 3D display or for fewer than 3 axes."""
    if ndisplay != 2 or len(order) < 3:
        return ""
    lead = len(order) - 3
    row, col = (int(a) - lead for a in order[-2:])
    if min(row, col) < 0:
        return ""
    (top, bottom), (left, right) = _AXIS_LETTERS[row], _AXIS_LETTERS[col]
    view = _VIEW_NAMES.get(tuple(sorted((row, col))), "")
    return f"{view}   ↑{top}  ↓{bottom}  ←{left}  →{right}".strip()


def _unwrap(obj: Any) -> Any:
    """The object behind napari's plugin proxy (states are keyed by the real layer)."""
    return getattr(obj, "__wrapped__", obj)


def _same_run(a: Any, b: Any) -> bool:
    """Two result layers of one Segment run (their outputs share one provenance record)."""
    pa = (spineseg_meta(a) or {}).get("provenance")
    pb = (spineseg_meta(b) or {}).get("provenance")
    return pa is not None and pa is pb


DOCK_PROPERTY = "napari_spineseg_dock"


def tabify_with_siblings(widget: QWidget) -> bool:
    """Put the dock holding ``widget`` in one tab stack with the other napari-spineseg
    dock in its area (Segment + Review), whichever way they were opened: from the
    Plugins menu napari stacks them, and the Segment form squeezes the Review panel to
    a sliver. Returns True when it tabified."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    main = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(main, QMainWindow):
        return False
    area = main.dockWidgetArea(dock)
    for other in main.findChildren(QDockWidget):
        if other is dock or other.isFloating() or main.dockWidgetArea(other) != area:
            continue
        inner = other.widget()
        marked = inner is not None and (
            inner.property(DOCK_PROPERTY)
            or any(w.property(DOCK_PROPERTY) for w in inner.findChildren(QWidget))
        )
        if marked and dock not in main.tabifiedDockWidgets(other):
            main.tabifyDockWidget(other, dock)
            return True
    return False


class DockTabber(QObject):
    """Event filter: on the first show of a napari-spineseg widget (docked by then),
    tabify it with its sibling (see :func:`tabify_with_siblings`)."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        widget.setProperty(DOCK_PROPERTY, True)
        self._done = False
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if not self._done and event.type() == QEvent.Type.Show:
            self._done = True
            target = weakref.ref(obj)
            QTimer.singleShot(0, lambda: (w := target()) is not None and tabify_with_siblings(w))
        return False


class _CloseGuard(QObject):
    """Event filter on napari's main window: ask about unsaved edits before it closes."""

    def __init__(self, widget: ReviewWidget) -> None:
        super().__init__(widget)
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.Type.Close and not self.widget.confirm_close():
            event.ignore()
            return True
        return False


class ReviewWidget(QScrollArea):
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
        self._preview: dict[str, Any] | None = None
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

    # ================================================================== layout
    def _build(self) -> None:
        body = QWidget()
        root = QVBoxLayout(body)
        self.setWidget(body)
        self.setWidgetResizable(True)
        self.setMinimumWidth(380)

        # --- result
        box = QGroupBox("Result")
        lay = QVBoxLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The segmentation (Labels layer) to review")
        self.layer_combo.currentIndexChanged.connect(lambda *_: self._show_current())
        lay.addWidget(self.layer_combo)
        self.summary_label = QLabel("No segmentation yet: run the Segment widget.")
        self.summary_label.setWordWrap(True)
        lay.addWidget(self.summary_label)
        self.sparkline = Sparkline()
        self.sparkline.on_click = self.go_to_slice  # clicking a bar shows that slice
        lay.addWidget(self.sparkline)
        root.addWidget(box)

        # --- slice table
        box = QGroupBox("Slices (axial, superior first)")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.sort_combo = QComboBox()
        self.sort_combo.addItem("Most suspicious first", "severity")
        self.sort_combo.addItem("Least confident first", "confidence")
        self.sort_combo.addItem("Superior to inferior", "slice")
        self.sort_combo.currentIndexChanged.connect(lambda *_: self._fill_table())
        self.only_flagged = QCheckBox("Only flagged")
        self.only_flagged.setChecked(True)
        self.only_flagged.toggled.connect(lambda *_: self._fill_table())
        row.addWidget(self.sort_combo, 1)
        row.addWidget(self.only_flagged)
        lay.addLayout(row)
        self.table_widget = QTableWidget(0, 0)
        self.table_widget.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table_widget.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_widget.verticalHeader().setVisible(False)
        # at least TABLE_ROWS rows visible; the splitter below the box makes it taller
        rows_px = TABLE_ROWS * self.table_widget.verticalHeader().defaultSectionSize()
        self.table_widget.setMinimumHeight(rows_px + 30)
        self.table_widget.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        # every column visible: no horizontal scrollbar, the Flags column takes the rest
        self.table_widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table_widget.setWordWrap(False)
        self.table_widget.cellClicked.connect(lambda r, c: self._on_row_clicked(r))
        # arrow keys (and any other way the current row moves) move the viewer too
        self.table_widget.currentCellChanged.connect(
            lambda r, c, pr, pc: self._on_row_clicked(r) if r >= 0 and r != pr else None
        )
        lay.addWidget(self.table_widget)
        row = QHBoxLayout()
        self.review_button = QPushButton("Mark selected reviewed")
        self.review_button.clicked.connect(lambda: self.mark_reviewed(self._selected_slices()))
        self.unreview_button = QPushButton("Unmark")
        self.unreview_button.clicked.connect(
            lambda: self.mark_reviewed(self._selected_slices(), False)
        )
        row.addWidget(self.review_button, 1)
        row.addWidget(self.unreview_button)
        lay.addLayout(row)
        # the table and the tools share a splitter: drag its handle to resize the table
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(box)
        tools = QWidget()
        root_outer, root = root, QVBoxLayout(tools)
        root.setContentsMargins(0, 0, 0, 0)
        # the tools scroll on their own, so the splitter can give the table any height
        tools_area = QScrollArea()
        tools_area.setWidget(tools)
        tools_area.setWidgetResizable(True)
        tools_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        tools_area.setMinimumHeight(120)
        self.splitter.addWidget(tools_area)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        root_outer.addWidget(self.splitter, 1)

        # --- correct
        box = QGroupBox("Correct")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.class_combo = QComboBox()
        self.class_combo.setToolTip(
            "Class painted by napari's brush and fill, and used by the tools"
        )
        self.class_combo.currentIndexChanged.connect(lambda *_: self._on_class())
        self.paint_button = QPushButton("Paint")
        self.paint_button.setToolTip(
            "Select the layer in paint mode (napari: 2=paint, 1=erase, Ctrl+Z=undo)"
        )
        self.paint_button.clicked.connect(lambda: self.start_painting())
        row.addWidget(self.class_combo, 1)
        row.addWidget(self.paint_button)
        form.addRow("Class", row)
        self.edits_label = QLabel("No edits.")
        self.edits_label.setWordWrap(True)
        form.addRow("Edits", self.edits_label)
        row = QHBoxLayout()
        self.interp_a = QSpinBox()
        self.interp_b = QSpinBox()
        self.interp_button = QPushButton("Interpolate")
        self.interp_button.setToolTip(
            "Shape-based interpolation of the class between two corrected slices"
        )
        self.interp_button.clicked.connect(
            lambda: self._guard(
                lambda: self.interpolate(self.interp_a.value(), self.interp_b.value())
            )
        )
        row.addWidget(QLabel("slices"))
        row.addWidget(self.interp_a)
        row.addWidget(QLabel("to"))
        row.addWidget(self.interp_b)
        row.addWidget(self.interp_button, 1)
        form.addRow("Fill gap", row)
        row = QHBoxLayout()
        self.min_voxels = QSpinBox()
        self.min_voxels.setRange(1, 1_000_000)
        self.min_voxels.setValue(10)
        self.min_voxels.setSuffix(" vox")
        self.remove_button = QPushButton("Remove smaller")
        self.remove_button.clicked.connect(
            lambda: self._guard(lambda: self.remove_small(self.min_voxels.value()))
        )
        row.addWidget(self.min_voxels)
        row.addWidget(self.remove_button, 1)
        form.addRow("Specks", row)
        row = QHBoxLayout()
        self.holes_mode = QComboBox()
        self.holes_mode.addItem("per slice (2D)", "2d")
        self.holes_mode.addItem("in 3D", "3d")
        self.holes_mode.addItem("both", "both")
        self.holes_button = QPushButton("Fill holes")
        self.holes_button.clicked.connect(
            lambda: self._guard(lambda: self.fill_holes(self.holes_mode.currentData()))
        )
        row.addWidget(self.holes_mode)
        row.addWidget(self.holes_button, 1)
        form.addRow("Holes", row)
        root.addWidget(box)

        # --- crop and refine
        box = QGroupBox("Crop and refine a slab")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.slab_first = QSpinBox()
        self.slab_last = QSpinBox()
        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.setToolTip(
            "The poor slices at the superior or inferior end of the cord"
        )
        self.suggest_button.clicked.connect(lambda: self.suggest_slab())
        row.addWidget(self.slab_first, 1)
        row.addWidget(QLabel("to"))
        row.addWidget(self.slab_last, 1)
        row.addWidget(self.suggest_button)
        form.addRow("Slices", row)
        row = QHBoxLayout()
        self.margin = QSpinBox()
        self.margin.setRange(0, 64)
        self.margin.setValue(8)
        self.margin.setSuffix(" slices")
        self.margin.setToolTip("Context above and below the slab given to the model (not changed)")
        self.overwrite = QCheckBox("overwrite my edits")
        row.addWidget(self.margin)
        row.addWidget(self.overwrite)
        form.addRow("Margin", row)
        row = QHBoxLayout()
        self.trim_button = QPushButton("Trim")
        self.trim_button.setToolTip("Clear these slices")
        self.trim_button.clicked.connect(lambda: self._guard(lambda: self.trim(self.slab())))
        self.refine_button = QPushButton("Refine...")
        self.refine_button.setToolTip("Re-run the model on these slices and preview the result")
        self.refine_button.clicked.connect(lambda: self._guard(lambda: self.refine(self.slab())))
        self.apply_button = QPushButton("Apply")
        self.apply_button.clicked.connect(lambda: self._guard(self.apply_preview))
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(lambda: self.discard_preview())
        self.refine_cancel = QPushButton("Cancel")
        self.refine_cancel.clicked.connect(lambda: self.cancel())
        for b in (
            self.trim_button,
            self.refine_button,
            self.apply_button,
            self.discard_button,
            self.refine_cancel,
        ):
            row.addWidget(b)
        form.addRow(row)
        self.refine_progress = QProgressBar()
        self.refine_progress.setRange(0, 1000)
        self.refine_progress.setVisible(False)
        form.addRow(self.refine_progress)
        self.refine_label = QLabel("")
        self.refine_label.setWordWrap(True)
        form.addRow(self.refine_label)
        root.addWidget(box)

        # --- save
        box = QGroupBox("Save")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip(
            "Beside the image, SCT file name (<image><suffix>.nii.gz + .json)"
        )
        self.save_button.clicked.connect(lambda: self._guard(lambda: self.save()))
        self.save_as_button = QPushButton("Save as...")
        self.save_as_button.clicked.connect(lambda: self._guard(self._save_as_dialog))
        self.save_all_button = QPushButton("Save all")
        self.save_all_button.clicked.connect(lambda: self._guard(lambda: self.save_all()))
        row.addWidget(self.save_button)
        row.addWidget(self.save_as_button)
        row.addWidget(self.save_all_button)
        lay.addLayout(row)
        self.save_label = QLabel("")
        self.save_label.setWordWrap(True)
        lay.addWidget(self.save_label)
        root.addWidget(box)
        self._set_preview_buttons()

    # ================================================================== binding
    def _bind(self, layer: Any) -> LayerReview | None:
        layer = _unwrap(layer)
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
        layer = _unwrap(event.value)
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

    def _on_removed(self, event) -> None:
        layer = _unwrap(event.value)
        state = self.states.get(id(layer))
        if state is None:
            return
        if self._preview is not None and self._preview.get("state") is state:
            self.discard_preview()
        state.refresh(table=False)
        if state.dirty and not self._closing:
            answer = self.prompt(
                "Unsaved edits",
                f"'{layer.name}' has unsaved edits ({state.refresh(table=False).changed_voxels} "
                "voxels changed). Save them before closing the layer?",
            )
            if answer == "cancel":
                self._removing[id(layer)] = event.index
                QTimer.singleShot(0, lambda: self.viewer.layers.insert(event.index, layer))
                return
            if answer == "save":
                try:
                    saved = self._save_state(state)
                except SpinesegError as exc:
                    self._notify(exc)
                    saved = None
                if saved is None:
                    self._removing[id(layer)] = event.index
                    QTimer.singleShot(0, lambda: self.viewer.layers.insert(event.index, layer))
                    return
            elif state.autosaver is not None:
                state.autosaver.discard()
        self.states.pop(id(layer), None)
        self._pair_cord_layers()
        self._update_layer_combo()

    def _guard_viewer_close(self) -> None:
        """``viewer.close()`` from a script: ask once about unsaved edits, and keep the
        viewer open on Cancel (napari removes the layers before closing the window, so
        the window's close event comes too late to say no)."""
        viewer = getattr(self.viewer, "__wrapped__", self.viewer)  # plugins get a proxy
        if getattr(vars(viewer).get("close"), "_spineseg_guarded", False):
            return
        original = getattr(viewer, "close", None)
        if original is None:
            return
        confirm = weakref.WeakMethod(self.confirm_close)

        def close(*args: Any, **kwargs: Any) -> Any:
            fn = confirm()
            if fn is not None and not fn():
                return None
            return original(*args, **kwargs)

        close._spineseg_guarded = True  # type: ignore[attr-defined]
        # a viewer type that forbids it keeps the window close guard only
        with contextlib.suppress(AttributeError, TypeError):
            object.__setattr__(viewer, "close", close)

    def _raise_dock(self) -> None:
        """Bring this panel's tab forward (a result to review has arrived)."""
        from qtpy.QtWidgets import QDockWidget

        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is not None:
            dock.raise_()

    def _install_close_guard(self) -> None:
        window = self.window()
        guarded = self._guarded_window() if self._guarded_window is not None else None
        if window is self or window is None or window is guarded:
            return
        self._guarded_window = weakref.ref(window)
        window.installEventFilter(_CloseGuard(self))

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        self._install_close_guard()

    def confirm_close(self) -> bool:
        """Ask about every layer with unsaved edits; False when the user cancels.

        Once confirmed, the layer removals of the closing viewer ask nothing more."""
        if self._closing:
            return True
        for state in list(self.states.values()):
            state.refresh(table=False)
            if not state.dirty:
                continue
            answer = self.prompt(
                "Unsaved edits",
                f"'{state.layer.name}' has unsaved edits. Save them before closing napari?",
            )
            if answer == "cancel":
                return False
            if answer == "save":
                try:
                    if self._save_state(state) is None:
                        return False  # the user would not replace a file: stay open
                except SpinesegError as exc:
                    self._notify(exc)
                    return False
            else:
                state.dirty = False
                if state.autosaver is not None:
                    state.autosaver.discard()
        self._closing = True
        QTimer.singleShot(0, self._end_closing)
        return True

    def _end_closing(self) -> None:
        self._closing = False

    def _offer_recovery(self, state: LayerReview) -> None:
        try:
            entries = state.recoveries()
        except Exception:  # a broken cache must never block reviewing
            return
        if not entries:
            return
        entry = entries[0]
        answer = self.prompt_recovery(
            f"Unsaved edits of '{state.layer.name}' from {entry.saved_at} "
            f"({entry.n_edits} edits) were found for {Path(state.source_path).name}. "
            "Restore them (one undo step)?"
        )
        from .. import correction

        if answer == "restore":
            labels, _ = correction.restore(entry)
            n = state.restore_labels(labels)
            self._notify_info(f"Restored {n} voxels of unsaved edits into '{state.layer.name}'.")
        elif answer == "discard":
            correction.discard(entry)

    # ================================================================== current
    @property
    def busy(self) -> bool:
        """Panel work is still pending (a debounced refresh, a result being bound)."""
        return self._debounce.isActive() or bool(getattr(self, "_to_bind", None))

    @property
    def state(self) -> LayerReview | None:
        """The review state of the layer picked in the panel."""
        key = self.layer_combo.currentData()
        return self.states.get(key) if key is not None else None

    def select_layer(self, layer: Any) -> LayerReview:
        layer = _unwrap(layer)
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
        want = id(_unwrap(select)) if select is not None else current
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
            self.table_widget.setRowCount(0)
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
        if state is None:
            return
        t = state.table
        order = t.order(
            self.sort_combo.currentData() or "severity", only_flagged=self.only_flagged.isChecked()
        )
        rows = t.rows(order)
        names = [t.classes[v] for v in t.classes]
        headers = ["Slice", "Flags", "Conf."] + [f"{n} mm²" for n in names] + ["Comp.", "Reviewed"]
        tw = self.table_widget
        tw.setUpdatesEnabled(False)
        header = tw.horizontalHeader()
        # no per-item column measuring while filling (ResizeToContents re-measures on
        # every setItem): fixed while filling, fitted once at the end
        header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        tw.clear()
        tw.setColumnCount(len(headers))
        tw.setHorizontalHeaderLabels(headers)
        tw.setRowCount(len(rows))
        flagged_color = QColor(255, 140, 120)
        for r, row in enumerate(rows):
            conf = row["confidence"]
            cells = [
                str(row["slice"]),
                ", ".join(FLAG_LABELS.get(f, f) for f in row["flags"]) or "–",
                "–" if np.isnan(conf) else f"{conf:.2f}",
                *[f"{row['area'][n]:.1f}" for n in names],
                str(sum(row["components"].values())),
                "yes" if row["reviewed"] else "",
            ]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, row["slice"])
                if row["flags"] and not row["reviewed"]:
                    item.setForeground(flagged_color)
                tw.setItem(r, c, item)
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # Flags: the rest
        tw.setUpdatesEnabled(True)

    def table_slices(self) -> list[int]:
        """The slices in the table, top to bottom (as shown)."""
        out = []
        for r in range(self.table_widget.rowCount()):
            item = self.table_widget.item(r, 0)
            out.append(int(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def _selected_slices(self) -> list[int]:
        rows = sorted({i.row() for i in self.table_widget.selectedIndexes()})
        return [int(self.table_widget.item(r, 0).data(Qt.ItemDataRole.UserRole)) for r in rows]

    # ================================================================== events
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
        overlays = getattr(getattr(self.viewer, "canvas", None), "overlays", None)
        if overlays is None:
            return
        text = ""
        if any(spineseg_meta(ly) for ly in self.viewer.layers):
            text = orientation_text(tuple(self.viewer.dims.order), self.viewer.dims.ndisplay)
        overlay = overlays.get(ORIENTATION_OVERLAY) if hasattr(overlays, "get") else None
        if overlay is None:
            from napari.components.overlays import TextOverlay

            overlay = TextOverlay(position="bottom_left", font_size=12, color="yellow")
            try:
                overlays[ORIENTATION_OVERLAY] = overlay
            except (TypeError, ValueError, KeyError):
                return
        overlay.text = text
        overlay.visible = bool(text)

    def _on_row_clicked(self, row: int) -> None:
        item = self.table_widget.item(row, 0)
        if item is not None:
            self.go_to_slice(int(item.data(Qt.ItemDataRole.UserRole)))

    def _on_class(self) -> None:
        state = self.state
        value = self.class_combo.currentData()
        if state is not None and value is not None:
            state.layer.selected_label = int(value)

    # ================================================================== actions
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

    def trim(self, slab: tuple[int, int]) -> int:
        state = self._require()
        return self._after_edit(state.trim(slab), f"Trim slices {slab[0]}–{slab[1] - 1}")

    # ---------------------------------------------------------------- refine
    def refine(
        self, slab: tuple[int, int], margin: int | None = None, overwrite: bool | None = None
    ):
        """Re-run the task on ``slab`` (+ margin) on a worker; a preview layer follows."""
        from ..correction import slab_with_margin

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
        ctx = {
            "state": state,
            "slab": (int(slab[0]), int(slab[1])),
            "crop": crop,
            "overwrite": overwrite,
        }
        self.worker = start_worker(
            refine_job,
            state.volume,
            RunOptions.from_dict(state.run),
            state.suffix or "",
            crop,
            self._cancel,
            on_progress=self._on_refine_progress,
            on_returned=lambda value: self._on_refined(ctx, value),
            on_errored=self._on_refine_error,
            on_finished=self._on_refine_finished,
        )
        self._set_preview_buttons()
        return self.worker

    def _on_refine_progress(self, p: Progress) -> None:
        self.refine_progress.setValue(int(p.fraction * 1000))
        self.refine_label.setText(f"Refining: {p.stage}")

    def _on_refined(self, ctx: dict, value: Any) -> None:
        if value is CANCELLED:
            self.last_outcome = "cancelled"
            self.refine_label.setText("Refine cancelled: nothing changed.")
            return
        state = ctx["state"]
        change = state.merge(value, ctx["crop"], ctx["slab"], overwrite=ctx["overwrite"])
        start, stop = ctx["slab"]
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
        self._preview = {**ctx, "change": change, "refined": value, "layer": layer}
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
        pv = self._preview
        n = pv["state"].apply_refine(pv["change"], pv["refined"], pv["crop"], pv["slab"])
        self.discard_preview()
        return self._after_edit(n, f"Refine slices {pv['slab'][0]}–{pv['slab'][1] - 1}")

    def discard_preview(self) -> None:
        pv, self._preview = self._preview, None
        if pv is not None:
            if pv["layer"] in self.viewer.layers:
                self.viewer.layers.remove(pv["layer"])
            # the "Preview ... Apply or Discard" line is stale now (Apply writes its own)
            self.refine_label.setText("Preview discarded: nothing changed.")
        self._set_preview_buttons()

    @property
    def preview_layer(self):
        return None if self._preview is None else self._preview["layer"]

    def cancel(self) -> None:
        if self._cancel is not None and self.worker is not None:
            self._cancel.cancel()
            self.refine_label.setText("Cancelling...")

    def wait(self, timeout: float = 600.0) -> str:
        """Process Qt events until the refine worker ends; returns its outcome."""
        wait_for(lambda: self.worker is not None, timeout, "refine")
        return self.last_outcome

    # ---------------------------------------------------------------- saving
    def save(self, path: str | Path | None = None, layer: Any = None) -> Path | None:
        state = self.states.get(id(_unwrap(layer))) if layer is not None else self._require()
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

    # ---------------------------------------------------------------- autosave
    def autosave(self, force: bool = False, block: bool = False) -> list[threading.Thread]:
        """Write due recovery files off the GUI thread (copies are taken here)."""
        if any(st.history_moved() for st in self.states.values()):
            self._refresh_current()  # undo/redo of a hidden layer: the panel follows too
        threads = []
        for state in list(self.states.values()):
            snap = state.autosave_snapshot(force=force)
            if snap is None:
                continue
            t = threading.Thread(target=state.autosave_write, args=snap, daemon=True)
            t.start()
            threads.append(t)
        if block:
            for t in threads:
                t.join()
        return threads

    # ---------------------------------------------------------------- errors
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
