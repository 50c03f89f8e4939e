"""Build the tiny TotalSpineSeg step-1/step-2 test models, packed like the real releases.

Why: the TotalSpineSeg engine must be tested end to end (two nnU-Net models, the
package's labelling algorithm, the reorientation/resampling around them) without the
real 2 x 200 MB weights. This trains two tiny region-based nnU-Net models on the
synthetic spine phantom (:mod:`napari_spineseg.spine_phantom`) with ``scripts/tinynet.py``
and writes them as the two release zips TotalSpineSeg's ``install_weights`` extracts
into ``<data>/nnUNet/results/<release>/``::

    Dataset101_TotalSpineSeg_step1_<release>.zip
        Dataset101_TotalSpineSeg_step1/nnUNetTrainerDAExt__nnUNetPlans__3d_fullres/
            dataset.json  plans.json  fold_0/checkpoint_final.pth
    Dataset102_TotalSpineSeg_step2_<release>.zip   (same, 2 input channels)

``dataset.json`` labels are exactly those of the real datasets (region-based, sigmoid
heads); checkpoints say ``trainer_name="nnUNetTrainerDAExt"`` and
``inference_allowed_mirroring_axes=None`` like the real ones. Deterministic: same
weights and byte-identical zips on re-runs (fixed seeds, 1 thread, fixed zip times).

Usage: ``python scripts/build_tss_models.py [--out tests/data/models/totalspineseg]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RELEASE = "r20251124"
TRAINER_FOLDER = "nnUNetTrainerDAExt__nnUNetPlans__3d_fullres"
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"

#: The real datasets' dataset.json (totalspineseg resources/datasets, as shipped).
DATASET_STEP1 = {
    "channel_names": {"0": "MRI"},
    "labels": {
        "background": 0,
        "disc": [1, 2, 3, 4, 5],
        "disc_C2_C3": 2,
        "disc_C7_T1": 3,
        "disc_T12_L1": 4,
        "disc_L5_S": 5,
        "vertebrae": [6, 7],
        "vertebrae_C1": 7,
        "canal": [8, 9],
        "cord": 9,
    },
    "regions_class_order": [1, 2, 3, 4, 5, 6, 7, 8, 9],
    "numTraining": 0,
    "file_ending": ".nii.gz",
}
DATASET_STEP2 = {
    "channel_names": {"0": "MRI", "1": "noNorm"},
    "labels": {
        "background": 0,
        "disc": [1, 2, 3, 4, 5],
        "disc_C2_C3": 2,
        "disc_C7_T1": 3,
        "disc_T12_L1": 4,
        "disc_L5_S": 5,
        "vertebrae": [6, 7, 8, 9],
        "vertebrae_O": 7,
        "vertebrae_E": 8,
        "sacrum": 9,
        "canal": [10, 11],
        "cord": 11,
    },
    "regions_class_order": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    "numTraining": 0,
    "file_ending": ".nii.gz",
}

# Small 3-stage U-Net: a receptive field of ~20 mm, enough to see a disc next to a body.
NET = {"features": (8, 16, 24), "patch_size": (40, 48, 40), "batch_size": 2}


def _zyx(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0))


def training_cases(n: int, seed0: int = 100):
    """Phantoms at 1 mm in RAS, as nnU-Net sees them after TotalSpineSeg's preprocessing.

    Step-2 cases are cropped like ``crop_image2seg(margin=10)`` crops the step-2 input.
    """
    from napari_spineseg.spine_phantom import spine_phantom

    s1_img, s1_lab, s2_img, s2_lab = [], [], [], []
    for i in range(n):
        img, labs = spine_phantom(seed=seed0 + i)
        data = np.asanyarray(img.dataobj).astype(np.float32)
        step1 = np.asanyarray(labs["step1"].dataobj)
        s1_img.append(_zyx(data)[None])
        s1_lab.append(_zyx(step1))
        nz = np.nonzero(step1)
        box = tuple(
            slice(max(int(c.min()) - 10, 0), min(int(c.max()) + 10, s - 1) + 1)
            for c, s in zip(nz, step1.shape)
        )
        odd = np.asanyarray(labs["odd_discs"].dataobj)[box].astype(np.float32)
        s2_img.append(np.stack([_zyx(data[box]), _zyx(odd)]))
        s2_lab.append(_zyx(np.asanyarray(labs["step2"].dataobj)[box]))
    return s1_img, s1_lab, s2_img, s2_lab


def build(out: Path, n_cases: int = 6, n_iters: int = 400, release: str = RELEASE) -> list[Path]:
    """Train both models and write the two release zips into ``out``; return their paths."""
    from tinynet import train_tiny_nnunet

    s1_img, s1_lab, s2_img, s2_lab = training_cases(n_cases)
    out.mkdir(parents=True, exist_ok=True)
    zips = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds, dj, imgs, labs, seed in (
            (STEP1, DATASET_STEP1, s1_img, s1_lab, 1),
            (STEP2, DATASET_STEP2, s2_img, s2_lab, 2),
        ):
            t0 = time.perf_counter()
            folder = Path(tmp) / ds / TRAINER_FOLDER
            train_tiny_nnunet(
                imgs,
                labs,
                folder,
                dj,
                spacing_zyx=(1.0, 1.0, 1.0),
                n_iters=n_iters,
                seed=seed,
                features=NET["features"],
                patch_size=NET["patch_size"],
                batch_size=NET["batch_size"],
                mirror_axes=None,
                trainer_name="nnUNetTrainerDAExt",
                dataset_name=ds,
                num_threads=1,
                log=None,
            )
            print(f"{ds}: trained in {time.perf_counter() - t0:.0f} s")
            _share_storage(folder / "fold_0" / "checkpoint_final.pth")
            zpath = out / f"{ds}_{release}.zip"
            _write_zip(Path(tmp), ds, zpath)
            zips.append(zpath)
            print(f"{zpath} ({zpath.stat().st_size / 1024:.0f} KB)")
    return zips


def _share_storage(path: Path) -> None:
    """Re-save a checkpoint with the network's aliased tensors sharing storage again.

    A PlainConvUNet's state dict names each weight up to four times (``convs.0.conv`` and
    ``convs.0.all_modules.0``, ``encoder`` and ``decoder.encoder``); nnU-Net saves
    ``network.state_dict()`` directly, so torch stores each tensor once. Cloned tensors
    would store it four times (4x the zip size).
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    ck = torch.load(path, map_location="cpu", weights_only=False)
    plans, dj = ck["init_args"]["plans"], ck["init_args"]["dataset_json"]
    arch = plans["configurations"][ck["init_args"]["configuration"]]["architecture"]
    n_heads = len([k for k in dj["labels"] if k != "background"])
    net = get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
        len(dj["channel_names"]), n_heads, allow_init=False, deep_supervision=False,
    )  # fmt: skip
    net.load_state_dict(ck["network_weights"])
    ck["network_weights"] = net.state_dict()
    torch.save(ck, path)


def _write_zip(root: Path, dataset: str, zpath: Path) -> None:
    """A reproducible zip: sorted entries, fixed timestamps, deflate."""
    files = sorted(p for p in (root / dataset).rglob("*") if p.is_file())
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for p in files:
            info = zipfile.ZipInfo(
                p.relative_to(root).as_posix(), date_time=(2025, 11, 24, 0, 0, 0)
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, p.read_bytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests/data/models/totalspineseg")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--release", default=RELEASE)
    args = ap.parse_args(argv)
    build(args.out, args.cases, args.iters, args.release)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
