"""`spineseg batch --cluster slurm`: dask-jobqueue's SLURMCluster without a SLURM.

Fake ``sbatch`` / ``squeue`` / ``scancel`` on PATH do what SLURM does with a job script on
one node: ``sbatch`` runs the script it is given (in its own session, with
``SLURM_JOB_ID``) and prints ``Submitted batch job ID``; ``scancel ID`` terminates it;
``squeue`` lists the jobs still running. So the job script dask-jobqueue writes really
starts a dask worker, which really connects to the scheduler on 127.0.0.1 and segments
the study with the shipped demo model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from napari_spineseg import cli
from napari_spineseg.batch import RETRIES_AFTER_WORKER_DEATH
from napari_spineseg.study import bids
from napari_spineseg.study.clusters import (
    ClusterError,
    SlurmResources,
    batch_client,
    slurm_client,
    slurm_cluster,
)

pytest.importorskip("dask_jobqueue", reason="the slurm extra is not installed")
from test_cohort_bids import MODEL, SUFFIXES, make_bids  # noqa: E402

SBATCH = """\
import os, shutil, subprocess, sys
jobs = os.environ["FAKE_SLURM_DIR"]
if os.environ.get("FAKE_SBATCH_ERROR"):
    sys.exit("sbatch: error: " + os.environ["FAKE_SBATCH_ERROR"])
job_id = str(os.getpid())
script = os.path.join(jobs, job_id + ".sh")
shutil.copy(sys.argv[-1], script)  # dask-jobqueue deletes its file once submitted
with open(os.path.join(jobs, job_id + ".out"), "w") as log:
    proc = subprocess.Popen(
        ["bash", script], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, "SLURM_JOB_ID": job_id},
    )
with open(os.path.join(jobs, job_id + ".pid"), "w") as f:
    f.write(str(proc.pid))
print("Submitted batch job " + job_id)
"""

SCANCEL = """\
import os, signal, sys
for job_id in sys.argv[1:]:
    pid = int(open(os.path.join(os.environ["FAKE_SLURM_DIR"], job_id + ".pid")).read())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        sys.exit("scancel: error: Invalid job id specified")
"""

SQUEUE = """\
import glob, os
print("JOBID")
for pidfile in sorted(glob.glob(os.path.join(os.environ["FAKE_SLURM_DIR"], "*.pid"))):
    try:
        os.killpg(int(open(pidfile).read()), 0)
    except ProcessLookupError:
        continue
    print(os.path.basename(pidfile)[:-4])
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """The jobs folder (scripts, logs, pids) of fake SLURM commands put first on PATH;
    any job still alive at the end is killed (a failing test leaves no worker behind)."""
    bin_dir, jobs = tmp_path / "slurm-bin", tmp_path / "slurm-jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, source in (("sbatch", SBATCH), ("scancel", SCANCEL), ("squeue", SQUEUE)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    # SLURM exports the submitting environment to the job: the worker imports this source
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield jobs
    for pidfile in jobs.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def _running_jobs(jobs: Path, wait: float = 20.0) -> list[str]:
    """squeue's job ids, waiting up to ``wait`` s for cancelled jobs to exit."""
    import subprocess

    deadline = time.monotonic() + wait
    while True:
        listed = subprocess.run(["squeue"], capture_output=True, text=True, check=True)
        running = listed.stdout.split()[1:]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


@pytest.mark.slow
def test_a_bids_study_is_segmented_by_slurm_jobs(tmp_path, fake_slurm, capsys):
    root, deriv = tmp_path / "ds", tmp_path / "deriv"
    make_bids(root, subjects=1)  # 2 images: sub-00/ses-01, sub-00/ses-02
    argv = ["batch", "-i", str(root), "-o", str(deriv), "--model", MODEL, "--trust"]
    slurm = [
        "--cluster=slurm",
        "--workers=2",
        "--slurm-interface=lo",  # the scheduler and the workers on 127.0.0.1
        "--slurm-partition=short",
        "--slurm-account=lab",
        "--slurm-memory=2GB",
        "--slurm-walltime=00:20:00",
        "--slurm-option=--qos=test",
        "--slurm-setup=echo setup ran in job $SLURM_JOB_ID",
    ]
    t0 = time.perf_counter()
    assert cli.main(argv + slurm) == 0, capsys.readouterr().err
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert "2 segmented, 0 failed, 0 skipped" in out
    assert "SLURM: submitted 2 job(s)" in err
    assert "[0/2] dask dashboard: http://127.0.0.1:" in err
    assert [r.state for r in bids.status(deriv)] == ["done", "done"]

    scripts = sorted(fake_slurm.glob("*.sh"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        for line in (
            "#SBATCH -J spineseg",
            "#SBATCH -p short",
            "#SBATCH -A lab",
            "#SBATCH -n 1",
            "#SBATCH --cpus-per-task=1",
            "#SBATCH --mem=2G",
            "#SBATCH -t 00:20:00",
            "#SBATCH --qos=test",
            "echo setup ran in job $SLURM_JOB_ID",
        ):
            assert line in text.splitlines(), (line, text)
        assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in text
        assert "--nthreads 1 " in text and "--interface lo" in text
        job_id = script.stem
        log = (fake_slurm / f"{job_id}.out").read_text()
        assert f"setup ran in job {job_id}" in log
        assert "Registered to:      tcp://127.0.0.1:" in log
    assert _running_jobs(fake_slurm) == [], "a job was left running after the batch"
    print(f"SLURM-fake BIDS batch, 2 images on 2 jobs: {seconds:.1f} s")

    # A re-run finds the study done and submits nothing.
    assert cli.main(argv + slurm) == 0
    assert "0 segmented, 0 failed, 2 skipped" in capsys.readouterr().out
    assert len(list(fake_slurm.glob("*.sh"))) == 2


@pytest.mark.slow
def test_a_file_list_gets_one_job_per_file(tmp_path, fake_slurm, capsys):
    images = make_bids(tmp_path / "ds", subjects=1)
    out = tmp_path / "masks"
    argv = ["batch", "-i", *map(str, images), "-o", str(out), "--model", MODEL, "--trust"]
    assert cli.main([*argv, "--cluster", "slurm", "--slurm-interface", "lo"]) == 0
    assert "2 of 2 segmented, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(
        f"{i.name[: -len('.nii.gz')]}{s}.nii.gz" for i in images for s in SUFFIXES
    )
    scripts = list(fake_slurm.glob("*.sh"))
    assert len(scripts) == 2  # no --workers: one job per file (at most 10)
    assert "#SBATCH --mem=8G" in scripts[0].read_text().splitlines()  # the default memory
    assert _running_jobs(fake_slurm) == []


def test_the_job_script_asks_for_the_resources(fake_slurm, tmp_path):
    resources = SlurmResources(
        jobs=3,
        cpus=4,
        memory="12GB",
        partition="gpu",
        directives=("--gres=gpu:1",),
        setup=("module load cuda", "source /opt/venv/bin/activate"),
        log_directory=str(tmp_path / "logs"),
    )
    cluster = slurm_cluster(resources)
    try:
        lines = cluster.job_script().splitlines()
    finally:
        cluster.close()
    assert "#SBATCH --cpus-per-task=4" in lines  # the worker's inference threads
    assert "#SBATCH --mem=12G" in lines
    assert "#SBATCH -p gpu" in lines and "#SBATCH --gres=gpu:1" in lines
    assert f"#SBATCH -o {tmp_path / 'logs'}/spineseg-%J.out" in lines
    assert "#SBATCH -t 00:30:00" in lines  # dask-jobqueue's default walltime
    worker = next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    assert lines.index("module load cuda") < lines.index("source /opt/venv/bin/activate") < worker
    # one dask thread: one file at a time per worker, with the job's 4 CPUs for inference
    assert "--nthreads 1 " in lines[worker] and "--nworkers" not in lines[worker]
    assert "--memory-limit 11.18GiB" in lines[worker]  # 12 GB: the nanny restarts it above


def test_defaults_come_from_the_command_and_the_jobqueue_config(monkeypatch):
    import dask

    def parsed(*extra: str):
        argv = ["batch", "-i", "a.nii.gz", "--model", "m", "--cluster", "slurm", *extra]
        return cli._parser().parse_args(argv)

    res = SlurmResources.from_args(parsed(), n_files=3)
    assert (res.jobs, res.cpus, res.memory, res.walltime) == (3, 1, None, None)  # one per file
    assert SlurmResources.from_args(parsed(), n_files=50).jobs == 10
    assert SlurmResources.from_args(parsed("--workers", "4", "--threads", "2"), 50).jobs == 4
    kwargs = res.cluster_kwargs()
    assert kwargs["memory"] == "8GB" and "walltime" not in kwargs and "queue" not in kwargs
    with dask.config.set({"jobqueue.slurm.memory": "30GB"}):  # ~/.config/dask/jobqueue.yaml
        assert res.cluster_kwargs()["memory"] == "30GB"
        res = SlurmResources.from_args(parsed("--slurm-memory", "4GB", "--threads", "2"), 3)
        assert res.cluster_kwargs() | {"job_name": "x"} == {
            "cores": 1,
            "processes": 1,
            "job_cpu": 2,
            "memory": "4GB",
            "job_name": "x",
        }


def test_a_missing_dask_jobqueue_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails
    with pytest.raises(ClusterError, match=r"needs dask-jobqueue, which is not installed; "):
        slurm_cluster(SlurmResources(jobs=1))
    argv = ["batch", "-i", str(tmp_path / "a.nii.gz"), "--model", MODEL, "--trust"]
    argv += ["--cluster", "slurm"]
    assert cli.main(argv) == 1
    assert "pip install 'napari-spineseg[slurm]'" in capsys.readouterr().err


def test_no_sbatch_on_path_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no sbatch
    with pytest.raises(ClusterError, match=r"the sbatch command is not found on PATH; run "):
        slurm_cluster(SlurmResources(jobs=1))


def test_a_job_sbatch_refuses_is_an_error_with_its_message(fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "invalid partition specified: nope")
    with (
        pytest.raises(
            ClusterError, match=r"(?s)sbatch refused the job:.*invalid partition specified: nope"
        ),
        slurm_client(SlurmResources(jobs=2, partition="nope")),
    ):
        pytest.fail("no client without jobs")


def test_the_jobs_are_cancelled_when_the_batch_is_interrupted(fake_slurm):
    with (
        pytest.raises(KeyboardInterrupt),
        slurm_client(SlurmResources(jobs=2, interface="lo")) as client,
    ):
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        # an image whose worker dies (memory, walltime) is run once more, then reported
        retries = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        assert retries == RETRIES_AFTER_WORKER_DEATH == 1
        assert len(_running_jobs(fake_slurm, wait=0)) == 2
        raise KeyboardInterrupt  # Ctrl-C in the middle of the batch
    assert _running_jobs(fake_slurm) == []


def test_a_model_not_installed_is_said_before_any_job_is_submitted(
    fake_slurm, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SPINESEG_MODELS_DIR", str(tmp_path / "empty-store"))
    image = make_bids(tmp_path / "ds", subjects=1, sessions=("01",))[0]
    argv = ["batch", "lesion_sci_t2", "-i", str(image), "--cluster", "slurm"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "the model for task 'lesion_sci_t2' is not installed" in err
    assert "spineseg install lesion_sci_t2" in err
    assert list(fake_slurm.iterdir()) == []  # nothing submitted


def test_a_memory_size_dask_cannot_read_names_the_option(fake_slurm):
    with pytest.raises(ClusterError, match=r"'lots' as a byte unit; check the --slurm-\* values"):
        slurm_cluster(SlurmResources(jobs=1, memory="lots"))
    assert list(fake_slurm.iterdir()) == []


def test_scheduler_and_slurm_exclude_each_other():
    argv = ["batch", "-i", "a.nii.gz", "--model", "m", "--cluster", "slurm"]
    args = cli._parser().parse_args([*argv, "--scheduler", "tcp://h:8786"])
    with (
        pytest.raises(ClusterError, match="--scheduler and --cluster slurm .* give one of them"),
        batch_client(args, 1),
    ):
        pytest.fail("no client for two answers")
