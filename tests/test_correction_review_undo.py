"""Undo-aware edit tracking on a real napari Labels layer (no window: ViewerModel).

A randomised sequence of paint, erase, undo, redo, trim, refine, undo of the refine and
save on SCT's t2 manual cord mask; after every step the numbers the Review panel shows
(voxels changed, slices edited, per-slice area, slabs refined, tools used, unsaved) and,
after each save, the sidecar must equal a recomputation from the data and an
independent mirror of the undo stacks.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_spineseg.io import load
from napari_spineseg.layers import volume_layer_data

SCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sct_testing_data"
CORD = SCT / "t2" / "t2_seg-manual.nii.gz"

pytestmark = pytest.mark.skipif(not CORD.exists(), reason=f"SCT example data not at {SCT}")


def _viewer_with_mask():
    from napari.components import ViewerModel
    from napari.layers import Layer

    viewer = ViewerModel()
    data, kwargs, kind = volume_layer_data(load(CORD), as_labels=True, classes={1: "sc"})
    layer = viewer.add_layer(Layer.create(data, kwargs, kind))
    return viewer, layer


class Mirror:
    """The test's own model of napari's undo stacks: data snapshots and the facts
    (tool, refined slab and its reference) of each undoable step."""

    def __init__(self, data: np.ndarray) -> None:
        self.base = data.copy()
        self.undo: list[tuple[np.ndarray, dict]] = [(data.copy(), {})]
        self.redo: list[tuple[np.ndarray, dict]] = []

    def push(self, data: np.ndarray, fact: dict) -> None:
        self.undo.append((data.copy(), fact))
        self.redo.clear()

    def do_undo(self) -> None:
        if len(self.undo) > 1:
            self.redo.append(self.undo.pop())

    def do_redo(self) -> None:
        if self.redo:
            self.undo.append(self.redo.pop())

    @property
    def data(self) -> np.ndarray:
        return self.undo[-1][0]

    def live(self, key: str) -> list:
        return [f[key] for _, f in self.undo if key in f]

    def reference(self) -> np.ndarray:
        ref = self.base.copy()
        for _, f in self.undo:
            if "refined" in f:
                a, b = f["refined"]
                ref[a:b] = f["reference"]
        return ref


def _check_panel(state, mirror: Mirror, spacing) -> None:
    data = np.asarray(state.layer.data)
    np.testing.assert_array_equal(data, mirror.data)  # napari replayed what we expect
    state.refresh()
    changed = data != mirror.reference()
    per_slice = changed.sum(axis=(1, 2))
    e = state.edits
    assert e.changed_voxels == int(changed.sum())
    assert list(e.slices) == np.flatnonzero(per_slice).tolist()
    assert e.per_slice == {int(z): int(per_slice[z]) for z in np.flatnonzero(per_slice)}
    area = (data == 1).sum(axis=(1, 2)) * spacing[1] * spacing[2]
    np.testing.assert_allclose(state.table.area[1], area)
    assert state.slabs_refined == mirror.live("refined")
    assert state.slabs_trimmed == mirror.live("trimmed")
    assert state.tools_used == set(mirror.live("tool"))
    np.testing.assert_array_equal(state.tracker.model_output, mirror.reference())


def _check_saved(path: Path, state, mirror: Mirror) -> None:
    saved = state.volume.geometry.to_display(np.asarray(load(path).data))
    np.testing.assert_array_equal(saved, mirror.data)
    changed = saved != mirror.reference()
    details = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())[
        "GeneratedBy"
    ][-1]["napari-spineseg"]
    assert details["VoxelsChangedTotal"] == int(changed.sum())
    assert details["SlicesEdited"] == np.flatnonzero(changed.any(axis=(1, 2))).tolist()
    added = int(((saved == 1) & changed).sum())
    removed = int(((mirror.reference() == 1) & changed).sum())
    if added or removed:
        assert details["VoxelsChanged"] == {"sc": {"added": added, "removed": removed}}
    assert details["SlabsRefined"] == [list(s) for s in mirror.live("refined")]
    assert details["SlabsTrimmed"] == [list(s) for s in mirror.live("trimmed")]
    assert details["ToolsUsed"] == sorted(set(mirror.live("tool")))
    assert not state.dirty


@pytest.mark.parametrize("seed", range(int(os.environ.get("SPINESEG_UNDO_SEEDS", "3"))))
def test_random_paint_undo_redo_refine_save_keeps_the_record_true(tmp_path, seed):
    from napari_spineseg.correction.review import LayerReview

    rng = random.Random(seed)
    viewer, layer = _viewer_with_mask()
    state = LayerReview(layer, autosave_dir=tmp_path / "autosave")
    mirror = Mirror(np.asarray(layer.data))
    n, h, w = layer.data.shape
    cord_slices = np.flatnonzero(mirror.base.any(axis=(1, 2)))
    layer.brush_size = 3
    target = tmp_path / "t2_seg-manual_edited.nii.gz"
    preview = None
    done: dict[str, int] = {}
    centre = np.argwhere(mirror.base).mean(axis=0)
    actions = ["paint", "erase", "undo", "redo", "trim", "refine", "save"]
    for _step in range(60):
        action = rng.choices(actions, weights=[3, 3, 4, 1, 1, 2, 1])[0]
        if action in ("paint", "erase"):
            z = int(rng.choice(cord_slices))
            viewer.dims.set_point(0, layer.translate[0] + z * layer.scale[0])
            coord = (z, centre[1] + rng.uniform(-6, 6), centre[2] + rng.uniform(-6, 6))
            before = np.asarray(layer.data).copy()
            layer.paint(coord, 1 if action == "paint" else 0)
            if not np.array_equal(before, layer.data):  # napari records no empty stroke
                tool = "napari brush" if action == "paint" else "napari eraser"
                mirror.push(np.asarray(layer.data), {"tool": tool})
                done[action] = done.get(action, 0) + 1
        elif action == "undo":
            if mirror.undo[-1][1].get("refined"):
                done["undo refine"] = done.get("undo refine", 0) + 1
            layer.undo()
            mirror.do_undo()
        elif action == "redo":
            layer.redo()
            mirror.do_redo()
        elif action == "trim":
            a = int(rng.choice(cord_slices))
            slab = (a, min(a + 2, n))
            if state.trim(slab):
                mirror.push(np.asarray(layer.data), {"tool": "trim", "trimmed": slab})
        elif action == "refine":
            a = int(rng.choice(cord_slices[:-3]))
            slab, crop = (a, a + 3), (max(a - 2, 0), min(a + 5, n))
            # a stand-in prediction: the current cord dilated by one voxel in-plane
            refined = ndimage.binary_dilation(
                np.asarray(layer.data)[crop[0] : crop[1]] > 0,
                structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool),
            ).astype(np.uint8)
            change = state.merge(refined, crop, slab, overwrite=rng.random() < 0.5)
            preview = (refined[slab[0] - crop[0] : slab[1] - crop[0]], slab)
            if state.apply_refine(change, refined, crop, slab):
                mirror.push(
                    np.asarray(layer.data),
                    {"tool": "refine", "refined": slab, "reference": preview[0]},
                )
        else:
            path = state.save(target, author="tester")
            _check_panel(state, mirror, state.spacing)
            _check_saved(path, state, mirror)
        _check_panel(state, mirror, state.spacing)
    assert min(done.get(k, 0) for k in ("paint", "erase", "undo refine")) > 0, done
    # undo everything: the layer equals the model output and nothing is recorded
    for _ in range(len(mirror.undo)):
        layer.undo()
        mirror.do_undo()
    _check_panel(state, mirror, state.spacing)
    assert state.edits.changed_voxels == 0 and state.slabs_refined == []


def test_undo_of_a_refine_restores_the_reference_and_the_record(tmp_path):
    """The issue's case: undoing Apply must not turn the refined voxels into 'edits'."""
    from napari_spineseg.correction.review import LayerReview

    viewer, layer = _viewer_with_mask()
    state = LayerReview(layer, autosave_dir=tmp_path / "autosave")
    base = np.asarray(layer.data).copy()
    z = int(np.flatnonzero(base.any(axis=(1, 2)))[10])
    layer.brush_size = 3
    viewer.dims.set_point(0, layer.translate[0] + z * layer.scale[0])
    layer.paint((z, 3, 3), 1)  # a speck far from the cord
    painted = int((np.asarray(layer.data) != base).sum())
    assert painted > 0
    crop, slab = (z + 2, z + 12), (z + 4, z + 10)
    refined = np.zeros((10, *base.shape[1:]), np.uint8)  # the model now sees no cord
    change = state.merge(refined, crop, slab)
    state.apply_refine(change, refined, crop, slab)
    assert state.refresh().changed_voxels == painted  # the refine is the new reference
    assert state.slabs_refined == [slab]
    layer.undo()
    assert state.refresh().changed_voxels == painted
    assert state.slabs_refined == [] and "refine" not in state.tools_used
    np.testing.assert_array_equal(state.tracker.model_output, base)
    layer.redo()
    assert state.refresh().changed_voxels == painted and state.slabs_refined == [slab]
    layer.undo()
    layer.undo()
    assert state.refresh().changed_voxels == 0
    assert not state.dirty  # equal to the loaded mask again: nothing unsaved
