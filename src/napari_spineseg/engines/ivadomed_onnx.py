"""The 7T grey-matter / spinal-cord model (SCT task ``gm_sc_7t_t2star``) through onnxruntime.

SCT runs this model (``model_7t_multiclass_gm_sc_unet2d``, an ivadomed 2D U-Net exported
to ONNX) with ``ivadomed.inference.segment_volume``. ivadomed drags in torchvision,
torchio, pandas, wandb... for what is, at inference time, a short numpy/scipy pipeline; this
module re-implements that pipeline step by step so that the probabilities match ivadomed's
and the masks match SCT's output files, with only nibabel, numpy, scipy and onnxruntime:

1. ``nib.as_closest_canonical`` (RAS, lossless), float32 data, axial slices ``data[:, :, z]``;
2. slices with ``std == 0`` are skipped (``filter_empty_input``) and predicted as zeros;
3. ``Resample``: ``scipy.ndimage.zoom(slice[..., None], (zx/hspace, zy/wspace, 1), order=2)``
   (ivadomed adds a trailing axis to 2D samples);
4. ``CenterCrop``: offsets ``int(round((h - 128) / 2.))`` (Python rounding), out-of-bounds
   parts zero-padded (ivadomed's ``CroppableArray``);
5. ``NormalizeInstance``: ``(x - mean) / std`` on the cropped slice, on a torch tensor as
   ivadomed (unbiased std; a slice with ``std < 1e-5`` is only centred);
6. the ONNX graph: input ``input`` (N, 1, 128, 128) -> output (N, 2, 128, 128) sigmoid
   probabilities, one channel per ``target_suffix`` (sc, gm);
7. undo per channel: un-crop, then ``zoom(..., order=1)`` back (predictions are undone as
   "gt" data, hence linear);
8. stack, reorient back to the input's voxel order; values <= 0.01 -> 0 (``pred_to_nib``);
9. the JSON's post-processing *as SCT configures it*: SCT passes ``keep_largest=0`` and
   ``fill_holes=0``, which delete those two steps (ivadomed ``set_postprocessing_options``),
   so by default only ``binarize_prediction`` (>= 0.5) and ``remove_small`` (3 voxels per
   class, 18-connectivity, 3D) remain. Both can be switched back on here.

Deliberate deviation: one ``InferenceSession`` for the whole run (ivadomed builds one per
batch). ``-thr 0`` gives soft maps (SCT's documented intent) unless ``sct_compat`` asks for
what SCT 7.3 really writes (see :meth:`IvadomedOnnxModel.predict`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from ..errors import ModelNotInstalledError, SpinesegError, TaskError
from ..postprocess import MinSize, parse_remove_small, resolve_remove_small
from ..progress import Reporter
from .base import Engine, Prediction, cpu_threads

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import TaskSpec
    from ..options import RunOptions

#: Name of the real model (folder, ``.onnx`` and ``.json`` stem) inside SCT's release zip.
MODEL_NAME = "model_7t_multiclass_gm_sc_unet2d"

#: Human-readable class names for the map names derived from ``target_suffix``.
_CLASS_NAMES = {"sc": "spinal cord", "gm": "grey matter", "wm": "white matter"}

#: ivadomed's ``pred_to_nib`` (``discard_noise``) sets probabilities <= this to 0.
NOISE_FLOOR = 1e-2


# --------------------------------------------------------------------------------------
# The published preprocessing / undo steps, as small pure functions (the build script of
# the test model uses them too, so the model is trained on exactly what it will see).
# --------------------------------------------------------------------------------------


def resample_slice(
    slice2d: np.ndarray, zooms: Sequence[float], hspace: float, wspace: float, order: int = 2
) -> np.ndarray:
    """ivadomed ``Resample`` on one 2D slice (with the trailing axis ivadomed adds)."""
    factors = (float(zooms[0]) / hspace, float(zooms[1]) / wspace, 1.0)
    out = ndimage.zoom(slice2d[..., None], factors, order=order)
    return out[..., 0].astype(slice2d.dtype, copy=False)


def crop_offsets(shape: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """ivadomed ``CenterCrop`` offsets: Python's round (half to even) of the centred start."""
    return (
        int(round((shape[0] - size[0]) / 2.0)),
        int(round((shape[1] - size[1]) / 2.0)),
    )


def center_crop(arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Crop (or zero-pad, as ``CroppableArray`` does) ``arr`` to ``size`` around its centre."""
    th, tw = int(size[0]), int(size[1])
    fh, fw = crop_offsets(arr.shape, (th, tw))
    out = np.zeros((th, tw), dtype=arr.dtype)
    h0, h1 = max(fh, 0), min(fh + th, arr.shape[0])
    w0, w1 = max(fw, 0), min(fw + tw, arr.shape[1])
    if h1 > h0 and w1 > w0:
        out[h0 - fh : h1 - fh, w0 - fw : w1 - fw] = arr[h0:h1, w0:w1]
    return out


def uncrop(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`center_crop`: put the crop back on a zero slice of ``shape``."""
    th, tw = arr.shape
    fh, fw = crop_offsets(shape, (th, tw))
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=arr.dtype)
    h0, h1 = max(fh, 0), min(fh + th, shape[0])
    w0, w1 = max(fw, 0), min(fw + tw, shape[1])
    if h1 > h0 and w1 > w0:
        out[h0:h1, w0:w1] = arr[h0 - fh : h1 - fh, w0 - fw : w1 - fw]
    return out


def normalize_instance(arr: np.ndarray) -> np.ndarray:
    """ivadomed ``NormalizeInstance`` on the (cropped) float32 slice, computed as ivadomed does.

    ivadomed normalises a torch tensor (``NumpyToTensor`` runs first): ``std()`` is the
    unbiased (N - 1) standard deviation, and a slice with ``std < 1e-5`` is only centred.
    torch's float32 mean sums in a different order than numpy's, so the same torch calls
    are made here: the result is ivadomed's to the bit.
    """
    import torch

    sample = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if sample.std() < 1e-5:
        out = sample - sample.mean()
    else:
        out = (sample - sample.mean()) / sample.std()
    return out.numpy()


def unresample_slice(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """ivadomed ``Resample.undo_transform`` for predictions ("gt" data: linear)."""
    factors = (shape[0] / arr.shape[0], shape[1] / arr.shape[1], 1.0)
    out = ndimage.zoom(arr[..., None], factors, order=1)[..., 0]
    if out.shape != tuple(shape):  # pragma: no cover - zoom rounds back to the shape
        raise RuntimeError(f"undo resample gave {out.shape}, expected {tuple(shape)}")
    return out.astype(arr.dtype, copy=False)


def preprocess_slice(
    slice2d: np.ndarray,
    zooms: Sequence[float],
    hspace: float,
    wspace: float,
    crop: Sequence[int],
) -> tuple[np.ndarray, tuple[int, int]]:
    """Resample + centre-crop + normalise one float32 slice; also the resampled shape."""
    res = resample_slice(slice2d, zooms, hspace, wspace)
    return normalize_instance(center_crop(res, crop)), res.shape


# --------------------------------------------------------------------------------------
# Post-processing (ivadomed ``Postprocessing``, in the order of the JSON)
# --------------------------------------------------------------------------------------

_STRUCT_18 = ndimage.generate_binary_structure(3, 2)


def _threshold(data: np.ndarray, thr: float) -> np.ndarray:
    """ivadomed ``threshold_predictions``: < thr -> 0, >= thr -> 1."""
    return (data >= thr).astype(data.dtype)


def _remove_small(data: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per class, drop 18-connected 3D objects with fewer voxels than the class's size."""
    out = data.copy()
    for c in range(out.shape[-1]):
        size_min = sizes[c]
        if size_min <= 1:
            continue
        lab, n = ndimage.label(out[..., c] != 0, structure=_STRUCT_18)
        if n == 0:
            continue
        counts = np.bincount(lab.ravel())
        small = np.flatnonzero(counts < size_min)
        small = small[small > 0]
        if small.size:
            channel = out[..., c]
            channel[np.isin(lab, small)] = 0
    return out


def _keep_largest(data: np.ndarray) -> np.ndarray:
    """ivadomed ``keep_largest_object`` on the 4D (X, Y, Z, class) array, as ivadomed runs it.

    Soft data are pre-thresholded at 0.001 and the kept object masks the soft values; the
    labelling uses scipy's default (face) connectivity in 4D, so touching classes connect.
    """
    binary = data >= 1e-3
    lab, n = ndimage.label(binary)
    if n <= 1:
        return data
    largest = int(np.bincount(lab.ravel())[1:].argmax()) + 1
    return data * (lab == largest)


def _fill_holes(data: np.ndarray) -> np.ndarray:
    """ivadomed ``fill_holes``: binarise at 0.5, fill each class with a 3x3x3 structure."""
    binary = data >= 0.5
    out = np.zeros(data.shape, dtype=data.dtype)
    for c in range(data.shape[-1]):
        out[..., c] = ndimage.binary_fill_holes(binary[..., c], structure=np.ones((3, 3, 3)))
    return out


def min_sizes_per_class(value: Any, n_classes: int) -> list[MinSize]:
    """One :class:`~napari_spineseg.postprocess.MinSize` per class.

    ``value``: the JSON's ``{"unit": "vox"|"mm3", "thr": n | [n, ...]}``, sizes already read
    by ``postprocess.resolve_remove_small`` (one, or one per class), or ``-remove-small``
    tokens (read with ``postprocess.parse_remove_small``).
    """
    if isinstance(value, dict):
        thr = value.get("thr", 0)
        unit = value.get("unit", "vox")
        if unit not in ("vox", "mm3"):
            raise SpinesegError(f"remove_small: unit must be 'vox' or 'mm3', got {unit!r}")
        sizes = [MinSize(float(t), unit) for t in (thr if isinstance(thr, list) else [thr])]
    elif isinstance(value, list | tuple) and all(isinstance(v, MinSize) for v in value):
        sizes = list(value)
    else:
        sizes = parse_remove_small(value)
    if len(sizes) == 1:
        return sizes * n_classes
    if len(sizes) != n_classes:
        raise SpinesegError(
            f"remove_small: {len(sizes)} values for {n_classes} classes; give one, or one "
            "per class"
        )
    return sizes


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


@dataclass
class IvadomedOnnxModel(Engine):
    """An ivadomed 2D ONNX model (``<name>.onnx`` + ``<name>.json``) ready to predict.

    Load once with :meth:`load`, then :meth:`predict` any number of 3D images; the ONNX
    session is created once and reused. Post-processing runs inside :meth:`predict`, with
    ivadomed's semantics (as SCT runs this model); test-time augmentation and the
    inference profile do not apply to this model and are ignored.
    """

    postprocess_inside: ClassVar[bool] = True

    folder: Path
    onnx_path: Path
    json_path: Path
    config: dict
    target_suffix: tuple[str, ...]
    map_names: tuple[str, ...]
    hspace: float
    wspace: float
    crop_size: tuple[int, int]
    postprocessing: dict
    batch_size: int
    device: str
    providers: list[str] = field(default_factory=list)
    session: Any = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        folder: str | Path,
        options: RunOptions | None = None,
        *,
        device: str | None = None,
        name: str | None = None,
    ) -> IvadomedOnnxModel:
        """Find ``<name>.onnx`` + ``<name>.json`` in ``folder`` (searched recursively).

        ``folder`` may be the model folder itself, or the unzipped release (SCT's zip is a
        GitHub source archive whose top folder holds ``model_7t_multiclass_gm_sc_unet2d/``).
        The device is ``options.device`` unless ``device`` is given: ``auto`` (CUDA
        through onnxruntime-gpu when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        """
        if device is None:
            device = options.device if options is not None else "auto"
        folder = Path(folder)
        onnx_path, json_path = _find_model_files(folder, name)
        try:
            config = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelNotInstalledError(
                f"{json_path}: the model configuration cannot be read ({exc}); reinstall the "
                "model (`spineseg install gm_sc_7t_t2star`)"
            ) from exc
        loader = config.get("loader_parameters", {})
        suffixes = tuple(loader.get("target_suffix") or ())
        if not suffixes:
            raise ModelNotInstalledError(
                f"{json_path}: no loader_parameters.target_suffix; this is not an ivadomed "
                "model configuration"
            )
        axis = loader.get("slice_axis", "axial")
        if axis != "axial":
            raise ModelNotInstalledError(
                f"{json_path}: slice_axis {axis!r} is not supported (only 'axial' models)"
            )
        transforms = config.get("transformation", {})
        resample = transforms.get("Resample", {})
        crop = transforms.get("CenterCrop", {}).get("size")
        if not resample or not crop:
            raise ModelNotInstalledError(
                f"{json_path}: transformation needs Resample and CenterCrop (found "
                f"{sorted(transforms)})"
            )
        model = cls(
            folder=folder,
            onnx_path=onnx_path,
            json_path=json_path,
            config=config,
            target_suffix=suffixes,
            map_names=tuple(_map_name(s) for s in suffixes),
            hspace=float(resample["hspace"]),
            wspace=float(resample["wspace"]),
            crop_size=(int(crop[0]), int(crop[1])),
            postprocessing=copy.deepcopy(config.get("postprocessing", {})),
            batch_size=int(config.get("training_parameters", {}).get("batch_size", 20) or 20),
            device=device,
        )
        model._open_session(device)
        return model

    def _open_session(self, device: str) -> None:
        import onnxruntime as ort

        device = (device or "auto").lower()
        available = ort.get_available_providers()
        providers: list = []
        if device.startswith("cuda") or device == "auto":
            if "CUDAExecutionProvider" in available:
                dev_id = int(device.split(":", 1)[1]) if ":" in device else 0
                providers.append(("CUDAExecutionProvider", {"device_id": dev_id}))
            elif device != "auto":
                raise SpinesegError(
                    f"device {device!r} was requested but onnxruntime {ort.__version__} has no "
                    f"CUDAExecutionProvider (available: {available}); install onnxruntime-gpu "
                    "or use device='auto' or 'cpu'"
                )
        elif device not in ("cpu", "mps"):
            raise SpinesegError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
        providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path), sess_options=opts, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelNotInstalledError(
                f"{self.onnx_path}: onnxruntime cannot load the model ({exc}); the file is "
                "incomplete or corrupt, reinstall it (`spineseg install gm_sc_7t_t2star`)"
            ) from exc
        self.providers = list(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or (len(inputs[0].shape) != 4):
            raise ModelNotInstalledError(
                f"{self.onnx_path}: expected one 4D input (N, 1, H, W), found "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self._input_name = inputs[0].name

    # ---------------------------------------------------------------- inference
    def predict_canonical_probabilities(
        self, data: np.ndarray, zooms: Sequence[float], report: Reporter
    ) -> tuple[np.ndarray, list[int]]:
        """Steps 2-7 on a canonical (RAS) float32 volume: (X, Y, Z, C) float32 and the slices run.

        Skipped (constant) slices stay zero, as ivadomed fills missing slices with zeros.
        """
        nx, ny, nz = data.shape
        n_out = len(self.map_names)
        probs = np.zeros((nx, ny, nz, n_out), dtype=np.float32)
        run = [z for z in range(nz) if data[:, :, z].std() != 0]
        total = max(1, math.ceil(len(run) / self.batch_size))
        report(0.0, "7T GM/SC: preprocessing", 0, total)
        for b in range(0, len(run), self.batch_size):
            zs = run[b : b + self.batch_size]
            batch, shapes = [], []
            for z in zs:
                x, rshape = preprocess_slice(
                    data[:, :, z], zooms, self.hspace, self.wspace, self.crop_size
                )
                batch.append(x)
                shapes.append(rshape)
            x = np.stack(batch)[:, None].astype(np.float32, copy=False)
            out = self.session.run(None, {self._input_name: x})[0]
            if out.ndim != 4 or out.shape[1] != n_out:
                raise ModelNotInstalledError(
                    f"{self.onnx_path}: the network returned {out.shape}, expected "
                    f"(N, {n_out}, H, W) for targets {list(self.target_suffix)}"
                )
            for i, z in enumerate(zs):
                for c in range(n_out):
                    p = uncrop(out[i, c].astype(np.float32, copy=False), shapes[i])
                    probs[:, :, z, c] = unresample_slice(p, (nx, ny))
            done = b // self.batch_size + 1
            report(done / total, f"7T GM/SC: batch {done}/{total}", done, total)
        return probs, run

    # ---------------------------------------------------------------- Engine hooks
    @classmethod
    def min_sizes_for(
        cls, spec: TaskSpec, options: RunOptions
    ) -> tuple[list[MinSize] | None, list[str]]:
        """ivadomed's reading of ``-remove-small`` (one size per class, SCT skips it when
        the last value has no unit); not given: None, the model JSON's own (SCT's)."""
        given = options.remove_small
        if given is None:
            return None, []
        return resolve_remove_small(
            given.tokens,
            [o.suffix for o in spec.outputs],
            ivadomed=True,
            sct_compat=options.sct_compat,
            parsed=given.sizes,
        )

    def device_label(self) -> str:
        return str(self.device)

    def postprocessing_done(self, pred: Prediction) -> list[str]:
        return [f"inside the engine (ivadomed semantics): {pred.info.get('postprocessing')}"]

    # ---------------------------------------------------------------- inference
    def predict(
        self,
        image: nib.Nifti1Image,
        report: Reporter | None = None,
        options: RunOptions | None = None,
        *,
        name: str | None = None,
        return_probabilities: bool = True,
        min_sizes: Any = None,
    ) -> Prediction:
        """Segment a 3D (or 2D) image; masks and probabilities on its exact grid.

        From ``options`` (default: ``RunOptions()``): ``threshold``: None -> the JSON's
        ``binarize_prediction`` (0.5); a value in (0, 1] -> binarise there (``>=``,
        ivadomed's rule); 0 -> soft output, what SCT's help promises for ``-thr 0``:
        ``probabilities`` then hold the post-processed soft maps and ``maps`` are those
        >= 0.5. With ``sct_compat``, 0 does what SCT 7.3 really does: ivadomed binarises
        at ``>= 0``, so every voxel is 1. ``largest`` / ``fill_holes``: off unless True,
        as SCT runs this task; True restores the JSON's step. ``min_sizes``: None -> the
        JSON's (3 voxels per class); 0 -> off; or sizes (``MinSize``, one or one per
        class, as :meth:`min_sizes_for` resolves them) / ``"5mm3"`` / tokens. Probabilities
        are always returned (they cost nothing extra here); ``name`` is not needed.
        """
        from ..options import RunOptions

        options = options if options is not None else RunOptions()
        report = report if report is not None else Reporter()
        keep_largest, fill_holes = bool(options.largest), bool(options.fill_holes)
        t0 = time.perf_counter()
        img3d, squeeze = _as_3d(image)
        can = nib.as_closest_canonical(img3d)
        data = np.asarray(can.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in can.header.get_zooms()[:3])
        probs_can, run = self.predict_canonical_probabilities(data, zooms, report.sub(0.0, 0.9))
        report(0.9, "7T GM/SC: post-processing")

        # Back to the input's voxel order (lossless), then pred_to_nib's noise floor.
        to_input = nio.ornt_transform(
            nio.io_orientation(can.affine), nio.io_orientation(img3d.affine)
        )
        probs = np.stack(
            [
                nio.apply_orientation(probs_can[..., c], to_input)
                for c in range(probs_can.shape[-1])
            ],
            axis=-1,
        ).astype(np.float32)
        probs[probs <= NOISE_FLOOR] = 0

        steps, soft = self._postprocessing_steps(
            options.threshold, min_sizes, keep_largest, fill_holes, sct_compat=options.sct_compat
        )
        # ivadomed converts mm3 with the header's pixdim; a 2D header has no 3rd size.
        pixdim = tuple(float(z) for z in img3d.header.get_zooms()[:3])
        if len(pixdim) < 3 or min(pixdim) <= 0:
            pixdim = tuple(float(v) for v in np.sqrt((img3d.affine[:3, :3] ** 2).sum(axis=0)))
        post = self._apply_postprocessing(probs, steps, pixdim)
        # Binarised: post is 0/1. Soft (threshold 0): post is what SCT would write, and the
        # maps show it at 0.5.
        soft_out = post.astype(np.float32) if soft else probs
        binary = post >= 0.5
        maps, prob_maps, classes = {}, {}, {}
        for c, name in enumerate(self.map_names):
            m = binary[..., c].astype(np.uint8)
            p = soft_out[..., c]
            if squeeze:
                m, p = m[..., 0], p[..., 0]
            maps[name] = np.ascontiguousarray(m)
            prob_maps[name] = np.ascontiguousarray(p, dtype=np.float32)
            classes[name] = {1: _CLASS_NAMES.get(name, name)}
        report(1.0, "7T GM/SC: done")
        info = {
            "engine": "ivadomed_onnx",
            "model": self.onnx_path.stem,
            "onnx": str(self.onnx_path),
            "providers": self.providers,
            "target_suffix": list(self.target_suffix),
            "postprocessing": [
                {name: params} for name, params in steps
            ],  # what actually ran, in order
            "soft": soft,
            "slices_run": len(run),
            "slices_skipped": int(data.shape[2] - len(run)),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return Prediction(maps=maps, classes=classes, probabilities=prob_maps, info=info)

    # ---------------------------------------------------------------- post-processing
    def _postprocessing_steps(
        self,
        threshold: float | None,
        remove_small: Any,
        keep_largest: bool,
        fill_holes: bool,
        *,
        sct_compat: bool = False,
    ) -> tuple[list[tuple[str, dict]], bool]:
        """The JSON's post-processing dict modified the way SCT's options modify it.

        As ivadomed's ``set_postprocessing_options``: a step switched on keeps its place in
        the JSON's order (``dict.update``), one switched off is deleted.
        """
        post = copy.deepcopy(self.postprocessing)
        for key, on in (("keep_largest", keep_largest), ("fill_holes", fill_holes)):
            if on:
                post.setdefault(key, {})
            else:
                post.pop(key, None)
        soft = False
        if threshold is not None:
            thr = float(threshold)
            if not math.isfinite(thr) or (thr > 1 and not sct_compat):
                raise SpinesegError(
                    f"threshold must be in [0, 1] (0 = soft output), got {threshold}"
                )
            if thr == 0 and sct_compat:
                post["binarize_prediction"] = {"thr": 0.0}  # SCT 7.3: >= 0, all ones
            elif thr <= 0:
                post.pop("binarize_prediction", None)
                soft = True
            else:
                post["binarize_prediction"] = {"thr": thr}
        elif "binarize_prediction" not in post or post["binarize_prediction"].get("thr", -1) < 0:
            soft = True
        if remove_small is not None:
            if remove_small == 0 or remove_small == [] or remove_small == "0":
                post.pop("remove_small", None)
            else:
                n = len(self.map_names)
                post["remove_small"] = {"sizes": min_sizes_per_class(remove_small, n)}
        return list(post.items()), soft

    def _apply_postprocessing(
        self, probs: np.ndarray, steps: list[tuple[str, dict]], pixdim: Sequence[float]
    ) -> np.ndarray:
        data = probs.astype(np.float32, copy=True)
        n = data.shape[-1]
        for name, params in steps:
            params = params or {}
            if name == "binarize_prediction":
                thr = float(params.get("thr", 0.5))
                if thr >= 0:
                    data = _threshold(data, thr)
            elif name == "remove_noise":
                thr = float(params.get("thr", -1))
                if thr >= 0:
                    data = data * (data > thr)
            elif name == "remove_small":
                sizes = params.get("sizes") or min_sizes_per_class(params, n)
                data = _remove_small(data, [m.voxels(pixdim) for m in sizes])
            elif name == "keep_largest":
                data = _keep_largest(data)
            elif name == "fill_holes":
                data = _fill_holes(data)
            elif name == "uncertainty":
                # Needs Monte-Carlo uncertainty maps that SCT never computes (thr -1: no-op).
                continue
            # Unknown steps are ignored, as a newer JSON may declare steps SCT does not run.
        return data


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _map_name(suffix: str) -> str:
    """``_7t_multiclass_sc`` -> ``sc``: the last word of the target suffix."""
    return suffix.strip("_").rsplit("_", 1)[-1] or suffix


def _as_3d(image: nib.Nifti1Image) -> tuple[nib.Nifti1Image, bool]:
    """2D images get a trailing singleton axis (same affine); 4D is refused."""
    shape = image.shape
    if len(shape) == 3:
        return image, False
    if len(shape) == 2:
        data = np.asanyarray(image.dataobj)[..., None]
        hdr = image.header.copy()
        out = nib.Nifti1Image(data, image.affine, hdr)
        return out, True
    raise TaskError(
        f"the 7T GM/SC model segments one 3D image; got an image of shape {tuple(shape)} "
        "(average the volumes or pick one first)"
    )


def _find_model_files(folder: Path, name: str | None) -> tuple[Path, Path]:
    """Locate ``<name>.onnx`` and its ``<name>.json`` under ``folder``."""
    hint = (
        "Install the model with `spineseg install gm_sc_7t_t2star` (or "
        "`napari_spineseg.api.install('gm_sc_7t_t2star')`), or pass the folder of the unzipped "
        "release (https://github.com/ivadomed/model_seg_gm-wm_t2star_7t_unet3d-multiclass, tag "
        f"r20211012) that holds {MODEL_NAME}.onnx and {MODEL_NAME}.json."
    )
    if not folder.is_dir():
        raise ModelNotInstalledError(f"7T GM/SC model folder {folder} does not exist. {hint}")
    candidates = sorted(folder.rglob("*.onnx"))
    if name:
        candidates = [p for p in candidates if p.stem == name]
    if not candidates:
        jsons = sorted(p.name for p in folder.rglob("*.json"))[:5]
        found = f" (found only {jsons})" if jsons else ""
        raise ModelNotInstalledError(
            f"no ivadomed ONNX model (<name>.onnx) in {folder}{found}: the model is not "
            f"installed or the download is incomplete. {hint}"
        )
    if len(candidates) > 1:
        preferred = [p for p in candidates if p.stem == MODEL_NAME]
        if len(preferred) == 1:
            candidates = preferred
        else:
            raise ModelNotInstalledError(
                f"several ONNX models in {folder} ({[str(p) for p in candidates]}); pass the "
                "folder of the one to use"
            )
    onnx_path = candidates[0]
    json_path = onnx_path.with_suffix(".json")
    if not json_path.is_file():
        raise ModelNotInstalledError(
            f"{onnx_path} has no configuration {json_path.name} next to it (ivadomed needs "
            f"both). {hint}"
        )
    return onnx_path, json_path
