"""What runs inside the engine process: one segmentation, shipped in and shipped back.

This module is imported by the engine's worker process (a local dask worker, or a worker
of a remote scheduler) and by the viewer; it imports neither dask nor torch at module
level. The viewer side is :mod:`napari_spineseg.engine_process`.

What travels (nothing else): the image as a 3D in-memory NIfTI (:class:`ShippedVolume`:
voxels, header and affine exactly as :meth:`Volume.image3d` gives them to a model, plus
the source's shape and voxel sizes for the provenance), the run's options, and back the
:class:`~napari_spineseg.segmentation.SegmentationResult` without its ``source``. No
path of the reviewer's files crosses over: the engine may run on another machine.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass, field

from .errors import SpinesegError
from .io.volume import Volume
from .options import RunOptions
from .progress import CancelToken, Progress

#: least seconds between two progress events of one run (the last one always goes)
PROGRESS_INTERVAL_S = 0.05


@dataclass
class ShippedVolume(Volume):
    """A :class:`Volume` as it reaches the engine: the 3D model input, no file behind it.

    ``nifti`` is the source's :meth:`~Volume.image3d` (a 4D series already averaged, as
    the in-process run does); ``source_shape``/``source_zooms`` are the original's, so
    that the run's notes and provenance read as they would in-process.
    """

    source_shape: tuple[int, ...] = ()
    source_zooms: tuple[float, ...] = ()
    source_name: str = "volume"

    @classmethod
    def of(cls, volume: Volume) -> ShippedVolume:
        """Pack ``volume`` for the engine (the 4D mean and the cast happen here, once)."""
        return cls(
            path=None,
            nifti=volume.image3d(reduce="mean"),
            geometry=volume.geometry,
            source_shape=volume.shape,
            source_zooms=volume.zooms,
            source_name=volume.name,
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source_shape

    @property
    def zooms(self) -> tuple[float, ...]:
        return self.source_zooms

    @property
    def name(self) -> str:
        return self.source_name

    def image3d(self, reduce: str = "mean"):
        if reduce != "mean":  # pragma: no cover - the runner asks for the mean only
            raise ValueError("a shipped volume holds the mean over the 4th axis only")
        return self.nifti


@dataclass
class _RunRegistry:
    """The cancel tokens of the runs going on in this process, by run id."""

    tokens: dict[str, CancelToken] = field(default_factory=dict)
    #: cancelled before they started (the cancel overtook the task)
    early: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, run_id: str) -> CancelToken:
        token = CancelToken()
        with self.lock:
            if run_id in self.early:
                self.early.discard(run_id)
                token.cancel()
            self.tokens[run_id] = token
        return token

    def finish(self, run_id: str) -> None:
        with self.lock:
            self.tokens.pop(run_id, None)

    def cancel(self, run_id: str) -> bool:
        with self.lock:
            token = self.tokens.get(run_id)
            if token is None:
                if len(self.early) > 1000:  # ids of runs that never came: forget them
                    self.early.clear()
                self.early.add(run_id)
                return False
        token.cancel()
        return True


_RUNS = _RunRegistry()


def cancel_run(run_id: str) -> bool:
    """Runs in the engine process (``client.run``): ask run ``run_id`` to stop.

    Cooperative: the run stops at its next progress report. True when it was running.
    """
    return _RUNS.cancel(run_id)


def _publisher(topic: str, run_id: str):
    """A progress callback that sends throttled reports as dask events (or nothing
    when called outside a dask worker, e.g. in a test)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None, None
    last = [0.0, ""]

    def publish(p: Progress) -> None:
        now = time.monotonic()
        kind = "".join(c for c in p.stage if not c.isdigit())
        if now - last[0] < PROGRESS_INTERVAL_S and kind == last[1] and p.fraction < 1.0:
            return
        last[0], last[1] = now, kind
        worker.log_event(topic, ["progress", run_id, float(p.fraction), p.stage, p.step, p.total])

    return worker, publish


def segment_shipped(
    topic: str,
    run_id: str,
    volume: ShippedVolume,
    options: RunOptions,
    return_probabilities: bool = True,
):
    """Runs in the engine process: :func:`api.segment` on the shipped volume.

    Announces itself (worker address and process id: what the viewer kills when a
    cancelled run does not stop), streams progress under ``topic`` and stops at the next
    report once :func:`cancel_run` was called. The result goes back without its source
    (the viewer puts its own :class:`Volume` back).
    """
    from . import api

    worker, publish = _publisher(topic, run_id)
    if worker is not None:
        worker.log_event(topic, ["start", run_id, worker.address, os.getpid()])
    token = _RUNS.start(run_id)
    try:
        result = api.segment(
            volume,
            progress=publish,
            cancel=token,
            return_probabilities=return_probabilities,
            options=options,
        )
    except SpinesegError as exc:  # goes back pickled: keep the message if the type cannot
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise SpinesegError(str(exc)) from None
        raise
    finally:
        _RUNS.finish(run_id)
    result.source = None
    return result
