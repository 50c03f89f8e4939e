"""Dock placement: the Segment and Review docks share one tab stack."""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget

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


def raise_dock(widget: QWidget) -> None:
    """Bring the tab of the dock holding ``widget`` forward."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    if dock is not None:
        dock.raise_()
