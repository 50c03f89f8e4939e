"""TotalSpineSeg engine: same result as the totalspineseg package, right labels, any orientation.

The models are the tiny step-1/step-2 nnU-Nets of ``tests/data/models/totalspineseg``
(built by ``scripts/build_tss_models.py`` on :mod:`napari_spineseg.spine_phantom`),
packed as the real release zips and installed the way the package installs them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("totalspineseg", reason="needs the optional 'totalspineseg' package")

from napari_spineseg.engines.totalspineseg import (  # noqa: E402
    LEVEL_CLASSES,
    TSS_CLASSES,
    TotalSpineSegModel,
    find_model_folders,
)
from napari_spineseg.errors import ModelNotInstalledError, SpinesegError  # noqa: E402
from napari_spineseg.options import RunOptions
from napari_spineseg.progress import CancelToken, Reporter  # noqa: E402
from napari_spineseg.spine_phantom import DISC_LEVELS, DISCS, VERTEBRAE, spine_phantom  # noqa: E402

MODELS = Path(__file__).parent / "data" / "models" / "totalspineseg"
RELEASE = "r20251124"
ZIPS = (
    MODELS / f"Dataset101_TotalSpineSeg_step1_{RELEASE}.zip",
    MODELS / f"Dataset102_TotalSpineSeg_step2_{RELEASE}.zip",
)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    """A TotalSpineSeg data folder, laid out as its ``install_weights`` extracts the zips."""
    data = tmp_path_factory.mktemp("tss_data")
    results = data / "nnUNet" / "results" / RELEASE
    for z in ZIPS:
        with zipfile.ZipFile(z) as zf:
            zf.extractall(results)
    return data


@pytest.fixture(scope="module")
def model(data_folder) -> TotalSpineSegModel:
    return TotalSpineSegModel.load(data_folder, device="cpu")


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory) -> Path:
    """An anisotropic, non-canonical (PSR) phantom on disk: exercises every resampling."""
    img, _ = spine_phantom(zooms=(0.9, 0.9, 1.2), axcodes="PSR", seed=7)
    path = tmp_path_factory.mktemp("tss_in") / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    return path


@pytest.fixture(scope="module")
def step2_prediction(model, phantom_file):
    return model.predict(nib.load(phantom_file), Reporter(), RunOptions(label_vert=True))


@pytest.fixture(scope="module")
def step2_prediction_1mm(model):
    # 1 mm but non-canonical (PSR): the tiny stand-in step-1 model misses the C7-T1
    # landmark disc on the resampled anisotropic phantom (so does the package's own
    # pipeline: see the fidelity tests), and step 2's labelling needs that landmark.
    img, _ = spine_phantom(axcodes="PSR", seed=7)
    return model.predict(img, Reporter(), RunOptions(label_vert=True))


def _run_package_inference(data_folder: Path, image: Path, out: Path, step1_only: bool):
    """``totalspineseg.inference.inference`` as SCT calls it, with two narrow patches.

    * ``add_trainer`` would copy auglab's trainer file into the installed nnunetv2 (a
      write into site-packages); the trainer class is only needed to *train*.
    * nnU-Net's ``initialize_from_trained_model_folder`` looks the checkpoint's trainer
      class up by importing every trainer module, which fails here (torchvision cannot be
      imported with the CPU build of torch). It is replaced by the equivalent
      ``manual_initialization`` (network built from plans.json, same weights); the rest of
      the package's pipeline -- files, process pools, nnU-Net's file-based prediction --
      runs unchanged.
    * ``tqdm``'s ``process_map`` (one process pool per step, ``max_workers=1``) becomes a
      plain ``map`` over the same files: forking this process after torch has started its
      OpenMP threads deadlocks (SCT avoids it by switching multiprocessing to spawn, which
      costs a package import per step). nnU-Net's own spawn pools are kept.
    """
    import sys

    import torch
    import totalspineseg.inference as tss_inference
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    def initialize(self, folder, use_folds, checkpoint_name="checkpoint_final.pth"):
        import json

        dj = json.loads((Path(folder) / "dataset.json").read_text())
        pm = PlansManager(json.loads((Path(folder) / "plans.json").read_text()))
        params, ck = [], None
        for f in use_folds:
            ck = torch.load(
                Path(folder) / f"fold_{f}" / checkpoint_name,
                map_location="cpu",
                weights_only=False,
            )
            params.append(ck["network_weights"])
        cm = pm.get_configuration(ck["init_args"]["configuration"])
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            determine_num_input_channels(pm, cm, dj),
            pm.get_label_manager(dj).num_segmentation_heads,
            allow_init=False,
            deep_supervision=False,
        )
        net.load_state_dict(params[0])
        self.manual_initialization(
            net, pm, cm, params, dj, ck["trainer_name"], ck["inference_allowed_mirroring_axes"]
        )

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(tss_inference, "add_trainer", lambda *a, **k: None)
        for mod in [m for n, m in sys.modules.items() if n.startswith("totalspineseg.")]:
            if hasattr(mod, "process_map"):
                mp.setattr(mod, "process_map", _serial_map)
        mp.setattr(nnUNetPredictor, "initialize_from_trained_model_folder", initialize)
        tss_inference.inference(
            input_path=image,
            output_path=out,
            data_path=data_folder,
            default_release=RELEASE,
            device=torch.device("cpu"),
            step1_only=step1_only,
            keep_only=["step1_levels", "step1_output" if step1_only else "step2_output"],
            max_workers=1,
            max_workers_nnunet=1,
            quiet=True,
        )
    finally:
        mp.undo()


def _serial_map(fn, *iterables, **_kwargs):
    return list(map(fn, *iterables))


def _read(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# ----------------------------------------------------------------------------- fidelity
@pytest.mark.slow
def test_step1_equals_the_package_inference(model, data_folder, phantom_file, tmp_path):
    ours = model.predict(nib.load(phantom_file), Reporter(), RunOptions(label_vert=False))
    _run_package_inference(data_folder, phantom_file, tmp_path, step1_only=True)
    name = phantom_file.name
    theirs_all = _read(tmp_path / "step1_output" / name)
    theirs_levels = _read(tmp_path / "step1_levels" / name)
    assert ours.maps["all"].shape == theirs_all.shape == nib.load(phantom_file).shape
    np.testing.assert_array_equal(ours.maps["all"], theirs_all)
    np.testing.assert_array_equal(ours.maps["discs"], theirs_levels)
    # A real comparison, not two empty maps.
    assert len(np.unique(theirs_all)) >= 5 and np.count_nonzero(theirs_levels) >= 1


@pytest.mark.slow
def test_step2_equals_the_package_inference(step2_prediction, data_folder, phantom_file, tmp_path):
    _run_package_inference(data_folder, phantom_file, tmp_path, step1_only=False)
    name = phantom_file.name
    np.testing.assert_array_equal(
        step2_prediction.maps["all"], _read(tmp_path / "step2_output" / name)
    )
    np.testing.assert_array_equal(
        step2_prediction.maps["discs"], _read(tmp_path / "step1_levels" / name)
    )


# ----------------------------------------------------------------------------- labels
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module")
def ras_case(model):
    img, labels = spine_phantom(axcodes="RAS", seed=7)
    truth = np.asanyarray(labels["tss"].dataobj)
    return img, truth, model.predict(img, Reporter(), RunOptions(label_vert=False))


@pytest.mark.slow
def test_step1_labels_on_the_phantom(ras_case):
    _, truth, pred = ras_case
    out = pred.maps["all"]
    assert out.shape == truth.shape and out.dtype == np.uint8
    assert set(np.unique(out)) - {0} <= set(TSS_CLASSES)
    assert _dice(out == 1, truth == 1) > 0.9  # cord
    assert _dice(out == 2, truth == 2) > 0.8  # canal (CSF)
    for disc, value in DISCS.items():  # discs named from the C2-C3 / C7-T1 landmarks
        assert _dice(out == value, truth == value) > 0.6, disc
    # Step 1 does not tell vertebrae apart: C1 -> 11, every other vertebra -> 50.
    c1 = out[truth == VERTEBRAE["C1"]]
    assert np.mean(c1 == 11) > 0.5
    others = np.isin(truth, [v for n, v in VERTEBRAE.items() if n != "C1"])
    assert np.mean(out[others] == 50) > 0.8
    assert pred.classes["all"][63] == "disc C2-C3" and pred.classes["all"][1] == "spinal cord"


@pytest.mark.slow
def test_disc_levels_sit_on_the_posterior_tip_of_their_disc(ras_case):
    _, truth, pred = ras_case
    levels = pred.maps["discs"]
    for disc, level in DISC_LEVELS.items():
        points = np.argwhere(levels == level)
        assert len(points) == 1, (disc, len(points))
        x, y, z = points[0]
        zs = np.nonzero((truth == DISCS[disc]).any(axis=(0, 1)))[0]
        assert zs.min() - 1 <= z <= zs.max() + 1, disc
        disc_y = np.nonzero((truth == DISCS[disc]).any(axis=(0, 2)))[0]
        assert y <= disc_y.min() + 2, disc  # posterior tip (y runs posterior -> anterior)
    assert pred.classes["discs"][3] == "C2-C3"
    assert set(LEVEL_CLASSES) >= set(np.unique(levels)) - {0}


@pytest.mark.slow
def test_step2_labels_every_vertebra(step2_prediction_1mm):
    _, labels = spine_phantom(axcodes="PSR", seed=7)
    truth = np.asanyarray(labels["tss"].dataobj)
    out = step2_prediction_1mm.maps["all"]
    assert out.shape == truth.shape
    assert set(np.unique(out)) - {0} <= set(TSS_CLASSES)
    assert _dice(out == 1, truth == 1) > 0.85
    correct = [n for n, v in VERTEBRAE.items() if _dice(out == v, truth == v) > 0.5]
    assert len(correct) >= 6, correct


# ----------------------------------------------------------------------------- orientation
@pytest.mark.slow
def test_same_labels_in_world_space_for_psr_and_ras(model, ras_case):
    from nibabel import orientations as nio

    ras_img, _, ras_pred = ras_case
    psr_img, _ = spine_phantom(axcodes="PSR", seed=7)
    psr_pred = model.predict(psr_img, Reporter(), RunOptions(label_vert=False))
    to_ras = nio.ornt_transform(nio.io_orientation(psr_img.affine), nio.axcodes2ornt("RAS"))
    for key in ("all", "discs"):
        back = nio.apply_orientation(psr_pred.maps[key], to_ras)
        np.testing.assert_array_equal(back, ras_pred.maps[key], err_msg=key)


# ----------------------------------------------------------------------------- errors
@pytest.mark.slow
def test_empty_step1_raises_a_spineseg_error_naming_the_file(model, phantom_file, monkeypatch):
    def nothing(data, zooms, report=None, return_probabilities=False):
        return np.zeros(data.shape[1:], np.uint8), None

    monkeypatch.setattr(model.step1, "predict_voxels", nothing)
    with pytest.raises(SpinesegError, match="step 1") as err:
        model.predict(nib.load(phantom_file), Reporter())
    assert phantom_file.name in str(err.value)


@pytest.mark.slow
def test_cancel_stops_before_any_work(model, phantom_file):
    from napari_spineseg.errors import Cancelled

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        model.predict(nib.load(phantom_file), Reporter(cancel=token), RunOptions(label_vert=True))


def test_missing_package_says_how_to_install(monkeypatch):
    import sys

    import napari_spineseg.engines.totalspineseg as engine

    monkeypatch.setattr(engine, "_TSS", None)
    monkeypatch.setitem(sys.modules, "totalspineseg.utils.average4d", None)
    with pytest.raises(SpinesegError, match=r"pip install 'napari-spineseg\[totalspineseg\]'"):
        engine.tss_functions()


def test_missing_weights_name_the_expected_layout(tmp_path):
    (tmp_path / "nnUNet" / "results" / RELEASE / "Dataset101_TotalSpineSeg_step1").mkdir(
        parents=True
    )
    with pytest.raises(ModelNotInstalledError, match="Dataset102_TotalSpineSeg_step2"):
        find_model_folders(tmp_path)


def test_release_zips_have_the_real_layout():
    total = 0
    for z, ds, channels in zip(ZIPS, ("Dataset101", "Dataset102"), (1, 2)):
        total += z.stat().st_size
        with zipfile.ZipFile(z) as zf:
            names = zf.namelist()
            prefix = (
                f"{ds}_TotalSpineSeg_step{channels}/nnUNetTrainerDAExt__nnUNetPlans__3d_fullres"
            )
            assert f"{prefix}/fold_0/checkpoint_final.pth" in names
            import json

            dj = json.loads(zf.read(f"{prefix}/dataset.json"))
            assert len(dj["channel_names"]) == channels
            assert dj["labels"]["cord"] == (9 if channels == 1 else 11)
    assert total < 400 * 1024
