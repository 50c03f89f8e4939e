"""The catalog's own release URLs through the real download path (pooch, SHA-256, unpack).

Nothing in the catalog is changed: ``https://github.com/...`` stays the URL, and only the
host is pointed at a local server (``release_server.route_github_here``), which answers
like GitHub (302 to an asset host, then the bytes) with tiny models laid out like the real
releases. So these tests fail if a catalog URL, its file name, the redirect handling, the
hash recording (trust on first use) or the layout detection of a release breaks.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from napari_spineseg import catalog
from napari_spineseg.errors import ModelNotInstalledError
from napari_spineseg.models import store

TASKS = [t.id for t in catalog.tasks()]


@pytest.fixture
def github(release_server, monkeypatch):
    """The session's release server, serving every catalog URL, reached as github.com."""
    served = release_server.serve_catalog()
    release_server.route_github_here(monkeypatch)
    release_server.requests.clear()
    return release_server, served


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_catalog_urls_are_the_real_release_urls():
    for task in catalog.tasks():
        assert task.sources, task.id
        for src in task.sources:
            assert src.url.startswith("https://github.com/"), src.url
            assert src.filename.endswith(".zip") and "/" not in src.filename


@pytest.mark.parametrize("task", TASKS)
def test_install_downloads_the_catalog_release(models, github, task):
    server, served = github
    spec = catalog.get_task(task)
    messages: list[str] = []
    seen = []
    folder = store.install(task, progress=seen.append, log=messages.append)

    # each catalog URL was asked for at its own path, then at the asset it redirects to
    for src in spec.sources:
        path = urlsplit(src.url).path
        assert path in server.requests
        assert server.requests.index(f"/github-production-release-asset{path}") == (
            server.requests.index(path) + 1
        )
    assert any(p.stage.startswith("downloading") and p.total for p in seen)

    # recorded as the catalog's release, hashed on first use and announced as unpinned
    info = store.read_source(task)
    assert info["urls"] == [s.url for s in spec.sources]
    assert info["sha256"] == [_sha(served[s.url]) for s in spec.sources]
    assert [a["filename"] for a in info["archives"]] == [s.filename for s in spec.sources]
    assert info["custom"] is False and info["pinned"] is False and info["trusted"] is False
    assert len(messages) == len(spec.sources)
    for msg, src in zip(messages, spec.sources):
        assert f"{src.filename} is not pinned" in msg and _sha(served[src.url]) in msg

    assert folder == models / task and store.verify(task).ok
    located = store.model_folder(task)
    if spec.backend == "ivadomed_onnx":
        assert (located / f"{spec.sct_model}.onnx").is_file()
    elif spec.backend == "nnunet":
        assert located.name.startswith("nnUNetTrainer") and (located / "plans.json").is_file()
    else:
        assert located == folder and len(list(folder.rglob("plans.json"))) == 2
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


def test_reinstall_checks_the_recorded_hash(models, github, tmp_path):
    server, served = github
    spec = catalog.get_task("rootlets")
    url = spec.sources[0].url
    store.install("rootlets", log=None)
    first = store.read_source("rootlets")["installed_at"]

    store.install("rootlets", force=True, log=None)  # same bytes: accepted again
    assert store.read_source("rootlets")["sha256"] == [_sha(served[url])]

    tampered = tmp_path / "tampered.zip"
    shutil.copy(served[url], tampered)
    with open(tampered, "ab") as f:
        f.write(b"appended by someone else")
    server.serve(url, tampered)
    try:
        with pytest.raises(
            ModelNotInstalledError, match=f"download of {url} failed its integrity"
        ):
            store.install("rootlets", force=True, log=None)
    finally:
        server.serve(url, served[url])
    assert store.is_installed("rootlets")  # the previous install is untouched
    assert store.read_source("rootlets")["installed_at"] >= first
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


def test_a_missing_release_says_how_to_install_offline(models, github):
    server, _ = github
    src = catalog.get_task("gm_wm_mouse_t1").sources[0]
    del server.routes[urlsplit(src.url).path]
    try:
        with pytest.raises(ModelNotInstalledError, match=f"could not download {src.url}.*--from"):
            store.install("gm_wm_mouse_t1", log=None)
    finally:
        server.serve_catalog()
    assert not (models / "gm_wm_mouse_t1").exists()


def test_downloaded_model_segments(models, github):
    """The downloaded SCIseg stand-in runs through api.segment and finds the lesion."""
    import numpy as np

    from napari_spineseg import api
    from napari_spineseg.phantom import cord_phantom

    store.install("lesion_sci_t2", log=None)
    image, truth = cord_phantom(shape=(48, 48, 16), zooms=(0.6, 0.6, 2.0), lesion=True, seed=1000)
    result = api.segment(image, task="lesion_sci_t2", device="cpu")
    masks = {o.suffix: o.labels for o in result.outputs.values()}
    assert set(masks) == {"_sc_seg", "_lesion_seg"}
    lesion_truth = np.asarray(truth.dataobj) == 3
    lesion = masks["_lesion_seg"] > 0
    dice = 2 * (lesion & lesion_truth).sum() / (lesion.sum() + lesion_truth.sum())
    assert dice > 0.9
