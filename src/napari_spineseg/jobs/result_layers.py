"""Result layers: a segmentation result as napari Labels layer data, made off the GUI thread.

Everything the GUI thread would otherwise compute when a run returns (display-order
arrays, per-class probabilities, the review table, napari's colour kernels) is done here
on the worker, so that the GUI thread only adds layers: converting and copying volumes
there would freeze the viewer. Layer data tuples only; napari is imported lazily, and
only to warm up its colour kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import TaskSpec
    from ..io import Volume
    from ..options import RunOptions
    from ..segmentation import LabelOutput, SegmentationResult


@dataclass(frozen=True)
class ImageSnapshot:
    """The image layer as it was when the run started (napari-nninteractive pattern).

    Results are drawn with this transform and metadata even if the user moves, renames or
    removes the image layer while the model runs.
    """

    name: str
    volume: Volume
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


def _probability_for(
    output: LabelOutput, probabilities: Mapping[str, np.ndarray], spec: TaskSpec
) -> dict[int, Any]:
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


def result_layer_data(
    result: SegmentationResult, snapshot: ImageSnapshot, options: RunOptions
) -> list[tuple]:
    """One Labels layer data tuple per output file of ``result``, on the image's grid.

    Labels and probabilities go to display order; class names become ``features`` (shown
    on hover) and colours a direct colormap; the metadata keeps the probabilities (for the
    review table), the frozen model output (for edit tracking), the run options
    (``RunOptions.as_dict()``, for refine) and the provenance (for the sidecar).
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
                "run": options.as_dict(),
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
        warm_up_dash_patterns()
    except Exception:  # only an optimisation: never fail a run for it
        pass


def warm_up_dash_patterns() -> None:
    """Fill vispy's cache of line-dash patterns here, on the worker thread.

    napari gives every Labels layer a polygon-tool overlay drawn with vispy's "agg" lines;
    the first one in a session computes 13 dash patterns in pure Python (65-83 ms of
    the first ``add_layer``, benchmarks/bench_add_layer.py). The patterns are
    cached by vispy for the process, so building them once off the GUI thread removes it.
    """
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()
