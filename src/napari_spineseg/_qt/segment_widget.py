"""The "Segment spinal cord" dock widget: pick an image, a task, a device; run; get layers.

A magicgui ``Container`` (its layer combo follows the viewer's layers by itself). The run
is a generator core (:func:`.jobs.segment_job`) on a napari thread worker: the progress bar
shows the stage and tile count, Cancel returns within a second and adds nothing, errors
become napari notifications plus the status line. Every button is also a method
(:meth:`SegmentWidget.segment`, :meth:`cancel`, :meth:`install`, :meth:`wait`), which is
what ``napari_spineseg.review`` and the tests call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from .. import api
from ..engine_process import widget_engine
from ..errors import SpinesegError
from ..jobs import CANCELLED, ImageSnapshot, segment_job, steps
from ..options import RunOptions
from ..progress import CancelToken, Progress
from .workers import notify_error, start_worker, wait_for

if TYPE_CHECKING:  # pragma: no cover
    import napari

PROGRESS_STEPS = 1000
#: ms between two result layers: a zero-delay timer ran the next napari ``add_layer``
#: (~100 ms each) in the same event-loop pass, so two layers froze the viewer as one
#: 230-400 ms step (benchmarks/bench_engine_process.py); a timer with a delay lets the
#: loop paint and take input in between
LAYER_PAUSE_MS = 5
#: Task-combo value for a lab's own nnU-Net model (outputs from its dataset.json).
CUSTOM = "custom"


def _device_summary(devices: list[str]) -> str:
    found = [d for d in devices if d not in ("auto", "cpu")]
    if not found:
        return "Detected: CPU only (no CUDA or Apple MPS GPU); auto = CPU"
    return f"Detected: {', '.join(found)}; auto = {found[0]}"


def build_layers(layer_data: list[tuple]) -> list[Any]:
    """napari layer objects for layer data tuples, built on the calling (worker) thread.

    A Labels layer's constructor costs 25-40 ms for a 275-slice volume (data checks,
    slicing, thumbnail); done on the worker, the GUI thread only inserts the finished
    layer (issue 9's 50 ms main-thread budget). The layers have no listeners yet, so
    nothing they emit while being built reaches the GUI.
    """
    from napari.layers import Layer

    return [Layer.create(data, kwargs, kind) for data, kwargs, kind in layer_data]


def segment_to_layers(snapshot: ImageSnapshot, run: RunOptions, cancel: CancelToken):
    """:func:`segment_job` on the widgets' engine (the engine process unless
    ``$SPINESEG_ENGINE`` or ``review(engine=)`` says otherwise), then
    :func:`build_layers` on the same worker thread."""
    result = yield from segment_job(snapshot, run, cancel, widget_engine())
    if result is CANCELLED or cancel.cancelled:
        return CANCELLED
    return build_layers(result)


class SegmentWidget(Container):
    """Segment the selected image with one of the SCT tasks (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        from .._reader import ensure_reader_preference, route_viewer_open

        ensure_reader_preference()  # drag and drop, File > Open
        route_viewer_open(viewer)  # viewer.open(path) from a script
        self._tasks = {t.id: t for t in api.tasks()}
        self.image = create_widget(annotation="napari.layers.Image", label="Image")
        self.task = ComboBox(
            label="Task",
            choices=[(f"{t.title}  [{t.id}]", t.id) for t in self._tasks.values()]
            + [("Your own nnU-Net model (classes from its dataset.json)  [custom]", CUSTOM)],
        )
        self.task_info = Label(label="")
        self.install_button = PushButton(text="Install model")
        self.model = FileEdit(label="Custom model", mode="d", value="")
        self.model.tooltip = (
            "An nnU-Net v2 model folder of your own. With task 'custom' its dataset.json "
            "decides the classes and output files (SCT's rule); with an SCT task it replaces "
            "that task's model and the task decides the output files"
        )
        self.trust = CheckBox(text="I trust this custom model (checkpoints can run code)")
        from ..engine_process import probe_devices  # issue 8: torch stays in the engine

        devices = probe_devices()
        self.device = ComboBox(label="Device", choices=devices, value=devices[0])
        self.device_info = Label(label="", value=_device_summary(devices))
        self.threshold = FloatSpinBox(label="Threshold", min=0.0, max=1.0, step=0.05, value=0.5)
        self.largest = CheckBox(text="Keep largest component")
        self.fill_holes = CheckBox(text="Fill holes")
        self.remove_small = LineEdit(label="Remove small", value="")
        self.remove_small.tooltip = (
            "SCT's -remove-small: e.g. 3vox, 5mm3, or one size per output file: 10,20vox"
        )
        self.test_time_aug = CheckBox(text="Test-time augmentation (slower)")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", min=0, max=PROGRESS_STEPS, value=0)
        self.status = Label(label="", value="Ready.")
        self.extend(
            [
                self.image,
                self.task,
                self.task_info,
                self.install_button,
                self.model,
                self.trust,
                self.device,
                self.device_info,
                self.threshold,
                self.largest,
                self.fill_holes,
                self.remove_small,
                self.test_time_aug,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        for w in (self.task_info, self.device_info, self.status):
            w.native.setWordWrap(True)
            # magicgui gives labels a fixed width: a short line floated mid-panel
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.task.changed.connect(self._on_task)
        self.model.changed.connect(lambda *_: self._on_task())
        self.install_button.changed.connect(lambda *_: self.install())
        self.run_button.changed.connect(lambda *_: self.segment())
        self.cancel_button.changed.connect(lambda *_: self.cancel())

        self.worker = None
        self._to_add: list[tuple] = []
        self._added: list[Any] = []
        self._cancel: CancelToken | None = None
        self._kind = ""
        self._started = 0.0
        self.last_layers: list[Any] = []
        self.last_error: BaseException | None = None
        self.last_outcome = ""  # "done" | "cancelled" | "error"
        #: called with the list of layers added by a finished run
        self.on_results: list[Callable[[list[Any]], None]] = []
        self.task.value = "lesion_sci_t2" if "lesion_sci_t2" in self._tasks else self.task.value
        self._on_task()
        from .review.docking import DockTabber

        self._tabber = DockTabber(self.native)  # one tab stack with the Review panel

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """A job is running, or its result layers are still being added."""
        return self.worker is not None or bool(self._to_add) or bool(self._added)

    def _spec(self):
        """The picked catalog task, or None for a custom model (task 'custom')."""
        return self._tasks.get(self.task.value)

    def _model_path(self) -> str | None:
        model = str(self.model.value or "").strip()
        return model if model not in ("", ".") else None

    def _on_task(self, *_: Any) -> None:
        from ..models import store

        spec = self._spec()
        if spec is None:
            self.task_info.value = (
                "Runs an nnU-Net v2 model folder (or zip) your lab trained: pick it under "
                "'Custom model' and tick 'I trust' (checkpoints are pickles and can run code). "
                "Outputs follow SCT's rule: one _<label>_seg file per dataset.json label "
                "(labels named lvl* give one _rootlets file)."
            )
            self.install_button.enabled = False
            self.install_button.text = "No install needed"
            self.threshold.enabled = False
            self.largest.value = False
            self.fill_holes.value = False
            self.remove_small.value = ""
            return
        custom = self._model_path() is not None
        installed = store.is_installed(spec.id)
        state = (
            "custom model given below"
            if custom
            else ("installed" if installed else f"not installed: {spec.install_command()}")
        )
        outputs = ", ".join(o.suffix for o in spec.outputs)
        self.task_info.value = (
            f"{spec.description}\nContrast: {', '.join(spec.contrasts)}. "
            f"Outputs: {outputs}.\nModel: {state}."
        )
        self.install_button.enabled = not installed and not self.running
        self.install_button.text = "Model installed" if installed else "Install model"
        pp = spec.postprocess
        self.threshold.enabled = pp.threshold is not None
        if pp.threshold is not None:
            self.threshold.value = pp.threshold
        self.largest.value = pp.largest
        self.fill_holes.value = pp.fill_holes
        self.remove_small.value = ",".join(pp.remove_small)

    def run_options(self) -> RunOptions:
        """The run the widget would start now (task, model, device, options), validated."""
        spec = self._spec()
        model = self._model_path()
        if spec is None and model is None:
            raise SpinesegError("task 'custom': choose your nnU-Net model folder first")
        return RunOptions(
            task=spec.id if spec is not None else None,
            model=model,
            trust=bool(self.trust.value),
            device=str(self.device.value),
            threshold=float(self.threshold.value)
            if spec is not None and spec.postprocess.threshold is not None
            else None,
            largest=bool(self.largest.value),
            fill_holes=bool(self.fill_holes.value),
            remove_small=str(self.remove_small.value).strip() or None,
            test_time_aug=bool(self.test_time_aug.value),
        )

    def show_run(self, run: RunOptions) -> None:
        """Set the form to ``run`` (task, custom model, device, options), so the widget
        shows what a scripted run (``napari_spineseg.review(model=...)``) is doing."""
        task = run.task if run.task in self._tasks else CUSTOM if run.model else None
        if task is not None:
            self.task.value = task
        self.model.value = run.model or ""
        self.trust.value = bool(run.trust)
        if run.device in self.device.choices:
            self.device.value = run.device
        self._on_task()  # the task's defaults, then the run's own options
        if run.threshold is not None and self.threshold.enabled:
            self.threshold.value = run.threshold
        if run.largest is not None:
            self.largest.value = bool(run.largest)
        if run.fill_holes is not None:
            self.fill_holes.value = bool(run.fill_holes)
        if run.remove_small is not None:
            self.remove_small.value = ",".join(run.remove_small.tokens)
        self.test_time_aug.value = bool(run.test_time_aug)

    def _set_busy(self, kind: str) -> None:
        self._kind = kind
        busy = bool(kind)
        self.run_button.enabled = not busy
        self.install_button.enabled = not busy and not self._installed()
        self.cancel_button.enabled = busy
        for w in (self.task, self.image, self.model, self.device):
            w.enabled = not busy

    def _installed(self) -> bool:
        from ..models import store

        spec = self._spec()
        return spec is None or store.is_installed(spec.id)

    def _on_progress(self, p: Progress) -> None:
        self.progress.value = int(round(p.fraction * PROGRESS_STEPS))
        detail = f" ({p.step}/{p.total})" if p.step is not None and p.total else ""
        if detail and f"{p.step}/{p.total}" in p.stage:  # "tile 5/36" says it already
            detail = ""
        self.status.value = f"{self._kind}: {p.stage}{detail}"

    # ------------------------------------------------------------------ actions
    def segment(self, image: Any = None, run: RunOptions | None = None):
        """Start a run on ``image`` (default: the picked image layer); returns the worker.

        Raises nothing for user errors: they are shown (status line + notification) and
        the run is not started.
        """
        if self.running:
            self._fail(SpinesegError("a run is already in progress: wait or cancel it"))
            return None
        layer = image if image is not None else self.image.value
        try:
            if layer is None:
                raise SpinesegError("no image layer: open a NIfTI image first")
            snapshot = ImageSnapshot.of(layer)
            if run is not None:
                self.show_run(run)
            run = run or self.run_options()
        except SpinesegError as exc:
            self._fail(exc)
            return None
        self._cancel = CancelToken()
        self.last_layers = []
        self.last_error = None
        self.last_outcome = ""
        self.progress.value = 0
        self._set_busy("Segmenting")
        self._started = time.perf_counter()
        self.worker = start_worker(
            segment_to_layers,
            snapshot,
            run,
            self._cancel,
            on_progress=self._on_progress,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=self._on_finished,
        )
        return self.worker

    def install(self, source: Any = None, trust: bool = False):
        """Download (or install offline from ``source``) the picked task's model."""
        if self.running:
            return None
        spec = self._spec()
        if spec is None:
            return None  # a custom model folder is used in place
        self._cancel = CancelToken()
        self.last_error = None
        self.last_outcome = ""
        self._set_busy("Installing")
        self.progress.value = 0
        self.worker = start_worker(
            steps,
            api.install,
            spec.id,
            source,
            trust,
            cancel=self._cancel,
            on_progress=self._on_progress,
            on_returned=self._on_installed,
            on_errored=self._on_errored,
            on_finished=self._on_finished,
        )
        return self.worker

    def cancel(self) -> None:
        """Stop the current run or download (nothing is added or installed)."""
        if self._cancel is not None and self.running:
            self._cancel.cancel()
            self.status.value = f"{self._kind}: cancelling..."

    def wait(self, timeout: float = 600.0) -> str:
        """Block (processing Qt events) until the current job ends; returns the outcome."""
        wait_for(lambda: self.running, timeout, f"the {self._kind.lower() or 'current'} job")
        return self.last_outcome

    # ------------------------------------------------------------------ results
    def _on_returned(self, value: Any) -> None:
        if value is CANCELLED or (self._cancel is not None and self._cancel.cancelled):
            self.last_outcome = "cancelled"
            self.status.value = "Cancelled: nothing was added."
            self.progress.value = 0
            return
        # one layer per event-loop turn: napari builds each layer's visuals on the GUI
        # thread (~100 ms to 1 s on a loaded CPU), so the viewer stays responsive between
        self._to_add = list(value)
        self._added = []
        QTimer.singleShot(LAYER_PAUSE_MS, self._add_next_layer)

    def _add_next_layer(self) -> None:
        from napari.layers import Layer

        if self._to_add:
            layer = self._to_add.pop(0)
            if not isinstance(layer, Layer):  # layer data tuples (scripts, tests)
                layer = Layer.create(*layer)
            if any(ly.name == layer.name for ly in self.viewer.layers):
                layer.name = f"{layer.name} (new)"  # a re-run never replaces silently
            self._added.append(self.viewer.add_layer(layer))
            QTimer.singleShot(LAYER_PAUSE_MS, self._add_next_layer)
            return
        added, self._added = self._added, []
        self.last_layers = added
        self.last_outcome = "done"
        secs = time.perf_counter() - self._started
        self.progress.value = PROGRESS_STEPS
        self.status.value = (
            f"Done in {secs:.1f} s: {', '.join(ly.name for ly in added)}. "
            "Review and correct them in the Review panel."
        )
        for cb in list(self.on_results):
            cb(added)

    def _on_installed(self, value: Any) -> None:
        if value is CANCELLED:
            self.last_outcome = "cancelled"
            self.status.value = "Install cancelled: nothing was installed."
        else:
            self.last_outcome = "done"
            self.status.value = f"Installed in {value}."
        self.progress.value = 0 if value is CANCELLED else PROGRESS_STEPS

    def _on_errored(self, exc: BaseException) -> None:
        self.last_error = exc
        self.last_outcome = "error"
        self.status.value = f"Failed: {exc}"
        self.progress.value = 0
        notify_error(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_busy("")
        self._on_task()

    def _fail(self, exc: BaseException) -> None:
        """Show a user error without starting anything (no traceback: it is not a bug)."""
        self.last_error = exc
        self.last_outcome = "error"
        self.status.value = f"Failed: {exc}"
        notify_error(exc)
