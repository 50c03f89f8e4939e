"""``spineseg doctor``: what this installation is made of, in a form to paste into a bug report.

Why: most "it does not work" reports come down to the environment (a CPU-only torch on a
GPU machine, a torchvision built for another torch, no Qt binding, a model that is not
installed, napari opening ``.nii.gz`` with its builtin reader). The doctor answers those
questions in one command, without a display and without Qt: every heavy library is
imported lazily, one section at a time, and a section that fails reports its error instead
of stopping the report. Problems are listed at the end with their fix; the command exits
with 1 when there is one, so scripts and CI can use it as a check.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

#: Qt bindings napari can use, in qtpy's order of preference, with their Qt library wheel.
QT_BINDINGS = (
    ("PyQt5", "PyQt5-Qt5"),
    ("PyQt6", "PyQt6-Qt6"),
    ("PySide2", None),
    ("PySide6", None),
)
#: File patterns whose napari reader preference matters for exact geometry.
NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
PLUGIN = "napari-spineseg"
NO_GPU = "no GPU found: inference runs on the CPU"


@dataclass
class Line:
    """One ``name  value`` line of the report; ``problem`` (with its fix) when it is wrong."""

    name: str
    value: str
    problem: str | None = None


@dataclass
class Section:
    title: str
    lines: list[Line] = field(default_factory=list)


@dataclass
class Report:
    """The doctor's findings; :meth:`text` is what ``spineseg doctor`` prints."""

    sections: list[Section]

    @property
    def problems(self) -> list[str]:
        return [ln.problem for s in self.sections for ln in s.lines if ln.problem]

    def text(self) -> str:
        width = max(len(ln.name) for s in self.sections for ln in s.lines) + 2
        out = ["napari-spineseg doctor (paste everything below into a bug report)", ""]
        for s in self.sections:
            out.append(f"{s.title}:")
            out += [f"  {ln.name:<{width}}{ln.value}" for ln in s.lines]
            out.append("")
        problems = self.problems
        if problems:
            out.append(f"Problems ({len(problems)}):")
            out += [f"  - {p}" for p in problems]
        else:
            out.append("No problem found.")
        return "\n".join(out) + "\n"


def _version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _guarded(title: str, collect: Callable[[], list[Line]]) -> Section:
    """Run one section's checks; an unexpected failure becomes a line, not a crash."""
    try:
        return Section(title, collect())
    except Exception as exc:  # the doctor must report, whatever the environment does
        return Section(
            title,
            [Line("error", f"{type(exc).__name__}: {exc}", f"{title}: check failed ({exc})")],
        )


# ------------------------------------------------------------------------------ sections


def _system() -> list[Line]:
    env = "conda" if os.environ.get("CONDA_PREFIX") else None
    if sys.prefix != sys.base_prefix:
        env = "venv"
    return [
        Line("python", f"{platform.python_version()} ({sys.executable})"),
        Line("platform", f"{platform.platform()} {platform.machine()}"),
        Line("environment", env or "none (system Python: prefer a virtual environment)"),
        Line(
            PLUGIN,
            f"{_version(PLUGIN) or 'no metadata (source tree)'} ({os.path.dirname(__file__)})",
        ),
    ]


def _packages() -> list[Line]:
    lines = []
    for dist, needed in (
        ("numpy", True),
        ("nibabel", True),
        ("nnunetv2", True),
        ("onnxruntime", True),
        ("napari", True),
        ("npe2", True),
        ("totalspineseg", False),
        ("distributed", False),
    ):
        v = _version(dist)
        if v is not None:
            lines.append(Line(dist, v))
        elif needed:
            lines.append(
                Line(dist, "not installed", f"{dist} is missing: reinstall napari-spineseg")
            )
        else:
            extra = "totalspineseg" if dist == "totalspineseg" else "batch"
            lines.append(Line(dist, f"not installed (optional: napari-spineseg[{extra}])"))
    return lines


def _torch() -> list[Line]:
    try:
        import torch
    except ImportError:
        return [Line("torch", "not installed", "torch is missing: see the install guide")]
    cuda = torch.version.cuda
    hip = getattr(torch.version, "hip", None)
    if cuda:
        build = f"CUDA {cuda} build"
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if cudnn:
            build += f", cuDNN {cudnn}"
    elif hip:
        build = f"ROCm {hip} build"
    else:
        build = "CPU-only build"
    return [Line("torch", f"{torch.__version__} ({build})"), _torchvision(torch.__version__)]


_TORCHVISION_PROBE = (
    "import torch, torchvision;"
    "from torchvision.ops import nms;"
    "nms(torch.zeros((1, 4)), torch.zeros(1), 0.5);"
    "print(torchvision.__version__)"
)


def _torchvision(torch_version: str) -> Line:
    """torchvision is not used by napari-spineseg, but a broken one breaks ``import timm``.

    Probed in a subprocess: a torchvision built for another torch can fail or crash on import.
    """
    v = _version("torchvision")
    if v is None:
        return Line("torchvision", "not installed (not used by napari-spineseg)")
    try:
        run = subprocess.run(
            [sys.executable, "-c", _TORCHVISION_PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Line("torchvision", f"{v} (import timed out)")
    if run.returncode == 0:
        return Line("torchvision", f"{v} (matches torch: its operators load)")
    last = (run.stderr.strip().splitlines() or ["no message"])[-1]
    return Line(
        "torchvision",
        f"{v} BROKEN: {last}",
        f"torchvision {v} does not match torch {torch_version} (it breaks `import timm`): "
        "install both from the same index, e.g. `pip install torch torchvision --index-url "
        "https://download.pytorch.org/whl/cpu`, or `pip uninstall torchvision` "
        "(napari-spineseg does not need it)",
    )


def _devices() -> list[Line]:
    try:
        import torch
    except ImportError:
        return [Line("torch", "not installed: no device can run the models")]
    from .engines.base import available_devices, cpu_threads

    devices = available_devices()
    lines = []
    if "cuda" in devices:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gib = props.total_memory / 2**30
            lines.append(Line(f"cuda:{i}", f"{props.name} ({gib:.0f} GiB)"))
    if "mps" in devices:
        lines.append(Line("mps", "Apple Metal GPU available"))
    if not lines:
        note = NO_GPU
        if torch.version.cuda is None and _nvidia_driver_present():
            lines.append(
                Line(
                    "GPU",
                    f"{note} (an NVIDIA driver is present but torch is a CPU-only build)",
                    "install the CUDA build of torch to use the NVIDIA GPU (see the install "
                    "guide)",
                )
            )
        else:
            if torch.version.cuda is not None:
                note += f" (torch is a CUDA {torch.version.cuda} build but sees no GPU)"
            lines.append(Line("GPU", note))
    auto = next(d for d in devices if d != "auto")
    lines.append(Line("device auto", f"{auto.split(':')[0]} (order: cuda, mps, cpu)"))
    lines.append(Line("CPU threads", f"{cpu_threads()} (SPINESEG_NUM_THREADS to change)"))
    try:
        import onnxruntime as ort
    except ImportError:
        lines.append(Line("onnx providers", "none: onnxruntime is not installed (7T task)"))
    else:
        providers = ", ".join(ort.get_available_providers())
        lines.append(Line("onnx providers", providers))
    return lines


def _nvidia_driver_present() -> bool:
    """An NVIDIA driver is installed (Linux: the kernel module; elsewhere: nvidia-smi)."""
    import shutil

    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def _qt_napari() -> list[Line]:
    bindings = []
    for dist, qt_dist in QT_BINDINGS:
        v = _version(dist)
        if v is not None:
            qt = _version(qt_dist) if qt_dist else None
            bindings.append(f"{dist} {v}" + (f" (Qt {qt})" if qt else ""))
    if bindings:
        qt_line = Line("Qt binding", ", ".join(bindings))
    else:
        qt_line = Line(
            "Qt binding",
            'none: the viewer and widgets need one (pip install "napari[all]"); '
            "the spineseg command and the API work without",
        )
    lines = [qt_line]
    if os.environ.get("QT_API"):
        lines.append(Line("QT_API", os.environ["QT_API"]))
    manifests = {ep.name for ep in metadata.entry_points(group="napari.manifest")}
    if PLUGIN in manifests:
        lines.append(Line("napari plugin", "registered (napari.manifest entry point)"))
    else:
        lines.append(
            Line(
                "napari plugin",
                "NOT registered",
                "napari cannot find the plugin: reinstall napari-spineseg in this environment",
            )
        )
    lines += _reader_preference()
    return lines


def _reader_preference() -> list[Line]:
    """napari's remembered reader for NIfTI files (Preferences > Plugins)."""
    try:
        from napari.settings import get_settings
    except ImportError:
        return [Line("NIfTI reader", "napari is not installed")]
    prefs = dict(get_settings().plugins.extension2reader)
    lines = []
    for pattern in NIFTI_PATTERNS:
        chosen = prefs.get(pattern)
        if chosen is None:
            value = "not set (napari asks which reader: choose napari-spineseg, tick Remember)"
        elif chosen == PLUGIN:
            value = PLUGIN
        else:
            value = f"{chosen} (its geometry differs: choose {PLUGIN} in Preferences > Plugins)"
        lines.append(Line(f"reader {pattern}", value))
    return lines


def _models() -> list[Line]:
    from . import catalog
    from .models import ENV_MODELS_DIR, list_installed, models_dir

    where = f"${ENV_MODELS_DIR}" if os.environ.get(ENV_MODELS_DIR) else "per-user cache"
    lines = [Line("model store", f"{models_dir()} ({where})")]
    installed = {m.task: m for m in list_installed()}
    for task in catalog.tasks():
        m = installed.pop(task.id, None)
        if m is None:
            lines.append(Line(task.id, "not installed (spineseg install " + task.id + ")"))
        elif m.complete:
            pinned = "pinned" if m.source.get("pinned") else "unpinned"
            lines.append(Line(task.id, f"installed ({pinned})"))
        else:
            lines.append(
                Line(
                    task.id,
                    "INCOMPLETE",
                    f"model {task.id} is incomplete: spineseg install {task.id} --force",
                )
            )
    for name, m in installed.items():  # custom models installed under their own name
        state = "installed (custom)" if m.complete else "INCOMPLETE (custom)"
        problem = None if m.complete else f"model {name} is incomplete: reinstall it"
        lines.append(Line(name, state, problem))
    return lines


def collect() -> Report:
    """Gather the report. Imports torch, onnxruntime and napari's settings (not Qt)."""
    return Report(
        [
            _guarded("System", _system),
            _guarded("Packages", _packages),
            _guarded("PyTorch", _torch),
            _guarded("Devices", _devices),
            _guarded("napari and Qt", _qt_napari),
            _guarded("Models", _models),
        ]
    )


def main(out=None) -> int:
    """Print the report; 0 when no problem was found, else 1."""
    report = collect()
    (out or sys.stdout).write(report.text())
    return 1 if report.problems else 0
