"""A lab's own engine, in one module: what a new backend needs and nothing more.

``ThresholdEngine`` "segments" by intensity: voxels >= 2 x ``CUT`` are the model's label 1,
voxels in [``CUT``, 2 x ``CUT``) label 2, with the class names read from the model
folder's ``dataset.json``. It is registered with one line (see test_engine_contract.py)::

    register_engine("threshold_test", "engine_threshold:ThresholdEngine")

It records what the task layer hands it, so the tests can check the contract: how often
it is loaded, with which options, and what ``predict`` receives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_spineseg.engines import Engine, Prediction

CUT = 50.0


class ThresholdEngine(Engine):
    """Intensity thresholds as a model (loads nothing heavy, runs anywhere)."""

    loads: list[tuple[Path, Any]] = []  # (source, options) of every load
    calls: list[dict[str, Any]] = []  # what each predict received

    def __init__(self, folder: Path, classes: dict[int, str], device: str) -> None:
        self.folder = folder
        self.classes = classes
        self.device = device
        self.task_id: str | None = None

    @classmethod
    def load(cls, source, options):
        folder = Path(source)
        labels = json.loads((folder / "dataset.json").read_text())["labels"]
        cls.loads.append((folder, options))
        return cls(folder, {int(v): k for k, v in labels.items() if v}, options.device)

    def after_load(self, spec) -> None:
        self.task_id = spec.id

    def predict(
        self, image, report, options, *, name=None, return_probabilities=True, min_sizes=None
    ) -> Prediction:
        type(self).calls.append(
            {"options": options, "name": name, "min_sizes": min_sizes, "task": self.task_id}
        )
        data = np.asanyarray(image.dataobj).astype(np.float32)
        labels = np.zeros(data.shape, np.uint8)
        labels[data >= CUT] = 2
        labels[data >= 2 * CUT] = 1
        report(1.0, "threshold: done")
        return Prediction(
            maps={"labels": labels},
            classes={"labels": dict(self.classes)},
            info={"engine": "threshold", "cut": CUT, "input": name},
        )

    def device_label(self) -> str:
        return f"{self.device} (numpy)"
