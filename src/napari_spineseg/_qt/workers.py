"""Generator cores on napari thread workers, and Qt helpers for waiting and errors.

The cores themselves (:func:`napari_spineseg.jobs.runner.steps`, the segment and refine
jobs) are Qt-free; this module only starts them on a napari ``GeneratorWorker``
(:func:`start_worker`), measures event-loop stalls (:class:`StallMeter`), waits for a
job while processing Qt events (:func:`wait_for`) and shows errors (:func:`notify_error`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

from ..errors import SpinesegError
from ..progress import Progress


def start_worker(
    gen_func: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    on_progress: Callable[[Progress], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs: Any,
):
    """Start ``gen_func(*args, **kwargs)`` on a napari ``GeneratorWorker``.

    Heartbeats (``None``) are filtered out before ``on_progress``. Errors reach the user
    through ``on_errored`` only: napari 0.9's worker classes do not relay them to the
    notification manager (their mixin's ``__init__`` is skipped in superqt's MRO), so the
    widgets notify themselves (:func:`notify_error`). Returns the started
    worker.
    """
    from napari.qt.threading import create_worker

    # _ignore_errors: do not re-raise worker errors on the GUI thread (a traceback dialog
    # for a user error); on_errored reports them
    worker = create_worker(gen_func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    if on_progress is not None:
        worker.yielded.connect(lambda p: on_progress(p) if p is not None else None)
    if on_returned is not None:
        worker.returned.connect(on_returned)
    if on_errored is not None:
        worker.errored.connect(on_errored)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


class StallMeter:
    """Measures the longest gap of the Qt event loop (GUI freezes) with a 10 ms timer.

    Start it before a run and read :attr:`longest_ms` after: a timer that should fire
    every ``interval_ms`` records the time between firings; anything much longer is time
    the GUI thread was busy and the viewer did not respond. ``cpu_ms`` holds, per gap,
    the CPU time the GUI thread itself used in it: on a shared machine a gap can be long
    because other processes had the cores, and this says how much of it was our work.
    """

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval_ms = interval_ms
        self.gaps_ms: list[float] = []
        self.cpu_ms: list[float] = []
        self._last: float | None = None
        self._last_cpu = 0.0
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if self._last is not None:
            self.gaps_ms.append((now - self._last) * 1000.0)
            self.cpu_ms.append((cpu - self._last_cpu) * 1000.0)
        self._last, self._last_cpu = now, cpu

    def start(self) -> StallMeter:
        # counted from now, not from the first tick: a GUI-thread step that begins right
        # after start() (a layer added by a zero-delay timer, a click handler) would
        # otherwise run before any tick and never be seen
        self.gaps_ms.clear()
        self.cpu_ms.clear()
        self._last, self._last_cpu = time.perf_counter(), time.thread_time()
        self._timer.start()
        return self

    def stop(self) -> StallMeter:
        # the gap since the last tick is measured too: a step that ends at stop()
        if self._timer.isActive() and self._last is not None:
            self._tick()
        self._timer.stop()
        self._last = None
        return self

    @property
    def longest_ms(self) -> float:
        return max(self.gaps_ms, default=0.0)

    @property
    def longest_cpu_ms(self) -> float:
        """The GUI thread's own CPU time in its busiest gap."""
        return max(self.cpu_ms, default=0.0)


def wait_for(busy: Callable[[], bool], timeout: float, what: str) -> None:
    """Process Qt events until ``busy()`` is false (scripts and tests wait for a job).

    Raises ``TimeoutError`` naming ``what`` after ``timeout`` seconds.
    """
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while busy():
        QApplication.processEvents()
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not finish in {timeout} s")
        time.sleep(0.005)
    QApplication.processEvents()


def notify_error(exc: BaseException) -> None:
    """A napari notification: the message alone for user errors, the traceback for bugs."""
    from napari.utils import notifications

    if isinstance(exc, SpinesegError):
        notifications.show_error(str(exc))
    else:
        notifications.notification_manager.receive_error(type(exc), exc, exc.__traceback__)
