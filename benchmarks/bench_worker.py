"""Is a napari worker run slower than the same ``api.segment`` call in a plain script?

micro-sam #740 saw torch slow down massively inside napari thread workers. This times
``api.segment`` directly, then the Segment widget's worker run (same image, model, device,
warm engine cache), and prints the ratio. Needs a display (Xvfb) for the viewer.

    DISPLAY=:98 python benchmarks/bench_worker.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 24))
    args = ap.parse_args()
    import napari
    import nibabel as nib
    import torch

    torch.set_num_threads(int(os.environ.get("SPINESEG_NUM_THREADS", "1")))
    from napari_spineseg import api
    from napari_spineseg._qt.segment_widget import SegmentWidget
    from napari_spineseg._qt.session import open_image
    from napari_spineseg._qt.workers import StallMeter
    from napari_spineseg.engines._nnunet_random import write_random_model
    from napari_spineseg.phantom import cord_phantom

    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    model = write_random_model(
        tmp / "Dataset9_sci/nnUNetTrainer__nnUNetPlans__3d_fullres",
        labels={"background": 0, "sc": [1, 2], "lesion": 2},
        regions_class_order=[1, 2],
    )
    img, _ = cord_phantom(shape=tuple(args.shape), axcodes="PSR")
    path = tmp / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    kw = {"task": "lesion_sci_t2", "model": str(model), "trust": True, "device": "cpu"}
    api.segment(path, **kw)  # warm: imports, engine cache
    plain = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        api.segment(path, **kw)
        plain.append(time.perf_counter() - t)

    viewer = napari.Viewer(show=False)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = open_image(viewer, path)
    widget.model.value = str(model)
    widget.trust.value = True
    widget.device.value = "cpu"
    widget.segment()
    widget.wait()
    worker_times, stalls = [], []
    for _ in range(args.repeats):
        for layer in widget.last_layers:
            viewer.layers.remove(layer)
        meter = StallMeter().start()
        t = time.perf_counter()
        w = widget.segment()
        done = {}
        w.returned.connect(lambda _: done.setdefault("t", time.perf_counter()))
        w.returned.connect(lambda _: meter.stop())
        widget.wait()
        worker_times.append(done["t"] - t)
        stalls.append(meter.longest_ms)
    viewer.close()
    p, w = statistics.median(plain), statistics.median(worker_times)
    print(f"image {tuple(args.shape)}, torch threads {torch.get_num_threads()}")
    print(f"plain api.segment : {p:.3f} s (median of {args.repeats})")
    print(f"napari worker run : {w:.3f} s (median of {args.repeats})")
    print(f"ratio worker/plain: {w / p:.2f}")
    print(f"longest event-loop stall during worker runs: {max(stalls):.1f} ms")


if __name__ == "__main__":
    main()
