"""The task runner: engine -> SCT output files -> SCT post-processing.

``run`` takes a task, a loaded image, the model folder and the run's
:class:`~napari_spineseg.options.RunOptions`, runs the engine registered for the task's
backend (``engines.registry``) on the 3D image (file voxel order), cuts the prediction
into the task's SCT output files (binary masks per class, OR-ing region values; or one
multi-label map) and post-processes each file the way ``sct_deepseg`` does. Nothing here
knows a backend by name: what differs lives in the engine class (``engines/base.py``'s
hooks). Engines are cached (load once, predict many), keyed by ``Engine.cache_key``.

Post-processing split of responsibility (kept identical to SCT):

* engines that return labels (nnU-Net and TotalSpineSeg tasks, SCT's
  ``segment_non_ivadomed``): ``largest``/``fill_holes``/``remove_small`` run here
  (``postprocess.py``) on each output file. Binary files give SCT's voxels. Multi-label
  files (rootlets, spine) are processed per class by default; with ``sct_compat`` as SCT
  does (one foreground), and ``-thr`` binarises each file with ``> thr`` as SCT does (by
  default ``-thr`` is ignored: these models output labels, not probabilities).
* engines with ``postprocess_inside`` (the 7T ivadomed task): ivadomed's own
  post-processing (binarize >= thr, remove small, optional keep-largest / fill-holes)
  runs *inside* the engine, which re-implements it with ivadomed's exact semantics; it is
  not repeated here.
* ``-remove-small`` is read once per run, by the engine class's ``min_sizes_for`` (through
  ``postprocess.resolve_remove_small``): SCT's values wherever SCT accepts the command
  line, before any model loads.
* TotalSpineSeg's own pipeline already keeps the largest components and fills the canal;
  the generic steps do nothing unless asked for.

4D inputs: averaged over the 4th axis (what TotalSpineSeg does, and the only meaningful
single 3D input for the others); the provenance says so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import postprocess as pp
from .catalog import RGBA, OutputSpec, TaskSpec
from .engines.registry import engine_class
from .errors import TaskError
from .options import RunOptions
from .progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from .engines.base import Engine, Prediction
    from .io import Volume

CODE_URL = "https://github.com/napari-spineseg/napari-spineseg"


@dataclass
class LabelOutput:
    """One SCT output file: labels in the source's file voxel order (3D integer array)."""

    suffix: str
    labels: np.ndarray
    classes: dict[int, str]
    colors: dict[int, RGBA]
    binary: bool = True
    title: str = ""


@dataclass
class SegmentationResult:
    """What :func:`napari_spineseg.api.segment` returns (see the API docs)."""

    outputs: dict[str, LabelOutput]
    probabilities: dict[str, np.ndarray]
    provenance: dict[str, Any]
    source: Volume
    task: TaskSpec


# ----------------------------------------------------------------------------- engines

_ENGINES: OrderedDict[tuple, Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
MAX_CACHED_ENGINES = 2  # models hold hundreds of MB; keep the last two


def load_engine(spec: TaskSpec, folder: Path, options: RunOptions) -> Engine:
    """A loaded engine for ``folder``, from the cache when the same model was loaded."""
    cls = engine_class(spec.backend)
    key = (cls, *cls.cache_key(spec, folder, options))
    with _ENGINES_LOCK:
        if key in _ENGINES:
            _ENGINES.move_to_end(key)
            return _ENGINES[key]
    engine = cls.load(cls.source_for(spec, folder), options)
    engine.after_load(spec)
    with _ENGINES_LOCK:
        _ENGINES[key] = engine
        while len(_ENGINES) > MAX_CACHED_ENGINES:
            _ENGINES.popitem(last=False)
    return engine


def clear_engine_cache() -> None:
    """Forget loaded engines (frees their memory)."""
    with _ENGINES_LOCK:
        _ENGINES.clear()


# ----------------------------------------------------------------------------- splitting


def _find_map(pred: Prediction, out: OutputSpec) -> tuple[str | None, np.ndarray | None]:
    for name in (out.map, *out.map_aliases):
        if name in pred.maps:
            return name, pred.maps[name]
    if out.classes is None and len(pred.maps) == 1:
        name = next(iter(pred.maps))
        return name, pred.maps[name]
    return None, None


def select(pred: Prediction, out: OutputSpec) -> np.ndarray:
    """The array an output file is cut from: a bool mask (binary) or the label map.

    A binary file is the union of the label values of its classes (a region such as
    ``sc = [1, 2]`` ORs both values, as SCT does); an engine that returns one map per class
    (``maps["sc"]``) is accepted too.
    """
    name, arr = _find_map(pred, out)
    if out.classes is None:
        if arr is None:
            raise TaskError(
                f"the model's prediction has no map {out.map!r} for output {out.suffix} "
                f"(maps: {sorted(pred.maps)})"
            )
        return np.asarray(arr)
    mask = None
    missing = []
    for cls in out.classes:
        values = pred.class_groups(name).get(cls) if name is not None else None
        if values:
            part = np.isin(arr, np.asarray(values, dtype=arr.dtype))
        elif cls in pred.maps:
            part = np.asarray(pred.maps[cls]) > 0
        else:
            missing.append(cls)
            continue
        mask = part if mask is None else (mask | part)
    if mask is None:
        known = sorted({c for m in pred.maps for c in pred.class_groups(m)} | set(pred.maps))
        raise TaskError(
            f"the model's prediction has no class {', '.join(missing)} for output "
            f"{out.suffix} (it has: {', '.join(known)}); is this the right model for the task?"
        )
    return mask


def split_outputs(
    spec: TaskSpec,
    pred: Prediction,
    zooms: Sequence[float],
    options: RunOptions,
    min_sizes: Sequence[pp.MinSize] | None = None,
) -> tuple[dict[str, LabelOutput], list[str]]:
    """Cut ``pred`` into the task's output files and post-process each (see module doc).

    ``options``: the run's, with the task's defaults filled in
    (:meth:`RunOptions.resolved`). ``min_sizes``: one per output file, from the engine
    class's ``min_sizes_for`` (computed here when not given). Returns the outputs (by suffix)
    and the list of post-processing steps that ran here (none for an engine that
    post-processes inside).
    """
    cls = engine_class(spec.backend)
    generic = not cls.postprocess_inside
    if min_sizes is None and generic:
        min_sizes, _ = cls.min_sizes_for(spec, options)
    # SCT binarises every nnU-Net/TotalSpineSeg file with `> thr` when -thr is non-zero.
    sct_thr = None
    if generic and options.sct_compat and options.threshold:
        sct_thr = options.threshold
    steps: list[str] = []
    outputs: dict[str, LabelOutput] = {}
    for i, out in enumerate(spec.outputs):
        arr = select(pred, out)
        size = min_sizes[i] if min_sizes else None
        binary = out.binary
        labels = np.asarray(arr, dtype=bool) if binary else np.asarray(arr)
        done: list[str] = []
        if sct_thr is not None:
            labels, binary = pp.binarize(labels, sct_thr), True
            done.append(f"binarize > {sct_thr:g} (SCT)")
        if generic:
            largest, fill = bool(options.largest), bool(options.fill_holes)
            opts = {"zooms": zooms, "largest": largest, "fill": fill}
            if options.sct_compat or binary:
                labels = pp.postprocess_foreground(labels, min_size=size, name=out.suffix, **opts)
            else:
                labels = pp.postprocess_multilabel(labels, min_sizes=size, **opts)
            done += [s for s, on in (("largest", largest), ("fill_holes", fill)) if on]
            if size is not None:
                done.append(f"remove_small {size}")
            if done and not binary:
                done.append("(SCT: one foreground)" if options.sct_compat else "(per class)")
        labels = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.int16)
        steps += [f"{out.suffix}: {s}" for s in done]
        names = dict(out.names) if out.names else dict(pred.classes.get(out.map, {}))
        if binary and not out.binary:  # a label map binarised by -thr
            names = {1: f"{out.title or out.suffix} > {sct_thr:g}"}
        if not binary:
            present = {int(v) for v in np.unique(labels) if v}
            for v in present - set(names):
                names[v] = pred.classes.get(_find_map(pred, out)[0] or "", {}).get(v, f"label {v}")
        colors = dict(out.colors) if out.colors else {}
        if not binary:
            from .catalog import palette

            extra = palette(sorted(set(names) - set(colors)), start=0.5)
            colors.update(extra)
        outputs[out.suffix] = LabelOutput(
            suffix=out.suffix,
            labels=labels,
            classes=names,
            colors=colors,
            binary=binary,
            title=out.title,
        )
    return outputs, steps


# ----------------------------------------------------------------------------- run


def run(
    spec: TaskSpec,
    volume: Volume,
    folder: Path,
    options: RunOptions,
    report: Reporter,
    *,
    return_probabilities: bool = True,
    model_url: str | None = None,
    model_sha256: Any = None,
) -> SegmentationResult:
    """Segment ``volume`` with ``spec``'s engine loaded from ``folder`` (see module doc)."""
    from . import __version__

    cls = engine_class(spec.backend)  # an unknown backend fails before anything loads
    options = options.resolved(spec)
    min_sizes, notes = cls.min_sizes_for(spec, options)  # a bad -remove-small fails here too
    thr = options.threshold
    if thr is not None and not cls.postprocess_inside and not options.sct_compat:
        notes.append(
            f"-thr {thr:g} was ignored: {spec.id} outputs labels, not probabilities "
            f"(sct_deepseg would binarise each output file with > {thr:g}; -sct-compat does)"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    report(0.0, "loading model")
    engine = load_engine(spec, folder, options)
    timings["load_s"] = round(time.perf_counter() - t0, 3)
    report.check()
    notes += engine.notes()

    if volume.is_4d:
        n = volume.shape[3]
        notes.append(
            f"the input is 4D ({n} volumes): the model was run on their mean over the 4th "
            "axis (as TotalSpineSeg does); the masks are 3D on the same grid"
        )
    image = volume.image3d(reduce="mean")  # file voxel order, the source's affine
    t1 = time.perf_counter()
    # the image given to the engine is built in memory: its file's name, for messages
    name = str(volume.path) if volume.path is not None else volume.name
    try:
        pred = engine.predict(
            image,
            report.sub(0.02, 0.95),
            options,
            name=Path(name).name,
            return_probabilities=return_probabilities,
            min_sizes=min_sizes,  # None: the model's own default (postprocess_inside engines)
        )
    except TaskError as exc:  # the engine's refusal of this image names the image
        if name and Path(name).name not in str(exc):
            raise type(exc)(f"{name}: {exc}") from exc
        raise
    timings["predict_s"] = round(time.perf_counter() - t1, 3)
    report.check()

    report(0.96, "post-processing")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    t2 = time.perf_counter()
    outputs, steps = split_outputs(spec, pred, zooms, options, min_sizes)
    timings["postprocess_s"] = round(time.perf_counter() - t2, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    if cls.postprocess_inside:
        steps = engine.postprocessing_done(pred)
    report(1.0, "done")

    provenance: dict[str, Any] = {
        "name": "napari-spineseg",
        "version": __version__,
        "code_url": CODE_URL,
        "task": spec.id,
        "task_title": spec.title,
        "backend": spec.backend,
        "custom_model": spec.custom,
        "model_folder": str(folder),
        "model_url": model_url if model_url is not None else [s.url for s in spec.sources],
        "model_sha256": model_sha256,
        "settings": options.as_dict(),
        "postprocessing": steps,
        "device": engine.device_label() or options.device,
        "timings": timings,
        "engine": _jsonable(pred.info),
        "input": {
            "path": str(volume.path) if volume.path else None,
            "shape": list(volume.shape),
            "zooms": list(volume.zooms),
        },
        "notes": notes,
        "citation": spec.citation,
    }
    return SegmentationResult(
        outputs=outputs,
        probabilities=dict(pred.probabilities) if return_probabilities else {},
        provenance=provenance,
        source=volume,
        task=spec,
    )


def _jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of engine info (numpy scalars/arrays, paths, tuples)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"<array {obj.shape} {obj.dtype}>"
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)
