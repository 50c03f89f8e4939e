"""Model store: real pooch downloads from a local HTTP server, hashes, trust, zip-slip."""

import functools
import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from napari_spineseg import catalog
from napari_spineseg.catalog import ModelSource
from napari_spineseg.errors import Cancelled, ModelNotInstalledError, UntrustedModelError
from napari_spineseg.models import store
from napari_spineseg.progress import CancelToken

DATA = Path(__file__).parent / "data" / "models"
ZIP_7T = DATA / "gm_sc_7t" / "model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip"


@pytest.fixture
def server(tmp_path):
    """A local release server (127.0.0.1) serving tmp_path/releases."""
    folder = tmp_path / "releases"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


#: The smallest plans.json the store accepts (checked at install; nothing is built from it).
PLANS = {"configurations": {"3d_fullres": {"patch_size": [8, 32, 32], "spacing": [2.0, 1.0, 1.0]}}}


def _nnunet_zip(path: Path, prefix="Dataset1_x/nnUNetTrainer__nnUNetPlans__3d_fullres"):
    """A zip laid out like an nnU-Net release (checkpoint = a torch-style zip with data.pkl)."""
    import io

    ck = io.BytesIO()
    with zipfile.ZipFile(ck, "w") as z:
        z.writestr("checkpoint_final/data.pkl", b"not unpickled by the store")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/dataset.json", json.dumps({"labels": {"background": 0, "sc": 1}}))
        zf.writestr(f"{prefix}/plans.json", json.dumps(PLANS))
        zf.writestr(f"{prefix}/fold_0/checkpoint_final.pth", ck.getvalue())
    return path


needs_7t = pytest.mark.skipif(not ZIP_7T.is_file(), reason="tiny 7T release zip not built")


@needs_7t
def test_download_with_pinned_hash_installs_and_records(models, server):
    folder, url = server
    shutil.copy(ZIP_7T, folder / ZIP_7T.name)
    seen = []
    src = ModelSource(f"{url}/{ZIP_7T.name}", _sha(ZIP_7T), ZIP_7T.name)
    path = store.install("gm_sc_7t_t2star", sources=[src], progress=seen.append, log=None)
    assert path == models / "gm_sc_7t_t2star"
    info = store.read_source("gm_sc_7t_t2star")
    assert info["archives"][0]["sha256"] == _sha(ZIP_7T) and info["pinned"] is True
    assert info["custom"] is False and info["package_version"]
    assert seen and seen[-1].fraction == 1.0
    assert any(p.stage.startswith("downloading") and p.total for p in seen)
    assert store.verify("gm_sc_7t_t2star").ok
    folder_7t = store.model_folder("gm_sc_7t_t2star")
    assert (folder_7t / "model_7t_multiclass_gm_sc_unet2d.onnx").is_file()
    assert [m.task for m in store.list_installed()] == ["gm_sc_7t_t2star"]
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # temp dirs cleaned


@needs_7t
def test_unpinned_release_is_trusted_on_first_use_and_announced(models, server):
    folder, url = server
    shutil.copy(ZIP_7T, folder / ZIP_7T.name)
    msgs = []
    src = ModelSource(f"{url}/{ZIP_7T.name}", None, ZIP_7T.name)
    store.install("gm_sc_7t_t2star", sources=[src], log=msgs.append)
    assert "not pinned" in msgs[0] and _sha(ZIP_7T) in msgs[0]
    assert store.read_source("gm_sc_7t_t2star")["sha256"] == [_sha(ZIP_7T)]
    # a reinstall checks the download against the hash recorded the first time
    (folder / ZIP_7T.name).write_bytes(b"tampered")
    with pytest.raises(ModelNotInstalledError, match="integrity check"):
        store.install("gm_sc_7t_t2star", sources=[src], force=True, log=None)
    assert store.is_installed("gm_sc_7t_t2star")  # the previous install is untouched


@needs_7t
def test_wrong_hash_is_refused_and_nothing_installed(models, server):
    folder, url = server
    shutil.copy(ZIP_7T, folder / ZIP_7T.name)
    src = ModelSource(f"{url}/{ZIP_7T.name}", "0" * 64, ZIP_7T.name)
    with pytest.raises(ModelNotInstalledError, match="integrity check.*0000"):
        store.install("gm_sc_7t_t2star", sources=[src], log=None)
    assert not (models / "gm_sc_7t_t2star").exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp")]


def test_unreachable_server_says_how_to_install_offline(models):
    src = ModelSource("http://127.0.0.1:9/none.zip", None, "none.zip")
    with pytest.raises(ModelNotInstalledError, match="--from FILE"):
        store.install("lesion_sci_t2", sources=[src], log=None)


def test_cancel_during_download_leaves_nothing(models, server):
    folder, url = server
    _nnunet_zip(folder / "m.zip")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        store.install(
            "lesion_sci_t2",
            sources=[ModelSource(f"{url}/m.zip", None, "m.zip")],
            cancel=token,
            log=None,
        )
    assert not (models / "lesion_sci_t2").exists()


def test_zip_slip_members_are_refused(models, tmp_path):
    for name in ("../evil.txt", "/abs/evil.txt", "a/../../evil.txt"):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("ok.txt", "x")
            zf.writestr(name, "x")
        with pytest.raises(ModelNotInstalledError, match="refused to extract"):
            store.install("lesion_sci_t2", bad, trust=True, log=None)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("model/link")
        info.external_attr = 0o120777 << 16  # a symlink entry
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelNotInstalledError, match="symbolic link"):
        store.install("lesion_sci_t2", link, trust=True, log=None)
    assert not (tmp_path / "evil.txt").exists() and not (models / "lesion_sci_t2").exists()


def test_local_unpinned_archive_needs_trust(models, tmp_path):
    z = _nnunet_zip(tmp_path / "model_SCIsegV2_r20240729.zip")
    with pytest.raises(UntrustedModelError, match="pickles.*--trust"):
        store.install("lesion_sci_t2", z, log=None)
    assert not (models / "lesion_sci_t2").exists()
    store.install("lesion_sci_t2", z, trust=True, log=None)
    assert store.model_folder("lesion_sci_t2").name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    info = store.read_source("lesion_sci_t2")
    assert info["trusted"] is True and info["custom"] is True and info["sha256"] == [_sha(z)]


def test_custom_model_folder_needs_trust(models, tmp_path):
    z = _nnunet_zip(tmp_path / "m.zip")
    with zipfile.ZipFile(z) as zf:
        zf.extractall(tmp_path / "m")
    with pytest.raises(UntrustedModelError, match="trust=True"):
        store.prepare_custom(tmp_path / "m")
    folder = store.prepare_custom(tmp_path / "m", trust=True)
    assert (folder / "dataset.json").is_file() and tmp_path in folder.parents  # used in place
    extracted = store.prepare_custom(z, trust=True)
    assert models in extracted.parents


def test_a_folder_holding_several_models_is_refused_not_guessed(models, tmp_path):
    """`--model ~/` must not run whichever model sorts first."""
    z = _nnunet_zip(tmp_path / "m.zip")
    for lab in ("lab_a", "lab_b"):
        with zipfile.ZipFile(z) as zf:
            zf.extractall(tmp_path / "all" / lab)
    with pytest.raises(ModelNotInstalledError, match=r"2 nnU-Net models found under this folder"):
        store.prepare_custom(tmp_path / "all", trust=True)
    folder = store.prepare_custom(tmp_path / "all" / "lab_b", trust=True)
    assert (tmp_path / "all" / "lab_b") in folder.parents


def test_missing_or_corrupt_model_names_the_fix(models, tmp_path):
    with pytest.raises(ModelNotInstalledError, match="spineseg install lesion_sci_t2$"):
        store.model_folder("seg_sc_lesion_t2w_sci")
    store.install("lesion_sci_t2", _nnunet_zip(tmp_path / "m.zip"), trust=True, log=None)
    ck = next((models / "lesion_sci_t2").rglob("checkpoint_final.pth"))
    ck.write_bytes(b"<html>404</html>")  # a truncated / wrong download
    with pytest.raises(ModelNotInstalledError, match="corrupt.*spineseg install lesion_sci_t2"):
        store.model_folder("lesion_sci_t2")
    report = store.verify("lesion_sci_t2")
    assert not report.ok and "not a torch checkpoint" in report.problems[0]
    assert store.remove("lesion_sci_t2") and not store.remove("lesion_sci_t2")
    assert store.list_installed() == []


def test_totalspineseg_needs_both_dataset_zips(models, tmp_path):
    a = _nnunet_zip(
        tmp_path / "Dataset101_TotalSpineSeg_step1_r20251124.zip",
        "Dataset101_TotalSpineSeg_step1/nnUNetTrainer__nnUNetPlans__3d_fullres",
    )
    b = _nnunet_zip(
        tmp_path / "Dataset102_TotalSpineSeg_step2_r20251124.zip",
        "Dataset102_TotalSpineSeg_step2/nnUNetTrainer__nnUNetPlans__3d_fullres",
    )
    with pytest.raises(ModelNotInstalledError, match="expected 2"):
        store.install("spine", a, trust=True, log=None)
    store.install("spine", tmp_path, trust=True, log=None)  # a folder holding both zips
    assert store.model_folder("spine") == models / "spine"
    assert len(store.read_source("spine")["archives"]) == 2
    assert b.is_file()


def test_models_dir_default_is_the_user_cache(monkeypatch):
    monkeypatch.delenv(store.ENV_MODELS_DIR, raising=False)
    from platformdirs import user_cache_dir

    assert store.models_dir() == Path(user_cache_dir("napari-spineseg")) / "models"
    assert catalog.get_task("spine").install_command() == "spineseg install spine"
