"""``io.geometry.crop_display``: a slab of display slices as a NIfTI image in the same world.

Crop-and-refine runs the model on this crop and pastes its labels back on display slices
``[start, stop)`` without any file-axis bookkeeping, so the crop must hold exactly those
display voxels and put each at the same scanner position as in the source.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg.io import from_nifti
from napari_spineseg.io.geometry import crop_display


def _grid_affine(axcodes: str) -> np.ndarray:
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    affine = nib.orientations.inv_ornt_aff(ornt, (5, 6, 7))
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-12.5, 30.25, 7.0]
    return affine


@pytest.mark.parametrize("axcodes", ["RAS", "PSR", "ILA"])
def test_the_crop_holds_the_display_slab_at_the_same_world_positions(axcodes):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    volume = from_nifti(nib.Nifti1Image(data, _grid_affine(axcodes)))
    display = volume.geometry.to_display(data)
    start, stop = 2, 5
    crop = crop_display(volume, start, stop)

    np.testing.assert_array_equal(np.asanyarray(crop.dataobj), display[start:stop])
    # every crop voxel sits where its display voxel sits in the source
    full = volume.geometry.display_affine
    for i, j, k in itertools.product(range(stop - start), (0, 5), (0, 3)):
        np.testing.assert_allclose(
            crop.affine @ [i, j, k, 1], full @ [i + start, j, k, 1], atol=1e-9
        )
    assert int(crop.header["qform_code"]) == int(crop.header["sform_code"]) == 1
    np.testing.assert_allclose(crop.get_qform(), crop.affine, atol=1e-6)


def test_a_4d_series_is_averaged_over_volumes_first():
    base = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    series = np.stack([base, 3 * base], axis=-1)
    volume = from_nifti(nib.Nifti1Image(series, _grid_affine("LPI")))
    crop = crop_display(volume, 1, 3)
    expected = volume.geometry.to_display(2 * base)[1:3]
    np.testing.assert_allclose(np.asanyarray(crop.dataobj), expected, rtol=1e-6)
