"""The Cohort dock widget: a study's review queue in napari (docs/cohort.md).

A table of cases (subject, session, image, outputs, QC mark, flags, lowest confidence,
status, rater, time spent; sortable) over
:class:`napari_spineseg.study.state.CohortSession`, which keeps the queue in the
derivatives folder. Opening a case replaces the previous case's layers by
the image and its masks (the unsaved-edits prompt of the Review panel comes first), and
docks the Review panel on them: its table, flags, tools and Save button work as for one
image, except that saving writes into the derivatives (same file name, previous version
kept) with the manual-correction entry. Keys (viewer): Alt+→ next, Alt+← previous,
Alt+A approve (saves first when there are edits). Keys (table, as in SCT's QC report):
↑/↓ move, F cycles the row's QC mark (pass → fail → artifact → none), Enter opens it.

The lowest-confidence column is the model's lowest per-slice confidence over the case's
masks, read from their sidecars (:mod:`napari_spineseg.study.confidence`): it sorts as a
number, with blank cells (the model gave no probabilities, or the masks predate the
record) last in either order; ``*`` marks a case corrected since the model wrote it (the
value is the model output's); the tooltip says which class and slice, and the slices
below the threshold.

The rater's name is asked once and remembered for the next sessions (per user). Every
column fits the dock's width: the short ones sized to their contents, the long ones
(flags, rater, image, outputs) sharing the rest, elided, with the full text as tooltip.

Notebook: ``s = napari_spineseg.cohort(viewer, "derivatives/spineseg")`` returns this
widget: ``s.cases``, ``s.open(i)``, ``s.next()``, ``s.previous()``, ``s.save()``,
``s.approve()``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..correction.review import spineseg_meta
from ..errors import SpinesegError
from ..study.state import (
    Case,
    CaseOpenWarning,
    CohortSession,
    next_mark,
    remember_rater,
    remembered_rater,
)
from .session import PLUGIN, REVIEW_WIDGET
from .workers import notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

COHORT_WIDGET = "Cohort review"
COLUMNS = (
    "#",
    "subject",
    "session",
    "status",
    "qc",
    "flags",
    "confidence",
    "rater",
    "time",
    "image",
    "outputs",
)
KEYS = {"next": "Alt-Right", "previous": "Alt-Left", "approve": "Alt-A"}
#: header labels where the key is longer than the values under it
HEADERS = {"subject": "sub", "session": "ses", "qc": "QC", "confidence": "lowest conf."}
HEADER_TIPS = {
    "confidence": "lowest model confidence of the case (per axial slice, 0.5-1); blank: "
    "the model gave none; * corrected since (the value is the model output's)"
}
#: columns sized to their contents; the others share the rest of the width, elided
FIT_COLUMNS = ("#", "subject", "session", "status", "qc", "confidence", "time")
#: the item role holding a cell's number for sorting (None: a blank cell, sorted last)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
#: the narrowest an elided column gets (the table's minimum width keeps it so)
ELIDED_MIN_WIDTH = 64
#: rows read to size a column (all of them would stall the table of a large cohort)
SIZE_FROM_ROWS = 200


class CohortWidget(QWidget):
    """The review queue of one derivatives folder (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.session: CohortSession | None = None
        self.layers: list[Any] = []  # the open case's layers
        self.review_widget = None
        #: asked once when no rater is set: () -> name ("" cancels)
        self.ask_rater = self._ask_rater
        self.last_warning = ""
        self._build()
        for action, key in KEYS.items():
            viewer.bind_key(key, self._key_handler(action), overwrite=True)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        self.info = QLabel("Open a derivatives folder or a QC YAML: napari_spineseg.cohort()")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        row = QHBoxLayout()
        row.addWidget(QLabel("Rater:"))
        self.rater = QLineEdit(remembered_rater())
        self.rater.setPlaceholderText("Firstname Lastname (recorded in the sidecars)")
        row.addWidget(self.rater)
        lay.addLayout(row)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([HEADERS.get(c, c) for c in COLUMNS])
        for c, key in enumerate(COLUMNS):
            if key in HEADER_TIPS:
                self.table.horizontalHeaderItem(c).setToolTip(HEADER_TIPS[key])
        self._fit_to_width()
        self.table.installEventFilter(self)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open(self._case_at(r)))
        lay.addWidget(self.table)
        buttons = QHBoxLayout()
        for text, slot, tip in (
            ("◀ Previous", self.previous, KEYS["previous"]),
            ("Next ▶", self.next, KEYS["next"]),
            ("Save", self.save, ""),
            ("Approve", self.approve, KEYS["approve"]),
        ):
            b = QPushButton(text)
            b.setToolTip(tip.replace("-", "+"))
            b.clicked.connect(lambda _=False, f=slot: self._guard(f))
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

    def _fit_to_width(self) -> None:
        """Every column visible, no horizontal scrolling (see the module docstring)."""
        table, header = self.table, self.table.horizontalHeader()
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        table.setWordWrap(False)  # one line per case: long values elide, never wrap
        header.setResizeContentsPrecision(SIZE_FROM_ROWS)
        header.setMinimumSectionSize(24)
        for c, key in enumerate(COLUMNS):
            mode = (
                QHeaderView.ResizeMode.Fixed
                if key in FIT_COLUMNS
                else QHeaderView.ResizeMode.Stretch
            )
            header.setSectionResizeMode(c, mode)

    def _size_columns(self) -> None:
        """Fit columns to their contents; the table asks for the width they need."""
        fixed = 0
        for c, key in enumerate(COLUMNS):
            if key in FIT_COLUMNS:
                self.table.resizeColumnToContents(c)
                fixed += self.table.columnWidth(c)
        elided = (len(COLUMNS) - len(FIT_COLUMNS)) * ELIDED_MIN_WIDTH
        chrome = 2 * self.table.frameWidth() + self.table.verticalScrollBar().sizeHint().width()
        self.table.setMinimumWidth(fixed + elided + chrome)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        """The table's keys of SCT's QC report: F cycles the mark, Enter opens the row."""
        if obj is self.table and event.type() == QEvent.Type.KeyPress and self.session:
            row = self.table.currentRow()
            if row >= 0 and event.key() == Qt.Key.Key_F:
                self._guard(lambda: self.cycle_mark(self._case_at(row)))
                return True
            if row >= 0 and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self._guard(lambda: self.open(self._case_at(row)))
                return True
        return super().eventFilter(obj, event)

    def cycle_mark(self, i: int) -> str:
        """Case ``i``'s next QC mark (none → pass → fail → artifact → none), kept in the
        queue; returns it."""
        session = self._require()
        mark = next_mark(session.cases[i].qc)
        session.mark(i, mark)
        self.refresh_table()
        for r in range(self.table.rowCount()):
            if self._case_at(r) == i:
                self.table.setCurrentCell(r, COLUMNS.index("qc"))
        self.status.setText(f"{session.cases[i].id}: QC mark {mark or 'none'}")
        return mark

    def _key_handler(self, action: str):
        def handler(_viewer: Any = None) -> None:
            if self.session is not None:
                self._guard(getattr(self, action))

        handler.__name__ = f"cohort_{action}"
        return handler

    def _guard(self, fn) -> Any:
        try:
            return fn()
        except SpinesegError as exc:
            notify_error(exc)
            self.status.setText(str(exc))
            return None

    # ------------------------------------------------------------------ loading
    def load(
        self, path: str | os.PathLike, rater: str | None = None, deriv: str | None = None
    ) -> CohortSession:
        """Show the queue of a derivatives folder or of a QC YAML (its failures)."""
        if rater:
            self.rater.setText(rater)
        self.session = CohortSession.open_path(path, rater=self.rater.text() or None, deriv=deriv)
        self.info.setText(f"{self.session.deriv} — {len(self.session.cases)} cases")
        self.refresh_table()
        return self.session

    @property
    def cases(self) -> list[Case]:
        return self._require().cases

    def _require(self) -> CohortSession:
        if self.session is None:
            raise SpinesegError("no cohort loaded: napari_spineseg.cohort(viewer, DERIV)")
        return self.session

    def refresh_table(self) -> None:
        """Redraw the table from the queue file (other reviewers' changes included)."""
        session = self._require()
        rows = session.rows()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(COLUMNS):
                item = _NumberItem() if key == "confidence" else QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, r + 1 if c == 0 else _shown(key, row))
                item.setData(Qt.ItemDataRole.UserRole, r)
                if key not in FIT_COLUMNS:  # elided in the table: the full text on hover
                    item.setToolTip(str(row[key]))
                if key == "confidence":
                    conf = session.cases[r].confidence
                    item.setData(SORT_ROLE, conf.value)
                    item.setToolTip(conf.tooltip())
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self._size_columns()
        self._select_current()

    def _case_at(self, table_row: int) -> int:
        return int(self.table.item(table_row, 0).data(Qt.ItemDataRole.UserRole))

    def _select_current(self) -> None:
        index = self.session.index if self.session else None
        for r in range(self.table.rowCount()):
            if index is not None and self._case_at(r) == index:
                self.table.selectRow(r)
                return

    # ------------------------------------------------------------------ navigation
    def open(self, i: int) -> bool:
        """Open case ``i`` (False when the user cancelled at the unsaved-edits prompt)."""
        session = self._require()
        if not self._close_layers():
            return False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CaseOpenWarning)
            opened = session.open(i)
        self.last_warning = "; ".join(str(w.message) for w in caught)
        if self.last_warning:
            from napari.utils import notifications

            notifications.show_warning(self.last_warning)
        self._add_layers(opened)
        self.refresh_table()
        self.status.setText(f"case {i + 1} of {len(session.cases)}: {opened.case.id}")
        return True

    def next(self) -> bool:
        i = self._require().index
        if (i if i is not None else -1) + 1 >= len(self.cases):
            self.status.setText("last case reached")
            return False
        return self.open(0 if i is None else i + 1)

    def previous(self) -> bool:
        i = self._require().index
        if not i:
            return False
        return self.open(i - 1)

    def _add_layers(self, opened) -> None:
        from napari.layers import Layer

        from ..layers import labels_layer_data_like, volume_layer_data

        case = opened.case
        stem = Path(case.image).name.split(".nii")[0]
        data, kwargs, kind = volume_layer_data(opened.volume, as_labels=False)
        self.layers = [self.viewer.add_layer(Layer.create(data, kwargs, kind))]
        if self.review_widget is None:
            _dock, self.review_widget = self.viewer.window.add_plugin_dock_widget(
                PLUGIN, REVIEW_WIDGET, tabify=True
            )
        for suffix, labels in opened.labels.items():
            data, kwargs, kind = labels_layer_data_like(
                labels,
                opened.volume,
                f"{stem}{suffix}",
                classes=opened.classes[suffix],
                colors=opened.colors[suffix] or None,
                extra_meta={"suffix": suffix, "cohort_case": case.id},
            )
            layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
            self.layers.append(layer)
            state = self._state_of(layer)
            if state is None:
                raise SpinesegError(f"{layer.name}: the Review panel did not take the layer")
            # every save of this layer (Save, Save all, the close prompt) goes into the
            # derivatives. The case's own mask there is what is being corrected: saving
            # it is the point of opening the case, so the Review panel does not ask
            # whether to replace "a file this session did not write" (history keeps it).
            state.save_handler = self._saver(suffix)
        first = self.layers[1] if len(self.layers) > 1 else None
        if first is not None:
            self.review_widget.select_layer(first)

    def _saver(self, suffix: str) -> Callable[[Any, str | None], Path]:
        """The save handler of the case's ``suffix`` mask (path and author are the
        cohort's: the derivatives file and the rater)."""

        def save(path: Any = None, author: str | None = None) -> Path:
            return self.save(only=suffix)[0]

        return save

    def _state_of(self, layer: Any) -> Any:
        """The Review panel's state of a layer (matched by name: the viewer may hand out
        proxies of the layer objects it holds)."""
        if self.review_widget is None:
            return None
        for state in self.review_widget.states.values():
            if state.layer.name == layer.name:
                return state
        return None

    def _states(self) -> list[Any]:
        return [s for s in (self._state_of(x) for x in self.layers[1:]) if s is not None]

    def _has_edits(self) -> bool:
        """Some layer of the open case differs from its file (as opened or last saved)."""
        cur = self.session.current if self.session else None
        if cur is None:
            return False
        return any(
            not np.array_equal(np.asarray(x.data), cur.labels[spineseg_meta(x)["suffix"]])
            for x in self.layers[1:]
        )

    def _close_layers(self) -> bool:
        """Ask about unsaved edits (Save / Discard / Cancel), then remove the case's layers."""
        dirty = [s for s in self._states() if s.dirty]
        if dirty and self._has_edits():
            answer = self.review_widget.prompt(
                "Unsaved edits",
                f"{self.session.current.case.id if self.session.current else 'this case'} has "
                "unsaved edits. Save them into the derivatives before leaving the case?",
            )
            if answer == "cancel":
                return False
            if answer == "save":
                self.save()
            for s in dirty:
                s.dirty = False
                if s.autosaver is not None:
                    s.autosaver.discard()
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = []
        return True

    # ------------------------------------------------------------------ decisions
    def rater_name(self) -> str:
        """The rater, asked once (then remembered in the field)."""
        name = self.rater.text().strip()
        if not name:
            name = (self.ask_rater() or "").strip()
            if not name:
                raise SpinesegError("saving a correction needs the rater's name (Rater field)")
            self.rater.setText(name)
        if name != remembered_rater():
            remember_rater(name)  # asked once: the next session starts with it
        self._require().rater = name
        return name

    def _ask_rater(self) -> str:
        name, ok = QInputDialog.getText(self, "Rater", "Your name (Firstname Lastname):")
        return name if ok else ""

    def save(self, only: str | None = None) -> list[Path]:
        """Write the case's edited masks (or the one of ``only``, a suffix) into the
        derivatives; masks without unsaved edits are not rewritten."""
        session = self._require()
        if session.current is None:
            raise SpinesegError("no case is open: double-click a row or press Alt+→")
        rater = self.rater_name()
        labels = {}
        for layer in self.layers[1:]:
            suffix = spineseg_meta(layer)["suffix"]
            if only is not None and suffix != only:
                continue
            state = self._state_of(layer)
            data = np.asarray(layer.data)
            if only is None and np.array_equal(data, session.current.labels[suffix]):
                continue  # unchanged since opened or saved: not rewritten
            labels[suffix] = data
            if state is not None:
                state.dirty = False
                if state.autosaver is not None:
                    state.autosaver.discard()
        if not labels:
            self.status.setText("no unsaved edits")
            return []
        written = session.save(labels, author=rater)
        self.refresh_table()
        self.status.setText("saved " + ", ".join(p.name for p in written) + " (+ .json)")
        return written

    def approve(self) -> bool:
        """Approve the open case (its edits saved first), then open the next one."""
        session = self._require()
        if session.current is None:
            raise SpinesegError("no case is open: double-click a row or press Alt+→")
        self.rater_name()
        if self._has_edits():
            self.save()
        session.approve()
        self.refresh_table()
        return self.next()


def cohort(
    viewer: napari.viewer.Viewer,
    path: str | os.PathLike,
    rater: str | None = None,
    deriv: str | os.PathLike | None = None,
) -> CohortWidget:
    """Dock the Cohort widget on a derivatives folder or a QC YAML and open the first case.

    Returns the widget: ``.cases``, ``.open(i)``, ``.next()``, ``.previous()``,
    ``.save()``, ``.approve()`` (``.session`` is the Qt-free queue).
    """
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, COHORT_WIDGET)
    widget.dock = dock
    widget.load(path, rater=rater, deriv=str(deriv) if deriv else None)
    widget.open(0)
    return widget


class _NumberItem(QTableWidgetItem):
    """A cell sorted by the number in :data:`SORT_ROLE`, blank cells last in either
    order (Qt sorts descending with ``other < self``: a blank is then the smaller)."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if a is not None and b is not None:
            return float(a) < float(b)
        if a is None and b is None:
            return False
        table = self.tableWidget()
        descending = (
            table is not None
            and table.horizontalHeader().sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
        )
        return descending if a is None else not descending


def _shown(key: str, row: dict[str, Any]) -> str:
    """A table cell's text: the image name without the subject and session entities,
    which have their own columns (``sub-01_ses-02_acq-sag_T2w.nii.gz`` -> ``acq-sag_T2w
    .nii.gz``), so that the narrow column shows what tells a subject's images apart."""
    text = str(row[key])
    if key == "image":
        session = f"ses-{row['session']}_" if row["session"] else ""
        text = text.removeprefix(f"sub-{row['subject']}_{session}")
    return text
