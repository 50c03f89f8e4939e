"""The public, Qt-free API: load an image, segment it with an SCT task, save SCT files.

>>> from napari_spineseg import api
>>> api.install("lesion_sci_t2")                       # once (or `spineseg install ...`)
>>> result = api.segment("sub-01_T2w.nii.gz", task="lesion_sci_t2")
>>> api.save(result)        # sub-01_T2w_sc_seg.nii.gz, sub-01_T2w_lesion_seg.nii.gz + .json

The widgets and the ``spineseg`` command call exactly these functions. Nothing here imports
napari, Qt or torch at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import catalog
from .catalog import TaskSpec
from .errors import SaveRefusedError, TaskError
from .options import RunOptions, run_options
from .progress import CancelToken, ProgressCallback, Reporter
from .segmentation import LabelOutput, SegmentationResult

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from .io import Volume

__all__ = [
    "LabelOutput",
    "RunOptions",
    "SegmentationResult",
    "install",
    "load",
    "output_paths",
    "save",
    "segment",
    "tasks",
]


def tasks() -> list[TaskSpec]:
    """The available tasks (see ``docs/tasks.md``)."""
    return catalog.tasks()


def load(path: str | os.PathLike) -> Volume:
    """Read a NIfTI image (file voxel order, header untouched): ``io.load``."""
    from .io import load as _load

    return _load(path)


def install(
    task: str | TaskSpec,
    source: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    trust: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **kwargs: Any,
) -> Path:
    """Install a task's model (download, or offline from a zip/folder); returns its folder."""
    from .models import install as _install

    return _install(task, source, trust=trust, progress=progress, cancel=cancel, **kwargs)


def _as_volume(image_or_path) -> Volume:
    from .io import Volume, from_nifti
    from .io import load as _load

    if isinstance(image_or_path, Volume):
        return image_or_path
    if isinstance(image_or_path, str | os.PathLike):
        return _load(image_or_path)
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover
        nib = None
    if nib is not None and isinstance(image_or_path, nib.spatialimages.SpatialImage):
        return from_nifti(image_or_path)
    raise TypeError(
        "segment() takes a NIfTI path, a Volume (api.load) or a nibabel image, "
        f"not {type(image_or_path).__name__}"
    )


def _resolve_model(options: RunOptions, report: Reporter, spec: TaskSpec | None = None):
    """(spec, model folder, model URL, model sha256) for a catalog task or a custom model.

    ``spec``: a task given as a :class:`TaskSpec` rather than by name (``options.task``).
    """
    from .models import store

    task = spec if spec is not None else options.task
    model, trust = options.model, options.trust
    if model is not None:
        folder = store.prepare_custom(model, trust=trust, report=report.sub(0.0, 0.02))
        custom = catalog.custom_task(folder)
        path = Path(model).expanduser().resolve()
        if task is not None:  # a newer/other model for a known task: keep its outputs
            spec = replace(catalog.get_task(task), custom=True, model_path=str(path))
        else:
            spec = replace(custom, model_path=str(path))
        sha = None
        if path.is_file():
            from .models.archives import sha256_file

            sha = sha256_file(path)
        return spec, folder, path.as_uri(), sha
    if task is None:
        raise TaskError(
            "no task given: pass task=<name> (see `spineseg tasks`) or model=<nnU-Net folder>"
        )
    spec = store._spec_for(task)
    folder = store.model_folder(spec)
    src = store.read_source(spec) or {}
    if src.get("custom") and not (src.get("trusted") or trust):
        from .errors import UntrustedModelError

        raise UntrustedModelError(
            f"the model installed for '{spec.id}' comes from an unpinned source "
            f"({', '.join(src.get('urls', []))}) and was not marked trusted; checkpoints are "
            "pickles that can run code. Pass trust=True (CLI: --trust) if you trust it."
        )
    urls = src.get("urls") or [s.url for s in spec.sources]
    shas = src.get("sha256") or [s.sha256 for s in spec.sources]
    return (
        spec,
        folder,
        urls[0] if len(urls) == 1 else urls,
        shas[0] if len(shas) == 1 else shas,
    )


def segment(
    image_or_path: str | os.PathLike | Volume | nib.Nifti1Image,
    task: str | TaskSpec | None = None,
    model: str | os.PathLike | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    trust: bool | None = None,
    threshold: float | None = None,
    largest: bool | None = None,
    fill_holes: bool | None = None,
    remove_small: str | Sequence[str] | int | None = None,
    test_time_aug: bool | None = None,
    return_probabilities: bool = True,
    label_vert: bool | None = None,
    sct_compat: bool | None = None,
    *,
    profile: str | None = None,
    options: RunOptions | None = None,
    engine: str | Any | None = None,
) -> SegmentationResult:
    """Segment an image with a task's model; nothing is written (see :func:`save`).

    The run is described by one :class:`~napari_spineseg.options.RunOptions`: pass it
    as ``options=`` (what the widgets, the CLI and the batch do), or use the keywords,
    which override ``options`` where given (None = not given):

    ``task``: a catalog task id or SCT alias; ``model``: an nnU-Net v2 folder or zip of
    your own (needs ``trust=True``: checkpoints are pickles). ``threshold``, ``largest``,
    ``fill_holes``, ``remove_small`` (``"5mm3"`` or ``["10", "20vox"]`` per output) and
    ``test_time_aug`` (and ``label_vert`` for ``spine``) are SCT's ``-thr``, ``-largest``,
    ``-fill-holes``, ``-remove-small``, ``-test-time-aug`` (``-label-vert``);
    None keeps the task's SCT default. ``sct_compat``: where our defaults differ from
    ``sct_deepseg`` (multi-label files, ``-thr`` on nnU-Net tasks, ``-thr 0`` on 7T,
    ``-remove-small`` values SCT refuses), do what SCT does (docs/tasks.md). ``device``:
    ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``, ``mps``. ``profile``: ``sct``
    (default, as ``sct_deepseg``) or ``fast`` (nnU-Net: first fold only, tile step 0.75;
    said in the result's notes; the other engines ignore it). Invalid options raise
    :class:`~napari_spineseg.errors.SpinesegError` before anything loads.
    ``progress`` receives :class:`~napari_spineseg.progress.Progress`; ``cancel`` aborts
    at the next report (raises :class:`~napari_spineseg.errors.Cancelled`).
    ``engine``: None runs here, in this process; ``"process"`` in a persistent engine
    process (the model stays loaded there; this process never imports torch);
    ``"tcp://host:8786"`` on that dask scheduler's workers (:mod:`.engine_process`).

    Returns masks in the *file voxel order* of the input, one per SCT output file; the
    options used (task defaults filled in) are in ``provenance["settings"]``.
    """
    from .segmentation import run

    spec = task if isinstance(task, TaskSpec) else None
    opts = run_options(
        options,
        task=spec.id if spec is not None else task,
        model=model,
        trust=trust,
        device=device,
        threshold=threshold,
        largest=largest,
        fill_holes=fill_holes,
        remove_small=remove_small,
        test_time_aug=test_time_aug,
        label_vert=label_vert,
        sct_compat=sct_compat,
        profile=profile,
    )
    if engine is not None:  # one argument away: the engine process or a remote scheduler
        from .engine_process import segment as segment_on_engine

        return segment_on_engine(
            image_or_path,
            opts,
            progress,
            cancel,
            engine=engine,
            return_probabilities=return_probabilities,
        )
    report = Reporter(progress, cancel)
    report.check()
    spec, folder, url, sha = _resolve_model(opts, report, spec)
    volume = _as_volume(image_or_path)
    return run(
        spec,
        volume,
        folder,
        opts,
        report.sub(0.02, 1.0) if opts.model is not None else report,
        return_probabilities=return_probabilities,
        model_url=url,
        model_sha256=sha,
    )


# ----------------------------------------------------------------------------- saving


def output_paths(
    result: SegmentationResult, out: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Where :func:`save` writes each output (SCT's naming rules, ``sct_deepseg -o``).

    * no ``out``: ``<input dir>/<input name><suffix>.nii.gz``;
    * ``out`` with one output file: ``out`` verbatim (``.nii.gz`` added if it has no
      NIfTI extension);
    * ``out`` with several: ``<out without extension><suffix>.nii.gz``;
    * ``out`` an existing folder: ``<out>/<input name><suffix>.nii.gz``.
    """
    from .io.checks import split_nifti_name

    suffixes = list(result.outputs)
    src = result.source
    if out is None or Path(out).is_dir():
        if out is None and src.path is None:
            raise SaveRefusedError(
                "the image was not read from a file, so there is no default output name; "
                "pass out=<path>"
            )
        folder = Path(out) if out is not None else Path(src.path).parent
        return {s: folder / f"{src.name}{s}.nii.gz" for s in suffixes}
    base, ext = split_nifti_name(Path(out).expanduser())
    if len(suffixes) == 1:
        return {suffixes[0]: Path(base + (ext or ".nii.gz"))}
    return {s: Path(f"{base}{s}{ext or '.nii.gz'}") for s in suffixes}


def save(
    result: SegmentationResult,
    out: str | os.PathLike | None = None,
    *,
    entry_extra: dict[str, Any] | None = None,
    sidecar_extra: dict[str, Any] | None = None,
    output_extra: Mapping[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """Write every output as NIfTI on the source's exact grid, each with a JSON sidecar.

    Returns the written mask paths (named by :func:`output_paths`). Each output goes
    through :func:`napari_spineseg.saving.save_mask`, the Review widget's save path too:
    exact header copy, atomic write, previous version kept, and ``<mask>.json`` with
    SCT's ``GeneratedBy`` entry. ``entry_extra`` is merged into that entry (e.g. a batch's
    run key), ``output_extra[suffix]`` too for that output only (e.g. the batch's
    confidence record of that mask), and ``sidecar_extra`` into the sidecar's top level
    (e.g. BIDS ``Sources``).
    """
    from .saving import save_mask

    written: list[Path] = []
    for suffix, path in output_paths(result, out).items():
        output = result.outputs[suffix]
        extra = {**(entry_extra or {}), **(output_extra or {}).get(suffix, {})}
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(
            save_mask(
                output.labels,
                path,
                like=result.source,
                classes=output.classes,
                provenance=result.provenance,
                output=suffix,
                entry_extra=extra or None,
                sidecar_extra=sidecar_extra,
            )
        )
    return written
