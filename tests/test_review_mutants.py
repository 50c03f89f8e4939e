"""LayerReview cases found by mutation testing (benchmarks/README.md, correction/review.py).

Each test pins what the Review panel relies on: which layers can be reviewed, how
napari's undo stacks are read, the classes and reference a review starts from, the
"unsaved edits" state, the lesion mask's cord partner, where a save goes and what its
record says, and the recovery files offered back. Layers are plain napari Labels built
from small images on disk (no model run); expected values are worked out from the
arrays, never taken from the code under test.
"""

from __future__ import annotations

import collections
import getpass
import logging
import types
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg.correction.qc import slice_table
from napari_spineseg.correction.review import (
    LayerReview,
    _atom_slices,
    _history,
    _napari_tool,
    _same_file,
    _slice_checksums,
    is_reviewable,
    spineseg_meta,
)
from napari_spineseg.correction.tools import Edit
from napari_spineseg.errors import LabelsError, SaveRefusedError, SpinesegError
from napari_spineseg.io import from_nifti, load
from napari_spineseg.layers import labels_layer_data_like, volume_layer_data

SHAPE = (6, 8, 8)  # display order


def _image_file(folder: Path, name: str = "sub-01_T2w.nii.gz") -> Path:
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE[::-1])  # file order
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])), path)
    return path


def _cord(value: int = 1) -> np.ndarray:
    """Display-order labels: a 2x2 cord on slices 1..4."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:5, 3:5, 3:5] = value
    return lab


def result_layer(volume, labels=None, name="result", classes=None, **extra):
    """A Labels layer as the Segment widget adds it (metadata of a model run)."""
    from napari.layers import Labels

    labels = _cord() if labels is None else labels
    extra.setdefault("run", {"task": "seg_sc_contrast_agnostic"})
    data, kwargs, _ = labels_layer_data_like(
        labels,
        volume,
        name,
        classes={1: "sc"} if classes is None else classes,
        extra_meta=extra,
    )
    return Labels(np.array(data, copy=True), **kwargs)


@pytest.fixture
def volume(tmp_path):
    vol = load(_image_file(tmp_path))
    assert vol.geometry.display_shape == SHAPE
    return vol


# ------------------------------------------------------------------ layer checks
def test_spineseg_meta_of_layers_without_it():
    assert spineseg_meta(types.SimpleNamespace()) is None  # no metadata attribute
    assert spineseg_meta(types.SimpleNamespace(metadata=None)) is None
    assert spineseg_meta(types.SimpleNamespace(metadata={"spineseg": "volume"})) is None
    info = {"volume": 1}
    assert spineseg_meta(types.SimpleNamespace(metadata={"spineseg": info})) is info


def test_only_3d_labels_with_plugin_geometry_are_reviewable(volume):
    from napari.layers import Image, Labels

    layer = result_layer(volume)
    assert is_reviewable(layer) is True
    assert not is_reviewable(Labels(np.zeros(SHAPE, np.uint8)))  # no metadata
    no_volume = Labels(np.zeros(SHAPE, np.uint8), metadata={"spineseg": {"volume": None}})
    assert not is_reviewable(no_volume)
    flat = Labels(np.zeros(SHAPE[1:], np.uint8), metadata=layer.metadata)
    assert not is_reviewable(flat)
    image = Image(np.zeros(SHAPE, np.float32), metadata=layer.metadata)
    assert not is_reviewable(image)


# ------------------------------------------------------------- napari's history
class _Atom:
    pass


def test_history_reads_napari_undo_and_redo_stacks():
    a, b, c = _Atom(), _Atom(), _Atom()
    layer = types.SimpleNamespace(
        _undo_history=collections.deque([[a, b]], maxlen=3),
        _redo_history=collections.deque([[c]]),
    )
    undo, redo, full = _history(layer)
    assert undo == {id(a): a, id(b): b} and redo == {id(c): c} and full is False
    layer._undo_history.extend([[_Atom()], [_Atom()]])
    assert _history(layer)[2] is True  # 3 items of 3: the oldest falls off next
    layer._undo_history = collections.deque([[a]] * 5)  # no bound: never full
    assert _history(layer)[2] is False


@pytest.mark.parametrize(
    "attrs",
    [{}, {"_undo_history": collections.deque()}, {"_redo_history": collections.deque()}],
)
def test_history_of_a_layer_without_both_stacks_is_unknown(attrs):
    assert _history(types.SimpleNamespace(**attrs)) is None


def test_atom_slices_of_each_atom_format():
    masked = types.SimpleNamespace(slice_key=(slice(2, 5), slice(0, 8)))
    assert _atom_slices(masked, 10) == {2, 3, 4}
    assert _atom_slices(types.SimpleNamespace(slice_key=(slice(None),)), 3) == {0, 1, 2}
    setitem = ((np.array([4, 1, 4]), np.array([0, 0, 0])), None, None)
    assert _atom_slices(setitem, 10) == {1, 4}
    assert _atom_slices(((np.array([], int),), None, None), 10) == set()
    assert _atom_slices(object(), 10) is None  # unknown: recompute everything


def test_napari_tool_names():
    layer = types.SimpleNamespace(mode="paint")
    assert _napari_tool(types.SimpleNamespace(new_value=0), layer) == "napari eraser"
    assert _napari_tool(types.SimpleNamespace(new_value=2), layer) == "napari brush"
    assert _napari_tool(types.SimpleNamespace(), layer) == "napari brush"
    for mode in ("fill", "FILL", "polygon"):
        layer.mode = mode
        assert _napari_tool(types.SimpleNamespace(new_value=1), layer) == f"napari {mode.lower()}"
    layer.mode = "erase"
    assert _napari_tool(types.SimpleNamespace(new_value=1), layer) == "napari brush"
    assert _napari_tool(types.SimpleNamespace(new_value=1), object()) == "napari brush"


def test_slice_checksums_are_crc32_of_each_slice():
    data = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    expected = {z: zlib.crc32(data[z].tobytes()) for z in range(3)}
    assert _slice_checksums(data) == expected
    assert _slice_checksums(data, [2, 0]) == {2: expected[2], 0: expected[0]}
    fortran = np.asfortranarray(data)  # a view in another memory order: same bytes per slice
    assert _slice_checksums(fortran) == expected


def test_same_file_compares_resolved_paths(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _same_file("a/../a/x.nii.gz", tmp_path / "a" / "x.nii.gz")
    assert not _same_file("a/x.nii.gz", "a/y.nii.gz")


# ------------------------------------------------------------- starting a review
def test_classes_come_from_the_metadata_or_from_the_labels(volume, tmp_path):
    state = LayerReview(
        result_layer(volume, classes={1: "sc", 2: "lesion"}), tmp_path / "autosave"
    )
    assert state.classes == {1: "sc", 2: "lesion"}
    labels = _cord()
    labels[2, 0, 0] = 7
    state = LayerReview(result_layer(volume, labels, classes={}), tmp_path / "autosave")
    assert state.classes == {1: "label 1", 7: "label 7"}
    state = LayerReview(
        result_layer(volume, np.zeros(SHAPE, np.uint8), classes={}), tmp_path / "autosave"
    )
    assert state.classes == {1: "label 1"}


def test_the_reference_is_the_model_output_when_it_fits(volume, tmp_path):
    painted = _cord()
    painted[0, 0, 0] = 1  # one voxel drawn since the model ran
    state = LayerReview(result_layer(volume, painted, model_output=_cord()), tmp_path / "autosave")
    assert state.edits.changed_voxels == 1 and state.edits.slices == (0,)
    # a model output of another shape cannot be the reference: the layer is
    wrong = LayerReview(
        result_layer(volume, painted, model_output=np.zeros((2, 2, 2), np.uint8)), tmp_path
    )
    assert wrong.edits.changed_voxels == 0
    np.testing.assert_array_equal(wrong.tracker.model_output, painted)
    assert wrong.tracker.model_output is not wrong.layer.data


def test_the_workers_qc_table_is_used_once_if_it_fits(volume, tmp_path):
    labels = _cord()
    ready = slice_table(labels, (2.0, 0.6, 0.5), {1: "sc"})
    layer = result_layer(volume, labels, qc_table=ready, qc_cord_suffix="_seg")
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.table is ready and state.table_cord_suffix == "_seg"
    assert "qc_table" not in layer.metadata["spineseg"]  # stale after any edit
    other = slice_table(np.zeros((3, 8, 8), np.uint8), (1, 1, 1), {1: "sc"})
    state = LayerReview(
        result_layer(volume, labels, qc_table=other, qc_cord_suffix="_x"), tmp_path / "autosave"
    )
    assert state.table is not other and state.table.n_slices == SHAPE[0]
    assert state.table_cord_suffix is None
    state = LayerReview(result_layer(volume, labels, qc_table="table"), tmp_path / "autosave")
    assert state.table.n_slices == SHAPE[0]
    layer = result_layer(volume, labels, qc_table=ready)  # a table without a cord output
    assert LayerReview(layer, tmp_path / "autosave").table_cord_suffix is None


def test_spacing_probabilities_and_run_come_from_the_layer(volume, tmp_path):
    p = np.zeros(SHAPE, np.float32)
    layer = result_layer(volume, probabilities={1: p}, suffix="_sc_seg", provenance={"Name": "m"})
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.spacing == pytest.approx((2.0, 0.6, 0.5))
    assert state.probabilities == {1: p}
    assert (state.suffix, state.run, state.provenance) == (
        "_sc_seg",
        {"task": "seg_sc_contrast_agnostic"},
        {"Name": "m"},
    )
    assert state.source_path == str(volume.path) and not state.from_file
    assert state.autosaver is not None and state.autosaver.cache_dir == tmp_path / "autosave"


def test_a_volume_without_a_file_has_no_source_and_no_autosave(tmp_path):
    data = np.zeros(SHAPE[::-1], np.int16)
    vol = from_nifti(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])))
    state = LayerReview(result_layer(vol), tmp_path / "autosave")
    assert state.source_path == "" and state.autosaver is None
    assert state.recoveries() == []
    assert state.autosave_snapshot(force=True) is None
    assert state.autosave_write(_cord(), {}) is None
    with pytest.raises(SaveRefusedError) as info:
        state.default_path()
    assert str(info.value) == (
        "result: the image was not read from a file, so there is no default output name; "
        "choose a path (Save as...)"
    )


def test_autosave_refused_next_to_the_data_is_logged_not_raised(volume, caplog):
    with caplog.at_level(logging.WARNING, logger="napari_spineseg.correction.review"):
        state = LayerReview(result_layer(volume), volume.path.parent)
    assert state.autosaver is None
    assert [r.getMessage() for r in caplog.records] == [
        f"autosave disabled for result: autosave folder {volume.path.parent} is the folder "
        f"of {volume.path}: recovery files are never written next to the data; unset "
        "SPINESEG_AUTOSAVE_DIR or point it to another folder"
    ]


def test_autosave_every_ten_edits_or_thirty_seconds(volume, tmp_path):
    saver = LayerReview(result_layer(volume), tmp_path / "autosave").autosaver
    assert (saver.every_edits, saver.every_seconds) == (10, 30.0)
    assert saver.layer_name == "result" and saver.source_sha256 == volume.sha256


def test_a_layer_without_plugin_geometry_is_refused_in_full():
    from napari.layers import Labels

    for meta in ({}, {"spineseg": {"volume": None}}):
        with pytest.raises(SpinesegError) as info:
            LayerReview(Labels(np.zeros(SHAPE, np.uint8), name="drawn", metadata=meta))
        assert str(info.value) == (
            "layer 'drawn' has no napari-spineseg geometry: segment an image with the Segment "
            "widget, or open a mask with napari-spineseg"
        )


# ------------------------------------------------------------------ unsaved state
def test_dirty_follows_the_data_and_can_be_dropped(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.dirty is False
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), np.array([1], np.uint8))
    assert state.dirty is True
    state.dirty = False  # the reviewer chose to drop the change: it is not "unsaved"
    assert state.dirty is False
    state.dirty = True
    assert state.dirty is True
    layer.undo()
    state.dirty = False
    assert state.dirty is False and state.refresh().changed_voxels == 0


def test_an_assignment_of_new_data_is_compared_in_full(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    new = _cord()
    new[5, 7, 7] = 1
    layer.data = new
    state.note_reload()
    assert state.dirty and state.refresh().changed_voxels == 1


def test_listeners_are_told_of_paint_reload_and_history_moves(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    told = []
    state.listener = lambda: told.append
    state.on_paint_event()
    state.on_reload_event()
    assert told == [state, state]
    state.apply(_one_voxel(), "interpolate")
    state.on_set_data_event()  # nothing moved since the last refresh: not told
    assert len(told) == 2
    layer.data_setitem((np.array([1]), np.array([0]), np.array([0])), np.array([1], np.uint8))
    state.on_set_data_event()
    assert len(told) == 3
    state.listener = lambda: None  # the widget is gone
    state.on_paint_event()
    assert len(told) == 3
    alone = LayerReview(result_layer(volume, name="alone"), tmp_path / "autosave")
    alone.on_paint_event()  # no listener ever set
    alone.on_reload_event()


def test_paint_events_count_toward_the_autosave(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    for _ in range(3):
        state.note_paint()
    assert state.autosaver.unsaved_edits == 3


# ------------------------------------------------------------------- cord partner
def test_a_lesion_mask_needs_a_cord_partner(volume, tmp_path):
    lesion = LayerReview(result_layer(volume, classes={1: "lesion"}), tmp_path / "autosave")
    assert lesion.needs_cord_partner and lesion.cord_values == ()
    both = LayerReview(result_layer(volume, classes={1: "sc", 2: "lesion"}), tmp_path / "autosave")
    assert not both.needs_cord_partner and both.cord_values == (1,)
    cord = LayerReview(result_layer(volume, classes={1: "sc"}), tmp_path / "autosave")
    assert not cord.needs_cord_partner


def test_the_cord_reference_is_the_partners_cord_classes(volume, tmp_path):
    lesion = LayerReview(result_layer(volume, classes={1: "lesion"}), tmp_path / "autosave")
    assert lesion.cord_reference() is None
    labels = _cord()
    labels[0, 0:2, 0:2] = 2  # CSF, not cord
    partner = LayerReview(
        result_layer(volume, labels, classes={1: "sc", 2: "csf"}), tmp_path / "autosave"
    )
    lesion.cord_partner = lambda: partner
    np.testing.assert_array_equal(lesion.cord_reference(), labels == 1)
    lesion.cord_partner = lambda: None  # closed
    assert lesion.cord_reference() is None
    small = types.SimpleNamespace(layer=types.SimpleNamespace(data=np.ones((2, 8, 8))))
    lesion.cord_partner = lambda: small
    assert lesion.cord_reference() is None


def test_the_table_checks_lesions_against_the_partner(volume, tmp_path):
    lesion_labels = np.zeros(SHAPE, np.uint8)
    lesion_labels[2, 0, 7] = 1  # far from the partner's cord
    lesion_labels[3, 3, 3] = 1  # inside it
    lesion = LayerReview(
        result_layer(volume, lesion_labels, classes={1: "lesion"}), tmp_path / "autosave"
    )
    partner = LayerReview(result_layer(volume, classes={1: "sc"}), tmp_path / "autosave")
    lesion.cord_partner = lambda: partner
    lesion.refresh(full=True)
    assert np.flatnonzero(lesion.table.flags["lesion_outside_cord"]).tolist() == [2]
    assert lesion.summary()[1].voxels == 2
    assert lesion.edge_slabs(n=1).poor_fraction == 0.5
    assert lesion.edge_slabs().note == (
        "the poor run 2–2 is longer than 33% of the cord: review it slice by slice"
    )


# ------------------------------------------------------------------------- edits
def _one_voxel(z=0, y=0, x=0, value=1) -> Edit:
    return Edit((np.array([z]), np.array([y]), np.array([x])), np.array([value], np.uint8))


def test_a_tool_edit_is_one_undo_step_and_its_fact_follows_it(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.apply(_one_voxel(5, 7, 7), "interpolate") == 1
    assert state.tools_used == {"interpolate"} and state.edits.changed_voxels == 1
    layer.undo()
    state.refresh()
    assert state.tools_used == set() and state.edits.changed_voxels == 0
    layer.redo()
    state.refresh()
    assert state.tools_used == {"interpolate"} and state.edits.slices == (5,)
    # an edit that changes nothing is not a step and not in the record
    assert state.apply(Edit((np.array([], int),) * 3, np.array([], np.uint8)), "fill_holes") == 0
    assert state.tools_used == {"interpolate"}


def test_tools_are_recorded_by_name(volume, tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:5, 2:7, 2:7] = 1
    labels[1:5, 4, 4] = 0  # a tube along the cord: a hole on every slice, open in 3D
    labels[2:4] = 0  # slices 2 and 3 to interpolate
    labels[1, 0, 0] = 1  # a speck
    state = LayerReview(result_layer(volume, labels), tmp_path / "autosave")
    assert state.remove_small(1, 2.9) == 1  # the 1-voxel speck; the size as a whole number
    assert state.fill_holes(1, "3d") == 0  # open at both ends of the tube
    assert state.fill_holes(1) == 2  # enclosed on slices 1 and 4
    assert state.interpolate(1, 1, 4) == 2 * 25
    assert state.tools_used == {"remove_small", "fill_holes", "interpolate"}


def test_interpolation_uses_the_in_plane_voxel_size(tmp_path):
    """0.5 x 2 mm pixels: a shape halfway between a 9-pixel-wide bar and a dot is
    judged in mm, as the tools module does with that spacing."""
    from napari_spineseg.correction import interpolate_between

    path = tmp_path / "aniso.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[::-1], np.int16), np.diag([2.0, 0.5, 3.0, 1])), path)
    vol = load(path)
    labels = np.zeros(SHAPE, np.uint8)
    labels[0, 1:7, 1:7] = 1
    labels[4, 3:5, 3:5] = 1
    layer = result_layer(vol, labels)
    state = LayerReview(layer, tmp_path / "autosave")
    spacing = tuple(float(s) for s in layer.scale[1:])
    assert spacing[0] != spacing[1]
    expected = interpolate_between(labels, 1, 0, 4, spacing=spacing)
    isotropic = interpolate_between(labels, 1, 0, 4)
    assert expected.n_voxels != isotropic.n_voxels
    assert state.interpolate(1, 0, 4) == expected.n_voxels


def test_trim_clears_only_the_classes_asked(volume, tmp_path):
    labels = _cord()
    labels[1:5, 0, 0] = 2
    state = LayerReview(result_layer(volume, labels, classes={1: "sc", 2: "lesion"}), tmp_path)
    assert state.trim((1, 3), values=[2]) == 2
    assert (state.layer.data[1:3] == 1).sum() == 8


def test_trim_records_the_slab_as_given(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    assert state.trim((np.int64(3), 5)) == 8  # slices 3 and 4, 4 voxels each
    assert state.slabs_trimmed == [(3, 5)] and type(state.slabs_trimmed[0][0]) is int
    assert state.tools_used == {"trim"}
    assert state.trim((0, 1)) == 0  # nothing there: not recorded
    assert state.slabs_trimmed == [(3, 5)]


def test_a_refine_becomes_the_reference_of_its_slab(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    refined = np.zeros((3, 8, 8), np.int64)  # crop (2, 5): slices 2..4
    refined[:, 2:6, 2:6] = 1  # a larger cord
    change = state.merge(refined, (2, 5), (3, 5))
    assert change.edit.n_voxels == 2 * 12
    assert state.apply_refine(change, refined, (2, 5), (3, 5)) == 24
    assert state.slabs_refined == [(3, 5)] and state.tools_used == {"refine"}
    assert state.tracker.model_output.dtype == np.uint8
    np.testing.assert_array_equal(state.tracker.model_output[3:5], refined[1:3])
    assert state.refresh().changed_voxels == 0  # the refined prediction is the reference
    layer.undo()
    state.refresh()
    assert state.slabs_refined == [] and state.edits.changed_voxels == 0
    np.testing.assert_array_equal(state.tracker.model_output, _cord())


def test_a_refine_that_changes_nothing_still_sets_the_reference(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    refined = _cord()[1:5]
    change = state.merge(refined, (1, 5), (1, 5))
    assert state.apply_refine(change, refined, (1, 5), (1, 5)) == 0
    assert state.slabs_refined == [(1, 5)] and state.tools_used == set()


def test_merge_keeps_the_reviewers_edits_unless_overwriting(volume, tmp_path):
    labels = _cord()
    labels[3, 0, 0] = 1  # the reviewer's voxel
    state = LayerReview(result_layer(volume, labels, model_output=_cord()), tmp_path / "autosave")
    refined = np.zeros((1, 8, 8), np.uint8)
    kept = state.merge(refined, (3, 4), (3, 4))
    assert kept.merged[3, 0, 0] == 1 and kept.merged[3, 3, 3] == 0
    over = state.merge(refined, (3, 4), (3, 4), overwrite=True)
    assert over.merged[3, 0, 0] == 0


def test_restoring_a_recovery_is_one_recorded_step(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    recovered = _cord()
    recovered[0, 1, 1] = 1
    recovered[1, 3, 3] = 0
    assert state.restore_labels(recovered.astype(np.int64)) == 2
    assert layer.data.dtype == np.uint8
    np.testing.assert_array_equal(layer.data, recovered)
    assert state.tools_used == {"recovered"}
    with pytest.raises(LabelsError) as info:
        state.restore_labels(np.zeros((6, 8, 7), np.uint8))
    assert str(info.value) == "recovered labels (6, 8, 7) do not fit layer 'result' (6, 8, 8)"


# ---------------------------------------------------------------------- saving
def test_default_path_is_beside_the_image_with_the_tasks_suffix(volume, tmp_path):
    state = LayerReview(result_layer(volume, suffix="_sc_seg"), tmp_path / "autosave")
    assert state.default_path() == volume.path.parent / "sub-01_T2w_sc_seg.nii.gz"
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    assert state.default_path() == volume.path.parent / "sub-01_T2w_seg.nii.gz"


def test_a_mask_opened_from_disk_saves_over_itself(tmp_path):
    from napari.layers import Labels

    image = _image_file(tmp_path)
    mask = tmp_path / "sub-01_T2w_seg.nii.gz"
    vol = load(image)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[::-1], np.uint8), vol.affine), mask)
    data, kwargs, _ = volume_layer_data(load(mask), as_labels=True, classes={1: "sc"})
    state = LayerReview(Labels(data, **kwargs), tmp_path / "autosave")
    assert state.from_file and state.default_path() == mask
    # an image opened as labels is not a mask file: never saved over the image
    meta = {"spineseg": {"volume": vol, "role": "image", "source_path": str(image)}}
    state = LayerReview(Labels(np.zeros(SHAPE, np.uint8), metadata=meta), tmp_path / "autosave")
    assert not state.from_file and state.default_path() == tmp_path / "sub-01_T2w_seg.nii.gz"


def test_the_record_names_author_layer_task_and_classes(volume, tmp_path):
    state = LayerReview(result_layer(volume, classes={1: "sc", 2: "lesion"}), tmp_path / "a")
    state.apply(_one_voxel(0, 0, 0, 2), "interpolate")
    state.table.set_reviewed([4, 1])
    record = state.correction_record()
    assert record["Author"] == getpass.getuser()
    details = record["napari-spineseg"]
    assert details["Layer"] == "result" and details["Task"] == "seg_sc_contrast_agnostic"
    assert details["Classes"] == {"1": "sc", "2": "lesion"}
    assert details["VoxelsChanged"] == {"lesion": {"added": 1, "removed": 0}}
    assert details["ReviewedSlices"] == [1, 4] and details["ToolsUsed"] == ["interpolate"]
    assert state.correction_record("rater")["Author"] == "rater"
    no_run = LayerReview(result_layer(volume, run=None), tmp_path / "a")
    assert no_run.correction_record("r")["napari-spineseg"]["Task"] is None


def _entries(mask: Path) -> list[dict]:
    import json

    from napari_spineseg import sidecar

    return json.loads(sidecar.sidecar_path(mask).read_text(encoding="utf-8"))["GeneratedBy"]


@pytest.mark.parametrize(
    "touch, recorded",
    [
        (None, False),
        ("edit", True),
        ("trim", True),
        ("refine", True),
        ("review", True),
    ],
)
def test_an_untouched_result_keeps_the_models_entry_alone(volume, tmp_path, touch, recorded):
    provenance = {"task": "seg_sc", "version": "9.9"}
    layer = result_layer(volume, provenance=provenance)
    state = LayerReview(layer, tmp_path / "autosave")
    if touch == "edit":
        state.apply(_one_voxel(), "interpolate")
    elif touch == "trim":
        state.trim((1, 2))
        layer.data_setitem(
            (np.array([1] * 4), np.array([3, 3, 4, 4]), np.array([3, 4, 3, 4])),
            np.ones(4, np.uint8),
        )  # painted back: no voxel changed, but a slab was trimmed
    elif touch == "refine":
        refined = _cord()[1:2]
        state.apply_refine(state.merge(refined, (1, 2), (1, 2)), refined, (1, 2), (1, 2))
    elif touch == "review":
        state.table.set_reviewed(2)
    written = state.save(tmp_path / "out_seg.nii.gz", author="rater")
    entries = _entries(written)
    assert (entries[0]["Name"], entries[0]["Task"]) == ("napari-spineseg", "seg_sc")
    assert len(entries) == (2 if recorded else 1)
    assert state.saved_paths == [written] and not state.dirty


def test_a_mask_without_any_entry_gets_the_record(volume, tmp_path):
    state = LayerReview(result_layer(volume, run=None), tmp_path / "autosave")
    written = state.save(tmp_path / "drawn_seg.nii.gz", author="rater")
    assert [e.get("Author") for e in _entries(written)] == ["rater"]


def test_a_save_discards_the_recovery_file(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    state.apply(_one_voxel(), "interpolate")
    snapshot = state.autosave_snapshot(force=True)
    recovery = state.autosave_write(*snapshot)
    assert recovery.exists() and len(state.recoveries()) == 1
    state.save(tmp_path / "out_seg.nii.gz")
    assert not recovery.exists() and state.recoveries() == []


def test_confirmation_is_asked_before_replacing_a_file_of_another_session(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    target = tmp_path / "out_seg.nii.gz"
    assert state.needs_confirmation(target) is None  # nothing there
    target.write_bytes(b"someone's mask")
    assert state.needs_confirmation(target) == target
    assert state.needs_confirmation() is None  # the default path does not exist
    state.saved_paths.append(target)
    assert state.needs_confirmation(target) is None  # this session wrote it


# -------------------------------------------------------------------- autosave
def test_autosave_snapshot_only_when_dirty_and_due(volume, tmp_path):
    layer = result_layer(volume, suffix="_sc_seg")
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.autosave_snapshot(force=True) is None  # nothing unsaved
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), np.array([1], np.uint8))
    state.note_paint()
    assert state.autosave_snapshot() is None  # one edit: not due yet
    labels, meta = state.autosave_snapshot(force=True)
    np.testing.assert_array_equal(labels, layer.data)
    assert labels is not layer.data and meta == {"suffix": "_sc_seg"}
    for _ in range(9):
        state.note_paint()
    assert state.autosave_snapshot() is not None  # every 10 edits
    no_suffix = LayerReview(result_layer(volume, name="other"), tmp_path / "autosave")
    no_suffix.apply(_one_voxel(), "interpolate")
    assert no_suffix.autosave_snapshot(force=True)[1] == {"suffix": ""}


def test_recoveries_are_those_of_this_layer_and_shape(volume, tmp_path):
    cache = tmp_path / "autosave"
    state = LayerReview(result_layer(volume), cache)
    other = LayerReview(result_layer(volume, name="other"), cache)
    state.apply(_one_voxel(), "interpolate")
    other.apply(_one_voxel(), "interpolate")
    state.autosave_write(*state.autosave_snapshot(force=True))
    other.autosave_write(*other.autosave_snapshot(force=True))
    assert [e.layer_name for e in state.recoveries()] == ["result"]
    wrong_shape = np.zeros((5, 8, 8), np.uint8)
    state.autosaver.save(wrong_shape, {"suffix": ""})
    assert state.recoveries() == []


# --------------------------------------------------------- facts and the history
def _setitem(layer, z, y=0, x=0, value=1):
    idx = (np.array([z]), np.array([y]), np.array([x]))
    layer.data_setitem(idx, np.array([value], np.uint8))


def test_a_fact_whose_step_fell_off_a_full_undo_stack_is_permanent(volume, tmp_path):
    layer = result_layer(volume)
    layer._undo_history = collections.deque(maxlen=3)
    state = LayerReview(layer, tmp_path / "autosave")
    state.apply(_one_voxel(5, 7, 7), "interpolate")
    for z in (0, 1, 2, 3):  # four more steps: the tool's step leaves the stack
        _setitem(layer, z, 7, 0)
    state.refresh()
    assert state.tools_used == {"interpolate"}
    assert [f.atom for f in state.facts if f.value == "interpolate"] == [None]
    for _ in range(3):
        layer.undo()
    state.refresh()
    assert state.tools_used == {"interpolate"}  # cannot be undone any more


def test_an_undone_fact_is_gone_once_a_new_edit_clears_the_redo_stack(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    state.apply(_one_voxel(5, 7, 7), "interpolate")
    layer.undo()
    _setitem(layer, 0)  # clears napari's redo stack before the review looked
    state.refresh()
    assert state.tools_used == set()
    state.apply(_one_voxel(4, 7, 7), "remove_small")
    layer.undo()
    state.refresh()  # seen in the redo stack ...
    _setitem(layer, 1)  # ... then cleared
    state.refresh()
    assert state.tools_used == set()
    assert all(f.atom is None for f in state.facts)


def test_an_undone_refine_stops_being_the_reference_even_when_its_redo_is_cleared(
    volume, tmp_path
):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    refined = np.ones((1, 8, 8), np.uint8)
    state.apply_refine(state.merge(refined, (2, 3), (2, 3)), refined, (2, 3), (2, 3))
    np.testing.assert_array_equal(state.tracker.model_output[2], 1)
    layer.undo()
    _setitem(layer, 0)
    state.refresh()
    np.testing.assert_array_equal(state.tracker.model_output, _cord())
    assert state.edits.changed_voxels == 1 and state.slabs_refined == []


def test_every_slice_changed_between_two_refreshes_is_compared(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    _setitem(layer, 0)
    _setitem(layer, 5, 7, 7)
    assert state.refresh().slices == (0, 5)
    layer.undo()
    layer.undo()
    assert state.refresh().changed_voxels == 0
    layer.redo()
    assert state.refresh().slices == (0,)


def test_a_history_step_of_unknown_form_makes_a_full_comparison(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    layer.data[5, 7, 7] = 1  # changed in place: no history of its own
    layer._undo_history.append([object()])  # a step whose slices cannot be read
    assert state.refresh().slices == (5,)


def test_the_review_of_a_layer_without_napari_history_compares_in_full(volume, tmp_path):
    class Plain:
        """A duck-typed layer: data, scale, metadata and data_setitem only."""

        def __init__(self, layer):
            self.name, self.data, self.scale = "plain", layer.data, layer.scale
            self.metadata = layer.metadata

        def data_setitem(self, indices, values):
            self.data[indices] = values

    layer = Plain(result_layer(volume))
    state = LayerReview(layer, tmp_path / "autosave")
    assert state.history_moved() is True
    layer.data[2, 0, 0] = 1  # no event at all: still seen
    assert state.dirty
    layer.data[2, 0, 0] = 0
    assert not state.dirty
    layer.data[3, 0, 0] = 1
    state.note_paint()
    assert state.dirty and state.refresh().slices == (3,)
    assert state.apply(_one_voxel(4, 0, 0), "interpolate") == 1
    assert state.edits.slices == (3, 4) and state.tools_used == {"interpolate"}


def test_a_refine_slab_inside_its_crop_sets_only_the_slab(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    refined = np.ones((4, 8, 8), np.uint8)  # crop (1, 5)
    change = state.merge(refined, (1, 5), (2, 3))
    state.apply_refine(change, refined, (1, 5), (2, 3))
    reference = state.tracker.model_output
    assert (reference[2] == 1).all()
    np.testing.assert_array_equal(reference[[0, 1, 3, 4, 5]], _cord()[[0, 1, 3, 4, 5]])


def test_review_marks_survive_every_refresh(volume, tmp_path):
    p = np.where(_cord() == 1, np.float32(0.9), np.float32(0.0))
    state = LayerReview(result_layer(volume, probabilities={1: p}), tmp_path / "autosave")
    state.table.set_reviewed([2, 3])
    state.apply(_one_voxel(0, 0, 0), "interpolate")
    assert state.table.reviewed_slices() == [2, 3]
    assert state.table.confidence[1][2] == pytest.approx(0.9)  # the model's maps are used
    assert state.correction_record("r")["napari-spineseg"]["ReviewedSlices"] == [2, 3]


def test_edge_slabs_look_three_slices_in_by_default(volume, tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[0:6, 3:5, 3:5] = 1
    labels[3, 0, 0] = 1  # a poor slice, the 4th of the cord
    state = LayerReview(result_layer(volume, labels), tmp_path / "autosave")
    assert state.edge_slabs().top is None
    assert state.edge_slabs(n=4).top == (3, 4)


def test_the_record_compares_the_whole_array(volume, tmp_path):
    """A change napari did not record (an in-place write) is still in the record."""
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    layer.data[5, 0, 0] = 1
    details = state.correction_record("r")["napari-spineseg"]
    assert details["VoxelsChangedTotal"] == 1 and details["SlicesEdited"] == [5]


def test_a_save_handler_gets_the_path_and_author(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    calls = []
    state.save_handler = lambda path, author: calls.append((path, author)) or tmp_path
    assert state.save("x.nii.gz", "rater") == tmp_path
    assert calls == [("x.nii.gz", "rater")]


def test_a_result_is_never_saved_over_its_image(volume, tmp_path):
    state = LayerReview(result_layer(volume), tmp_path / "autosave")
    before = volume.path.read_bytes()
    with pytest.raises(SaveRefusedError):
        state.save(volume.path)
    assert volume.path.read_bytes() == before


def test_a_permanent_fact_does_not_stop_the_others_from_following_undo(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    refined = _cord()[1:5]  # a refine that changes nothing: its fact is permanent
    state.apply_refine(state.merge(refined, (1, 5), (1, 5)), refined, (1, 5), (1, 5))
    state.apply(_one_voxel(), "interpolate")
    layer.undo()
    state.refresh()
    assert state.tools_used == set() and state.slabs_refined == [(1, 5)]


def test_brush_strokes_on_slices_past_the_row_count_are_compared(tmp_path):
    """napari's paint steps name their slices by a bounding box along axis 0."""
    path = tmp_path / "tall.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 12), np.int16), np.eye(4)), path)
    vol = load(path)
    labels = np.zeros(vol.geometry.display_shape, np.uint8)
    assert labels.shape[0] > labels.shape[1]
    layer = result_layer(vol, labels)
    state = LayerReview(layer, tmp_path / "autosave")
    layer.brush_size = 1
    z = labels.shape[0] - 2
    layer.paint((z, 1, 1), 1)
    assert state.refresh().slices == (z,)
    assert state.tools_used == {"napari brush"}


def test_a_paint_after_an_assignment_keeps_the_full_comparison(volume, tmp_path):
    layer = result_layer(volume)
    state = LayerReview(layer, tmp_path / "autosave")
    new = _cord()
    new[5, 7, 7] = 1
    layer.data = new  # an assignment (a recovery, a script) ...
    state.note_reload()
    _setitem(layer, 0)  # ... then a paint, before any refresh
    state.note_paint()
    assert state.refresh().slices == (0, 5)


def test_an_unresolvable_path_is_never_the_same_file(monkeypatch):
    def refuse(self, strict=False):
        raise OSError(40, "Too many levels of symbolic links")

    monkeypatch.setattr(Path, "resolve", refuse)
    assert _same_file("a.nii.gz", "a.nii.gz") is False


def test_an_undone_fact_stays_undone_when_a_full_stack_drops_its_redo(volume, tmp_path):
    layer = result_layer(volume)
    layer._undo_history = collections.deque(maxlen=3)
    state = LayerReview(layer, tmp_path / "autosave")
    for z in (0, 1, 2):
        _setitem(layer, z, 7, 0)
    state.apply(_one_voxel(5, 7, 7), "interpolate")
    layer.undo()
    state.refresh()  # the tool's step seen in the redo stack
    _setitem(layer, 3, 7, 0)  # clears the redo stack; the undo stack is full again
    state.refresh()
    assert state.tools_used == set()


def test_a_recovery_keeps_the_snapshots_metadata(volume, tmp_path):
    state = LayerReview(result_layer(volume, suffix="_sc_seg"), tmp_path / "autosave")
    state.apply(_one_voxel(), "interpolate")
    state.autosave_write(*state.autosave_snapshot(force=True))
    assert state.recoveries()[0].meta["suffix"] == "_sc_seg"


def test_recoveries_with_autosave_disabled_look_in_the_default_folder(
    volume, tmp_path, monkeypatch
):
    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "default"))
    state = LayerReview(result_layer(volume), volume.path.parent)  # refused: disabled
    assert state.autosaver is None and state.recoveries() == []


def test_a_result_is_never_saved_over_its_source_even_a_mask(tmp_path):
    """A model run on a mask file (a label map): its result never replaces that file;
    only a mask opened for correction is saved over itself."""
    path = tmp_path / "sub-01_T2w_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[::-1], np.uint8), np.eye(4)), path)
    source = load(path)
    assert source.looks_like_labels()
    state = LayerReview(result_layer(source), tmp_path / "autosave")
    before = path.read_bytes()
    with pytest.raises(SaveRefusedError, match="is the source image"):
        state.save(path)
    assert path.read_bytes() == before
