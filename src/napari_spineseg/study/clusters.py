"""Where ``spineseg batch`` runs its workers: local processes, a running dask scheduler
(``--scheduler``), or SLURM jobs (``--cluster slurm``, through dask-jobqueue).

With ``--cluster slurm`` this process (on the login node) runs the dask scheduler and
submits ``--workers`` jobs with ``sbatch``; each job starts one dask worker that segments
one file at a time with ``--threads`` CPUs (``#SBATCH --cpus-per-task``), keeping its model
loaded between files, exactly as a local worker does (:mod:`napari_spineseg.batch`). The
jobs are cancelled (``scancel``) when the batch ends, however it ends. Resources not
given on the command line come from dask-jobqueue's configuration
(``~/.config/dask/jobqueue.yaml``, section ``jobqueue.slurm``), then from the defaults
here. A file whose worker dies (killed at the job's memory or walltime limit, or
``scancel``) is run once more, then reported failed, as on the local cluster; the job
itself is replaced (:func:`replace_lost_jobs`), so the batch never runs out of workers.
Ctrl-C cancels the jobs and exits 130 (:func:`keep_ctrl_c`). Tried under a real
slurmctld: ``tests/test_slurm_real.py`` and ``scripts/slurm-localhost.sh`` (docs/batch.md).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import SpinesegError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = ["ClusterError", "SlurmResources", "add_cluster_arguments", "batch_client"]

SLURM_INSTALL_HINT = "pip install 'napari-spineseg[slurm]'"
# Jobs submitted when --workers is not given (never more than there are files to do).
DEFAULT_SLURM_JOBS = 10
# Memory of a job when neither --slurm-memory nor jobqueue.slurm.memory says: one worker
# holding an nnU-Net model, one image and its prediction, with room to spare.
DEFAULT_SLURM_MEMORY = "8GB"
JOB_NAME = "spineseg"
# The longest the batch waits for its jobs' workers before it begins with those it has
# (the others take images as they arrive). Jobs still queued in SLURM are not waited for:
# on a busy cluster they may wait for hours.
START_WAIT_SECONDS = 60.0
# How often the jobs are checked: one whose worker was lost (scancel, walltime, a node
# failure) is replaced by a new job, dask's lost-worker-timeout (15 s) after the loss.
REPLACE_EVERY_SECONDS = 5.0


class ClusterError(SpinesegError):
    """A cluster that cannot be started as asked (the message says why and the fix)."""


def add_cluster_arguments(bat: argparse.ArgumentParser) -> None:
    """``--cluster`` and the SLURM resources of ``spineseg batch``."""
    group = bat.add_argument_group(
        "SLURM cluster (--cluster slurm; needs dask-jobqueue: " + SLURM_INSTALL_HINT + ")"
    )
    group.add_argument(
        "--cluster",
        choices=("local", "slurm"),
        default="local",
        help="where the workers run: local processes (default), or SLURM jobs submitted "
        "with sbatch from this machine (a login node). With slurm, --workers is the number "
        f"of jobs (default: one per file, at most {DEFAULT_SLURM_JOBS}), each one worker "
        "segmenting one file at a time with --threads CPUs",
    )
    group.add_argument(
        "--slurm-partition", metavar="NAME", help="partition (queue) of the jobs (#SBATCH -p)"
    )
    group.add_argument(
        "--slurm-account", metavar="NAME", help="account charged for the jobs (#SBATCH -A)"
    )
    group.add_argument(
        "--slurm-memory",
        metavar="SIZE",
        help=f"memory of each job (#SBATCH --mem; default {DEFAULT_SLURM_MEMORY}); a worker "
        "above it is restarted and its file run once more",
    )
    group.add_argument(
        "--slurm-walltime",
        metavar="HH:MM:SS",
        help="time limit of each job (#SBATCH -t; default dask-jobqueue's, 00:30:00); a "
        "file still running at the limit is run once more on another job",
    )
    group.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra #SBATCH line, repeatable: --slurm-option=--gres=gpu:1 "
        "--slurm-option=--qos=short",
    )
    group.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="COMMAND",
        help="a shell line each job runs before its worker, repeatable: "
        "--slurm-setup 'module load cuda'",
    )
    group.add_argument(
        "--slurm-interface",
        metavar="IFACE",
        help="network interface the scheduler listens on and the workers use (e.g. ib0); "
        "default: dask's choice",
    )
    group.add_argument(
        "--slurm-log-dir",
        metavar="DIR",
        help="folder for the jobs' output files (default: SLURM's, slurm-<id>.out here)",
    )


@dataclass(frozen=True)
class SlurmResources:
    """What each SLURM job asks for, and how many jobs. ``None`` leaves a setting to
    dask-jobqueue's configuration (then to its defaults)."""

    jobs: int
    cpus: int = 1
    memory: str | None = None
    walltime: str | None = None
    partition: str | None = None
    account: str | None = None
    directives: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    interface: str | None = None
    log_directory: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, n_files: int) -> SlurmResources:
        """The resources ``spineseg batch`` asked for, for ``n_files`` files to do."""
        jobs = args.workers or DEFAULT_SLURM_JOBS
        return cls(
            jobs=max(1, min(int(jobs), int(n_files))),
            cpus=int(args.threads),
            memory=args.slurm_memory,
            walltime=args.slurm_walltime,
            partition=args.slurm_partition,
            account=args.slurm_account,
            directives=tuple(args.slurm_option),
            setup=tuple(args.slurm_setup),
            interface=args.slurm_interface,
            log_directory=args.slurm_log_dir,
        )

    def cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for these resources.

        One worker process of one dask thread per job (one file at a time, as on the local
        cluster), given ``cpus`` CPUs through ``job_cpu`` (its inference threads).
        """
        import dask

        memory = self.memory or dask.config.get("jobqueue.slurm.memory", None)
        kwargs: dict[str, Any] = {
            "cores": 1,
            "processes": 1,
            "job_cpu": self.cpus,
            "memory": memory or DEFAULT_SLURM_MEMORY,
            "job_name": JOB_NAME,
        }
        optional = {
            "walltime": self.walltime,
            "queue": self.partition,
            "account": self.account,
            "interface": self.interface,
            "log_directory": self.log_directory,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if self.directives:
            kwargs["job_extra_directives"] = list(self.directives)
        if self.setup:
            kwargs["job_script_prologue"] = list(self.setup)
        return kwargs


def keep_ctrl_c() -> None:
    """Give Ctrl-C back to Python after importing dask-jobqueue.

    Importing ``dask_jobqueue`` (its ``runner`` module) replaces this process's SIGINT
    handler with ``sys.exit()``: Ctrl-C then ended ``spineseg batch --cluster slurm``
    with exit code 0 and no word, as if the study were done (a script's next step would
    run). With Python's handler back, Ctrl-C raises KeyboardInterrupt: the jobs are
    cancelled, the command says it was cancelled and exits with 130, as a local batch.
    """
    handler = signal.getsignal(signal.SIGINT)
    if getattr(handler, "__module__", None) == "dask_jobqueue.runner":
        with contextlib.suppress(ValueError):  # not the main thread: not its to change
            signal.signal(signal.SIGINT, signal.default_int_handler)


def slurm_cluster(resources: SlurmResources):
    """A ``dask_jobqueue.SLURMCluster`` for ``resources``, its scheduler started here, no
    job submitted yet (:func:`submit_jobs`). Raises :class:`ClusterError` when
    dask-jobqueue is missing, ``sbatch`` is not on PATH or a resource is refused."""
    import dask

    from ..batch import RETRIES_AFTER_WORKER_DEATH

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ClusterError(
            "--cluster slurm needs dask-jobqueue, which is not installed; install it with: "
            f"{SLURM_INSTALL_HINT}"
        ) from exc
    keep_ctrl_c()
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "--cluster slurm: the sbatch command is not found on PATH; run spineseg batch "
            "on a machine that submits SLURM jobs (the cluster's login node, after its "
            "`module load slurm` if it has one), or without --cluster to use this machine"
        )
    allowed = {"distributed.scheduler.allowed-failures": RETRIES_AFTER_WORKER_DEATH}
    try:
        with dask.config.set(allowed):  # read once, when the scheduler starts
            return SLURMCluster(**resources.cluster_kwargs())
    except ValueError as exc:  # e.g. a memory size dask cannot read
        raise ClusterError(
            f"--cluster slurm: {exc}; check the --slurm-* values (--slurm-memory takes a "
            "size such as 16GB)"
        ) from exc


def submit_jobs(cluster, jobs: int) -> list[str]:
    """Submit ``jobs`` jobs and wait until sbatch accepted them all; their SLURM ids.

    Waiting here (dask-jobqueue otherwise submits in the background) turns a refused job
    (an unknown partition or account, a walltime over the limit) into a
    :class:`ClusterError` with sbatch's own message, instead of a batch waiting forever
    for workers that will never come.
    """
    from distributed.core import Status

    # What cluster.scale(jobs=...) does, but awaited here, where its errors arrive (scale
    # submits in a callback whose exception is only logged).
    for _ in range(jobs):
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        cluster.sync(cluster._correct_state)
    except RuntimeError as exc:  # dask-jobqueue: the command's exit code and its stderr
        for job in cluster.workers.values():
            if job.job_id is None:  # never submitted: nothing to cancel when closing
                job.status = Status.failed
        raise ClusterError(
            f"--cluster slurm: sbatch refused the job:\n{exc}\ncheck --slurm-partition, "
            "--slurm-account, --slurm-walltime and --slurm-option against `sinfo` and "
            "your site's limits"
        ) from exc
    return [str(job.job_id) for job in cluster.workers.values()]


def replace_lost_jobs(cluster, log: TextIO | None = None) -> None:
    """Keep the cluster at its number of jobs while the batch runs: a job whose worker
    was lost (scancel, walltime, node failure) is replaced by a new one, said on ``log``.

    dask-jobqueue does not do it by itself (only its adaptive mode resubmits, and that
    mode also cancels idle jobs): without this, a batch whose jobs all ended would wait
    forever for workers. The image the lost worker was running is the scheduler's
    business (run once more, then reported failed); this only brings back the worker.
    Stops when the cluster closes. A job that never started a worker is not replaced
    (it is still queued, or its script fails: its log says why).
    """
    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    known = {name: job.job_id for name, job in cluster.workers.items()}
    refused: list[str] = []  # sbatch's refusal, said once, not at every check

    async def replace() -> None:
        # dask-jobqueue forgets a lost worker's job lost-worker-timeout after the loss;
        # _correct_state then submits a job for each name of the spec without one
        lost = {name: known[name] for name in set(known) - set(cluster.workers)}
        if not lost:
            return
        try:
            await cluster._correct_state()
        except RuntimeError as exc:  # sbatch refused (a drained partition, a quota)
            for name in lost:  # never submitted: forgotten, so the next check tries again
                job = cluster.workers.get(name)
                if job is not None and job.job_id is None:
                    job.status = Status.failed  # nothing to cancel when the cluster closes
                    del cluster.workers[name]
            if log is not None and not refused:
                log.write(
                    f"SLURM: could not replace job(s) {', '.join(lost.values())}, trying "
                    f"again every {REPLACE_EVERY_SECONDS:.0f} s: {exc}\n"
                )
                log.flush()
            refused.append(str(exc))
            return
        refused.clear()
        for name, old in lost.items():
            job = cluster.workers.get(name)
            if job is not None and job.job_id:
                known[name] = job.job_id
                if log is not None:
                    log.write(
                        f"SLURM: job {old} ended while the batch ran; submitted job "
                        f"{job.job_id} in its place\n"
                    )
                    log.flush()

    def install() -> None:  # a PeriodicCallback starts on the loop it runs on
        every = PeriodicCallback(replace, REPLACE_EVERY_SECONDS * 1000)
        cluster.periodic_callbacks["spineseg-replace-lost-jobs"] = every  # stopped on close
        every.start()

    cluster.loop.add_callback(install)


def running_jobs(ids: list[str]) -> int | None:
    """How many of the jobs ``ids`` SLURM is running (``squeue``); None when squeue does
    not say (not found, an error, output it cannot read)."""
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split() for line in listed.stdout.splitlines()]
    if listed.returncode != 0 or any(len(row) != 2 or row[0] not in ids for row in rows):
        return None
    return sum(state == "RUNNING" for _, state in rows)


def wait_for_jobs(client: Client, ids: list[str], timeout: float = START_WAIT_SECONDS) -> int:
    """Wait until the workers of the jobs ``ids`` are connected; how many are.

    Not for jobs still waiting in SLURM's queue (``squeue``: PENDING), which may wait for
    hours: once every running job's worker is connected, the batch starts with them,
    and the queued ones take images as they arrive (one image per worker at a time, so
    a late worker gets the next one). At most ``timeout`` seconds in any case.
    """
    deadline = time.monotonic() + timeout
    asked_at, asked_for = 0.0, 0  # squeue asked when a worker arrives, else every 5 s
    while True:
        connected = len(client.nthreads())
        now = time.monotonic()
        if connected >= len(ids) or now > deadline:
            return connected
        if connected and (connected != asked_for or now - asked_at > 5.0):
            asked_at, asked_for = now, connected
            running = running_jobs(ids)
            if running is not None and connected >= running:
                return connected
        time.sleep(0.1)


@contextmanager
def slurm_client(resources: SlurmResources, log: TextIO | None = None) -> Iterator[Client]:
    """A ``distributed.Client`` on SLURM jobs for ``resources``; the jobs are cancelled
    and the scheduler stopped on leaving, even on an error or Ctrl-C.

    Returned when the running jobs' workers are connected (:func:`wait_for_jobs`);
    a job that ends while the block runs is replaced (:func:`replace_lost_jobs`).
    """
    from distributed import Client

    cluster = slurm_cluster(resources)
    try:
        t0 = time.monotonic()
        ids = submit_jobs(cluster, resources.jobs)
        if log is not None:
            log.write(
                f"SLURM: submitted {len(ids)} job(s) {', '.join(ids)} ({resources.cpus} "
                f"CPU(s), {resources.cluster_kwargs()['memory']} each); the batch starts as "
                "they run (squeue -u $USER)\n"
            )
            log.flush()
        with Client(cluster) as client:
            connected = wait_for_jobs(client, ids)
            if log is not None:
                late = "" if connected == len(ids) else "; the others join when their jobs start"
                log.write(
                    f"SLURM: {connected} of {len(ids)} worker(s) connected after "
                    f"{time.monotonic() - t0:.1f} s{late}\n"
                )
                log.flush()
            replace_lost_jobs(cluster, log)
            yield client
    finally:
        cluster.close()


@contextmanager
def batch_client(args: argparse.Namespace, n_files: int) -> Iterator[Client | str | None]:
    """What ``spineseg batch`` passes as ``client=`` for ``n_files`` files to segment: a
    client of SLURM jobs (``--cluster slurm``; closed on leaving), the ``--scheduler``
    address, or None (``segment_many`` starts a local cluster)."""
    if getattr(args, "cluster", "local") != "slurm":
        yield args.scheduler
        return
    if args.scheduler:
        raise ClusterError(
            "batch: --scheduler and --cluster slurm both say where the workers run; "
            "give one of them"
        )
    # What segment_many checks before starting a local cluster (model installed, custom
    # model trusted), checked here before jobs are submitted: the jobs run as this user
    # with this environment, so they would only find the same problem once per image.
    from ..batch import _precheck
    from ..cli import run_options_from_args

    _precheck(run_options_from_args(args), None)
    log = None if args.quiet else sys.stderr
    with slurm_client(SlurmResources.from_args(args, n_files), log) as client:
        yield client
