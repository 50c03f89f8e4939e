"""Inference engines: turn a 3D NIfTI image into named label maps on the same grid.

Each engine hides one backend (nnU-Net v2, ivadomed ONNX, TotalSpineSeg) behind the
:class:`~napari_spineseg.engines.base.Engine` base class; :mod:`.registry` maps a task's
backend to its engine class. Heavy libraries are imported lazily inside the engine
modules, never here.
"""

from .base import Engine, Prediction, resolve_device
from .registry import engine_class, register_engine, registered_backends, unregister_engine

__all__ = [
    "Engine",
    "Prediction",
    "engine_class",
    "register_engine",
    "registered_backends",
    "resolve_device",
    "unregister_engine",
]
