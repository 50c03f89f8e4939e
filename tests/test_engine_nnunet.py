"""The nnU-Net engine gives stock nnU-Net's voxels, in any input orientation.

Models are real nnU-Net v2 folders (dataset.json, plans.json, fold_N/checkpoint_final.pth)
with random seeded weights: fidelity to stock nnU-Net does not need trained weights.
"""

from __future__ import annotations

import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_spineseg.engines import _nnunet_orientation as orient
from napari_spineseg.engines._nnunet_random import write_random_model
from napari_spineseg.engines.nnunet import NnunetModel
from napari_spineseg.errors import (
    Cancelled,
    ModelNotInstalledError,
    TaskError,
    UntrustedModelError,
)
from napari_spineseg.options import RunOptions
from napari_spineseg.phantom import cord_phantom
from napari_spineseg.progress import CancelToken, Reporter

SHAPE = (48, 48, 16)
ZOOMS = (0.8, 0.8, 2.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _cpu_threads(monkeypatch):
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet_models")
    return {
        "3d": write_random_model(root / "3d", folds=(0, 1), seed=10),
        "region": write_random_model(
            root / "region",
            labels={"background": 0, "sc": [1, 2], "lesion": 2},
            regions_class_order=[1, 2],
            channel_names={"0": "T2w", "1": "noNorm"},
            seed=20,
        ),
        "2d": write_random_model(
            root / "2d",
            configuration="2d",
            patch_size=(32, 32),
            spacing=(1.0, 1.0),
            mirror_axes=(0, 1),
            seed=30,
        ),
    }


def phantom(axcodes: str = "RAS", seed: int = 3):
    return cord_phantom(shape=SHAPE, zooms=ZOOMS, axcodes=axcodes, seed=seed)


def channels_for(kind: str, axcodes: str = "RAS") -> list[nib.Nifti1Image]:
    img, lab = phantom(axcodes)
    if kind != "region":
        return [img]
    mask = nib.Nifti1Image(
        (np.asanyarray(lab.dataobj) > 0).astype(np.int16), img.affine, img.header
    )
    return [img, mask]


# ----------------------------------------------------------------- stock nnU-Net reference
def stock_predictor(folder: Path, mirroring: bool, folds=None):
    """nnU-Net's predictor built the documented way (no code shared with the engine)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dj = load_json(str(folder / "dataset.json"))
    pm = PlansManager(load_json(str(folder / "plans.json")))
    folds = folds or sorted(int(p.name[5:]) for p in folder.glob("fold_[0-9]*"))
    cks = [
        torch.load(
            folder / f"fold_{f}" / "checkpoint_final.pth", map_location="cpu", weights_only=False
        )
        for f in folds
    ]
    cm = pm.get_configuration(cks[0]["init_args"]["configuration"])
    lm = pm.get_label_manager(dj)
    net = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        determine_num_input_channels(pm, cm, dj),
        lm.num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )
    net.load_state_dict(cks[0]["network_weights"])
    pred = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    pred.manual_initialization(
        net,
        pm,
        cm,
        [ck["network_weights"] for ck in cks],
        dj,
        "nnUNetTrainer",
        cks[0]["inference_allowed_mirroring_axes"],
    )
    return pred


def stock_npy(folder, images, mirroring, probabilities=False):
    """SCT's call: data.transpose(2, 1, 0)[None], spacing zooms[::-1] (images in RAS)."""
    pred = stock_predictor(folder, mirroring)
    data = np.stack([np.asanyarray(i.dataobj).transpose(2, 1, 0) for i in images])
    zooms = [float(z) for z in images[0].header.get_zooms()[:3]]
    out = pred.predict_single_npy_array(
        data.astype(np.float32), {"spacing": zooms[::-1]}, None, None, probabilities
    )
    if probabilities:
        return out[0].transpose(2, 1, 0), out[1].transpose(0, 3, 2, 1)
    return out.transpose(2, 1, 0)


def stock_files(folder, images, mirroring, tmp_path):
    """``nnUNetv2_predict``'s sequential file path (SimpleITKIO reads the .nii.gz)."""
    paths = []
    for c, img in enumerate(images):
        p = tmp_path / f"case_{c:04d}.nii.gz"
        nib.save(img, p)
        paths.append(str(p))
    pred = stock_predictor(folder, mirroring)
    (seg,) = pred.predict_from_files_sequential([paths], None, False, True)
    return seg.transpose(2, 1, 0)


# ----------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize("mirroring", [False, True], ids=["plain", "tta"])
@pytest.mark.parametrize("kind", ["3d", "region", "2d"])
def test_same_voxels_as_stock_nnunet(models, kind, mirroring, tmp_path):
    folder = models[kind]
    images = channels_for(kind)
    model = NnunetModel.load(folder, device="cpu", use_mirroring=mirroring)
    pred = model.predict(images if kind == "region" else images[0], return_probabilities=True)
    labels = pred.maps["labels"]

    ref_labels, ref_probs = stock_npy(folder, images, mirroring, probabilities=True)
    assert labels.shape == images[0].shape
    assert len(np.unique(labels)) > 1  # a meaningful comparison, not all background
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(labels, stock_files(folder, images, mirroring, tmp_path))

    # probabilities: softmax per class (background dropped) or sigmoid per region
    heads = model.head_names
    expected_names = heads if model.has_regions else heads[1:]
    assert list(pred.probabilities) == list(expected_names)
    offset = 0 if model.has_regions else 1
    for i, name in enumerate(expected_names):
        np.testing.assert_array_equal(pred.probabilities[name], ref_probs[i + offset])

    # predict_voxels is the same computation without reorientation (RAS input here)
    data = np.stack([np.asanyarray(i.dataobj) for i in images])
    vox, _ = model.predict_voxels(data, images[0].header.get_zooms())
    np.testing.assert_array_equal(vox, labels)

    info = pred.info
    assert info["mirroring"] is mirroring
    assert info["folds"] == ([0, 1] if kind == "3d" else [0])
    assert info["checkpoint"] == "checkpoint_final.pth"
    assert info["device"] == "cpu" and info["tile_step_size"] == 0.5
    assert info["nnunetv2"].startswith("2.")
    assert set(info["timings"]) >= {"preprocess_s", "inference_s", "export_s", "total_s"}


def test_region_model_classes_and_groups(models):
    model = NnunetModel.load(models["region"], device="cpu")
    assert model.has_regions and model.num_input_channels == 2
    # regions_class_order [1, 2]: value 1 is painted by "sc", value 2 by "lesion"
    assert model.label_names == {1: "sc", 2: "lesion"}
    assert model.groups == {"sc": (1, 2), "lesion": (2,)}
    pred = model.predict(channels_for("region"), return_probabilities=True)
    assert pred.class_groups("labels") == {"sc": (1, 2), "lesion": (2,)}
    # label 2 where the lesion sigmoid wins, 1 where only sc > 0.5 (nnU-Net's rule)
    sc, lesion = pred.probabilities["sc"], pred.probabilities["lesion"]
    expected = np.where(lesion > 0.5, 2, np.where(sc > 0.5, 1, 0))
    np.testing.assert_array_equal(pred.maps["labels"], expected)


def test_single_fold_and_fold_all(models, tmp_path):
    model = NnunetModel.load(models["3d"], folds=(1,), device="cpu")
    img = phantom()[0]
    got = model.predict(img).maps["labels"]
    pred = stock_predictor(models["3d"], False, folds=[1])
    ref = pred.predict_single_npy_array(
        np.asanyarray(img.dataobj).transpose(2, 1, 0)[None].astype(np.float32),
        {"spacing": [float(z) for z in img.header.get_zooms()[::-1]]},
    )
    np.testing.assert_array_equal(got, ref.transpose(2, 1, 0))

    # a model shipped as fold_all only: used by default and with folds=("all",)
    folder = write_random_model(tmp_path / "all", folds=("all",), seed=10)
    assert NnunetModel.load(folder, device="cpu").folds == ("all",)
    assert NnunetModel.load(folder, folds=("all",), device="cpu").folds == ("all",)


def test_fast_profile_is_stock_nnunet_on_the_first_fold_with_step_075(
    models, tmp_path, monkeypatch
):
    """``profile="fast"``: fold 0 only, tile step 0.75; the voxels of stock nnU-Net run so,
    and the result says so (notes, settings, engine info)."""
    from napari_spineseg import api, segmentation
    from napari_spineseg.models import store

    folder = models["3d"]
    img = phantom()[0]
    model = NnunetModel.load(folder, RunOptions(device="cpu", profile="fast"))
    assert model.folds == (0,) and model.tile_step_size == 0.75
    got = model.predict(img).maps["labels"]
    pred = stock_predictor(folder, False, folds=[0])
    pred.tile_step_size = 0.75
    ref = pred.predict_single_npy_array(
        np.asanyarray(img.dataobj).transpose(2, 1, 0)[None].astype(np.float32),
        {"spacing": [float(z) for z in img.header.get_zooms()[::-1]]},
    )
    np.testing.assert_array_equal(got, ref.transpose(2, 1, 0))
    sct = NnunetModel.load(folder, RunOptions(device="cpu"))
    assert sct.folds == (0, 1) and sct.tile_step_size == 0.5 and sct.notes() == []
    # explicit keywords (TotalSpineSeg's use) win over the profile
    assert NnunetModel.load(
        folder, RunOptions(profile="fast"), folds=(1,), device="cpu"
    ).folds == (1,)

    monkeypatch.setenv(store.ENV_MODELS_DIR, str(tmp_path / "store"))
    segmentation.clear_engine_cache()
    path = tmp_path / "img.nii.gz"
    nib.save(img, path)
    res = api.segment(path, model=folder, trust=True, device="cpu", profile="fast")
    assert res.provenance["settings"]["profile"] == "fast"
    assert res.provenance["engine"]["folds"] == [0]
    assert res.provenance["engine"]["tile_step_size"] == 0.75
    assert res.provenance["notes"] == [
        "inference profile 'fast': nnU-Net ran fold 0 only (of 0, 1) with tile step 0.75; "
        "sct_deepseg runs every fold with tile step 0.5, so the masks may differ slightly"
    ]
    full = api.segment(path, model=folder, trust=True, device="cpu")  # another cache entry
    assert full.provenance["engine"]["folds"] == [0, 1] and full.provenance["notes"] == []
    segmentation.clear_engine_cache()


# -------------------------------------------------------------------------- orientation
@pytest.mark.parametrize(
    "sct, nibabel_code",
    [("LPI", "RAS"), ("RPI", "LAS"), ("AIL", "PSR"), ("SAL", "IPR"), ("RAS", "LPI")],
)
def test_sct_orientation_names_are_the_opposite_of_nibabel(sct, nibabel_code):
    assert orient.sct_to_nibabel(sct) == nibabel_code
    assert orient.nibabel_to_sct(nibabel_code) == sct


def test_orientation_converter_rejects_bad_codes():
    for bad in ("LP", "LLI", "XYZ", "LPIS"):
        with pytest.raises(ValueError, match="orientation"):
            orient.sct_to_nibabel(bad)


def _labels_in_ras(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    img = nib.Nifti1Image(labels, affine)
    return np.asanyarray(nib.as_closest_canonical(img).dataobj)


@pytest.mark.parametrize("image_orientation", [None, "AIL"], ids=["default-RAS", "sct-AIL"])
def test_same_labels_in_world_space_for_any_input_orientation(models, tmp_path, image_orientation):
    folder = models["3d"]
    if image_orientation:
        folder = write_random_model(
            tmp_path / "ail", folds=(0, 1), seed=10, image_orientation=image_orientation
        )
    model = NnunetModel.load(folder, device="cpu")
    assert model.orientation == ("PSR" if image_orientation else "RAS")
    results = {}
    for code in ("RAS", "PSR", "LPI", "AIL", "IRP"):
        img = phantom(code)[0]
        assert "".join(nib.aff2axcodes(img.affine)) == code
        labels = model.predict(img).maps["labels"]
        assert labels.shape == img.shape  # back on the input's exact grid
        results[code] = _labels_in_ras(labels, img.affine)
    for code, labels in results.items():
        np.testing.assert_array_equal(labels, results["RAS"], err_msg=code)
    assert len(np.unique(results["RAS"])) > 1

    # what the model saw is the image in its own orientation, fed the SCT way
    img = phantom("LPI")[0]
    in_model = img.as_reoriented(orient.orientation_transforms(img.affine, model.orientation)[0])
    ref = stock_npy(folder, [in_model], mirroring=False)
    np.testing.assert_array_equal(
        _labels_in_ras(ref, in_model.affine),
        _labels_in_ras(model.predict(img).maps["labels"], img.affine),
    )


def test_orientation_override_and_bad_image_orientation(models, tmp_path):
    model = NnunetModel.load(models["3d"], device="cpu", orientation="psr")
    assert model.orientation == "PSR"
    img = phantom("RAS")[0]
    in_model = img.as_reoriented(orient.orientation_transforms(img.affine, "PSR")[0])
    np.testing.assert_array_equal(
        _labels_in_ras(model.predict(img).maps["labels"], img.affine),
        _labels_in_ras(stock_npy(models["3d"], [in_model], False), in_model.affine),
    )
    folder = write_random_model(tmp_path / "bad", image_orientation="LPX")
    with pytest.raises(ModelNotInstalledError, match="image_orientation"):
        NnunetModel.load(folder, device="cpu")


# ------------------------------------------------------------------ progress and cancel
def test_progress_is_reported_per_tile_for_every_fold(models):
    model = NnunetModel.load(models["3d"], device="cpu")
    seen = []
    model.predict(phantom()[0], Reporter(seen.append))
    stages = [p.stage for p in seen]
    assert stages[0] == "preprocessing" and "export" in stages and stages[-1] == "done"
    tiles = [p for p in seen if p.stage.startswith("fold")]
    n_tiles = tiles[0].total
    assert n_tiles > 1
    assert [p.stage for p in tiles] == [
        f"fold {f}/2 tile {t}/{n_tiles}" for f in (1, 2) for t in range(1, n_tiles + 1)
    ]
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancel_stops_within_one_tile(models, monkeypatch):
    model = NnunetModel.load(models["3d"], device="cpu", use_mirroring=True)
    net = model._predictor.network
    forwards = []
    original = net.forward
    monkeypatch.setattr(net, "forward", lambda x: forwards.append(1) or original(x))
    token = CancelToken()
    seen = []

    def callback(p):
        seen.append(p)
        if p.step == 3:
            token.cancel()

    threads_before = threading.active_count()
    with pytest.raises(Cancelled):
        model.predict(phantom()[0], Reporter(callback, token))
    # 3 tiles started (8 forwards each with mirroring), none after the cancel
    assert len(forwards) == 3 * 8
    assert [p.stage for p in seen if p.step][-1].endswith("tile 3/" + str(seen[-1].total))
    assert threading.active_count() == threads_before  # tile producer thread ended
    # the model is still usable after a cancel
    assert model.predict(phantom()[0]).maps["labels"].shape == SHAPE


def test_out_of_memory_on_gpu_falls_back_to_cpu(models, monkeypatch):
    model = NnunetModel.load(models["3d"], device="cpu")
    reference = model.predict(phantom()[0]).maps["labels"]

    # Pretend the model lives on a GPU whose first forward pass runs out of memory.
    used = []
    real_use_device = model._use_device

    def use_device(device):
        used.append(device.type)
        real_use_device(torch.device("cpu"))  # this machine has no GPU to really use

    monkeypatch.setattr(model, "_use_device", use_device)
    model.device = torch.device("cuda")
    net = model._predictor.network
    original = net.forward
    calls = []

    def forward(x):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x)

    monkeypatch.setattr(net, "forward", forward)
    pred = model.predict(phantom()[0])
    np.testing.assert_array_equal(pred.maps["labels"], reference)
    assert pred.info["device"] == "cpu"
    assert used[:2] == ["cuda", "cpu"] and used[-1] == "cuda"  # next run tries the GPU again
    (message,) = pred.info["messages"]
    assert "out of memory" in message and "CPU" in message


def test_other_errors_are_not_swallowed_by_the_fallback(models, monkeypatch):
    model = NnunetModel.load(models["3d"], device="cpu")
    model.device = torch.device("cuda")
    monkeypatch.setattr(model, "_use_device", lambda d: None)
    net = model._predictor.network

    def forward(x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(net, "forward", forward)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        model.predict(phantom()[0])


# ------------------------------------------------------------------ trust and bad folders
def test_untrusted_pickle_checkpoint_is_refused(models):
    with pytest.raises(UntrustedModelError, match="pickle") as err:
        NnunetModel.load(models["3d"], device="cpu", trust=False)
    assert "checkpoint_final.pth" in str(err.value) and "trust=True" in str(err.value)


def test_untrusted_tensor_only_checkpoint_loads_safely(models, tmp_path):
    folder = write_random_model(tmp_path / "safe", folds=(0, 1), seed=10, pickled_extras=False)
    safe = NnunetModel.load(folder, device="cpu", trust=False)
    trusted = NnunetModel.load(models["3d"], device="cpu")
    img = phantom()[0]
    np.testing.assert_array_equal(
        safe.predict(img).maps["labels"], trusted.predict(img).maps["labels"]
    )


def test_missing_and_corrupt_model_files(models, tmp_path):
    import shutil

    with pytest.raises(ModelNotInstalledError, match="does not exist"):
        NnunetModel.load(tmp_path / "nowhere")

    folder = tmp_path / "copy"
    shutil.copytree(models["3d"], folder)
    with pytest.raises(ModelNotInstalledError, match=r"fold_5[/\\]checkpoint_final.pth"):
        NnunetModel.load(folder, folds=(5,), device="cpu")

    # only checkpoint_best.pth in a fold: SCT's fallback
    (folder / "fold_1" / "checkpoint_final.pth").rename(folder / "fold_1" / "checkpoint_best.pth")
    with pytest.raises(ModelNotInstalledError, match="checkpoint_final.pth") as err:
        NnunetModel.load(folder, folds=(0, 1), checkpoint="final", device="cpu")
    assert str(folder) in str(err.value)
    assert NnunetModel.load(folder, folds=(1,), device="cpu").checkpoint_name == (
        "checkpoint_best.pth"
    )

    ck = folder / "fold_0" / "checkpoint_final.pth"
    ck.write_bytes(ck.read_bytes()[:2000])  # truncated download
    with pytest.raises(ModelNotInstalledError, match="corrupt") as err:
        NnunetModel.load(folder, folds=(0,), device="cpu")
    assert "fold_0" in str(err.value)

    (folder / "plans.json").unlink()
    with pytest.raises(ModelNotInstalledError, match="plans.json is missing"):
        NnunetModel.load(folder, device="cpu")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text("{}")
    (empty / "plans.json").write_text("{}")
    with pytest.raises(ModelNotInstalledError, match="no fold_"):
        NnunetModel.load(empty, device="cpu")


def test_wrong_number_of_channels_is_a_task_error(models):
    model = NnunetModel.load(models["region"], device="cpu")
    with pytest.raises(TaskError, match="2 input channel"):
        model.predict(phantom()[0])
    img, lab = phantom()
    other = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), img.affine)
    with pytest.raises(TaskError, match="same voxel grid"):
        model.predict([img, other])


# ------------------------------------------------- trained tiny models (tests/data/models)
MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"


def _manifest() -> dict:
    import json

    path = MODELS_DIR / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


NNUNET_TEST_MODELS = sorted(_manifest())


@pytest.fixture(scope="module")
def trained_model_folder(tmp_path_factory):
    """name -> model folder (archives are unpacked once per module)."""
    import zipfile

    manifest = _manifest()
    root = tmp_path_factory.mktemp("trained")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in cache:
            return cache[name]
        entry = manifest[name]
        if entry.get("archive"):
            archive = MODELS_DIR / entry["archive"]
            if not archive.is_file():
                pytest.skip(f"{archive} is not built yet (scripts/build_test_models.py)")
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(root / name)
            folder = root / name / entry["archive_prefix"]
        else:
            folder = MODELS_DIR / entry["folder"]
            if not folder.is_dir():
                pytest.skip(f"{folder} is not built yet (scripts/build_test_models.py)")
        cache[name] = folder
        return folder

    return get


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else 2.0 * np.logical_and(a, b).sum() / denom


@pytest.mark.skipif(not NNUNET_TEST_MODELS, reason="tests/data/models/manifest.json not built")
@pytest.mark.parametrize("name", NNUNET_TEST_MODELS)
@pytest.mark.parametrize("axcodes", ["RAS", "PSR"])
def test_trained_tiny_models_segment_the_phantom(trained_model_folder, name, axcodes):
    """Dice >= 0.95 against the phantom's truth, also for a non-canonical input."""
    entry = _manifest()[name]
    model = NnunetModel.load(trained_model_folder(name), device="cpu")
    assert model.checkpoint_name == entry["checkpoint_name"]
    assert [str(f) for f in model.folds] == entry["folds"]
    seed = entry["heldout_seeds"][0]
    img, lab = cord_phantom(seed=seed, axcodes=axcodes, **entry["phantom"])
    raw = np.asanyarray(lab.dataobj)
    truth = np.zeros(raw.shape, np.uint8)
    for src, dst in entry["label_map"].items():
        truth[raw == int(src)] = dst
    labels = model.predict(img).maps["labels"]
    assert labels.shape == img.shape
    for cls, values in entry["eval_classes"].items():
        d = _dice(np.isin(labels, values), np.isin(truth, values))
        assert d >= 0.95, f"{name} {cls}: Dice {d:.3f} in {axcodes}"
