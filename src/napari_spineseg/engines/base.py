"""The contract between the task layer and the inference backends.

An engine receives a 3D ``nibabel.Nifti1Image`` in *file voxel order* (whatever the
orientation on disk), does whatever reorientation/resampling its model needs, and returns
a :class:`Prediction` whose arrays are back on the input's exact grid and voxel order.
Keeping orientation handling inside the engine (as SCT does) means the task layer, the
writer and the viewer never see model space.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from ..progress import Reporter


@dataclass
class Prediction:
    """What an engine returns.

    ``maps``: named integer label maps, each shaped like the input (3D, file voxel order).
    ``classes``: per map, label value -> class name (background omitted).
    ``groups``: per map, class name -> the label values that make up that class (for
    region-based nnU-Net models a class such as ``sc`` is the union of several values,
    as in the model's ``dataset.json``); defaults to one value per class.
    ``probabilities``: named float32 maps in [0, 1] on the input grid (softmax or sigmoid
    outputs), kept for review (confidence per slice).
    ``info``: engine details for provenance (folds, checkpoint, device, settings...).
    """

    maps: dict[str, np.ndarray]
    classes: dict[str, dict[int, str]]
    groups: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def class_groups(self, map_name: str) -> dict[str, tuple[int, ...]]:
        if map_name in self.groups:
            return self.groups[map_name]
        return {name: (value,) for value, name in self.classes.get(map_name, {}).items()}


class Engine(Protocol):
    """A loaded model ready to predict (load once, predict many)."""

    def predict(self, image: nib.Nifti1Image, report: Reporter, **options: Any) -> Prediction:
        """Segment ``image`` (3D); ``report`` takes progress and is a cancellation point."""
        ...


#: the device names a user can give (besides ``cuda:N``, N = GPU index)
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def check_device(device: str | None) -> str:
    """``device`` lower-cased if it is ``auto|cpu|cuda|cuda:N|mps``, else a SpinesegError.

    Checked before torch is imported (the CLI does it before loading anything), so a typo
    never surfaces as torch's "Expected one of cpu, cuda, ipu, xpu, ..." RuntimeError.
    """
    name = (device or "auto").strip().lower()
    if name in DEVICE_NAMES or re.fullmatch(r"cuda:\d+", name):
        return name
    from ..errors import SpinesegError

    raise SpinesegError(
        f"unknown device {device!r}: use auto, cpu, cuda, cuda:N (N = the GPU index, "
        "e.g. cuda:0) or mps"
    )


def resolve_device(device: str = "auto"):
    """Turn ``auto|cuda|cuda:N|mps|cpu`` into a ``torch.device``.

    ``auto`` prefers CUDA, then Apple MPS, else CPU. On CPU the torch thread count is set
    to the number of usable cores (override with ``SPINESEG_NUM_THREADS``) because torch's
    default can oversubscribe small machines.
    """
    device = check_device(device)
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        ):
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import SpinesegError

        raise SpinesegError(
            "device 'cuda' was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='auto' or 'cpu'"
        )
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        from ..errors import SpinesegError

        raise SpinesegError(
            f"device {device!r} was requested but torch sees {torch.cuda.device_count()} CUDA "
            "GPU(s), numbered from 0; use device='cuda' (the first) or 'auto'"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        from ..errors import SpinesegError

        raise SpinesegError("device 'mps' was requested but is not available; use 'auto' or 'cpu'")
    if device == "cpu":
        torch.set_num_threads(cpu_threads())
    return torch.device(device)


def cpu_threads() -> int:
    """Threads for CPU inference: ``SPINESEG_NUM_THREADS`` or the usable cores."""
    env = int(os.environ.get("SPINESEG_NUM_THREADS", "0") or 0)
    if env > 0:
        return env
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_devices() -> list[str]:
    """Devices the user can pick, for the widget and ``spineseg devices``."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return ["cpu"]
    out = ["auto"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out
