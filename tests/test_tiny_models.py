"""The committed tiny nnU-Net models: release layouts, checksums, and real predictions.

Each archive in tests/data/models/ must unpack to the layout of the release it stands in
for, its checkpoints must hold the weights recorded in manifest.json, and loading it the
way the plugin does (plans.json -> get_network_from_plans -> manual_initialization, no
trainer-class lookup) must segment a held-out phantom with Dice >= 0.95.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_spineseg.phantom import cord_phantom
from release_server import MODELS_DIR, ReleaseServer

MANIFEST = json.loads((MODELS_DIR / "manifest.json").read_text())
NAMES = sorted(MANIFEST)
MIN_DICE = 0.95


def _weights_sha256(state_dict) -> str:
    # Same definition as scripts/tinynet.py:weights_sha256 (names, dtypes, shapes, bytes).
    h = hashlib.sha256()
    for k, v in state_dict.items():
        a = v.detach().cpu().contiguous().numpy()
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """Trainer folder of every model, unpacked from its archive where it has one."""
    out = {}
    for name, entry in MANIFEST.items():
        if entry.get("archive"):
            dest = tmp_path_factory.mktemp(name)
            with zipfile.ZipFile(MODELS_DIR / entry["archive"]) as zf:
                zf.extractall(dest)
            out[name] = dest / entry["archive_prefix"] if entry["archive_prefix"] else dest
        else:
            out[name] = MODELS_DIR / entry["folder"]
    return out


def _load(folder: Path, folds=None):
    """Predictor built from plans, exactly as the plugin's engine does (no trainer lookup)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dj = json.loads((folder / "dataset.json").read_text())
    pm = PlansManager(json.loads((folder / "plans.json").read_text()))
    folds = folds or sorted(p.name[5:] for p in folder.glob("fold_*"))
    ckpts = []
    for f in folds:
        (path,) = [
            p
            for n in ("checkpoint_final.pth", "checkpoint_best.pth")
            if (p := folder / f"fold_{f}" / n).exists()
        ][:1]
        ckpts.append(torch.load(path, map_location="cpu", weights_only=False))
    cm = pm.get_configuration(ckpts[0]["init_args"]["configuration"])
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
    pred = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    pred.manual_initialization(
        net,
        pm,
        cm,
        [c["network_weights"] for c in ckpts],
        dj,
        ckpts[0]["trainer_name"],
        ckpts[0].get("inference_allowed_mirroring_axes"),
    )
    return pred, lm


def _heldout_case(entry: dict, seed: int):
    img, lab = cord_phantom(seed=seed, axcodes="RAS", **entry["phantom"])
    x = np.asarray(img.dataobj, np.float32).transpose(2, 1, 0)[None]
    raw = np.asarray(lab.dataobj).transpose(2, 1, 0)
    y = np.zeros(raw.shape, np.uint8)
    for src, dst in entry["label_map"].items():
        y[raw == int(src)] = dst
    return x, y, [float(z) for z in img.header.get_zooms()[::-1]]


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_archives_match_manifest_checksums():
    for name, entry in MANIFEST.items():
        if entry.get("archive"):
            data = (MODELS_DIR / entry["archive"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
            assert entry["url_path"].endswith("/" + Path(entry["archive"]).name), name
            assert entry["url"] == "https://github.com" + entry["url_path"]


def test_release_layouts(model_folders):
    mouse = model_folders["mouse_gm_wm"]
    assert mouse.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert mouse.parent.name == "model"
    assert [p.name for p in mouse.glob("fold_*")] == ["fold_4"]
    assert [p.name for p in (mouse / "fold_4").iterdir()] == ["checkpoint_best.pth"]
    sci = model_folders["sci_lesion"]
    assert sorted(p.name for p in sci.glob("fold_*")) == ["fold_0", "fold_1"]
    dj = json.loads((sci / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "sc": [1, 2], "lesion": 2}
    assert dj["regions_class_order"] == [1, 2]
    roots = json.loads((model_folders["rootlets"] / "dataset.json").read_text())
    assert [k for k in roots["labels"] if k.startswith("lvl")] == ["lvl1", "lvl2", "lvl3", "lvl4"]
    assert (model_folders["rootlets"] / "fold_all" / "checkpoint_final.pth").is_file()
    plans2d = json.loads((model_folders["custom_2d"] / "plans.json").read_text())
    assert list(plans2d["configurations"]) == ["2d"]
    for folder in model_folders.values():
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 200_000, folder


def test_checkpoints_hold_the_recorded_weights(model_folders):
    import torch

    for name, folder in model_folders.items():
        recorded = MANIFEST[name]["weights_sha256"]
        assert recorded, name
        for rel, sha in recorded.items():
            ck = torch.load(folder / rel, map_location="cpu", weights_only=False)
            assert _weights_sha256(ck["network_weights"]) == sha, (name, rel)
            assert ck["trainer_name"].startswith("nnUNetTrainer")
            assert ck["init_args"]["configuration"] in ("3d_fullres", "2d")


@pytest.mark.parametrize("name", NAMES)
def test_model_segments_heldout_phantom(name, model_folders):
    import torch

    torch.set_num_threads(1)
    entry = MANIFEST[name]
    pred, lm = _load(model_folders[name])
    assert lm.has_regions == (name == "sci_lesion")
    x, y, spacing = _heldout_case(entry, entry["heldout_seeds"][0])
    seg = pred.predict_single_npy_array(x, {"spacing": spacing})
    assert seg.shape == y.shape
    for cls, values in entry["eval_classes"].items():
        truth, got = np.isin(y, values), np.isin(seg, values)
        assert truth.sum() > 20, (name, cls)  # the phantom really holds this structure
        d = _dice(got, truth)
        assert d >= MIN_DICE, f"{name}/{cls}: Dice {d:.4f} < {MIN_DICE}"


def test_release_server_serves_archives_at_github_paths():
    with ReleaseServer() as srv:
        for name in NAMES:
            entry = MANIFEST[name]
            if not entry.get("archive"):
                continue
            url = srv.url_for(name)
            assert url.startswith("http://127.0.0.1:") and url.endswith(entry["url_path"])
            assert srv.local_url(entry["url"]) == url
            with urllib.request.urlopen(url, timeout=10) as r:
                data = r.read()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.base_url + "/ivadomed/nope/model.zip", timeout=10)
        assert err.value.code == 404
        assert srv.requests[-1] == "/ivadomed/nope/model.zip"
        base = srv.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + MANIFEST["sci_lesion"]["url_path"], timeout=2)
