"""``spineseg doctor``: the report a user pastes into a bug report.

The end-to-end test runs the real command in a fresh interpreter on this machine (versions,
torch build, devices, Qt binding, model store, napari's reader preference) and checks that
it stays Qt-free; the unit tests pin how problems are worded and counted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

from napari_spineseg import cli, doctor
from napari_spineseg.demo import demo_model_folder

SCRIPT = """
import json, sys
from napari_spineseg.cli import main
rc = main(["doctor"])
qt = sorted(m for m in sys.modules if m.split(".")[0] in {qt!r})
print("@@" + json.dumps({{"rc": rc, "qt": qt}}))
"""
QT_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty model store and an empty napari settings file, for this test only."""
    root = tmp_path / "models"
    monkeypatch.setenv("SPINESEG_MODELS_DIR", str(root))
    settings = tmp_path / "napari" / "settings.yaml"
    settings.parent.mkdir()
    monkeypatch.setenv("NAPARI_CONFIG", str(settings))
    return root, settings


def _run_doctor(env_extra: dict[str, str] | None = None) -> tuple[str, dict]:
    env = dict(os.environ, **(env_extra or {}))
    code = SCRIPT.format(qt=QT_MODULES)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    text, _, tail = run.stdout.rpartition("@@")
    return text, json.loads(tail)


def _value(text: str, name: str) -> str:
    m = re.search(rf"^  {re.escape(name)}\s+(.*)$", text, re.M)
    assert m, f"no line {name!r} in:\n{text}"
    return m.group(1)


def test_doctor_reports_this_machine_without_qt(store):
    import torch

    root, settings = store
    settings.write_text("plugins:\n  extension2reader:\n    '*.nii.gz': napari-spineseg\n")
    # one custom model installed, one catalog task folder left incomplete
    assert cli.main(["install", "labmodel", "--from", str(demo_model_folder()), "--trust"]) == 0
    (root / "lesion_sci_t2").mkdir()

    text, result = _run_doctor()

    assert result["qt"] == [], "the doctor must not import Qt"
    assert text.startswith("napari-spineseg doctor (paste everything below into a bug report)")
    # versions come from the installed distributions
    assert _value(text, "numpy") == metadata.version("numpy")
    assert _value(text, "nnunetv2") == metadata.version("nnunetv2")
    assert _value(text, "python").startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    assert _value(text, "torch").startswith(f"{torch.__version__} ({build}")
    if not torch.cuda.is_available():  # this machine: says so plainly
        assert _value(text, "GPU").startswith("no GPU found: inference runs on the CPU")
        assert _value(text, "device auto").startswith("cpu")
    import onnxruntime

    assert _value(text, "onnxruntime") == onnxruntime.__version__
    assert _value(text, "onnx providers") == ", ".join(onnxruntime.get_available_providers())
    # models: the store path, the custom model, the incomplete task with its fix
    assert _value(text, "model store") == f"{root} ($SPINESEG_MODELS_DIR)"
    assert _value(text, "labmodel") == "installed (custom)"
    assert _value(text, "lesion_sci_t2") == "INCOMPLETE"
    assert _value(text, "rootlets") == "not installed (spineseg install rootlets)"
    assert "model lesion_sci_t2 is incomplete: spineseg install lesion_sci_t2 --force" in text
    # napari's remembered reader
    assert _value(text, "reader *.nii.gz") == "napari-spineseg"
    assert _value(text, "reader *.nii").startswith("not set")
    assert _value(text, "napari plugin").startswith("registered")
    assert result["rc"] == 1  # the incomplete model is a problem


def test_problems_are_listed_with_their_fix_and_set_the_exit_code():
    ok = doctor.Report([doctor.Section("A", [doctor.Line("x", "1")])])
    assert ok.problems == []
    assert ok.text().endswith("No problem found.\n")
    bad = doctor.Report(
        [
            doctor.Section("A", [doctor.Line("x", "1"), doctor.Line("y", "broken", "fix y")]),
            doctor.Section("B", [doctor.Line("z", "broken", "fix z")]),
        ]
    )
    assert bad.problems == ["fix y", "fix z"]
    assert bad.text().endswith("Problems (2):\n  - fix y\n  - fix z\n")


def test_a_failing_section_is_reported_not_raised():
    def boom():
        raise OSError("disk gone")

    section = doctor._guarded("Models", boom)
    assert section.lines[0].value == "OSError: disk gone"
    assert section.lines[0].problem == "Models: check failed (disk gone)"


def test_a_torchvision_built_for_another_torch_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: "0.28.0")

    def probe(*args, **kwargs):
        err = "Traceback ...\nRuntimeError: operator torchvision::nms does not exist\n"
        return subprocess.CompletedProcess(args, 1, "", err)

    monkeypatch.setattr(doctor.subprocess, "run", probe)
    line = doctor._torchvision("2.13.0+cpu")
    assert line.value == "0.28.0 BROKEN: RuntimeError: operator torchvision::nms does not exist"
    assert line.problem.startswith("torchvision 0.28.0 does not match torch 2.13.0+cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in line.problem


def test_no_torchvision_is_fine(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: None)
    line = doctor._torchvision("2.13.0+cpu")
    assert line.value == "not installed (not used by napari-spineseg)"
    assert line.problem is None


def test_doctor_module_imports_nothing_heavy():
    code = (
        "import sys, napari_spineseg.doctor;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'napari', 'onnxruntime', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_doctor_is_a_spineseg_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert re.search(r"^\s+doctor\s+report versions", capsys.readouterr().out, re.M)


def test_a_cpu_only_torch_on_an_nvidia_machine_is_a_problem(monkeypatch):
    import torch

    if torch.version.cuda is not None or torch.cuda.is_available():
        pytest.skip("needs a CPU-only build of torch")
    monkeypatch.setattr(doctor, "_nvidia_driver_present", lambda: True)
    gpu = next(line for line in doctor._devices() if line.name == "GPU")
    assert gpu.value == (
        "no GPU found: inference runs on the CPU "
        "(an NVIDIA driver is present but torch is a CPU-only build)"
    )
    assert gpu.problem.startswith("install the CUDA build of torch")
    monkeypatch.setattr(doctor, "_nvidia_driver_present", lambda: False)
    gpu = next(line for line in doctor._devices() if line.name == "GPU")
    assert (gpu.value, gpu.problem) == ("no GPU found: inference runs on the CPU", None)
