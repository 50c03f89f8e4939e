"""napari-spineseg: spinal-cord segmentation models in napari, with exact NIfTI geometry.

The package root stays light to import (no napari, Qt or torch): the public, Qt-free API
lives in :mod:`napari_spineseg.api`; :func:`review` and
:func:`cohort` (which need napari) are loaded lazily.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-spineseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "cohort", "review"]


def __getattr__(name: str):
    # Lazy: `napari_spineseg.review(viewer, path, task=...)` imports napari only when used.
    if name == "review":
        from ._qt.session import review

        return review
    if name == "cohort":  # napari_spineseg.cohort(viewer, DERIV_or_QC_YAML): docs/cohort.md
        from ._qt.cohort_widget import cohort

        return cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
