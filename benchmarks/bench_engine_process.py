"""The engine process (issue 8): the viewer's cold first run, and its cost against in-process.

Three figures, each measured the way a user meets it:

1. **Cold first-run stall.** A fresh interpreter (a subprocess running this file with
   ``--cold``: nothing imported), a napari viewer, ``review(viewer, phantom,
   model=<shipped demo model>, start=False)``; then the Segment widget's Run button is
   pressed and a real Qt event loop (``QEventLoop``) runs until the result layers are in.
   A 10 ms heartbeat ``QTimer`` records the loop's gaps: the longest one is the longest
   time the viewer did not respond. A second (warm) run is measured the same way. Also
   printed: whether torch / nnU-Net were imported into the viewer's process (they must
   not be: they load in the engine process), and the viewer process's peak memory during
   the cold run above its memory before it, next to the image and result sizes.
2. **Warm ratio.** In one process without Qt, the same volume segmented by the engine
   process (:class:`~napari_spineseg.engine_process.LocalEngine`) and by plain
   :func:`api.segment` in-process, interleaved (the order reversed every round), after one
   warm-up run each: the medians and their ratio (goal <= 1.1), on the demo phantom
   (72x72x32, overhead-dominated) and on SCT's ``t2.nii.gz`` when present.
3. **First-run extra cost.** The first engine-process run (cluster start, worker
   imports, model load) against the first in-process run (imports, model load).

Run from the repository root (the stall part needs a display: ``xvfb-run -a``)::

    xvfb-run -a python -m benchmarks.bench_engine_process [--quick] [--json FILE]
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "sct_testing_data"
BUDGET_MS = 50.0
RATIO_GOAL = 1.1


def write_phantom(folder: Path) -> Path:
    """The demo's phantom (the shipped model's training domain), as a NIfTI file."""
    import nibabel as nib

    from napari_spineseg._sample_data import SAMPLE_AXCODES, SAMPLE_SHAPE, SAMPLE_ZOOMS
    from napari_spineseg.phantom import cord_phantom

    image, _ = cord_phantom(shape=SAMPLE_SHAPE, zooms=SAMPLE_ZOOMS, axcodes=SAMPLE_AXCODES, seed=0)
    path = folder / "phantom_T2w.nii.gz"
    nib.save(image, path)
    return path


def demo_options() -> dict:
    from napari_spineseg.demo import demo_model_folder

    return {"model": str(demo_model_folder()), "trust": True, "device": "cpu"}


# ----------------------------------------------------------------------------- 1. cold


def _press_run_and_wait(session, timeout: float = 600.0) -> dict:
    """Press Run; a real Qt event loop until the layers are in; the heartbeat's gaps."""
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_spineseg._qt.workers import StallMeter

    widget = session.segment_widget
    loop = QEventLoop()
    done = QTimer()
    done.setInterval(20)
    deadline = time.monotonic() + timeout
    done.timeout.connect(
        lambda: loop.quit() if not widget.running or time.monotonic() > deadline else None
    )
    meter = StallMeter(10).start()
    t0 = time.perf_counter()
    widget.run_button.native.click()
    done.start()
    loop.exec_()
    seconds = time.perf_counter() - t0
    done.stop()
    meter.stop()
    return {
        "outcome": widget.last_outcome,
        "error": str(widget.last_error) if widget.last_error else None,
        "seconds": round(seconds, 3),
        "longest_ms": round(meter.longest_ms, 1),
        "top5_ms": [round(g, 1) for g in sorted(meter.gaps_ms, reverse=True)[:5]],
        "top5_cpu_ms": [round(g, 1) for g in sorted(meter.cpu_ms, reverse=True)[:5]],
        "layers": [ly.name for ly in widget.last_layers],
    }


def cold_first_run(folder: Path, engine: str = "process") -> dict:
    """Figure 1, in this interpreter (which must be fresh): see the module docstring.

    ``engine="inprocess"`` measures the same with the model run in the viewer's process
    (as before issue 8), for comparison."""
    fresh = "torch" not in sys.modules and "napari" not in sys.modules
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from benchmarks._memory import hwm_mb, reset_peak, rss_mb
    from napari_spineseg import engine_process, review

    path = write_phantom(folder)
    viewer = napari.Viewer(show=True)
    try:
        session = review(viewer, path, start=False, engine=engine, **demo_options())
        session.review_widget.prompt_recovery = lambda text: "ignore"
        session.review_widget.prompt = lambda title, text: "discard"
        for _ in range(50):  # docks laid out, first paint done
            QApplication.processEvents()
            time.sleep(0.01)
        rss_before = rss_mb()
        peak_known = reset_peak()
        cold = _press_run_and_wait(session)
        peak_extra = (hwm_mb() - rss_before) if peak_known else float("nan")
        layers = session.segment_widget.last_layers
        results_mb = sum(
            ly.data.nbytes
            + sum(
                np.asarray(p).nbytes
                for p in (ly.metadata["spineseg"].get("probabilities") or {}).values()
            )
            for ly in layers
        )
        image_mb = session.image_layer.data.nbytes
        rss_before = rss_mb()
        reset_peak()
        warm = _press_run_and_wait(session)
        warm_peak_extra = (hwm_mb() - rss_before) if peak_known else float("nan")
        return {
            "engine": engine,
            "fresh_interpreter": fresh,
            "cold": cold,
            "warm": warm,
            "torch_in_viewer": "torch" in sys.modules,
            "nnunetv2_in_viewer": "nnunetv2" in sys.modules,
            "peak_extra_mb": round(peak_extra, 1),
            "warm_peak_extra_mb": round(warm_peak_extra, 1),
            "image_mb": round(image_mb / 2**20, 2),
            "results_mb": round(results_mb / 2**20, 2),
        }
    finally:
        engine_process.close_all()
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        viewer.close()


def cold_in_subprocess(folder: Path, engine: str = "process", timeout: float = 900.0) -> dict:
    """Figure 1 in a fresh interpreter; its JSON line (raises with its output if none)."""
    folder = folder / engine
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("SPINESEG_MODELS_DIR", str(folder / "store"))
    env.setdefault("SPINESEG_AUTOSAVE_DIR", str(folder / "autosave"))
    env.setdefault("NAPARI_CONFIG", str(folder / "napari_settings.yaml"))
    env.pop("SPINESEG_ENGINE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_engine_process", "--cold", str(folder)]
        + ["--engine", engine],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(
        f"the cold run printed no result (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


# ----------------------------------------------------------------------------- 2 + 3


def warm_ratio(path: Path, repeats: int) -> dict:
    """Figures 2 and 3 on ``path`` (in this process; the engine process started here)."""
    from napari_spineseg import api, io
    from napari_spineseg.engine_process import LocalEngine
    from napari_spineseg.options import RunOptions

    options = demo_options()
    volume = io.load(path)
    engine = LocalEngine()
    try:
        t0 = time.perf_counter()
        engine.segment(volume, RunOptions(**options))
        first_engine = time.perf_counter() - t0
        t0 = time.perf_counter()
        api.segment(volume, **options)
        first_inproc = time.perf_counter() - t0
        times: dict[str, list[float]] = {"engine": [], "inproc": []}
        calls = {
            "engine": lambda: engine.segment(volume, RunOptions(**options)),
            "inproc": lambda: api.segment(volume, **options),
        }
        for i in range(repeats):
            for name in ("engine", "inproc") if i % 2 == 0 else ("inproc", "engine"):
                t0 = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - t0)
    finally:
        engine.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "image": path.name,
        "shape": list(volume.shape),
        "engine_s": round(med["engine"], 4),
        "inproc_s": round(med["inproc"], 4),
        "ratio": round(med["engine"] / med["inproc"], 3),
        "extra_s": round(med["engine"] - med["inproc"], 4),
        "first_engine_s": round(first_engine, 2),
        "first_inproc_s": round(first_inproc, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--cold", type=Path, metavar="FOLDER", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="process", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold is not None:  # the fresh interpreter of figure 1
        print(json.dumps(cold_first_run(args.cold, args.engine)), flush=True)
        os._exit(0)  # no teardown of Qt/napari at exit: the figures are out
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="spineseg-bench-engine-") as tmp:
        folder = Path(tmp)
        try:
            out["cold"] = [cold_in_subprocess(folder, e) for e in ("process", "inprocess")]
        except RuntimeError as exc:  # no display: say so, measure the rest
            print(f"cold first-run stall skipped (needs a display: xvfb-run -a): {exc}")
        os.environ.setdefault("SPINESEG_MODELS_DIR", str(folder / "store"))
        repeats = 3 if args.quick else 9
        images = [write_phantom(folder)]
        if (DATA / "t2" / "t2.nii.gz").exists():
            images.append(DATA / "t2" / "t2.nii.gz")
        out["warm"] = [warm_ratio(p, repeats) for p in images]
    if "cold" in out:
        print("A fresh napari, Run on the demo model (phantom 72x72x32), first and second run:")
        for c in out["cold"]:
            where = "engine process" if c["engine"] == "process" else "in the viewer (before)"
            for kind in ("cold", "warm"):
                r = c[kind]
                print(
                    f"  {where:23} {kind} run: longest event-loop stall "
                    f"{r['longest_ms']:5.0f} ms (budget {BUDGET_MS:.0f}); five longest "
                    f"{r['top5_ms']} ms (GUI-thread CPU in the five busiest: "
                    f"{r['top5_cpu_ms']} ms); Run to layers {r['seconds']:.2f} s; {r['outcome']}"
                )
            print(
                f"  {where:23} torch in the viewer: {c['torch_in_viewer']}, nnunetv2: "
                f"{c['nnunetv2_in_viewer']}; viewer peak above its pre-run memory: cold "
                f"+{c['peak_extra_mb']} MB, warm +{c['warm_peak_extra_mb']} MB (image "
                f"{c['image_mb']} MB, results {c['results_mb']} MB)"
            )
    print(f"Engine process vs in-process api.segment, warm, median of {repeats}:")
    print(
        f"  {'image':<22} {'engine s':>9} {'in-proc s':>9} {'ratio':>6} "
        f"{'first: engine / in-proc s':>26}"
    )
    for r in out["warm"]:
        print(
            f"  {r['image']:<22} {r['engine_s']:9.3f} {r['inproc_s']:9.3f} {r['ratio']:6.2f} "
            f"{r['first_engine_s']:>12.2f} / {r['first_inproc_s']:.2f}"
        )
    print(f"  goal: ratio <= {RATIO_GOAL}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
