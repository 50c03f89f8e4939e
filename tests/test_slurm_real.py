"""`spineseg batch --cluster slurm` under a real SLURM controller (opt-in).

tests/test_cohort_slurm.py runs dask-jobqueue's job scripts through a fake ``sbatch``;
here ``sbatch``, ``squeue`` and ``scancel`` are SLURM's own, so the jobs are queued,
started, signalled and killed by slurmctld/slurmd. Skipped unless
``SPINESEG_TEST_SLURM=1`` is set and ``sinfo`` answers, but for two tests that need no
SLURM and run in CI: the Ctrl-C check (a few seconds) and a job dying twice on the fake
``sbatch`` of test_cohort_slurm.py (about 20 s). On one machine, as root:
``scripts/slurm-localhost.sh up``, then

    SPINESEG_TEST_SLURM=1 pytest -p no:randomly tests/test_slurm_real.py -v -s

The jobs run on this machine's node (scheduler and workers on 127.0.0.1, set
``SPINESEG_TEST_SLURM_INTERFACE`` for another interface): on a multi-node cluster the
temporary folders would have to be on a filesystem the nodes share. Each job asks for 1
CPU and 2 GB. The study is 4 phantom images segmented with the shipped demo model.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _slurm_answers() -> bool:
    if os.environ.get("SPINESEG_TEST_SLURM") != "1" or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_slurm = pytest.mark.skipif(
    not _slurm_answers(),
    reason="needs a SLURM controller (sinfo) and SPINESEG_TEST_SLURM=1 "
    "(scripts/slurm-localhost.sh up)",
)

pytest.importorskip("dask_jobqueue", reason="the slurm extra is not installed")
from napari_spineseg import cli  # noqa: E402
from napari_spineseg.study import bids  # noqa: E402
from test_cohort_bids import MODEL, make_bids  # noqa: E402
from test_cohort_slurm import _running_jobs, fake_slurm  # noqa: E402, F401 (a fixture)

INTERFACE = os.environ.get("SPINESEG_TEST_SLURM_INTERFACE", "lo")
# A dask worker preload (in every worker the jobs start, restarted ones included): the
# worker running HELD_IMAGE writes "<pid> <SLURM job id>" to HELD_LOG and holds it
# HELD_SECONDS before segmenting it, so that it can be killed in the middle of that image;
# the other images take OTHER_SECONDS more, so that some are still to do when it dies.
HOOK = """
import os, time
from pathlib import Path
import napari_spineseg.api as api

_segment = api.__dict__.setdefault("_segment_unpatched", api.segment)


def _held(path, *args, **kwargs):
    if Path(path).name == os.environ["HELD_IMAGE"]:
        with open(os.environ["HELD_LOG"], "a") as log:
            log.write(f"{os.getpid()} {os.environ.get('SLURM_JOB_ID')}\\n")
        time.sleep(float(os.environ["HELD_SECONDS"]))
    else:
        time.sleep(float(os.environ["OTHER_SECONDS"]))
    return _segment(path, *args, **kwargs)


api.segment = _held
"""


def _batch_command(root: Path, deriv: Path, logs: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "napari_spineseg.cli",
        "batch",
        "--model",
        MODEL,
        "--trust",
        "-i",
        str(root),
        "-o",
        str(deriv),
        "--cluster=slurm",
        "--workers=2",
        "--threads=1",
        "--slurm-memory=2GB",
        "--slurm-walltime=00:10:00",
        f"--slurm-interface={INTERFACE}",
        f"--slurm-log-dir={logs}",
    ]


def _env(**extra: str) -> dict[str, str]:
    # sbatch passes this environment to the jobs: their workers import this source
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "SPINESEG_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _squeue() -> dict[str, str]:
    """{job id: state} of this user's spineseg jobs."""
    listed = subprocess.run(
        ["squeue", "-h", "-u", str(os.getuid()), "-n", "spineseg", "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split() for line in listed.stdout.splitlines())


def _job_ids(stderr: str) -> list[str]:
    """The jobs the batch said it submitted (at the start, and in place of lost ones)."""
    ids = []
    for line in stderr.splitlines():
        if line.startswith("SLURM: submitted ") and " job(s) " in line:
            listed = line.split(" job(s) ", 1)[1].split(" (", 1)[0]
            ids += [i.strip() for i in listed.split(",")]
        elif "; submitted job " in line:
            ids.append(line.split("; submitted job ", 1)[1].split()[0])
    return ids


class Batch:
    """``spineseg batch --cluster slurm`` in a child process, watched from here."""

    def __init__(self, cmd: list[str], env: dict[str, str], out: Path):
        self.stdout = out.with_suffix(".stdout").open("w+")
        self.stderr = out.with_suffix(".stderr").open("w+")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.stdout, stderr=self.stderr)
        self.seen: dict[str, set[str]] = {}  # job id: states squeue showed
        self.job_ids: list[str] = []

    def poll_squeue(self) -> None:
        for job, state in _squeue().items():
            self.seen.setdefault(job, set()).add(state)

    def wait(self, timeout: float = 300) -> tuple[int, str, str, float]:
        """exit code, stdout, stderr, seconds; squeue watched until the end."""
        try:
            while self.proc.poll() is None:
                if time.monotonic() - self.t0 > timeout:
                    pytest.fail(f"the batch ran more than {timeout} s")
                self.poll_squeue()
                time.sleep(0.25)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # Ctrl-C: it cancels its jobs
                self.proc.wait(60)
            self.job_ids = _job_ids(Path(self.stderr.name).read_text())
            _SUBMITTED.extend(self.job_ids)
        seconds = time.monotonic() - self.t0
        self.stdout.seek(0)
        self.stderr.seek(0)
        return self.proc.returncode, self.stdout.read(), self.stderr.read(), seconds


_SUBMITTED: list[str] = []  # every job id a batch of these tests said it submitted


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs():
    """After each test, cancel what a failing test may have left running (SLURM ignores
    finished ids). The tests check first that the batch itself left none."""
    yield
    if _SUBMITTED:
        subprocess.run(["scancel", *_SUBMITTED], capture_output=True)
        _SUBMITTED.clear()


def _no_job_left(ids: list[str], wait: float = 30.0) -> bool:
    deadline = time.monotonic() + wait
    while set(ids) & set(_squeue()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _nifti_bytes(path: Path) -> bytes:
    """Header and voxels of a .nii.gz (the gzip wrapper's own time stamp left out)."""
    return gzip.decompress(path.read_bytes())


def _outputs(deriv: Path) -> dict[str, bytes]:
    """Every file of a derivatives folder, .nii.gz decompressed."""
    return {
        p.relative_to(deriv).as_posix(): _nifti_bytes(p)
        if p.name.endswith(".gz")
        else p.read_bytes()
        for p in sorted(deriv.rglob("*"))
        if p.is_file()
    }


def _report(capsys, text: str) -> None:
    """Show a measurement with ``-s`` (kept out of the captured output the test reads)."""
    with capsys.disabled():
        print(text)


def _status(deriv: Path, capsys) -> str:
    assert cli.main(["batch", "--status", str(deriv)]) == 0
    return capsys.readouterr().out


@needs_slurm
@pytest.mark.slow
def test_a_bids_study_runs_as_slurm_jobs_and_matches_an_in_process_run(tmp_path, capsys):
    import distributed

    from napari_spineseg.study.commands import segment_bids

    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    images = make_bids(root, subjects=2)  # 4 images: sub-0{0,1}/ses-0{1,2}
    cmd = _batch_command(root, deriv, tmp_path / "slurm-logs")
    run = Batch(cmd, _env(), tmp_path / "run")
    rc, out, err, seconds = run.wait()

    assert rc == 0, err
    assert "4 segmented, 0 failed, 0 skipped" in out
    ids = _job_ids(err)
    assert len(ids) == 2, err
    assert "SLURM: 2 of 2 worker(s) connected after " in err
    assert "[0/4] dask dashboard: http://" in err
    assert sum(f"[{n}/4] " in err for n in range(1, 5)) == 4  # one progress line per image
    _report(capsys, f"\nreal SLURM, 4 images on 2 jobs of 1 CPU: {seconds:.1f} s\n{err}")
    assert [r.state for r in bids.status(deriv)] == ["done"] * 4
    status = _status(deriv, capsys).splitlines()
    assert [line.split()[:2] for line in status[1:5]] == [
        [image.relative_to(root).as_posix(), "done"] for image in images
    ]
    assert status[-1] == "4 done of 4"
    # the jobs were in SLURM's queue, running, while the batch ran; none is left after it
    assert all("RUNNING" in run.seen.get(job, ()) for job in ids), run.seen
    assert _no_job_left(ids), "a job was left running after the batch"

    # the same study in this process: the same files, to the byte (header and voxels)
    reference = tmp_path / "deriv-in-process"
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        segment_bids(root, None, model=MODEL, trust=True, deriv=reference, client=client)
    slurm_files, local_files = _outputs(deriv), _outputs(reference)
    assert sorted(slurm_files) == sorted(local_files)
    assert sum(name.endswith(".nii.gz") for name in slurm_files) == 8  # cord + CSF each
    for name, data in slurm_files.items():
        assert data == local_files[name], name

    # a re-run finds the study done and submits nothing
    rc, out, err, _ = Batch(cmd, _env(), tmp_path / "rerun").wait()
    assert rc == 0 and "0 segmented, 0 failed, 4 skipped" in out
    assert "SLURM: submitted" not in err


@needs_slurm
@pytest.mark.slow
@pytest.mark.parametrize("kills", [1, 2], ids=["once", "twice"])
@pytest.mark.parametrize("how", ["scancel", "kill-9"])
def test_a_job_killed_mid_image_retries_it_once_and_loses_nothing_else(
    tmp_path, capsys, how, kills
):
    """``scancel`` of the job running an image (SIGTERM, then SIGKILL after KillWait; the
    job is gone and is replaced), or ``kill -9`` of its worker process (the job's nanny
    starts a new worker): killed once, the image is run again and done; killed on its
    retry too, it is reported failed, every other image is done, and a re-run does
    only that image."""
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    images = make_bids(root, subjects=2)
    held, log = images[0], tmp_path / "held.log"
    log.write_text("")
    hook = tmp_path / "hold_one_image.py"
    hook.write_text(HOOK)
    env = _env(
        DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{hook}"]',
        HELD_IMAGE=held.name,
        HELD_LOG=str(log),
        HELD_SECONDS="20",
        OTHER_SECONDS="3",
    )
    cmd = _batch_command(root, deriv, tmp_path / "slurm-logs")
    batch = Batch(cmd, env, tmp_path / "run")
    killed: list[tuple[str, str, float]] = []  # (pid, job, seconds after the start of that try)
    while batch.proc.poll() is None and time.monotonic() - batch.t0 < 300:
        batch.poll_squeue()
        tries = log.read_text().splitlines()
        if len(tries) > len(killed) and len(killed) < kills:
            pid, job = tries[len(killed)].split()
            time.sleep(2)  # in the middle of the image
            if how == "scancel":
                subprocess.run(["scancel", job], check=True)
            else:
                os.kill(int(pid), signal.SIGKILL)
            killed.append((pid, job, time.monotonic() - batch.t0))
        time.sleep(0.1)
    rc, out, err, seconds = batch.wait()
    tries = log.read_text().splitlines()
    _report(capsys, f"\n{how} x{kills}: {seconds:.1f} s, tries {tries}, killed {killed}\n{err}")

    assert len(killed) == kills, err
    rel = held.relative_to(root).as_posix()
    others = [i.relative_to(root).as_posix() for i in images[1:]]
    assert "[0/4] dask dashboard: http://" in err
    assert sum(f"[{n}/4] " in err for n in range(1, 5)) == 4
    if how == "scancel":
        # each cancelled job is a different job (the image's retry runs on another one)
        assert len({job for _, job, _ in killed}) == kills
    if kills == 1:
        assert rc == 0, err
        assert len(tries) == 2  # the killed try, then the one that finished it
        assert "4 segmented, 0 failed, 0 skipped" in out
        assert [r.state for r in bids.status(deriv)] == ["done"] * 4
    else:
        assert rc == 1, err
        assert len(tries) == 2  # run once more, then given up: never a third time
        assert f"FAILED  {rel}: the worker process running it died twice" in out
        assert "3 segmented, 1 failed, 0 skipped" in out
        rows = {r.image: r for r in bids.status(deriv)}
        assert rows[rel].state == "failed" and "died twice" in rows[rel].detail
        assert [rows[o].state for o in others] == ["done"] * 3
        status = _status(deriv, capsys)
        assert f"{rel}  failed     the worker process running it died twice" in status
        assert status.splitlines()[-1] == "3 done, 1 failed of 4"
        if how == "scancel":  # both jobs were cancelled: the batch replaced them
            assert err.count(" ended while the batch ran; submitted job ") == 2, err
        # no debris of the killed tries: only the 3 other images' masks
        assert sorted(p.name for p in deriv.rglob("*.nii.gz")) == sorted(
            f"{Path(o).name[: -len('.nii.gz')]}{s}.nii.gz"
            for o in others
            for s in ("_cord_seg", "_csf_seg")
        )
        assert not list(deriv.rglob("*spineseg-tmp*")) and not list(deriv.rglob("*.tmp"))

        assert _no_job_left(batch.job_ids), "a job was left running after the batch"

        # resumable: a re-run (nothing killed now) does the failed image only
        done_before = {p: p.stat().st_mtime_ns for p in deriv.rglob("*.nii.gz")}
        batch = Batch(cmd, _env(), tmp_path / "rerun")
        rc, out, err, _ = batch.wait()
        assert rc == 0, err
        assert "1 segmented, 0 failed, 3 skipped" in out
        assert "SLURM: submitted 1 job(s)" in err  # one job for one image
        assert {p: p.stat().st_mtime_ns for p in done_before} == done_before
        assert [r.state for r in bids.status(deriv)] == ["done"] * 4
    assert _no_job_left(batch.job_ids), "a job was left running after the batch"


@needs_slurm
@pytest.mark.slow
def test_ctrl_c_cancels_the_jobs_and_the_study_resumes(tmp_path):
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    images = make_bids(root, subjects=2)
    hook = tmp_path / "hold_one_image.py"
    hook.write_text(HOOK)
    env = _env(
        DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{hook}"]',
        HELD_IMAGE="none",
        HELD_LOG=os.devnull,
        HELD_SECONDS="0",
        OTHER_SECONDS="4",
    )
    cmd = _batch_command(root, deriv, tmp_path / "slurm-logs")
    batch = Batch(cmd, env, tmp_path / "run")
    stderr = Path(batch.stderr.name)
    while "[1/4] " not in stderr.read_text() and time.monotonic() - batch.t0 < 120:
        batch.poll_squeue()
        time.sleep(0.1)
    batch.proc.send_signal(signal.SIGINT)  # Ctrl-C in the terminal
    rc, out, err, _ = batch.wait()
    assert rc == 130, err  # not 0: a script's next step must not run on half a study
    assert "spineseg: cancelled; masks of files that had finished are kept" in err
    assert _no_job_left(batch.job_ids, wait=5), "the jobs outlived the Ctrl-C"
    states = [r.state for r in bids.status(deriv)]
    assert states.count("done") >= 1 and "pending" in states and "failed" not in states
    n_done = states.count("done")
    batch = Batch(cmd, _env(), tmp_path / "rerun")
    rc, out, err, _ = batch.wait()
    assert rc == 0, err
    assert f"{4 - n_done} segmented, 0 failed, {n_done} skipped" in out
    assert [r.state for r in bids.status(deriv)] == ["done"] * len(images)


def test_ctrl_c_stays_a_keyboard_interrupt_after_dask_jobqueue_is_imported(tmp_path):
    """dask_jobqueue's import makes SIGINT call sys.exit() (exit 0, no KeyboardInterrupt);
    the SLURM cluster puts Python's handler back. In a fresh process, where dask_jobqueue
    is imported for the first time; no SLURM needed (it stops at the missing sbatch)."""
    code = """
import os, signal, sys, time
from napari_spineseg.study.clusters import ClusterError, SlurmResources, slurm_cluster
try:
    slurm_cluster(SlurmResources(jobs=1))
except ClusterError as exc:
    assert "sbatch command is not found" in str(exc), exc
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    sys.exit(42)
sys.exit(3)
"""
    env = {**_env(), "PATH": str(tmp_path)}  # no sbatch there
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 42, done.stderr.decode()


@needs_slurm
@pytest.mark.slow
def test_a_job_left_in_the_queue_does_not_hold_the_batch(tmp_path):
    """One job more than the node has CPUs: it stays PENDING (Resources) for the whole
    batch. The batch starts as soon as the running jobs' workers are connected (it
    waited its 60 s limit before), and the queued job is cancelled at the end."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True)
    jobs = max(int(n.rstrip("+")) for n in cpus.stdout.split()) + 1  # 1 CPU each
    if jobs > 8:
        pytest.skip(f"a node with {jobs - 1} CPUs: not enough images to keep them busy")
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    make_bids(root, subjects=(jobs + 1) // 2)  # 2 images each: at least one per job
    cmd = _batch_command(root, deriv, tmp_path / "slurm-logs")
    cmd[cmd.index("--workers=2")] = f"--workers={jobs}"
    batch = Batch(cmd, _env(), tmp_path / "run")
    rc, out, err, _ = batch.wait()

    assert rc == 0, err
    connected = next(line for line in err.splitlines() if " worker(s) connected after " in line)
    assert connected.startswith(f"SLURM: {jobs - 1} of {jobs} worker(s) connected after ")
    assert connected.endswith("; the others join when their jobs start")
    assert float(connected.split(" after ")[1].split(" s")[0]) < 30, connected
    assert any(batch.seen.get(job) == {"PENDING"} for job in batch.job_ids), batch.seen
    assert _no_job_left(batch.job_ids), "the queued job was left in the queue"


@needs_slurm
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="drains the partition: needs the SLURM admin")
def test_a_replacement_job_sbatch_refuses_is_tried_again_until_accepted(tmp_path):
    """The image's job is cancelled while its partition is drained: sbatch refuses the
    replacement job; the refusal is said once, the batch goes on with its other worker,
    and the job is submitted when the partition accepts jobs again."""
    partition = (
        subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True)
        .stdout.split()[0]
        .rstrip("*")
    )
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    images = make_bids(root, subjects=2)
    log, hook = tmp_path / "held.log", tmp_path / "hold_one_image.py"
    log.write_text("")
    hook.write_text(HOOK)
    env = _env(
        DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{hook}"]',
        HELD_IMAGE=images[0].name,
        HELD_LOG=str(log),
        HELD_SECONDS="20",
        OTHER_SECONDS="3",
    )
    batch = Batch(_batch_command(root, deriv, tmp_path / "slurm-logs"), env, tmp_path / "run")
    stderr = Path(batch.stderr.name)

    def until(condition, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and batch.proc.poll() is None:
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.2)

    def set_partition(state: str) -> None:
        update = ["scontrol", "update", f"PartitionName={partition}", f"State={state}"]
        subprocess.run(update, check=True)

    try:
        until(lambda: log.read_text(), 60)
        job = log.read_text().split()[1]
        set_partition("DRAIN")
        subprocess.run(["scancel", job], check=True)
        until(lambda: "SLURM: could not replace job(s)" in stderr.read_text(), 60)
    finally:
        set_partition("UP")
    rc, out, err, _ = batch.wait()

    assert rc == 0, err
    assert "4 segmented, 0 failed, 0 skipped" in out
    assert err.count(f"SLURM: could not replace job(s) {job}, trying again every 5 s") == 1
    assert "Required partition not available" in err  # sbatch's own words
    assert f"SLURM: job {job} ended while the batch ran; submitted job " in err, err
    assert _no_job_left(batch.job_ids)


# ------------------------------------------------- the same kill on the fake SLURM (CI)

# A worker preload. Each image first writes how many images its worker holds (running or
# queued on it) to HELD_LOG, then takes a second; the job whose worker runs DIE_ON_IMAGE
# then kills itself whole (its process group: the job script, the nanny, the worker), as
# scancel, or SLURM at a job's memory or time limit, would.
JOB_DIES = """
import os, signal, time
from pathlib import Path
from distributed import get_worker
import napari_spineseg.api as api

_segment = api.__dict__.setdefault("_segment_unpatched", api.segment)
HELD = ("waiting", "ready", "constrained", "executing")


def _die_on(path, *args, **kwargs):
    tasks = get_worker().state.tasks.values()
    with open(os.environ["HELD_LOG"], "a") as log:
        log.write(f"{sum(ts.state in HELD for ts in tasks)}\\n")
    time.sleep(1)
    if Path(path).name == os.environ["DIE_ON_IMAGE"]:
        with open(os.environ["DIE_LOG"], "a") as log:
            log.write(os.environ["SLURM_JOB_ID"] + "\\n")
        os.killpg(0, signal.SIGKILL)
    return _segment(path, *args, **kwargs)


api.segment = _die_on
"""


@pytest.mark.slow
def test_on_fake_slurm_a_job_dying_twice_costs_only_its_image(
    tmp_path,
    fake_slurm,  # noqa: F811 (the fixture imported above)
    monkeypatch,
):
    """CI's version of the kills above, with test_cohort_slurm's fake sbatch: the image's
    job dies on its first try and on its retry. Only that image fails; the images still
    to do wait for the jobs that replace the dead ones, instead of failing with it or
    waiting forever."""
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    images = make_bids(root, subjects=2)
    hook, log = tmp_path / "job_dies.py", tmp_path / "deaths.log"
    hook.write_text(JOB_DIES)
    log.write_text("")
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PRELOAD", f'["{hook}"]')
    monkeypatch.setenv("DIE_ON_IMAGE", images[0].name)
    monkeypatch.setenv("DIE_LOG", str(log))
    held = tmp_path / "held.log"
    monkeypatch.setenv("HELD_LOG", str(held))
    # the batch's scheduler forgets a lost job after 1 s instead of 15: replaced sooner
    monkeypatch.setenv("DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT", "1s")
    cmd = [sys.executable, "-m", "napari_spineseg.cli", "batch", "--model", MODEL, "--trust"]
    cmd += ["-i", str(root), "-o", str(deriv), "--cluster=slurm", "--workers=2"]
    cmd += ["--slurm-interface=lo"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)

    assert done.returncode == 1, done.stderr
    deaths = log.read_text().split()
    assert len(deaths) == 2 and len(set(deaths)) == 2, deaths  # two jobs, never a third try
    rel = images[0].relative_to(root).as_posix()
    assert f"FAILED  {rel}: the worker process running it died twice" in done.stdout
    assert "3 segmented, 1 failed, 0 skipped" in done.stdout, done.stdout
    assert [r.state for r in bids.status(deriv)] == ["failed", "done", "done", "done"]
    assert done.stderr.count(" ended while the batch ran; submitted job ") >= 1, done.stderr
    assert _running_jobs(fake_slurm) == [], "a job was left running after the batch"
    # each worker was handed one image, not a share of the study (then a job's death
    # would count against images queued on it that never ran): the first image of each
    # of the 2 jobs found its worker holding only itself. (Later, a retried image may
    # wait on a busy worker: the scheduler places it, not the batch.)
    assert held.read_text().split()[:2] == ["1", "1"], held.read_text()
