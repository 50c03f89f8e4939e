"""Trust: no pickle from an untrusted model ever runs, and trust is asked before parsing.

The hostile checkpoint is a real nnU-Net checkpoint (the tiny custom_2d model's weights)
plus one object whose unpickling opens a marker file for writing, i.e. runs code. Every
way a user can reach an untrusted model (install, the store's checks, the engine, the
API, the CLI) must refuse it or leave it unpickled: the marker must never appear. A
positive control proves the checkpoint really does run code when trusted.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from napari_spineseg import api, cli
from napari_spineseg.errors import ModelNotInstalledError, SpinesegError, UntrustedModelError
from napari_spineseg.models import store

CUSTOM_2D = (
    Path(__file__).parent / "data" / "models" / "custom_2d" / "nnUNetTrainer__nnUNetPlans__2d"
)


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: code execution, made visible."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def hostile(tmp_path):
    """(model folder, zip of it, marker path): custom_2d with a code-running checkpoint."""
    import torch

    marker = tmp_path / "MARKER-pickle-ran"
    folder = tmp_path / "lab" / CUSTOM_2D.name
    shutil.copytree(CUSTOM_2D, folder)
    ck_path = folder / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    ck["evil"] = _OpensAFile(marker)
    torch.save(ck, ck_path)
    archive = tmp_path / "lab_model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "lab"))
    assert not marker.exists()
    return folder, archive, marker


def test_the_hostile_checkpoint_runs_code_when_trusted(hostile):
    """Positive control: without this, the tests below could not fail."""
    import torch

    folder, _, marker = hostile
    loaded = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    loaded["evil"].close()
    assert marker.exists()


def test_store_never_unpickles(models, hostile):
    folder, archive, marker = hostile
    with pytest.raises(UntrustedModelError, match="pickles.*--trust"):
        store.install("lesion_sci_t2", archive, log=None)
    with pytest.raises(UntrustedModelError, match="trust=True"):
        store.prepare_custom(folder)
    with pytest.raises(UntrustedModelError, match="trust=True"):
        store.prepare_custom(archive)
    # trusted installs, checks, listing and verification read no pickle either
    store.install("lesion_sci_t2", archive, trust=True, log=None)
    assert store.model_folder("lesion_sci_t2").name == CUSTOM_2D.name
    assert store.is_installed("lesion_sci_t2") and store.verify("lesion_sci_t2").ok
    assert [m.task for m in store.list_installed()] == ["lesion_sci_t2"]
    assert store.prepare_custom(archive, trust=True).name == CUSTOM_2D.name
    assert not marker.exists()


def test_engine_and_api_refuse_untrusted_pickles(models, hostile, tmp_path):
    from napari_spineseg.engines.nnunet import NnunetModel
    from napari_spineseg.phantom import cord_phantom

    folder, archive, marker = hostile
    with pytest.raises(UntrustedModelError, match="checkpoint_final.pth is a Python pickle"):
        NnunetModel.load(folder, device="cpu", trust=False)
    image = cord_phantom(shape=(48, 48, 16))[0]
    for model in (folder, archive):
        with pytest.raises(UntrustedModelError, match="custom model.*trust=True"):
            api.segment(image, model=model)
    # a model installed without trust for a catalog task is refused by segment()
    store.install("lesion_sci_t2", archive, trust=True, log=None)
    source = store.task_dir("lesion_sci_t2") / store.SOURCE_JSON
    source.write_text(json.dumps({**json.loads(source.read_text()), "trusted": False}))
    with pytest.raises(UntrustedModelError, match="not marked trusted"):
        api.segment(image, task="lesion_sci_t2")
    assert not marker.exists()


def test_cli_asks_for_trust_before_reading_the_archive(models, hostile, tmp_path, capsys):
    folder, archive, marker = hostile
    # its dataset.json is not even JSON: the refusal must be about trust, not parsing
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"{not json" if info.filename.endswith("dataset.json") else data)
    assert cli.main(["install", "mylab", "--from", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "spineseg: error:" in err and "Traceback" not in err
    assert f"spineseg install mylab --from {broken} --trust" in err
    assert "not JSON" not in err and "dataset.json" not in err
    # trusted: now it is read, and refused with the file and the reason
    assert cli.main(["install", "mylab", "--from", str(broken), "--trust"]) == 1
    err = capsys.readouterr().err
    assert "dataset.json is not valid JSON" in err and "Traceback" not in err
    # the good archive installs under the lab's name; segment without --trust is refused
    assert cli.main(["install", "mylab", "--from", str(archive), "--trust"]) == 0
    assert store.read_source("mylab")["trusted"] is True
    assert cli.main(["models", "verify", "mylab"]) == 0
    image = tmp_path / "img.nii.gz"
    from napari_spineseg.phantom import cord_phantom

    cord_phantom(shape=(48, 48, 16))[0].to_filename(image)
    capsys.readouterr()
    assert cli.main(["segment", "-i", str(image), "--model", str(folder), "-q"]) == 1
    err = capsys.readouterr().err
    assert "--trust" in err and "Traceback" not in err
    assert not marker.exists() and not list(tmp_path.glob("img_*"))


def test_spine_without_the_extra_says_so_before_downloading(models, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "totalspineseg" else real(name, *a),
    )
    requested = []
    monkeypatch.setattr(store, "_download", lambda *a, **k: requested.append(a))
    assert cli.main(["install", "spine"]) == 1
    err = capsys.readouterr().err
    assert "needs the 'totalspineseg' package" in err
    assert "pip install 'napari-spineseg[totalspineseg]'" in err
    assert "two model archives" in err and "--from Dataset101_" in err and "Dataset102_" in err
    with pytest.raises(SpinesegError, match="totalspineseg"):
        store.install("spine", Path("Dataset101.zip"), trust=True, log=None)
    assert requested == [] and not models.exists()


def test_untrusted_custom_name_needs_trust_even_for_a_folder(models, hostile):
    folder, _, marker = hostile
    with pytest.raises(UntrustedModelError, match="'mylab' is not a catalog task.*--trust"):
        store.custom_install_spec("mylab", folder, trust=False)
    with pytest.raises(ModelNotInstalledError, match="no such"):
        store.custom_install_spec("mylab", folder / "nowhere", trust=True)
    assert not marker.exists()
