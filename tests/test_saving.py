"""``saving.save_mask``: the one save path of ``api.save`` and the Review widget's Save.

A mask from a model run gets a fresh sidecar with the run's ``GeneratedBy`` entry; a mask
opened from disk keeps the sidecar it came with; a correction record is appended either
way; a batch's extra keys land where SCT's tools look for them. The source image is
never overwritten.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_spineseg import api, sidecar
from napari_spineseg.correction import correction_record
from napari_spineseg.errors import SaveRefusedError
from napari_spineseg.io import load
from napari_spineseg.saving import mask_sidecar, save_mask

PROVENANCE = {
    "version": "1.2.3",
    "code_url": "https://example.org/napari-spineseg",
    "task": "seg_sc_contrast_agnostic",
    "model_url": "https://example.org/model.zip",
    "model_sha256": "ab" * 32,
    "settings": {"threshold": 0.5},
    "device": "cpu",
}
RECORD = correction_record("Jane Doe", date="2026-01-01 10:00:00", classes={1: "sc"})


@pytest.fixture
def image(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return load(path)


def _labels(volume) -> np.ndarray:
    labels = np.zeros(volume.geometry.file_shape, np.uint8)
    labels[2:4, 3:5, 1:4] = 1
    return labels


def test_a_run_result_gets_a_fresh_sidecar_with_its_entry(image, tmp_path):
    target = tmp_path / "sub-01_T2w_seg.nii.gz"
    sidecar.write(target, {"GeneratedBy": [{"Name": "stale"}], "Stale": True})
    written = save_mask(
        _labels(image),
        target,
        like=image,
        classes={1: "sc"},
        provenance=PROVENANCE,
        output="_seg",
        loaded={"GeneratedBy": [{"Name": "ignored: the run replaces it"}]},
        entry_extra={"RunKey": "k1"},
        sidecar_extra={"Sources": ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]},
    )
    assert written == target
    np.testing.assert_array_equal(np.asarray(load(target).data), _labels(image))
    data = json.loads(sidecar.sidecar_path(target).read_text())
    entry = {**sidecar.generated_by(PROVENANCE, output="_seg"), "Classes": {"1": "sc"}}
    assert data == {
        "GeneratedBy": [{**entry, "RunKey": "k1"}],
        "Sources": ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"],
    }


def test_an_opened_mask_keeps_its_sidecar_and_gets_the_record(image):
    loaded = {"GeneratedBy": [{"Name": "Manual", "Author": "first"}], "Note": "kept"}
    data = mask_sidecar(classes={1: "sc"}, loaded=loaded, record=RECORD)
    assert data == {
        "GeneratedBy": [{"Name": "Manual", "Author": "first"}, RECORD],
        "Note": "kept",
        "SpatialReference": "orig",
    }
    assert loaded["GeneratedBy"] == [{"Name": "Manual", "Author": "first"}]  # untouched
    assert mask_sidecar(classes={1: "sc"}) == {}


def test_the_source_image_is_never_replaced(image):
    before = image.path.read_bytes()
    with pytest.raises(SaveRefusedError, match=r"is the source image: refusing to overwrite"):
        save_mask(_labels(image), image.path, like=image, classes={1: "sc"})
    assert image.path.read_bytes() == before
    assert not sidecar.sidecar_path(image.path).exists()


def test_api_save_passes_the_batch_extras_to_every_output(image, tmp_path):
    from napari_spineseg.catalog import get_task
    from napari_spineseg.segmentation import LabelOutput, SegmentationResult

    labels = _labels(image)
    outputs = {
        suffix: LabelOutput(suffix=suffix, labels=data, classes={1: name}, colors={})
        for suffix, data, name in (
            ("_sc_seg", labels, "sc"),
            ("_lesion_seg", labels * 0, "lesion"),
        )
    }
    result = SegmentationResult(outputs, {}, dict(PROVENANCE), image, get_task("lesion_sci_t2"))
    written = api.save(
        result,
        tmp_path,
        entry_extra={"RunKey": "k2"},
        sidecar_extra={"Sources": ["s"]},
        output_extra={"_lesion_seg": {"Only": "lesion", "RunKey": "k3"}},
    )
    assert [p.name for p in written] == [
        "sub-01_T2w_sc_seg.nii.gz",
        "sub-01_T2w_lesion_seg.nii.gz",
    ]
    for path, (suffix, output) in zip(written, outputs.items(), strict=True):
        data = json.loads(sidecar.sidecar_path(path).read_text())
        (entry,) = data["GeneratedBy"]
        assert entry["Output"] == suffix
        # output_extra goes to its own output's entry only, over entry_extra
        assert (entry["RunKey"], entry.get("Only")) == (
            ("k3", "lesion") if suffix == "_lesion_seg" else ("k2", None)
        )
        assert entry["Classes"] == {str(k): v for k, v in output.classes.items()}
        assert data["Sources"] == ["s"]
        np.testing.assert_array_equal(np.asarray(load(path).data), output.labels)
