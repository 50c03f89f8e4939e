"""Test helpers that run *inside* an engine process (imported there by name: ``tests/``
is on the worker's ``sys.path``, as pytest puts it on this one's)."""

from __future__ import annotations

import functools
import time

SLEEP_STAGE = "predict: sleeping"


def sleep_in_predict(seconds: float) -> None:
    """From now on the nnU-Net engine of this process reports once, then sleeps
    ``seconds`` inside ``predict`` without reporting: a model that ignores cooperative
    cancellation (the report says where it is, so a test can act then)."""
    from napari_spineseg.engines import nnunet

    real = getattr(nnunet.NnunetModel.predict, "__wrapped__", nnunet.NnunetModel.predict)

    @functools.wraps(real)
    def slow(self, image, report, **options):
        report(0.0, SLEEP_STAGE)
        time.sleep(seconds)
        return real(self, image, report, **options)

    nnunet.NnunetModel.predict = slow


def phantom_path(folder, name: str = "sub-01_T2w.nii.gz"):
    """The widget tests' phantom (PSR voxel order) written to ``folder/name``."""
    import nibabel as nib

    from napari_spineseg.phantom import cord_phantom

    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    path = folder / name
    nib.save(img, path)
    return path


def loaded_engines() -> list[int]:
    """Runs in the engine process: the ids of the models its engine cache holds."""
    from napari_spineseg import segmentation

    return [id(e) for e in segmentation._ENGINES.values()]
