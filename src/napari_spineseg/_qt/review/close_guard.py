"""Unsaved edits are never lost silently: closing a layer, the viewer or napari's window
asks first (Save / Discard / Cancel), and Cancel keeps everything open.

A removed layer is put back on Cancel; ``viewer.close()`` from a script is wrapped
(napari removes the layers before it closes the window, so the window's close event
comes too late to say no); napari's main window gets an event filter.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer

from ...errors import SpinesegError
from .panel import unwrap


class WindowCloseFilter(QObject):
    """Event filter on napari's main window: ask about unsaved edits before it closes."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.Type.Close and not self.widget.confirm_close():
            event.ignore()
            return True
        return False


class CloseGuard:
    """Unsaved-edits questions of the Review panel (a section of ``ReviewWidget``).

    Uses the widget's ``viewer``, ``states``, ``prompt`` and ``_save_state``; keeps
    ``_closing`` (confirmed: the closing viewer's layer removals ask nothing more),
    ``_removing`` (layers put back after Cancel) and ``_guarded_window``.
    """

    def _on_removed(self, event) -> None:
        layer = unwrap(event.value)
        state = self.states.get(id(layer))
        if state is None:
            return
        if self._preview is not None and self._preview.state is state:
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

    def _install_close_guard(self) -> None:
        window = self.window()
        guarded = self._guarded_window() if self._guarded_window is not None else None
        if window is self or window is None or window is guarded:
            return
        self._guarded_window = weakref.ref(window)
        window.installEventFilter(WindowCloseFilter(self))

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
