"""``correction.review.LayerReview`` on a plain napari Labels layer: no viewer, no Qt.

The layer is a real Segment result (the shipped demo model through the segment job, as
the widget makes it), painted through the layer's own API, undone and redone; what is
saved must be the layer's voxels on the source grid, and the correction record in the
sidecar must equal a recomputation from the saved file. The widgets' Save and
``api.save`` share one save path: the same result saved both ways gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api, sidecar
from napari_spineseg.correction import EditTracker, correction_record
from napari_spineseg.correction.review import LayerReview
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.errors import SpinesegError
from napari_spineseg.io import load
from napari_spineseg.jobs import ImageSnapshot, result_layer_data
from napari_spineseg.layers import volume_layer_data
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom

OPTIONS = RunOptions(model=str(demo_model_folder()), trust=True, device="cpu")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """(image volume, api.segment result, the image layer) of a phantom on disk."""
    from napari.layers import Layer

    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=2)
    path = tmp_path_factory.mktemp("review") / "sub-02_T2w.nii.gz"
    nib.save(img, path)
    volume = load(path)
    result = api.segment(volume, model=OPTIONS.model, trust=True, device="cpu")
    return volume, result, Layer.create(*volume_layer_data(volume, as_labels=False))


def result_layer(segmented):
    """A fresh Labels layer of the first output, as the Segment widget adds it."""
    from napari.layers import Labels

    _volume, result, image = segmented
    data, kwargs, _ = result_layer_data(result, ImageSnapshot.of(image), OPTIONS)[0]
    return Labels(np.array(data, copy=True), **kwargs)


def read_json(mask: Path) -> dict:
    return json.loads(sidecar.sidecar_path(mask).read_text(encoding="utf-8"))


def test_paint_undo_redo_then_save_writes_the_layer_and_a_true_record(segmented, tmp_path):
    volume, result, _ = segmented
    layer = result_layer(segmented)
    state = LayerReview(layer, autosave_dir=tmp_path / "autosave")
    model_output = np.array(layer.data, copy=True)
    assert not state.dirty and state.refresh().changed_voxels == 0

    layer.brush_size = 3
    z = int(np.flatnonzero(model_output.any(axis=(1, 2)))[3])
    layer.paint((z, 2, 2), 1)  # a speck far from the cord
    painted = int((np.asarray(layer.data) != model_output).sum())
    assert painted > 0
    assert state.dirty and state.refresh().changed_voxels == painted
    assert list(state.edits.slices) == [z]
    assert state.tools_used == {"napari brush"}

    layer.undo()
    assert state.refresh().changed_voxels == 0 and not state.dirty
    assert state.tools_used == set()  # the undone stroke is not in the record
    layer.redo()
    assert state.refresh().changed_voxels == painted and state.dirty
    assert state.tools_used == {"napari brush"}
    trimmed = state.trim((0, 2))
    assert state.slabs_trimmed == [(0, 2)] and state.tools_used == {"napari brush", "trim"}
    state.table.set_reviewed([z, z + 1])

    target = tmp_path / "out" / "edited_seg.nii.gz"
    target.parent.mkdir()
    written = state.save(target, author="tester")
    assert written == target and not state.dirty
    saved = volume.geometry.to_display(np.asarray(load(written).data))
    np.testing.assert_array_equal(saved, layer.data)

    entries = read_json(written)["GeneratedBy"]
    suffix = next(iter(result.outputs))
    model_entry = sidecar.generated_by(result.provenance, output=suffix)
    model_entry["Classes"] = {str(k): v for k, v in result.outputs[suffix].classes.items()}
    assert entries[0] == json.loads(json.dumps(model_entry))
    record = entries[-1]
    edits = EditTracker(model_output).diff(saved)
    assert edits.changed_voxels == painted + trimmed
    recomputed = correction_record(
        "tester",
        date=record["Date"],
        classes=state.classes,
        edits=edits,
        slabs_trimmed=[(0, 2)],
        tools_used=["napari brush", "trim"],
        reviewed_slices=[z, z + 1],
        extra={
            "Layer": str(layer.name),
            "Task": OPTIONS.as_dict()["task"],
            "Classes": {str(k): v for k, v in state.classes.items()},
        },
    )
    assert record == json.loads(json.dumps(recomputed))
    assert len(entries) == 2


def test_the_widget_save_and_api_save_write_the_same_files(segmented, tmp_path):
    _volume, result, _ = segmented
    state = LayerReview(result_layer(segmented), autosave_dir=tmp_path / "autosave")
    suffix = next(iter(result.outputs))
    (tmp_path / "api").mkdir()
    by_api = api.save(result, tmp_path / "api")  # a folder: SCT's names inside it
    mine = by_api[list(result.outputs).index(suffix)]
    (tmp_path / "widget").mkdir()
    by_widget = state.save(tmp_path / "widget" / mine.name)

    a, b = nib.load(mine), nib.load(by_widget)
    assert a.header.binaryblock == b.header.binaryblock
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    # an untouched result: the model's entry alone, the same either way
    assert read_json(mine) == read_json(by_widget)
    assert len(read_json(by_widget)["GeneratedBy"]) == 1


def test_a_mask_opened_from_disk_is_saved_over_itself_with_its_sidecar_extended(tmp_path):
    from napari.layers import Labels

    _, truth_image = cord_phantom(shape=(40, 32, 12), axcodes="RPI", seed=3)
    truth = np.asarray(truth_image.dataobj)
    mask_path = tmp_path / "sub-03_T2w_seg-manual.nii.gz"
    nib.save(truth_image, mask_path)
    sidecar.write(mask_path, {"GeneratedBy": [{"Name": "Manual", "Author": "first"}]})
    volume = load(mask_path)
    data, kwargs, _ = volume_layer_data(volume, as_labels=True, classes={1: "sc"})
    layer = Labels(data, **kwargs)
    state = LayerReview(layer, autosave_dir=tmp_path / "autosave")
    assert state.from_file and state.default_path() == mask_path
    assert state.needs_confirmation() == mask_path  # not written in this session: ask

    cleared = state.remove_small(1, 10**6)  # every component is "small": all removed
    assert cleared == int((truth == 1).sum())
    assert state.save(author="second") == mask_path
    np.testing.assert_array_equal(np.asarray(load(mask_path).data), np.where(truth == 1, 0, truth))
    entries = read_json(mask_path)["GeneratedBy"]
    assert [e["Author"] for e in entries] == ["first", "second"]
    assert entries[1]["napari-spineseg"]["VoxelsChangedTotal"] == cleared
    assert state.needs_confirmation() is None  # written in this session now
    history = list((tmp_path / ".spineseg-history").rglob("*.nii.gz"))
    assert len(history) == 1  # the replaced version is kept


def test_a_save_handler_takes_every_save_and_never_asks(segmented, tmp_path):
    state = LayerReview(result_layer(segmented), autosave_dir=tmp_path / "autosave")
    calls: list[tuple] = []
    elsewhere = tmp_path / "derivatives" / "mask.nii.gz"

    def handler(path, author):
        calls.append((path, author))
        return elsewhere

    state.save_handler = handler
    assert state.needs_confirmation(tmp_path / "anything.nii.gz") is None
    assert state.save(author="rater") == elsewhere
    assert calls == [(None, "rater")]
    assert not list(tmp_path.rglob("*.nii.gz"))  # nothing written by the default path


def test_a_layer_without_plugin_geometry_is_refused_with_the_fix():
    from napari.layers import Labels

    with pytest.raises(SpinesegError, match=r"layer 'drawn' has no napari-spineseg geometry: "):
        LayerReview(Labels(np.zeros((3, 4, 4), np.uint8), name="drawn"))


def test_napari_eraser_and_fill_strokes_are_recorded_and_follow_undo(segmented, tmp_path):
    layer = result_layer(segmented)
    state = LayerReview(layer, autosave_dir=tmp_path / "autosave")
    data = np.asarray(layer.data)
    z = int(np.flatnonzero(data.any(axis=(1, 2)))[2])
    y, x = (int(v[0]) for v in np.nonzero(data[z]))
    layer.brush_size = 1
    layer.paint((z, y, x), 0)  # the eraser paints label 0
    state.refresh()
    assert state.tools_used == {"napari eraser"}
    layer.mode = "fill"
    layer.fill((z, 0, 0), 1)  # the background of one slice flooded
    state.refresh()
    assert state.tools_used == {"napari eraser", "napari fill"}
    layer.undo()
    state.refresh()
    assert state.tools_used == {"napari eraser"}
    layer.undo()
    assert state.refresh().changed_voxels == 0 and state.tools_used == set()
