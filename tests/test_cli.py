"""The spineseg command: exit codes, messages without tracebacks, SCT-named outputs."""

import json
from pathlib import Path

import nibabel as nib
import pytest

from napari_spineseg import cli, segmentation
from napari_spineseg.models import store
from napari_spineseg.phantom import cord_phantom

ZIP_7T = (
    Path(__file__).parent
    / "data/models/gm_sc_7t/model_seg_gm-wm_t2star_7t_unet3d-multiclass-r20211012.zip"
)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_MODELS_DIR, str(tmp_path / "store"))
    monkeypatch.setenv("SPINESEG_NUM_THREADS", "1")
    segmentation.clear_engine_cache()


def test_tasks_lists_all_with_install_state(capsys):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    for t in ("gm_sc_7t_t2star", "gm_wm_mouse_t1", "lesion_sci_t2", "rootlets", "spine"):
        assert t in out
    assert "_totalspineseg_discs" in out and "seg_sc_lesion_t2w_sci" in out


def test_user_errors_exit_1_with_message_and_no_traceback(tmp_path, capsys):
    img, _ = cord_phantom()
    nib.save(img, tmp_path / "a.nii.gz")
    assert cli.main(["segment", "lesion_sci_t2", "-i", str(tmp_path / "a.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "spineseg install lesion_sci_t2" in err and "Traceback" not in err
    assert cli.main(["segment", "nope", "-i", "x.nii.gz"]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["install", "lesion_sci_t2", "--from", str(tmp_path / "none.zip")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", "lesion_sci_t2", "-i", "a.nii.gz", "-largest", "3"])
    assert e.value.code == 2


def test_untrusted_install_is_refused_then_trusted(tmp_path, capsys):
    if not ZIP_7T.is_file():
        pytest.skip("tiny 7T release zip not built")
    assert cli.main(["install", "gm_sc_7t_t2star", "--from", str(ZIP_7T)]) == 1
    assert "--trust" in capsys.readouterr().err
    assert cli.main(["install", "gm_sc_7t_t2star", "--from", str(ZIP_7T), "--trust"]) == 0
    assert cli.main(["models", "verify", "gm_sc_7t_t2star"]) == 0
    assert cli.main(["models", "list"]) == 0
    assert "gm_sc_7t_t2star" in capsys.readouterr().out

    img, _ = cord_phantom(gm=True)
    nib.save(img, tmp_path / "sub_T2star.nii.gz")
    rc = cli.main(
        [
            "segment",
            "seg_gm_sc_7t_t2star",
            "-i",
            str(tmp_path / "sub_T2star.nii.gz"),
            "-device",
            "cpu",
            "-remove-small",
            "10vox",
            "-q",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.split()
    assert [Path(p).name for p in out] == [
        "sub_T2star_7t_multiclass_sc.nii.gz",
        "sub_T2star_7t_multiclass_gm.nii.gz",
    ]
    side = json.loads((tmp_path / "sub_T2star_7t_multiclass_gm.json").read_text())
    assert side["GeneratedBy"][0]["Settings"]["remove_small"] == ["10vox"]
    assert cli.main(["models", "remove", "gm_sc_7t_t2star"]) == 0
    assert cli.main(["models", "remove", "gm_sc_7t_t2star"]) == 1


def test_text_progress_bar():
    import io

    from napari_spineseg.progress import Progress

    buf = io.StringIO()
    bar = cli.TextProgress(buf, width=10)
    bar(Progress(0.5, "predicting"))
    bar(Progress(1.0, "done"))
    assert "[#####-----]  50.0% predicting" in buf.getvalue()
    assert "100.0% done" in buf.getvalue()
