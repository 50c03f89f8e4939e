"""A static HTML QC report of a derivatives folder, in the spirit of SCT's ``-qc`` report.

Why: triaging a study means looking at every mask once, quickly, and noting which need
work. ``spineseg qc DERIV -o QCDIR`` writes ``QCDIR/index.html`` (opens from disk, no
server, no network) with one row per image × output file: an axial mosaic of the slices
the mask covers, cropped around the cord, in the task's class colours (→ toggles the
overlay), a sagittal overview, the per-slice flags of the review queue
(:func:`napari_spineseg.correction.qc.slice_table`, the same definitions; the
``low_confidence`` slices and the lowest confidence come from the record the batch
computed with that function while it had the model's probabilities, :mod:`.confidence`,
and are shown while the mask is still the model's output), volume and mean
cross-sectional area, and a filter on flags. The reviewer marks rows with SCT's keys
(↑/↓ previous/next, F cycles ✅ pass / ❌ fail / ⚠️ artifact, / jumps to search); marks
live in the browser's local storage and "Save Fails" / "Save Artifacts" download
``qc_fail.yml`` / ``qc_artifact.yml`` in the format of SCT's ``manual-correction``
scripts (``FILES_SEG: [image, ...]``, ``FILES_LESION: ...``), which the Cohort widget
also reads.

Images are rendered in parallel worker processes and cached under ``QCDIR/.cache``: a
row is redrawn only when its image or mask file changed.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import catalog
from ..catalog import OutputSpec
from ..errors import SpinesegError
from . import bids

RENDER_VERSION = "5"  # bump when the pictures or metrics change: invalidates the cache
MARKS = {"pass": "✅", "fail": "❌", "artifact": "⚠️"}
TILE_PX = 64
MAX_TILES = 48
MOSAIC_COLUMNS = 10

#: manual-correction's YAML keys (its ``-config`` file, and SCT's ``qc_fail.yml``).
YAML_KEYS = (
    "FILES_SEG",
    "FILES_GMSEG",
    "FILES_LESION",
    "FILES_LABEL",
    "FILES_COMPRESSION",
    "FILES_PMJ",
    "FILES_ROOTLETS",
    "FILES_CENTERLINE",
)


def manual_correction_key(output: OutputSpec) -> str:
    """The manual-correction list an output file belongs to (from the catalog's outputs).

    Lesion classes -> ``FILES_LESION``; the rootlets file -> ``FILES_ROOTLETS``; the disc
    levels of ``spine`` -> ``FILES_LABEL``; gray/white matter -> ``FILES_GMSEG``; any
    other mask (cord, CSF, canal, vertebrae) -> ``FILES_SEG``.
    """
    from ..correction.qc import is_lesion_name

    names = [str(n) for n in output.names.values()] or list(output.classes or ())
    if any(is_lesion_name(n) for n in names):
        return "FILES_LESION"
    if output.suffix == catalog.ROOTLETS.outputs[0].suffix:
        return "FILES_ROOTLETS"
    if output.suffix == catalog.SPINE.outputs[0].suffix:
        return "FILES_LABEL"
    if names and all(n.lower() in ("gm", "wm") for n in names):
        return "FILES_GMSEG"
    return "FILES_SEG"


@dataclass(frozen=True)
class QcRow:
    """One image × output file of the report (paths absolute)."""

    id: str
    subject: str
    session: str
    image: str
    image_rel: str
    mask: str
    mask_rel: str
    suffix: str
    yaml_key: str
    classes: dict[int, str]
    colors: dict[int, tuple[float, float, float, float]]
    cord_reference: str | None = None


def collect(deriv: str | os.PathLike) -> list[QcRow]:
    """The rows of a derivatives folder written by ``spineseg batch`` (masks that exist)."""
    plan = bids.load_plan(deriv)
    rows = []
    for image in plan.images:
        ent = bids.entities(image)
        folder = plan.folder(image)
        names = bids.output_names(plan.spec, image)
        cord_file = next(
            (
                folder / names[o.suffix]
                for o in plan.spec.outputs
                if o.binary and manual_correction_key(o) == "FILES_SEG"
            ),
            None,
        )
        for out in plan.spec.outputs:
            mask = folder / names[out.suffix]
            if not mask.is_file():
                continue
            key = manual_correction_key(out)
            classes = dict(out.names) or {1: out.suffix.strip("_")}
            ref = (
                cord_file if key == "FILES_LESION" and cord_file and cord_file.is_file() else None
            )
            rows.append(
                QcRow(
                    id=mask.name[: -len(".nii.gz")],
                    subject=ent["sub"],
                    session=ent.get("ses", ""),
                    image=str(image),
                    image_rel=image.relative_to(plan.raw_root).as_posix(),
                    mask=str(mask),
                    mask_rel=mask.relative_to(plan.deriv).as_posix(),
                    suffix=out.suffix,
                    yaml_key=key,
                    classes={int(v): str(n) for v, n in classes.items()},
                    colors={int(v): tuple(c) for v, c in out.colors.items()},
                    cord_reference=str(ref) if ref else None,
                )
            )
    if not rows:
        raise SpinesegError(
            f"{deriv}: no mask to report yet; run `spineseg batch` (see `--status`)"
        )
    return rows


# ----------------------------------------------------------------------------- rendering


def _cache_key(row: QcRow) -> str:
    from .. import sidecar

    parts = [RENDER_VERSION, json.dumps(asdict(row), sort_keys=True)]
    side = sidecar.sidecar_path(row.mask)  # the confidence record and the corrections
    for p in (row.image, row.mask, row.cord_reference, side):
        if p:
            try:
                st = os.stat(p)
            except FileNotFoundError:  # a mask without a sidecar
                parts.append("-")
                continue
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _gray(img: np.ndarray) -> np.ndarray:
    """0..1 grey levels windowed on the shown voxels (1st to 99.5th percentile)."""
    vals = img[np.isfinite(img)]
    lo, hi = np.percentile(vals, [1.0, 99.5]) if vals.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    return np.clip((img - lo) / (hi - lo), 0, 1)


def _rgb(gray: np.ndarray, labels: np.ndarray | None, colors: Mapping[int, Any]) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if labels is not None:
        for v in np.unique(labels):
            if v == 0:
                continue
            col = np.asarray(colors.get(int(v), (1.0, 1.0, 0.0, 1.0))[:3], np.float32)
            sel = labels == v
            rgb[sel] = 0.45 * rgb[sel] + 0.55 * col
    return (rgb * 255 + 0.5).astype(np.uint8)


def _resize(rgb: np.ndarray, height: int, width: int):
    from PIL import Image

    return Image.fromarray(rgb).resize((max(1, width), max(1, height)), Image.NEAREST)


def _crop_box(occupied: np.ndarray, spacing: tuple[float, float]) -> tuple[slice, slice]:
    """Square (in mm) in-plane window around the mask, 60 % margin, at least 16 mm."""
    rows = np.flatnonzero(occupied.any(axis=1))
    cols = np.flatnonzero(occupied.any(axis=0))
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    half_mm = max(
        8.0,
        0.8 * max((rows[-1] - rows[0] + 1) * spacing[0], (cols[-1] - cols[0] + 1) * spacing[1]),
    )
    out = []
    for c, s in zip(centre, spacing, strict=True):
        h = int(math.ceil(half_mm / s))
        out.append(slice(int(round(c)) - h, int(round(c)) + h + 1))
    return out[0], out[1]


def _window(a: np.ndarray, rs: slice, cs: slice) -> np.ndarray:
    """``a[..., rs, cs]`` padded with zeros where the window leaves the array."""
    h, w = a.shape[-2:]
    out = np.zeros((*a.shape[:-2], rs.stop - rs.start, cs.stop - cs.start), a.dtype)
    r0, r1, c0, c1 = max(rs.start, 0), min(rs.stop, h), max(cs.start, 0), min(cs.stop, w)
    if r1 > r0 and c1 > c0:
        out[..., r0 - rs.start : r1 - rs.start, c0 - cs.start : c1 - cs.start] = a[
            ..., r0:r1, c0:c1
        ]
    return out


def render_row(row: QcRow, img_dir: str | os.PathLike) -> dict[str, Any]:
    """Metrics and pictures of one row (run in a worker process); returns the row's data.

    Writes ``<id>_axial.png`` / ``<id>_axial_overlay.png`` (mosaic of the axial slices
    from the mask's first to its last, superior first, anterior up, patient right on the
    left) and ``<id>_sag.png`` / ``<id>_sag_overlay.png`` (the sagittal slice through the
    mask's centre, superior up, anterior left) into ``img_dir``.
    """
    from PIL import Image, ImageDraw

    from .. import sidecar
    from ..correction import qc
    from ..io import load
    from .confidence import read as read_confidence

    vol, mask = load(row.image), load(row.mask)
    if not vol.geometry.matches(mask.geometry):
        raise SpinesegError(f"{row.mask}: not on the grid of {row.image}; re-run the batch")
    img = np.asarray(vol.display_data(), np.float32)
    if img.ndim == 4:
        img = img.mean(axis=0)
    lab = np.asarray(mask.display_data())
    spacing = tuple(float(s) for s in vol.geometry.scale[-3:])
    ref = None
    if row.cord_reference:
        ref = np.asarray(load(row.cord_reference).display_data()) > 0
    table = qc.slice_table(lab, spacing, row.classes, cord_reference=ref)
    summary = qc.summary(lab, spacing, row.classes)
    flags = {f: np.flatnonzero(table.flags[f]).tolist() for f in qc.FLAGS}
    model = read_confidence(sidecar.read(row.mask))
    flagged = table.flagged()
    # the record's slices: flagged by slice_table at batch time, from the probabilities
    low = [s for s in model.flagged_slices() if s < table.n_slices]
    flags["low_confidence"] = sorted(set(flags["low_confidence"]) | set(low))
    flagged[low] = True
    lowest = model.lowest()
    data: dict[str, Any] = {
        **{k: v for k, v in asdict(row).items() if k not in ("classes", "colors")},
        "classes": {str(k): v for k, v in row.classes.items()},
        "flags": {f: s for f, s in flags.items() if s},
        "flagged_slices": int(flagged.sum()),
        "confidence": None
        if lowest is None
        else {
            "lowest": lowest[0],
            "class": lowest[1],
            "slice": lowest[2],
            "corrected": model.corrected,
        },
        "volume_mm3": {s.name: round(s.volume_mm3, 1) for s in summary.values()},
        "csa_mm2": {
            s.name: round(float(s.area_profile[s.first : s.last + 1].mean()), 1)
            for s in summary.values()
            if s.area_profile is not None and s.first is not None
        },
        "slices": [],
        "empty": not lab.any(),
    }
    img_dir = Path(img_dir)
    names = {k: f"{row.id}_{k}.png" for k in ("axial", "axial_overlay", "sag", "sag_overlay")}
    data["png"] = names
    occupied = lab != 0
    covered = np.flatnonzero(occupied.any(axis=(1, 2)))
    if covered.size:  # the whole extent: a gap in the mask shows as a tile without overlay
        covered = np.arange(covered[0], covered[-1] + 1)
    else:  # an empty mask: the middle slice, no crop
        covered = np.array([lab.shape[0] // 2])
        occupied = np.ones_like(occupied)
    if covered.size > MAX_TILES:
        covered = covered[np.linspace(0, covered.size - 1, MAX_TILES).round().astype(int)]
    data["slices"] = covered.tolist()
    rs, cs = _crop_box(occupied.any(axis=0), spacing[1:])
    crop_img = _window(img[covered], rs, cs)
    crop_lab = _window(lab[covered], rs, cs)
    gray = _gray(crop_img)
    th = TILE_PX
    tw = max(
        1, round(TILE_PX * (crop_img.shape[2] * spacing[2]) / (crop_img.shape[1] * spacing[1]))
    )
    ncol = min(MOSAIC_COLUMNS, covered.size)
    nrow = math.ceil(covered.size / ncol)
    for key, with_labels in (("axial", False), ("axial_overlay", True)):
        sheet = Image.new("RGB", (ncol * tw, nrow * th))
        draw = ImageDraw.Draw(sheet)
        for k, z in enumerate(covered):
            tile = _rgb(gray[k], crop_lab[k] if with_labels else None, row.colors)
            x, y = (k % ncol) * tw, (k // ncol) * th
            sheet.paste(_resize(tile, th, tw), (x, y))
            draw.text((x + 2, y + 1), str(int(z)), fill=(255, 255, 0))
        sheet.save(img_dir / names[key], optimize=False)
    # sagittal: the left-right column through the mask's centre, cropped in A-P
    col = int(round(np.argwhere(occupied).mean(axis=0)[2])) if lab.any() else lab.shape[2] // 2
    sag_img, sag_lab = img[:, :, col], lab[:, :, col]
    rows_ap = np.flatnonzero(occupied.any(axis=(0, 2)))
    half = max(int(math.ceil(12.0 / spacing[1])), rows_ap[-1] - rows_ap[0])
    mid = (rows_ap[0] + rows_ap[-1]) // 2
    sl = slice(mid - half, mid + half + 1)
    s_img = _window(sag_img[None], slice(0, sag_img.shape[0]), sl)[0]
    s_lab = _window(sag_lab[None], slice(0, sag_lab.shape[0]), sl)[0]
    s_gray = _gray(s_img)
    height_mm, width_mm = s_img.shape[0] * spacing[0], s_img.shape[1] * spacing[1]
    sh = min(480, max(240, round(height_mm * 3)))
    sw = max(40, round(sh * width_mm / height_mm))
    _resize(_rgb(s_gray, None, row.colors), sh, sw).save(img_dir / names["sag"])
    _resize(_rgb(s_gray, s_lab, row.colors), sh, sw).save(img_dir / names["sag_overlay"])
    return data


def _cached(row: QcRow, img_dir: str, cache_dir: str) -> dict[str, Any] | None:
    """The row's data from the cache when its files did not change, else None."""
    cache = Path(cache_dir) / f"{row.id}.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == _cache_key(row) and all(
            (Path(img_dir) / n).is_file() for n in cached["data"]["png"].values()
        ):
            return cached["data"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


def _render_cached(row: QcRow, img_dir: str, cache_dir: str) -> dict[str, Any]:
    key = _cache_key(row)
    cache = Path(cache_dir) / f"{row.id}.json"
    try:
        data = render_row(row, img_dir)
    except SpinesegError as exc:
        data = {**asdict(row), "classes": {}, "colors": {}, "error": str(exc), "png": {}}
        data.update(flags={}, flagged_slices=0, volume_mm3={}, csa_mm2={}, slices=[])
        data["confidence"] = None
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "data": data}), encoding="utf-8")
    os.replace(tmp, cache)
    return data


def write_report(deriv: str | os.PathLike, qc_dir: str | os.PathLike, *, jobs: int = 2) -> Path:
    """Write ``qc_dir/index.html`` (and its PNGs) for ``deriv``; returns the index path.

    ``jobs`` worker processes render the rows (1: in this process). Rows whose files did
    not change since the last report are taken from the cache.
    """
    from ..correction.qc import FLAGS
    from ._qc_page import page

    rows = collect(deriv)
    qc_dir = Path(qc_dir).expanduser().absolute()
    img_dir, cache_dir = qc_dir / "img", qc_dir / ".cache"
    img_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data: list[dict[str, Any] | None] = [_cached(r, str(img_dir), str(cache_dir)) for r in rows]
    todo = [i for i, d in enumerate(data) if d is None]
    args = [(rows[i], str(img_dir), str(cache_dir)) for i in todo]
    if jobs <= 1 or len(todo) <= 1:
        fresh = [_render_cached(*a) for a in args]
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        workers = min(int(jobs), len(todo))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            fresh = list(pool.map(_render_cached, *zip(*args, strict=True), chunksize=2))
    for i, d in zip(todo, fresh, strict=True):
        data[i] = d
    deriv_abs = Path(deriv).expanduser().absolute()
    report_id = hashlib.sha256(str(deriv_abs).encode()).hexdigest()[:12]
    index = qc_dir / "index.html"
    tmp = index.with_name(".index.html.tmp")
    tmp.write_text(
        page(
            title=f"napari-spineseg QC: {html.escape(deriv_abs.name)}",
            deriv=str(deriv_abs),
            report_id=report_id,
            rows=data,
            flags=list(FLAGS),
        ),
        encoding="utf-8",
    )
    os.replace(tmp, index)
    return index


def read_marks_yaml(path: str | os.PathLike) -> dict[str, list[str]]:
    """A manual-correction YAML (``qc_fail.yml``): ``{key: [image file, ...]}``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpinesegError(f"{path}: not a readable YAML file ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, list | None) for v in data.values()):
        raise SpinesegError(
            f"{path}: not a manual-correction YAML (expected 'FILES_SEG: [image, ...]' lists)"
        )
    return {str(k): [str(f) for f in v or []] for k, v in data.items()}
