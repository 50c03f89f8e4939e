"""A no-download, no-screen demo: phantom -> NIfTI -> real nnU-Net run -> masks -> PNG.

Why: a newcomer (or CI) can check in seconds that the geometry chain works on their
machine, without model weights, a display or napari: the phantom is written in a
permuted, flipped voxel order ("PSR", like SCT's ``t2.nii.gz``), the mask is saved with
:func:`napari_spineseg.io.save_labels`, both are reloaded and compared voxel for voxel,
then a real (tiny, shipped) nnU-Net v2 model segments the phantom through the same
:func:`napari_spineseg.api.segment` / :func:`~napari_spineseg.api.save` path the widget
and the CLI use, and an overlay PNG shows the result in the display convention of the
viewer (radiological axial, sagittal with superior up and anterior left).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import SpinesegError

IMAGE_NAME = "phantom_T2w.nii.gz"
MASK_NAME = "phantom_T2w_label-truth_dseg.nii.gz"
#: Minimum Dice of the shipped demo model against the phantom's ground truth.
DEMO_MIN_DICE = 0.9


def demo_model_folder() -> Path:
    """The tiny 2D nnU-Net (cord/CSF) shipped inside the package for the demo."""
    return Path(__file__).parent / "_demo_model" / "nnUNetTrainer__nnUNetPlans__2d"


PNG_NAME = "phantom_T2w_overlay.png"
_CLASS_RGB = {1: (1.0, 0.25, 0.25), 2: (0.25, 0.6, 1.0)}


def run_demo(out_dir: str | Path | None = None, *, verbose: bool = True) -> dict[str, Any]:
    """Write the demo files into ``out_dir`` (a new temporary folder by default) and segment.

    Returns ``{"out_dir", "image", "mask", "png", "checks"}`` (paths and the list of
    checks that passed). Raises :class:`SpinesegError` if a check fails.
    """
    from . import io
    from ._sample_data import PHANTOM_CLASSES, SAMPLE_AXCODES, SAMPLE_SHAPE, SAMPLE_ZOOMS
    from .phantom import cord_phantom

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="spineseg-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    image_path, mask_path, png_path = out / IMAGE_NAME, out / MASK_NAME, out / PNG_NAME
    for stale in (mask_path, *out.glob("phantom_T2w_*_seg.nii.gz")):
        if stale.exists():
            stale.unlink()  # a re-run replaces the demo masks (no history for demo files)

    image, labels = cord_phantom(
        shape=SAMPLE_SHAPE, zooms=SAMPLE_ZOOMS, axcodes=SAMPLE_AXCODES, seed=0
    )
    nib.save(image, image_path)
    volume = io.load(image_path)
    truth = np.asanyarray(labels.dataobj)
    io.save_labels(truth, mask_path, like=volume, keep_history=False)

    checks: list[str] = []
    mask = io.load(mask_path)
    _check(
        np.array_equal(np.asanyarray(mask.data), truth), "mask voxels equal the phantom", checks
    )
    _check(
        np.array_equal(mask.affine, volume.affine)
        and all(
            np.array_equal(mask.header[f], volume.header[f])
            for f in ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b")
        ),
        "mask header geometry is byte-identical to the image's",
        checks,
    )
    _check(volume.geometry.matches(mask.geometry), "image and mask share one display grid", checks)
    _check(
        nib.aff2axcodes(volume.affine) == tuple(SAMPLE_AXCODES),
        f"file voxel order is {SAMPLE_AXCODES}",
        checks,
    )
    _check(
        nib.aff2axcodes(volume.geometry.display_affine) == ("I", "P", "L"),
        "display axes run Inferior, Posterior, Left",
        checks,
    )
    _check(
        np.array_equal(volume.geometry.to_file(mask.display_data()), truth),
        "display -> file order restores the mask exactly",
        checks,
    )
    # A real model, through the public API (one code path for widget, CLI and demo).
    # trust=True: the checkpoint ships inside this package, like its code.
    from . import api

    result = api.segment(image_path, model=demo_model_folder(), trust=True, device="cpu")
    written = api.save(result, out=out)
    predicted = np.zeros(truth.shape, np.uint8)
    dice = {}
    for value, name in ((1, "cord"), (2, "csf")):
        out_labels = next(o.labels for o in result.outputs.values() if name in o.classes.values())
        predicted[out_labels > 0] = value
        a, b = out_labels > 0, truth == value
        dice[name] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    _check(
        min(dice.values()) >= DEMO_MIN_DICE,
        "model Dice vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()),
        checks,
    )
    for path in written:
        back = io.load(path)
        _check(
            all(
                np.array_equal(back.header[f], volume.header[f]) for f in io.writer.GEOMETRY_FIELDS
            ),
            f"{path.name}: header geometry byte-identical to the image",
            checks,
        )
    render_overlay(
        volume.display_data(),
        volume.geometry.to_display(predicted),
        volume.geometry.scale,
        png_path,
        title=f"{IMAGE_NAME}: tiny nnU-Net segmentation (cord, CSF)",
        classes=PHANTOM_CLASSES,
    )
    checks.append(f"overlay written ({png_path.stat().st_size} bytes)")
    summary = {
        "out_dir": out,
        "image": image_path,
        "mask": mask_path,
        "outputs": written,
        "dice": dice,
        "png": png_path,
        "checks": checks,
    }
    if verbose:
        print(f"spineseg demo: outputs in {out}")
        print(f"  image   {image_path}")
        print(f"  truth   {mask_path}")
        for path in written:
            print(f"  output  {path}")
        print(f"  overlay {png_path}")
        for line in checks:
            print(f"  ok      {line}")
        print(
            f"Open them in napari:  napari {image_path} {' '.join(map(str, written))} "
            "--plugin napari-spineseg"
        )
    return summary


def _check(ok: bool, what: str, checks: list[str]) -> None:
    if not ok:
        raise SpinesegError(f"demo check failed: {what}")
    checks.append(what)


def render_overlay(
    image_display: np.ndarray,
    labels_display: np.ndarray,
    scale: tuple[float, float, float],
    png_path: str | Path,
    *,
    title: str = "",
    classes: dict[int, str] | None = None,
) -> Path:
    """Axial + sagittal panels of display-order (I, P, L) arrays with orientation letters.

    Axial: anterior up, patient right on the left (radiological). Sagittal: superior up,
    anterior left. Pixel aspect follows the voxel size. Uses matplotlib's Agg canvas
    directly (no pyplot, no global backend change, no display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img = np.asarray(image_display, dtype=np.float32)
    lab = np.asarray(labels_display)
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    zi, _, xl = _centre(lab)  # slices through the middle of the mask
    panels = [
        ("axial", img[zi], lab[zi], scale[1] / scale[2], ("A", "P", "R", "L")),
        ("sagittal", img[:, :, xl], lab[:, :, xl], scale[0] / scale[1], ("S", "I", "A", "P")),
    ]
    fig = Figure(figsize=(9, 5), dpi=110, facecolor="black")
    FigureCanvasAgg(fig)
    for i, (name, im, lb, aspect, (top, bottom, left, right)) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(_rgba(lb), aspect=aspect, interpolation="nearest")
        ax.set_title(name, color="white")
        ax.set_axis_off()
        style = {
            "color": "yellow",
            "fontsize": 14,
            "fontweight": "bold",
            "transform": ax.transAxes,
        }
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    if classes:
        handles = [
            Patch(color=_CLASS_RGB.get(v, (1, 1, 1)), label=f"{v}: {n}")
            for v, n in sorted(classes.items())
        ]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            frameon=False,
            labelcolor="white",
        )
    if title:
        fig.suptitle(title, color="white")
    png_path = Path(png_path)
    fig.savefig(png_path, facecolor=fig.get_facecolor())
    return png_path


def _centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of the labelled voxels (middle of the volume when the mask is empty)."""
    idx = np.argwhere(labels > 0)
    if idx.size == 0:
        return tuple(int(s) // 2 for s in labels.shape)  # type: ignore[return-value]
    return tuple(int(round(v)) for v in idx.mean(axis=0))  # type: ignore[return-value]


def _rgba(labels: np.ndarray) -> np.ndarray:
    out = np.zeros((*labels.shape, 4), np.float32)
    for value in np.unique(labels):
        if value == 0:
            continue
        out[labels == value] = (*_CLASS_RGB.get(int(value), (1.0, 1.0, 1.0)), 0.45)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_spineseg.demo [OUT_DIR]``; exit code 1 with a message on failure."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="spineseg demo", description="Write a phantom image + mask and an overlay PNG."
    )
    parser.add_argument("out_dir", nargs="?", help="output folder (default: a new temp folder)")
    parser.add_argument("--out", "-o", dest="out_opt", help="output folder (same as OUT_DIR)")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out_opt or args.out_dir)
    except SpinesegError as exc:
        print(f"spineseg demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
