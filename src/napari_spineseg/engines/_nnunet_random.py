"""Write real nnU-Net v2 model folders with random (seeded) weights.

Why: the engine must give the same voxels as stock nnU-Net for any model; that can be
checked without trained weights, on folders that have exactly the layout, plans and
checkpoint format of a trained model (``dataset.json``, ``plans.json``,
``fold_N/checkpoint_final.pth``). The tests use tiny networks; the benchmark also uses
the default nnU-Net 3d_fullres PlainConvUNet (6 stages, 32..320 features) to time a
realistic network. Not part of the public API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

#: The resampling functions nnU-Net's planner writes into every configuration.
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {
        "is_seg": False,
        "order": 3,
        "order_z": 0,
        "force_separate_z": None,
    },
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_seg_kwargs": {
        "is_seg": True,
        "order": 1,
        "order_z": 0,
        "force_separate_z": None,
    },
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {
        "is_seg": False,
        "order": 1,
        "order_z": 0,
        "force_separate_z": None,
    },
}


def plain_unet_arch(
    dim: int, features: Sequence[int], kernel_sizes: Sequence, strides: Sequence, n_conv: int
) -> dict:
    """The ``architecture`` block nnU-Net's planner writes for a PlainConvUNet."""
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = (
        "torch.nn.modules.instancenorm.InstanceNorm3d"
        if dim == 3
        else "torch.nn.modules.instancenorm.InstanceNorm2d"
    )
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": conv,
            "kernel_sizes": [list(k) for k in kernel_sizes],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [n_conv] * n,
            "n_conv_per_stage_decoder": [n_conv] * (n - 1),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


TINY_3D = plain_unet_arch(3, [4, 8], [[1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2]], 1)
TINY_2D = plain_unet_arch(2, [4, 8], [[3, 3], [3, 3]], [[1, 1], [2, 2]], 1)
#: nnU-Net's default 3d_fullres network for a ~1 mm brain/spine MRI (30.8 M parameters).
DEFAULT_3D_FULLRES = plain_unet_arch(
    3,
    [32, 64, 128, 256, 320, 320],
    [[3, 3, 3]] * 6,
    [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    2,
)


def write_random_model(
    folder: str | Path,
    *,
    labels: dict | None = None,
    regions_class_order: Sequence[int] | None = None,
    channel_names: dict[str, str] | None = None,
    configuration: str = "3d_fullres",
    architecture: dict | None = None,
    patch_size: Sequence[int] = (8, 32, 32),
    spacing: Sequence[float] = (2.0, 1.0, 1.0),
    transpose_forward: Sequence[int] = (0, 1, 2),
    folds: Sequence[int | str] = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    image_orientation: str | None = None,
    seed: int = 0,
    pickled_extras: bool = True,
) -> Path:
    """Write a model folder; weights of fold ``i`` are seeded with ``seed + i``.

    ``pickled_extras`` adds a numpy scalar to the training log, as real nnU-Net
    checkpoints have, so the file needs a full (unsafe) unpickler.
    """
    import numpy as np
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels or {"background": 0, "cord": 1, "csf": 2}
    channel_names = channel_names or {"0": "T2w"}
    architecture = architecture or (TINY_3D if len(patch_size) == 3 else TINY_2D)
    norm = [
        "NoNormalization" if name.lower() == "nonorm" else "ZScoreNormalization"
        for name in channel_names.values()
    ]
    tf = [int(i) for i in transpose_forward]
    dataset = {
        "channel_names": dict(channel_names),
        "labels": labels,
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    if regions_class_order is not None:
        dataset["regions_class_order"] = [int(c) for c in regions_class_order]
    if image_orientation is not None:
        dataset["image_orientation"] = image_orientation
    config = {
        "data_identifier": f"nnUNetPlans_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [int(p) * 2 for p in patch_size],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": norm,
        "use_mask_for_norm": [False] * len(norm),
        **RESAMPLING,
        "architecture": architecture,
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset999_Random",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing][-3:],
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": tf,
        "transpose_backward": [int(i) for i in np.argsort(tf)],
        "configurations": {configuration: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): {
                "max": 1000.0,
                "mean": 300.0,
                "median": 300.0,
                "min": 0.0,
                "percentile_00_5": 1.0,
                "percentile_99_5": 900.0,
                "std": 100.0,
            }
            for i in range(len(norm))
        },
    }
    from ..models.model_json import check_plans

    # the same bounds the engine enforces: a folder written here always loads
    check_plans(plans, str(folder / "plans.json"), fix="choose a patch_size/spacing in range")
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset)
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    axes = None if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            n_in,
            n_out,
            allow_init=True,
            deep_supervision=False,
        )
        ckpt = {
            "network_weights": net.state_dict(),
            "init_args": {"configuration": configuration, "fold": fold},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": axes,
            "current_epoch": 1,
        }
        if pickled_extras:
            ckpt["logging"] = {"ema_fg_dice": [np.float64(0.5)]}
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(ckpt, folder / f"fold_{fold}" / checkpoint_name)
    return folder
