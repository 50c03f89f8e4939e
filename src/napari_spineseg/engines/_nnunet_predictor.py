"""nnU-Net's predictor with a progress hook per sliding-window tile and prompt cancellation.

Only the tile loop (``_internal_predict_sliding_window_return_logits`` of nnunetv2 2.8.1)
is replaced, by a copy that performs the same tensor operations in the same order (so
logits stay bit-identical to stock nnU-Net, which the tests check) and adds:

* a call to ``tile_hook(fold, n_folds, tile, n_tiles)`` before every tile's forward pass,
  which may raise (``Cancelled``) to stop the run within one tile;
* a producer thread that can be stopped: stock nnU-Net's producer blocks forever on a
  full queue when the consumer stops early, leaking a thread that holds the whole volume.

The class is built inside a function so that importing this module stays light (torch
and nnunetv2 load only when a model is used).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from functools import lru_cache

TileHook = Callable[[int, int, int, int], None]


@lru_cache(maxsize=1)
def predictor_class():
    """Return the ``nnUNetPredictor`` subclass (created on first use)."""
    import queue
    import threading

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.helpers import empty_cache

    class ProgressPredictor(nnUNetPredictor):
        """nnUNetPredictor + per-tile hook; everything else is inherited unchanged."""

        def __init__(self, *args, tile_hook: TileHook | None = None, **kwargs) -> None:
            # nnUNetPredictor prints a notice for every non-CUDA device; keep stdout clean.
            with contextlib.redirect_stdout(io.StringIO()):
                super().__init__(*args, **kwargs)
            self.tile_hook = tile_hook
            self.fold_index = 0

        @torch.inference_mode()
        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            self.fold_index = 0
            return super().predict_logits_from_preprocessed_data(data)

        @torch.inference_mode()
        def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
            # called once per fold by predict_logits_from_preprocessed_data
            self.fold_index += 1
            return super().predict_sliding_window_return_logits(input_image)

        def _tile(self, tile: int, n_tiles: int) -> None:
            if self.tile_hook is not None:
                n_folds = len(self.list_of_parameters or ()) or 1
                self.tile_hook(max(self.fold_index, 1), n_folds, tile, n_tiles)

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(
            self, data: torch.Tensor, slicers, do_on_device: bool = True
        ):
            # Same arithmetic as nnunetv2 2.8.1; see the module docstring for the differences.
            predicted_logits = n_predictions = prediction = gaussian = workon = None
            results_device = self.device if do_on_device else torch.device("cpu")
            stop = threading.Event()
            n_tiles = len(slicers)

            def put(q: queue.Queue, item) -> bool:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.05)
                        return True
                    except queue.Full:
                        continue
                return False

            def producer(d, slh, q):
                for s in slh:
                    if stop.is_set():
                        return
                    tile = torch.clone(d[s][None], memory_format=torch.contiguous_format)
                    if not put(q, (tile.to(self.device), s)):
                        return
                put(q, "end")

            thread = None
            try:
                empty_cache(self.device)
                data = data.to(results_device)
                q: queue.Queue = queue.Queue(maxsize=2)
                thread = threading.Thread(target=producer, args=(data, slicers, q), daemon=True)
                thread.start()

                predicted_logits = torch.zeros(
                    (self.label_manager.num_segmentation_heads, *data.shape[1:]),
                    dtype=torch.half,
                    device=results_device,
                )
                n_predictions = torch.zeros(
                    data.shape[1:], dtype=torch.half, device=results_device
                )

                if self.use_gaussian:
                    gaussian = compute_gaussian(
                        tuple(self.configuration_manager.patch_size),
                        sigma_scale=1.0 / 8,
                        value_scaling_factor=10,
                        device=results_device,
                    )
                else:
                    gaussian = 1

                done = 0
                while True:
                    item = q.get()
                    if isinstance(item, str) and item == "end":
                        break
                    workon, sl = item
                    done += 1
                    self._tile(done, n_tiles)  # cancellation point before each forward
                    prediction = self._internal_maybe_mirror_and_predict(workon)[0].to(
                        results_device
                    )
                    if self.use_gaussian:
                        prediction *= gaussian
                    predicted_logits[sl] += prediction
                    n_predictions[sl[1:]] += gaussian

                torch.div(predicted_logits, n_predictions, out=predicted_logits)
                if torch.any(torch.isinf(predicted_logits)):
                    raise RuntimeError(
                        "Encountered inf in predicted array. Aborting... If this problem "
                        "persists, reduce value_scaling_factor in compute_gaussian or increase "
                        "the dtype of predicted_logits to fp32"
                    )
                return predicted_logits
            except BaseException:
                del predicted_logits, n_predictions, prediction, gaussian, workon
                empty_cache(self.device)
                empty_cache(results_device)
                raise
            finally:
                stop.set()
                if thread is not None:
                    thread.join(timeout=10)

    return ProgressPredictor
