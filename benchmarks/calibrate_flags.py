"""Flag calibration on SCT's example data: the figures of docs/review.md, recomputed.

Three sets of slices, all in the display orientation (axis 0 = superior -> inferior):

1. **Manual masks** (SCT's ``*_seg-manual``, ``*_gmseg_manual``, gold standards, the fake
   lesion's cord and lesion): slices a rater accepted. They should mostly pass.
2. **Corrupted manual masks**: one known fault per copy, on every 7th cord slice (a
   missing slice, a blob beside the cord, an area change of 50 %, a cord shifted away
   from its lesion). Each fault should raise its flag.
3. **Stand-in outputs** (``--standin``): the shipped demo model (trained on the phantom)
   run on the real scans, i.e. a model that does not fit the images. A slice is *poor*
   when its Dice with the manual cord mask is below 0.7; poor slices should be flagged,
   and no crop-and-refine slab should be suggested for a result that is poor throughout.

Usage::

    python -m benchmarks.calibrate_flags [--data DIR] [--standin] [--cache DIR]

``--standin`` runs the demo model on four scans (minutes on a CPU; PAM50 is 275 slices);
``--cache`` keeps its outputs (``.npz``) for the next run.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sct_testing_data"

#: manual masks: (file, classes)
MANUAL = (
    ("t2/t2_seg-manual.nii.gz", {1: "sc"}),
    ("t2/t2_fake_lesion_sc_seg.nii.gz", {1: "sc"}),
    ("t2/t2_fake_lesion_lesion_seg.nii.gz", {1: "lesion"}),
    ("t2s/t2s_seg.nii.gz", {1: "sc"}),
    ("t2s/t2s_gmseg_manual.nii.gz", {1: "gm"}),
    ("mt/mt1_seg.nii.gz", {1: "sc"}),
    ("mt/mt1_gmseg_goldstandard.nii.gz", {1: "gm"}),
    ("template/template/PAM50_small_levels.nii.gz", {1: "sc"}),  # levels painted on the cord
)
#: stand-in runs: image -> its manual cord mask
STANDIN = (
    ("template/template/PAM50_small_t2.nii.gz", "template/template/PAM50_small_levels.nii.gz"),
    ("t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz"),
    ("t2s/t2s.nii.gz", "t2s/t2s_seg.nii.gz"),
    ("t2/t2_fake_lesion.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz"),
)
POOR_DICE = 0.7


def display_mask(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A binary mask in display order and its voxel size."""
    from napari_spineseg.io import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = load(path)
    data = vol.geometry.to_display(np.asarray(vol.data))
    return (data > 0).astype(np.uint8), tuple(float(s) for s in vol.geometry.scale)


def corruptions(cord: np.ndarray) -> dict[str, tuple[str, np.ndarray, list[int]]]:
    """name -> (flag expected, corrupted labels (1 = cord, 2 = lesion), slices hit)."""
    rows = np.flatnonzero(cord.any(axis=(1, 2)))
    hit = [int(z) for z in rows[3:-3:7]]  # inside the extent, spaced for ±2 neighbours
    out: dict[str, tuple[str, np.ndarray, list[int]]] = {}

    gap = cord.copy()
    gap[hit] = 0
    out["slice missing"] = ("empty", gap, hit)

    blob = cord.copy()
    for z in hit:
        ys, xs = np.nonzero(cord[z])
        y, x = int(ys.min()) - 3, int(xs.min()) - 3  # a 2x2 blob off the cord's corner
        blob[z, max(y, 0) : max(y, 0) + 2, max(x, 0) : max(x, 0) + 2] = 1
    out["extra blob"] = ("extra_components", blob, hit)

    swell = cord.copy()
    from scipy import ndimage

    for z in hit:
        grown = cord[z].astype(bool)
        while grown.sum() < 1.5 * cord[z].sum():  # at least +50 % area
            grown = ndimage.binary_dilation(grown)
        swell[z] = grown
    out["area +50%"] = ("area_jump", swell, hit)

    lesion = cord.copy()
    for z in hit:
        ys, xs = np.nonzero(cord[z])
        cy, cx = int(ys.mean()), int(xs.mean())
        lesion[z, cy, cx] = 2  # a lesion voxel in the cord ...
        lesion[z] = np.where(lesion[z] == 1, 0, lesion[z])  # ... whose cord was erased
    out["lesion without cord"] = ("lesion_outside_cord", lesion, hit)
    return out


def manual_figures(data: Path) -> list[dict]:
    from napari_spineseg.correction import edge_slices, slice_table

    rows = []
    for rel, classes in MANUAL:
        path = data / rel
        if not path.exists():
            continue
        lab, spacing = display_mask(path)
        t = slice_table(lab, spacing, classes)
        ext = t.extent[1]
        n = 0 if ext is None else ext[1] - ext[0] + 1
        rows.append(
            {
                "mask": rel,
                "slices": n,
                "flagged": int(t.flagged().sum()),
                "by_flag": {f: int(v.sum()) for f, v in t.flags.items() if v.any()},
                "slab": edge_slices(t),
            }
        )
    return rows


def corruption_figures(data: Path) -> list[dict]:
    from napari_spineseg.correction import slice_table

    rows = []
    for rel in ("t2/t2_seg-manual.nii.gz", "t2/t2_fake_lesion_sc_seg.nii.gz"):
        if not (data / rel).exists():
            continue
        cord, spacing = display_mask(data / rel)
        for name, (flag, lab, hit) in corruptions(cord).items():
            t = slice_table(lab, spacing, {1: "sc", 2: "lesion"})
            raised = np.flatnonzero(t.flags[flag])
            rows.append(
                {
                    "mask": rel,
                    "fault": name,
                    "flag": flag,
                    "caught": len(set(hit) & set(raised.tolist())),
                    "faults": len(hit),
                    "other slices flagged": int(t.flagged().sum()) - len(set(hit)),
                }
            )
    return rows


def standin_outputs(data: Path, cache: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image -> (cord labels, cord probability) of the demo model, display order."""
    from napari_spineseg import api
    from napari_spineseg.demo import demo_model_folder
    from napari_spineseg.io import load

    out = {}
    for image, _manual in STANDIN:
        key = image.replace("/", "_")
        cached = cache / f"{key}.npz" if cache is not None else None
        if cached is not None and cached.exists():
            with np.load(cached) as z:
                out[image] = (z["labels"], z["prob"])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = api.segment(data / image, model=demo_model_folder(), trust=True, device="cpu")
            geometry = load(data / image).geometry
        cord = next(o for o in res.outputs.values() if "cord" in o.classes.values())
        labels = geometry.to_display(cord.labels).astype(np.uint8)
        prob = geometry.to_display(res.probabilities["cord"]).astype(np.float32)
        if cached is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cached, labels=labels, prob=prob)
        out[image] = (labels, prob)
    return out


def standin_figures(data: Path, cache: Path | None) -> list[dict]:
    from napari_spineseg.correction import edge_slices, slice_table

    rows = []
    for image, (labels, prob) in standin_outputs(data, cache).items():
        manual, spacing = display_mask(data / dict(STANDIN)[image])
        t = slice_table(labels, spacing, {1: "cord"}, probabilities={"cord": prob})
        seg = labels > 0
        inter = (seg & (manual > 0)).sum(axis=(1, 2))
        size = seg.sum(axis=(1, 2)) + (manual > 0).sum(axis=(1, 2))
        present = size > 0
        dice = np.where(present, 2 * inter / np.maximum(size, 1), 1.0)
        poor = present & (dice < POOR_DICE)
        good = present & ~poor
        flagged = t.flagged()
        rows.append(
            {
                "image": image,
                "slices": int(present.sum()),
                "poor": int(poor.sum()),
                "poor flagged": int((poor & flagged).sum()),
                "good": int(good.sum()),
                "good flagged": int((good & flagged).sum()),
                "by_flag": {f: int(v.sum()) for f, v in t.flags.items() if v.any()},
                "confidence median (poor)": float(np.nanmedian(t.confidence[1][poor]))
                if poor.any()
                else float("nan"),
                "slab": edge_slices(t),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--standin", action="store_true", help="run the demo model (slow)")
    parser.add_argument("--cache", type=Path, default=None, help="keep stand-in outputs here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"no SCT example data at {args.data}")

    print("Manual masks (should pass)")
    total = flagged = 0
    for r in manual_figures(args.data):
        total += r["slices"]
        flagged += r["flagged"]
        slab = r["slab"].top or r["slab"].bottom
        print(f"  {r['mask']:48s} {r['flagged']:3d}/{r['slices']:3d} {r['by_flag']} slab={slab}")
    print(f"  total: {flagged}/{total} slices flagged ({flagged / max(total, 1):.1%})")

    print("Corrupted manual masks (each fault should raise its flag)")
    for r in corruption_figures(args.data):
        print(
            f"  {r['mask']:36s} {r['fault']:20s} {r['flag']:20s} "
            f"caught {r['caught']}/{r['faults']}, other slices flagged {r['other slices flagged']}"
        )

    if args.standin:
        print(f"Stand-in model on real scans (poor = Dice < {POOR_DICE} with the manual mask)")
        for r in standin_figures(args.data, args.cache):
            s = r["slab"]
            print(
                f"  {r['image']:42s} poor flagged {r['poor flagged']}/{r['poor']}, good flagged "
                f"{r['good flagged']}/{r['good']}, {r['by_flag']}, confidence of poor "
                f"slices {r['confidence median (poor)']:.2f}; slab: "
                f"{s.top or s.bottom or '-'} ({s.note or 'no note'})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
