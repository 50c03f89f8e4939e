"""Inference in a separate, persistent engine process, or on a remote dask scheduler.

>>> from napari_spineseg import engine_process
>>> result = engine_process.segment(volume, options, engine="process")      # local engine
>>> result = engine_process.segment(volume, options, engine="tcp://gpu-box:8786")

The viewer never imports torch or nnU-Net: the model is loaded, and stays loaded (the
engine cache of :mod:`napari_spineseg.segmentation`), in a worker process. Locally that
is a dask scheduler in this process and one ``dask worker`` process (an interpreter of its
own) started on first use and kept for the session (the same machinery
as ``spineseg batch``); remotely, the workers of a running scheduler
(``SPINESEG_ENGINE=tcp://gpu-box:8786``), served the same task function.

One run: the volume is packed (:class:`~napari_spineseg.engine_task.ShippedVolume`: the
model input and header, no path), sent, and :func:`~napari_spineseg.engine_task.
segment_shipped` runs :func:`api.segment` there. Progress comes back as dask events and is
handed to ``progress`` on the calling thread. Cancel asks the run to stop at its next
report; a run that has not stopped :data:`KILL_AFTER_S` later is killed (the local
engine starts a fresh worker). A worker that dies (killed for memory, a crash in the
model) or a scheduler that goes away ends the run with :class:`EngineStoppedError`; a
cancelled or failed run never returns a result. The result comes back without its source:
the caller's :class:`~napari_spineseg.io.Volume` and input path are put back here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Cancelled, EngineStoppedError, SpinesegError
from .options import RunOptions
from .progress import CancelToken, Progress, ProgressCallback, Reporter

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from .segmentation import SegmentationResult

__all__ = [
    "ENV_ENGINE",
    "LocalEngine",
    "RemoteEngine",
    "close_all",
    "get_engine",
    "probe_devices",
    "segment",
    "use_for_widgets",
    "widget_engine",
]

#: where the widgets and ``review()`` run: ``process`` (the default), ``inprocess`` (in the
#: viewer's own process, as before) or a dask scheduler address (``tcp://gpu-box:8786``)
ENV_ENGINE = "SPINESEG_ENGINE"
#: the value of :data:`ENV_ENGINE` (and of ``review(engine=...)``) that runs in-process
IN_PROCESS = "inprocess"
#: seconds a cancelled run may take to reach its next progress report before it is killed
KILL_AFTER_S = 1.0
#: how often the caller's thread looks for progress, the result, a cancel or a dead engine
POLL_S = 0.02
#: seconds to reach a remote scheduler
CONNECT_TIMEOUT_S = 10.0
#: seconds a run waits for the local engine's worker process to (re)start
WORKER_START_TIMEOUT_S = 60.0
#: dask settings of the local engine: a run whose worker died is reported, not re-run (it
#: would die again); no HTTP routes (nothing to browse, nothing served). The worker runs
#: without a nanny, so it keeps the user's environment (a nanny would set
#: MALLOC_TRIM_THRESHOLD_=65536, which sends every large tensor allocation through
#: mmap/munmap: warm runs measured 1.4-1.6x slower, and OMP/MKL/OPENBLAS_NUM_THREADS=1)
LOCAL_ENGINE_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
}


@dataclass
class _Run:
    """What the viewer knows of one run while it goes on (filled by engine events)."""

    reports: queue.Queue = field(default_factory=queue.Queue)
    address: str | None = None
    pid: int | None = None


class DaskEngine:
    """An engine reached through a ``distributed.Client`` (see the module docstring).

    Subclasses say how the client is made (:meth:`_connect`), how a run that ignores
    Cancel is stopped (:meth:`_kill`) and what a lost engine means (:meth:`_stopped`).
    """

    where = "the engine"

    def __init__(self) -> None:
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._topic = f"spineseg-progress-{uuid.uuid4().hex}"

    # ---------------------------------------------------------------- connection
    def _connect(self) -> Client:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def client(self) -> Client:
        """The connected client (the engine is started or reached on first use)."""
        with self._lock:
            if self._client is None or self._client.status in ("closing", "closed"):
                self._client = self._connect()
                self._client.subscribe_topic(self._topic, self._on_event)
            return self._client

    def _on_event(self, event: tuple[float, Any]) -> None:
        """On the client's event loop: a message of a run (start, progress)."""
        msg = event[1]
        run = self._runs.get(msg[1])
        if run is None:
            return
        if msg[0] == "start":
            run.address, run.pid = msg[2], int(msg[3])
        elif msg[0] == "progress":
            run.reports.put(Progress(msg[2], msg[3], msg[4], msg[5]))

    def _drop(self, client) -> None:
        """Forget a client whose scheduler is gone (closed on a helper thread: closing
        waits for a scheduler that will not answer)."""
        with self._lock:
            if self._client is client:
                self._client = None
        threading.Thread(target=client.close, name="spineseg-close", daemon=True).start()

    def close(self) -> None:
        """Disconnect (and stop a local engine); the next run starts or connects again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout=5)

    # ---------------------------------------------------------------- one run
    def segment(
        self,
        image: Any,
        options: RunOptions,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        return_probabilities: bool = True,
    ) -> SegmentationResult:
        """:func:`api.segment` on this engine; progress is called on this thread."""
        from .api import _as_volume
        from .engine_task import ShippedVolume, segment_shipped

        report = Reporter(progress, cancel)
        report.check()
        volume = _as_volume(image)
        shipped = ShippedVolume.of(volume)
        client = self.client
        run_id = uuid.uuid4().hex
        run = self._runs[run_id] = _Run()
        futures = []
        try:
            self._before_submit(client)
            futures += client.scatter([shipped], hash=False)
            futures.append(
                client.submit(
                    segment_shipped,
                    self._topic,
                    run_id,
                    futures[0],
                    options,
                    return_probabilities,
                    key=f"spineseg-run-{run_id}",
                    pure=False,
                )
            )
        except (OSError, CancelledError) as exc:  # the connection went while sending
            self._runs.pop(run_id, None)
            for fut in futures:
                fut.release()
            raise EngineStoppedError(self._stopped(lost=True)) from exc
        try:
            result = self._wait(client, futures[-1], run_id, run, progress, cancel)
        except EngineStoppedError:
            if client.status != "running":  # the scheduler went away: reconnect next time
                self._drop(client)
            else:
                self._replace_dead_worker()
            raise
        finally:
            self._runs.pop(run_id, None)
            for fut in futures:
                fut.release()
        result.source = volume
        result.provenance["input"]["path"] = str(volume.path) if volume.path else None
        return result

    def _before_submit(self, client) -> None:
        pass

    def _wait(self, client, future, run_id: str, run: _Run, progress, cancel):
        """Relay progress until ``future`` is done; act on Cancel and on a lost engine.

        Polls the future's state, never ``future.result(timeout=...)``: a timeout racing
        the result inside dask's ``sync`` can surface as an ``UnboundLocalError``.
        """
        from distributed import KilledWorker

        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())
        cancelled_at: float | None = None
        while not (finished.wait(POLL_S) or future.done()):
            self._relay(run, progress, cancelled_at is None)
            if cancel is not None and cancel.cancelled:
                if cancelled_at is None:
                    cancelled_at = time.monotonic()
                    self._ask_to_stop(client, run_id, run)
                elif time.monotonic() - cancelled_at > KILL_AFTER_S:
                    client.cancel([future], force=True)
                    self._kill(client, run)
                    raise Cancelled(
                        f"cancelled by the user ({self.where} did not stop within "
                        f"{KILL_AFTER_S:g} s and was restarted)"
                    )
            elif client.status not in ("running", "newly-created"):
                raise EngineStoppedError(self._stopped(lost=True))
        user_cancelled = cancel is not None and cancel.cancelled
        if future.status == "cancelled":  # released by us, or the scheduler went away
            if user_cancelled:
                raise Cancelled("cancelled by the user")
            raise EngineStoppedError(self._stopped(lost=True))
        try:
            result = future.result()
        except KilledWorker:
            raise EngineStoppedError(self._stopped(lost=False)) from None
        except Exception:
            if user_cancelled:
                raise Cancelled("cancelled by the user") from None
            raise
        if user_cancelled:  # it finished as Cancel came: nothing from it is used
            raise Cancelled("cancelled by the user")
        self._relay(run, progress, True)
        return result

    @staticmethod
    def _relay(run: _Run, progress: ProgressCallback | None, live: bool) -> None:
        """Hand the reports that came in to ``progress`` (on the caller's thread)."""
        while not run.reports.empty():
            report = run.reports.get_nowait()
            if progress is not None and live:
                progress(report)

    def _ask_to_stop(self, client, run_id: str, run: _Run) -> None:
        """Ask the run to stop at its next report (on a helper thread: never waits)."""
        from .engine_task import cancel_run

        workers = [run.address] if run.address else None

        def ask() -> None:
            with contextlib.suppress(Exception):  # gone or busy: the kill settles it
                client.run(cancel_run, run_id, workers=workers)

        threading.Thread(target=ask, name="spineseg-cancel", daemon=True).start()

    def _replace_dead_worker(self) -> None:
        """After a run lost its worker: start a fresh one now (it warms up while the user
        reads the error), where the engine owns its workers."""

    def _kill(self, client, run: _Run) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stopped(self, lost: bool) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class LocalEngine(DaskEngine):
    """The engine process on this computer: a dask scheduler here and one ``dask worker``
    process (:func:`start_worker_process`) on 127.0.0.1; a worker that died (killed by
    Cancel, out of memory, a crash) is replaced before the next run.

    Started on first use and kept until :meth:`close` (or the viewer exits). A run whose
    worker dies is never re-run (it would die again): it fails with
    :class:`EngineStoppedError`, and the next run starts a fresh worker process.
    """

    where = "the engine process"

    def __init__(self) -> None:
        super().__init__()
        self._cluster = None
        self._worker: subprocess.Popen | None = None

    def _connect(self) -> Client:
        import dask

        from .batch import _distributed

        distributed = _distributed("the engine process (SPINESEG_ENGINE=inprocess: without)")
        self._stop_processes()
        try:
            with dask.config.set(LOCAL_ENGINE_CONFIG), warnings.catch_warnings():
                # no web pages are served (no routes), but dask still binds its HTTP
                # server to 127.0.0.1:8787, or another port when that one is taken
                warnings.filterwarnings("ignore", "Port 8787 is already in use")
                # the scheduler only, here; the worker is a process of its own (below)
                self._cluster = distributed.LocalCluster(
                    n_workers=0,
                    processes=False,
                    protocol="tcp://",  # the worker is another process
                    host="127.0.0.1",
                    scheduler_port=0,
                    dashboard_address=None,  # no web server (nor bokeh) in the viewer
                )
            self._worker = start_worker_process(self._cluster.scheduler_address)
            # not the process's default client: a user's own dask work in the same
            # session (a notebook's dask.compute) must not land on the engine
            client = distributed.Client(self._cluster, set_as_default=False)
            client.wait_for_workers(1, timeout=WORKER_START_TIMEOUT_S)
            return client
        except Exception as exc:
            self._stop_processes()
            raise EngineStoppedError(
                f"the engine process could not start ({type(exc).__name__}: {exc}); "
                "check the free memory, or run in-process (api.segment without engine=)"
            ) from exc

    def _before_submit(self, client) -> None:
        self._replace_dead_worker()
        client.wait_for_workers(1, timeout=WORKER_START_TIMEOUT_S)

    def _replace_dead_worker(self) -> None:
        # killed (Cancel, out of memory) or crashed: a fresh worker process
        if self._cluster is not None and (self._worker is None or self._worker.poll() is not None):
            self._worker = start_worker_process(self._cluster.scheduler_address)

    def _kill(self, client, run: _Run) -> None:
        workers = {run.address: run.pid} if run.pid else {}
        if not workers:
            with contextlib.suppress(Exception):
                workers = client.run(os.getpid)
        for pid in workers.values():
            with contextlib.suppress(OSError):  # already gone
                os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        # until the scheduler has dropped the killed worker, a new run could be sent there
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                if not set(workers) & set(client.scheduler_info().get("workers", {})):
                    break
            time.sleep(POLL_S)
        if self._worker is not None and self._worker.pid in workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._worker.wait(2)  # reaped, so that it reads as dead
        self._replace_dead_worker()

    def _stopped(self, lost: bool) -> str:
        return (
            "the engine process stopped: out of memory? (the model needs more memory than "
            "was free: close other programs, or crop the image) or a crash in the model's "
            "libraries. Nothing from this run was added; your layers and edits are "
            "unchanged, and the next run starts a fresh engine"
        )

    def _stop_processes(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close(timeout=5)

    def close(self) -> None:
        super().close()
        self._stop_processes()


def start_worker_process(address: str) -> subprocess.Popen:
    """The local engine's worker: ``dask worker`` in a new interpreter (no nanny).

    Not a ``multiprocessing`` child of the viewer: ``spawn`` would import the caller's
    main script in the engine (a researcher's script without an ``if __name__ ==
    "__main__":`` guard would run again there, opening a second viewer), and ``fork``
    would copy a process with Qt and GL threads. This interpreter gets our ``sys.path``
    and environment, the local engine's dask settings, and exits on its own when the
    scheduler (this process) has been gone for a minute.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for key, value in LOCAL_ENGINE_CONFIG.items():  # DASK_A__B_C: dask's env config
        name = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        env[name] = repr(value)
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address]
    # no nanny: it would set dask's worker environment (MALLOC_TRIM_THRESHOLD_=65536 made
    # warm runs 1.4-1.6x slower; OMP_NUM_THREADS=1); the engine restarts a dead worker
    cmd += ["--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"]
    # a name of its own: the scheduler refuses a worker whose name is still registered
    # (a killed predecessor not yet removed), and the new worker would never arrive
    cmd += ["--death-timeout", "60", "--name", f"spineseg-engine-{uuid.uuid4().hex[:8]}"]
    log = os.environ.get("SPINESEG_ENGINE_LOG")  # the worker's own log, for bug reports
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True
        )
    finally:
        if log:
            out.close()


class RemoteEngine(DaskEngine):
    """The workers of a running dask scheduler (``tcp://gpu-box:8786``).

    Start one on the GPU machine with ``dask scheduler`` and ``dask worker ADDRESS
    --nthreads 1`` (one run at a time per worker; its model store must hold the models:
    ``SPINESEG_MODELS_DIR``), as for ``spineseg batch --scheduler``.
    """

    def __init__(self, address: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        super().__init__()
        self.address = address
        self.connect_timeout = connect_timeout
        self.where = f"the engine at {address}"

    def _connect(self) -> Client:
        from .batch import _distributed

        distributed = _distributed("a remote engine")
        try:
            client = distributed.Client(
                self.address, timeout=self.connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise EngineStoppedError(
                f"cannot reach the engine at {self.address} ({exc}): start it there "
                "(`dask scheduler` and `dask worker ADDRESS --nthreads 1`), or unset "
                f"{ENV_ENGINE} to run on this computer"
            ) from None
        if not client.scheduler_info().get("workers"):
            client.close()
            raise EngineStoppedError(
                f"the engine at {self.address} has no workers: start one there with "
                f"`dask worker {self.address} --nthreads 1`"
            )
        return client

    def _kill(self, client, run: _Run) -> None:
        if not run.address:
            return  # it had not started: cancelling the future was enough

        def restart() -> None:
            # a worker without a nanny cannot restart: it finishes, the result is dropped
            with contextlib.suppress(Exception):
                client.restart_workers([run.address], raise_for_error=False)

        threading.Thread(target=restart, name="spineseg-restart", daemon=True).start()

    def _stopped(self, lost: bool) -> str:
        if lost:
            return (
                f"lost the connection to the engine at {self.address}: its scheduler "
                "stopped or the network went down. Nothing from this run was added; your "
                f"layers and edits are unchanged. Start the scheduler again, or unset "
                f"{ENV_ENGINE} to run on this computer"
            )
        return (
            f"the engine worker at {self.address} stopped: out of memory? (the model needs "
            "more memory than the worker has) or a crash in the model's libraries. Nothing "
            "from this run was added; your layers and edits are unchanged"
        )


# ----------------------------------------------------------------------------- choosing

_ENGINES: dict[str, DaskEngine] = {}
_ENGINES_LOCK = threading.Lock()
_WIDGET_ENGINE: list[str | DaskEngine | None] = [None]


def get_engine(engine: str | DaskEngine = "process") -> DaskEngine:
    """The engine for ``engine``: ``"process"`` (this computer's engine process, one per
    session), a scheduler address (``"tcp://host:8786"``, one client per address) or an
    engine object (returned as is)."""
    if not isinstance(engine, str):
        if not hasattr(engine, "segment"):
            raise TypeError(
                f"engine must be 'process', a scheduler address or an engine, not {engine!r}"
            )
        return engine
    key = engine.strip()
    if key != "process" and "://" not in key:
        raise SpinesegError(
            f"engine {engine!r}: use 'process' (a local engine process) or a dask scheduler "
            "address such as tcp://gpu-box:8786"
        )
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = LocalEngine() if key == "process" else RemoteEngine(key)
        return _ENGINES[key]


def segment(
    image: Any,
    options: RunOptions,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    engine: str | DaskEngine | None = "process",
    return_probabilities: bool = True,
) -> SegmentationResult:
    """Segment ``image`` (a path, :class:`Volume` or nibabel image) on ``engine``.

    ``engine=None`` runs in this process (:func:`api.segment`); ``"process"`` on the local
    engine process; an address on that scheduler's workers. ``options`` travel as the
    :class:`RunOptions` object (validated here, before anything is sent).
    """
    if engine is None:
        from . import api

        return api.segment(
            image,
            progress=progress,
            cancel=cancel,
            return_probabilities=return_probabilities,
            options=options,
        )
    return get_engine(engine).segment(
        image, options, progress, cancel, return_probabilities=return_probabilities
    )


def use_for_widgets(engine: str | DaskEngine | None) -> None:
    """Where the widgets run from now on (``review(engine=...)``): ``"process"``,
    ``"inprocess"``, a scheduler address or an engine; None: back to the default."""
    if engine is not None and engine != IN_PROCESS:
        get_engine(engine)  # a bad value fails here, not at the first run
    _WIDGET_ENGINE[0] = engine


def widget_engine() -> str | DaskEngine | None:
    """The widgets' engine (None: in-process): what :func:`use_for_widgets` set, else
    ``$SPINESEG_ENGINE``, else the local engine process."""
    value = _WIDGET_ENGINE[0] or os.environ.get(ENV_ENGINE, "").strip() or "process"
    return None if value == IN_PROCESS else value


def probe_devices() -> list[str]:
    """The devices to offer in the widget, found without importing torch here.

    The engine process decides (``auto`` = its best device; an unusable choice is an
    error from the engine); this only lists what the machine appears to have: NVIDIA
    GPUs the driver lists, Apple silicon's MPS.
    """
    found: list[str] = []
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        n = len(list(gpus.iterdir()))
        found += ["cuda"] + [f"cuda:{i}" for i in range(n)] if n else []
    if sys.platform == "darwin" and os.uname().machine == "arm64":
        found.append("mps")
    return ["auto", *found, "cpu"]


def close_all() -> None:
    """Stop the local engine process and disconnect from remote engines."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        with contextlib.suppress(Exception):  # exiting: nothing to tell anyone
            engine.close()


atexit.register(close_all)
