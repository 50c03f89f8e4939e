"""The contract between the task layer and the inference backends.

An engine receives a 3D ``nibabel.Nifti1Image`` in *file voxel order* (whatever the
orientation on disk), does whatever reorientation/resampling its model needs, and returns
a :class:`Prediction` whose arrays are back on the input's exact grid and voxel order.
Keeping orientation handling inside the engine (as SCT does) means the task layer, the
writer and the viewer never see model space.

:class:`Engine` is the base class every backend derives from: how it is loaded
(:meth:`Engine.load`) and how it predicts (:meth:`Engine.predict`), both from the run's
one :class:`~napari_spineseg.options.RunOptions`, plus the hooks where a backend differs
from the common path (which folder it loads, what makes two loaded models different,
post-processing done inside the engine). ``segmentation.py`` calls only these, so a new
backend is one module with one :class:`Engine` subclass plus one
:func:`~napari_spineseg.engines.register_engine` line.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from ..catalog import TaskSpec
    from ..options import RunOptions
    from ..postprocess import MinSize
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


class Engine(ABC):
    """A loaded model ready to predict (load once, predict many): the base of every backend.

    Subclasses implement :meth:`load` and :meth:`predict`; the other methods are hooks
    with the common behaviour, overridden where a backend differs. The task layer
    (``segmentation.run``) calls, in order: :meth:`min_sizes_for` (before anything loads, so
    a bad ``-remove-small`` fails early), :meth:`cache_key`, :meth:`source_for` +
    :meth:`load` + :meth:`after_load` (once per cache key), then :meth:`predict`,
    :meth:`device_label`, :meth:`notes` and, for :attr:`postprocess_inside` engines,
    :meth:`postprocessing_done`.
    """

    #: True when :meth:`predict` applies the task's post-processing itself (threshold,
    #: remove-small, largest, fill-holes) with its own semantics, as the 7T ivadomed model
    #: does in SCT; the task layer then only cuts the output files. False (the default):
    #: the engine returns labels and ``segmentation.split_outputs`` post-processes them
    #: (``-thr`` does not apply there unless ``sct_compat``).
    postprocess_inside: ClassVar[bool] = False

    # ------------------------------------------------------------------ hooks (class)
    @classmethod
    def source_for(cls, spec: TaskSpec, folder: Path) -> Any:
        """What :meth:`load` takes for the task's model folder (default: the folder)."""
        return folder

    @classmethod
    def cache_key(cls, spec: TaskSpec, folder: Path, options: RunOptions) -> tuple:
        """What makes two loaded models different: same key, the cached engine is reused.

        Default: the model folder, the device and the task's orientation (the task layer
        adds the engine class). Add every option that :meth:`load` reads (nnU-Net:
        test-time augmentation, the profile).
        """
        return (str(Path(folder).resolve()), options.device, spec.orientation)

    @classmethod
    def min_sizes_for(
        cls, spec: TaskSpec, options: RunOptions
    ) -> tuple[list[MinSize] | None, list[str]]:
        """The run's ``-remove-small`` as one size per output file, and notes for the user.

        Default: SCT's reading for nnU-Net-like tasks (``segment_non_ivadomed``), the
        task's own default when the option is not given, None for no removal
        (``postprocess.resolve_remove_small``). Runs before the model loads.
        """
        from ..postprocess import resolve_remove_small

        given = options.remove_small
        tokens = given.tokens if given is not None else spec.postprocess.remove_small
        if not tokens:
            return None, []
        return resolve_remove_small(
            tokens,
            [o.suffix for o in spec.outputs],
            ivadomed=False,
            sct_compat=options.sct_compat,
            parsed=given.sizes if given is not None else None,
        )

    # ------------------------------------------------------------------ the contract
    @classmethod
    @abstractmethod
    def load(cls, source: Any, options: RunOptions) -> Engine:
        """Load the model from ``source`` (:meth:`source_for`) for ``options`` (device,
        test-time augmentation, profile...); raise ``ModelNotInstalledError`` naming the
        file and the fix when the model cannot be used."""

    def after_load(self, spec: TaskSpec) -> None:  # noqa: B027 - a hook, empty by default
        """Adjust a freshly loaded engine to the task (default: nothing). Runs once per
        load, before the engine is cached, so it must depend only on ``spec`` and the
        model (nnU-Net: SCT's orientation fallback by dataset name)."""

    @abstractmethod
    def predict(
        self,
        image: nib.Nifti1Image,
        report: Reporter,
        options: RunOptions,
        *,
        name: str | None = None,
        return_probabilities: bool = True,
        min_sizes: list[MinSize] | None = None,
    ) -> Prediction:
        """Segment ``image`` (3D, file voxel order) -> :class:`Prediction` on its grid.

        ``report`` takes progress and is a cancellation point; ``options`` are the run's,
        with the task's defaults filled in (:meth:`RunOptions.resolved`); ``name`` names
        the input in messages (the image is built in memory); ``return_probabilities``:
        the caller wants ``Prediction.probabilities`` (an engine may return them anyway);
        ``min_sizes``: :meth:`min_sizes_for`' result, for :attr:`postprocess_inside` engines
        (None: the model's own default); the others ignore it.
        """

    # ------------------------------------------------------------------ hooks (instance)
    def device_label(self) -> str | None:
        """The device the model runs on, for provenance (None: the device asked for)."""
        return None

    def notes(self) -> list[str]:
        """What a result should tell the user about how this engine was loaded (e.g. a
        faster profile than SCT's); shown with the result, kept in its provenance."""
        return []

    def postprocessing_done(self, pred: Prediction) -> list[str]:
        """:attr:`postprocess_inside` engines: the post-processing :meth:`predict` ran, for
        provenance (default: ``pred.info["postprocessing"]``)."""
        return [f"inside the engine: {pred.info.get('postprocessing')}"]


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
