"""Shared test fixtures.

Qt: without a DISPLAY, Qt runs on the ``offscreen`` platform (no window system needed).
napari's canvas also needs OpenGL, which the offscreen platform often lacks (then every
layer fails to draw); tests that need a real ``napari.Viewer`` use ``gl_viewer``, which
skips with the reason when no OpenGL context can be made. Under Xvfb (``xvfb-run`` /
``.ci/run``) they run.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest


def pytest_configure(config):
    if not os.environ.get("DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


_GL_PROBE = """
import numpy as np, napari
v = napari.Viewer(show=False)
v.add_image(np.zeros((2, 2), np.float32))
v.close()
print("gl-ok")
"""


@functools.cache
def napari_gl_problem() -> str | None:
    """None when a napari viewer can draw here, else why not (probed once, in a subprocess)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _GL_PROBE],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "creating a napari viewer timed out"
    if "gl-ok" in out.stdout:
        return None
    last = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
    platform = os.environ.get("QT_QPA_PLATFORM") or "default"
    return (
        f"napari cannot draw here (Qt platform {platform!r}, DISPLAY="
        f"{os.environ.get('DISPLAY')!r}): {last}. Run under Xvfb, e.g. xvfb-run -a pytest"
    )


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # napari's make_napari_viewer teardown reads item.rep_call (napari's own conftest sets it).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def make_gl_viewer(request):
    """napari's ``make_napari_viewer`` (Qt + OpenGL viewers), or skip with the reason none
    can draw here.

    Skips *before* ``make_napari_viewer`` is set up: napari's teardown of that fixture
    reads the report of the test call, which a test skipped at setup never made (an
    error at teardown instead of a skip).
    """
    problem = napari_gl_problem()
    if problem:
        pytest.skip(problem)
    return request.getfixturevalue("make_napari_viewer")


@pytest.fixture
def gl_viewer(make_gl_viewer):
    """A real ``napari.Viewer`` (Qt + OpenGL), or skip with the reason it cannot draw."""
    return make_gl_viewer()


@pytest.fixture
def napari_plugin(npe2pm):
    """npe2's plugin manager holding napari-spineseg, from this checkout's napari.yaml.

    A Qt viewer discovers the installed plugins when it starts; a ``ViewerModel`` does
    not, so without this fixture a ViewerModel test finds no "napari-spineseg" reader
    unless a Qt test happened to run first. ``npe2pm`` (npe2's pytest plugin) swaps the
    global plugin manager for one that holds only what the test registers.
    """
    from pathlib import Path

    import napari_spineseg

    manifest = Path(napari_spineseg.__file__).with_name("napari.yaml")
    with npe2pm.tmp_plugin(manifest=str(manifest)) as plugin:
        yield plugin


@pytest.fixture(scope="session")
def release_server():
    """Local stand-in for GitHub release downloads (tests/release_server.py)."""
    from release_server import ReleaseServer

    with ReleaseServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def region_model(tmp_path_factory):
    """A real nnU-Net v2 folder (random weights) with SCIseg's labels: sc = {1, 2}, lesion = 2."""
    from napari_spineseg.engines._nnunet_random import write_random_model

    root = tmp_path_factory.mktemp("model")
    return write_random_model(
        root / "Dataset9_sci/nnUNetTrainer__nnUNetPlans__3d_fullres",
        labels={"background": 0, "sc": [1, 2], "lesion": 2},
        regions_class_order=[1, 2],
        seed=5,
    )


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty model store for this test (``SPINESEG_MODELS_DIR`` points into tmp_path)."""
    from napari_spineseg.models import store

    root = tmp_path / "store"
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(root))
    return root


@pytest.fixture(scope="module")
def client():
    """A one-worker, one-thread dask cluster in this process, per test module (the
    batch and cohort tests)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c
