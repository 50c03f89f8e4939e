"""Small display facts of the widgets: the refine preview's units and status line, and the
Segment form showing the run a script started."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

SCT = Path(__file__).resolve().parents[3] / "shared" / "data" / "sct_testing_data"
CORD = SCT / "t2" / "t2_seg-manual.nii.gz"


@pytest.mark.skipif(not CORD.exists(), reason=f"SCT example data not at {SCT}")
def test_preview_has_the_layers_units_and_discard_clears_its_text(qtbot, tmp_path, monkeypatch):
    from napari.components import ViewerModel
    from napari.layers import Layer

    from napari_spineseg._qt.review.refine import RefineRequest
    from napari_spineseg._qt.review_widget import ReviewWidget
    from napari_spineseg._reader import read_nifti

    monkeypatch.setenv("SPINESEG_AUTOSAVE_DIR", str(tmp_path / "autosave"))
    viewer = ViewerModel()
    ((data, kwargs, kind),) = read_nifti(CORD)
    layer = viewer.add_layer(Layer.create(data, kwargs, kind))
    widget = ReviewWidget(viewer)
    qtbot.addWidget(widget)
    state = widget.select_layer(layer)
    refined = np.zeros((10, *layer.data.shape[1:]), np.uint8)  # a stand-in prediction
    request = RefineRequest(state, slab=(22, 28), crop=(20, 30), overwrite=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # napari warns "Inconsistent units across layers"
        widget._on_refined(request, refined)
    preview = widget.preview_layer
    assert preview is not None and tuple(preview.units) == tuple(layer.units)
    assert "Apply or Discard" in widget.refine_label.text()
    widget.discard_preview()
    assert preview not in viewer.layers
    assert widget.refine_label.text() == "Preview discarded: nothing changed."


def test_segment_form_shows_the_custom_model_a_script_started(qtbot):
    from napari.components import ViewerModel

    from napari_spineseg._qt.segment_widget import CUSTOM, SegmentWidget
    from napari_spineseg.demo import demo_model_folder
    from napari_spineseg.options import RunOptions

    widget = SegmentWidget(ViewerModel())
    qtbot.addWidget(widget.native)
    assert widget.task.value == "lesion_sci_t2"
    run = RunOptions(task=None, model=str(demo_model_folder()), trust=True, remove_small="5vox")
    widget.show_run(run)
    assert widget.task.value == CUSTOM
    assert Path(str(widget.model.value)) == demo_model_folder()
    assert widget.trust.value and widget.remove_small.value == "5vox"
    shown = widget.run_options()  # what the form would run is what the script runs
    assert (shown.task, shown.model, shown.trust, shown.remove_small.tokens) == (
        None,
        run.model,
        True,
        ("5vox",),
    )
    assert shown == run.with_(largest=shown.largest, fill_holes=shown.fill_holes)


def test_a_bad_option_in_the_form_is_refused_before_a_run_starts(qtbot):
    from napari.components import ViewerModel
    from napari.layers import Layer

    from napari_spineseg._qt.segment_widget import SegmentWidget
    from napari_spineseg.errors import SpinesegError
    from napari_spineseg.io import from_nifti
    from napari_spineseg.layers import volume_layer_data
    from napari_spineseg.phantom import cord_phantom

    viewer = ViewerModel()
    image, _ = cord_phantom(shape=(24, 20, 8), seed=4)
    layer = viewer.add_layer(Layer.create(*volume_layer_data(from_nifti(image), as_labels=False)))
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.remove_small.value = "10vox, abc"
    assert widget.segment(layer) is None and not widget.running
    assert isinstance(widget.last_error, SpinesegError)
    assert widget.status.value == (
        "Failed: -remove-small: cannot read 'abc'; write a number with an optional unit, "
        "e.g. 10vox or 5mm3 (one value per class, like SCT)"
    )
    assert [ly.name for ly in viewer.layers] == [layer.name]  # nothing was added
