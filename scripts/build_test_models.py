"""Build the tiny nnU-Net models of the test suite and pack them like the real releases.

    python scripts/build_test_models.py [--only NAME] [--iters N] [--no-pack]

Each model is trained (deterministically, scripts/tinynet.py) on synthetic phantoms
(napari_spineseg.phantom), checked on held-out phantoms through the real
``nnUNetPredictor`` (Dice printed), then packed into tests/data/models/ with the archive
name and internal layout of the release it stands in for (see tests/data/models/README.md
for the evidence behind each layout). tests/data/models/manifest.json records, per model,
the archive's sha256, the URL path it impersonates and each checkpoint's weights hash.

Why synthetic: the real weights are hundreds of MB and cannot be downloaded in CI; these
exercise the very same code paths (plans -> network -> predictor, folds, checkpoint names,
region-based heads, 2D configurations) in a fraction of a second per prediction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))

import tinynet  # noqa: E402

from napari_spineseg.phantom import cord_phantom  # noqa: E402

OUT = ROOT / "tests" / "data" / "models"
TRAIN_SEEDS = range(100_000, 100_010)  # training phantoms
HELDOUT_SEEDS = range(1000, 1004)  # evaluation phantoms (the tests use 1000)
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed timestamps -> byte-identical archives


@dataclass(frozen=True)
class ModelSpec:
    """One test model: how to make its data, train it and pack it."""

    name: str
    dataset_json: dict
    #: phantom label value -> model label value (unlisted phantom values -> 0)
    label_map: dict[int, int]
    phantom: dict
    configuration: str
    folds: tuple
    checkpoint_name: str
    trainer_folder: str
    #: path of the trainer folder inside the archive ("" = archive root)
    archive_prefix: str
    archive_name: str | None
    url_path: str | None
    trainer_name: str = "nnUNetTrainer"
    n_iters: int = 500
    features: tuple = (8, 16)
    #: model label values whose Dice must reach the target (regions: region indices)
    eval_classes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _phantom_kw(shape, zooms, **kw) -> dict:
    return {"shape": shape, "zooms": zooms, **kw}


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="mouse_gm_wm",
            dataset_json={
                "channel_names": {"0": "T1w"},
                "labels": {"background": 0, "GM": 1, "WM": 2},
                "numTraining": 10,
                "file_ending": ".nii.gz",
                "name": "Dataset500_zurich_mouse",
            },
            label_map={4: 1, 1: 2},
            phantom=_phantom_kw((48, 48, 12), (0.2, 0.2, 0.5), gm=True, anatomy_scale=0.4),
            configuration="3d_fullres",
            folds=(4,),
            checkpoint_name="checkpoint_best.pth",
            trainer_folder="nnUNetTrainer__nnUNetPlans__3d_fullres",
            archive_prefix="model/nnUNetTrainer__nnUNetPlans__3d_fullres",
            archive_name="model.zip",
            url_path="/ivadomed/model_seg_mouse-sc_wm-gm_t1/releases/download/v0.4/model.zip",
            eval_classes={"GM": (1,), "WM": (2,)},
        ),
        ModelSpec(
            name="sci_lesion",
            dataset_json={
                "channel_names": {"0": "acq-sag_T2w"},
                "labels": {"background": 0, "sc": [1, 2], "lesion": 2},
                "regions_class_order": [1, 2],
                "numTraining": 10,
                "file_ending": ".nii.gz",
                "name": "Dataset501_allSCIsegV2RegionSeed710",
            },
            label_map={1: 1, 3: 2},
            phantom=_phantom_kw((48, 48, 16), (0.6, 0.6, 2.0), lesion=True),
            configuration="3d_fullres",
            folds=(0, 1),
            checkpoint_name="checkpoint_final.pth",
            trainer_folder="nnUNetTrainerDA5__nnUNetPlans__3d_fullres",
            trainer_name="nnUNetTrainerDA5",
            archive_prefix="nnUNetTrainerDA5__nnUNetPlans__3d_fullres",
            archive_name="model_SCIsegV2_r20240729.zip",
            url_path="/ivadomed/model_seg_sci/releases/download/r20240729/model_SCIsegV2_r20240729.zip",
            eval_classes={"sc": (1, 2), "lesion": (2,)},
        ),
        ModelSpec(
            name="rootlets",
            dataset_json={
                "channel_names": {"0": "T2w"},
                "labels": {"background": 0, "lvl1": 1, "lvl2": 2, "lvl3": 3, "lvl4": 4},
                "numTraining": 10,
                "file_ending": ".nii.gz",
                "name": "Dataset302_RootletsMulticon",
            },
            label_map={12: 2, 13: 3, 14: 4},
            phantom=_phantom_kw((48, 48, 16), (0.6, 0.6, 2.0), rootlets=True),
            configuration="3d_fullres",
            folds=("all",),
            checkpoint_name="checkpoint_final.pth",
            trainer_folder="nnUNetTrainer_2000epochs__nnUNetPlans__3d_fullres",
            trainer_name="nnUNetTrainer_2000epochs",
            archive_prefix=(
                "Dataset302_RootletsMulticon/nnUNetTrainer_2000epochs__nnUNetPlans__3d_fullres"
            ),
            archive_name="model-spinal-rootlets-multicon-r20250318.zip",
            url_path=(
                "/ivadomed/model-spinal-rootlets/releases/download/r20250318/"
                "model-spinal-rootlets-multicon-r20250318.zip"
            ),
            eval_classes={"lvl2": (2,), "lvl3": (3,), "lvl4": (4,)},
            n_iters=1500,
        ),
        ModelSpec(
            name="custom_2d",
            dataset_json={
                "channel_names": {"0": "T2w"},
                "labels": {"background": 0, "cord": 1, "csf": 2},
                "numTraining": 10,
                "file_ending": ".nii.gz",
                "name": "Dataset777_LabCord2D",
            },
            label_map={1: 1, 2: 2},
            phantom=_phantom_kw((48, 48, 16), (0.8, 0.8, 2.5)),
            configuration="2d",
            folds=(0,),
            checkpoint_name="checkpoint_final.pth",
            trainer_folder="nnUNetTrainer__nnUNetPlans__2d",
            archive_prefix="",
            archive_name=None,  # a lab's own folder: committed unpacked, not an archive
            url_path=None,
            eval_classes={"cord": (1,), "csf": (2,)},
        ),
    )
}


def phantom_case(spec: ModelSpec, seed: int):
    """(image (1,z,y,x) float32, model labels (z,y,x) uint8, spacing_zyx) in RAS."""
    img, lab = cord_phantom(seed=seed, axcodes="RAS", **spec.phantom)
    x = np.asarray(img.dataobj, np.float32).transpose(2, 1, 0)[None]
    raw = np.asarray(lab.dataobj).transpose(2, 1, 0)
    y = np.zeros(raw.shape, np.uint8)
    for src, dst in spec.label_map.items():
        y[raw == src] = dst
    spacing = tuple(float(z) for z in img.header.get_zooms()[::-1])
    return x, y, spacing


def evaluate(spec: ModelSpec, folder: Path, seeds=HELDOUT_SEEDS) -> dict[str, float]:
    """Minimum Dice over the held-out phantoms, per evaluated class/region."""
    pred = tinynet.load_predictor(folder)
    worst = dict.fromkeys(spec.eval_classes, 1.0)
    for seed in seeds:
        x, y, spacing = phantom_case(spec, seed)
        seg = tinynet.predict_array(pred, x, spacing)
        for k, vals in spec.eval_classes.items():
            d = tinynet.dice(np.isin(seg, vals), np.isin(y, vals))
            worst[k] = min(worst[k], d)
    return worst


def build(spec: ModelSpec, n_iters: int | None, workdir: Path) -> Path:
    cases = [phantom_case(spec, s) for s in TRAIN_SEEDS]
    folder = workdir / spec.name / spec.trainer_folder
    t0 = time.perf_counter()
    tinynet.train_tiny_nnunet(
        [c[0] for c in cases],
        [c[1] for c in cases],
        folder,
        spec.dataset_json,
        cases[0][2],
        configuration=spec.configuration,
        n_iters=n_iters or spec.n_iters,
        seed=0,
        folds=spec.folds,
        checkpoint_name=spec.checkpoint_name,
        features=spec.features,
        patch_size=cases[0][1].shape
        if spec.configuration == "3d_fullres"
        else cases[0][1].shape[1:],
        batch_size=2,
        trainer_name=spec.trainer_name,
        num_threads=1,
    )
    print(f"[{spec.name}] trained in {time.perf_counter() - t0:.1f} s")
    return folder


def pack(spec: ModelSpec, folder: Path) -> dict:
    """Write the archive (or the unpacked folder) into OUT; return the manifest entry."""
    import torch

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    weights = {}
    for p in files:
        if p.suffix == ".pth":
            ck = torch.load(p, map_location="cpu", weights_only=False)
            weights[p.relative_to(folder).as_posix()] = tinynet.weights_sha256(
                ck["network_weights"]
            )
    entry = {
        "weights_sha256": weights,
        "trainer_folder": spec.trainer_folder,
        "folds": [str(f) for f in spec.folds],
        "checkpoint_name": spec.checkpoint_name,
        # enough to regenerate the ground truth: cord_phantom(seed=..., axcodes="RAS", **phantom)
        "phantom": spec.phantom,
        "label_map": {str(k): v for k, v in spec.label_map.items()},
        "eval_classes": {k: list(v) for k, v in spec.eval_classes.items()},
        "heldout_seeds": list(HELDOUT_SEEDS),
    }
    dest = OUT / spec.name
    if dest.exists():
        shutil.rmtree(dest)
    if spec.archive_name is None:
        target = dest / spec.trainer_folder
        shutil.copytree(folder, target)
        entry.update(folder=target.relative_to(OUT).as_posix(), url_path=None)
        return entry
    dest.mkdir(parents=True)
    archive = dest / spec.archive_name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        prefix = spec.archive_prefix.strip("/")
        parts = prefix.split("/") if prefix else []
        for i in range(len(parts)):  # explicit directory entries, like `zip -r`
            zf.writestr(_zinfo("/".join(parts[: i + 1]) + "/"), b"")
        dirs = sorted({p.parent for p in files if p.parent != folder})
        for d in dirs:
            rel = d.relative_to(folder).as_posix()
            zf.writestr(_zinfo(f"{prefix}/{rel}/".lstrip("/")), b"")
        for p in files:
            rel = p.relative_to(folder).as_posix()
            zf.writestr(_zinfo(f"{prefix}/{rel}".lstrip("/")), p.read_bytes())
    entry.update(
        archive=archive.relative_to(OUT).as_posix(),
        archive_prefix=spec.archive_prefix,
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        size=archive.stat().st_size,
        url_path=spec.url_path,
        url="https://github.com" + spec.url_path,
    )
    return entry


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    zi.external_attr = (0o40755 << 16 | 0x10) if name.endswith("/") else (0o644 << 16)
    zi.compress_type = zipfile.ZIP_DEFLATED
    return zi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SPECS), action="append")
    ap.add_argument("--iters", type=int, default=None, help="override training iterations")
    ap.add_argument("--no-pack", action="store_true", help="train and evaluate only")
    ap.add_argument("--min-dice", type=float, default=0.95)
    ap.add_argument("--workdir", type=Path, default=None, help="keep trained folders here")
    args = ap.parse_args(argv)
    manifest_path = OUT / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.only or list(SPECS):
            spec = SPECS[name]
            folder = build(spec, args.iters, workdir)
            dice = evaluate(spec, folder)
            print(
                f"[{name}] held-out min Dice: "
                + ", ".join(f"{k} {v:.4f}" for k, v in dice.items())
            )
            if min(dice.values()) < args.min_dice:
                ok = False
                print(f"[{name}] WARNING: Dice below {args.min_dice}")
            if not args.no_pack:
                entry = pack(spec, folder)
                entry["heldout_min_dice"] = {k: round(v, 4) for k, v in dice.items()}
                manifest[name] = entry
    if not args.no_pack:
        OUT.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
