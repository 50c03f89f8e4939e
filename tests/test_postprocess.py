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
