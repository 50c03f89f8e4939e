"""Inference engines: turn a 3D NIfTI image into named label maps on the same grid.

Each engine hides one backend (nnU-Net v2, ivadomed ONNX, TotalSpineSeg) behind
:class:`~napari_spineseg.engines.base.Engine`; heavy libraries are imported lazily inside
the engine modules, never here.
"""

from .base import Engine, Prediction, resolve_device

__all__ = ["Engine", "Prediction", "resolve_device"]
