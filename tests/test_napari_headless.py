"""The plugin inside napari: open, overlay, sample data, "New labels" -> save.

Most checks use ``napari.components.ViewerModel`` (the viewer without Qt or OpenGL: the
same layer list, plugin reader/writer dispatch and transforms), so they run anywhere; the
``napari_plugin`` fixture registers the plugin with npe2 for them (a ViewerModel does not
discover plugins, a Qt viewer does). The ones that need a real ``napari.Viewer`` use the
``gl_viewer`` fixture (skipped with the reason when napari cannot draw, e.g. Qt offscreen
without OpenGL; run under Xvfb).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image, Labels  # noqa: E402

from napari_spineseg.errors import GeometryWarning, NiftiError, SpinesegError  # noqa: E402
from napari_spineseg.io.geometry import RAS_TO_DISPLAY  # noqa: E402

PLUGIN = "napari-spineseg"
DATA = Path(__file__).resolve().parents[1].parent / "shared/data/sct_testing_data"
MODELS = Path(__file__).resolve().parent / "data/models"
#: the ViewerModel tests: napari-spineseg registered with npe2, whatever ran before
headless = pytest.mark.usefixtures("napari_plugin")


def _data(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"SCT testing data not found at {p} (needs ../shared/data next to the repo)")
    return p


def _open(viewer, path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        return viewer.open(str(path), plugin=PLUGIN)


def _world_of_file_voxel(path, index) -> np.ndarray:
    """Display world (I, P, L) mm of a file voxel, computed from the NIfTI affine alone."""
    ras = nib.load(str(path)).affine @ np.append(np.asarray(index, float), 1.0)
    return RAS_TO_DISPLAY @ ras[:3]


def _affine(layer) -> np.ndarray:
    return np.asarray(layer._data_to_world.affine_matrix)


def _new_labels_from(viewer, image):
    """What the "New labels" button does with ``image`` selected."""
    viewer.layers.selection.active = image
    viewer._new_labels()
    return viewer.layers[-1]


@headless
def test_t2_image_and_manual_mask_overlay_exactly():
    t2, seg = _data("t2/t2.nii.gz"), _data("t2/t2_seg-manual.nii.gz")
    viewer = ViewerModel()
    (img,) = _open(viewer, t2)
    (lab,) = _open(viewer, seg)
    assert isinstance(img, Image) and isinstance(lab, Labels)
    np.testing.assert_allclose(img.extent.world, lab.extent.world)
    np.testing.assert_allclose(_affine(img), _affine(lab))
    assert viewer.dims.axis_labels == ("S-I", "A-P", "R-L")
    # Every labelled file voxel shows up labelled, over the image voxel it labels.
    mask = np.asanyarray(nib.load(str(seg)).dataobj)
    image = np.asanyarray(nib.load(str(t2)).dataobj)
    rng = np.random.default_rng(0)
    cord = np.argwhere(mask > 0)
    for index in cord[rng.choice(len(cord), 25, replace=False)]:
        world = _world_of_file_voxel(seg, index)
        viewer.dims.point = tuple(world)  # get_value reads the displayed slice
        assert lab.get_value(world, world=True) == mask[tuple(index)]
        assert img.get_value(world, world=True) == image[tuple(index)]


@headless
def test_reader_error_reaches_the_user_with_its_message(tmp_path):
    bad = tmp_path / "truncated.nii"
    good = _data("t2/t2.nii.gz")
    raw = nib.load(str(good))
    nib.save(nib.Nifti1Image(np.asanyarray(raw.dataobj), raw.affine), bad)
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(NiftiError, match=r"truncated\.nii: file is truncated: expected \d+ bytes"):
        ViewerModel().open(str(bad), plugin=PLUGIN)


@headless
def test_sample_data_opens_as_image_and_named_labels():
    viewer = ViewerModel()
    layers = viewer.open_sample(PLUGIN, "cord_phantom")
    assert [type(layer) for layer in layers] == [Image, Labels]
    img, lab = layers
    np.testing.assert_allclose(_affine(img), _affine(lab))
    assert list(lab.features["class"]) == ["background", "spinal cord", "CSF"]
    assert set(np.unique(lab.data)) == {0, 1, 2}
    # The hover status names the class under the cursor.
    cord = np.argwhere(lab.data == 1)[0]
    world = lab.data_to_world(cord)
    status = lab.get_status(world, view_direction=None, dims_displayed=[1, 2], world=True)
    assert "spinal cord" in str(status)


def _check_new_labels_saved(viewer, image_path, tmp_path) -> None:
    (img,) = _open(viewer, image_path)
    new = _new_labels_from(viewer, img)
    assert isinstance(new, Labels)
    assert "spineseg" not in new.metadata  # napari >= 0.7 does not copy metadata
    np.testing.assert_allclose(_affine(new), _affine(img))
    display_index = (17, 23, 29)
    new.data_setitem(tuple(np.array([i]) for i in display_index), 3)
    out = tmp_path / "new_seg.nii.gz"
    written = new.save(str(out), plugin=PLUGIN)
    assert Path(written[0]) == out.absolute()
    saved = nib.load(str(out))
    source = nib.load(str(image_path))
    np.testing.assert_array_equal(saved.affine, source.affine)
    assert saved.header["qform_code"] == source.header["qform_code"]
    data = np.asanyarray(saved.dataobj)
    (found,) = np.argwhere(data == 3)
    assert np.count_nonzero(data) == 1
    # The painted voxel is at the world position napari showed it at.
    world = new.data_to_world(display_index)
    np.testing.assert_allclose(_world_of_file_voxel(out, found), world, atol=1e-4)


@headless
def test_new_labels_layer_saves_on_the_image_grid(tmp_path, monkeypatch):
    viewer = ViewerModel()
    # A Qt viewer is napari.current_viewer(); ViewerModel is not, so stand in for it.
    monkeypatch.setattr(napari, "current_viewer", lambda: viewer)
    _check_new_labels_saved(viewer, _data("t2/t2.nii.gz"), tmp_path)


@headless
def test_new_labels_without_its_image_is_refused(tmp_path, monkeypatch):
    viewer = ViewerModel()
    monkeypatch.setattr(napari, "current_viewer", lambda: viewer)
    (img,) = _open(viewer, _data("t2/t2.nii.gz"))
    new = _new_labels_from(viewer, img)
    viewer.layers.remove(img)
    with pytest.raises(SpinesegError, match="Open the source image with napari-spineseg"):
        new.save(str(tmp_path / "x_seg.nii.gz"), plugin=PLUGIN)
    assert not (tmp_path / "x_seg.nii.gz").exists()


@pytest.mark.qt
def test_qt_viewer_new_labels_saved_via_current_viewer(gl_viewer, tmp_path):
    _check_new_labels_saved(gl_viewer, _data("t2/t2.nii.gz"), tmp_path)


@pytest.mark.qt
def test_qt_viewer_opens_t2_and_mask(gl_viewer):
    (img,) = _open(gl_viewer, _data("t2/t2.nii.gz"))
    (lab,) = _open(gl_viewer, _data("t2/t2_seg-manual.nii.gz"))
    np.testing.assert_allclose(img.extent.world, lab.extent.world)
    np.testing.assert_allclose(_affine(img), _affine(lab))
    assert tuple(gl_viewer.dims.axis_labels) == ("S-I", "A-P", "R-L")


@pytest.mark.qt
@pytest.mark.slow
def test_review_of_a_lab_model_without_a_task_uses_its_own_classes(gl_viewer, tmp_path):
    """``review(viewer, path, model=FOLDER, trust=True)`` runs the lab's model with the
    classes of its dataset.json (cord, csf), as ``api.segment`` does; it used to run it
    as lesion_sci_t2 and fail ("no class sc for output _sc_seg")."""
    from napari_spineseg import api, review
    from napari_spineseg._qt.segment_widget import CUSTOM
    from napari_spineseg.io import load
    from napari_spineseg.phantom import cord_phantom

    lab_model = MODELS / "custom_2d/nnUNetTrainer__nnUNetPlans__2d"
    img, _ = cord_phantom(shape=(48, 40, 16), zooms=(0.8, 0.8, 2.5), axcodes="PSR", seed=1)
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    session = review(gl_viewer, path, model=lab_model, trust=True, device="cpu")
    session.review_widget.prompt = lambda title, text: "discard"  # teardown closes napari
    assert session.run.task is None and session.segment_widget.task.value == CUSTOM
    assert session.wait(300) == "done", session.segment_widget.status.value
    layers = session.segment_widget.last_layers
    assert [ly.name for ly in layers] == ["sub-01_T2w_cord_seg", "sub-01_T2w_csf_seg"]
    assert list(layers[0].features["class"]) == ["background", "cord"]
    expected = api.segment(path, model=lab_model, trust=True, device="cpu")
    geometry = load(path).geometry
    for layer, suffix in zip(layers, ("_cord_seg", "_csf_seg"), strict=True):
        want = geometry.to_display(expected.outputs[suffix].labels)
        np.testing.assert_array_equal(layer.data, want)
    # neither a task nor a model: the default task, as before
    again = review(gl_viewer, session.image_layer, start=False)
    assert again.run.task == "lesion_sci_t2" and again.run.model is None
    assert again.segment_widget.task.value == "lesion_sci_t2"
    assert again.segment_widget.run_options().model is None  # the lab's folder is cleared


# ------------------------------------------------------------------ on screen (Xvfb)
def _start_xvfb():
    """Start Xvfb on a free display number; return (process, ':N')."""
    import os
    import shutil
    import subprocess

    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    return proc, f":{number}"


@pytest.mark.xvfb
@pytest.mark.slow
def test_screenshot_shows_mask_on_the_cord_voxels():
    """Render t2 + mask; every mask-coloured pixel lies on a mask voxel (and vice versa).

    Screen pixels are mapped back to file voxels with the NIfTI affine only, so a flip,
    transpose or shift anywhere between the file and the screen fails this test.
    """
    import json
    import os
    import subprocess
    import sys

    _data("t2/t2.nii.gz")
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshots.py"
    proc, display = _start_xvfb()
    try:
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        env["DISPLAY"] = display
        out = subprocess.run(
            [sys.executable, str(script), "--check"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for view in ("axial", "sagittal"):
        r = result[view]
        assert r["expected_pixels"] > 1000, r  # the cord fills a real part of the canvas
        assert r["precision"] > 0.98 and r["recall"] > 0.98, (view, r)
