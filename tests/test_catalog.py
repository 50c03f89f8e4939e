"""The task catalog: SCT names, suffixes, classes, and the generic nnU-Net output rule."""

import json
import zipfile

import pytest

from napari_spineseg import catalog
from napari_spineseg.errors import ModelNotInstalledError, TaskError


def test_five_tasks_with_sct_names_and_suffixes():
    suffixes = {t.id: [o.suffix for o in t.outputs] for t in catalog.tasks()}
    assert suffixes == {
        "gm_sc_7t_t2star": ["_7t_multiclass_sc", "_7t_multiclass_gm"],
        "gm_wm_mouse_t1": ["_GM_seg", "_WM_seg"],
        "lesion_sci_t2": ["_sc_seg", "_lesion_seg"],
        "rootlets": ["_rootlets"],
        "spine": ["_totalspineseg_discs", "_totalspineseg_all"],
    }


@pytest.mark.parametrize(
    ("alias", "task"),
    [
        ("seg_gm_sc_7t_t2star", "gm_sc_7t_t2star"),
        ("seg_mouse_gm_wm_t1w", "gm_wm_mouse_t1"),
        ("seg_sc_lesion_t2w_sci", "lesion_sci_t2"),
        ("seg_spinal_rootlets_t2w", "rootlets"),
        ("totalspineseg", "spine"),
        ("LESION_SCI_T2", "lesion_sci_t2"),
    ],
)
def test_old_sct_names_resolve(alias, task):
    assert catalog.get_task(alias).id == task


def test_unknown_task_lists_the_tasks():
    with pytest.raises(TaskError, match="unknown task 'nope'.*lesion_sci_t2"):
        catalog.get_task("nope")


def test_tables_and_defaults():
    spine = catalog.get_task("spine")
    assert spine.classes[1] == "spinal cord" and spine.classes[2] == "spinal canal"
    assert spine.classes[11] == "vertebra C1" and spine.classes[21] == "vertebra T1"
    assert spine.classes[45] == "vertebra L5" and spine.classes[50] == "sacrum"
    assert spine.classes[63] == "disc C2-C3" and spine.classes[71] == "disc C7-T1"
    assert spine.classes[91] == "disc T12-L1" and spine.classes[100] == "disc L5-S"
    discs = spine.outputs[0].names
    assert discs[3] == "disc C2-C3" and discs[8] == "disc C7-T1" and discs[20] == "disc T12-L1"
    assert set(spine.colors) == set(spine.classes)
    assert catalog.get_task("rootlets").classes == {
        2: "C2 rootlets",
        3: "C3 rootlets",
        4: "C4 rootlets",
        5: "C5 rootlets",
        6: "C6 rootlets",
        7: "C7 rootlets",
        8: "C8 rootlets",
        9: "T1 rootlets",
    }
    assert catalog.get_task("gm_sc_7t_t2star").postprocess.threshold == 0.5
    assert catalog.get_task("lesion_sci_t2").postprocess.threshold is None
    assert len(catalog.get_task("spine").sources) == 2
    for t in catalog.tasks():
        assert t.citation and t.sources and t.backend in catalog.BACKENDS
        assert all(s.sha256 is None for s in t.sources)  # none is published (TOFU)
        assert t.install_command() == f"spineseg install {t.id}"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"background": 0, "lvl2": 2, "lvl3": 3}, [("_rootlets", None)]),
        ({"background": 0, "sc": 1}, [("_seg", ("sc",))]),
        (
            {"background": 0, "sc": [1, 2], "lesion": 2},
            [("_sc_seg", ("sc",)), ("_lesion_seg", ("lesion",))],
        ),
        ({"background": 0, "GM": 1, "WM": 2}, [("_GM_seg", ("GM",)), ("_WM_seg", ("WM",))]),
    ],
)
def test_sct_generic_output_rule(labels, expected):
    classes, outputs = catalog.outputs_from_labels(labels)
    assert [(o.suffix, o.classes) for o in outputs] == expected
    if "lesion" in labels:
        assert classes == {2: "lesion", 1: "sc"}


def test_custom_task_from_zip_reads_dataset_json(tmp_path):
    z = tmp_path / "MyModel.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(
            "Dataset9/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json",
            json.dumps(
                {
                    "labels": {"background": 0, "canal": 1},
                    "image_orientation": "RPI",
                    "channel_names": {"0": "T2w"},
                }
            ),
        )
    spec = catalog.custom_task(z)
    assert spec.custom and spec.backend == "nnunet" and spec.id == "custom-MyModel"
    assert [o.suffix for o in spec.outputs] == ["_canal_seg"]
    assert spec.orientation == "LAS" and spec.contrasts == ("T2w",)
    assert "--trust" in spec.install_command()
    with pytest.raises(ModelNotInstalledError, match="no such"):
        catalog.custom_task(tmp_path / "missing")
