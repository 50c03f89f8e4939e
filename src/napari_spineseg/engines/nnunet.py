"""nnU-Net v2 inference in-process, with the same results as ``nnUNetv2_predict``.

Why not just call nnU-Net's own entry points:

* ``initialize_from_trained_model_folder`` looks the trainer class up by walking every
  trainer module, which imports torchvision and fails for any non-default trainer in a
  CPU-only torch install. The network is the same for every trainer that does not override
  ``build_network_architecture`` (all of SCT's models, TotalSpineSeg's ``DAExt``), so we
  build it from ``plans.json`` and hand it to ``nnUNetPredictor.manual_initialization``.
* The file/array entry points neither report progress nor can be cancelled; here the
  sliding-window loop reports every tile and stops within one tile
  (:mod:`._nnunet_predictor`), and preprocessing/export are reported as their own stages.

Everything numeric (preprocessing, sliding window, fold ensembling, export) is nnU-Net's
own code, called in the same order as ``predict_single_npy_array``; the tests compare our
labels voxel for voxel with both ``predict_single_npy_array`` and
``predict_from_files_sequential``.

Orientation follows SCT: the image is reoriented (losslessly) to the model's orientation
(``dataset.json["image_orientation"]`` in SCT naming, else RAS), fed as
``data.transpose(2, 1, 0)[None]`` with spacing ``zooms[::-1]``, and the result is turned
back to the input's exact voxel order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_spineseg.engines import _nnunet_orientation as orient
from napari_spineseg.engines.base import Engine, Prediction, cpu_threads, resolve_device
from napari_spineseg.errors import (
    ModelNotInstalledError,
    SpinesegError,
    TaskError,
    UntrustedModelError,
)
from napari_spineseg.models.model_json import check_dataset, check_plans, read_json_file
from napari_spineseg.progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    import torch

    from napari_spineseg.catalog import TaskSpec
    from napari_spineseg.options import RunOptions
    from napari_spineseg.postprocess import MinSize

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}

#: nnU-Net's sliding-window step (fraction of the patch) per inference profile: SCT's 0.5
#: (half-patch overlap); ``fast`` 0.75 (a quarter overlap: about half the tiles in 3D)
TILE_STEP = {"sct": 0.5, "fast": 0.75}

# Share of the progress bar per stage (inference gets the rest, split across folds).
_PREPROCESS = (0.0, 0.05)
_INFERENCE = (0.05, 0.95)
_EXPORT = (0.95, 1.0)


def nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _read_json(path: Path, folder: Path) -> dict:
    if not path.is_file():
        raise ModelNotInstalledError(
            f"nnU-Net model folder {folder} is incomplete: {path.name} is missing "
            "(reinstall the model, or point to the folder that holds dataset.json, "
            "plans.json and fold_*/)"
        )
    # size-capped, UTF-8, an object, bounded nesting (the folder may be untrusted)
    return read_json_file(
        path, fix=f"nnU-Net model folder {folder} is corrupt; reinstall the model"
    )


def _find_folds(folder: Path, folds: Sequence[int | str] | str | None) -> tuple[str, ...]:
    """Fold folder suffixes to use: explicit ones, else every ``fold_N`` with a checkpoint."""
    if folds is None:
        found = []
        for p in sorted(folder.glob("fold_*")):
            suffix = p.name[len("fold_") :]
            has_checkpoint = any((p / n).is_file() for n in CHECKPOINT_NAMES.values())
            if p.is_dir() and suffix != "all" and has_checkpoint:
                found.append(suffix)
        if not found and (folder / "fold_all").is_dir():
            found = ["all"]
        if not found:
            raise ModelNotInstalledError(
                f"nnU-Net model folder {folder} has no fold_*/checkpoint_final.pth or "
                "checkpoint_best.pth; reinstall the model"
            )
        return tuple(sorted(found, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0)))
    if isinstance(folds, str | int):
        folds = (folds,)
    return tuple(str(f) for f in folds)


def _pick_checkpoint(folder: Path, folds: tuple[str, ...], checkpoint: str) -> str:
    """``auto``: checkpoint_final.pth when every fold has it, else checkpoint_best.pth (SCT)."""
    if checkpoint in CHECKPOINT_NAMES:
        candidates = [CHECKPOINT_NAMES[checkpoint]]
    elif checkpoint == "auto":
        candidates = [CHECKPOINT_NAMES["final"], CHECKPOINT_NAMES["best"]]
    else:
        candidates = [checkpoint]
    for name in candidates:
        if all((folder / f"fold_{f}" / name).is_file() for f in folds):
            return name
    missing = [
        str(Path(f"fold_{f}") / candidates[0])
        for f in folds
        if not (folder / f"fold_{f}" / candidates[0]).is_file()
    ]
    raise ModelNotInstalledError(
        f"nnU-Net model folder {folder} is incomplete: missing {', '.join(missing)}"
        + (f" (and no {candidates[1]} either)" if len(candidates) > 1 else "")
        + "; reinstall the model or choose other folds"
    )


def _load_checkpoint(path: Path, folder: Path, trust: bool) -> dict:
    """Load one checkpoint on the CPU.

    nnU-Net checkpoints are pickles (they hold numpy scalars in their training log), and
    unpickling can run arbitrary code. With ``trust=False`` only torch's restricted
    ``weights_only`` loader is used, which refuses such files.
    """
    import pickle

    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust:
            raise ModelNotInstalledError(
                f"nnU-Net model folder {folder}: {path.relative_to(folder)} is corrupt ({exc}); "
                "reinstall the model"
            ) from exc
        raise UntrustedModelError(
            f"{path} is a Python pickle (as every nnU-Net checkpoint) and loading it can run "
            "arbitrary code; it was refused because the model is not trusted. Load it with "
            "trust=True only if it comes from a source you trust (e.g. the SCT release "
            "the task pins)."
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelNotInstalledError(
            f"nnU-Net model folder {folder}: {path.relative_to(folder)} is corrupt or "
            f"truncated ({exc}); reinstall the model"
        ) from exc
    if not isinstance(ck, dict) or "network_weights" not in ck:
        raise ModelNotInstalledError(
            f"nnU-Net model folder {folder}: {path.relative_to(folder)} is not an nnU-Net v2 "
            "checkpoint (no 'network_weights'); reinstall the model"
        )
    return ck


def _configuration_name(ck: dict, folder: Path, plans: dict) -> str:
    name = (ck.get("init_args") or {}).get("configuration")
    if name is None:  # trainer output folders are <Trainer>__<Plans>__<configuration>
        parts = folder.name.split("__")
        name = parts[-1] if len(parts) == 3 else None
    if name is None or name not in plans.get("configurations", {}):
        raise ModelNotInstalledError(
            f"nnU-Net model folder {folder}: cannot tell which plans.json configuration the "
            f"checkpoints use (got {name!r}, plans has "
            f"{sorted(plans.get('configurations', {}))}); reinstall the model"
        )
    return name


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class NnunetModel(Engine):
    """A loaded nnU-Net v2 model folder, ready to predict many images (see module doc).

    Predictions on one model run one at a time (a lock serialises them): nnU-Net loads
    each fold's weights into the same network in turn, so concurrent runs would mix folds.
    The run options it reads: ``device``, ``test_time_aug`` (nnU-Net's mirroring) and
    ``profile`` (``sct``: every fold, tile step 0.5, as ``sct_deepseg``; ``fast``: the
    first fold only, tile step 0.75).
    """

    def __init__(self) -> None:  # use NnunetModel.load
        self.folder: Path
        self.dataset_json: dict
        self.plans: dict
        self.folds: tuple[int | str, ...]
        self.checkpoint_name: str
        self.device: torch.device
        self.configuration: str
        self.label_names: dict[int, str] = {}
        self.groups: dict[str, tuple[int, ...]] = {}
        self.head_names: tuple[str, ...] = ()
        self.has_regions = False
        self.num_input_channels = 1
        self.orientation = "RAS"
        self.tile_step_size = 0.5
        self.use_mirroring = False
        self.profile = "sct"
        self.folds_found: tuple[str, ...] = ()
        self._orientation_is_default = False  # neither dataset.json nor load() named one
        self.mirror_axes: tuple[int, ...] | None = None
        self.patch_size: tuple[int, ...] = ()
        self.last_info: dict[str, Any] = {}
        self._predictor = None
        self._report: Reporter | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        folder: str | Path,
        options: RunOptions | None = None,
        *,
        folds: Sequence[int | str] | str | None = None,
        checkpoint: str = "auto",
        device: str | None = None,
        tile_step_size: float | None = None,
        use_mirroring: bool | None = None,
        trust: bool = True,
        orientation: str | None = None,
    ) -> NnunetModel:
        """Load ``folder`` (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_*.pth``).

        ``options``: the run's (device, test-time augmentation, profile; default
        :class:`~napari_spineseg.options.RunOptions`'s). The keywords are for direct use
        (tests, TotalSpineSeg's two models) and win over ``options``: ``folds``: ``None``
        = every ``fold_N`` that has a checkpoint (``fold_all`` when it is the only one;
        the first of them with the ``fast`` profile), ``("all",)`` = ``fold_all``.
        ``checkpoint``: ``auto`` (final, else best, as SCT), ``final``, ``best`` or a file
        name. ``device``, ``use_mirroring`` (= ``test_time_aug``), ``tile_step_size``
        (default 0.5, SCT's; 0.75 with the ``fast`` profile). Gaussian weighting as
        SCT. ``orientation`` (nibabel axis codes) overrides the model orientation read
        from ``dataset.json`` (for a task whose catalog entry knows better, as SCT's
        hard-coded AIL for lesion datasets).
        """
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from napari_spineseg.options import RunOptions

        from ._nnunet_predictor import predictor_class

        options = options if options is not None else RunOptions()
        device = options.device if device is None else device
        use_mirroring = options.test_time_aug if use_mirroring is None else use_mirroring
        if tile_step_size is None:
            tile_step_size = TILE_STEP[options.profile]
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ModelNotInstalledError(f"nnU-Net model folder {folder} does not exist")
        if not 0 < float(tile_step_size) <= 1:
            raise SpinesegError(f"tile_step_size must be in (0, 1], got {tile_step_size}")
        self = cls()
        self.folder = folder
        self.dataset_json = _read_json(folder / "dataset.json", folder)
        self.plans = _read_json(folder / "plans.json", folder)
        fold_names = _find_folds(folder, folds)
        self.folds_found = fold_names
        if folds is None and options.profile == "fast":
            fold_names = fold_names[:1]
        self.profile = options.profile
        self.folds = tuple(int(f) if f.isdigit() else f for f in fold_names)
        self.checkpoint_name = _pick_checkpoint(folder, fold_names, checkpoint)
        # every number that sizes a network or a sliding window, before anything is built
        fix = "reinstall the model"
        check_dataset(self.dataset_json, str(folder / "dataset.json"), fix=fix)
        check_plans(self.plans, str(folder / "plans.json"), fix=fix)
        checkpoints = [
            _load_checkpoint(folder / f"fold_{f}" / self.checkpoint_name, folder, trust)
            for f in fold_names
        ]
        first = checkpoints[0]
        self.configuration = _configuration_name(first, folder, self.plans)
        try:
            plans_manager = PlansManager(self.plans)
            cm = plans_manager.get_configuration(self.configuration)
            label_manager = plans_manager.get_label_manager(self.dataset_json)
            self.num_input_channels = determine_num_input_channels(
                plans_manager, cm, self.dataset_json
            )
            network = get_network_from_plans(
                cm.network_arch_class_name,
                cm.network_arch_init_kwargs,
                cm.network_arch_init_kwargs_req_import,
                self.num_input_channels,
                label_manager.num_segmentation_heads,
                allow_init=False,
                deep_supervision=False,
            )
            parameters = [ck["network_weights"] for ck in checkpoints]
            for f, params in zip(self.folds, parameters):
                try:
                    network.load_state_dict(params)
                except RuntimeError as exc:
                    raise ModelNotInstalledError(
                        f"nnU-Net model folder {folder}: fold_{f}/{self.checkpoint_name} does not "
                        f"match the network described by plans.json ({exc}); reinstall the model"
                    ) from exc
            network.load_state_dict(parameters[0])
        except ModelNotInstalledError:
            raise
        except (KeyError, TypeError, ValueError, AssertionError, ImportError, RuntimeError) as exc:
            raise ModelNotInstalledError(
                f"nnU-Net model folder {folder}: plans.json/dataset.json cannot be used "
                f"({type(exc).__name__}: {exc}); reinstall the model"
            ) from exc
        network.eval()

        self.device = resolve_device(device)
        self.tile_step_size = float(tile_step_size)
        self.use_mirroring = bool(use_mirroring)
        axes = first.get("inference_allowed_mirroring_axes")
        self.mirror_axes = None if axes is None else tuple(int(a) for a in axes)
        self.patch_size = tuple(int(p) for p in cm.patch_size)
        self._set_labels(label_manager)
        image_orientation = self.dataset_json.get("image_orientation")
        if orientation:  # a ValueError for a bad code: a caller's bug, not the model's
            self.orientation = orient.sct_to_nibabel(orient.nibabel_to_sct(orientation))
        elif image_orientation:
            try:
                self.orientation = orient.sct_to_nibabel(image_orientation)
            except ValueError as exc:
                raise ModelNotInstalledError(
                    f"nnU-Net model folder {folder}: dataset.json has a bad "
                    f"image_orientation ({exc})"
                ) from exc
        else:
            self.orientation = "RAS"
        # SCT's fallback by dataset name (after_load) applies when neither names one
        named = bool(orientation) or "image_orientation" in self.dataset_json
        self._orientation_is_default = not named

        predictor = predictor_class()(
            tile_step_size=self.tile_step_size,
            use_gaussian=True,
            use_mirroring=self.use_mirroring,
            perform_everything_on_device=self.device.type == "cuda",
            device=self.device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
            tile_hook=self._on_tile,
        )
        predictor.manual_initialization(
            network,
            plans_manager,
            cm,
            parameters,
            self.dataset_json,
            str(first.get("trainer_name", "nnUNetTrainer")),
            self.mirror_axes,
        )
        self._predictor = predictor
        return self

    def _set_labels(self, label_manager) -> None:
        """Class names, groups and probability-head names from dataset.json's labels.

        Region-based models paint value ``regions_class_order[i]`` where region ``i``'s
        sigmoid > 0.5 (later regions win), so that value is named after region ``i`` and a
        class is the union of the values its region lists (``sc: [1, 2]`` -> (1, 2)).
        """
        labels = {k: v for k, v in self.dataset_json["labels"].items() if k != "ignore"}
        self.has_regions = bool(label_manager.has_regions)
        if self.has_regions:
            regions = [
                (name, tuple(int(x) for x in (v if isinstance(v, list | tuple) else [v])))
                for name, v in labels.items()
                if name != "background"
            ]
            order = [int(c) for c in self.dataset_json["regions_class_order"]]
            self.label_names = {value: name for (name, _), value in zip(regions, order)}
            self.groups = {name: tuple(sorted(set(vals))) for name, vals in regions}
            self.head_names = tuple(name for name, _ in regions)
        else:
            by_value = {int(v): name for name, v in labels.items()}
            self.label_names = {v: by_value[v] for v in sorted(by_value) if v != 0}
            self.groups = {name: (v,) for v, name in self.label_names.items()}
            self.head_names = tuple(by_value[v] for v in sorted(by_value))

    # ------------------------------------------------------------------ prediction
    @property
    def settings(self) -> dict[str, Any]:
        """The inference settings, for provenance."""
        return {
            "engine": "nnunet",
            "nnunetv2": nnunet_version(),
            "model_folder": str(self.folder),
            "configuration": self.configuration,
            "folds": list(self.folds),
            "checkpoint": self.checkpoint_name,
            "tile_step_size": self.tile_step_size,
            "use_gaussian": True,
            "mirroring": bool(self.use_mirroring and self.mirror_axes),
            "mirror_axes": list(self.mirror_axes) if self.mirror_axes else None,
            "orientation": self.orientation,
            "profile": self.profile,
        }

    # ------------------------------------------------------------------ Engine hooks
    @classmethod
    def cache_key(cls, spec: TaskSpec, folder: Path, options: RunOptions) -> tuple:
        """Test-time augmentation and the profile change the loaded predictor."""
        return (*super().cache_key(spec, folder, options), options.test_time_aug, options.profile)

    def after_load(self, spec: TaskSpec) -> None:
        """SCT's rule: ``dataset.json``'s ``image_orientation`` wins, else SCT's fallback
        by dataset name (AIL for its lesion datasets, LPI otherwise)."""
        if not self._orientation_is_default:
            return
        name = self.plans.get("dataset_name") or self.dataset_json.get("name")
        self.orientation = orient.sct_to_nibabel(orient.sct_fallback_orientation(name))

    def device_label(self) -> str:
        return str(self.device)

    def notes(self) -> list[str]:
        if self.profile == "sct":
            return []
        found = ", ".join(self.folds_found)
        return [
            f"inference profile {self.profile!r}: nnU-Net ran fold {self.folds[0]} only (of "
            f"{found}) with tile step {self.tile_step_size:g}; sct_deepseg runs every fold "
            f"with tile step {TILE_STEP['sct']:g}, so the masks may differ slightly"
        ]

    def _on_tile(self, fold: int, n_folds: int, tile: int, n_tiles: int) -> None:
        if self._report is None:
            return
        lo, hi = _INFERENCE
        span = (hi - lo) / n_folds
        start = lo + span * (fold - 1)
        self._report(
            start + span * (tile - 1) / n_tiles,
            f"fold {fold}/{n_folds} tile {tile}/{n_tiles}",
            tile,
            n_tiles,
        )

    def _use_device(self, device: torch.device) -> None:
        """Point the predictor at ``device`` (the network moves there at the next fold)."""
        p = self._predictor
        p.device = device
        p.perform_everything_on_device = device.type == "cuda"

    def _logits(self, data, messages: list[str]):
        """Sliding-window logits on the model's device, falling back to the CPU on OOM."""
        import torch

        p = self._predictor
        p.use_mirroring = self.use_mirroring
        p.tile_step_size = self.tile_step_size
        self._use_device(self.device)
        try:
            return p.predict_logits_from_preprocessed_data(data).cpu(), self.device
        except Exception as exc:
            if self.device.type == "cpu" or not _is_out_of_memory(exc):
                raise
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            msg = (
                f"The {self.device.type.upper()} ran out of memory ({first_line}); "
                "the image was segmented on the CPU instead, which is slower. "
                "Crop the image or use a GPU with more memory to stay on the GPU."
            )
            log.warning(msg)
            messages.append(msg)
        # Out of the except block so the failed attempt's tensors can be freed.
        from nnunetv2.utilities.helpers import empty_cache

        cpu = torch.device("cpu")
        p.network.to(cpu)
        empty_cache(self.device)
        threads = torch.get_num_threads()
        torch.set_num_threads(cpu_threads())
        self._use_device(cpu)
        try:
            return p.predict_logits_from_preprocessed_data(data).cpu(), cpu
        finally:
            torch.set_num_threads(threads)
            self._use_device(self.device)

    def _predict_czyx(
        self,
        data_czyx: np.ndarray,
        spacing_zyx: Sequence[float],
        report: Reporter,
        return_probabilities: bool,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """nnU-Net on an array in its own (c, z, y, x) convention, as
        ``predict_single_npy_array`` does it: preprocess, fold ensemble, export."""
        with self._lock:
            return self._predict_czyx_locked(data_czyx, spacing_zyx, report, return_probabilities)

    def _predict_czyx_locked(self, data_czyx, spacing_zyx, report, return_probabilities):
        import torch
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self._predictor
        messages: list[str] = []
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        report(_PREPROCESS[0], "preprocessing")
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        props = {"spacing": [float(s) for s in spacing_zyx]}
        _check_resampled_shape(data_czyx.shape[1:], props["spacing"], p)
        data, _, props = preprocessor.run_case_npy(
            data_czyx, None, props, p.plans_manager, p.configuration_manager, p.dataset_json
        )
        data = torch.from_numpy(data)
        timings["preprocess_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        self._report = report
        try:
            logits, used = self._logits(data, messages)
        finally:
            self._report = None
        del data
        timings["inference_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        report(_EXPORT[0], "export")
        out = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits,
            p.plans_manager,
            p.configuration_manager,
            p.label_manager,
            props,
            return_probabilities=return_probabilities,
            num_threads_torch=torch.get_num_threads(),
        )
        del logits
        seg, probs = out if return_probabilities else (out, None)
        timings["export_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        info = dict(self.settings)
        info.update(device=str(used), timings=timings, messages=messages)
        return seg, probs, info

    def _check_channels(self, n: int) -> None:
        if n != self.num_input_channels:
            names = list(self.dataset_json.get("channel_names", {}).values())
            raise TaskError(
                f"the nnU-Net model in {self.folder} takes {self.num_input_channels} input "
                f"channel(s) {names}, got {n}; give one image per channel, on the same grid"
            )

    def predict_voxels(
        self,
        data_cxyz: np.ndarray,
        zooms_xyz: Sequence[float],
        report: Reporter | None = None,
        return_probabilities: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment an array in the caller's voxel order (no reorientation).

        ``data_cxyz``: (channels, X, Y, Z), or (X, Y, Z) for one channel. Returns labels
        (X, Y, Z) and, if asked, float32 probabilities (heads, X, Y, Z) (softmax per class
        incl. background, or sigmoid per region). Details of the run go to ``last_info``.
        """
        report = report if report is not None else Reporter()
        data = np.asanyarray(data_cxyz)
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4:
            raise TaskError(f"expected a (channels, X, Y, Z) array, got shape {data.shape}")
        self._check_channels(data.shape[0])
        seg, probs, info = self._predict_czyx(
            data.transpose(0, 3, 2, 1), tuple(zooms_xyz)[:3][::-1], report, return_probabilities
        )
        self.last_info = info
        report(1.0, "done")
        labels = np.ascontiguousarray(seg.transpose(2, 1, 0))
        if probs is not None:
            probs = np.ascontiguousarray(probs.transpose(0, 3, 2, 1), dtype=np.float32)
        return labels, probs

    def predict(
        self,
        image_or_channels: nib.Nifti1Image | Sequence[nib.Nifti1Image],
        report: Reporter | None = None,
        options: RunOptions | None = None,
        *,
        name: str | None = None,
        return_probabilities: bool = False,
        min_sizes: list[MinSize] | None = None,
    ) -> Prediction:
        """Segment a 3D image (or one image per input channel, same grid) -> Prediction.

        The data are reoriented losslessly to the model orientation, predicted, and put back
        on the input's exact grid and voxel order. Everything ``options`` change was fixed
        when the model loaded; ``min_sizes`` is the task layer's (post-processing runs
        there); ``name`` is not needed (messages name the channel).
        """
        import nibabel as nib

        report = report if report is not None else Reporter()
        images = (
            list(image_or_channels)
            if isinstance(image_or_channels, list | tuple)
            else [image_or_channels]
        )
        self._check_channels(len(images))
        ref = images[0]
        for i, img in enumerate(images):
            if not isinstance(img, nib.spatialimages.SpatialImage):
                raise TaskError(f"channel {i}: expected a nibabel image, got {type(img).__name__}")
            if len(img.shape) != 3:
                raise TaskError(
                    f"the nnU-Net engine segments 3D images; channel {i} has shape {img.shape} "
                    "(average or pick one volume of a 4D series first)"
                )
            if img.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-4):
                raise TaskError(
                    f"channel {i} is not on the same voxel grid as channel 0 "
                    f"(shape {img.shape} vs {ref.shape}); resample it onto the first image"
                )
        t0 = time.perf_counter()
        forward, backward = orient.orientation_transforms(ref.affine, self.orientation)
        channels = [orient.apply_spatial(np.asanyarray(img.dataobj), forward) for img in images]
        data = channels[0][None] if len(channels) == 1 else np.stack(channels)
        zooms = orient.reorient_zooms(ref.header.get_zooms()[:3], forward)
        seg, probs, info = self._predict_czyx(
            data.transpose(0, 3, 2, 1), zooms[::-1], report, return_probabilities
        )
        del data, channels
        labels = np.ascontiguousarray(orient.apply_spatial(seg.transpose(2, 1, 0), backward))
        probabilities: dict[str, np.ndarray] = {}
        if probs is not None:
            back = orient.apply_spatial(probs.transpose(0, 3, 2, 1), backward, 1)
            for name, head in zip(self.head_names, back):
                if not self.has_regions and name == "background":
                    continue
                probabilities[name] = np.ascontiguousarray(head, dtype=np.float32)
        info["timings"]["total_with_reorientation_s"] = time.perf_counter() - t0
        info["input_orientation"] = "".join(nib.aff2axcodes(ref.affine))
        self.last_info = info
        report(1.0, "done")
        return Prediction(
            maps={"labels": labels},
            classes={"labels": dict(self.label_names)},
            groups={"labels": dict(self.groups)},
            probabilities=probabilities,
            info=info,
        )


#: Largest grid (voxels) a model may resample an image to: beyond, the voxel size in the
#: header is almost certainly wrong (and the run would need tens of GB).
MAX_RESAMPLED_VOXELS = 1 << 30


def _check_resampled_shape(shape_zyx, spacing_zyx, predictor) -> None:
    """Refuse, before nnU-Net allocates, a grid that resamples to nothing or to an absurd size."""
    order = list(predictor.plans_manager.transpose_forward)
    shape = [int(shape_zyx[i]) for i in order]
    spacing = [float(spacing_zyx[i]) for i in order]
    target = [float(v) for v in predictor.configuration_manager.spacing]
    if len(target) < len(spacing):  # 2D: the spacing between slices is kept
        target = [spacing[0], *target]
    new = [int(round(sp / t * n)) for sp, t, n in zip(spacing, target, shape, strict=True)]
    if min(new) < 1 or float(np.prod(new, dtype=np.float64)) > MAX_RESAMPLED_VOXELS:
        target_mm = tuple(round(v, 6) for v in target)
        raise TaskError(
            f"the model resamples images to {target_mm} mm voxels: this image "
            f"({tuple(shape)} voxels of {tuple(round(v, 6) for v in spacing)} mm) would become "
            f"{tuple(new)} voxels. Check the voxel size in the image header"
        )
