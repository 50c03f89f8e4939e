"""``viewer.open(path)`` without ``plugin=``: the reader preference set on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_spineseg._reader import ensure_reader_preference, route_viewer_open

SCT = Path(__file__).resolve().parents[3] / "shared" / "data" / "sct_testing_data"
T2 = SCT / "t2" / "t2.nii.gz"


def _prefs():
    from napari.settings import get_settings

    return get_settings().plugins


def test_first_use_sets_the_preference_and_viewer_open_just_works(qtbot):
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins, _npe2
    from napari.utils.notifications import notification_manager

    if not T2.exists():
        pytest.skip(f"SCT example data not at {SCT}")
    _initialize_plugins()  # what napari.Viewer() does
    assert {"napari", "napari-spineseg"} <= set(_npe2.get_readers(str(T2)))
    viewer = ViewerModel()
    with pytest.raises(Exception, match="Could not find a backend|Multiple plugins"):
        viewer.open(T2)  # the issue: napari's builtin reader is tried and fails
    assert not _prefs().extension2reader  # fresh settings (conftest)
    before = len(notification_manager.records)
    assert ensure_reader_preference() == ["*.nii", "*.nii.gz"]
    assert _prefs().extension2reader == {"*.nii": "napari-spineseg", "*.nii.gz": "napari-spineseg"}
    told = [str(n.message) for n in notification_manager.records[before:]]
    assert any("Preferences > Plugins > File extension readers" in m for m in told)
    assert route_viewer_open(viewer) and not route_viewer_open(viewer)
    (layer,) = viewer.open(T2)
    meta = layer.metadata["spineseg"]
    assert meta["role"] == "image" and meta["source_path"] == str(T2)
    np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
    assert ensure_reader_preference() == []  # once only
    with pytest.raises(Exception, match="Could not find a backend"):
        viewer.open(T2, plugin="napari")  # an explicit choice is honoured


def test_a_users_choice_is_never_overridden():
    _prefs().extension2reader = {"*.nii.gz": "napari"}
    assert ensure_reader_preference(notify=False) == ["*.nii"]
    assert _prefs().extension2reader == {"*.nii.gz": "napari", "*.nii": "napari-spineseg"}
    _prefs().extension2reader = {"*.nii*": "someone-else"}
    assert ensure_reader_preference(notify=False) == []  # "*.nii*" covers both
    assert _prefs().extension2reader["*.nii*"] == "someone-else"


def test_widget_creation_is_the_first_use(qtbot):
    from napari.components import ViewerModel

    from napari_spineseg._qt.review_widget import ReviewWidget

    qtbot.addWidget(ReviewWidget(ViewerModel()))
    assert _prefs().extension2reader.get("*.nii.gz") == "napari-spineseg"
