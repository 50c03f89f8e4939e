"""The built wheel, installed in a fresh virtual environment, works for a user.

Run by ``.ci/wheel_test.py`` (``tox -e wheel``) with the fresh venv's Python, outside the
source tree, after ``python -m build``; ``SPINESEG_WHEEL_DIST`` names the folder holding
the sdist and wheel. In the ordinary test run (editable install) the module is skipped.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib import metadata, util
from pathlib import Path

import pytest

DIST = os.environ.get("SPINESEG_WHEEL_DIST")
if not DIST:
    pytest.skip(
        "checks an installed wheel: run by `tox -e wheel` (.ci/wheel_test.py)",
        allow_module_level=True,
    )

QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")
DEMO_MODEL = "napari_spineseg/_demo_model/nnUNetTrainer__nnUNetPlans__2d"


def _one(pattern: str) -> Path:
    (path,) = Path(DIST).glob(pattern)
    return path


def _run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _py(code: str) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-c", code)


def test_napari_spineseg_comes_from_the_installed_wheel():
    import napari_spineseg

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(napari_spineseg.__file__).resolve().is_relative_to(site)
    version = metadata.version("napari-spineseg")
    assert napari_spineseg.__version__ == version
    assert _one("*.whl").name.startswith(f"napari_spineseg-{version}-py3-none-any")


def test_wheel_ships_every_package_file_and_nothing_from_the_repo():
    wheel = set(zipfile.ZipFile(_one("*.whl")).namelist())
    with tarfile.open(_one("*.tar.gz")) as sdist:
        src = {
            m.name.split("/src/", 1)[1]
            for m in sdist.getmembers()
            if m.isfile() and "/src/napari_spineseg/" in m.name
        }
    assert src, "the sdist has no src/napari_spineseg"
    assert src - wheel == set(), "files of the package missing from the wheel"
    for required in (
        "napari_spineseg/napari.yaml",
        f"{DEMO_MODEL}/plans.json",
        f"{DEMO_MODEL}/dataset.json",
        f"{DEMO_MODEL}/fold_0/checkpoint_final.pth",
        "napari_spineseg/_demo_model/LICENSE",
    ):
        assert required in wheel
    top = {name.split("/")[0] for name in wheel}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"napari_spineseg"}, f"unexpected top-level entries: {top}"
    (info,) = dist_info
    assert f"{info}/licenses/LICENSE" in wheel
    assert not any("/tests/" in n or n.endswith(("conftest.py", ".pyc")) for n in wheel)


def test_metadata_for_pypi_and_the_napari_hub():
    meta = email.message_from_string(
        metadata.distribution("napari-spineseg").read_text("METADATA")
    )
    assert "Framework :: napari" in meta.get_all("Classifier")
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    eps = metadata.entry_points(group="napari.manifest")
    assert [ep.value for ep in eps if ep.name == "napari-spineseg"] == [
        "napari_spineseg:napari.yaml"
    ]


def test_npe2_validates_the_installed_manifest():
    out = _run("npe2", "validate", "napari-spineseg")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_demo_runs_from_the_wheel(tmp_path):
    out = _run("spineseg", "demo", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok      model Dice vs truth" in out.stdout
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "phantom_T2w_cord_seg.nii.gz" in written
    assert "phantom_T2w_overlay.png" in written


def test_core_imports_without_qt():
    # no binding is installed in this venv: the plugin's Qt-free half must not need one
    assert [b for b in QT[1:] if util.find_spec(b) is not None] == []
    code = (
        "import sys, json\n"
        "import napari_spineseg, napari_spineseg.api, napari_spineseg.catalog\n"
        "import napari_spineseg.io, napari_spineseg.doctor, napari_spineseg.cli\n"
        "import napari_spineseg._reader, napari_spineseg._writer, napari_spineseg.batch\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {QT!r})))\n"
    )
    out = _py(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_engine_imports_work_and_need_no_torchvision():
    """Everything the three engines import lazily, imported here (and timm never is)."""
    code = """
import json, sys
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.engines.nnunet import NnunetModel
from napari_spineseg.engines._nnunet_predictor import predictor_class
from napari_spineseg.engines.ivadomed_onnx import IvadomedOnnxModel
from napari_spineseg.engines.totalspineseg import tss_functions
import onnxruntime
predictor_class()
tss_functions()
NnunetModel.load(demo_model_folder(), trust=True, device="cpu")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"timm", "torchvision"})))
"""
    out = _py(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_torchvision_is_absent_or_matches_torch():
    if util.find_spec("torchvision") is None:
        return  # nothing can break on it
    out = _py(
        "import torch, torchvision; from torchvision.ops import nms;"
        "print(nms(torch.zeros((1, 4)), torch.zeros(1), 0.5).tolist())"
    )
    assert out.returncode == 0, f"torchvision does not work beside torch: {out.stderr[-500:]}"


def test_doctor_reports_no_problem_and_says_where_inference_runs():
    import torch

    out = _run("spineseg", "doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No problem found." in out.stdout
    assert "Qt binding" in out.stdout and "none: the viewer and widgets need one" in out.stdout
    if not torch.cuda.is_available():
        assert "no GPU found: inference runs on the CPU" in out.stdout
