"""What the GUI thread still pays when result layers arrive (issue 8's remaining stalls).

The engine process took torch and the model out of the viewer; the result layers are
built on a worker thread. What is left on the GUI thread is napari's own work when a
Labels layer is inserted into the viewer, and CPython's full garbage collections. This
script measures both in a fresh interpreter, in **CPU time of the GUI thread**
(``time.thread_time``), which a busy second core does not inflate:

1. ``viewer.add_layer`` of a 72x72x32 uint8 Labels layer next to an image (the demo's
   phantom size), three times in a row, split into napari's parts: the layer's vispy
   visual, its vispy overlays (the polygon tool's and the brush stroke's), the
   layer-controls widget, and the rest (layer list, selection and dims events); then
   the first paint. Garbage collection is off while it is measured (part 2 measures it).
   Once as a session meets it (``cold``), once after the worker thread's warm-up of
   ``jobs/result_layers.warm_up_label_colormap`` (``warmed``).
2. One full (generation 2) collection of the viewer's process after a run's imports
   (napari, the ``distributed`` client, pandas, scikit-image): how long the GUI thread
   stops whenever CPython decides to run one, and how many objects it walks.

Run from the repository root (needs a display: ``xvfb-run -a``)::

    xvfb-run -a python -m benchmarks.bench_add_layer [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (32, 72, 72)


def _cpu_ms(t0: float) -> float:
    return (time.thread_time() - t0) * 1000.0


def measure(warm: bool, repeats: int) -> dict:
    """Part 1 in this (fresh) interpreter."""
    import numpy as np

    if warm:
        from napari_spineseg.jobs.result_layers import warm_up_label_colormap

        warm_up_label_colormap({0: "transparent", 1: "red"}, np.dtype("uint8"))
    import napari
    import napari._qt.layer_controls.qt_layer_controls_container as controls_module
    import napari._qt.qt_viewer as qt_viewer_module
    import napari._vispy.canvas as canvas_module
    from napari.layers import Labels
    from qtpy.QtWidgets import QApplication

    parts: dict[str, float] = {}

    def timed(owner, name: str, part: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                parts[part] = parts.get(part, 0.0) + _cpu_ms(t0)

        setattr(owner, name, wrapper)

    timed(qt_viewer_module, "create_vispy_layer", "visual")
    timed(canvas_module, "create_vispy_overlay", "overlays")
    timed(controls_module.QtLayerControlsContainer, "_add", "controls")

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random(SHAPE, dtype=np.float32))
    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.01)
    # what a result layer needs, as the worker thread already did during the run
    Labels(np.zeros((2, 2), np.uint8), features={"class": ["background", "x"]})
    rows = []
    gc.disable()
    try:
        for i in range(repeats):
            layer = Labels(np.zeros(SHAPE, np.uint8))
            parts.clear()
            t0 = time.thread_time()
            viewer.add_layer(layer)
            total = _cpu_ms(t0)
            t0 = time.thread_time()
            for _ in range(5):
                QApplication.processEvents()
            paint = _cpu_ms(t0)
            named = {k: round(v, 1) for k, v in parts.items()}
            rows.append(
                {
                    "layer": i + 1,
                    "add_layer_ms": round(total, 1),
                    **named,
                    "rest_ms": round(total - sum(parts.values()), 1),
                    "first_paint_ms": round(paint, 1),
                }
            )
    finally:
        gc.enable()
    # part 2: a full collection of this process, after what a run imports
    import distributed  # noqa: F401  (the engine's client lives in the viewer)
    import pandas  # noqa: F401
    import skimage  # noqa: F401

    gc.collect()
    times, counts = [], []
    for _ in range(3):
        counts.append(len(gc.get_objects()))
        t0 = time.thread_time()
        gc.collect(2)
        times.append(_cpu_ms(t0))
    viewer.close()
    return {
        "warm": warm,
        "rows": rows,
        "gen2_ms": round(sorted(times)[1], 1),
        "tracked_objects": counts[-1],
    }


def in_subprocess(warm: bool, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_add_layer", "--child", str(repeats)]
    if warm:
        cmd.append("--warm")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(
        f"no result (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.warm, args.child)))
        return 0
    repeats = 3
    results = [in_subprocess(False, repeats), in_subprocess(True, repeats)]
    print("napari add_layer of a 72x72x32 Labels layer, GUI-thread CPU ms (gc off):")
    print(
        f"  {'session':<8} {'layer':>5} {'add_layer':>9} {'visual':>7} {'overlays':>8} "
        f"{'controls':>8} {'rest':>6} {'paint':>6}"
    )
    for res in results:
        for row in res["rows"]:
            print(
                f"  {'warmed' if res['warm'] else 'cold':<8} {row['layer']:>5} "
                f"{row['add_layer_ms']:>9.0f} {row.get('visual', 0):>7.0f} "
                f"{row.get('overlays', 0):>8.0f} {row.get('controls', 0):>8.0f} "
                f"{row['rest_ms']:>6.0f} {row['first_paint_ms']:>6.0f}"
            )
    for res in results:
        print(
            f"  one full garbage collection after a run's imports: {res['gen2_ms']:.0f} ms "
            f"over {res['tracked_objects']:,} objects ({'warmed' if res['warm'] else 'cold'})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
