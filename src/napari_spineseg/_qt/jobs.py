"""What the widgets run on their workers: segment an image, refine a slab.

Each job is a generator core (see :mod:`.workers`) that calls :func:`napari_spineseg.api.segment`
and then prepares everything the GUI thread needs (display-order arrays, per-class
probabilities, layer data tuples), so that the GUI thread only adds layers: converting
and copying volumes there would freeze the viewer. No Qt and no napari import here.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..progress import CancelToken, Progress
from .workers import CANCELLED, steps


@dataclass(frozen=True)
class RunSpec:
    """The task and options of one run, as picked in the Segment widget.

    Stored in each result layer's metadata (``metadata["spineseg"]["run"]``) so that a
    crop-and-refine re-runs exactly the same model with the same options.
    """

    task: str | None = None
    model: str | None = None
    trust: bool = False
    device: str = "auto"
    threshold: float | None = None
    largest: bool | None = None
    fill_holes: bool | None = None
    remove_small: str | None = None
    test_time_aug: bool = False

    def segment_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`napari_spineseg.api.segment`."""
        kw = asdict(self)
        rs = kw.pop("remove_small")
        if rs:
            parts = [p.strip() for p in str(rs).replace(";", ",").split(",") if p.strip()]
            kw["remove_small"] = parts if len(parts) > 1 else (parts[0] if parts else None)
        else:
            kw["remove_small"] = None
        return kw

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class ImageSnapshot:
    """The image layer as it was when the run started (napari-nninteractive pattern).

    Results are drawn with this transform and metadata even if the user moves, renames or
    removes the image layer while the model runs.
    """

    name: str
    volume: Any  # napari_spineseg.io.Volume
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    metadata: dict[str, Any]

    @classmethod
    def of(cls, layer: Any) -> ImageSnapshot:
        from ..errors import SpinesegError

        meta = dict(getattr(layer, "metadata", None) or {})
        info = meta.get("spineseg") or {}
        volume = info.get("volume")
        if volume is None:
            raise SpinesegError(
                f"image layer {layer.name!r} was not opened with napari-spineseg, so its NIfTI "
                "geometry is unknown: open the file with File > Open (choose napari-spineseg) or "
                "viewer.open(path, plugin='napari-spineseg')"
            )
        return cls(
            name=str(layer.name),
            volume=volume,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            metadata=meta,
        )


def _probability_for(output, probabilities: Mapping[str, np.ndarray], spec) -> dict[int, Any]:
    """Per label value of one output file, the model's probability map (file order)."""
    out: dict[int, Any] = {}
    outspec = next((o for o in spec.outputs if o.suffix == output.suffix), None)
    for value, name in output.classes.items():
        p = probabilities.get(name)
        single = outspec is not None and outspec.classes and len(outspec.classes) == 1
        if p is None and output.binary and single:
            p = probabilities.get(outspec.classes[0])
        if p is not None:
            out[int(value)] = p
    return out


def result_layer_data(result, snapshot: ImageSnapshot, run: RunSpec) -> list[tuple]:
    """One Labels layer data tuple per output file of ``result``, on the image's grid.

    Labels and probabilities go to display order; class names become ``features`` (shown
    on hover) and colours a direct colormap; the metadata keeps the probabilities (for the
    review table), the frozen model output (for edit tracking), the run (for refine) and
    the provenance (for the sidecar).
    """
    from ..layers import labels_layer_data_like

    volume = snapshot.volume
    geometry = volume.geometry
    layers = []
    for suffix, output in result.outputs.items():
        display = np.ascontiguousarray(geometry.to_display(output.labels))
        probs = {
            v: np.ascontiguousarray(geometry.to_display(p), dtype=np.float32)
            for v, p in _probability_for(output, result.probabilities, result.task).items()
        }
        name = f"{snapshot.name}{suffix}"
        data, kwargs, kind = labels_layer_data_like(
            display,
            volume,
            name=name,
            classes=output.classes,
            colors=output.colors,
            extra_meta={
                "suffix": suffix,
                "task": result.task.id,
                "run": run.as_dict(),
                "provenance": result.provenance,
                "probabilities": probs,
                "model_output": None,  # filled below with the layer's own dtype
                "image_layer": snapshot.name,
            },
        )
        frozen = np.array(data, copy=True)
        frozen.flags.writeable = False
        kwargs["metadata"]["spineseg"]["model_output"] = frozen
        # the image's transform as it was at the start (3 spatial axes of a 4D series too)
        kwargs["scale"] = snapshot.scale[-3:]
        kwargs["translate"] = snapshot.translate[-3:]
        for key in ("axis_labels", "units"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])[-3:]
        layers.append((data, kwargs, kind))
        warm_up_label_colormap(kwargs.get("colormap"), data.dtype)
    _precompute_tables(layers)
    return layers


def _precompute_tables(layers: list[tuple]) -> None:
    """The review table of each result layer, computed here on the worker (the GUI
    thread only shows it): a lesion-only output is checked against the cord output of
    the same run, as the Review panel pairs them."""
    from ..correction import slice_table
    from ..correction.qc import is_cord_name, is_lesion_name

    def classes_of(kwargs: dict) -> dict[int, str]:
        return dict(kwargs["metadata"]["spineseg"].get("classes") or {})

    cords = [
        (data, kwargs)
        for data, kwargs, _ in layers
        if any(is_cord_name(n) for n in classes_of(kwargs).values())
    ]
    for data, kwargs, _ in layers:
        meta = kwargs["metadata"]["spineseg"]
        classes = classes_of(kwargs)
        if not classes or np.ndim(data) != 3:
            continue
        reference = None
        names = classes.values()
        if cords and any(map(is_lesion_name, names)) and not any(map(is_cord_name, names)):
            cord_data, cord_kwargs = cords[0]
            cord_values = [v for v, n in classes_of(cord_kwargs).items() if is_cord_name(n)]
            reference = np.isin(cord_data, cord_values)
            meta["qc_cord_suffix"] = cord_kwargs["metadata"]["spineseg"].get("suffix")
        meta["qc_table"] = slice_table(
            data,
            tuple(kwargs["scale"])[-3:],
            classes,
            probabilities=meta.get("probabilities") or None,
            cord_reference=reference,
        )


def warm_up_label_colormap(colormap: Any, dtype: np.dtype) -> None:
    """Compile napari's label-colour kernels here, on the worker thread.

    napari maps label values to colours with numba functions compiled on first use
    (about 2-5 s); done by the first ``add_layer`` that would freeze the viewer. Compiled
    code is shared by the process, so doing it once off the GUI thread removes the stall.
    """
    if not colormap:
        return
    try:
        # issue 8: with inference in the engine process nothing else imports what a first
        # Labels layer imports lazily (pandas for features, skimage's colour code): a
        # throwaway layer made here does it off the GUI thread (a 1.6 s stall there)
        from napari.layers import Labels
        from napari.utils.colormaps import DirectLabelColormap

        Labels(np.zeros((2, 2), dtype=dtype), features={"class": ["background", "x"]})

        cmap = DirectLabelColormap(color_dict=colormap)
        values = np.zeros((2, 2), dtype=dtype)
        cmap.map(values)
        cmap._data_to_texture(values)
    except Exception:  # only an optimisation: never fail a run for it
        pass


def segment_job(
    snapshot: ImageSnapshot, run: RunSpec, cancel: CancelToken
) -> Generator[Progress | None, None, Any]:
    """Segment the snapshot's volume; returns layer data tuples, or :data:`CANCELLED`."""
    from .. import api
    from ..engine_process import widget_engine  # issue 8: runs go to the engine process

    kwargs = {**run.segment_kwargs(), "engine": widget_engine()}
    result = yield from steps(api.segment, snapshot.volume, cancel=cancel, **kwargs)
    if result is CANCELLED:
        return CANCELLED
    yield Progress(1.0, "preparing layers")
    layers = result_layer_data(result, snapshot, run)
    _ = snapshot.volume.sha256  # hash the source here (autosave key), not on the GUI thread
    if cancel.cancelled:
        return CANCELLED
    return layers


def crop_display(volume, start: int, stop: int):
    """A NIfTI image of display slices ``[start, stop)`` of ``volume`` in the same world.

    The crop's voxel order *is* the display order (its affine is the display affine
    shifted by ``start`` slices), so a model's labels for it come back in display order
    and overlay the slab exactly; no file-axis bookkeeping is needed. A 4D series is
    averaged over volumes first (what :func:`api.segment` does too).
    """
    import nibabel as nib

    image3d = volume.image3d(reduce="mean")
    display = volume.geometry.to_display(np.asanyarray(image3d.dataobj))
    crop = np.ascontiguousarray(display[start:stop])
    affine = volume.geometry.display_affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([start, 0.0, 0.0]) + affine[:3, 3]
    img = nib.Nifti1Image(crop, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def refine_job(
    volume,
    run: RunSpec,
    suffix: str,
    crop: tuple[int, int],
    cancel: CancelToken,
) -> Generator[Progress | None, None, Any]:
    """Re-run the task on display slices ``crop`` (slab + margin).

    Returns the new labels of output ``suffix`` for the crop, in display order, or
    :data:`CANCELLED`.
    """
    from .. import api
    from ..engine_process import widget_engine
    from ..errors import TaskError

    image = crop_display(volume, *crop)
    kwargs = replace(run).segment_kwargs()
    kwargs["return_probabilities"] = False
    kwargs["engine"] = widget_engine()  # issue 8: runs go to the engine process
    result = yield from steps(api.segment, image, cancel=cancel, **kwargs)
    if result is CANCELLED:
        return CANCELLED
    if suffix not in result.outputs:
        raise TaskError(
            f"the refine run has no output {suffix!r} (it has {', '.join(result.outputs)})"
        )
    return np.asarray(result.outputs[suffix].labels)
