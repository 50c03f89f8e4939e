"""Train tiny but *real* nnU-Net v2 model folders, deterministically, in seconds on a CPU.

Why: the test suite must exercise the real nnU-Net inference path (plans.json ->
``get_network_from_plans`` -> ``nnUNetPredictor``) on model folders laid out exactly like
SCT's releases, without downloading gigabytes of weights. nnU-Net's own trainer needs
preprocessed datasets, multiprocessing and minutes; this module instead writes a
hand-made ``plans.json`` (a 2-stage ``PlainConvUNet``) and trains it with a plain PyTorch
loop (Recipe A of docs/research nnunet.md §2). With the same inputs, seed and thread count
the weights are bit-identical on re-runs.

The training data must already be on the grid the model will see: channels-first arrays
``(c, z, y, x)`` in nnU-Net's (SimpleITK) axis order, at ``spacing_zyx``, so nnU-Net's
resampling is a no-op for inputs like them. Normalisation matches the predictor's
(z-score per channel, or none for channels named ``"noNorm"``).

Public API: :func:`train_tiny_nnunet`, :func:`load_predictor`, :func:`predict_array`,
:func:`weights_sha256`, :func:`dice`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def train_tiny_nnunet(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    out_folder: str | Path,
    dataset_json: dict,
    spacing_zyx: Sequence[float],
    configuration: str = "3d_fullres",
    n_iters: int = 600,
    seed: int = 0,
    *,
    folds: Sequence[int | str] = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    features: Sequence[int] = (8, 16),
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    strides: Sequence[Sequence[int]] | None = None,
    patch_size: Sequence[int] | None = None,
    batch_size: int = 4,
    lr: float = 1e-2,
    foreground_fraction: float = 0.6,
    mirror_axes: Sequence[int] | None | str = "all",
    trainer_name: str = "nnUNetTrainer",
    plans_name: str = "nnUNetPlans",
    dataset_name: str | None = None,
    num_threads: int = 1,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train and write an nnU-Net v2 model folder; return ``out_folder``.

    Parameters
    ----------
    images, labels
        Training cases: float arrays ``(c, z, y, x)`` and integer label maps ``(z, y, x)``
        (values as in ``dataset_json["labels"]``), all at ``spacing_zyx`` (mm).
    out_folder
        The trainer folder to write (e.g. ``.../nnUNetTrainer__nnUNetPlans__3d_fullres``):
        ``dataset.json``, ``plans.json`` and ``fold_<f>/<checkpoint_name>`` for each fold.
    dataset_json
        Written as given (``numTraining``/``file_ending`` added when missing). Labels whose
        values are lists make a region-based model (one sigmoid head per region, needs
        ``regions_class_order``). ``channel_names`` sets the number of input channels and
        the normalisation (``"noNorm"`` -> none, anything else -> z-score).
    configuration
        ``"3d_fullres"`` (3D patches) or ``"2d"`` (axial slices, i.e. planes of ``y, x``).
    n_iters, seed
        Optimiser steps and the seed; fold ``f`` (the i-th of ``folds``) trains with
        ``seed + 1000 * i``, so folds differ but the build stays reproducible.
    folds, checkpoint_name
        Which ``fold_*`` folders to write and the checkpoint file name inside them
        (``checkpoint_final.pth`` or ``checkpoint_best.pth``, as some releases ship).
    features, kernel_sizes, strides, patch_size
        The PlainConvUNet. Defaults: stride 2 in-plane per stage (and in z only when z is
        not much coarser than y/x), kernel 1 along a coarse z in stage 0, patch 16x32x32 (3D)
        or 64x64 (2D), clipped to the data.
    mirror_axes
        Saved as ``inference_allowed_mirroring_axes`` and used for flip augmentation:
        ``"all"`` (every spatial axis), a tuple, or ``None`` (no flips, no mirroring TTA).
    trainer_name
        Stored in the checkpoint; loaders that build the net from plans ignore it.
    num_threads
        ``torch.set_num_threads`` during training (restored afterwards); the weights are
        only bit-identical between runs with the same value.
    """
    import torch

    out = Path(out_folder)
    cfg = _Setup(
        images,
        labels,
        dataset_json,
        spacing_zyx,
        configuration,
        features,
        kernel_sizes,
        strides,
        patch_size,
        batch_size,
    )
    dj = dict(dataset_json)
    dj.setdefault("numTraining", len(images))
    dj.setdefault("file_ending", ".nii.gz")
    plans = cfg.plans(
        dataset_name or dj.get("name") or out.parent.name or "Dataset999_tiny", plans_name
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(dj, indent=4) + "\n")
    (out / "plans.json").write_text(json.dumps(plans, indent=4) + "\n")

    if mirror_axes == "all":
        mirror_axes = tuple(range(cfg.ndim))
    elif mirror_axes is not None:
        mirror_axes = tuple(int(a) for a in mirror_axes)

    data = [cfg.normalise(np.asarray(im, np.float32)) for im in images]
    targets = [np.asarray(lb).astype(np.int64) for lb in labels]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        for i, fold in enumerate(folds):
            fseed = int(seed) + 1000 * i
            net = _train_one(
                cfg,
                plans,
                data,
                targets,
                n_iters,
                fseed,
                lr,
                batch_size,
                foreground_fraction,
                mirror_axes,
                log,
                f"fold {fold}",
            )
            ckpt = {
                "network_weights": {
                    k: v.detach().clone().contiguous() for k, v in net.state_dict().items()
                },
                "init_args": {
                    "plans": plans,
                    "configuration": configuration,
                    "fold": fold,
                    "dataset_json": dj,
                },
                "trainer_name": trainer_name,
                "inference_allowed_mirroring_axes": mirror_axes,
                "current_epoch": int(n_iters),
            }
            fdir = out / f"fold_{fold}"
            fdir.mkdir(exist_ok=True)
            torch.save(ckpt, fdir / checkpoint_name)
    finally:
        torch.set_num_threads(old_threads)
    return out


class _Setup:
    """Everything derived from the data and dataset.json: plans, label layout, patches."""

    def __init__(
        self,
        images,
        labels,
        dataset_json,
        spacing_zyx,
        configuration,
        features,
        kernel_sizes,
        strides,
        patch_size,
        batch_size,
    ):
        from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
            get_normalization_scheme,
        )

        if configuration not in ("3d_fullres", "2d"):
            raise ValueError(f"configuration must be '3d_fullres' or '2d', got {configuration!r}")
        if not images or len(images) != len(labels):
            raise ValueError("need the same (non-zero) number of images and label maps")
        self.configuration = configuration
        self.ndim = 3 if configuration == "3d_fullres" else 2
        self.n_channels = len(dataset_json["channel_names"])
        for im, lb in zip(images, labels):
            if im.ndim != 4 or im.shape[0] != self.n_channels or im.shape[1:] != lb.shape:
                raise ValueError(
                    f"image {im.shape} / labels {lb.shape}: expected (c,z,y,x) "
                    f"with c={self.n_channels} and labels (z,y,x)"
                )
        self.spacing3 = [float(s) for s in spacing_zyx]
        self.schemes = [
            get_normalization_scheme(n).__name__
            for _, n in sorted(dataset_json["channel_names"].items(), key=lambda kv: int(kv[0]))
        ]
        for s in self.schemes:
            if s not in ("ZScoreNormalization", "NoNormalization"):
                raise ValueError(f"tinynet supports z-score and noNorm channels only, not {s}")

        lab = dict(dataset_json["labels"])
        self.has_regions = any(isinstance(v, (list, tuple)) for v in lab.values())
        fg = [(k, v) for k, v in lab.items() if k != "background"]
        if self.has_regions:
            if "regions_class_order" not in dataset_json:
                raise ValueError("region-based labels need dataset_json['regions_class_order']")
            self.regions = [tuple(v) if isinstance(v, (list, tuple)) else (v,) for _, v in fg]
            self.n_out = len(self.regions)
        else:
            self.classes = sorted(int(v) for v in lab.values())
            if self.classes != list(range(len(self.classes))):
                raise ValueError(f"multiclass label values must be 0..n-1, got {self.classes}")
            self.n_out = len(self.classes)

        shapes = np.array([lb.shape for lb in labels])
        self.median_shape3 = [int(s) for s in np.median(shapes, 0)]
        min_shape = shapes.min(0)
        n_stages = len(features)
        self.features = [int(f) for f in features]
        if self.ndim == 3:
            aniso = self.spacing3[0] >= 2 * max(self.spacing3[1:])
            zs = 1 if aniso else 2
            self.kernels = kernel_sizes or [[1 if aniso else 3, 3, 3]] + [[3, 3, 3]] * (
                n_stages - 1
            )
            self.strides = strides or [[1, 1, 1]] + [[zs, 2, 2]] * (n_stages - 1)
            default_patch = [16, 32, 32]
            spatial_min = min_shape
        else:
            self.kernels = kernel_sizes or [[3, 3]] * n_stages
            self.strides = strides or [[1, 1]] + [[2, 2]] * (n_stages - 1)
            default_patch = [64, 64]
            spatial_min = min_shape[1:]
        self.kernels = [list(map(int, k)) for k in self.kernels]
        self.strides = [list(map(int, s)) for s in self.strides]
        total = np.prod(np.array(self.strides), axis=0)
        patch = list(patch_size or default_patch)
        self.patch = [
            int(max(t, min(p, m) // t * t)) for p, m, t in zip(patch, spatial_min, total)
        ]
        self.batch_size = int(batch_size)

    def plans(self, dataset_name: str, plans_name: str) -> dict:
        from napari_spineseg.engines._nnunet_random import RESAMPLING, plain_unet_arch

        spacing = self.spacing3 if self.ndim == 3 else self.spacing3[1:]
        median = self.median_shape3 if self.ndim == 3 else self.median_shape3[1:]
        return {
            "dataset_name": dataset_name,
            "plans_name": plans_name,
            "original_median_spacing_after_transp": self.spacing3,
            "original_median_shape_after_transp": self.median_shape3,
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {
                self.configuration: {
                    "data_identifier": f"{plans_name}_{self.configuration}",
                    "preprocessor_name": "DefaultPreprocessor",
                    "batch_size": self.batch_size,
                    "patch_size": self.patch,
                    "median_image_size_in_voxels": median,
                    "spacing": spacing,
                    "normalization_schemes": self.schemes,
                    "use_mask_for_norm": [False] * self.n_channels,
                    **RESAMPLING,
                    "architecture": plain_unet_arch(
                        self.ndim, self.features, self.kernels, self.strides, n_conv=1
                    ),
                    "batch_dice": True,
                }
            },
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {
                str(c): {
                    "max": 1.0,
                    "mean": 0.0,
                    "median": 0.0,
                    "min": 0.0,
                    "percentile_00_5": 0.0,
                    "percentile_99_5": 1.0,
                    "std": 1.0,
                }
                for c in range(self.n_channels)
            },
        }

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """What nnU-Net's preprocessor does to an image already at the plan spacing."""
        out = np.empty_like(image, dtype=np.float32)
        for c, scheme in enumerate(self.schemes):
            x = image[c].astype(np.float32)
            if scheme == "ZScoreNormalization":
                x = (x - x.mean()) / max(float(x.std()), 1e-8)
            out[c] = x
        return out

    def target(self, seg: np.ndarray):
        """Training target: class indices (multiclass) or stacked region masks (float)."""
        if self.has_regions:
            return np.stack([np.isin(seg, r) for r in self.regions]).astype(np.float32)
        return seg


def _train_one(
    cfg, plans, data, targets, n_iters, seed, lr, batch_size, fg_fraction, mirror_axes, log, what
):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = plans["configurations"][cfg.configuration]["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        cfg.n_channels,
        cfg.n_out,
        allow_init=True,
        deep_supervision=False,
    )
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_iters)
    fg_index = [_foreground_index(t) for t in targets]
    for it in range(n_iters):
        xb, yb = [], []
        for _ in range(batch_size):
            k = int(rng.integers(len(data)))
            x, y = _sample_patch(cfg, data[k], targets[k], fg_index[k], rng, fg_fraction)
            if mirror_axes:
                for ax in mirror_axes:
                    if rng.random() < 0.5:
                        x, y = np.flip(x, ax + 1), np.flip(y, ax)
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
            x = x * scale + shift
            xb.append(np.ascontiguousarray(x))
            yb.append(np.ascontiguousarray(cfg.target(y)))
        xt = torch.from_numpy(np.stack(xb).astype(np.float32))
        yt = torch.from_numpy(np.stack(yb))
        logits = net(xt)
        loss = _loss(cfg, logits, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (it + 1) % max(1, n_iters // 5) == 0:
            log(f"  {what}: iter {it + 1}/{n_iters} loss {loss.item():.4f}")
    net.eval()
    return net


def _foreground_index(seg: np.ndarray) -> dict[int, np.ndarray]:
    """Voxel coordinates of every foreground value, for class-balanced patch sampling."""
    return {int(v): np.argwhere(seg == v) for v in np.unique(seg) if v != 0}


def _sample_patch(cfg, image, seg, fg_index, rng, fg_fraction):
    """A random patch; with probability ``fg_fraction`` centred near a random class's voxel."""
    if cfg.ndim == 2:
        if fg_index and rng.random() < fg_fraction:
            vals = sorted(fg_index)
            coords = fg_index[vals[int(rng.integers(len(vals)))]]
            z = int(coords[int(rng.integers(len(coords)))][0])
        else:
            z = int(rng.integers(seg.shape[0]))
        image, seg = image[:, z], seg[z]
        fg_index = {v: c[c[:, 0] == z][:, 1:] for v, c in fg_index.items()}
        fg_index = {v: c for v, c in fg_index.items() if len(c)}
    shape = np.array(seg.shape)
    patch = np.array(cfg.patch)
    pad = np.maximum(patch - shape, 0)
    if pad.any():
        widths = [(0, 0)] + [(p // 2, p - p // 2) for p in pad]
        image = np.pad(image, widths, mode="constant")
        seg = np.pad(seg, widths[1:], mode="constant")
        fg_index = {v: c + pad // 2 for v, c in fg_index.items()}
        shape = np.array(seg.shape)
    hi = shape - patch
    if fg_index and rng.random() < fg_fraction:
        vals = sorted(fg_index)
        coords = fg_index[vals[int(rng.integers(len(vals)))]]
        centre = coords[int(rng.integers(len(coords)))]
        jitter = rng.integers(-(patch // 4), patch // 4 + 1)
        start = np.clip(centre - patch // 2 + jitter, 0, hi)
    else:
        start = np.array([int(rng.integers(h + 1)) for h in hi])
    sl = tuple(slice(int(s), int(s + p)) for s, p in zip(start, patch))
    return image[(slice(None), *sl)], seg[sl]


def _loss(cfg, logits, target):
    import torch
    import torch.nn.functional as F

    dims = (0, *range(2, logits.ndim))  # batch dice, as nnU-Net's batch_dice=True
    if cfg.has_regions:
        prob = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target)
        onehot = target
        fg = slice(None)
    else:
        prob = torch.softmax(logits, 1)
        ce = F.cross_entropy(logits, target)
        onehot = F.one_hot(target, cfg.n_out).movedim(-1, 1).float()
        fg = slice(1, None)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    soft_dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - soft_dice[fg].mean())


# --------------------------------------------------------------------------------------
# Loading and predicting without nnU-Net's trainer-class lookup (see nnunet.md §1.5).


def load_predictor(
    folder: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint_name: str | None = None,
    use_mirroring: bool = False,
    tile_step_size: float = 0.5,
):
    """An ``nnUNetPredictor`` for a model folder, built from plans (no trainer lookup).

    ``folds=None`` takes every ``fold_*`` folder; ``checkpoint_name=None`` prefers
    ``checkpoint_final.pth`` and falls back to ``checkpoint_best.pth`` (as SCT does).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    dj = json.loads((folder / "dataset.json").read_text())
    pm = PlansManager(json.loads((folder / "plans.json").read_text()))
    if folds is None:
        folds = sorted(p.name[5:] for p in folder.glob("fold_*") if p.is_dir())
    weights, first = [], None
    for f in folds:
        fdir = folder / f"fold_{f}"
        name = checkpoint_name or next(
            n for n in ("checkpoint_final.pth", "checkpoint_best.pth") if (fdir / n).exists()
        )
        ck = torch.load(fdir / name, map_location="cpu", weights_only=False)
        first = first or ck
        weights.append(ck["network_weights"])
    cm = pm.get_configuration(first["init_args"]["configuration"])
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
    net.load_state_dict(weights[0])
    pred = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    pred.manual_initialization(
        net,
        pm,
        cm,
        weights,
        dj,
        first["trainer_name"],
        first.get("inference_allowed_mirroring_axes"),
    )
    return pred


def predict_array(predictor, image_czyx: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Labels ``(z, y, x)`` for one channels-first image, in-process (no worker pools)."""
    return predictor.predict_single_npy_array(
        np.asarray(image_czyx, np.float32), {"spacing": [float(s) for s in spacing_zyx]}
    )


def weights_sha256(state_dict: dict[str, Any]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for k, v in state_dict.items():
        a = v.detach().cpu().contiguous().numpy()
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s
