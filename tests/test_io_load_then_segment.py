"""Whatever loads segments and saves: the loader's promise to the models and the writer.

Every odd-but-accepted file of the bad-input matrix (``nifti_factory.LOADED``) goes
through the shipped demo model (``api.segment``) and ``api.save``; the mask must reload
with the source's geometry bit for bit. Files the model cannot use (a grid that resamples
to nothing) are refused with a :class:`TaskError` that says why, never a raw exception.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg import api
from napari_spineseg.demo import demo_model_folder
from napari_spineseg.errors import GeometryWarning, TaskError
from napari_spineseg.io import load, save_labels
from napari_spineseg.io.volume import read_nifti
from napari_spineseg.io.writer import GEOMETRY_FIELDS

#: Accepted files that no model can segment: refused at segmentation time, with the reason.
TOO_SMALL_FOR_THE_MODEL = {"voxels of 0.5 µm": "would become"}


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def _bits(header, name: str) -> bytes:
    """A header field's bit pattern in native byte order (NaN == NaN, -0 != 0)."""
    value = np.asarray(header[name])
    return value.astype(value.dtype.newbyteorder("=")).tobytes()


def assert_same_geometry(mask_header, source_header) -> None:
    for name in (*GEOMETRY_FIELDS, "pixdim"):
        a, b = np.asarray(mask_header[name]), np.asarray(source_header[name])
        if name == "pixdim":
            a, b = a[:4], b[:4]
        assert (
            a.astype(a.dtype.newbyteorder("=")).tobytes()
            == b.astype(b.dtype.newbyteorder("=")).tobytes()
        ), name


def _segment(volume):
    return api.segment(volume, model=demo_model_folder(), trust=True, device="cpu")


@pytest.mark.parametrize("case", list(fx.LOADED))
def test_every_accepted_file_segments_and_saves_on_its_grid(case, tmp_path):
    path, _ = fx.LOADED[case][0](tmp_path)
    volume = _load(path)
    if case in TOO_SMALL_FOR_THE_MODEL:
        with pytest.raises(TaskError, match=TOO_SMALL_FOR_THE_MODEL[case]) as info:
            _segment(volume)
        assert str(info.value).startswith(f"{path}: the model resamples images to ")
        return
    result = _segment(volume)
    written = api.save(result, out=tmp_path / "out" / "mask_seg.nii.gz")
    assert written
    for out in written:
        mask = _load(out)
        labels = next(o.labels for o in result.outputs.values() if out.name.startswith("mask"))
        assert mask.shape == volume.spatial_shape
        assert_same_geometry(mask.header, volume.header)
        np.testing.assert_array_equal(mask.affine, volume.affine)
        assert mask.data.dtype.kind in "iu"
        assert labels.shape == volume.spatial_shape


def test_invalid_quaternion_with_sform_segments_on_the_sform(tmp_path):
    """b²+c²+d² = 1.62: the image is placed by its sform, models get a clean header."""
    path, _ = fx.LOADED["qform not a rotation, valid sform"][0](tmp_path)
    with pytest.warns(GeometryWarning, match="not a rotation .* using the sform"):
        volume = load(path)
    np.testing.assert_array_equal(volume.affine, volume.header.get_sform())
    image = volume.image3d()
    assert int(image.header["qform_code"]) == 0
    strict = nib.Nifti1Header.from_header(image.header)  # as models copy it
    np.testing.assert_array_equal(strict.get_best_affine(), volume.affine)
    result = _segment(volume)
    out = api.save(result, out=tmp_path / "q_seg.nii.gz")[0]
    # the mask keeps the source's (invalid) quaternion bytes: it overlays like the image
    assert_same_geometry(nib.load(str(out)).header, volume.header)


def test_almost_unit_quaternion_reaches_the_model_with_a_strict_header(tmp_path):
    """b²+c²+d² = 1 + 7e-7 (scanners write it): image3d must not trip nibabel's check."""
    path, _ = fx.LOADED["almost-unit quaternion"][0](tmp_path)
    volume = _load(path)
    image = volume.image3d()
    strict = nib.Nifti1Header.from_header(image.header)  # class threshold, as models copy
    np.testing.assert_allclose(strict.get_best_affine(), volume.affine, atol=1e-5)
    result = _segment(volume)
    out = api.save(result, out=tmp_path / "q_seg.nii.gz")[0]
    assert _bits(read_nifti(out).header, "quatern_b") == _bits(volume.header, "quatern_b")


@pytest.mark.parametrize("shape", [(7, 6), (7, 6, 1)], ids=["2D", "one slice"])
@pytest.mark.parametrize("sform_code", [0, 1], ids=["qform only", "q and s"])
def test_single_slice_mask_keeps_every_pixdim(shape, sform_code, tmp_path):
    """A 5 mm thick slice: the mask keeps pixdim[3] = 5 and so the source's affine."""
    data = fx.phantom(shape=shape)
    affine = fx.oblique_affine(zooms=(0.8, 0.9, 5.0))
    path = fx.write_image(tmp_path / "slice.nii.gz", data, affine, sform_code=sform_code)
    volume = _load(path)
    assert float(volume.header["pixdim"][3]) == 5.0
    out = save_labels(data % 3, tmp_path / "slice_seg.nii.gz", like=volume)
    saved = nib.load(str(out))
    assert float(saved.header["pixdim"][3]) == 5.0
    assert_same_geometry(saved.header, volume.header)
    np.testing.assert_array_equal(saved.affine, nib.load(str(path)).affine)
    result = _segment(volume)
    for mask_path in api.save(result, out=tmp_path / "model_seg.nii.gz"):
        np.testing.assert_array_equal(nib.load(str(mask_path)).affine, volume.affine)
