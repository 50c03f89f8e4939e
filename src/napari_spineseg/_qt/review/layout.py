"""The Review panel's layout: five group boxes, top to bottom, in the order a reviewer works.

Result (layer, per-class summary, area sparkline), Slices (the QC table), and, in a
splitter below it so the table can take any height, the tools: Correct, Crop and refine,
Save. Only widgets and their signal connections are made here; what the buttons do is in
the sibling modules (:mod:`.panel`, :mod:`.corrections`, :mod:`.refine`, :mod:`.saving`).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..slice_table_model import SliceTableModel
from .sparkline import Sparkline

#: rows of the slice table visible at least
TABLE_ROWS = 10


class ReviewLayout:
    """Builds the widgets of :class:`~napari_spineseg._qt.review_widget.ReviewWidget`."""

    def _build(self) -> None:
        body = QWidget()
        root = QVBoxLayout(body)
        self.setWidget(body)
        self.setWidgetResizable(True)
        self.setMinimumWidth(380)
        root.addWidget(self._build_result())
        tools = QWidget()
        tools_layout = QVBoxLayout(tools)
        tools_layout.setContentsMargins(0, 0, 0, 0)
        # the table and the tools share a splitter: drag its handle to resize the table
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self._build_slices())
        # the tools scroll on their own, so the splitter can give the table any height
        tools_area = QScrollArea()
        tools_area.setWidget(tools)
        tools_area.setWidgetResizable(True)
        tools_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        tools_area.setMinimumHeight(120)
        self.splitter.addWidget(tools_area)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        root.addWidget(self.splitter, 1)
        for box in (self._build_correct(), self._build_refine(), self._build_save()):
            tools_layout.addWidget(box)
        self._set_preview_buttons()

    def _build_result(self) -> QGroupBox:
        """Which result, its classes' size and extent, the area profile."""
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
        return box

    def _build_slices(self) -> QGroupBox:
        """The per-slice QC table and the Mark reviewed buttons."""
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
        # a lazy model: cells are formatted when shown, not one item per cell per refresh
        self.table_model = SliceTableModel()
        self.table_view = view = QTableView()
        view.setModel(self.table_model)
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        view.verticalHeader().setVisible(False)
        # at least TABLE_ROWS rows visible; the splitter below the box makes it taller
        rows_px = TABLE_ROWS * view.verticalHeader().defaultSectionSize()
        view.setMinimumHeight(rows_px + 30)
        view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        # every column visible: no horizontal scrollbar, the Flags column takes the rest
        view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        view.setWordWrap(False)
        header = view.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        view.clicked.connect(lambda index: self._on_row_clicked(index.row()))
        # arrow keys (and any other way the current row moves) move the viewer too
        view.selectionModel().currentRowChanged.connect(
            lambda cur, prev: (
                self._on_row_clicked(cur.row())
                if cur.isValid() and cur.row() != prev.row()
                else None
            )
        )
        lay.addWidget(view)
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
        return box

    def _build_correct(self) -> QGroupBox:
        """The class to paint and the correction tools (one undo step each)."""
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
        return box

    def _build_refine(self) -> QGroupBox:
        """Crop and refine a slab: slices, margin, Trim / Refine / Apply / Discard."""
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
        return box

    def _build_save(self) -> QGroupBox:
        """Save, Save as, Save all and the last save's outcome."""
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
        return box
