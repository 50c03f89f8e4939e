"""The synthetic cord phantom: deterministic, world-exact in every orientation, sane labels."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg.phantom import PHANTOM_LABELS, cord_phantom


def _all_axcodes() -> list[tuple[str, str, str]]:
    pairs = (("R", "L"), ("A", "P"), ("S", "I"))
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            out.append(tuple(pairs[p][s] for p, s in zip(perm, signs)))
    return out


def _world_of_labels(img: nib.Nifti1Image, value: int) -> np.ndarray:
    """World (scanner mm) coordinates of every voxel with ``value``, sorted for comparison."""
    ijk = np.argwhere(np.asarray(img.dataobj) == value)
    xyz = nib.affines.apply_affine(img.affine, ijk)
    return xyz[np.lexsort(xyz.T[::-1])]


def test_same_seed_same_images_other_seed_differs():
    a_img, a_lab = cord_phantom(seed=3, lesion=True)
    b_img, b_lab = cord_phantom(seed=3, lesion=True)
    c_img, _ = cord_phantom(seed=4, lesion=True)
    assert np.array_equal(np.asarray(a_img.dataobj), np.asarray(b_img.dataobj))
    assert np.array_equal(np.asarray(a_lab.dataobj), np.asarray(b_lab.dataobj))
    assert np.array_equal(a_img.affine, b_img.affine)
    assert not np.array_equal(np.asarray(a_img.dataobj), np.asarray(c_img.dataobj))


def test_all_48_orientations_keep_world_positions():
    ref_img, ref_lab = cord_phantom(seed=1, lesion=True)
    ref_world = {v: _world_of_labels(ref_lab, v) for v in (1, 2, 3)}
    ref_data = np.asarray(ref_img.dataobj)
    # A tagged voxel: the brightest image voxel, found again by its world position.
    tag = np.unravel_index(np.argmax(ref_data), ref_data.shape)
    tag_world = nib.affines.apply_affine(ref_img.affine, tag)
    codes = _all_axcodes()
    assert len(set(codes)) == 48
    for axcodes in codes:
        img, lab = cord_phantom(seed=1, lesion=True, axcodes=axcodes)
        assert nib.aff2axcodes(img.affine) == axcodes
        assert np.array_equal(img.affine, lab.affine)
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
        ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), tag_world)
        ijk = tuple(int(i) for i in np.rint(ijk))
        assert np.allclose(nib.affines.apply_affine(img.affine, ijk), tag_world)
        assert np.asarray(img.dataobj)[ijk] == ref_data[tag]
        for v, xyz in ref_world.items():
            np.testing.assert_allclose(_world_of_labels(lab, v), xyz, atol=1e-4)


def test_reoriented_shape_is_a_permutation_of_the_ras_shape():
    img, lab = cord_phantom(shape=(40, 50, 12), zooms=(0.5, 0.6, 3.0), axcodes="PSR")
    assert img.shape == lab.shape == (50, 12, 40)
    np.testing.assert_allclose(img.header.get_zooms(), (0.6, 3.0, 0.5))


def test_labels_and_intensities_where_expected():
    img, lab = cord_phantom(
        seed=0, gm=True, lesion=True, rootlets=True, shape=(96, 96, 32), zooms=(0.5, 0.5, 2.0)
    )
    data = np.asarray(img.dataobj).astype(float)
    labels = np.asarray(lab.dataobj)
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert set(np.unique(labels)) == {0, *PHANTOM_LABELS.values()}
    # Every axial slice holds the cord, surrounded by CSF; the border of the field is background.
    for z in range(labels.shape[2]):
        sl = labels[:, :, z]
        assert np.isin(sl, [1, 3, 4]).any() and (sl == 2).any()
    border = np.concatenate(
        [labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()]
    )
    assert not border.any()
    # CSF is outside the cord: its centroid is the cord's, but no CSF voxel sits at the centre.
    cz = labels.shape[2] // 2
    cord_xy = np.argwhere(np.isin(labels[:, :, cz], [1, 3, 4])).mean(0)
    csf_xy = np.argwhere(labels[:, :, cz] == 2).mean(0)
    assert np.linalg.norm(cord_xy - csf_xy) < 2.0
    assert labels[int(round(cord_xy[0])), int(round(cord_xy[1])), cz] in (1, 3, 4)
    # T2w-like contrast: CSF > lesion > GM > WM > background tissue; rootlets darker than CSF.
    mean = {v: data[labels == v].mean() for v in np.unique(labels)}
    assert mean[2] > mean[3] > mean[4] > mean[1] > mean[0]
    assert mean[12] < mean[13] < mean[14] < mean[2]
    # Rootlets sit at three distinct heights, lvl2 most superior (largest RAS z).
    heights = [np.argwhere(labels == v)[:, 2].mean() for v in (12, 13, 14)]
    assert heights[0] > heights[1] > heights[2]


def test_structures_select_label_values():
    _, lab = cord_phantom(structures=("cord",))
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1}
    with pytest.raises(ValueError, match="unknown structure"):
        cord_phantom(structures=("liver",))
