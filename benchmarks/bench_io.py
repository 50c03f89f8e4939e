"""Benchmark of the NIfTI core (napari_spineseg.io) against plain nibabel.

Run: ``python benchmarks/bench_io.py`` (about 1 min on 2 cores), ``--quick`` (~20 s).

(a) Open: a NIfTI file to a napari-ready layer array. Ours = ``io.load`` (byte sniffing,
    header checks, eager read of ``.nii.gz``, NaN scan) + ``layers.volume_layer_data``
    (display-order view, contrast limits, labels heuristic) when that module exists, else
    ``Volume.display_data()``. Baseline = ``nib.load`` + ``np.asanyarray(img.dataobj)``.
    Goal: <= 1.2x.
(b) Save a mask: ours = ``io.save_labels`` (dtype policy, exact header copy, temp file,
    fsync, re-read verification, atomic replace). Baseline = ``nib.Nifti1Image(mask,
    affine, header).to_filename``. Goal: <= 1.5x. nibabel does not fsync; ours flushes the
    temp file and the folder to disk (a crash or power cut can then never leave a
    half-written mask), so a second row times ours with fsync made a no-op, to show
    what the flushes cost on the disk at hand.
    Both on ``sct_testing_data/t2/t2.nii.gz`` (when present) and on a synthetic mouse-sized
    200x200x500 int16 volume written once as ``.nii.gz`` and ``.nii``. Variants alternate
    in one process (order swapped every repeat); the figure is the median of N repeats.
(c) Peak memory of opening the large volume: one fresh subprocess per variant, peak RSS
    (VmHWM, reset through /proc/self/clear_refs once the libraries are imported) minus
    the RSS before the call, divided by the array size. Goal: <= 1.5x for ``.nii.gz``;
    an uncompressed ``.nii`` must not be read at open (memory-mapped: < 1x; only
    samples for contrast limits and the labels-or-image decision are touched).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _memory import hwm_mb, reset_peak, rss_mb  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
T2 = ROOT.parent / "shared/data/sct_testing_data/t2/t2.nii.gz"
MOUSE_SHAPE = (200, 200, 500)
OPEN_GOAL, SAVE_GOAL, MEM_GOAL = 1.2, 1.5, 1.5
NII_MEM_GOAL = 1.0  # .nii: below a full read of the array


# ----------------------------------------------------------------------------- variants
def open_io(path: Path):
    """io.load + display_data(): the NIfTI core alone (no contrast limits, no heuristics)."""
    from napari_spineseg.errors import GeometryWarning
    from napari_spineseg.io import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return load(path)


def open_ours(path: Path):
    vol = open_io(path)
    try:
        from napari_spineseg.layers import volume_layer_data
    except ImportError:
        return vol.display_data()
    return volume_layer_data(vol)[0]


def open_nibabel(path: Path):
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def save_ours(mask: np.ndarray, path: Path, like) -> None:
    from napari_spineseg.io import save_labels

    save_labels(mask, path, like=like, keep_history=False)


def save_ours_no_fsync(mask: np.ndarray, path: Path, like) -> None:
    """save_labels with os.fsync made a no-op: what the durability flushes cost."""
    from napari_spineseg.io import writer

    real = writer.os.fsync
    writer.os.fsync = lambda fd: None
    try:
        save_ours(mask, path, like)
    finally:
        writer.os.fsync = real


def save_nibabel(mask: np.ndarray, path: Path, like) -> None:
    import nibabel as nib

    nib.Nifti1Image(mask, like.affine, like.header).to_filename(str(path))


# ----------------------------------------------------------------------------- helpers
def _mouse_volume() -> np.ndarray:
    """A smooth cord-like int16 volume with noise: compresses like a real scan."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(MOUSE_SHAPE[0]), np.arange(MOUSE_SHAPE[1]), indexing="ij")
    r = np.hypot(x - 100, y - 100)
    slab = (800 * np.exp(-((r / 30) ** 2)) + 200 * (r < 45)).astype(np.float32)
    vol = np.repeat(slab[:, :, None], MOUSE_SHAPE[2], axis=2)
    vol += rng.normal(0, 20, MOUSE_SHAPE).astype(np.float32)
    return np.clip(vol, 0, 32767).astype(np.int16)


def _write_mouse(folder: Path) -> dict[str, Path]:
    import nibabel as nib

    aff = np.diag([0.05, 0.05, 0.05, 1.0])
    img = nib.Nifti1Image(_mouse_volume(), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    out = {}
    for ext in (".nii.gz", ".nii"):
        out[ext] = folder / f"mouse{ext}"
        img.to_filename(str(out[ext]))
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _interleaved(variants: dict, repeats: int, setup=None) -> dict[str, float]:
    """Median seconds per variant; variants alternate, order reversed every repeat."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for name in names:  # warm-up (imports, page cache)
        if setup:
            setup()
        variants[name]()
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if setup:
                setup()
            times[name].append(_timed(variants[name]))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_time(files: dict[str, Path], repeats: int, folder: Path) -> list[dict]:
    from napari_spineseg.errors import GeometryWarning
    from napari_spineseg.io import load

    rows = []
    for label, path in files.items():
        t = _interleaved(
            {
                "layer": lambda p=path: open_ours(p),
                "io": lambda p=path: open_io(p).display_data(),
                "nibabel": lambda p=path: open_nibabel(p),
            },
            repeats,
        )
        rows.append(_row("open -> layer data", label, t, OPEN_GOAL, ours="layer"))
        rows.append(_row("open (io.load + display_data)", label, t, OPEN_GOAL, ours="io"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GeometryWarning)
            vol = load(path)
        spatial = np.asarray(vol.data[..., 0] if vol.is_4d else vol.data)
        mask = (spatial > np.median(spatial)).astype(np.uint8)
        ext = ".nii.gz" if path.name.endswith(".gz") else ".nii"
        targets = {
            "ours": folder / f"seg_ours{ext}",
            "nofsync": folder / f"seg_nofsync{ext}",
            "nibabel": folder / f"seg_nib{ext}",
        }

        def clean(targets=targets):
            for p in targets.values():
                p.unlink(missing_ok=True)

        t = _interleaved(
            {
                "ours": lambda m=mask, v=vol, p=targets["ours"]: save_ours(m, p, v),
                "nofsync": lambda m=mask, v=vol, p=targets["nofsync"]: save_ours_no_fsync(m, p, v),
                "nibabel": lambda m=mask, v=vol, p=targets["nibabel"]: save_nibabel(m, p, v),
            },
            repeats,
            setup=clean,
        )
        clean()
        rows.append(_row("save mask", label, t, SAVE_GOAL))
        rows.append(_row("save mask, fsync excluded (info)", label, t, SAVE_GOAL, ours="nofsync"))
    return rows


def _row(what: str, label: str, t: dict[str, float], goal: float, ours: str = "ours") -> dict:
    ratio = t[ours] / t["nibabel"]
    return {
        "what": what,
        "file": label,
        "ours_ms": 1e3 * t[ours],
        "nibabel_ms": 1e3 * t["nibabel"],
        "ratio": ratio,
        "goal": goal,
        "ok": ratio <= goal,
    }


# ----------------------------------------------------------------------------- memory


def _memory_worker(variant: str, path: str) -> None:
    import nibabel as nib  # noqa: F401 - imports are not part of the figure

    import napari_spineseg.io  # noqa: F401

    with contextlib.suppress(ImportError):
        import napari_spineseg.layers  # noqa: F401
    reset = reset_peak()
    rss0 = rss_mb()
    openers = {
        "ours": open_ours,
        "io": lambda p: open_io(p).display_data(),
        "nibabel": open_nibabel,
    }
    data = openers[variant](Path(path))
    result = {
        "peak_mb": hwm_mb() - rss0 if reset else float("nan"),
        "array_mb": data.nbytes / 2**20,
        "memmap": isinstance(getattr(data, "base", None), np.memmap)
        or isinstance(data, np.memmap)
        or _is_memmap_view(data),
    }
    print(json.dumps(result))


def _is_memmap_view(a) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


def bench_memory(files: dict[str, Path]) -> list[dict]:
    rows = []
    for ext, path in files.items():
        res = {}
        for variant in ("ours", "io", "nibabel"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", variant, str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        # .nii: memory-mapped, never read whole at open; what is touched is the strided
        # samples for contrast limits and the labels-or-image decision (< 1x = not eager)
        goal = MEM_GOAL if ext == ".nii.gz" else NII_MEM_GOAL
        for variant, what in (("ours", "layer data"), ("io", "io.load + display_data")):
            ours = res[variant]
            ratio = ours["peak_mb"] / ours["array_mb"]
            rows.append(
                {
                    "file": f"mouse 200x200x500 int16 {ext}, {what}",
                    "array_mb": ours["array_mb"],
                    "ours_peak_mb": ours["peak_mb"],
                    "nibabel_peak_mb": res["nibabel"]["peak_mb"],
                    "ratio": ratio,
                    "goal": goal,
                    "memmap": ours["memmap"],
                    "ok": ratio <= goal and (ext == ".nii.gz" or ours["memmap"]),
                }
            )
    return rows


# ----------------------------------------------------------------------------- report
def print_tables(time_rows: list[dict], mem_rows: list[dict]) -> None:
    print("\n## napari_spineseg.io vs plain nibabel (median of interleaved repeats)\n")
    print("| operation | file | ours (ms) | nibabel (ms) | ratio | goal | |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in time_rows:
        print(
            f"| {r['what']} | {r['file']} | {r['ours_ms']:.1f} | {r['nibabel_ms']:.1f} | "
            f"{r['ratio']:.2f}x | <= {r['goal']}x | {'ok' if r['ok'] else 'MISSED'} |"
        )
    print("\n## Peak memory of opening (fresh process, VmHWM - RSS before)\n")
    print("| file | array (MB) | ours peak (MB) | nibabel peak (MB) | ours / array | goal | |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in mem_rows:
        note = " (memory-mapped)" if r["memmap"] else ""
        print(
            f"| {r['file']} | {r['array_mb']:.1f} | {r['ours_peak_mb']:.1f} | "
            f"{r['nibabel_peak_mb']:.1f} | {r['ratio']:.2f}x{note} | <= {r['goal']}x | "
            f"{'ok' if r['ok'] else 'MISSED'} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _memory_worker(*args.worker)
        return 0
    repeats = args.repeats or (5 if args.quick else 15)
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        folder = Path(tmp)
        mouse = _write_mouse(folder)
        files = {}
        if T2.exists():
            files["t2.nii.gz (60x55x52 int16)"] = T2
        else:
            print(f"note: {T2} not found, real-data rows skipped", file=sys.stderr)
        files["mouse 200x200x500 .nii.gz"] = mouse[".nii.gz"]
        files["mouse 200x200x500 .nii"] = mouse[".nii"]
        time_rows = bench_time(files, repeats, folder)
        mem_rows = bench_memory(mouse)
    print_tables(time_rows, mem_rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"time": time_rows, "memory": mem_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
