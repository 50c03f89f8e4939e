"""The Review panel's three questions share one message-box helper: each button gives
its answer, and closing the box without a button is the safe answer (keep the edits,
keep the file, ask again later)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_spineseg._qt.review.prompts import ask_recovery, ask_replace, ask_unsaved


def _answer(button: str | None, question):
    """Run ``question()`` while a timer clicks ``button`` (None: close the box)."""
    seen: list[str] = []

    def click() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(10, click)
            return
        seen.extend(b.text().replace("&", "") for b in box.buttons())
        if button is None:
            box.reject()
            return
        (target,) = [b for b in box.buttons() if b.text().replace("&", "") == button]
        target.click()

    QTimer.singleShot(0, click)
    return question(), seen


@pytest.mark.parametrize(
    ("button", "answer"),
    [("Save", "save"), ("Discard", "discard"), ("Cancel", "cancel"), (None, "cancel")],
)
def test_unsaved_edits_prompt(qtbot, button, answer):
    got, buttons = _answer(button, lambda: ask_unsaved(None, "Unsaved edits", "Save them?"))
    assert got == answer
    assert sorted(buttons) == ["Cancel", "Discard", "Save"]


@pytest.mark.parametrize(
    ("button", "answer"), [("Replace", True), ("Cancel", False), (None, False)]
)
def test_replace_prompt(qtbot, button, answer):
    got, buttons = _answer(button, lambda: ask_replace(None, "x.nii.gz exists"))
    assert got is answer and sorted(buttons) == ["Cancel", "Replace"]


@pytest.mark.parametrize(
    ("button", "answer"),
    [("Restore", "restore"), ("Discard", "discard"), ("Not now", "ignore"), (None, "ignore")],
)
def test_recovery_prompt(qtbot, button, answer):
    got, buttons = _answer(button, lambda: ask_recovery(None, "Restore them?"))
    assert got == answer and sorted(buttons) == ["Discard", "Not now", "Restore"]
