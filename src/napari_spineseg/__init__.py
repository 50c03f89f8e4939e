"""napari-spineseg: spinal-cord segmentation models in napari, with exact NIfTI geometry.

The package root stays light to import (no napari, Qt or torch): the public, Qt-free API
lives in :mod:`napari_spineseg.api`; :func:`review` (which needs napari) is loaded lazily.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-spineseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "review"]


def __getattr__(name: str):
    # Lazy: `napari_spineseg.review(viewer, path, task=...)` imports napari only when used.
    if name == "review":
        from ._qt.session import review

        return review
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
