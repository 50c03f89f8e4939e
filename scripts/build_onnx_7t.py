"""Build the tiny stand-in for SCT's 7T GM/SC model (task ``gm_sc_7t_t2star``).

Why: the real ``model_7t_multiclass_gm_sc_unet2d`` cannot be downloaded in CI, yet the
ONNX engine must be tested end to end. This script trains, deterministically and in well
under a minute on one CPU thread, a small 2D U-Net with the *same contract* as the real
model (ONNX input ``input`` (N, 1, 128, 128) float32, output ``output`` (N, 2, 128, 128)
sigmoid [sc, gm], opset 11, ivadomed's dynamic axes) on synthetic T2*-like axial slices
(``napari_spineseg.phantom`` with grey matter, 0.17-0.5 mm in-plane) preprocessed by the
engine's own functions, then writes:

* ``tests/data/models/gm_sc_7t/model_7t_multiclass_gm_sc_unet2d/{name}.onnx`` + ``.json``
  (the real model's JSON structure: target_suffix, Resample/CenterCrop/NormalizeInstance,
  post-processing, ...);
* ``tests/data/models/gm_sc_7t/model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip``,
  laid out like SCT's download (a GitHub source archive of tag r20211012), byte-for-byte
  reproducible (fixed timestamps and order);
* ``tests/data/models/gm_sc_7t/SHA256`` (``sha256sum`` format).

Run: ``python scripts/build_onnx_7t.py`` (``--check`` only re-runs the engine on a fresh
phantom and prints Dice).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "models" / "gm_sc_7t"
NAME = "model_7t_multiclass_gm_sc_unet2d"
ARCHIVE_TOP = "model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012"
ZIP_NAME = f"{ARCHIVE_TOP}.zip"
SPACE = 0.17578125
CROP = 128
SEED = 7
CHANNELS = (6, 12, 24)
WINDOW = 80  # training window (px)

# The real model's JSON (ivadomed/model_seg_gm-wm_t2star_7t_unet2d-multiclass), field for
# field; only the training bookkeeping names say that this is a stand-in.
CONFIG = {
    "command": "train",
    "gpu_ids": [0],
    "path_output": "spineseg_tiny_standin",
    "model_name": "spineseg_tiny_standin_gm_sc_7t",
    "debugging": False,
    "object_detection_params": {
        "object_detection_path": None,
        "safety_factor": [1.0, 1.0, 1.0],
        "gpu_ids": 0,
        "path_output": "spineseg_tiny_standin",
    },
    "loader_parameters": {
        "path_data": ["synthetic_phantoms"],
        "subject_selection": {"n": [], "metadata": [], "value": []},
        "target_suffix": ["_7t_multiclass_sc", "_7t_multiclass_gm"],
        "extensions": [".nii.gz"],
        "roi_params": {"suffix": None, "slice_filter_roi": None},
        "contrast_params": {
            "training_validation": ["T2star"],
            "testing": ["T2star"],
            "balance": {},
        },
        "slice_filter_params": {"filter_empty_mask": False, "filter_empty_input": True},
        "slice_axis": "axial",
        "multichannel": False,
        "soft_gt": False,
    },
    "split_dataset": {
        "fname_split": None,
        "random_seed": SEED,
        "split_method": "participant_id",
        "data_testing": {"data_type": None, "data_value": []},
        "balance": None,
        "train_fraction": 0.75,
        "test_fraction": 0.15,
    },
    "training_parameters": {
        "batch_size": 20,
        "loss": {"name": "DiceLoss"},
        "training_time": {
            "num_epochs": 500,
            "early_stopping_patience": 100,
            "early_stopping_epsilon": 0.001,
        },
        "scheduler": {
            "initial_lr": 0.001,
            "lr_scheduler": {"name": "CosineAnnealingLR", "base_lr": 1e-05, "max_lr": 0.01},
        },
        "balance_samples": {"applied": False, "type": "gt"},
        "mixup_alpha": None,
        "transfer_learning": {"retrain_model": None, "retrain_fraction": 1.0, "reset": True},
    },
    "default_model": {
        "name": "Unet",
        "dropout_rate": 0.3,
        "bn_momentum": 0.1,
        "depth": 3,
        "is_2d": True,
        "final_activation": "sigmoid",
    },
    "uncertainty": {"epistemic": False, "aleatoric": False, "n_it": 0},
    "postprocessing": {
        "remove_noise": {"thr": -1},
        "keep_largest": {},
        "binarize_prediction": {"thr": 0.5},
        "uncertainty": {"thr": -1, "suffix": "_unc-vox.nii.gz"},
        "fill_holes": {},
        "remove_small": {"unit": "vox", "thr": 3},
    },
    "evaluation_parameters": {
        "target_size": {"unit": "vox", "thr": [20, 100]},
        "overlap": {"unit": "vox", "thr": 3},
    },
    "transformation": {
        "Resample": {"wspace": SPACE, "hspace": SPACE, "dspace": 1},
        "CenterCrop": {"size": [CROP, CROP]},
        "RandomAffine": {
            "degrees": 5,
            "scale": [0.2, 0.2],
            "translate": [0.05, 0.05],
            "applied_to": ["im", "gt"],
            "dataset_type": ["training"],
        },
        "ElasticTransform": {
            "alpha_range": [28.0, 30.0],
            "sigma_range": [3.5, 4.5],
            "p": 0.1,
            "applied_to": ["im", "gt"],
            "dataset_type": ["training"],
        },
        "NumpyToTensor": {},
        "NormalizeInstance": {"applied_to": ["im"]},
    },
    "FiLMedUnet": {
        "applied": False,
        "metadata": "contrasts",
        "film_layers": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    },
    "Modified3DUNet": {
        "applied": False,
        "length_3D": [128, 128, 16],
        "stride_3D": [128, 128, 16],
        "attention": False,
        "n_filters": 8,
    },
}

README = """\
Tiny stand-in for the 7T SC/GM model (napari-spineseg test data)
================================================================

Same layout and ONNX contract as the release SCT downloads for task gm_sc_7t_t2star
(https://github.com/ivadomed/model_seg_gm-wm_t2star_7t_unet3d-multiclass, tag r20211012),
but the weights come from a small U-Net trained on synthetic phantoms by
scripts/build_onnx_7t.py. It is NOT the published model and must not be used on patients.
"""


def make_dataset(n_volumes: int, seed: int):
    """Preprocessed (x, y) slices: x (N, 128, 128) float32, y (N, 2, 128, 128) {0, 1}."""
    from napari_spineseg.engines.ivadomed_onnx import center_crop, preprocess_slice, resample_slice
    from napari_spineseg.phantom import cord_phantom

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n_volumes):
        zoom = float(rng.choice([rng.uniform(0.17, 0.3), rng.uniform(0.3, 0.55)], p=[0.7, 0.3]))
        fov = rng.uniform(20.0, 30.0)  # mm
        n = int(round(fov / zoom))
        img, lab = cord_phantom(
            shape=(n, n, 6),
            zooms=(zoom, zoom, float(rng.uniform(1.0, 5.0))),
            seed=int(seed * 1000 + i),
            gm=True,
            dtype="float32",
            noise=float(rng.uniform(0.02, 0.08)),
        )
        data = np.asarray(img.get_fdata(dtype=np.float32))
        labels = np.asarray(lab.dataobj)
        gamma = float(rng.uniform(0.7, 1.4))
        for z in range(data.shape[2]):
            sl = data[:, :, z]
            sl = (sl / max(float(sl.max()), 1e-6)) ** gamma * 1000.0
            x, _ = preprocess_slice(
                sl.astype(np.float32), (zoom, zoom), SPACE, SPACE, (CROP, CROP)
            )
            sc = np.isin(labels[:, :, z], (1, 4)).astype(np.float32)
            gm = (labels[:, :, z] == 4).astype(np.float32)
            y = [
                center_crop(resample_slice(t, (zoom, zoom), SPACE, SPACE, order=1), (CROP, CROP))
                >= 0.5
                for t in (sc, gm)
            ]
            xs.append(x)
            ys.append(np.stack(y).astype(np.float32))
    return np.stack(xs), np.stack(ys)


def build_net():
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout, momentum=0.1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout, momentum=0.1),
            nn.ReLU(inplace=True),
        )

    c1, c2, c3 = CHANNELS

    class TinyUnet(nn.Module):
        """Depth-3 2D U-Net; sigmoid outputs [sc, gm] like ivadomed's Unet (background dropped)."""

        def __init__(self):
            super().__init__()
            self.d1, self.d2, self.b = block(1, c1), block(c1, c2), block(c2, c3)
            self.pool = nn.MaxPool2d(2)
            self.u2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
            self.c2 = block(2 * c2, c2)
            self.u1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
            self.c1 = block(2 * c1, c1)
            self.head = nn.Conv2d(c1, 2, 1)

        def forward(self, x):
            x1 = self.d1(x)
            x2 = self.d2(self.pool(x1))
            xb = self.b(self.pool(x2))
            y = self.c2(torch.cat([self.u2(xb), x2], 1))
            y = self.c1(torch.cat([self.u1(y), x1], 1))
            return torch.sigmoid(self.head(y))

    return TinyUnet()


def train(steps: int, log=print):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    x, y = make_dataset(28, SEED)
    log(f"dataset: {len(x)} slices in {time.perf_counter() - t0:.1f}s")
    rng = np.random.default_rng(SEED)
    net = build_net()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    net.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), 8, replace=False))
        # Random windows (the net is fully convolutional): faster steps, and the cord is
        # not always centred in real crops; plus left-right flips.
        i0, j0 = (int(v) for v in rng.integers(0, CROP - WINDOW + 1, 2))
        win = (slice(None), slice(None), slice(i0, i0 + WINDOW), slice(j0, j0 + WINDOW))
        xb, yb = xt[idx][win], yt[idx][win]
        if rng.random() < 0.5:
            xb, yb = xb.flip(3), yb.flip(3)
        p = net(xb)
        bce = torch.nn.functional.binary_cross_entropy(p, yb)
        inter = (p * yb).sum((0, 2, 3))
        dice = 1 - (2 * inter + 1) / (p.sum((0, 2, 3)) + yb.sum((0, 2, 3)) + 1)
        loss = bce + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d} loss {loss.item():.4f} dice {1 - dice.detach().numpy()}")
    net.eval()
    log(f"trained in {time.perf_counter() - t0:.1f}s")
    return net


def export(net, path: Path) -> None:
    import torch

    dyn = {0: "batch", 1: "num_channels", 2: "height", 3: "width"}  # ivadomed's save_onnx_model
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        torch.zeros(1, 1, CROP, CROP),
        buf,
        opset_version=11,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": dyn, "output": dyn},
        dynamo=False,
    )
    path.write_bytes(buf.getvalue())


def write_release(onnx_bytes: bytes, json_text: str, out: Path) -> Path:
    """The release zip, reproducible: fixed order, timestamps and permissions."""
    zpath = out / ZIP_NAME
    entries = [
        (f"{ARCHIVE_TOP}/", None),
        (f"{ARCHIVE_TOP}/README.md", README.encode()),
        (f"{ARCHIVE_TOP}/{NAME}/", None),
        (f"{ARCHIVE_TOP}/{NAME}/{NAME}.json", json_text.encode()),
        (f"{ARCHIVE_TOP}/{NAME}/{NAME}.onnx", onnx_bytes),
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries:
            info = zipfile.ZipInfo(name, date_time=(2021, 10, 12, 0, 0, 0))
            info.create_system = 3
            if payload is None:
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, payload, compresslevel=9)
    zpath.write_bytes(buf.getvalue())
    return zpath


def check(folder: Path, log=print) -> dict[str, float]:
    """Run the engine on unseen phantoms and return the Dice per class."""
    from napari_spineseg.engines.ivadomed_onnx import IvadomedOnnxModel
    from napari_spineseg.phantom import cord_phantom
    from napari_spineseg.progress import Reporter

    model = IvadomedOnnxModel.load(folder)
    out = {}
    for zoom, n in ((0.22, 112), (0.3, 84)):
        img, lab = cord_phantom(shape=(n, n, 8), zooms=(zoom, zoom, 2.0), seed=4242, gm=True)
        pred = model.predict(img, Reporter())
        truth = {"sc": np.isin(lab.get_fdata(), (1, 4)), "gm": lab.get_fdata() == 4}
        for k, t in truth.items():
            p = pred.maps[k].astype(bool)
            out[f"{k}@{zoom}"] = round(2 * (p & t).sum() / (p.sum() + t.sum()), 4)
    log(f"dice on unseen phantoms: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--check", action="store_true", help="only evaluate the committed model")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = ap.parse_args(argv)
    out = args.out
    model_dir = out / NAME
    if not args.check:
        model_dir.mkdir(parents=True, exist_ok=True)
        net = train(args.steps)
        onnx_path = model_dir / f"{NAME}.onnx"
        export(net, onnx_path)
        json_text = json.dumps(CONFIG, indent=4) + "\n"
        (model_dir / f"{NAME}.json").write_text(json_text, encoding="utf-8")
        zpath = write_release(onnx_path.read_bytes(), json_text, out)
        digest = hashlib.sha256(zpath.read_bytes()).hexdigest()
        (out / "SHA256").write_text(f"{digest}  {ZIP_NAME}\n", encoding="utf-8")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(
            f"wrote {onnx_path} ({onnx_path.stat().st_size} B), {zpath.name} "
            f"({zpath.stat().st_size} B), sha256 {digest}; total {size} B"
        )
    check(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
