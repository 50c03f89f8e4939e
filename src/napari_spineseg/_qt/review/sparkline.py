"""The cord's cross-sectional area along the slices, drawn as a bar sparkline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


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
