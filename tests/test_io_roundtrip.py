"""Round trip of every real NIfTI file: load -> display -> paint -> save mask -> reload.

A mask is *exact* (research/nifti.md §2.1) when its raw header geometry is byte-identical
to its image's, its voxels sit at the same world positions (nibabel), and ITK considers
image and mask the same physical space (``sitk.Mask`` does not raise). The SCT data read
in place contains oblique, q != s, 4D, PSR/LAS/RAS and det<0/det>0 files.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg.errors import GeometryWarning, NiftiError
from napari_spineseg.io import load, save_labels

sitk = pytest.importorskip("SimpleITK")

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/sct_testing_data"
FILES = sorted(DATA.glob("**/*.nii.gz")) if DATA.is_dir() else []

#: Header fields that must be byte-identical between an image and its mask.
GEOMETRY_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
    "dim_info",
)


def raw_header(path: Path) -> np.ndarray:
    """The on-disk header as a numpy record (not nibabel's normalised copy)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        block = fh.read(540)
    big = int.from_bytes(block[:4], "big") in (348, 540)
    sizeof = int.from_bytes(block[:4], "big" if big else "little")
    klass = nib.Nifti2Header if sizeof == 540 else nib.Nifti1Header
    dtype = klass.template_dtype.newbyteorder(">" if big else "<")
    return np.frombuffer(block[: dtype.itemsize], dtype=dtype)[0]


def assert_same_geometry_bytes(mask_path: Path, image_path: Path) -> None:
    m, i = raw_header(mask_path), raw_header(image_path)
    for name in GEOMETRY_FIELDS:
        assert m[name].tobytes() == i[name].tobytes(), f"{name}: {m[name]} != {i[name]}"
    assert m["pixdim"][:4].tobytes() == i["pixdim"][:4].tobytes()
    n = int(i["dim"][0])
    assert int(m["dim"][0]) == min(n, 3), "mask rank = spatial rank of the image"
    assert m["dim"][1 : min(n, 3) + 1].tobytes() == i["dim"][1 : min(n, 3) + 1].tobytes()
    assert float(m["scl_slope"]) in (0.0, 1.0) and float(m["scl_inter"]) == 0.0
    assert int(m["intent_code"]) == 1002


def itk_first_volume(path: Path):
    img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
    return img


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def _ids(path: Path) -> str:
    return str(path.relative_to(DATA)) if FILES else "none"


@pytest.mark.skipif(not FILES, reason=f"SCT testing data not found at {DATA}")
@pytest.mark.parametrize("source", FILES, ids=[_ids(p) for p in FILES])
def test_real_file_round_trip(source: Path, tmp_path: Path):
    if raw_header(source)["dim"][0] >= 5:  # SCT warping fields
        with pytest.raises(NiftiError, match=r"5D data .* only 2D, 3D and 4D") as info:
            load(source)
        assert str(source) in str(info.value)
        return
    vol = _load(source)
    geom = vol.geometry

    # display and back is the identity, as a view
    display = vol.display_data()
    assert np.shares_memory(display, vol.data) or display.size == 0
    assert display.shape[-3:] == geom.display_shape
    back = geom.to_file(display)
    assert back.shape == vol.data.shape and np.array_equal(back, vol.data)

    spatial = np.asarray(vol.data[..., 0] if vol.is_4d else vol.data)
    mask = (spatial > np.median(spatial)).astype(np.uint8)

    # paint one voxel in the display array: exactly that file voxel changes
    painted = geom.to_display(mask).copy()
    d_idx = tuple(int(s) // 3 for s in geom.display_shape)
    painted[d_idx] = 7
    edited = geom.to_file(painted)
    changed = np.argwhere(edited != mask)
    assert len(changed) == 1
    f_idx = tuple(int(i) for i in changed[0])
    # the display voxel and the file voxel are the same point of scanner space
    np.testing.assert_allclose(
        nib.affines.apply_affine(geom.display_affine, d_idx),
        nib.affines.apply_affine(vol.affine, f_idx),
        atol=1e-4,
    )

    out = save_labels(edited, tmp_path / "sub-01_seg.nii.gz", like=vol)

    # nibabel: same voxels at the same world positions
    saved = nib.load(str(out))
    data = np.asanyarray(saved.dataobj)
    assert data.dtype == np.uint8 and data.shape == vol.spatial_shape
    assert np.array_equal(data, edited)
    assert np.array_equal(np.argwhere(data == 7), [f_idx])
    source_img = nib.load(str(source))
    assert np.array_equal(saved.affine, source_img.affine)
    assert np.array_equal(saved.header.get_qform(), source_img.header.get_qform())
    assert np.array_equal(saved.header.get_sform(), source_img.header.get_sform())
    rng = np.random.default_rng(0)
    tags = [f_idx] + [tuple(rng.integers(0, s) for s in vol.spatial_shape) for _ in range(5)]
    for ijk in tags:
        np.testing.assert_array_equal(
            nib.affines.apply_affine(saved.affine, ijk),
            nib.affines.apply_affine(source_img.affine, ijk),
        )
        assert data[ijk] == edited[ijk]

    # raw header bytes
    assert_same_geometry_bytes(out, source)

    # SimpleITK: same physical space as the image it belongs to
    image = itk_first_volume(source)
    itk_mask = sitk.ReadImage(str(out))
    assert itk_mask.GetSize() == image.GetSize()
    assert itk_mask.GetOrigin() == image.GetOrigin()
    assert itk_mask.GetDirection() == image.GetDirection()
    assert itk_mask.GetSpacing() == image.GetSpacing()
    sitk.Mask(image, sitk.Cast(itk_mask, sitk.sitkUInt8))  # raises on a physical-space mismatch
    # and ITK finds the painted voxel where nibabel does (ITK index order is i, j, k)
    assert itk_mask[tuple(int(i) for i in f_idx)] == 7

    # reloading the saved mask gives the same display geometry as its image
    reloaded = _load(out)
    assert reloaded.geometry.matches(geom, atol=0)
    assert np.array_equal(reloaded.display_data(), painted)


@pytest.mark.skipif(not FILES, reason=f"SCT testing data not found at {DATA}")
def test_real_pairs_with_header_drift_fail_itk_but_our_masks_do_not(tmp_path: Path):
    """t2_fake_lesion_sc_seg is ~3e-6 mm off its image: ITK refuses the pair, not ours."""
    image_path = DATA / "t2/t2_fake_lesion.nii.gz"
    seg_path = DATA / "t2/t2_fake_lesion_sc_seg.nii.gz"
    if not seg_path.exists():
        pytest.skip("t2_fake_lesion pair missing")
    image = sitk.ReadImage(str(image_path))
    with pytest.raises(RuntimeError, match="same physical space"):
        sitk.Mask(image, sitk.ReadImage(str(seg_path)))
    seg = _load(seg_path)
    out = save_labels(
        np.asarray(seg.data), tmp_path / "t2_fake_lesion_sc_seg.nii.gz", like=_load(image_path)
    )
    sitk.Mask(image, sitk.ReadImage(str(out)))
    assert np.array_equal(np.asanyarray(nib.load(str(out)).dataobj), seg.data)
