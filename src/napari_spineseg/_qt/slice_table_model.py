"""The Review panel's slice table as a lazy Qt model.

A ``QTableWidget`` needs one ``QTableWidgetItem`` per cell up front: 275 slices x 8
columns is ~2,200 Python objects made on the GUI thread every time the table refreshes
(and as many freed later by the garbage collector), which took 20-40 ms of the 50 ms
main-thread budget. This model keeps only the :class:`~napari_spineseg.correction.SliceTable`
arrays and the row order, and formats a cell when the view asks for it, i.e. only for the
rows on screen. Resetting it costs the ordering (a numpy ``argsort``) and nothing per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtGui import QColor

from ..correction.qc import SliceTable

#: the words shown for each flag
FLAG_LABELS = {
    "empty": "gap",
    "lesion_outside_cord": "lesion outside cord",
    "extra_components": "extra components",
    "area_jump": "area jump",
    "low_confidence": "low confidence",
}
#: the text colour of a flagged slice nobody has reviewed yet
FLAGGED_COLOR = QColor(255, 140, 120)
#: the role that carries a row's slice index (display order, the viewer's slider value)
SLICE_ROLE = Qt.ItemDataRole.UserRole


class SliceTableModel(QAbstractTableModel):
    """Slice, flags, confidence, area per class, components, reviewed: one row per slice."""

    def __init__(self, flag_labels: dict[str, str] | None = None, parent: Any = None) -> None:
        super().__init__(parent)
        #: flag name -> the words shown for it ("area_jump" -> "area jump")
        self.flag_labels = dict(FLAG_LABELS if flag_labels is None else flag_labels)
        self._table: SliceTable | None = None
        self._order = np.zeros(0, dtype=np.intp)
        self._values: list[int] = []
        self._headers: list[str] = []
        self._flagged = np.zeros(0, dtype=bool)
        self._confidence = np.zeros(0)

    # ---------------------------------------------------------------- content
    def set_table(
        self, table: SliceTable | None, order: str = "severity", only_flagged: bool = True
    ) -> None:
        """Show ``table`` sorted by ``order`` (``severity``, ``confidence`` or ``slice``)."""
        self.beginResetModel()
        self._table = table
        if table is None:
            self._order = np.zeros(0, dtype=np.intp)
            self._values, self._headers = [], []
        else:
            self._order = np.asarray(table.order(order, only_flagged=only_flagged), dtype=np.intp)
            self._values = list(table.classes)
            names = [table.classes[v] for v in self._values]
            self._headers = ["Slice", "Flags", "Conf.", *[f"{n} mm²" for n in names]]
            self._headers += ["Comp.", "Reviewed"]
            self._flagged = table.flagged()
            self._confidence = table.slice_confidence()
        self.endResetModel()

    def slice_at(self, row: int) -> int:
        """The slice shown on ``row``."""
        return int(self._order[row])

    def slices(self) -> list[int]:
        """The slices in the table, top to bottom."""
        return [int(i) for i in self._order]

    def refresh_rows(self) -> None:
        """The table's arrays changed in place (same rows): repaint what is shown."""
        if self.rowCount() and self.columnCount():
            last = self.index(self.rowCount() - 1, self.columnCount() - 1)
            self.dataChanged.emit(self.index(0, 0), last)

    # ---------------------------------------------------------------- Qt model API
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._order)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._headers)

    def headerData(  # noqa: N802
        self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        horizontal = orientation == Qt.Orientation.Horizontal
        if (
            role == Qt.ItemDataRole.DisplayRole
            and horizontal
            and 0 <= section < len(self._headers)
        ):
            return self._headers[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        table = self._table
        if table is None or not index.isValid() or index.row() >= len(self._order):
            return None
        i = int(self._order[index.row()])
        if role == SLICE_ROLE:
            return i
        if role == Qt.ItemDataRole.ForegroundRole:
            flagged = bool(self._flagged[i]) and not bool(table.reviewed[i])
            return FLAGGED_COLOR if flagged else None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text(i, index.column())
        return None

    def text(self, i: int, column: int) -> str:
        """The text of slice ``i``'s cell in ``column`` (what the table shows)."""
        table = self._table
        assert table is not None
        n = len(self._values)
        if column == 0:
            return str(i)
        if column == 1:
            return ", ".join(self.flag_labels.get(f, f) for f in table.flag_names(i)) or "–"
        if column == 2:
            conf = float(self._confidence[i])
            return "–" if np.isnan(conf) else f"{conf:.2f}"
        if 3 <= column < 3 + n:
            return f"{float(table.area[self._values[column - 3]][i]):.1f}"
        if column == 3 + n:
            return str(sum(int(c[i]) for c in table.components.values()))
        if column == 4 + n:
            return "yes" if table.reviewed[i] else ""
        return ""
