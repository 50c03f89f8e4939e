"""SCT post-processing with exact voxel expectations (order, connectivity, units)."""

import numpy as np
import pytest

from napari_spineseg import postprocess as pp
from napari_spineseg.errors import SpinesegError


def _two_blobs():
    m = np.zeros((10, 10, 10), bool)
    m[1:4, 1:4, 1:4] = True  # 27 voxels
    m[6:8, 6:8, 6:8] = True  # 8 voxels
    return m


def test_binarize_is_strictly_greater():
    data = np.array([0.2, 0.5, 0.50001, 0.9])
    assert pp.binarize(data, 0.5).tolist() == [False, False, True, True]


def test_keep_largest_uses_face_connectivity():
    m = _two_blobs()
    out = pp.keep_largest(m)
    assert out.sum() == 27 and out[1:4, 1:4, 1:4].all()
    # two voxels touching only by a corner are two objects (6-connectivity)
    c = np.zeros((3, 3, 3), bool)
    c[0, 0, 0] = c[1, 1, 1] = c[2, 2, 2] = True
    c[2, 2, 1] = True  # makes the (2,2,x) pair the largest object
    assert pp.keep_largest(c).sum() == 2


def test_fill_holes_fills_enclosed_cavity_only():
    m = np.zeros((7, 7, 7), bool)
    m[1:6, 1:6, 1:6] = True
    m[3, 3, 3] = False  # enclosed hole
    m[1, 3, 3] = False  # a dent on the surface: not a hole
    out = pp.fill_holes(m)
    assert out[3, 3, 3] and not out[1, 3, 3]
    assert out.sum() == m.sum() + 1


def test_remove_small_threshold_is_exclusive_and_18_connected():
    m = _two_blobs()
    assert pp.remove_small(m, 8).sum() == 35  # an object of exactly 8 voxels is kept
    assert pp.remove_small(m, 9).sum() == 27
    e = np.zeros((4, 4, 4), bool)
    e[0, 0, 0] = e[1, 1, 0] = True  # edge neighbours: one object with 18-connectivity
    assert pp.remove_small(e, 2).sum() == 2


def test_mm3_units_convert_with_voxel_volume():
    (size,) = pp.parse_remove_small("5mm3")
    assert size.voxels((0.5, 0.5, 2.0)) == 10  # 5 / 0.5 mm3
    assert pp.parse_remove_small(["10", "20", "10vox"]) == [
        pp.MinSize(10, "vox"),
        pp.MinSize(20, "vox"),
        pp.MinSize(10, "vox"),
    ]
    with pytest.raises(SpinesegError, match="cannot read"):
        pp.parse_remove_small("ten")
    with pytest.raises(SpinesegError, match="one unit"):
        pp.parse_remove_small(["3vox", "5mm3"])


def test_sct_order_largest_then_fill_then_remove_small():
    m = np.zeros((12, 12, 12), bool)
    m[1:6, 1:6, 1:6] = True
    m[3, 3, 3] = False  # hole in the big object
    m[8:10, 8:10, 8:10] = True  # small object
    out = pp.postprocess_binary(
        m, zooms=(1, 1, 1), largest=True, fill=True, min_size=pp.MinSize(200)
    )
    # largest keeps 124 voxels, fill adds the hole -> 125, which is < 200: removed
    assert out.sum() == 0
    out = pp.postprocess_binary(m, zooms=(1, 1, 1), largest=True, fill=True)
    assert out.sum() == 125 and out[3, 3, 3] and not out[8:10, 8:10, 8:10].any()


def test_multilabel_per_class_and_fill_only_background():
    lab = np.zeros((9, 9, 9), np.uint8)
    lab[1:4, 1:4, 1:4] = 2
    lab[6, 6, 6] = 2  # stray voxel of class 2
    lab[5:8, 0:3, 0:3] = 3
    lab[6, 1, 1] = 2  # a class-2 voxel inside class 3: not a hole to fill with 3
    out = pp.postprocess_multilabel(lab, zooms=(1, 1, 1), largest=True, fill=True)
    assert (out == 2).sum() == 27 and out[6, 6, 6] == 0
    assert out[6, 1, 1] == 0  # removed by class 2's keep-largest, not filled by class 3
    assert (out == 3).sum() == 26


# ----------------------------------------------------------------------------- exact edges
# Each case below pins a rule at the voxel (or the character) where a one-line change of
# the rule would change what the user gets (found by the mutation run, benchmarks/README.md).


def test_min_size_text_and_mm3_on_a_4d_scan():
    assert str(pp.MinSize(10, "vox")) == "10vox"  # shown in notes: no "10.0vox"
    assert str(pp.MinSize(2.5, "mm3")) == "2.5mm3"
    # a 4D scan's zooms carry the time step: the voxel volume is the first three only
    assert pp.MinSize(8, "mm3").voxels((1.0, 1.0, 2.0, 3.0)) == 4


def test_parse_remove_small_units_and_full_messages():
    assert pp.parse_remove_small("10") == [pp.MinSize(10, "vox")]
    # the unit written once (SCT writes it on the last value) applies to every value
    assert pp.parse_remove_small(["10", "5mm3"]) == [pp.MinSize(10, "mm3"), pp.MinSize(5, "mm3")]
    with pytest.raises(SpinesegError) as err:
        pp.parse_remove_small("ten")
    assert str(err.value) == (
        "-remove-small: cannot read 'ten'; write a number with an optional unit, "
        "e.g. 10vox or 5mm3 (one value per class, like SCT)"
    )
    with pytest.raises(SpinesegError) as err:
        pp.parse_remove_small(["3vox", "5mm3"])
    assert str(err.value) == "-remove-small: use one unit (vox or mm3) for all values"


def test_sct_reading_statuses_and_reasons():
    # one value, one class: SCT applies it (the default is one class)
    assert pp.sct_reading(["10vox"], ivadomed=True) == pp.SctReading(
        "applies", (pp.MinSize(10, "vox"),)
    )
    assert pp.sct_reading(["10"], ivadomed=True) == pp.SctReading(
        "ignored", reason="its last value has no unit (vox or mm3), so ivadomed skips it"
    )
    assert pp.sct_reading(["5mm3", "10"], ivadomed=False) == pp.SctReading(
        "refused",
        reason="int() cannot read '5mm3' once the unit 'vox' of the last value is removed",
    )
    assert pp.sct_reading(["1.5vox"], ivadomed=False) == pp.SctReading(
        "refused",
        reason="int() cannot read '1.5' once the unit 'vox' of the last value is removed",
    )
    assert pp.sct_reading(["10", "20"], ivadomed=False) == pp.SctReading(
        "refused", reason="it takes exactly 1 value(s), one for all output files; got 2"
    )
    assert pp.sct_reading(["10vox"], ivadomed=True, n_classes=2) == pp.SctReading(
        "refused", reason="it takes exactly 2 value(s), one per class (2); got 1"
    )


def test_resolve_remove_small_notes_and_errors_in_full():
    files = ["_sc_seg", "_lesion_seg"]
    # without -sct-compat a command SCT refuses is read our way, with a note (no error)
    sizes, notes = pp.resolve_remove_small(["10", "20"], files, ivadomed=False)
    assert sizes == [pp.MinSize(10), pp.MinSize(20)]
    assert notes == [
        "-remove-small 10 20 read as _sc_seg 10vox, _lesion_seg 20vox (sct_deepseg refuses "
        "it: it takes exactly 1 value(s), one for all output files; got 2)"
    ]
    sizes, notes = pp.resolve_remove_small(["3", "4"], ["sc", "lesion"], ivadomed=True)
    assert sizes is None
    assert notes == [
        "-remove-small 3 4 was ignored, as sct_deepseg ignores it (its last value has no unit "
        "(vox or mm3), so ivadomed skips it); the model's default applies. Write the unit on "
        "the last value (e.g. `3 4vox`) to use these sizes"
    ]
    with pytest.raises(SpinesegError) as err:
        pp.resolve_remove_small(["10", "20"], files, ivadomed=False, sct_compat=True)
    assert str(err.value) == (
        "-remove-small 10 20: sct_deepseg refuses this (it takes exactly 1 value(s), one for "
        "all output files; got 2), so there is no SCT result to reproduce; leave out "
        "-sct-compat to use our reading (one value for all, or one per output file: "
        "_sc_seg, _lesion_seg)"
    )
    with pytest.raises(SpinesegError) as err:
        pp.resolve_remove_small(
            ["1", "2", "3vox"], ["sc", "lesion"], ivadomed=True, sct_compat=True
        )
    assert str(err.value).endswith(
        "leave out -sct-compat to use our reading (one value for all, or one per class: "
        "sc, lesion)"
    )
    with pytest.raises(SpinesegError) as err:
        pp.resolve_remove_small(["1vox", "2", "3vox"], ["sc", "lesion"], ivadomed=True)
    assert str(err.value) == (
        "-remove-small 1vox 2 3vox: give one value for all or one per class (2: sc, lesion); got 3"
    )
    with pytest.raises(SpinesegError) as err:
        pp.resolve_remove_small(["1", "2", "3"], files, ivadomed=False)
    assert str(err.value).startswith(
        "-remove-small 1 2 3: give one value for all or one per output file (2: "
        "_sc_seg, _lesion_seg); got 3"
    )


def test_mask_tools_return_bool_for_label_valued_input():
    # callers invert the result (`out[~keep] = 0`): a uint8 result would invert to 254/255
    lab = np.zeros((5, 5, 5), np.uint8)
    lab[1:3, 1:3, 1:3] = 2
    for out in (pp.keep_largest(lab), pp.remove_small(lab, 1), pp.remove_small(lab, 50)):
        assert out.dtype == bool
    assert pp.keep_largest(lab).sum() == 8 and pp.remove_small(lab, 50).sum() == 0
    assert pp.remove_small(np.zeros((3, 3, 3), np.uint8), 5).dtype == bool
    assert pp.postprocess_binary(lab == 2, zooms=(1, 1, 1)).dtype == bool
    assert pp.postprocess_binary(lab.astype(np.uint8) // 2, zooms=(1, 1, 1)).dtype == bool


def test_fill_holes_background_is_26_connected_like_sct():
    # a cavity whose only way out is through edge-touching (diagonal) background voxels is
    # open for SCT's 3x3x3 structure, so it is *not* filled; scipy's default would fill it
    m = np.zeros((7, 7, 7), bool)
    m[1:6, 1:6, 1:6] = True
    m[3, 3, 3] = m[2, 2, 3] = m[1, 1, 3] = False
    out = pp.fill_holes(m)
    assert not out[3, 3, 3] and not out[2, 2, 3] and (out == m).all()


def test_remove_small_corner_neighbours_are_separate_objects():
    c = np.zeros((3, 3, 3), bool)
    c[0, 0, 0] = c[1, 1, 1] = True  # corner contact only: not joined with 18-connectivity
    assert pp.remove_small(c, 2).sum() == 0


def test_foreground_defaults_do_nothing_and_keep_dtype():
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[0:3, 0:3, 0:3] = 1
    lab[1, 1, 1] = 0  # a hole: filled only if asked
    lab[5:7, 5:7, 5:7] = 1  # a second object: removed only if asked
    out = pp.postprocess_foreground(lab, zooms=(1, 1, 1))
    assert out.dtype == np.uint8 and (out == lab).all()
    assert (pp.postprocess_binary(lab, zooms=(1, 1, 1)) == lab.astype(bool)).all()
    assert (pp.postprocess_multilabel(lab, zooms=(1, 1, 1)) == lab).all()
    hole = np.zeros((5, 5, 5), np.uint8)
    hole[1:4, 1:4, 1:4] = 1
    hole[2, 2, 2] = 0
    filled = pp.postprocess_foreground(hole, zooms=(1, 1, 1), fill=True)
    assert filled.dtype == np.uint8 and filled[2, 2, 2] == 1 and filled.sum() == 27


def test_foreground_refuses_to_fill_a_label_map_with_full_message():
    lab = np.zeros((4, 4, 12), np.uint8)
    lab[1, 1, :10] = np.arange(1, 11)  # ten labels: the message lists the first eight
    with pytest.raises(SpinesegError) as err:
        pp.postprocess_foreground(lab, zooms=(1, 1, 1), fill=True)
    assert str(err.value) == (
        "the output: sct_deepseg cannot fill holes in a multi-label map (its fill_holes "
        "asserts a binary input; values here: [1, 2, 3, 4, 5, 6, 7, 8]); add -thr to "
        "binarise first, as SCT's message says, or leave out -sct-compat to fill each class"
    )


def test_binary_remove_small_in_mm3_uses_the_zooms():
    m = _two_blobs()  # 27 and 8 voxels
    # 10 mm3 at 0.5 mm3 per voxel is 20 voxels: only the 8-voxel object goes
    out = pp.postprocess_binary(m, zooms=(0.5, 1.0, 1.0), min_size=pp.MinSize(10, "mm3"))
    assert out.sum() == 27 and not out[6:8, 6:8, 6:8].any()


def test_multilabel_class_one_and_per_class_sizes():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:3, 0:3, 0:3] = 1  # class 1: 27 + 1 voxels
    lab[9, 9, 9] = 1
    lab[5:7, 0:2, 0:2] = 2  # class 2: 8 + 8 voxels, two objects
    lab[5:7, 5:7, 5:7] = 2
    lab[0:2, 5:7, 0:3] = 3  # class 3: 12 voxels
    out = pp.postprocess_multilabel(lab, zooms=(1, 1, 1), largest=True)
    assert (out == 1).sum() == 27 and out[9, 9, 9] == 0  # class 1 is a class like any
    # a size for class 3 only: 6.5 mm3 at 0.5 mm3 per voxel is 13 voxels
    sizes = {3: pp.MinSize(6.5, "mm3")}
    out = pp.postprocess_multilabel(lab, zooms=(0.5, 1, 1), min_sizes=sizes)
    assert (out == 3).sum() == 0  # 12 voxels < 13 voxels
    assert (out == 2).sum() == 16 and (out == 1).sum() == 28  # no size, no largest: kept
    # a size alone does not keep only the largest object: both 8-voxel objects stay
    out = pp.postprocess_multilabel(lab, zooms=(1, 1, 1), min_sizes={2: pp.MinSize(8)})
    assert (out == 2).sum() == 16
    sizes = {2: pp.MinSize(9), 3: pp.MinSize(12)}
    out = pp.postprocess_multilabel(lab, zooms=(1, 1, 1), min_sizes=sizes)
    assert (out == 2).sum() == 0 and (out == 3).sum() == 12 and (out == 1).sum() == 28


def test_multilabel_fill_takes_background_into_the_class():
    lab = np.zeros((7, 7, 7), np.uint8)
    lab[1:6, 1:6, 1:6] = 2
    lab[3, 3, 3] = 0  # a background hole inside class 2
    out = pp.postprocess_multilabel(lab, zooms=(1, 1, 1), fill=True)
    assert out[3, 3, 3] == 2 and (out == 2).sum() == 125
