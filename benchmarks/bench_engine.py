"""Benchmark of the nnU-Net engine (napari_spineseg.engines.nnunet).

Run: ``python benchmarks/bench_engine.py`` (estimated 3-5 min on 2 idle cores; measured 7 min
with ``--threads 1`` on a shared 2-core machine at load average 6), ``--quick`` (no 3d_fullres
TTA, fewer repeats), ``--threads 1`` (skip the 2-thread runs), ``--no-realistic``.

(a) Overhead of ``NnunetModel.predict`` (nibabel image in, reorientation, progress hooks,
    labels back on the input grid) over a bare ``nnUNetPredictor.predict_single_npy_array``
    call on the already prepared ``(c, z, y, x)`` float32 array, same model, volume and
    settings. Time: both variants alternate in one process, median of N runs. Peak memory:
    one fresh subprocess per variant, peak RSS (VmHWM, reset through /proc/self/clear_refs
    after the input is ready) minus the RSS before the call, i.e. the memory the
    prediction itself needs.
(b) Time per run for tiny random-weight models (and the trained tiny models of
    tests/data/models when present) and for nnU-Net's default 3d_fullres network with
    random weights (PlainConvUNet, 6 stages 32-64-128-256-320-320, 2 convs per stage,
    30.8 M parameters, patch 64x128x128, spacing 1 mm iso) on a 128x128x64 (x, y, z) 1 mm
    phantom = exactly one patch, i.e. one sliding-window tile: the figure is the cost of
    one tile (multiply by tiles x folds for a real scan). With and without test-time
    augmentation (mirroring: 8 forwards per tile in 3D, 4 in 2D), 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _memory import hwm_mb, reset_peak, rss_mb  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- workers


def _phantom(shape, zooms, seed=1):
    from napari_spineseg.phantom import cord_phantom

    img, _ = cord_phantom(shape=tuple(shape), zooms=tuple(zooms), seed=seed)
    return img


def _bare_predictor(folder: Path, mirroring: bool):
    """The documented stock path: network from plans + manual_initialization."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dj = load_json(str(folder / "dataset.json"))
    pm = PlansManager(load_json(str(folder / "plans.json")))
    folds = sorted(p for p in folder.glob("fold_*") if (p / "checkpoint_final.pth").is_file())
    cks = [
        torch.load(p / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        for p in folds
    ]
    cm = pm.get_configuration(cks[0]["init_args"]["configuration"])
    net = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        determine_num_input_channels(pm, cm, dj),
        pm.get_label_manager(dj).num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )
    net.load_state_dict(cks[0]["network_weights"])
    pred = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    pred.manual_initialization(
        net,
        pm,
        cm,
        [c["network_weights"] for c in cks],
        dj,
        "nnUNetTrainer",
        cks[0].get("inference_allowed_mirroring_axes"),
    )
    return pred


def _runner(variant: str, folder: Path, img, mirroring: bool):
    """A zero-argument callable doing one prediction the ``variant`` way."""
    import numpy as np

    if variant == "bare":
        pred = _bare_predictor(folder, mirroring)
        # what a caller of the bare API has to hand over: (c, z, y, x) float32 + spacing
        data = np.asanyarray(img.dataobj).transpose(2, 1, 0)[None].astype(np.float32)
        props = {"spacing": [float(z) for z in img.header.get_zooms()[::-1]]}
        return lambda: pred.predict_single_npy_array(data, dict(props))
    from napari_spineseg.engines.nnunet import NnunetModel

    model = NnunetModel.load(folder, device="cpu", use_mirroring=mirroring)
    return lambda: model.predict(img)


def worker(job: dict) -> dict:
    import torch

    threads = int(job.get("threads", 1))
    os.environ["SPINESEG_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    folder = Path(job["folder"])
    img = _phantom(job["shape"], job["zooms"])
    img.dataobj  # noqa: B018  (data in memory before anything is measured)
    kind = job["kind"]
    if kind == "memory":
        run = _runner(job["variant"], folder, img, job.get("tta", False))
        torch.set_num_threads(threads)
        before = rss_mb()
        ok = reset_peak()
        t = time.perf_counter()
        run()
        dt = time.perf_counter() - t
        return {"delta_mb": hwm_mb() - before, "peak_mb": hwm_mb(), "time_s": dt, "hwm": ok}
    if kind == "time-pair":
        runs = {v: _runner(v, folder, img, job.get("tta", False)) for v in ("bare", "engine")}
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {"bare": [], "engine": []}
        for v in ("bare", "engine"):  # warm-up (lazy imports, allocator)
            runs[v]()
        for i in range(int(job["repeats"])):
            order = ("bare", "engine") if i % 2 == 0 else ("engine", "bare")
            for v in order:
                t = time.perf_counter()
                runs[v]()
                times[v].append(time.perf_counter() - t)
        return {
            **{v: statistics.median(ts) for v, ts in times.items()},
            **{f"{v}_min": min(ts) for v, ts in times.items()},
        }
    if kind == "run":
        from napari_spineseg.engines.nnunet import NnunetModel
        from napari_spineseg.progress import Reporter

        model = NnunetModel.load(folder, device="cpu", use_mirroring=job.get("tta", False))
        torch.set_num_threads(threads)
        n_in = model.num_input_channels
        inputs = img if n_in == 1 else [img] * n_in
        tiles = []
        times = []
        for _ in range(int(job["repeats"])):
            t = time.perf_counter()
            model.predict(inputs, Reporter(lambda p: p.total and tiles.append(p.total)))
            times.append(time.perf_counter() - t)
        return {
            "time_s": statistics.median(times),
            "tiles": tiles[-1] if tiles else None,
            "folds": len(model.folds),
            "mirroring": model.last_info["mirroring"],
        }
    raise ValueError(kind)


def run_job(job: dict, timeout: float = 600) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {job}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- models
def build_models(root: Path, realistic: bool) -> dict[str, Path]:
    from napari_spineseg.engines._nnunet_random import DEFAULT_3D_FULLRES, write_random_model

    models = {
        "tiny 3d (2 stages 4-8, 2 folds)": write_random_model(root / "t3d", folds=(0, 1)),
        "tiny region 2ch (sigmoid)": write_random_model(
            root / "treg",
            labels={"background": 0, "sc": [1, 2], "lesion": 2},
            regions_class_order=[1, 2],
            channel_names={"0": "T2w", "1": "noNorm"},
        ),
        "tiny 2d": write_random_model(
            root / "t2d",
            configuration="2d",
            patch_size=(32, 32),
            spacing=(1.0, 1.0),
            mirror_axes=(0, 1),
        ),
    }
    trained = ROOT / "tests" / "data" / "models"
    for ds in sorted(trained.glob("*/dataset.json")) if trained.is_dir() else []:
        if any(ds.parent.glob("fold_*/checkpoint_*.pth")):
            models[f"trained {ds.parent.name}"] = ds.parent
    if realistic:
        models["3d_fullres default (30.8M)"] = write_random_model(
            root / "full",
            architecture=DEFAULT_3D_FULLRES,
            patch_size=(64, 128, 128),
            spacing=(1.0, 1.0, 1.0),
        )
    return models


# --------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no 3d_fullres TTA")
    ap.add_argument("--no-realistic", action="store_true", help="skip the 3d_fullres network")
    ap.add_argument(
        "--threads", default="1,2", help="torch thread counts to compare (default: 1,2)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    t_start = time.perf_counter()
    thread_counts = [int(t) for t in args.threads.split(",")]
    repeats = 3 if args.quick else 5
    small = {"shape": (64, 64, 24), "zooms": (0.8, 0.8, 2.5)}
    # (a) uses a scan-sized volume so the engine's per-voxel work (reorientation,
    # copies back to the input grid) is exercised at a realistic size.
    big = {"shape": (96, 96, 24), "zooms": (0.8, 0.8, 2.5)} if not args.quick else small
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        models = build_models(Path(tmp), realistic=not args.no_realistic)
        tiny3d = models["tiny 3d (2 stages 4-8, 2 folds)"]
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"python {sys.version.split()[0]}, cores {os.cpu_count()}, load average {load}")
        print("\n(a) overhead of NnunetModel.predict over predict_single_npy_array")
        print(f"    model: tiny 3d, 2 folds; volume {big['shape']} @ {big['zooms']} mm")
        rows = []
        for threads in thread_counts:
            pair = run_job(
                {
                    "kind": "time-pair",
                    "folder": str(tiny3d),
                    "repeats": repeats,
                    "threads": threads,
                    **big,
                }
            )
            name = f"time, {threads} thread(s), median"
            rows.append((name, pair["bare"], pair["engine"], "s", 1.05))
            name = f"time, {threads} thread(s), best"
            rows.append((name, pair["bare_min"], pair["engine_min"], "s", 1.05))
        mem = {
            v: run_job(
                {
                    "kind": "memory",
                    "variant": v,
                    "folder": str(tiny3d),
                    "threads": thread_counts[-1],
                    **big,
                }
            )
            for v in ("bare", "engine")
        }
        rows.append(
            (
                "peak memory over baseline",
                mem["bare"]["delta_mb"],
                mem["engine"]["delta_mb"],
                "MB",
                1.2,
            )
        )
        print(f"    {'measure':32s} {'bare':>10s} {'engine':>10s} {'ratio':>7s}  goal")
        for name, b, e, unit, goal in rows:
            ratio = e / b if b else float("nan")
            flag = "ok" if ratio <= goal else "OVER"
            u = unit[0]
            print(f"    {name:32s} {b:9.3f}{u} {e:9.3f}{u} {ratio:7.3f}  <= {goal} {flag}")
        print(
            f"    (peak RSS of the whole process: bare {mem['bare']['peak_mb']:.0f} MB, "
            f"engine {mem['engine']['peak_mb']:.0f} MB)"
        )

        print("\n(b) time per run (NnunetModel.predict, CPU, median)")
        heads = "".join(f" {f'{t} thr':>9s}" for t in thread_counts)
        print(f"    {'model':34s} {'volume':>16s} {'tiles':>5s} {'folds':>5s} {'TTA':>4s}{heads}")
        for name, folder in models.items():
            full = name.startswith("3d_fullres")
            vol = {"shape": (128, 128, 64), "zooms": (1.0, 1.0, 1.0)} if full else small
            for tta in (False, True):
                if full and tta and args.quick:
                    continue
                res = {}
                for threads in thread_counts:
                    res[threads] = run_job(
                        {
                            "kind": "run",
                            "folder": str(folder),
                            "tta": tta,
                            "threads": threads,
                            "repeats": 1 if (full or args.quick) else 3,
                            **vol,
                        }
                    )
                r = res[thread_counts[0]]
                cells = "".join(f" {res[t]['time_s']:8.2f}s" for t in thread_counts)
                print(
                    f"    {name:34s} {'x'.join(map(str, vol['shape'])):>16s} {r['tiles']!s:>5s} "
                    f"{r['folds']:>5d} {'yes' if r['mirroring'] else 'no':>4s}{cells}",
                    flush=True,
                )
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
