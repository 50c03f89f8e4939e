"""Fixtures of the widget tests: a real (random-weight) nnU-Net model, a phantom image on
disk, isolated model store and autosave folders, and a napari viewer that can draw."""

from __future__ import annotations

import nibabel as nib
import pytest

from napari_spineseg import segmentation
from napari_spineseg.models import store
from napari_spineseg.phantom import cord_phantom

PLUGIN = "napari-spineseg"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import torch
    from napari import settings as napari_settings

    # the widgets set napari's reader preference on first use: never in the user's file
    monkeypatch.setattr(napari_settings, "_SETTINGS", napari_settings.NapariSettings(None))

    torch.set_num_threads(1)
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(tmp_path / "store"))
    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    monkeypatch.setenv("SPINESEG_CONFIG_DIR", str(tmp_path / "config"))  # the rater
    # these tests patch engines in this process: the engine process has its own tests
    monkeypatch.setenv("SPINESEG_ENGINE", "inprocess")
    segmentation.clear_engine_cache()
    yield
    segmentation.clear_engine_cache()


@pytest.fixture
def image_path(tmp_path):
    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    return path


@pytest.fixture
def viewer(gl_viewer):
    return gl_viewer
