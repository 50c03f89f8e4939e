"""Is ``api.segment`` slower on the widgets' napari worker than in a plain script?

Why: micro-sam #740 saw torch slow down badly inside napari thread workers, and a first
version of this benchmark compared a cold plain call (imports, model load) with warm
worker runs, which says nothing. This one is a fair comparison in ONE process, on one
warm engine (the engine cache keeps the loaded model, so every timed call does the full
preprocessing, inference and export, and none loads the model):

1. warm-up: one plain call and one worker run (imports, model load, first inference,
   the worker thread pool);
2. N interleaved rounds, each timing

   (a) ``api.segment(...)`` called on the main thread (what a script does);
   (b) the same call through the Segment widget's machinery: the generator core
       ``jobs.steps(api.segment, ...)`` on a napari ``GeneratorWorker``
       (``_qt.workers.start_worker``) while a Qt event loop runs, wall-clock from the
       worker's start to the result delivered on the main thread;
   (c) the same generator core consumed on the main thread without Qt
       (``jobs.run_sync``): ``api.segment`` on a helper thread, no napari. It
       tells an effect of running torch on another thread apart from one of napari/Qt.

   The order is reversed every round so drift from other load hits all alike.

Printed: medians, CPU seconds per call (all threads of the process: much more CPU than
wall-clock time means torch's threads ran in parallel or spun waiting for a core), the
ratio worker/plain (goal <= 1.05), the median paired difference, and the longest
event-loop stall during the worker runs (goal < 50 ms; a 10 ms Qt timer,
``_qt.workers.StallMeter``). The network is a random-weight nnU-Net PlainConvUNet
(16-32-64-128) big enough that inference dominates (about 1.5 s per call on one CPU
thread). No display needed (``QT_QPA_PLATFORM=offscreen`` is set without ``DISPLAY``)::

    python benchmarks/bench_worker.py [--repeats 9] [--threads 1] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: a mid-size 3d_fullres network: 4 stages 16-32-64-128, 2 convs per stage (~1.2 M params)
ARCH = {
    "features": [16, 32, 64, 128],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv": 2,
}
PATCH = (16, 64, 64)
SPACING = (2.5, 0.8, 0.8)


def make_case(root: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """A random-weight nnU-Net folder and a phantom image on disk."""
    import nibabel as nib

    from napari_spineseg.engines._nnunet_random import plain_unet_arch, write_random_model
    from napari_spineseg.phantom import cord_phantom

    arch = plain_unet_arch(
        3, ARCH["features"], ARCH["kernel_sizes"], ARCH["strides"], ARCH["n_conv"]
    )
    model = write_random_model(
        root / "Dataset9_sci/nnUNetTrainer__nnUNetPlans__3d_fullres",
        labels={"background": 0, "sc": [1, 2], "lesion": 2},
        regions_class_order=[1, 2],
        architecture=arch,
        patch_size=PATCH,
        spacing=SPACING,
        mirror_axes=None,
    )
    img, _ = cord_phantom(shape=shape, zooms=(0.8, 0.8, 2.5), axcodes="PSR")
    path = root / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    return model, path


def run_plain(image, kw: dict) -> float:
    """(a) the call a script makes, on the main thread."""
    from napari_spineseg import api

    t = time.perf_counter()
    result = api.segment(image, **kw)
    elapsed = time.perf_counter() - t
    assert result.outputs, "no outputs"
    return elapsed


def run_core(image, kw: dict) -> float:
    """(c) the generator core consumed on the main thread, no Qt: tells a slowdown of
    the helper thread that runs ``api.segment`` apart from one of the napari worker."""
    from napari_spineseg import api
    from napari_spineseg.jobs import run_sync, steps
    from napari_spineseg.progress import CancelToken

    t = time.perf_counter()
    result = run_sync(steps(api.segment, image, cancel=CancelToken(), **kw))
    elapsed = time.perf_counter() - t
    assert result.outputs, "no outputs"
    return elapsed


def run_worker(image, kw: dict) -> tuple[float, float]:
    """(b) the same call through the widget's worker machinery, event loop running.

    Returns (wall-clock seconds from start to the result on the main thread, longest
    event-loop stall in ms while the worker ran).
    """
    from qtpy.QtCore import QEventLoop

    from napari_spineseg import api
    from napari_spineseg._qt.workers import StallMeter, start_worker
    from napari_spineseg.jobs import steps
    from napari_spineseg.progress import CancelToken

    box: dict = {}
    loop = QEventLoop()
    meter = StallMeter().start()

    def returned(value) -> None:
        box["t"] = time.perf_counter()
        box["value"] = value
        meter.stop()

    def errored(exc: BaseException) -> None:
        box["error"] = exc

    t = time.perf_counter()
    worker = start_worker(
        steps,
        api.segment,
        image,
        cancel=CancelToken(),
        on_returned=returned,
        on_errored=errored,
        on_finished=loop.quit,
        **kw,
    )
    loop.exec()
    meter.stop()
    del worker
    if "error" in box:
        raise box["error"]
    assert box["value"].outputs, "no outputs"
    return box["t"] - t, meter.longest_ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--shape", type=int, nargs=3, default=(80, 64, 24), help="phantom (x y z)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: SPINESEG_NUM_THREADS, else the usable cores)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    if args.threads:
        os.environ["SPINESEG_NUM_THREADS"] = str(args.threads)
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # noqa: F841 (keeps the app alive)
    import torch

    from napari_spineseg import io

    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    model, path = make_case(tmp, tuple(args.shape))
    kw = {"task": "lesion_sci_t2", "model": str(model), "trust": True, "device": "cpu"}
    image = io.load(path)  # every variant gets the same Volume (no file read in the timing)

    started = time.perf_counter()
    cold = run_plain(image, kw)  # imports, model load, first inference
    warm_worker, _ = run_worker(image, kw)  # worker pool, first worker inference
    print(
        f"warm-up: first plain call {cold:.2f} s (model load included), "
        f"first worker run {warm_worker:.2f} s",
        flush=True,
    )
    runners = {
        "plain": lambda: (run_plain(image, kw), None),
        "worker": lambda: run_worker(image, kw),
        "core": lambda: (run_core(image, kw), None),
    }
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    stalls: list[float] = []
    for i in range(repeats):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]
        for which in order:
            c0 = time.process_time()  # CPU seconds of all threads of the process
            seconds, stall = runners[which]()
            cpu[which].append(time.process_time() - c0)
            wall[which].append(seconds)
            if stall is not None:
                stalls.append(stall)
    total = time.perf_counter() - started
    med = {k: statistics.median(v) for k, v in wall.items()}
    diffs = [b - a for a, b in zip(wall["plain"], wall["worker"], strict=True)]
    ratio = med["worker"] / med["plain"]
    figures = {
        "image_shape": list(args.shape),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_s": med,
        "ratio_worker_over_plain": ratio,
        "median_paired_difference_s": statistics.median(diffs),
        "longest_stall_ms": max(stalls),
        "median_longest_stall_ms": statistics.median(stalls),
    }
    print(
        f"\nimage {tuple(args.shape)} (phantom), random nnU-Net "
        f"{'-'.join(map(str, ARCH['features']))} patch {PATCH}, "
        f"torch threads {torch.get_num_threads()}, {repeats} interleaved rounds ({total:.0f} s)"
    )
    names = {
        "plain": "(a) plain api.segment",
        "worker": "(b) napari worker (steps core)",
        "core": "(c) steps core, main thread, no Qt",
    }
    print(f"{'variant':<36}{'median':>9}{'min':>9}{'max':>9}{'CPU median':>12}")
    for key, name in names.items():
        xs, cs = wall[key], cpu[key]
        print(
            f"{name:<36}{med[key]:>8.3f}s{min(xs):>8.3f}s{max(xs):>8.3f}s"
            f"{statistics.median(cs):>11.2f}s"
        )
    print(f"ratio worker/plain (medians): {ratio:.3f}   (goal <= 1.05)")
    print(f"median paired difference worker - plain: {statistics.median(diffs) * 1000:+.0f} ms")
    print(
        f"longest event-loop stall during worker runs: {max(stalls):.1f} ms "
        f"(median of per-run maxima {statistics.median(stalls):.1f} ms; goal < 50 ms)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
