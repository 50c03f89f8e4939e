"""Masks opened from disk: class names from the sidecar or SCT's suffix, cord/lesion
pairing, asking before replacing a file this session did not write, closing once.

Uses SCT's example data (t2_fake_lesion_sc_seg / _lesion_seg); files that are saved are
copied to a temporary folder first (the data folder is never written).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_spineseg import sidecar
from napari_spineseg._reader import read_nifti
from napari_spineseg.layers import classes_for_mask, classes_from_name

SCT = Path(__file__).resolve().parents[3] / "shared" / "data" / "sct_testing_data"
T2 = SCT / "t2"
CORD = T2 / "t2_fake_lesion_sc_seg.nii.gz"
LESION = T2 / "t2_fake_lesion_lesion_seg.nii.gz"
needs_data = pytest.mark.skipif(not CORD.exists(), reason=f"SCT example data not at {SCT}")


@pytest.mark.parametrize(
    ("name", "suffix", "classes"),
    [
        ("t2_fake_lesion_sc_seg.nii.gz", "_sc_seg", {1: "sc"}),
        ("t2_fake_lesion_lesion_seg.nii.gz", "_lesion_seg", {1: "lesion"}),
        ("t2_seg-manual.nii.gz", "_seg", {1: "sc"}),
        ("t2s_gmseg_manual.nii.gz", "_gmseg", {1: "gm"}),
        ("mt1_gmseg_goldstandard.nii.gz", "_gmseg", {1: "gm"}),
        ("sub-01_T2w_wmseg.nii", "_wmseg", {1: "wm"}),
        ("sub-01_T2w_7t_multiclass_gm.nii.gz", "_7t_multiclass_gm", {1: "gm"}),
        ("sub-01_T1w_GM_seg.nii.gz", "_GM_seg", {1: "GM"}),
    ],
)
def test_sct_suffixes_name_the_classes(name, suffix, classes):
    assert classes_from_name(name) == (suffix, classes)


def test_names_without_an_sct_suffix_give_nothing():
    for name in ("t2.nii.gz", "t2_seg-manual_labeled.nii.gz", "_seg.nii.gz", "scan.nii"):
        assert classes_from_name(name) is None, name
    found = classes_from_name("t2_seg-deepseg_rootlets-manual.nii.gz")
    assert found is not None and found[0] == "_rootlets" and found[1][2] == "C2 rootlets"


def test_the_sidecar_wins_over_the_suffix(tmp_path):
    mask = tmp_path / "sub-01_T2w_sc_seg.nii.gz"
    mask.write_bytes(b"")  # only the name and the sidecar are read
    assert classes_for_mask(mask) == {1: "sc"}
    sidecar.write(mask, {"GeneratedBy": [{"Name": "x", "Classes": {"1": "cord", "2": "edema"}}]})
    assert classes_for_mask(mask) == {1: "cord", 2: "edema"}


@needs_data
def test_reader_names_sct_masks_so_they_get_cord_checks():
    from napari_spineseg.correction import slice_table

    ((data, kwargs, kind),) = read_nifti(CORD)
    assert kind == "labels"
    classes = kwargs["metadata"]["spineseg"]["classes"]
    assert classes == {1: "sc"}
    assert list(kwargs["features"]["class"]) == ["background", "sc"]
    table = slice_table(data, kwargs["scale"], classes)
    assert table.cord_classes == (1,)
    assert table.area[1].max() > 0


def _review(viewer_model, qtbot, paths):
    from napari.layers import Layer

    from napari_spineseg._qt.review_widget import ReviewWidget

    for p in paths:
        for data, kwargs, kind in read_nifti(p):
            viewer_model.add_layer(Layer.create(data, kwargs, kind))
    widget = ReviewWidget(viewer_model)
    qtbot.addWidget(widget)
    widget.prompt = lambda title, text: pytest.fail(f"unexpected prompt: {text}")
    widget.prompt_recovery = lambda text: "ignore"
    return widget


@needs_data
def test_lesion_mask_is_checked_against_the_cord_mask_of_its_grid(qtbot, tmp_path, monkeypatch):
    from napari.components import ViewerModel

    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    viewer = ViewerModel()
    widget = _review(viewer, qtbot, [CORD, LESION])
    cord_layer, lesion_layer = viewer.layers
    lesion_state = widget.select_layer(lesion_layer)
    assert lesion_state.cord_partner() is widget.states[id(cord_layer)]
    assert "Lesions checked against the cord of" in widget.summary_label.text()
    lesion = np.asarray(lesion_layer.data) > 0
    cord = np.asarray(cord_layer.data) > 0
    assert not (lesion & ~cord).any()  # SCT's fake lesion lies in the cord
    assert not lesion_state.table.flags["lesion_outside_cord"].any()

    # remove the cord on one lesion slice: the lesion now lies outside it
    z = int(np.flatnonzero(lesion.any(axis=(1, 2)))[0])
    idx = np.nonzero(cord[z])
    cord_state = widget.select_layer(cord_layer)
    cord_state.layer.data_setitem((np.full(idx[0].size, z), *idx), 0)
    widget.select_layer(lesion_layer)
    flagged = np.flatnonzero(lesion_state.table.flags["lesion_outside_cord"])
    assert flagged.tolist() == [z]


@needs_data
def test_save_asks_before_replacing_a_mask_this_session_did_not_write(
    qtbot, tmp_path, monkeypatch
):
    from napari.components import ViewerModel

    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    for f in (T2 / "t2_fake_lesion.nii.gz", CORD):
        shutil.copy(f, tmp_path / f.name)
    mask = tmp_path / CORD.name
    original = mask.read_bytes()
    viewer = ViewerModel()
    widget = _review(viewer, qtbot, [mask])
    (layer,) = viewer.layers
    state = widget.select_layer(layer)
    assert state.default_path() == mask  # a mask from disk is saved over itself
    z = int(np.flatnonzero(np.asarray(layer.data).any(axis=(1, 2)))[3])
    layer.data_setitem((np.array([z]), np.array([0]), np.array([0])), 1)

    asked: list[str] = []
    widget.prompt_replace = lambda text: asked.append(text) or False
    assert widget.save() is None
    assert len(asked) == 1 and str(mask) in asked[0] and "not written in this session" in asked[0]
    assert mask.read_bytes() == original and state.dirty

    widget.prompt_replace = lambda text: asked.append(text) or True
    assert widget.save() == mask
    assert len(asked) == 2 and not state.dirty
    record = json.loads(mask.with_name("t2_fake_lesion_sc_seg.json").read_text())
    details = record["GeneratedBy"][-1]["napari-spineseg"]
    assert details["VoxelsChangedTotal"] == 1 and details["SlicesEdited"] == [z]
    assert details["Classes"] == {"1": "sc"}

    layer.data_setitem((np.array([z]), np.array([0]), np.array([1])), 1)
    assert widget.save() == mask  # written by this session: no question
    assert len(asked) == 2


@needs_data
def test_viewer_close_from_a_script_asks_once_and_honours_cancel(viewer, tmp_path, monkeypatch):
    from napari.layers import Layer

    from napari_spineseg._qt.review_widget import ReviewWidget

    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    ((data, kwargs, kind),) = read_nifti(CORD)
    layer = viewer.add_layer(Layer.create(data, kwargs, kind))
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.prompt_recovery = lambda text: "ignore"
    layer.data_setitem((np.array([5]), np.array([0]), np.array([0])), 1)
    answers: list[str] = []

    def prompt(title, text):
        answers.append(text)
        return "cancel" if len(answers) == 1 else "discard"

    widget.prompt = prompt
    viewer.close()
    assert len(answers) == 1
    assert layer in viewer.layers and hasattr(viewer.window, "_qt_window")  # still open
    viewer.close()
    assert len(answers) == 2
    assert len(viewer.layers) == 0 and not hasattr(viewer.window, "_qt_window")
