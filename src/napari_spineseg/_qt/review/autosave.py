"""Crash recovery in the Review panel: recovery files written off the GUI thread every few
seconds, and offered back when the same image and layer come back."""

from __future__ import annotations

import threading
from pathlib import Path

from ...correction.review import LayerReview

#: how often the panel checks whether a recovery file is due (the autosaver decides)
AUTOSAVE_POLL_MS = 2000


class AutosaveRecovery:
    """Autosave and recovery (a section of ``ReviewWidget``): the widget's timer calls
    :meth:`autosave`; a newly bound layer gets :meth:`_offer_recovery`."""

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
        from ... import correction

        if answer == "restore":
            labels, _ = correction.restore(entry)
            n = state.restore_labels(labels)
            self._notify_info(f"Restored {n} voxels of unsaved edits into '{state.layer.name}'.")
        elif answer == "discard":
            correction.discard(entry)
