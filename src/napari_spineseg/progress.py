"""Progress reporting and cooperative cancellation shared by every long operation.

Engines, downloads and the API report :class:`Progress` through a plain callback and poll
a :class:`CancelToken`; the napari widget turns both into a progress bar and a Cancel
button, the CLI into a text bar. Nothing here knows about Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report.

    ``fraction`` is overall completion in [0, 1]; ``stage`` a short human label
    ("preprocessing", "fold 1/5 tile 3/16", ...); ``step``/``total`` count units inside the
    stage (tiles, slices, bytes) when known.
    """

    fraction: float
    stage: str
    step: int | None = None
    total: int | None = None


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Thread-safe cancellation flag polled by long-running work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class Reporter:
    """Maps the progress of a sub-stage onto a slice [start, end] of the overall bar.

    Lets an engine report "tile 3 of 16" without knowing that it is the second of three
    stages of a task; also checks the cancel token on every report, so each report is a
    cancellation point.
    """

    def __init__(
        self,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        self.callback = callback
        self.cancel = cancel
        self.start = start
        self.end = end

    def __call__(
        self, fraction: float, stage: str, step: int | None = None, total: int | None = None
    ) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if self.callback is not None:
            f = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
            self.callback(Progress(f, stage, step, total))

    def sub(self, start: float, end: float) -> Reporter:
        """A reporter for the part [start, end] (relative to this one) of the work."""
        span = self.end - self.start
        return Reporter(
            self.callback, self.cancel, self.start + span * start, self.start + span * end
        )

    def check(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
