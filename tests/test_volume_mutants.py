"""Volume cases found by mutation testing (benchmarks/README.md, io/volume.py).

Each test pins what a user or a model relies on: the 3D image handed to a model (a 4D
series reduced by mean or first volume, the dtype, a 2D file's slice thickness), the
reader's Labels-or-Image guess, and the sampling that keeps a multi-GB file from being
read whole at open time. Expected values come from numpy on the same voxels, never from
the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import warnings
import zlib

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import GeometryWarning, NiftiError
from napari_spineseg.io import from_nifti, load
from napari_spineseg.io.volume import (
    QUATERNION_THRESHOLD,
    _count_nonfinite,
    _few_values,
    _sample,
    read_nifti,
)


def _image(data: np.ndarray, zooms=(0.8, 0.9, 2.5)) -> nib.Nifti1Image:
    affine = np.diag([*zooms, 1.0])
    return nib.Nifti1Image(data, affine)


# ------------------------------------------------------------------------ image3d
def _series() -> np.ndarray:
    """A 4D int16 series whose volumes differ (volume t holds 10 * t + voxel index)."""
    base = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)
    return np.stack([base + 10 * t for t in (3, 0, 5)], axis=3).astype(np.int16)


def test_4d_series_reduced_by_float32_mean_by_default():
    series = _series()
    img = from_nifti(_image(series)).image3d()
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.float32
    assert data.shape == (7, 6, 5)
    np.testing.assert_array_equal(data, series.astype(np.float32).mean(axis=3))
    assert img.get_data_dtype() == np.float32


def test_4d_series_reduced_to_its_first_volume():
    series = _series()
    img = from_nifti(_image(series)).image3d(reduce="first")
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, series[..., 0])


def test_4d_reduce_other_than_mean_or_first_is_refused():
    vol = from_nifti(_image(_series()))
    with pytest.raises(ValueError, match=r"^reduce must be 'mean' or 'first', not 'median'$"):
        vol.image3d(reduce="median")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64, np.int32])
def test_model_image_keeps_integer_and_float_dtypes(dtype):
    data = fx.phantom(dtype=dtype)
    img = from_nifti(_image(data)).image3d()
    out = np.asanyarray(img.dataobj)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, data)


def test_model_image_of_complex_data_is_float32():
    """nibabel-built phantoms may be complex: models get float32 (the real part)."""
    data = fx.phantom(dtype=np.float32).astype(np.complex64)
    out = np.asanyarray(from_nifti(_image(data)).image3d().dataobj)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.real)


def test_2d_file_without_slice_thickness_gives_models_the_affine_length(tmp_path):
    """pixdim[3] = 1e-9 mm on a 2D file: models get the affine's 3rd column length (3 mm)."""
    data = fx.phantom((7, 6), dtype=np.int16)
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    hdr = fx.raw_header(data, affine, qform_code=0)
    pixdim = hdr["pixdim"].copy()
    pixdim[3] = 1e-9
    hdr["pixdim"] = pixdim
    path = fx.write(tmp_path / "slice2d.nii", fx.raw_nifti(data, hdr))
    vol = load(path)
    assert float(vol.header["pixdim"][3]) == pytest.approx(1e-9)
    hdr = vol.image3d().header
    assert tuple(float(z) for z in hdr["pixdim"][1:4]) == pytest.approx((0.8, 0.9, 3.0), abs=1e-6)


@pytest.mark.parametrize("thickness", [5.0, 500.0])
def test_2d_file_keeps_its_usable_slice_thickness_for_models(tmp_path, thickness):
    """pixdim[3] = 5 mm (or 500 mm, the largest possible) on a 2D file is the file's
    slice thickness: models get it, not the affine's 3rd column length (2 mm here),
    like every other pixdim of the file."""
    data = fx.phantom((7, 6), dtype=np.int16)
    hdr = fx.raw_header(data, np.diag([0.8, 0.9, 2.0, 1.0]), qform_code=0)
    pixdim = hdr["pixdim"].copy()
    pixdim[3] = thickness
    hdr["pixdim"] = pixdim
    vol = load(fx.write(tmp_path / "slice2d.nii", fx.raw_nifti(data, hdr)))
    zooms = tuple(float(z) for z in vol.image3d().header["pixdim"][1:4])
    assert zooms == pytest.approx((0.8, 0.9, thickness), abs=1e-6)


# ----------------------------------------------------------------- Labels or Image
def _many_integers() -> np.ndarray:
    """Integer-valued float data with 210 distinct values: an image, by its values."""
    return fx.phantom(dtype=np.float32)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sub-01_T2w.nii.gz", False),
        ("sub-01_T2w_seg.nii.gz", True),
        ("SUB-01_T2W_SEG.NII.GZ", True),
        ("sub-01_label-SC_mask.nii.gz", True),
        ("sub-01_rootlets.nii.gz", True),
    ],
)
def test_label_guess_by_file_name(name, expected):
    vol = from_nifti(_image(_many_integers()), path=f"/data/{name}")
    assert vol.looks_like_labels() is expected


def test_label_name_needs_integer_values():
    data = _many_integers() + np.float32(0.5)
    vol = from_nifti(_image(data), path="/data/sub-01_T2w_seg.nii.gz")
    assert vol.looks_like_labels() is False


def test_label_intent_wins_over_values():
    img = _image(_many_integers() + np.float32(0.25))
    img.header.set_intent("label")
    assert from_nifti(img, path="/data/t2.nii.gz").looks_like_labels() is True
    img.header.set_intent("estimate")  # 1001, the code just below NIFTI_INTENT_LABEL
    assert from_nifti(img, path="/data/t2.nii.gz").looks_like_labels() is False


def test_label_guess_by_values_without_a_path():
    few = np.zeros((7, 6, 5), np.int16)
    few[2:4, 1:3, 1:4] = 3
    assert from_nifti(_image(few)).looks_like_labels() is True
    assert from_nifti(_image(fx.phantom())).looks_like_labels() is False
    halves = np.where(few > 0, 1.5, 0.5).astype(np.float32)  # two values, not integers
    assert from_nifti(_image(halves)).looks_like_labels() is False


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.array([0, 1, 7], np.int16), True),
        (np.array([0, 1, 255], np.uint8), True),
        (np.array([0.0, 1.0, -4.0], np.float32), True),
        (np.array([0.0, 1.5], np.float32), False),
        (np.array([0.0, np.nan], np.float32), False),
        (np.array([0.0, np.inf], np.float64), False),
        (np.array([0, 1], np.complex64), False),
    ],
)
def test_integer_valued(values, expected):
    data = np.resize(values, (4, 3, 2))
    assert from_nifti(_image(data)).integer_valued() is expected


def test_from_nifti_keeps_the_path():
    vol = from_nifti(_image(fx.phantom()), path="/data/sub-01_T2w.nii.gz")
    assert str(vol.path) == "/data/sub-01_T2w.nii.gz"
    assert vol.name == "sub-01_T2w"
    assert from_nifti(_image(fx.phantom())).path is None


# -------------------------------------------------------------------- few values
@pytest.mark.parametrize("n, expected", [(63, True), (64, True), (65, False)])
def test_few_values_means_at_most_64(n, expected):
    data = np.resize(np.arange(n, dtype=np.int16), (10, 10, 10))
    assert _few_values(data) is expected


def test_few_values_ignores_nan_and_infinity():
    data = np.resize(np.arange(64, dtype=np.float32), (10, 10, 10))
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    data[9, 9, 9] = 1.0  # the 64 values are still all there
    assert set(np.unique(data[np.isfinite(data)]).tolist()) == set(range(64))
    assert _few_values(data) is True


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_few_values_trusts_the_quick_sample_on_large_arrays(dtype):
    """8M voxels: the quick sample (every 5th voxel per axis) sees 1000 values the 2M
    sample (every 2nd) misses; the file is an image, never a label map."""
    data = np.zeros((200, 200, 200), dtype)
    data[5::10, 5::10, 5::10] = np.arange(1, 20**3 + 1).reshape(20, 20, 20)
    assert _few_values(data) is False


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_few_values_looks_past_a_quick_sample_that_sees_few(dtype):
    """100 000 voxels: the quick sample (every 2nd voxel per axis) sees only zeros; the
    values on odd indices make it an image (float or integer alike), NaN aside."""
    data = np.zeros((50, 50, 40), dtype)
    data[1::2, 1::2, 1::2][:4, :5, :5] = np.arange(1, 101).reshape(4, 5, 5)
    if dtype == np.float32:
        data[0, 0, 0] = np.nan
    assert _few_values(data) is False


# ---------------------------------------------------------------------- sampling
def test_small_arrays_are_sampled_whole():
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    np.testing.assert_array_equal(_sample(data, max_items=1000), data)


def test_large_arrays_are_sampled_on_a_regular_grid():
    data = np.arange(8000, dtype=np.float32).reshape(20, 20, 20)
    # (8000 / 1000) ** (1/3) = 2: every 2nd voxel along each axis
    np.testing.assert_array_equal(_sample(data, max_items=1000), data[::2, ::2, ::2])
    flat = np.arange(1000, dtype=np.float32)
    np.testing.assert_array_equal(_sample(flat, max_items=160), flat[::7])  # ceil(6.25)


def test_memmap_sampled_in_16_runs_spread_to_the_file_end(tmp_path):
    """16 contiguous runs, the first at the file start, the last ending at the file end,
    in the file's (Fortran) voxel order."""
    path = tmp_path / "raw.bin"
    flat = np.arange(1000, dtype=np.float32)
    flat.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(10, 10, 10), order="F")
    sample = _sample(mm, max_items=160)
    starts = np.linspace(0, 1000 - 10, 16).astype(np.int64)
    expected = np.concatenate([flat[s : s + 10] for s in starts])
    np.testing.assert_array_equal(sample, expected)
    assert sample[0] == 0 and sample[-1] == 999


def test_memmap_sampled_above_2m_items(tmp_path):
    path = tmp_path / "raw.bin"
    np.zeros(2_000_001, np.uint8).tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(2_000_001,))
    assert _sample(mm).size == 2_000_000  # 16 runs of 125 000


# ------------------------------------------------------------------ NaN counting
def test_nonfinite_count_of_a_huge_array_in_blocks():
    """Above 50M voxels the count runs slice by slice: the same total."""
    row = np.array([np.nan, 1.0, np.inf, 0.0, -np.inf] * 10 + [2.0], np.float16)  # 51
    data = np.broadcast_to(row, (1000, 1000, 51))
    assert data.size > 50_000_000
    assert _count_nonfinite(data) == 1_000_000 * 30


# ------------------------------------------------------------------ load's refusals
def _nifti_file(tmp_path):
    data = fx.phantom()
    return fx.write(tmp_path / "t2.nii", fx.raw_nifti(data, fx.raw_header(data)))


def test_any_nibabel_failure_is_a_nifti_error_naming_the_file(tmp_path, monkeypatch):
    """What nibabel raises on a file the header checks let through names the file and
    the cause (type and message), never a bare nibabel traceback."""
    path = _nifti_file(tmp_path)

    def broken(p, mmap=False):
        raise nib.filebasedimages.ImageFileError("Cannot work out file type")

    monkeypatch.setattr("napari_spineseg.io.volume.read_nifti", broken)
    with pytest.raises(NiftiError) as info:
        load(path)
    assert info.value.path == str(path)
    assert info.value.problem == (
        "cannot be read as NIfTI (ImageFileError: Cannot work out file type)"
    )
    assert str(info.value) == f"{path}: {info.value.problem}"


def test_uncompressed_files_are_memory_mapped_copy_on_write(tmp_path, monkeypatch):
    """A .nii is opened with mmap="c" (no RAM for the voxels, the file never written)."""
    from napari_spineseg.io import volume as volume_module

    seen = []
    real = volume_module.read_nifti

    def spy(p, mmap=False):
        seen.append(mmap)
        return real(p, mmap=mmap)

    monkeypatch.setattr("napari_spineseg.io.volume.read_nifti", spy)
    vol = load(_nifti_file(tmp_path))
    assert seen == ["c"]
    assert isinstance(vol.data, np.memmap)


def test_a_non_nifti_image_from_nibabel_is_refused_by_its_class(tmp_path, monkeypatch):
    path = _nifti_file(tmp_path)
    data = fx.phantom()
    analyze = nib.AnalyzeImage(data, np.eye(4))
    monkeypatch.setattr("napari_spineseg.io.volume.read_nifti", lambda p, mmap=False: analyze)
    with pytest.raises(NiftiError) as info:
        load(path)
    assert str(info.value) == f"{path}: not a NIfTI image (AnalyzeImage)"


def test_a_single_volume_4d_file_is_logged_as_3d(tmp_path, caplog):
    one = fx.phantom((7, 6, 5, 1))
    two = fx.phantom((7, 6, 5, 2))
    single = fx.write(tmp_path / "one.nii", fx.raw_nifti(one, fx.raw_header(one)))
    series = fx.write(tmp_path / "two.nii", fx.raw_nifti(two, fx.raw_header(two)))
    with caplog.at_level("INFO", logger="napari_spineseg.io.volume"):
        load(single)
        load(series)
    infos = [r.getMessage() for r in caplog.records if r.name == "napari_spineseg.io.volume"]
    assert infos == [f"{single}: 4D with a single volume, treated as 3D"]


def test_a_sibling_nii_is_named_in_full(tmp_path):
    data = fx.phantom()
    gz = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))
    fx.write(tmp_path / "t2.nii", fx.raw_nifti(data, fx.raw_header(data)))
    expected = (
        "t2.nii exists next to this file: ITK-based tools (ITK-SNAP, Slicer, ANTs) open the "
        ".nii even when asked for the .nii.gz, so they may show the other one"
    )
    with pytest.warns(GeometryWarning) as record:
        vol = load(gz)
    assert vol.warnings == [expected]
    assert [str(w.message) for w in record] == [f"t2.nii.gz: {expected}"]


def test_geometry_warnings_are_shown_at_the_callers_line(tmp_path):
    """(Apart from the text above: under mutmut a trampoline frame moves the caller.)"""
    data = fx.phantom()
    gz = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))
    fx.write(tmp_path / "t2.nii", fx.raw_nifti(data, fx.raw_header(data)))
    with pytest.warns(GeometryWarning) as record:
        load(gz)
    assert record[0].filename == __file__  # shown at the caller's line, not inside load


@pytest.mark.parametrize("corner_mm, warned", [(0.06, True), (0.04, False)])
def test_obliquity_warned_beyond_a_tenth_of_the_smallest_voxel(tmp_path, corner_mm, warned):
    """0.5 mm voxels: drawn corners off by more than 0.05 mm are worth a warning.

    A rotation by t about x moves the corner at r mm from the centre by 2 r sin(t/2);
    here r = |(2.5 * 0.5, 2 * 0.5)| mm (grid 7 x 6 x 5)."""
    radius = math.hypot(2.5 * 0.5, 2.0 * 0.5)
    degrees = math.degrees(2 * math.asin(corner_mm / (2 * radius)))
    data = fx.phantom()
    affine = fx.oblique_affine(zooms=(0.5, 0.5, 0.5), degrees=degrees)
    path = fx.write(tmp_path / "tilted.nii", fx.raw_nifti(data, fx.raw_header(data, affine)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = load(path)
    expected = (
        f"oblique acquisition ({degrees:.2f} degrees from the scanner axes): shown on the "
        "nearest axis-aligned grid, so napari's world coordinates are off by up to "
        f"{corner_mm:.2g} mm at the edges of the field of view; voxels and saved masks are exact"
    )
    assert vol.warnings == ([expected] if warned else [])


# ------------------------------------------------------------- NaN at open time
def test_nan_voxels_counted_in_full(tmp_path):
    data = fx.phantom(dtype=np.float32)
    data[1, 2, 3] = np.nan
    data[4, 0, 0] = np.inf
    data[6, 5, 4] = -np.inf
    path = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))
    with pytest.warns(GeometryWarning):
        vol = load(path)
    assert vol.warnings == [
        "3 voxels are NaN or infinite: contrast is set from finite values; "
        "models receive them as 0"
    ]


def test_nan_between_the_sample_runs_of_a_mid_size_file_is_found(tmp_path):
    """Under 50M voxels a memory-mapped file is scanned whole: a NaN that the 16-run
    sample (125 000 voxels each) would miss is still counted."""
    shape = (150, 140, 100)  # 2.1M voxels: the sample leaves gaps between its runs
    data = np.zeros(shape, np.float32)
    # file (Fortran) voxel 125 010: just after the sample's first run, before the second
    data[np.unravel_index(125_010, shape, order="F")] = np.nan
    path = fx.write(tmp_path / "t2.nii", fx.raw_nifti(data, fx.raw_header(data)))
    with pytest.warns(GeometryWarning):
        vol = load(path)
    assert isinstance(vol.data, np.memmap)
    assert vol.warnings == [
        "1 voxels are NaN or infinite: contrast is set from finite values; "
        "models receive them as 0"
    ]


def test_nan_in_a_huge_memory_mapped_file_is_reported_from_a_sample(tmp_path):
    """Above 50M voxels only a sample is read: the warning says so, without a count."""
    path = fx.sparse_large_nii(tmp_path / "big.nii", shape=(400, 400, 313))
    with open(path, "r+b") as fh:  # first voxel: inside the sample's first run
        fh.seek(352)
        fh.write(np.array([np.nan], "<f4").tobytes())
    with pytest.warns(GeometryWarning):
        vol = load(path)
    assert vol.warnings[-1] == (
        "some voxels (seen in a sample of this large file) are NaN or infinite: contrast "
        "is set from finite values; models receive them as 0"
    )


def test_a_memory_mapped_file_of_exactly_50m_voxels_is_scanned_whole(tmp_path):
    """The sampling starts above 50M voxels: at exactly 50M the NaN are counted."""
    path = fx.sparse_large_nii(tmp_path / "edge.nii", shape=(500, 400, 250))
    with open(path, "r+b") as fh:
        fh.seek(352)
        fh.write(np.array([np.nan, np.inf], "<f4").tobytes())
    with pytest.warns(GeometryWarning):
        vol = load(path)
    assert isinstance(vol.data, np.memmap) and vol.data.size == 50_000_000
    assert vol.warnings[-1] == (
        "2 voxels are NaN or infinite: contrast is set from finite values; "
        "models receive them as 0"
    )


def test_a_gz_file_is_read_whole_at_open_time(tmp_path):
    """Corruption of a .nii.gz surfaces at open time: the voxels are in memory once
    load returns, even if the file then disappears."""
    data = fx.phantom()
    path = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))
    vol = load(path)
    path.unlink()
    np.testing.assert_array_equal(vol.data, data)


# -------------------------------------------------------------------- read_nifti
def test_read_nifti_reads_into_memory_unless_asked_to_map(tmp_path):
    """By default the voxels are read, not memory-mapped (a file about to be replaced
    must not back an array); ``mmap="c"`` maps them."""
    data = fx.phantom()
    path = fx.write(tmp_path / "t2.nii", fx.raw_nifti(data, fx.raw_header(data)))
    assert not isinstance(np.asanyarray(read_nifti(path).dataobj), np.memmap)
    assert isinstance(np.asanyarray(read_nifti(path, mmap="c").dataobj), np.memmap)


def test_read_nifti_of_a_scanner_quaternion_keeps_the_relaxed_threshold(tmp_path):
    """b²+c²+d² slightly above 1: read, mapped as asked, and its qform still computable
    afterwards (the header keeps SCT's threshold, not nibabel's strict one)."""
    gz, _ = fx.LOADED["almost-unit quaternion"][0](tmp_path)
    path = tmp_path / "quaternion.nii"
    path.write_bytes(gzip.decompress(gz.read_bytes()))
    img = read_nifti(path)
    assert img.header.quaternion_threshold == QUATERNION_THRESHOLD
    qform = img.header.get_qform()
    np.testing.assert_allclose(np.sign(np.diag(qform)[:3]), [1, -1, -1])
    assert not isinstance(np.asanyarray(img.dataobj), np.memmap)
    assert isinstance(np.asanyarray(read_nifti(path, mmap="c").dataobj), np.memmap)


# --------------------------------------------------------------------- scaled data
@pytest.mark.parametrize("name", ["t2.nii", "t2.nii.gz"])
@pytest.mark.parametrize("slope, inter", [(2.0, 0.0), (1.0, 5.0), (0.5, -3.0)])
def test_scaled_integers_are_read_as_float32_values(tmp_path, name, slope, inter):
    """scl_slope / scl_inter applied (either alone is a scaling), in float32."""
    raw = fx.phantom(dtype=np.int16)
    path = fx.write(
        tmp_path / name,
        fx.raw_nifti(raw, fx.raw_header(raw, scl_slope=slope, scl_inter=inter)),
    )
    vol = load(path)
    assert vol.data.dtype == np.float32
    expected = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
    np.testing.assert_array_equal(vol.data, expected)


def test_out_of_memory_while_reading_is_refused_with_the_size_and_the_fix(tmp_path, monkeypatch):
    data = fx.phantom((70, 60, 50), dtype=np.int16)  # 420 000 bytes of voxels
    path = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))

    def no_memory(p, dataobj):
        raise MemoryError

    monkeypatch.setattr("napari_spineseg.io.volume._read_gzip_array", no_memory)
    with pytest.raises(NiftiError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: not enough memory to read its {420_000 / 2**30:.3g} GiB of voxels "
        "(shape (70, 60, 50)); use a machine with more memory, or crop the image first"
    )


# ----------------------------------------------- refusals that name the fix (#7 review)
def test_a_1d_file_is_refused_with_its_shape_and_the_fix(tmp_path):
    line = np.arange(10, dtype=np.int16)
    path = fx.write(tmp_path / "line.nii.gz", fx.raw_nifti(line, fx.raw_header(line)))
    with pytest.raises(NiftiError, match=r"line\.nii\.gz: 1D data \(10,\): ") as info:
        load(path)
    assert info.value.problem == (
        "1D data (10,): only 2D, 3D and 4D images can be shown and segmented; if it holds an "
        "image, save it with its spatial dimensions (nibabel: nib.save(nib.Nifti1Image("
        "data.reshape(nx, ny, nz), affine), new_path))"
    )


def test_a_qform_only_file_with_a_bad_quaternion_is_refused_with_its_norm(tmp_path):
    """nibabel cannot even build the image (no rotation has b²+c²+d² > 1, and there is
    no sform): the refusal is the header check's, with the norm found and the fix."""
    data = fx.phantom()
    hdr = fx.raw_header(data, sform_code=0)
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = 0.6, 0.8, 0.5  # 1.25
    path = fx.write(tmp_path / "qonly.nii", fx.raw_nifti(data, hdr))
    with pytest.raises(NiftiError, match=r"qonly\.nii: the qform quaternion is not a rotation"):
        load(path)
    with pytest.raises(NiftiError) as info:
        load(path)
    assert info.value.problem == (
        "the qform quaternion is not a rotation (b²+c²+d² = 1.25 > 1, corrupt qform) and "
        "there is no sform to use instead; re-export the image from its source, or repair "
        "the header with nibabel (img = nib.load(path); img.header...; nib.save(img, new_path))"
    )
    # nibabel's class-wide threshold is restored after the second, unchecked read
    assert nib.Nifti1Header.quaternion_threshold == np.finfo(np.float32).eps * 3


# ------------------------------------------------- _read_data: truncated or unreadable
@pytest.mark.parametrize(
    "error, problem",
    [
        (
            EOFError("Compressed file ended before the end-of-stream marker was reached"),
            "file is truncated or corrupt (Compressed file ended before the end-of-stream "
            "marker was reached)",
        ),
        (  # nibabel's words for a short file
            OSError("Expected 420000 bytes, got 1000 bytes from object"),
            "file is truncated or corrupt (Expected 420000 bytes, got 1000 bytes from object)",
        ),
        (
            ValueError("end-of-stream marker missing"),
            "file is truncated or corrupt (end-of-stream marker missing)",
        ),
        (
            zlib.error("Error -3 while decompressing data: invalid block type"),
            "cannot read the voxel data (error: Error -3 while decompressing data: invalid "
            "block type)",
        ),
        (
            OSError(5, "Input/output error"),
            "cannot read the voxel data (OSError: [Errno 5] Input/output error)",
        ),
    ],
)
def test_unreadable_voxels_are_called_truncated_only_when_they_are(
    tmp_path, monkeypatch, error, problem
):
    """A short stream says "truncated" (copy the file again); any other read error is
    named with its type (a disk or a decompression fault), never as a traceback."""
    data = fx.phantom()
    path = fx.write(tmp_path / "t2.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))

    def failing(p, dataobj):
        raise error

    monkeypatch.setattr("napari_spineseg.io.volume._read_gzip_array", failing)
    with pytest.raises(NiftiError, match=r"t2\.nii\.gz: ") as info:
        load(path)
    assert info.value.problem == problem


def test_a_loaded_volume_knows_its_file(tmp_path):
    """The path names the volume, its saves and its autosaves (by the file's hash)."""
    data = fx.phantom()
    path = fx.write(tmp_path / "sub-01_T2w.nii.gz", fx.raw_nifti(data, fx.raw_header(data)))
    vol = load(path)
    assert vol.path == path and vol.name == "sub-01_T2w"
    assert vol.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_structured_rgb_data_in_memory_is_refused_in_full():
    """RGB files are refused by their datatype before reading; an RGB image built in
    memory is refused when its voxels are asked for."""
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    vol = from_nifti(nib.Nifti1Image(rgb, np.eye(4)))
    with pytest.raises(NiftiError, match="structured") as info:
        vol.data  # noqa: B018
    assert info.value.problem == "structured (RGB) data is not a scalar MRI volume"


# ------------------------------------------------------------ gzip read in chunks
def test_a_gz_file_larger_than_one_read_chunk_loads_whole(tmp_path):
    """4.4 MB of voxels: more than one 4 MiB chunk of decompression."""
    data = np.zeros((110, 100, 100), np.float32)
    data[::7] = 1.5
    data[-1, -1, -1] = 2.5
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(fx.raw_nifti(data, fx.raw_header(data)), 1))
    np.testing.assert_array_equal(load(path).data, data)


def test_a_gz_stream_that_ends_early_is_refused_with_the_counts(tmp_path):
    """A complete gzip stream holding fewer voxel bytes than the header says."""
    data = fx.phantom()  # 420 bytes of voxels after a 352-byte header
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(fx.raw_nifti(data, fx.raw_header(data))[:600]))
    with pytest.raises(NiftiError, match=r"short\.nii\.gz: file is truncated") as info:
        load(path)
    assert info.value.problem == (
        "file is truncated or corrupt (Expected 420 bytes of voxel data, got 248)"
    )


def test_bytes_after_the_gzip_stream_are_ignored_as_gunzip_does(tmp_path):
    """Some tools append bytes to a .nii.gz; gunzip reads the stream and ignores
    them. (Large voxels, so that nibabel's own header read stops before them.)"""
    data = np.random.default_rng(0).integers(0, 30000, (40, 40, 40)).astype(np.int16)
    path = tmp_path / "tail.nii.gz"
    path.write_bytes(gzip.compress(fx.raw_nifti(data, fx.raw_header(data))) + b"garbage!")
    vol = load(path)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.warnings == []
