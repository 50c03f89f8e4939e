"""Saving masks never loses data (research/nifti.md §3.4 B6-B10, C1-C5, C9).

The source image is never overwritten, a stale sibling is never left for ITK to open, a
replaced mask is kept and restorable, a failed or refused save leaves the target and the
folder as they were, and label values are stored exactly (no slope, no float, no int64).
"""

from __future__ import annotations

import errno
import gzip
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nifti_factory as fx
from napari_spineseg.errors import (
    GeometryWarning,
    LabelsError,
    SaveRefusedError,
    SpinesegError,
)
from napari_spineseg.io import atomic, load, save_labels, writer


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


@pytest.fixture
def source(tmp_path: Path):
    return _load(fx.write_image(tmp_path / "sub-01_T2w.nii.gz", fx.phantom(), fx.oblique_affine()))


def _mask(seed: int = 0) -> np.ndarray:
    return (fx.phantom(seed=seed) % 3).astype(np.uint8)


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "spineseg-tmp" in p.name]


# ------------------------------------------------------------------ refusals


def test_refuses_to_overwrite_the_source_image(source):
    before = source.path.read_bytes()
    for target in (source.path, source.path.parent / "." / source.path.name):
        with pytest.raises(SaveRefusedError, match="is the source image") as info:
            save_labels(_mask(), target, like=source)
        assert source.path.name in str(info.value)
    link = source.path.parent / "link.nii.gz"
    link.symlink_to(source.path)
    with pytest.raises(SaveRefusedError, match="is the source image"):
        save_labels(_mask(), link, like=source)
    assert source.path.read_bytes() == before


@pytest.mark.parametrize(
    ("existing", "target"), [("seg.nii", "seg.nii.gz"), ("seg.nii.gz", "seg.nii")]
)
def test_refuses_a_sibling_that_itk_would_open_instead(source, existing, target):
    folder = source.path.parent
    (folder / existing).write_bytes(b"old")
    with pytest.raises(SaveRefusedError) as info:
        save_labels(_mask(), folder / target, like=source)
    assert existing in str(info.value) and "ITK" in str(info.value)
    assert not (folder / target).exists()
    assert (folder / existing).read_bytes() == b"old"


def test_refuses_a_name_without_nifti_extension(source):
    with pytest.raises(SaveRefusedError, match=r"\.nii or \.nii\.gz"):
        save_labels(_mask(), source.path.parent / "seg.nrrd", like=source)


def test_refuses_labels_on_another_grid(source):
    with pytest.raises(LabelsError, match="spatial shape") as info:
        save_labels(np.zeros((7, 6, 4), np.uint8), source.path.parent / "s.nii.gz", like=source)
    assert str(source.path) in str(info.value)


# ------------------------------------------------------------------ history


def test_previous_version_is_kept_and_restorable(source):
    target = source.path.parent / "sub-01_T2w_seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    first = target.read_bytes()
    save_labels(_mask(1), target, like=source)
    second = target.read_bytes()
    assert first != second
    history = writer.history_folder(target)
    kept = sorted(history.iterdir())
    assert [p.read_bytes() for p in kept] == [first]
    assert kept[0].name.endswith(".nii.gz")
    os.replace(kept[0], target)  # restoring = putting the file back
    assert np.array_equal(np.asanyarray(nib.load(str(target)).dataobj), _mask(0))
    # keep_history=False replaces without a copy; at most HISTORY_KEEP versions are kept
    save_labels(_mask(2), target, like=source, keep_history=False)
    assert list(history.iterdir()) == []
    for seed in range(writer.HISTORY_KEEP + 3):
        save_labels(_mask(seed), target, like=source)
    assert len(list(history.iterdir())) == writer.HISTORY_KEEP


def test_saving_over_a_memory_mapped_mask(source):
    """C1: a mask open as a memmap (uncompressed) is replaced safely: no SIGBUS, no truncation."""
    target = source.path.parent / "seg.nii"
    save_labels(_mask(0), target, like=source)
    opened = _load(target)
    old = opened.data
    assert isinstance(old, np.memmap)
    save_labels(_mask(1), target, like=source)
    assert np.array_equal(old, _mask(0)), "the open array still reads the old version"
    assert np.array_equal(_load(target).data, _mask(1))
    assert target.stat().st_size == 352 + _mask().size


# ------------------------------------------------------------------ failures


def test_failure_during_verification_leaves_everything_unchanged(source, monkeypatch):
    target = source.path.parent / "seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = _folder_state(source.path.parent)

    def broken(*args, **kwargs):
        raise SpinesegError("injected: verification found a difference")

    monkeypatch.setattr(writer, "_verify", broken)
    with pytest.raises(SpinesegError, match="injected"):
        save_labels(_mask(1), target, like=source)
    assert _folder_state(source.path.parent) == before
    assert _temp_files(source.path.parent) == []


def test_failure_halfway_through_the_write(source, monkeypatch):
    """C2: the disk fills after half the bytes: target untouched, temp file removed.

    (A real full disk is in test_save_filesystems.py; this runs wherever mount is denied.)
    """
    target = source.path.parent / "seg.nii.gz"
    save_labels(_mask(0), target, like=source)
    before = _folder_state(source.path.parent)
    real_open = open

    class HalfFile:
        def __init__(self, fh):
            self.fh = fh

        def write(self, payload):
            self.fh.write(payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def half_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return HalfFile(fh) if "w" in mode else fh

    monkeypatch.setattr(atomic, "open", half_open, raising=False)
    with pytest.raises(SaveRefusedError, match="No space left") as info:
        save_labels(_mask(1), target, like=source)
    assert "nothing was written" in str(info.value) and "free some space" in str(info.value)
    assert _folder_state(source.path.parent) == before
    assert _temp_files(source.path.parent) == []


def test_not_enough_free_space_is_refused_before_writing(source, monkeypatch):
    target = source.path.parent / "seg.nii.gz"
    before = _folder_state(source.path.parent)
    usage = type("Usage", (), {"total": 1 << 30, "used": 1 << 30, "free": 10})
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda _: usage())
    with pytest.raises(SaveRefusedError, match="not enough free space"):
        save_labels(_mask(), target, like=source)
    assert _folder_state(source.path.parent) == before


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.EACCES, "ask for write access"),
        (errno.EROFS, "read-only file system: save to another folder"),
        (errno.ENOSPC, "disk is full"),
    ],
    ids=["permission", "read-only", "full"],
)
def test_folder_refusing_files(tmp_path, monkeypatch, code, fix):
    """C5: the kernel's refusal (root ignores chmod, so it is injected at os.open) becomes a
    SaveRefusedError naming the folder and the fix; target untouched, nothing left.
    A real read-only mount is in test_save_filesystems.py."""
    folder = tmp_path / "ro"
    folder.mkdir()
    src = _load(fx.write_image(folder / "t2.nii.gz", fx.phantom()))
    target = folder / "t2_seg.nii.gz"
    save_labels(_mask(0), target, like=src)
    before = _folder_state(folder)
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(SaveRefusedError, match=os.strerror(code)) as info:
        save_labels(_mask(1), target, like=src)
    monkeypatch.undo()
    message = str(info.value)
    assert str(target) in message and str(folder) in message and fix in message
    assert "nothing was written" in message
    assert _folder_state(folder) == before
    assert _temp_files(folder) == []


# ------------------------------------------------------------------ dtype policy

TSS = np.array([0, 1, 2, 11, 12, 50, 63, 64, 100], dtype=np.int64)  # TotalSpineSeg map


@pytest.mark.parametrize(
    ("values", "dtype", "code"),
    [
        ([0, 1], np.uint8, 2),
        (list(range(9)), np.uint8, 2),  # rootlets
        (list(TSS), np.uint8, 2),
        ([0, 200, 224], np.uint8, 2),  # TotalSpineSeg step-1 range
        ([0, 255], np.uint8, 2),  # the uint8 bound itself
        ([0, 256], np.int16, 4),
        ([0, 1, 300], np.int16, 4),
        ([0, 32767], np.int16, 4),
    ],
    ids=["binary", "rootlets", "totalspineseg", "tss-200", "255", "256", "300", "32767"],
)
@pytest.mark.parametrize("in_dtype", [np.int64, np.int32, np.uint16])
def test_label_dtype_policy(source, values, dtype, code, in_dtype):
    labels = np.resize(np.array(values, dtype=in_dtype), source.spatial_shape)
    out = save_labels(labels, source.path.parent / "labels.nii.gz", like=source)
    img = nib.load(str(out))
    data = np.asanyarray(img.dataobj)
    assert data.dtype == dtype
    assert np.array_equal(data, labels)
    raw = _raw(out)
    assert int(raw["datatype"]) == code
    assert float(raw["scl_slope"]) == 1.0 and float(raw["scl_inter"]) == 0.0
    assert int(raw["intent_code"]) == 1002 and float(raw["cal_max"]) == max(values)
    assert len(img.header.extensions) == 0


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.full(fx.PHANTOM_SHAPE, 40000, np.int32), "does not fit in int16"),
        (np.resize(np.array([0, 32768], np.int32), fx.PHANTOM_SHAPE), "value 32768 does not fit"),
        (np.full(fx.PHANTOM_SHAPE, -1, np.int16), ">= 0"),
        (np.zeros(fx.PHANTOM_SHAPE, np.float64), "floating-point mask"),
        (np.zeros(fx.PHANTOM_SHAPE, np.float32), "floating-point mask"),
        (np.zeros(fx.PHANTOM_SHAPE, bool), "boolean mask"),
    ],
    ids=["40000", "32768", "negative", "float64", "float32", "bool"],
)
def test_labels_that_cannot_be_stored_exactly_are_refused(source, labels, match):
    target = source.path.parent / "labels.nii.gz"
    with pytest.raises(LabelsError, match=match):
        save_labels(labels, target, like=source)
    assert not target.exists()


@pytest.mark.parametrize(
    ("high", "dtype"),
    [(0, np.uint8), (254, np.uint8), (255, np.uint8), (256, np.int16), (32767, np.int16)],
)
def test_label_dtype_bounds(high, dtype):
    """Exactly at each bound: a mutant moving ``<=`` to ``<`` fails here."""
    assert writer.label_dtype(np.array([0, high], np.int64)) == np.dtype(dtype)


@pytest.mark.parametrize("value", [32768, 65535, -1])
def test_label_dtype_refuses_beyond_int16(value):
    with pytest.raises(LabelsError, match=f"{value}"):
        writer.label_dtype(np.array([0, value], np.int64))


def test_threshold_binarises_float_and_bool(source):
    prob = (fx.phantom().astype(np.float32) / 210).astype(np.float32)
    prob[0, 0, 0] = np.nan
    out = save_labels(prob, source.path.parent / "p.nii.gz", like=source, threshold=0.5)
    data = np.asanyarray(nib.load(str(out)).dataobj)
    assert data.dtype == np.uint8 and np.array_equal(data, (np.nan_to_num(prob) >= 0.5))
    out = save_labels(prob > 0.5, source.path.parent / "b.nii.gz", like=source, threshold=0.5)
    assert np.array_equal(np.asanyarray(nib.load(str(out)).dataobj), prob > 0.5)


# ------------------------------------------------------------------ rank and format


def test_4d_source_gets_a_3d_mask(tmp_path):
    data = np.stack([fx.phantom(seed=s) for s in range(3)], axis=-1)
    src = _load(
        fx.write_image(tmp_path / "dwi.nii.gz", data, pixdim=[-1, 0.8, 0.9, 2.5, 2.2, 0, 0, 0])
    )
    assert src.is_4d
    for labels in (_mask(), _mask()[..., None]):  # (x,y,z) and (x,y,z,1)
        out = save_labels(labels, tmp_path / "dwi_seg.nii.gz", like=src)
        raw, src_raw = _raw(out), _raw(src.path)
        assert int(raw["dim"][0]) == 3 and tuple(raw["dim"][1:4]) == fx.PHANTOM_SHAPE
        assert raw["pixdim"][:4].tobytes() == src_raw["pixdim"][:4].tobytes()
        for name in ("srow_x", "srow_y", "srow_z", "quatern_b", "qoffset_x", "qform_code"):
            assert raw[name].tobytes() == src_raw[name].tobytes()
        assert nib.load(str(out)).shape == fx.PHANTOM_SHAPE


def test_2d_source_gets_a_2d_mask(tmp_path):
    src = _load(fx.write_image(tmp_path / "slice.nii.gz", fx.phantom(shape=(7, 6))))
    for labels in (np.ones((7, 6), np.uint8), np.ones((7, 6, 1), np.uint8)):
        out = save_labels(labels, tmp_path / "slice_seg.nii.gz", like=src)
        assert int(_raw(out)["dim"][0]) == 2 and nib.load(str(out)).shape == (7, 6)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".NII.GZ"])
def test_compression_as_requested_and_deterministic(source, ext):
    folder = source.path.parent
    a = save_labels(_mask(), folder / f"a{ext}", like=source)
    b = save_labels(_mask(), folder / f"b{ext}", like=source)
    assert a.read_bytes() == b.read_bytes(), "same data must give the same bytes"
    gz = a.read_bytes()[:2] == b"\x1f\x8b"
    assert gz == ext.lower().endswith(".gz")
    payload = gzip.decompress(a.read_bytes()) if gz else a.read_bytes()
    assert payload[344:348] == b"n+1\x00" and len(payload) == 352 + _mask().size
    save_labels(_mask(), a, like=source)  # re-saving unchanged data
    assert a.read_bytes() == b.read_bytes()


def test_extensions_of_the_source_are_not_copied(tmp_path):
    img = nib.Nifti1Image(fx.phantom(), fx.oblique_affine())
    img.header.extensions.append(nib.nifti1.Nifti1Extension("afni", b"<AFNI_attributes/>"))
    img.to_filename(str(tmp_path / "afni.nii.gz"))
    src = _load(tmp_path / "afni.nii.gz")
    out = save_labels(_mask(), tmp_path / "afni_seg.nii.gz", like=src)
    assert len(nib.load(str(out)).header.extensions) == 0
    assert len(nib.load(str(src.path)).header.extensions) == 1


@pytest.mark.parametrize(
    "case", ["big-endian", "NIfTI-2", "almost-unit quaternion", "unicode and spaces"]
)
def test_odd_sources_get_exact_masks(case, tmp_path):
    path, _ = fx.LOADED[case][0](tmp_path)
    src = _load(path)
    out = save_labels(_mask(), path.with_name("m_" + path.name), like=src)
    back = _load(out)
    assert np.array_equal(back.data, _mask())
    assert np.array_equal(back.affine, src.affine)
    assert back.geometry.matches(src.geometry, atol=0)
    assert back.header.endianness == "<"
    assert type(back.nifti) is type(src.nifti)  # NIfTI-2 stays NIfTI-2 (geometry in float64)


def _raw(path: Path) -> np.ndarray:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        block = fh.read(348)
    return np.frombuffer(block, dtype=nib.Nifti1Header.template_dtype)[0]


@pytest.mark.parametrize("shape", [(12, 10, 8), (12, 10, 8, 5), (12, 10)])
def test_image3d_gives_models_the_source_grid(tmp_path, shape):
    """What every engine receives: 3D, file voxel order, the source's affine and codes."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, shape).astype(np.int16)
    affine = np.array([[0, 0, -1.5, 20], [-0.8, 0, 0, 30], [0, 2.0, 0, -40], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=1)
    path = tmp_path / "src.nii.gz"
    nib.save(img, path)
    vol = load(path)
    out = vol.image3d()
    spatial = shape[:3] if len(shape) >= 3 else shape + (1,)
    assert out.shape == spatial
    np.testing.assert_array_equal(out.affine, vol.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 1)
    expected = data.astype(np.float32).mean(axis=3) if len(shape) == 4 else data.reshape(spatial)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), expected, rtol=1e-6)


def test_replace_like_saves_an_edited_mask_in_place_but_never_an_image(tmp_path):
    # an image has many intensities (few integer values would read as a mask)
    img = nib.Nifti1Image(np.arange(600, dtype=np.int16).reshape(10, 6, 10), np.eye(4))
    img_path = tmp_path / "sub_T2w.nii.gz"
    nib.save(img, img_path)
    mask = np.zeros((10, 6, 10), np.uint8)
    mask[1:3, 1:3, 1] = 1
    mask_path = save_labels(mask, tmp_path / "sub_T2w_seg.nii.gz", like=img_path)
    before = mask_path.read_bytes()

    opened = load(mask_path)
    edited = mask.copy()
    edited[9, 5, 2] = 1
    with pytest.raises(SaveRefusedError, match="source image"):
        save_labels(edited, mask_path, like=opened)  # the default protects `like`
    save_labels(edited, mask_path, like=opened, replace_like=True)
    np.testing.assert_array_equal(np.asanyarray(nib.load(mask_path).dataobj), edited)
    history = list(writer.history_folder(mask_path).iterdir())
    assert [p.read_bytes() for p in history] == [before]

    with pytest.raises(SaveRefusedError, match="source image"):
        save_labels(edited, img_path, like=load(img_path), replace_like=True)
