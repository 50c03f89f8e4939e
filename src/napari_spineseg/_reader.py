"""npe2 reader: ``.nii``/``.nii.gz`` -> an Image or Labels layer in the display convention.

Why this exists next to napari's builtin reader: napari's builtins open NIfTI through
imageio/itk-free paths without the header, so the orientation is lost and a mask saved
from such a layer cannot be put back on the scanner grid. This reader keeps the
:class:`~napari_spineseg.io.Volume` in the layer metadata (see
:mod:`napari_spineseg.layers`), and the writer restores the file exactly.

Errors: :class:`~napari_spineseg.errors.NiftiError` propagates unchanged (its message
names the file and the fix; napari shows it in a notification). Geometry findings are
``warnings.warn`` (GeometryWarning) from :func:`napari_spineseg.io.load`, which napari
turns into warning notifications.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fnmatch import fnmatch

from .layers import LayerDataTuple, volume_layer_data

_EXTENSIONS = (".nii", ".nii.gz")
PLUGIN = "napari-spineseg"
#: napari's reader-preference patterns (``settings.plugins.extension2reader``)
READER_PATTERNS = ("*.nii", "*.nii.gz")


def ensure_reader_preference(notify: bool = True) -> list[str]:
    """Make napari-spineseg napari's reader for ``.nii``/``.nii.gz`` unless the user chose.

    napari's builtin reader also accepts NIfTI names, so without a preference
    ``viewer.open(path)`` refuses to pick ("Multiple plugins found ...") and a dropped
    file asks every time. Called when a napari-spineseg widget is first created: for
    each pattern that no existing preference matches (whichever plugin it names: a
    choice is never overridden) the preference is set, and the user is told how to
    change it. Returns the patterns set.
    """
    try:
        from napari.settings import get_settings
    except ImportError:  # napari not installed: nothing to prefer
        return []
    plugins = get_settings().plugins
    prefs = dict(plugins.extension2reader)
    added = [
        pattern
        for pattern in READER_PATTERNS
        if not any(fnmatch("scan" + pattern[1:], p) for p in prefs)
    ]
    if not added:
        return []
    plugins.extension2reader = {**prefs, **dict.fromkeys(added, PLUGIN)}
    if notify:
        from napari.utils.notifications import show_info

        show_info(
            f"napari-spineseg now opens {' and '.join(p[1:] for p in added)} files "
            "(drag and drop, viewer.open) with their exact geometry. To change it: "
            "Preferences > Plugins > File extension readers."
        )
    return added


def route_viewer_open(viewer: object) -> bool:
    """Let ``viewer.open(path)`` without ``plugin=`` follow the reader preference.

    napari 0.9's ``Viewer.open`` defaults to ``plugin="napari"`` (its builtin readers)
    and ignores the preference that drag and drop and *File > Open* follow, so
    ``viewer.open("t2.nii.gz")`` fails with "Could not find a backend ...". This wraps
    the viewer's ``open``: when ``plugin`` is *not given* and every path is a NIfTI
    file, it passes ``plugin=None`` (napari then uses the preference). An explicit
    ``plugin=`` (including ``"napari"``) is passed through unchanged. Returns True when
    the viewer's ``open`` is wrapped (once per viewer).
    """
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari gives plugins a proxy
    if getattr(vars(viewer).get("open"), "_spineseg_routed", False):
        return False
    original = getattr(viewer, "open", None)
    if original is None:
        return False

    def open_(path, *args, **kwargs):  # noqa: ANN001, ANN202 (napari's signature)
        if "plugin" not in kwargs and not args:
            paths = [path] if isinstance(path, str | os.PathLike) else list(path)
            if paths and all(os.fspath(p).lower().endswith(_EXTENSIONS) for p in paths):
                kwargs["plugin"] = None  # napari: the preference, else the only reader
        return original(path, *args, **kwargs)

    open_._spineseg_routed = True  # type: ignore[attr-defined]
    try:
        object.__setattr__(viewer, "open", open_)
    except (AttributeError, TypeError):
        return False
    return True


def napari_get_reader(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> Callable[[str | Sequence[str]], list[LayerDataTuple]] | None:
    """Return :func:`read_nifti` when every path is named ``.nii``/``.nii.gz``, else None.

    Decides by name only (napari asks every reader plugin about every file dropped).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            return None
        if not os.fspath(p).lower().endswith(_EXTENSIONS):
            return None
    return read_nifti


def read_nifti(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerDataTuple]:
    """Load each file (exact geometry) and describe it as a napari layer."""
    from .io import load

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [volume_layer_data(load(p)) for p in paths]
