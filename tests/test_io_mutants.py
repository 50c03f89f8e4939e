"""Display geometry cases found by mutation testing (benchmarks/README.md, io/geometry.py).

Each test pins a number a user sees or relies on: where an oblique scan is drawn, how far
that drawing is from the truth (the reader's warning), the napari layer arguments of a 4D
scan, and the message of every shape error. Expected values are computed independently
(trigonometry, nibabel), never read back from the code under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import NiftiError
from napari_spineseg.io import load
from napari_spineseg.io.checks import (
    FIX_WITH_NIBABEL,
    Sniffed,
    check_header,
    header_findings,
    qform_is_invalid,
    quaternion_norm2,
    sibling_of,
    sniff,
)
from napari_spineseg.io.geometry import RAS_TO_DISPLAY, DisplayGeometry


def _rotation_about_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _oblique(theta_deg: float, zooms=(0.5, 0.8, 2.0), shape=(20, 30, 12), origin=(-5.0, 7.0, 3.0)):
    affine = np.eye(4)
    affine[:3, :3] = _rotation_about_z(math.radians(theta_deg)) @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine, DisplayGeometry.from_affine(affine, shape)


@pytest.mark.parametrize("theta_deg", [7.0, 20.0, -12.5])
def test_oblique_axial_rotation_geometry(theta_deg):
    """A scan rotated in the axial plane: spacing kept, centre exact, error at the corners."""
    zooms, shape = (0.5, 0.8, 2.0), (20, 30, 12)  # RAS-like axes: display (I, P, L) = (z, y, x)
    affine, geom = _oblique(theta_deg, zooms, shape)
    assert geom.display_shape == (12, 30, 20)
    assert geom.scale == pytest.approx((2.0, 0.8, 0.5), abs=1e-12)
    assert geom.obliquity_deg == pytest.approx(abs(theta_deg), abs=1e-9)
    # The centre of the field of view is drawn where it truly is.
    file_centre = (np.array(shape, dtype=float) - 1) / 2
    true_centre = RAS_TO_DISPLAY @ (affine[:3, :3] @ file_centre + affine[:3, 3])
    display_centre = (np.array(geom.display_shape, dtype=float) - 1) / 2
    shown_centre = np.array(geom.scale) * display_centre + np.array(geom.translate)
    np.testing.assert_allclose(shown_centre, true_centre, atol=1e-9)
    # A rotation by theta moves a point at distance r from the centre by 2 r sin(theta / 2):
    # the worst is a corner of the in-plane rectangle.
    half = np.array([zooms[0] * (shape[0] - 1), zooms[1] * (shape[1] - 1)]) / 2
    expected = 2 * math.sin(math.radians(abs(theta_deg)) / 2) * float(np.hypot(*half))
    assert geom.max_displacement_mm == pytest.approx(expected, rel=1e-9)


def test_axis_aligned_geometry_has_no_obliquity():
    _, geom = _oblique(0.0)
    assert geom.obliquity_deg == 0.0
    assert geom.max_displacement_mm == 0.0


def test_degenerate_affine_falls_back_to_voxel_order():
    """A zero column (broken header): voxel order, 1 mm along the missing axis."""
    affine = np.diag([2.0, 0.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    shape = (4, 5, 6)
    geom = DisplayGeometry.from_affine(affine, shape)
    np.testing.assert_array_equal(geom.file_ornt, [[0, 1], [1, 1], [2, 1]])
    assert geom.display_shape == (6, 5, 4)
    assert geom.scale == (3.0, 1.0, 2.0)
    # world (I, P, L) = (-z, -y, -x): display index 0 is the last file voxel along z and x
    assert geom.translate == (-(3.0 * 5 + 30.0), -20.0, -(2.0 * 3 + 10.0))
    assert geom.obliquity_deg == 0.0
    data = np.arange(4 * 5 * 6).reshape(shape)
    np.testing.assert_array_equal(geom.to_display(data), data[::-1, ::-1, ::-1].transpose(2, 1, 0))
    np.testing.assert_array_equal(geom.to_file(geom.to_display(data)), data)


def test_float32_header_affine_is_computed_in_float64():
    """nibabel hands out float32 sform/qform values; positions must not lose precision."""
    affine32 = np.array(
        [[-0.3, 0, 0, 90.1], [0, 0.3, 0, -126.7], [0, 0, 1.1, -72.3], [0, 0, 0, 1]], np.float32
    )
    geom32 = DisplayGeometry.from_affine(affine32, (301, 257, 77))
    geom64 = DisplayGeometry.from_affine(affine32.astype(np.float64), (301, 257, 77))
    assert geom32.translate == geom64.translate
    assert geom32.scale == geom64.scale
    assert geom32.display_affine.dtype == np.float64


def test_layer_kwargs_3d_and_4d():
    _, geom = _oblique(0.0)
    assert geom.layer_kwargs() == {
        "scale": geom.scale,
        "translate": geom.translate,
        "axis_labels": ("S-I", "A-P", "R-L"),
        "units": ("mm", "mm", "mm"),
    }
    assert geom.layer_kwargs(leading=(2.5,)) == {
        "scale": (2.5, *geom.scale),
        "translate": (0.0, *geom.translate),
        "axis_labels": ("volume", "S-I", "A-P", "R-L"),
        "units": ("pixel", "mm", "mm", "mm"),
    }


def test_shape_errors_name_the_shapes():
    _, geom = _oblique(0.0, shape=(20, 30, 12))
    with pytest.raises(ValueError, match=r"^spatial shape must be 2D or 3D, got \(4,\)$"):
        DisplayGeometry.from_affine(np.eye(4), (4,))
    with pytest.raises(ValueError, match=r"^expected a 3D \(\+1\) array, got shape \(20, 30\)$"):
        geom.to_display(np.zeros((20, 30)))
    with pytest.raises(
        ValueError,
        match=r"^expected display shape \(12, 30, 20\) \(\+ a leading axis\), got \(12, 30, 21\)$",
    ):
        geom.to_file(np.zeros((12, 30, 21)))
    # right rank, wrong shape is refused too (not reshaped into the file grid)
    with pytest.raises(ValueError, match="expected display shape"):
        geom.to_file(np.zeros((2, 12, 30, 21)))


def test_matches_compares_shape_scale_and_translate():
    _, geom = _oblique(0.0)
    _, moved = _oblique(0.0, origin=(-5.0, 7.0, 3.5))
    _, finer = _oblique(0.0, zooms=(0.5, 0.8, 2.5))
    _, bigger = _oblique(0.0, shape=(20, 30, 13))
    assert geom.matches(geom)
    assert not geom.matches(moved)
    assert not geom.matches(finer)
    assert not geom.matches(bigger)
    # a caller's tolerance (mm) replaces the default
    assert geom.matches(moved, atol=0.6)
    assert not geom.matches(moved, atol=0.4)


def test_degenerate_oblique_affine_shows_missing_axis_at_1mm():
    """A zero column on a rotated grid: the missing axis is drawn at 1 mm, not 0."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation_about_z(math.radians(20.0)) @ np.diag([0.5, 0.8, 0.0])
    geom = DisplayGeometry.from_affine(affine, (20, 30, 12))
    assert geom.display_shape == (12, 30, 20)
    assert geom.scale == pytest.approx((1.0, 0.8, 0.5), abs=1e-12)


def test_matches_tolerance_applies_to_spacing():
    _, geom = _oblique(0.0)
    finer = dataclasses.replace(geom, scale=(2.4, 0.8, 0.5))
    assert not geom.matches(finer)
    assert geom.matches(finer, atol=0.5)


# ---------------------------------------------------------------- io/checks.py header findings


def _image(affine=None, *, qform=None, qcode=1, scode=1, shape=(10, 12, 14)):
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    img.header.set_qform(affine if qform is None else qform, code=qcode)
    img.header.set_sform(affine, code=scode)
    return img


def test_findings_no_orientation_in_full():
    assert header_findings(_image(qcode=0, scode=0)) == [
        "no orientation in the header (qform_code = sform_code = 0): shown in voxel "
        "order; left/right cannot be trusted"
    ]


def test_findings_qform_sform_severe_warn_silent():
    def shifted(mm: float):
        q = np.eye(4)
        q[0, 3] = mm
        return q

    assert header_findings(_image(qform=shifted(0.5))) == [
        "qform and sform disagree by up to 0.5 mm: FSL/nibabel (sform) and "
        "some ITK-based tools (qform) will place this image differently"
    ]
    assert header_findings(_image(qform=shifted(0.05))) == [
        "qform and sform differ by 0.05 mm (above SCT's 1e-3 tolerance)"
    ]
    assert header_findings(_image(qform=shifted(5e-4))) == []
    # a qform without a code is not used by anyone: no disagreement to report
    assert header_findings(_image(qform=shifted(0.5), qcode=0)) == []


def test_findings_shear_only_for_a_used_sform():
    shear = np.eye(4)
    shear[0, 1] = 0.3
    msg = (
        "the sform has shear (non-orthogonal axes): ITK-based tools (ITK-SNAP, ANTs, "
        "Slicer) will use the qform or refuse the file"
    )
    img = _image(qform=np.eye(4))
    img.header.set_sform(shear, code=1)
    assert msg in header_findings(img)
    img.header.set_sform(shear, code=0)
    assert msg not in header_findings(img)


def test_findings_pixdim_mismatch_in_full_and_tolerance():
    img = _image(np.diag([0.5, 0.8, 2.0, 1.0]), qcode=0)  # pixdim would move a qform
    img.header["pixdim"][1:4] = (0.5, 0.8, 2.5)
    assert header_findings(img) == [
        "voxel size differs between pixdim (0.5, 0.8, 2.5 mm) and the affine "
        "(0.5, 0.8, 2 mm): ITK-SNAP/Slicer use pixdim, FSL/nibabel the affine"
    ]
    img.header["pixdim"][1:4] = (0.5, 0.8, 2.0001)  # 5e-5 relative: rounding in the header
    assert header_findings(img) == []


def test_sibling_and_quaternion_norm():
    assert sibling_of("/data/sub-01_T2w.nii") == Path("/data/sub-01_T2w.nii.gz")
    assert sibling_of("/data/sub-01_T2w.nii.gz") == Path("/data/sub-01_T2w.nii")
    hdr = nib.Nifti1Header()
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = 0.5, 0.25, 0.75
    assert quaternion_norm2(hdr) == 0.25 + 0.0625 + 0.5625


def test_findings_oblique_anisotropic_grid_is_clean():
    """Voxel sizes are column lengths: rows of a rotated 0.5 x 0.8 x 2 grid differ from them."""
    affine, _ = _oblique(30.0)
    assert header_findings(_image(affine, shape=(20, 30, 12))) == []


def test_findings_2d_image_has_no_third_axis_to_disagree_on():
    """A 2D image lies at k = 0: forms that differ only along k place it identically."""
    assert header_findings(_image(qform=np.diag([1.0, 1.0, 3.0, 1.0]), shape=(10, 12))) == []


def test_findings_qform_sform_distance_is_taken_at_the_grid_corners():
    stretched = np.diag([1.1, 1.0, 1.0, 1.0])  # 0.1 mm more per voxel along i
    # index 0 agrees, index 9 (the last of 10) is 0.9 mm off
    assert header_findings(_image(qform=stretched))[0] == (
        "qform and sform disagree by up to 0.9 mm: FSL/nibabel (sform) and "
        "some ITK-based tools (qform) will place this image differently"
    )
    stretched[0, 3] = -1.0  # now index 0 is 1 mm off and index 9 only 0.1 mm
    assert header_findings(_image(qform=stretched))[0] == (
        "qform and sform disagree by up to 1 mm: FSL/nibabel (sform) and "
        "some ITK-based tools (qform) will place this image differently"
    )


def test_findings_units_and_scaling_in_full():
    img = _image()
    img.header.set_xyzt_units("meter")
    assert header_findings(img) == [
        "spatial unit is 'meter': napari shows the stored numbers as mm, ITK-based "
        "tools rescale them"
    ]
    img = _image()
    assert header_findings(img, raw_scaling=(0.0, 0.0)) == []  # the usual "no scaling"
    assert header_findings(img, raw_scaling=(0.0, 1.0)) == [
        "scl_slope is 0 with scl_inter 1: no scaling applied (NIfTI standard); ITK-based "
        "tools add the intercept anyway"
    ]


def test_findings_pixdim_tolerance_is_1nm_on_submicron_grids():
    """0.5 nm between pixdim and affine on a 0.5 µm grid is rounding, not a disagreement."""
    img = _image(np.diag([5e-4, 5e-4, 5e-4, 1.0]), qcode=0)
    img.header["pixdim"][1:4] = 5.005e-4
    assert header_findings(img) == []
    img.header["pixdim"][1:4] = 5.05e-4  # 5 nm: reported
    assert header_findings(img)[0].startswith("voxel size differs between pixdim (0.000505, ")


# ------------------------------------------------------------- io/checks.py check_header


def _bad_quaternion_image(scode: int, qcode: int = 1):
    img = _image(qcode=qcode, scode=scode)
    img.header["quatern_b"], img.header["quatern_c"], img.header["quatern_d"] = 0.9, 0.9, 0.0
    return img


def test_bad_quaternion_refused_without_sform_warned_with_it():
    path = Path("/data/sub-01_T2w.nii.gz")
    with pytest.raises(NiftiError) as info:
        check_header(path, _bad_quaternion_image(scode=0), -1e-6)
    assert str(info.value) == (
        "/data/sub-01_T2w.nii.gz: the qform quaternion is not a rotation (b²+c²+d² = 1.62 > 1, "
        "corrupt qform) and there is no sform to use instead; " + FIX_WITH_NIBABEL
    )
    assert check_header(path, _bad_quaternion_image(scode=1), -1e-6) == [
        "the qform quaternion is not a rotation (b²+c²+d² = 1.62 > 1, corrupt qform): using "
        "the sform, as FSL and nibabel do; ITK-based tools (ITK-SNAP, Slicer, ANTs) may refuse "
        "this file or place it differently"
    ]
    # a qform without a code is used by nobody: its quaternion does not matter
    assert check_header(path, _bad_quaternion_image(scode=1, qcode=0), -1e-6) == []


def test_unit_quaternion_is_a_rotation_at_threshold_zero():
    """b²+c²+d² = 1 exactly (180 degrees about x) is a rotation: accepted up to 1 - threshold."""
    hdr = nib.Nifti1Header()
    hdr.set_qform(np.diag([1.0, -1.0, -1.0, 1.0]), code=1)
    assert quaternion_norm2(hdr) == 1.0
    assert not qform_is_invalid(hdr, 0.0)
    assert qform_is_invalid(hdr, 1e-9)


# ------------------------------------------------------------------- io/checks.py sniff


def _gzip_of_size(payload: bytes, size: int) -> bytes:
    """A valid gzip member of exactly ``size`` bytes: padded in the header's FEXTRA field,
    so the compressed stream (and what it decompresses to) is unchanged."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(payload) + comp.flush()
    trailer = struct.pack("<II", zlib.crc32(payload), len(payload))
    pad = size - (10 + 2 + len(body) + len(trailer))
    assert pad >= 0
    flags_extra = b"\x1f\x8b\x08\x04" + b"\x00" * 4 + b"\x02\xff"  # FEXTRA, no mtime
    return flags_extra + struct.pack("<H", pad) + b"\x00" * pad + body + trailer


def test_deflate_bound_is_exact(tmp_path):
    """A .nii.gz of S bytes may claim up to 1032 S + 4096 bytes, not one more."""
    size, n = 600, 100 * 100 * 50  # uint8 voxels: the data size is n bytes
    bound = 1032 * size + 4096
    hdr = fx.raw_header(np.zeros((1, 1, 1), np.uint8))
    hdr.set_data_shape((100, 100, 50))
    header = bytearray(fx.raw_nifti(np.empty(0, np.uint8), hdr))
    for extra in (0, 1):
        header[108:112] = struct.pack("<f", bound - n + extra)  # vox_offset
        path = tmp_path / f"bound{extra}.nii.gz"
        path.write_bytes(_gzip_of_size(bytes(header), size))
        assert path.stat().st_size == size
        with gzip.open(path) as fh:
            assert fh.read() == bytes(header)
        if extra == 0:
            assert sniff(path).expected_bytes == bound
            continue
        with pytest.raises(NiftiError) as info:
            sniff(path)
        assert info.value.problem == (
            f"the header claims {bound + 1:,} bytes of image data but a 600-byte .nii.gz can "
            f"hold at most {1032 * 600:,}: its dimensions (dim) or vox_offset are corrupt; "
            "re-export the image from its source, or repair the header with nibabel "
            "(img = nib.load(path); img.header...; nib.save(img, new_path))"
        )


def test_sniff_reports_what_the_bytes_say(tmp_path):
    d = fx.phantom()  # int16: 210 voxels, 420 bytes
    one = fx.write_image(tmp_path / "one.nii.gz", d, scl_slope=2.5, scl_inter=-10.0)
    assert sniff(one) == Sniffed(True, 1, "<", 352 + 420, (2.5, -10.0))
    two = fx.write(
        tmp_path / "two.nii",
        fx.raw_nifti(d, fx.raw_header(d, cls=nib.Nifti2Header, scl_slope=0.0, scl_inter=5.0)),
        gz=False,
    )
    assert sniff(two) == Sniffed(False, 2, "<", 544 + 420, (0.0, 5.0))
    big = fx.write(tmp_path / "big.nii", fx.raw_nifti(d, fx.raw_header(d), endian=">"))
    assert sniff(big) == Sniffed(False, 1, ">", 352 + 420, (1.0, 0.0))


def test_one_dimensional_file_passes_the_byte_checks(tmp_path):
    """dim[0] = 1 is legal NIfTI: the byte checks accept it, the loader refuses it."""
    path = fx.write(
        tmp_path / "line.nii",
        fx.raw_nifti(np.arange(10, dtype=np.int16), fx.raw_header(np.arange(10, dtype=np.int16))),
    )
    assert sniff(path) == Sniffed(False, 1, "<", 352 + 20, (1.0, 0.0))
    with pytest.raises(NiftiError) as info:
        load(path)
    assert info.value.problem.startswith("1D data (10,): only 2D, 3D and 4D images")
