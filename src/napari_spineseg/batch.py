"""Segment many scans in parallel on a dask.distributed cluster.

>>> from napari_spineseg.batch import segment_many
>>> items = segment_many(sorted(Path("bids").rglob("*_T2w.nii.gz")), "lesion_sci_t2",
...                      out_dir="derivatives/spineseg", n_workers=4, threads_per_worker=2)
>>> [i.path for i in items if i.error]          # what failed, and why: i.error

Why dask.distributed rather than a loop or a thread pool: a worker is a *process* that
stays alive between files, so the model is loaded once per worker (the engine cache of
:mod:`napari_spineseg.segmentation` lives in the worker process) and a crash, a leak or an
out-of-memory kill in one file costs only that worker, which the nanny restarts. The same
code runs on a laptop (a ``LocalCluster`` started and closed here) or on a cluster
(``client=`` / ``spineseg batch --scheduler ADDRESS``).

Each task is exactly :func:`api.segment` + :func:`api.save` on one file: SCT file names,
JSON sidecars, atomic writes, previous versions kept; each sidecar's GeneratedBy entry
also gets the model's per-slice confidence record (:mod:`.study.confidence`: the
probability maps reduced on the worker, then dropped). A failure is recorded on its item
(the message kept) and never stops the batch.

Threads: every worker runs **one file at a time** (dask ``nthreads=1``) and gives its
inference ``threads_per_worker`` CPU threads (torch / onnxruntime intra-op, through
``SPINESEG_NUM_THREADS``), so ``n_workers * threads_per_worker`` should not exceed the
cores. On your own cluster start the workers with ``--nthreads 1`` for the same reason
(several files at once in one worker would share, and oversubscribe, one model).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import TaskSpec
from .errors import Cancelled, SpinesegError
from .options import RunOptions, run_options
from .progress import CancelToken, Progress, ProgressCallback

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = ["BatchItem", "default_workers", "local_cluster", "segment_many", "summary"]

INSTALL_HINT = "pip install 'dask[distributed]'"

# How many times the scheduler re-runs a file whose worker process died (killed for
# memory, a segfault in the model) before reporting it failed, on a cluster started here.
# dask's default (3) would spend four model loads on a file that exhausts memory.
RETRIES_AFTER_WORKER_DEATH = 1


@dataclass
class BatchItem:
    """The outcome of one file: the masks written, or why it failed.

    ``outputs`` is None when the file failed; ``error`` then holds the message (a
    :class:`~napari_spineseg.errors.SpinesegError`'s message as is, otherwise prefixed with
    the exception type). ``seconds`` is the wall time on the worker (load + segment +
    save); ``worker`` the dask worker that ran it; ``notes`` what the run noted (e.g. a 4D
    input averaged over time).
    """

    path: Path
    outputs: list[Path] | None
    error: str | None
    seconds: float
    worker: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _distributed(purpose: str = "batch segmentation"):
    """The ``distributed`` module, or a SpinesegError that says how to install it (a
    dependency of napari-spineseg: missing only from a broken or partial install)."""
    try:
        import distributed
    except ImportError as exc:
        raise SpinesegError(
            f"{purpose} needs dask.distributed, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return distributed


def default_workers(threads_per_worker: int = 1) -> int:
    """Usable cores // threads per worker (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(threads_per_worker)))


# ----------------------------------------------------------------------------- worker side


def _segment_one(
    path: str,
    options: RunOptions,
    spec: TaskSpec | None,
    out_dir: str | None,
    threads: int,
    client_pid: int,
    entry_extra: dict[str, Any] | None = None,
    sidecar_extra: dict[str, Any] | None = None,
    confidence: bool = True,
) -> BatchItem:
    """Runs on a worker: api.segment + api.save on one file; never raises.

    ``options`` travel as the object (it pickles); ``spec`` is the task when it was given
    as a :class:`TaskSpec` rather than by name. ``entry_extra`` is merged into each
    output's GeneratedBy entry and ``sidecar_extra`` into its sidecar's top level (e.g.
    BIDS ``Sources``), after the mask is written. ``confidence``: add each output's
    model-confidence record to its GeneratedBy entry (:mod:`.study.confidence`).
    """
    from . import api

    # Inference threads of this worker process. Not in the client's own process (a
    # threaded LocalCluster): there the user's environment stays the user's.
    if os.getpid() != client_pid:
        os.environ["SPINESEG_NUM_THREADS"] = str(threads)
    worker = None
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):  # pragma: no cover - called outside a worker
        pass
    t0 = time.perf_counter()
    try:
        result = api.segment(path, task=spec, options=options, return_probabilities=confidence)
        written = _save(api, result, out_dir, entry_extra, sidecar_extra, confidence)
    except SpinesegError as exc:
        return BatchItem(Path(path), None, str(exc), time.perf_counter() - t0, worker)
    except Exception as exc:  # a bug or an unexpected input: keep the batch going
        msg = f"{type(exc).__name__}: {exc}"
        return BatchItem(Path(path), None, msg, time.perf_counter() - t0, worker)
    notes = [str(n) for n in result.provenance.get("notes", [])]
    return BatchItem(Path(path), written, None, time.perf_counter() - t0, worker, notes)


def _save(api, result, out_dir, entry_extra, sidecar_extra, confidence: bool) -> list[Path]:
    """api.save, with each output's confidence record in its own GeneratedBy entry.

    The probability maps (one float32 volume per class) are reduced to the records
    first and dropped at once, so a worker holds them only while the records are made.
    """
    records = {}
    if confidence:
        from .study.confidence import RECORD_KEY, records_of

        records = {s: {RECORD_KEY: r} for s, r in records_of(result).items()}
        result.probabilities.clear()
    return api.save(
        result,
        out_dir,
        entry_extra=entry_extra,
        sidecar_extra=sidecar_extra,
        output_extra=records,
    )


# ----------------------------------------------------------------------------- client side


def _check_names(paths: list[Path], out_dirs: Path | None | list[Path | None]) -> None:
    """Refuse a batch in which two inputs would write the same mask files."""
    from .io.checks import split_nifti_name

    if not isinstance(out_dirs, list):
        out_dirs = [out_dirs] * len(paths)

    seen: dict[Path, Path] = {}
    for p, out_dir in zip(paths, out_dirs, strict=True):
        base = split_nifti_name(p.name)[0]
        target = (out_dir if out_dir is not None else p.parent) / base
        if target in seen:
            what = "is listed twice" if seen[target] == p else f"and {seen[target]}"
            raise SpinesegError(
                f"{p} {what} would write the same output files ({target}_*.nii.gz); "
                "remove the duplicate or segment them into different output folders"
            )
        seen[target] = p


def _precheck(options: RunOptions, spec: TaskSpec | None) -> None:
    """Fail once, before starting workers, when the task or model cannot run at all.

    A custom model zip is also extracted here, once, so that the workers find it in the
    store instead of all extracting it at the same time.
    """
    from . import catalog
    from .models import store

    task = spec if spec is not None else options.task
    if task is None and options.model is None:
        raise SpinesegError("batch: give a task (see `spineseg tasks`) or model=<folder>")
    if options.model is not None:
        store.prepare_custom(options.model, trust=options.trust)  # untrusted, not a model
        if task is not None:
            catalog.get_task(task)
        return
    store.model_folder(store._spec_for(task))  # raises with the install command


def segment_many(
    paths: Sequence[str | os.PathLike],
    task: str | TaskSpec | None = None,
    *,
    out_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model: str | os.PathLike | None = None,
    trust: bool | None = None,
    device: str | None = None,
    client: Client | str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    threshold: float | None = None,
    largest: bool | None = None,
    fill_holes: bool | None = None,
    remove_small: str | Sequence[str] | int | None = None,
    test_time_aug: bool | None = None,
    label_vert: bool | None = None,
    sct_compat: bool | None = None,
    profile: str | None = None,
    options: RunOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    entry_extra: Sequence[dict[str, Any]] | None = None,
    sidecar_extra: Sequence[dict[str, Any]] | None = None,
    confidence: bool = True,
) -> list[BatchItem]:
    """Segment every file of ``paths`` with ``task`` (or ``model``), one dask task each.

    Returns one :class:`BatchItem` per input, in the order given; a file that fails does
    not stop the others (its ``error`` says why). Masks are written as :func:`api.save`
    writes them: next to each input, or into ``out_dir`` (created if needed) with the
    input's name and the task's SCT suffixes. ``out_dir`` may also be one folder per
    input (a BIDS-derivatives layout, :mod:`napari_spineseg.study.bids`), and
    ``entry_extra``/``sidecar_extra`` one dict per input for its sidecars.
    ``confidence``: the models' probability maps are asked for and reduced, per output
    file, to the per-slice confidence record of its GeneratedBy entry
    (:mod:`napari_spineseg.study.confidence`: what the Cohort table and the QC report
    show), then dropped; False skips them (a little faster; no confidence shown).

    The run is one :class:`~napari_spineseg.options.RunOptions`, validated here and sent
    to every worker as is: ``options``, with the keywords ``task``, ``model``, ``trust``,
    ``device`` and ``threshold`` ... ``profile`` (as :func:`api.segment`) overriding it
    where given. ``device`` defaults to ``cpu`` when neither names one: every worker
    process would load its own copy of the model on the one GPU.

    ``client``: a ``distributed.Client`` or a scheduler address (``"tcp://host:8786"``);
    when None, a ``LocalCluster`` of ``n_workers`` processes (default: cores //
    ``threads_per_worker``, at most one per file) is started and closed here
    (:func:`local_cluster`: a file whose worker process dies is run once more, then
    reported failed; the other files are not affected).
    ``threads_per_worker``: CPU threads of each worker's inference (one file at a time per
    worker). ``progress`` gets a :class:`~napari_spineseg.progress.Progress` each time a
    file finishes (first, with ``step=0``, the dask dashboard address when the scheduler
    has one); ``cancel`` stops the batch between files (files already written stay;
    raises :class:`~napari_spineseg.errors.Cancelled`).

    Without ``client``, the task is checked in this process before workers start
    (installed model, trusted custom model), so a batch that cannot run fails once, not
    once per file. With a cluster of your own, the workers must see the inputs, the output
    folder and a model store with the model (``SPINESEG_MODELS_DIR``); a problem there is
    reported on every item.
    """
    spec = task if isinstance(task, TaskSpec) else None
    if device is None and options is None:
        device = "cpu"
    opts = run_options(
        options,
        task=spec.id if spec is not None else task,
        model=model,
        trust=trust,
        device=device,
        threshold=threshold,
        largest=largest,
        fill_holes=fill_holes,
        remove_small=remove_small,
        test_time_aug=test_time_aug,
        label_vert=label_vert,
        sct_compat=sct_compat,
        profile=profile,
    )
    files = [Path(p).expanduser().absolute() for p in paths]
    if not files:
        raise SpinesegError("batch: no input files given")
    threads = int(threads_per_worker)
    if threads < 1:
        raise SpinesegError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    if n_workers is not None and int(n_workers) < 1:
        raise SpinesegError(f"n_workers must be >= 1, got {n_workers}")
    if out_dir is None or isinstance(out_dir, str | os.PathLike):
        out_dir = [out_dir] * len(files)
    if len(out_dir) != len(files):
        raise SpinesegError(f"out_dir: {len(out_dir)} folders for {len(files)} files")
    outs = [Path(o).expanduser().absolute() if o is not None else None for o in out_dir]
    for out in set(outs) - {None}:
        if out.exists() and not out.is_dir():
            raise SpinesegError(f"out_dir {out} exists and is not a folder")
    _check_names(files, outs)
    if client is None:  # a cluster of your own may see another model store: its workers say
        _precheck(opts, spec)
    distributed = _distributed()
    for out in set(outs) - {None}:
        out.mkdir(parents=True, exist_ok=True)
    per_file = [
        (
            str(o) if o else None,
            entry_extra[i] if entry_extra else None,
            sidecar_extra[i] if sidecar_extra else None,
        )
        for i, o in enumerate(outs)
    ]

    own_cluster = own_client = None
    try:
        if client is None:
            workers = int(n_workers) if n_workers else default_workers(threads)
            own_cluster = local_cluster(min(workers, len(files)))
            client = own_client = distributed.Client(own_cluster)
        elif isinstance(client, str):
            client = own_client = distributed.Client(client)
        link = _dashboard_link(client)
        if link and progress is not None:  # said once, before the first file finishes
            progress(Progress(0.0, f"dask dashboard: {link}", 0, len(files)))
        # On our cluster, one file per worker thread at a time: a worker that dies then
        # takes down only the file it was running, not files queued behind it (the
        # scheduler counts a death against every task assigned to that worker). Also on a
        # cluster object of this process (the SLURM jobs of study.clusters), whose workers
        # arrive, die and are replaced during the batch: counted again as each file ends.
        ours = own_cluster is not None or getattr(client, "cluster", None) is not None
        in_flight = (lambda: max(sum(client.nthreads().values()), 1)) if ours else None
        run = (opts, spec, threads, bool(confidence))
        return _run(distributed, client, files, run, per_file, progress, cancel, in_flight)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def local_cluster(n_workers: int, **cluster_kwargs: Any):
    """The ``LocalCluster`` a batch starts when given no client: ``n_workers`` processes of
    one thread on 127.0.0.1 (its dashboard too, on a free port: nothing is opened to the
    network), and a file
    whose worker dies re-run :data:`RETRIES_AFTER_WORKER_DEATH` times, then reported.

    ``cluster_kwargs`` go to ``LocalCluster`` as is (e.g. ``preload=`` in tests).
    """
    import dask

    distributed = _distributed()
    allowed = {"distributed.scheduler.allowed-failures": RETRIES_AFTER_WORKER_DEATH}
    with dask.config.set(allowed):  # read once, when the scheduler starts
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            **cluster_kwargs,
        )


def _dashboard_link(client) -> str | None:
    """The scheduler's dashboard address, or None when it runs without one."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        link = str(client.dashboard_link)
        has_pages = client.run_on_scheduler(_has_bokeh)
    except Exception:  # an old scheduler or none reachable: the batch itself will say
        return None
    return link if has_pages else f"{link} (its pages need bokeh: pip install bokeh)"


def _has_bokeh() -> bool:
    """Runs on the scheduler: whether its dashboard can draw pages."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _worker_died_message(client) -> str:
    """Why a file failed when its worker process died every time it ran it."""
    try:  # the scheduler's own setting: a cluster of yours may differ from ours
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        times = "twice" if allowed == 1 else f"{int(allowed) + 1} times"
    except Exception:  # an old or locked-down scheduler: say what is certain
        times = "more than once"
    return (
        f"the worker process running it died {times}: out of memory? (a file too large for "
        "one worker's memory: run fewer --workers, or give SLURM jobs more --slurm-memory), "
        "its SLURM job cancelled or out of time (--slurm-walltime), or a crash in the model; "
        "the other files are not affected"
    )


def _run(
    distributed, client, files, run, per_file, progress, cancel, in_flight
) -> list[BatchItem]:
    token = uuid.uuid4().hex[:8]
    options, spec, threads, confidence = run

    def submit(i: int):
        p = files[i]
        return client.submit(
            _segment_one,
            str(p),
            options,
            spec,
            per_file[i][0],
            threads,
            os.getpid(),
            per_file[i][1],
            per_file[i][2],
            confidence,
            key=f"spineseg-{token}-{i}-{p.name}",
            pure=False,
        )

    first = len(files) if in_flight is None else min(in_flight(), len(files))
    futures = {submit(i): i for i in range(first)}
    queue = iter(range(first, len(files)))
    items: list[BatchItem | None] = [None] * len(files)
    done = 0
    try:
        running = distributed.as_completed(list(futures))
        for fut in running:
            i = futures[fut]
            if not (cancel is not None and cancel.cancelled):
                room = 0 if in_flight is None else in_flight() - running.count()
                for nxt in itertools.islice(queue, max(room, 0)):
                    new = submit(nxt)
                    futures[new] = nxt
                    running.add(new)
            try:
                items[i] = fut.result()
            except distributed.KilledWorker:  # died on every try (killed for memory, ...)
                items[i] = BatchItem(files[i], None, _worker_died_message(client), 0.0)
            except Exception as exc:  # the task was lost or cancelled on the cluster
                items[i] = BatchItem(
                    files[i], None, f"the worker failed: {type(exc).__name__}: {exc}", 0.0
                )
            done += 1
            if progress is not None:
                state = "ok" if items[i].ok else "failed"
                progress(
                    Progress(done / len(files), f"{files[i].name}: {state}", done, len(files))
                )
            if cancel is not None and cancel.cancelled:
                raise Cancelled(
                    f"batch cancelled after {done} of {len(files)} files; "
                    "the masks already written are kept"
                )
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    return [it for it in items if it is not None]


def summary(items: Sequence[BatchItem]) -> str:
    """A plain-text table of a batch: status, seconds, input, outputs or error."""
    lines = [f"{'STATUS':<7} {'SECONDS':>8}  INPUT -> OUTPUTS / ERROR"]
    for it in items:
        if it.ok:
            outs = ", ".join(p.name for p in it.outputs or [])
            lines.append(f"{'ok':<7} {it.seconds:8.1f}  {it.path} -> {outs}")
        else:
            lines.append(f"{'FAILED':<7} {it.seconds:8.1f}  {it.path}: {it.error}")
    failed = sum(not it.ok for it in items)
    lines.append(f"{len(items) - failed} of {len(items)} segmented, {failed} failed")
    return "\n".join(lines)
