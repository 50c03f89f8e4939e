"""Orientation letters on the canvas (napari-spineseg layers use the I, P, L display axes)."""

from __future__ import annotations

from typing import Any

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


def show_orientation(viewer: Any, text: str) -> None:
    """Put ``text`` in the canvas's bottom-left text overlay (hidden when empty)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is None:
        return
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
