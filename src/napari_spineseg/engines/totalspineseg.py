"""TotalSpineSeg (SCT task ``spine``): two nnU-Net models + the package's labelling, in memory.

Why in memory: the ``totalspineseg`` command runs every step as files in folders with
process pools (copy, reorient, resample, predict, label, resample back), which needs a
writable scratch folder, spawns processes and cannot report progress or be cancelled
between steps. Here the same steps run on ``nibabel`` images in this process:

1. 3D input (``average4d`` is a no-op on 3D), ``as_closest_canonical`` (lossless),
   ``resample`` to 1 x 1 x 1 mm (the package's torchio linear resampling);
2. step 1 nnU-Net (``Dataset101``, fold 0, no mirroring, tile step 0.5) through
   :class:`~napari_spineseg.engines.nnunet.NnunetModel`;
3. the package's own ``largest_component``, ``iterative_label``, ``fill_canal``,
   ``transform_seg2image`` and ``extract_levels`` with the arguments its ``inference()``
   passes;
4. with ``label_vert``: ``crop_image2seg`` (margin 10), ``extract_alternate`` (odd
   discs as 2nd channel), step 2 nnU-Net, then ``largest_component``,
   ``iterative_label``, ``fill_canal`` as ``inference()`` does;
5. back to the input grid (nearest for label maps, label-preserving for the disc
   levels), i.e. the input's exact voxel order.

The algorithm itself (LGPL-3.0) is *called* from the installed ``totalspineseg`` package,
not copied. Each of its file-writing wrappers casts to a dtype and stores the affine in
float32 sform/qform; :func:`_as_saved` reproduces exactly that (an in-memory NIfTI
round trip), so the result equals the package's ``inference()`` output voxel for voxel
(checked by ``tests/test_engine_totalspineseg.py``).

Importing ``totalspineseg.utils.*`` runs the package ``__init__`` (it imports every
utility: torchio, gryds, nnU-Net's predictor; ~0.5 s on top of nnU-Net) and two side
effects we undo: several modules call ``warnings.filterwarnings("ignore")`` (which
would silence every warning of the process, our GeometryWarning included) and
``predict_nnunet`` sets dummy ``nnUNet_*`` environment variables.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelNotInstalledError, SpinesegError
from ..progress import Reporter
from .base import Engine, Prediction

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from ..catalog import TaskSpec
    from ..options import RunOptions
    from ..postprocess import MinSize

STEP1_DATASET = "Dataset101_TotalSpineSeg_step1"
STEP2_DATASET = "Dataset102_TotalSpineSeg_step2"
INSTALL_HINT = "pip install 'napari-spineseg[totalspineseg]'"

# --------------------------------------------------------------------------- label tables
_VERTEBRAE = (
    [(11 + i, f"C{i + 1}") for i in range(7)]
    + [(21 + i, f"T{i + 1}") for i in range(12)]
    + [(41 + i, f"L{i + 1}") for i in range(6)]
    + [(50, "sacrum")]
)
_DISC_NAMES = (
    ["C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1"]
    + [f"T{i}-T{i + 1}" for i in range(1, 12)]
    + ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-L6", "L5-S"]
)
_DISC_VALUES = [63, 64, 65, 66, 67, 71] + list(range(72, 83)) + [91, 92, 93, 94, 95, 96, 100]

#: TotalSpineSeg's output values (``tss_map.json``; 46/96 = L6 and L5-L6, which the
#: labelling produces for a sixth lumbar vertebra).
TSS_CLASSES: dict[int, str] = {
    1: "spinal cord",
    2: "spinal canal",
    **dict(_VERTEBRAE),
    **{v: f"disc {n}" for v, n in zip(_DISC_VALUES, _DISC_NAMES)},
}
TSS_GROUPS: dict[str, tuple[int, ...]] = {
    **{name: (value,) for value, name in TSS_CLASSES.items()},
    "vertebrae": tuple(v for v, _ in _VERTEBRAE),
    "discs": tuple(_DISC_VALUES),
}
#: Disc-level points (SCT convention, ``levels_maps.json``): one voxel per level on the
#: posterior tip of each disc, 1 = top of C1, 2 = C1-C2, 3 = C2-C3 ... 25 = L5-S.
LEVEL_CLASSES: dict[int, str] = {1: "top of C1", 2: "C1-C2"} | {
    3 + i: n for i, n in enumerate(n for n in _DISC_NAMES if n != "L5-L6")
}

# Arguments exactly as totalspineseg.inference.inference() passes them (no localizer).
_STEP1_LABEL_ARGS = {
    "disc_labels": [1, 2, 3, 4, 5],
    "disc_landmark_labels": [2, 3, 4, 5],
    "disc_landmark_output_labels": [63, 71, 91, 100],
    "canal_labels": [8],
    "canal_output_label": 2,
    "cord_labels": [9],
    "cord_output_label": 1,
    "sacrum_labels": [6],
    "sacrum_output_label": 50,
    "map_input_dict": {7: 11},
}
_STEP2_LABEL_ARGS = {
    "disc_labels": [1, 2, 3, 4, 5],
    "disc_landmark_labels": [2, 3, 4, 5],
    "disc_landmark_output_labels": [63, 71, 91, 100],
    "vertebrae_labels": [7, 8, 9],
    "vertebrae_landmark_output_labels": [13, 21, 41, 50],
    "vertebrae_extra_labels": [6],
    "canal_labels": [10],
    "canal_output_label": 2,
    "cord_labels": [11],
    "cord_output_label": 1,
    "sacrum_labels": [9],
    "sacrum_output_label": 50,
}
_LEVEL_DISCS = list(range(63, 68)) + list(range(71, 83)) + list(range(91, 96)) + [100]


# --------------------------------------------------------------------------- the package
_TSS: SimpleNamespace | None = None


def tss_functions() -> SimpleNamespace:
    """The ``totalspineseg`` functions the pipeline calls (imported once, side effects undone)."""
    global _TSS
    if _TSS is not None:
        return _TSS
    env = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    try:
        with warnings.catch_warnings():  # the package sets filterwarnings("ignore") globally
            from totalspineseg.utils.average4d import average4d
            from totalspineseg.utils.crop_image2seg import crop_image2seg
            from totalspineseg.utils.extract_alternate import extract_alternate
            from totalspineseg.utils.extract_levels import extract_levels
            from totalspineseg.utils.fill_canal import fill_canal
            from totalspineseg.utils.image import Image
            from totalspineseg.utils.iterative_label import iterative_label
            from totalspineseg.utils.largest_component import largest_component
            from totalspineseg.utils.resample import resample
            from totalspineseg.utils.transform_seg2image import transform_seg2image
    except ImportError as exc:
        raise SpinesegError(
            f"TotalSpineSeg (task 'spine') needs the 'totalspineseg' package, which could not "
            f"be imported ({exc}); install it with: {INSTALL_HINT}"
        ) from exc
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        from importlib.metadata import version

        tss_version = version("totalspineseg")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        tss_version = "unknown"
    _TSS = SimpleNamespace(
        average4d=average4d,
        crop_image2seg=crop_image2seg,
        extract_alternate=extract_alternate,
        extract_levels=extract_levels,
        fill_canal=fill_canal,
        Image=Image,
        iterative_label=iterative_label,
        largest_component=largest_component,
        resample=resample,
        transform_seg2image=transform_seg2image,
        version=tss_version,
    )
    return _TSS


# --------------------------------------------------------------------------- model folders
def find_model_folders(data: str | Path, release: str | None = None) -> tuple[Path, Path]:
    """The step-1/step-2 trainer folders in a TotalSpineSeg data folder, as it finds them.

    Layout: ``<data>/nnUNet/results/[<release>/]Dataset10x_.../<T>__<P>__<C>/fold_0``.
    Like ``inference()``: both datasets directly under ``results`` ("custom" weights) win;
    otherwise ``<release>`` (default: the newest ``r*`` folder holding both).
    """
    data = Path(data).expanduser()
    results = data / "nnUNet" / "results"
    if not (results.is_dir() or data.is_dir()):
        raise ModelNotInstalledError(f"TotalSpineSeg data folder {data} does not exist")
    if not results.is_dir():  # also accept the results folder itself
        results = data
    candidates = [results]
    if release:
        candidates = [results / release]
    elif not all((results / d).is_dir() for d in (STEP1_DATASET, STEP2_DATASET)):
        candidates = sorted((p for p in results.glob("r*") if p.is_dir()), reverse=True)
    for base in candidates:
        if all((base / d).is_dir() for d in (STEP1_DATASET, STEP2_DATASET)):
            return _trainer_folder(base / STEP1_DATASET), _trainer_folder(base / STEP2_DATASET)
    raise ModelNotInstalledError(
        f"TotalSpineSeg weights are missing in {data}: expected "
        f"nnUNet/results/{release or '<release>'}/{STEP1_DATASET} and {STEP2_DATASET} "
        "(install the task 'spine' again, e.g. `spineseg install spine`)"
    )


def _trainer_folder(dataset: Path) -> Path:
    found = sorted(dataset.glob("*/fold_0"))
    if not found:
        raise ModelNotInstalledError(
            f"TotalSpineSeg model {dataset} has no <Trainer>__<Plans>__<config>/fold_0 folder; "
            "install the task 'spine' again"
        )
    return found[0].parent


def _checkpoint_name(folder: Path) -> str:
    """TotalSpineSeg prefers ``checkpoint_best.pth`` (SCT's nnU-Net tasks prefer final)."""
    best = folder / "fold_0" / "checkpoint_best.pth"
    return "checkpoint_best.pth" if best.is_file() else "checkpoint_final.pth"


# --------------------------------------------------------------------------- helpers
def _as_saved(img: nib.Nifti1Image, dtype, *, round_labels: bool = False) -> nib.Nifti1Image:
    """What a totalspineseg wrapper writes and the next step reads back, without a file.

    The wrappers cast (``round()`` first for label maps), set the data dtype, put the
    affine in qform and sform and ``nib.save``; reading back stores the affine as float32.
    """
    import nibabel as nib

    data = np.asanyarray(img.dataobj)
    data = data.round().astype(dtype) if round_labels else data.astype(dtype)
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(dtype)
    out.set_qform(out.affine)
    out.set_sform(out.affine)
    return nib.Nifti1Image.from_bytes(out.to_bytes())


def _labels_saved(img: nib.Nifti1Image) -> nib.Nifti1Image:
    return _as_saved(img, np.uint8, round_labels=True)


def _image_dtype(img: nib.Nifti1Image):
    """The wrappers keep the image's in-memory dtype (after scaling), not the header's."""
    return getattr(np, np.asanyarray(img.dataobj).dtype.name)


def _fit_int_range(img: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """The wrappers' rescale of integer data that overflow their dtype (SCT 6.3 logic)."""
    import nibabel as nib

    if "int" not in np.dtype(dtype).name:
        return img
    data = np.asanyarray(img.dataobj).astype(np.float64)
    lo, hi = data.min(), data.max()
    dmin, dmax = np.iinfo(dtype).min, np.iinfo(dtype).max
    if lo < dmin or dmax < hi:
        data = data * (dmax - dmin) / (hi - lo)
        data = data - (data.min() - dmin)
        img = nib.Nifti1Image(data.astype(dtype), img.affine, img.header)
    return img


def _image_stage(img: nib.Nifti1Image, fn) -> nib.Nifti1Image:
    """One image-processing wrapper (average4d, reorient, resample, crop) in memory."""
    dtype = _image_dtype(img)
    return _as_saved(fn(_fit_int_range(img, dtype)), dtype)


# --------------------------------------------------------------------------- the model
class TotalSpineSegModel(Engine):
    """TotalSpineSeg's step-1 and step-2 nnU-Net models plus its labelling algorithm.

    The run options it reads: ``device`` and ``label_vert``. Test-time augmentation and
    the inference profile are ignored: TotalSpineSeg runs fold 0 without mirroring, tile
    step 0.5, whatever SCT is asked for (as ``totalspineseg`` itself does).
    """

    def __init__(self, step1, step2, folders: tuple[Path, Path]) -> None:
        self.step1 = step1
        self.step2 = step2
        self.folders = folders

    @classmethod
    def source_for(cls, spec: TaskSpec, folder: Path) -> Path | tuple[Path, Path]:
        """The (step 1, step 2) trainer folders found in the task's install, else the
        folder itself (then read as a TotalSpineSeg data folder)."""
        from ..models.archives import find_nnunet_folders

        found = find_nnunet_folders(folder)
        step1 = [f for f in found if "Dataset101" in str(f) or "step1" in str(f)]
        step2 = [f for f in found if "Dataset102" in str(f) or "step2" in str(f)]
        if len(step1) == 1 and len(step2) == 1:
            return (step1[0], step2[0])
        return folder

    @classmethod
    def load(
        cls,
        source: str | Path | Sequence[str | Path],
        options: RunOptions | None = None,
        *,
        device: str | None = None,
        trust: bool = True,
        release: str | None = None,
    ) -> TotalSpineSegModel:
        """Load from a TotalSpineSeg data folder, or from ``(step1_folder, step2_folder)``.

        A data folder is what ``totalspineseg``/SCT install (``nnUNet/results/<release>``,
        see :func:`find_model_folders`); the two model folders are the trainer folders
        (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_*.pth``). As the package
        does: fold 0, ``checkpoint_best.pth`` if present else ``checkpoint_final.pth``,
        tile step 0.5, no mirroring. The device is ``options.device`` unless ``device``
        is given.
        """
        if device is None:
            device = options.device if options is not None else "auto"
        tss_functions()  # fail early, with the install hint, if the package is missing
        from .nnunet import NnunetModel

        if isinstance(source, str | Path):
            folders = find_model_folders(source, release)
        else:
            folders = tuple(Path(p).expanduser() for p in source)
            if len(folders) != 2:
                raise SpinesegError(
                    "TotalSpineSegModel.load takes a data folder or (step1_folder, step2_folder)"
                )
        models = [
            NnunetModel.load(
                f,
                folds=(0,),
                checkpoint=_checkpoint_name(f),
                device=device,
                tile_step_size=0.5,
                use_mirroring=False,
                trust=trust,
            )
            for f in folders
        ]
        for model, n, what in zip(models, (1, 2), ("step 1", "step 2")):
            if model.num_input_channels != n:
                raise ModelNotInstalledError(
                    f"{model.folder} is not a TotalSpineSeg {what} model: it takes "
                    f"{model.num_input_channels} input channel(s), expected {n}"
                )
        return cls(models[0], models[1], folders)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "engine": "totalspineseg",
            "totalspineseg": tss_functions().version,
            "step1": self.step1.settings,
            "step2": self.step2.settings,
        }

    def device_label(self) -> str:
        return str(self.step1.device)

    def predict(
        self,
        image: nib.Nifti1Image,
        report: Reporter | None = None,
        options: RunOptions | None = None,
        *,
        name: str | None = None,
        return_probabilities: bool = True,
        min_sizes: list[MinSize] | None = None,
    ) -> Prediction:
        """Segment a 3D image -> ``maps`` ``discs`` (level points) and ``all`` (labels).

        ``options.label_vert`` False (SCT's default) gives step 1's labels (discs, cord,
        canal, C1 = 11, other vertebrae = 50); True also runs step 2 (each vertebra
        labelled, C1 = 11 ... L5 = 45). ``name`` (default: the image's file) names the
        input in error messages. No probabilities are returned (the labels come from
        TotalSpineSeg's labelling, not from one network); ``min_sizes`` is the task
        layer's (post-processing runs there).
        """
        import nibabel as nib

        label_vert = bool(options is not None and options.label_vert)

        tss = tss_functions()
        report = report if report is not None else Reporter()
        name = name or image.get_filename() or "the input image"
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if len(image.shape) != 3:
            raise SpinesegError(
                f"{name}: TotalSpineSeg takes a 3D image, got shape {tuple(image.shape)} "
                "(average or pick one volume of a 4D series first)"
            )
        steps = 2 if label_vert else 1
        span = 0.8 / steps

        # 1. Preprocessing, as inference(): average4d (no-op on 3D), canonical, 1 mm.
        report(0.0, "TotalSpineSeg: preprocessing")
        raw = image
        iso = _image_stage(raw, tss.average4d)
        iso = _image_stage(iso, nib.as_closest_canonical)
        iso = _image_stage(iso, tss.resample)
        timings["preprocess_s"] = time.perf_counter() - t0

        # 2. Step 1.
        t = time.perf_counter()
        seg = self._predict(self.step1, [iso], report.sub(0.05, 0.05 + span * 0.9), "step 1")
        timings["step1_nnunet_s"] = time.perf_counter() - t
        report(0.05 + span * 0.9, "TotalSpineSeg: labelling step 1")
        t = time.perf_counter()
        step1 = _labels_saved(tss.largest_component(seg, binarize=True, dilate=5))
        try:
            step1 = tss.iterative_label(
                step1, None, selected_disc_landmarks=[2, 5, 3, 4], **_STEP1_LABEL_ARGS
            )
        except ValueError as exc:
            raise SpinesegError(
                f"{name}: TotalSpineSeg step 1 found no usable spine ({exc}). The image is "
                "probably too different from the training data (contrast, field of view) "
                "for the model to detect the spinal canal and discs."
            ) from exc
        step1 = _labels_saved(step1)
        step1 = _labels_saved(
            tss.fill_canal(
                step1, canal_label=2, cord_label=1, largest_canal=True, largest_cord=True
            )
        )
        step1 = _labels_saved(tss.transform_seg2image(iso, step1))
        levels = self._levels(step1, name)
        timings["step1_labelling_s"] = time.perf_counter() - t

        final = step1
        if label_vert:
            report(0.05 + span, "TotalSpineSeg: step 2 input")
            t = time.perf_counter()
            crop = _image_stage(iso, lambda im: tss.crop_image2seg(im, step1, margin=10))
            odd = _labels_saved(tss.transform_seg2image(crop, step1))
            odd = _labels_saved(tss.extract_alternate(odd, labels=list(range(63, 101))))
            seg2 = self._predict(
                self.step2, [crop, odd], report.sub(0.05 + span, 0.05 + span * 1.9), "step 2"
            )
            timings["step2_nnunet_s"] = time.perf_counter() - t
            report(0.05 + span * 1.9, "TotalSpineSeg: labelling step 2")
            t = time.perf_counter()
            step2 = _labels_saved(tss.largest_component(seg2, binarize=True, dilate=5))
            try:
                step2 = tss.iterative_label(
                    step2, None, selected_disc_landmarks=[2, 5, 3, 4], **_STEP2_LABEL_ARGS
                )
            except ValueError as exc:
                raise SpinesegError(
                    f"{name}: TotalSpineSeg step 2 could not label the vertebrae ({exc}); "
                    "run without vertebral labelling (label_vert=False) to get step 1's "
                    "discs, cord and canal"
                ) from exc
            step2 = _labels_saved(step2)
            step2 = _labels_saved(
                tss.fill_canal(
                    step2, canal_label=2, cord_label=1, largest_canal=True, largest_cord=True
                )
            )
            final = _labels_saved(tss.transform_seg2image(iso, step2))
            timings["step2_labelling_s"] = time.perf_counter() - t

        # 3. Back to the input grid (the package resamples to "input_raw").
        report(0.9, "TotalSpineSeg: back to the input grid")
        report.check()
        out_all = _labels_saved(tss.transform_seg2image(raw, final, interpolation="nearest"))
        if levels is not None:
            out_levels = _labels_saved(tss.transform_seg2image(raw, levels, interpolation="label"))
            levels_data = np.asarray(out_levels.dataobj)
        else:
            levels_data = np.zeros(raw.shape, np.uint8)
        all_data = np.asarray(out_all.dataobj)
        timings["total_s"] = time.perf_counter() - t0
        report(1.0, "TotalSpineSeg: done")

        present = set(np.unique(all_data).tolist())
        messages = []
        if levels is None:
            messages.append(
                f"{name}: no disc levels could be placed (no canal or no labelled disc "
                "in step 1's result)"
            )
        info = dict(self.settings)
        info.update(label_vert=bool(label_vert), timings=timings, messages=messages)
        info["values_found"] = sorted(v for v in present if v)
        return Prediction(
            maps={"discs": levels_data, "all": all_data},
            classes={"discs": dict(LEVEL_CLASSES), "all": dict(TSS_CLASSES)},
            groups={"all": dict(TSS_GROUPS)},
            info=info,
        )

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _predict(model, channels: list, report: Reporter, what: str) -> nib.Nifti1Image:
        """nnU-Net on the 1 mm canonical image(s); the labels keep their grid."""
        import nibabel as nib

        ref = channels[0]
        data = np.stack([np.asanyarray(c.dataobj).astype(np.float32) for c in channels])
        zooms = tuple(float(z) for z in ref.header.get_zooms()[:3])
        report(0.0, f"TotalSpineSeg: {what}")
        labels, _ = model.predict_voxels(data, zooms, report)
        seg = nib.Nifti1Image(labels.astype(np.uint8), ref.affine, ref.header)
        return _labels_saved(seg)

    @staticmethod
    def _levels(step1: nib.Nifti1Image, name: str) -> nib.Nifti1Image | None:
        """``extract_levels`` as its wrapper runs it (package Image class, LPI, uint8)."""
        import nibabel as nib

        tss = tss_functions()
        seg = tss.Image(np.asanyarray(step1.dataobj), hdr=step1.header)
        orientation = seg.orientation
        try:
            out = tss.extract_levels(
                seg.change_orientation("LPI"),
                canal_labels=[1, 2],
                disc_labels=_LEVEL_DISCS,
                c1_label=11,
                c2_label=50,
            )
        except ValueError:
            return None
        out.change_orientation(orientation)
        out.change_type(np.uint8)
        out.hdr.set_data_shape(out.data.shape)
        out.fix_header_dtype()
        img = nib.Nifti1Image(out.data.copy(), None, out.hdr.copy())
        return nib.Nifti1Image.from_bytes(img.to_bytes())
