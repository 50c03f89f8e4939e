"""The Review panel's questions to the reviewer: one message-box helper, three prompts.

The widget keeps each prompt as an attribute (``prompt``, ``prompt_replace``,
``prompt_recovery``) so that tests and scripts answer instead of a dialog.
"""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QMessageBox, QWidget

#: a button of :func:`ask`: its text (or a standard button), its role, and the answer
Choice = tuple[str | QMessageBox.StandardButton, QMessageBox.ButtonRole, str]


def ask(
    parent: QWidget | None,
    title: str,
    text: str,
    choices: Sequence[Choice],
    *,
    icon: QMessageBox.Icon = QMessageBox.Icon.Warning,
    default: str | None = None,
    dismissed: str = "cancel",
) -> str:
    """Show a modal question; returns the answer of the clicked button, or ``dismissed``
    when the box was closed without one (Escape, the window's close button)."""
    box = QMessageBox(parent)
    box.setIcon(icon)
    box.setWindowTitle(title)
    box.setText(text)
    buttons = []
    for label, role, answer in choices:
        button = box.addButton(label, role) if isinstance(label, str) else box.addButton(label)
        buttons.append((button, answer))
        if answer == default:
            box.setDefaultButton(button)
    box.exec()
    clicked = box.clickedButton()
    return next((answer for button, answer in buttons if button is clicked), dismissed)


def ask_unsaved(parent: QWidget | None, title: str, text: str) -> str:
    """Save / Discard / Cancel (Save is the default): "save", "discard" or "cancel"."""
    standard, role = QMessageBox.StandardButton, QMessageBox.ButtonRole
    return ask(
        parent,
        title,
        text,
        [
            (standard.Save, role.AcceptRole, "save"),
            (standard.Discard, role.DestructiveRole, "discard"),
            (standard.Cancel, role.RejectRole, "cancel"),
        ],
        default="save",
    )


def ask_replace(parent: QWidget | None, text: str) -> bool:
    """Replace / Cancel (Cancel is the default): True to replace the file."""
    role = QMessageBox.ButtonRole
    return (
        ask(
            parent,
            "Replace a mask?",
            text,
            [
                ("Replace", role.DestructiveRole, "replace"),
                (QMessageBox.StandardButton.Cancel, role.RejectRole, "cancel"),
            ],
            default="cancel",
        )
        == "replace"
    )


def ask_recovery(parent: QWidget | None, text: str) -> str:
    """Restore / Discard / Not now: "restore", "discard" or "ignore"."""
    role = QMessageBox.ButtonRole
    return ask(
        parent,
        "Recover unsaved edits?",
        text,
        [
            ("Restore", role.AcceptRole, "restore"),
            ("Discard", role.DestructiveRole, "discard"),
            ("Not now", role.RejectRole, "ignore"),
        ],
        icon=QMessageBox.Icon.Question,
        dismissed="ignore",
    )
