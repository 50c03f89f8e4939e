"""Build the sdist and wheel, install the wheel in a fresh virtual environment, test it there.

Run by ``tox -e wheel`` (and so by ``.ci/run``)::

    python .ci/wheel_test.py [WORK_DIR]

Why a fresh venv and not the tox test env: the test env is an editable install of the
source tree, which hides everything a wheel can get wrong (package data left out, a test
helper imported at run time, help pointing at repo files, a dependency only the test
group brings in). Steps, each timed:

1. ``python -m build`` -> sdist + wheel in WORK_DIR/dist.
2. ``python -m venv WORK_DIR/venv``; install the wheel with the ``totalspineseg`` extra and
   the CPU torch constraint (constraints.txt), plus pytest. No Qt binding is installed.
3. torchvision: timm (nnunetv2 -> dynamic-network-architectures -> timm) requires it. On
   a machine whose only torch is a local CPU build, PyPI's torchvision is built for the
   CUDA torch and cannot load its operators; none of napari-spineseg's code paths imports
   timm or torchvision, so a torchvision that does not load is removed here, and the test
   checks that torchvision is either absent or working (users get a matching pair from the
   same PyTorch index: see docs/install.md).
4. ``pytest tests/test_packaging_wheel.py`` with the venv's Python, outside the source
   tree: demo, ``npe2 validate``, import without Qt, ``spineseg doctor``, engine imports,
   the wheel's file list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHVISION_PROBE = (
    "import torch, torchvision; from torchvision.ops import nms;"
    "nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)"
)


def run(cmd: list[str], log: Path | None = None, **kwargs) -> None:
    """Run a step; with ``log``, keep pip's chatter in a file and show its tail on failure."""
    print("+", " ".join(map(str, cmd)), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, **kwargs)
        return
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        lines = [
            ln for ln in log.read_text().splitlines() if "is ignored: it is neither" not in ln
        ]
        print("\n".join(lines[-60:]), file=sys.stderr)
        raise SystemExit(f"step failed ({proc.returncode}): see {log}")


def main(argv: list[str]) -> int:
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="spineseg-wheel-"))
    dist, venv = work / "dist", work / "venv"
    for d in (dist, venv, work / "models", work / "autosave", work / "napari"):
        shutil.rmtree(d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], work / "build.log")
    timings["build sdist + wheel"] = time.perf_counter() - t
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    print(f"built {wheel.name} ({wheel.stat().st_size // 1024} KiB), {sdist.name}")

    t = time.perf_counter()
    run([sys.executable, "-m", "venv", str(venv)])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-c",
            str(ROOT / "constraints.txt"),
            f"napari-spineseg[totalspineseg] @ {wheel.as_uri()}",
            "pytest>=8",
        ],
        work / "install.log",
    )
    timings["fresh venv + install the wheel"] = time.perf_counter() - t

    probe = subprocess.run([str(python), "-c", TORCHVISION_PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"torchvision does not load beside this torch ({why}): removing it (unused)")
        run([str(python), "-m", "pip", "uninstall", "-y", "torchvision"], work / "uninstall.log")

    t = time.perf_counter()
    path = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    env = dict(
        os.environ,
        SPINESEG_WHEEL_DIST=str(dist),
        PATH=path,
        # a user's own store, autosaves and napari settings must not change the outcome
        SPINESEG_MODELS_DIR=str(work / "models"),
        SPINESEG_AUTOSAVE_DIR=str(work / "autosave"),
        NAPARI_CONFIG=str(work / "napari" / "settings.yaml"),
    )
    env.pop("PYTHONPATH", None)
    run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",  # npe2/pydantic noise
            "--noconftest",
            "-c",
            os.devnull,
            "--rootdir",
            str(work),
            str(ROOT / "tests" / "test_packaging_wheel.py"),
        ],
        cwd=work,  # not the source tree: napari_spineseg must come from the venv
        env=env,
    )
    timings["tests in the installed env"] = time.perf_counter() - t

    print("wheel test timings:")
    for step, seconds in timings.items():
        print(f"  {step:<32} {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
