"""Main-thread budget when results arrive: the longest GUI-thread step, 275-slice PAM50.

What it measures: the segment job's return value (the layer data tuples a worker
prepared) is handed to the Segment widget exactly as the worker's ``returned`` signal
does; from then until the Review panel shows the result (layers added, slice table
filled, sparkline drawn) a 10 ms heartbeat ``QTimer`` records the gaps of the Qt event
loop. The longest gap is the longest time the viewer did not respond. The model itself
is not run (its time is on the worker): the layers are those of a stand-in result, the
PAM50 template's cord mask (``PAM50_small_levels > 0``) with a smooth probability map.

Run under a display (``xvfb-run -a python -m benchmarks.bench_review_stall``); prints
the longest and the five longest gaps, and what the panel shows. Budget: 50 ms.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sct_testing_data"
IMAGE = DATA / "template" / "template" / "PAM50_small_t2.nii.gz"
CORD = DATA / "template" / "template" / "PAM50_small_levels.nii.gz"
BUDGET_MS = 50.0


def stand_in_result(image_layer: Any, run: Any) -> list[tuple]:
    """Layer data tuples as :func:`napari_spineseg.jobs.result_layer_data` makes them
    for a two-output run (cord + a lesion-like second output), without a model."""
    from types import SimpleNamespace

    from scipy import ndimage

    from napari_spineseg.catalog import get_task
    from napari_spineseg.io import load
    from napari_spineseg.jobs import ImageSnapshot, result_layer_data
    from napari_spineseg.segmentation import LabelOutput

    snapshot = ImageSnapshot.of(image_layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cord = (np.asarray(load(CORD).data) > 0).astype(np.uint8)
    lesion = (
        ndimage.binary_erosion(cord, iterations=2) & (np.arange(cord.shape[2]) > 200)
    ).astype(np.uint8)
    prob = ndimage.gaussian_filter(cord.astype(np.float32), 1.0)
    task = get_task("lesion_sci_t2")
    outputs = {
        "_sc_seg": LabelOutput("_sc_seg", cord, {1: "sc"}, {1: (1.0, 0.0, 0.0, 1.0)}),
        "_lesion_seg": LabelOutput("_lesion_seg", lesion, {1: "lesion"}, {1: (0, 1, 1, 1.0)}),
    }
    result = SimpleNamespace(
        outputs=outputs,
        probabilities={"sc": prob, "lesion": prob * 0.5},
        provenance={"task": task.id},
        task=task,
        source=snapshot.volume,
    )
    return result_layer_data(result, snapshot, run)


def measure(viewer: Any, repeat: int = 1) -> dict[str, Any]:
    """Hand a prepared result to the widgets ``repeat`` times; the heartbeat's gaps."""
    from qtpy.QtWidgets import QApplication

    from napari_spineseg._qt.segment_widget import build_layers
    from napari_spineseg._qt.session import open_image
    from napari_spineseg._qt.workers import StallMeter
    from napari_spineseg.options import RunOptions

    image = open_image(viewer, IMAGE)
    seg_dock, segment = viewer.window.add_plugin_dock_widget(
        "napari-spineseg", "Segment spinal cord"
    )
    rev_dock, review = viewer.window.add_plugin_dock_widget(
        "napari-spineseg", "Review and correct", tabify=True
    )
    review.prompt_recovery = lambda text: "ignore"
    run = RunOptions(task="lesion_sci_t2", device="cpu")
    gaps: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        # the worker's work, not timed: layer data, then the layers built on the worker
        value = build_layers(stand_in_result(image, run))
        for _ in range(20):
            QApplication.processEvents()
        meter = StallMeter(10).start()
        t0 = time.perf_counter()
        segment._started = t0
        segment._on_returned(value)
        while segment.running or review.busy:
            QApplication.processEvents()
            time.sleep(0.001)
        for _ in range(10):  # the panel's last paint
            QApplication.processEvents()
            time.sleep(0.005)
        total = time.perf_counter() - t0
        meter.stop()
        gaps.extend(meter.gaps_ms)
        cpu.extend(meter.cpu_ms)
        state = review.state
        panel = {
            "layers": [ly.name for ly in segment.last_layers],
            "table_rows": review.table_model.rowCount(),
            "sparkline_slices": int(review.sparkline.values.size),
            "reviewing": None if state is None else str(state.layer.name),
        }
        for layer in list(segment.last_layers):
            st = review.states.get(id(layer))
            if st is not None:
                st.dirty = False
            viewer.layers.remove(layer)
    return {
        "longest_ms": max(gaps, default=0.0),
        "top5_ms": sorted(gaps, reverse=True)[:5],
        # the GUI thread's own CPU time in its five busiest gaps (load does not inflate it)
        "top5_cpu_ms": sorted(cpu, reverse=True)[:5],
        "total_s": total,
        "slices": image.data.shape[0],
        **panel,
    }


def main(argv: list[str] | None = None) -> int:  # (--quick: the same single measure)
    import napari

    if not IMAGE.exists():
        print(f"no SCT example data at {DATA}")
        return 1
    try:
        viewer = napari.Viewer(show=True)
    except Exception as exc:  # noqa: BLE001  no display (run under xvfb-run)
        print(f"bench_review_stall skipped: napari cannot open a window here ({exc})")
        return 0
    try:
        out = measure(viewer, repeat=2)
    finally:
        viewer.close()
    print(
        f"PAM50 ({out['slices']} slices): longest GUI-thread step {out['longest_ms']:.0f} ms "
        f"(budget {BUDGET_MS:.0f} ms); five longest {[round(g) for g in out['top5_ms']]} ms; "
        f"GUI-thread CPU in the five busiest {[round(g) for g in out['top5_cpu_ms']]} ms; "
        f"result to usable panel {out['total_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
