"""Screenshots of SCT's t2 + manual cord mask in napari, and an on-screen overlay check.

Why: the geometry tests check arrays and transforms; this checks what a user *sees*.
It needs a real X display with OpenGL (Xvfb works, the Qt offscreen platform usually
does not)::

    Xvfb :99 -screen 0 1600x1000x24 &
    DISPLAY=:99 python scripts/screenshots.py            # writes docs/images/*.png
    DISPLAY=:99 python scripts/screenshots.py --check    # prints the overlay agreement (JSON)

``--check`` renders the canvas with and without the mask and maps every changed screen
pixel back to a file voxel through the NIfTI affine alone (not through napari), so it
fails if the mask is drawn anywhere but on its own voxels.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/sct_testing_data/t2"
IMAGES = ROOT / "docs/images"
PLUGIN = "napari-spineseg"
#: dims.order per view: the last two axes are displayed (rows, columns).
VIEWS = {"axial": (0, 1, 2), "sagittal": (2, 0, 1)}


def open_t2(viewer, data_dir: Path = DATA):
    from napari_spineseg.errors import GeometryWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        (img,) = viewer.open(str(data_dir / "t2.nii.gz"), plugin=PLUGIN)
        (lab,) = viewer.open(str(data_dir / "t2_seg-manual.nii.gz"), plugin=PLUGIN)
    return img, lab


def set_view(viewer, labels, view: str) -> None:
    """Show ``view`` through the middle of the mask, the whole slice in the canvas."""
    idx = np.argwhere(np.asarray(labels.data) > 0).mean(axis=0)
    centre = labels.data_to_world(np.round(idx))
    viewer.dims.order = VIEWS[view]
    viewer.dims.point = tuple(float(v) for v in centre)
    viewer.reset_view()


def screen_to_file_voxels(viewer, shape: tuple[int, int], affine: np.ndarray) -> np.ndarray:
    """File voxel index (rounded, H x W x 3) under each canvas pixel, from the affine only."""
    from napari_spineseg.io.geometry import RAS_TO_DISPLAY

    h, w = shape
    displayed = list(viewer.dims.displayed)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    center = np.asarray(camera.center)[-2:]
    zoom = float(camera.zoom)
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    world = np.broadcast_to(np.asarray(viewer.dims.point, float), (h, w, 3)).copy()
    world[..., displayed[0]] = center[0] + (rows + 0.5 - h / 2) / zoom
    world[..., displayed[1]] = center[1] + (cols + 0.5 - w / 2) / zoom
    ras = world @ np.linalg.inv(RAS_TO_DISPLAY).T
    vox = (ras - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    return np.rint(vox).astype(int)


def overlay_agreement(viewer, labels, mask_path: Path) -> dict:
    """Fraction of mask-coloured pixels on mask voxels (precision) and vice versa (recall)."""
    mask_img = nib.load(str(mask_path))
    mask = np.asanyarray(mask_img.dataobj) > 0
    labels.visible = False
    off = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    labels.visible = True
    labels.opacity = 1.0
    labels.colormap = {None: "transparent", 0: "transparent", 1: "red"}
    on = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    changed = np.abs(on - off).sum(axis=-1) > 30
    vox = screen_to_file_voxels(viewer, changed.shape, mask_img.affine)
    inside = np.all((vox >= 0) & (vox < np.array(mask.shape)), axis=-1)
    expected = np.zeros(changed.shape, bool)
    expected[inside] = mask[tuple(vox[inside].T)]
    both = np.count_nonzero(changed & expected)
    return {
        "changed_pixels": int(changed.sum()),
        "expected_pixels": int(expected.sum()),
        "precision": both / max(int(changed.sum()), 1),
        "recall": both / max(int(expected.sum()), 1),
        "canvas": list(changed.shape),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print overlay agreement as JSON")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs")
    args = parser.parse_args(argv)
    if not (DATA / "t2.nii.gz").exists():
        print(f"SCT testing data not found in {DATA}", file=sys.stderr)
        return 2

    import napari
    from PIL import Image as PILImage

    viewer = napari.Viewer(show=True, title="napari-spineseg: t2 + manual cord mask")
    viewer.window.resize(1200, 820)
    img, lab = open_t2(viewer)
    if args.check:
        result = {}
        for view in VIEWS:
            set_view(viewer, lab, view)
            result[view] = overlay_agreement(viewer, lab, DATA / "t2_seg-manual.nii.gz")
        print(json.dumps(result))
        viewer.close()
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for view, name in (("axial", "t2_overlay.png"), ("sagittal", "t2_overlay_sagittal.png")):
        set_view(viewer, lab, view)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        PILImage.fromarray(shot).save(args.out / name)
        print(args.out / name)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
