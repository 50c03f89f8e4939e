"""Long work as generator cores that yield :class:`Progress` (no Qt here).

The pattern is stardist-napari's: a *generator* does the work and yields progress
reports; in the viewer, napari's ``GeneratorWorker`` runs it on a thread and turns each
``yield`` into a ``yielded`` signal on the GUI thread (progress bar), the return value
into ``returned`` (add the layers) and an exception into ``errored`` (see
:mod:`napari_spineseg._qt.workers`). The same generator is consumed synchronously
(:func:`run_sync`) by scripts, tests and benchmarks.

``api.segment`` reports through a plain callback, which cannot ``yield``; :func:`steps`
therefore runs the call on a helper thread and relays its reports through a queue. This
also bounds cancellation latency: the generator polls every 50 ms, so a cancelled run
ends within :data:`CANCEL_GRACE_S` even if the engine is in the middle of a long tile (the
helper thread then stops at its next report; its result is discarded, nothing is added).

Nothing here touches Qt widgets or layers: results are returned, and the GUI thread
decides what to do with them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from ..errors import Cancelled
from ..progress import CancelToken, Progress

#: Seconds a cancelled run waits for the engine to reach a cancellation point.
CANCEL_GRACE_S = 0.8
#: Poll interval of the generator (also the heartbeat that lets the worker quit).
POLL_S = 0.05

#: Helper threads of cancelled runs that have not reached a cancellation point yet. A
#: new run waits for them, so two predictions never share one loaded engine.
_ORPHANS: list[threading.Thread] = []
_ORPHANS_LOCK = threading.Lock()


class CancelledRun:
    """Returned (not raised) by a cancelled generator: a user action, not an error."""

    def __repr__(self) -> str:
        return "CancelledRun()"


CANCELLED = CancelledRun()


def _wait_for_orphans() -> Generator[Progress, None, None]:
    while True:
        with _ORPHANS_LOCK:
            _ORPHANS[:] = [t for t in _ORPHANS if t.is_alive()]
            alive = bool(_ORPHANS)
        if not alive:
            return
        yield Progress(0.0, "waiting for the cancelled run to stop")
        time.sleep(POLL_S)


def _stage_kind(stage: str) -> str:
    return "".join(ch for ch in stage if not ch.isdigit())


def _one_per_stage(reports: list[Progress]) -> list[Progress]:
    """The last report of each stage kind, in order ("tile 3/16" and "tile 9/16" are one kind).

    Coalescing keeps the GUI thread light when a fast model reports hundreds of tiles
    per poll, without hiding a stage (preprocessing, tiles, export) from the user.
    """
    out: list[Progress] = []
    for report in reports:
        if out and _stage_kind(out[-1].stage) == _stage_kind(report.stage):
            out[-1] = report
        else:
            out.append(report)
    return out


def steps(
    fn: Callable[..., Any],
    *args: Any,
    cancel: CancelToken,
    **kwargs: Any,
) -> Generator[Progress, None, Any]:
    """Run ``fn(*args, progress=..., cancel=cancel, **kwargs)`` and yield its progress.

    Returns ``fn``'s result, or :data:`CANCELLED` when ``cancel`` was set (then within
    about :data:`CANCEL_GRACE_S`); re-raises ``fn``'s exception otherwise.
    """
    yield from _wait_for_orphans()
    reports: queue.Queue[Progress] = queue.Queue()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, progress=reports.put, cancel=cancel, **kwargs)
        except BaseException as exc:  # relayed to the generator's consumer
            box["error"] = exc

    thread = threading.Thread(target=target, name="spineseg-run", daemon=True)
    thread.start()
    cancelled_at: float | None = None
    last: Progress | None = None
    while thread.is_alive():
        thread.join(POLL_S)
        drained: list[Progress] = []
        while True:
            try:
                drained.append(reports.get_nowait())
            except queue.Empty:
                break
        if cancel.cancelled:
            if cancelled_at is None:
                cancelled_at = time.monotonic()
            if time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                with _ORPHANS_LOCK:
                    _ORPHANS.append(thread)
                return CANCELLED
            continue
        batch = _one_per_stage(drained)
        if batch and batch[-1] != last:
            yield from batch
            last = batch[-1]
        else:
            yield None  # heartbeat: lets a napari worker notice quit()
    if cancel.cancelled or isinstance(box.get("error"), Cancelled):
        return CANCELLED
    if "error" in box:
        raise box["error"]
    return box.get("result")


def run_sync(
    gen: Generator[Any, None, Any], on_progress: Callable[[Progress], None] | None = None
):
    """Consume a generator core on the calling thread (scripts, tests, benchmarks)."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if item is not None and on_progress is not None:
            on_progress(item)
