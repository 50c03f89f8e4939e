"""Screenshots of the Segment and Review dock widgets on SCT's t2 test image.

Why: the widget tests check behaviour; this shows what a user *sees* after a real run
(labels readable, nothing cut off, the result on the cord, table values sensible). The
model is a tiny stand-in trained on synthetic phantoms (``tests/data/models``), installed
offline into a temporary model store, so the result on a real scan is imperfect, which
is what the review flags are for. Needs a real X display with OpenGL (Xvfb works)::

    Xvfb :97 -screen 0 1600x1000x24 &
    DISPLAY=:97 python scripts/widget_screenshots.py          # docs/images/widgets_*.png
    DISPLAY=:97 python scripts/widget_screenshots.py --out /tmp/shots   # elsewhere

Nothing is written next to the image, nor to the user's model store or autosave cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared/data/sct_testing_data/t2/t2.nii.gz"
SCI_ZIP = ROOT / "tests/data/models/sci_lesion/model_SCIsegV2_r20240729.zip"
IMAGES = ROOT / "docs/images"
PLUGIN = "napari-spineseg"
SEGMENT = "Segment spinal cord"
REVIEW = "Review and correct"
WINDOW = (1600, 1000)


def _process(seconds: float) -> None:
    """Let Qt lay out and paint for ``seconds`` (docks resize, the canvas redraws)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _save(viewer, name: str, out_dir: Path) -> Path:
    import imageio.v3 as iio

    _process(0.5)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = out_dir / name
    iio.imwrite(path, shot)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="an nnU-Net model folder to run instead of the installed lesion_sci_t2 stand-in",
    )
    ap.add_argument("--task", default="lesion_sci_t2")
    ap.add_argument("--out", type=Path, default=IMAGES)
    args = ap.parse_args(argv)
    if not args.image.exists():
        print(f"missing test image {args.image} (../shared/data)", file=sys.stderr)
        return 2
    if not os.environ.get("DISPLAY"):
        print("needs an X display: Xvfb :97 & DISPLAY=:97 python ...", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="spineseg-shots-"))
    os.environ["SPINESEG_MODELS_DIR"] = str(tmp / "models")
    os.environ["SPINESEG_AUTOSAVE_DIR"] = str(tmp / "autosave")
    os.environ.setdefault("SPINESEG_NUM_THREADS", "1")

    import napari
    import numpy as np

    from napari_spineseg import api
    from napari_spineseg.errors import GeometryWarning

    if args.model is None:
        api.install(args.task, source=SCI_ZIP, trust=True)

    viewer = napari.Viewer(title="napari-spineseg")
    viewer.window.resize(*WINDOW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        (image,) = viewer.open(str(args.image), plugin=PLUGIN)
    # both docks through the manifest, one tab stack (what napari_spineseg.review does)
    seg_dock, seg = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENT)
    rev_dock, rev = viewer.window.add_plugin_dock_widget(PLUGIN, REVIEW, tabify=True)
    rev.prompt = lambda title, text: "discard"  # closing the viewer at the end
    _process(0.2)  # Qt builds the tab bar on a later turn; raise the Segment tab then
    seg_dock.raise_()
    seg.image.value = image
    seg.task.value = args.task
    if args.model is not None:
        seg.model.value = str(args.model)
        seg.trust.value = True
    seg.device.value = "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    worker = seg.segment()
    running: dict[str, object] = {}

    def on_progress(p) -> None:  # one shot of the progress bar half-way through the tiles
        if p is not None and "running" not in running and p.fraction >= 0.4:
            running["running"] = p
            written.append(_save(viewer, "widgets_running.png", args.out))

    worker.yielded.connect(on_progress)
    outcome = seg.wait(900)
    if outcome != "done":
        print(f"run {outcome}: {seg.status.value}", file=sys.stderr)
        return 1
    layers = seg.last_layers
    # axial, through the middle of the cord result
    cord = np.argwhere(np.asarray(layers[0].data) > 0)
    middle = int(np.median(cord[:, 0]))
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()
    viewer.dims.set_point(0, layers[0].data_to_world((middle, 0, 0))[0])
    viewer.layers.selection.active = layers[0]
    seg_dock.raise_()
    written.append(_save(viewer, "widgets_segment.png", args.out))

    # the Review tab, the table's most suspicious slice selected (a click on its row)
    rev_dock.raise_()
    rev.select_layer(layers[0])
    _process(0.3)
    rev.table_widget.selectRow(0)
    rev.table_widget.cellClicked.emit(0, 0)
    viewer.layers.selection.active = layers[0]
    written.append(_save(viewer, "widgets_review.png", args.out))

    state = rev.state
    rows = state.table.rows(state.table.order("severity", only_flagged=True))
    report = {
        "status": seg.status.value,
        "layers": [ly.name for ly in layers],
        "selected_slice": rev.current_slice(),
        "flagged_rows": rows[:5],
        "written": [str(p) for p in written],
    }
    print(json.dumps(report, indent=1, default=str))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
