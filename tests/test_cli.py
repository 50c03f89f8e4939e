"""The spineseg command: exit codes, messages without tracebacks, SCT-named outputs."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from napari_spineseg import __version__, cli, segmentation
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


# ------------------------------------------------------------------ bad invocations
#: argv (with {img}, {txt}, {empty}, {dir}, {missing}, {file}) -> exit status, message.
#: 2 = the command line itself is wrong (argparse's usage error), 1 = a problem with what
#: it names (the message says how to fix it). None of them may print a traceback.
SEG = ["segment", "lesion_sci_t2", "-i", "{img}"]
BATCH = ["batch", "lesion_sci_t2", "-i", "{img}"]
BAD_INVOCATIONS = [
    # malformed values: refused by argparse, before anything is loaded
    (
        [*SEG, "-device", "quantum"],
        2,
        "argument -device: unknown device 'quantum': use auto, cpu, cuda, cuda:N",
    ),
    ([*SEG, "-device", "cuda:x"], 2, "unknown device 'cuda:x'"),
    ([*SEG, "-device", "gpu0"], 2, "unknown device 'gpu0'"),
    ([*BATCH, "-device", "tpu"], 2, "unknown device 'tpu'"),
    ([*SEG, "-thr", "7"], 2, "argument -thr: 7 is not between 0 and 1"),
    ([*SEG, "-thr", "nan"], 2, "nan is not between 0 and 1"),
    ([*SEG, "-thr", "half"], 2, "argument -thr: 'half' is not a number"),
    ([*SEG, "-largest", "3"], 2, "argument -largest: invalid choice: 3"),
    ([*SEG, "-fill-holes", "yes"], 2, "argument -fill-holes: invalid int value"),
    (
        [*SEG, "-remove-small", "10kg"],
        2,
        "argument -remove-small: cannot read '10kg'; write a number with an optional unit",
    ),
    ([*SEG, "-remove-small", "-5"], 2, "cannot read '-5'"),
    ([*SEG, "-label-vert", "2"], 2, "argument -label-vert: invalid choice"),
    ([*BATCH, "--workers", "0"], 2, "argument --workers: 0 is less than 1"),
    ([*BATCH, "--threads", "two"], 2, "argument --threads: 'two' is not a whole number"),
    (["segment", "lesion_sci_t2"], 2, "the following arguments are required: -i"),
    ([*SEG, "-frobnicate"], 2, "unrecognized arguments: -frobnicate"),
    (["frobnicate"], 2, "argument COMMAND: invalid choice: 'frobnicate'"),
    ([], 2, "the following arguments are required: COMMAND"),
    (["models", "purge"], 2, "argument action: invalid choice: 'purge'"),
    # well-formed, but what they name cannot be used
    (
        ["segment", "-i", "{img}"],
        1,
        "segment: give a TASK (see `spineseg tasks`) or --model FOLDER",
    ),
    (
        ["segment", "nope", "-i", "{img}"],
        1,
        "unknown task 'nope'; available tasks: gm_sc_7t_t2star",
    ),
    (["segment", "lesion_sci_t2", "-i", "{missing}"], 1, "{missing}: no such file"),
    ([*SEG, "{missing}"], 1, "{missing}: no such file"),
    (["segment", "lesion_sci_t2", "-i", "{dir}"], 1, "{dir}: is a folder, not a NIfTI file"),
    (
        ["segment", "lesion_sci_t2", "-i", "{txt}"],
        1,
        "{txt}: named .nii.gz but it is not gzip-compressed",
    ),
    (["segment", "lesion_sci_t2", "-i", "{empty}"], 1, "{empty}: empty file (0 bytes)"),
    (
        [*SEG, "{img}", "-o", "x.nii.gz"],
        1,
        "-o names one output; with several -i images leave it out",
    ),
    (
        [*SEG, "-remove-small", "5mm3", "3vox"],
        1,
        "-remove-small: use one unit (vox or mm3) for all values",
    ),
    (["segment", "lesion_sci_t2", "-i", "{img}"], 1, "spineseg install lesion_sci_t2"),
    (
        ["segment", "-i", "{img}", "--model", "{missing}", "--trust"],
        1,
        "{missing}: no such model folder or zip",
    ),
    (
        ["segment", "-i", "{img}", "--model", "{img}", "--trust"],
        1,
        "{img}: not a model folder or a zip file",
    ),
    (["install", "nope"], 1, "unknown task 'nope'"),
    (["install", "lesion_sci_t2", "--from", "{missing}"], 1, "{missing}: no such file"),
    (["models", "remove"], 1, "models remove: name the task to remove"),
    (["models", "remove", "rootlets"], 1, "no model installed for 'rootlets'"),
    (["models", "verify", "nope"], 1, "unknown task 'nope'"),
    (["demo", "--out", "{file}/demo"], 1, "{file}/demo: Not a directory"),
]


@pytest.fixture
def bad_inputs(tmp_path):
    """Paths for BAD_INVOCATIONS: a good image, broken files, a folder, a missing file."""
    img, _ = cord_phantom(shape=(16, 16, 8))
    paths = {
        "img": tmp_path / "a.nii.gz",
        "txt": tmp_path / "notes.nii.gz",
        "empty": tmp_path / "empty.nii",
        "dir": tmp_path / "scans",
        "missing": tmp_path / "missing.nii.gz",
        "file": tmp_path / "plain.txt",
    }
    nib.save(img, paths["img"])
    paths["txt"].write_text("not an image")
    paths["empty"].write_bytes(b"")
    paths["dir"].mkdir()
    paths["file"].write_text("a file where a folder is expected")
    return {k: str(v) for k, v in paths.items()}


def _run_main(argv: list[str]) -> int:
    """cli.main's exit status, also when argparse exits (usage errors)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    BAD_INVOCATIONS,
    ids=[f"{status}:{' '.join(argv)}" for argv, status, _ in BAD_INVOCATIONS],
)
def test_bad_invocation_exits_with_a_message_and_no_traceback(
    argv, status, message, bad_inputs, capsys
):
    argv = [a.format(**bad_inputs) for a in argv]
    assert _run_main(argv) == status
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert message.format(**bad_inputs) in captured.err
    if status == 1:  # one line, in our words
        assert captured.err.startswith("spineseg: error: ")
    else:  # argparse: the usage line, then the reason
        assert captured.err.startswith("usage: spineseg")
    folder = Path(bad_inputs["img"]).parent
    assert not any(p.name.endswith("_seg.nii.gz") for p in folder.iterdir())  # nothing written


def test_wrong_device_is_refused_by_the_installed_command(bad_inputs):
    """The real entry point, in a fresh process: no torch RuntimeError traceback."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_spineseg.cli",
            "segment",
            "lesion_sci_t2",
            "-i",
            bad_inputs["img"],
            "-device",
            "quantum",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "unknown device 'quantum'" in out.stderr


def test_unwritable_output_location_is_an_error_not_a_traceback(bad_inputs, capsys):
    """-o under a regular file (what an unwritable or missing folder looks like to us)."""
    target = Path(bad_inputs["file"]) / "out" / "mask.nii.gz"
    demo_model = Path(cli.__file__).parent / "_demo_model/nnUNetTrainer__nnUNetPlans__2d"
    argv = [
        "segment",
        "-i",
        bad_inputs["img"],
        "--model",
        str(demo_model),
        "--trust",
        "-q",
        "-device",
        "cpu",
        "-o",
        str(target),
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("spineseg: error: ")
    assert bad_inputs["file"] in err
    assert Path(bad_inputs["file"]).read_text() == "a file where a folder is expected"


def test_debug_flag_is_accepted_before_and_after_the_command():
    parser = cli._parser()
    assert parser.parse_args(["tasks"]).debug is False
    assert parser.parse_args(["--debug", "tasks"]).debug is True
    assert parser.parse_args(["segment", "rootlets", "-i", "a.nii.gz", "--debug"]).debug is True


def test_a_bug_is_one_line_that_says_how_to_report_it(monkeypatch, capsys):
    def broken(_args, _out):
        raise ZeroDivisionError("division by zero\nin a place no check anticipated")

    monkeypatch.setattr(cli, "_cmd_tasks", broken)
    assert cli.main(["tasks"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err == (
        "spineseg: internal error (ZeroDivisionError: division by zero in a place no check "
        "anticipated). This is a bug in napari-spineseg "
        f"{__version__}, not a problem with your input: please report it at "
        "https://github.com/napari-spineseg/napari-spineseg/issues with the command you ran "
        "and what it prints with --debug (the traceback)\n"
    )
    # --debug: the traceback, ending at the code that raised, then the same message
    assert cli.main(["--debug", "tasks"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert 'raise ZeroDivisionError("division by zero' in err
    assert err.endswith("with --debug (the traceback)\n")
    assert "spineseg: internal error (ZeroDivisionError" in err


def test_debug_shows_the_traceback_of_a_user_error_too(bad_inputs, capsys):
    assert cli.main(["--debug", "segment", "lesion_sci_t2", "-i", bad_inputs["missing"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "NiftiError" in err
    assert err.rstrip().endswith(f"spineseg: error: {bad_inputs['missing']}: no such file")


def test_geometry_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    from napari_spineseg.errors import GeometryWarning

    def warn_and_list(_args, out):
        note = "q-form and s-form differ by 2.1 mm; using the s-form"
        warnings.warn(note, GeometryWarning, stacklevel=1)
        warnings.warn("something else", DeprecationWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_cmd_tasks", warn_and_list)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["tasks"]) == 0
    err = capsys.readouterr().err
    assert "spineseg: warning: q-form and s-form differ by 2.1 mm; using the s-form\n" in err
    assert "DeprecationWarning: something else" in err  # other warnings: Python's format


# ------------------------------------------------------------------ help
SEGMENT_OPTIONS = (
    *("-i", "-o", "-thr", "-largest", "-fill-holes", "-remove-small", "-test-time-aug"),
    *("-label-vert", "-device", "--model", "--trust", "-q"),
)


def _option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {opt: action.help or "" for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_every_option_has_help_and_the_help_has_examples(command, capsys):
    parser = cli._parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    helps = _option_help(sub)
    for opt in SEGMENT_OPTIONS:
        assert len(helps[opt]) > 30, (opt, helps[opt])  # a sentence, not a word
    assert "[0, 1]" in helps["-thr"] and "7T" in helps["-thr"]
    assert "cuda:N" in helps["-device"] and "mps" in helps["-device"]
    assert "pickles" in helps["--trust"]
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:\n" in text and f"  spineseg {command} lesion_sci_t2 -i " in text
    assert "exit status: 0 done, 1 a problem you can fix" in text
    # the examples' own options exist (a renamed flag would leave a stale example)
    examples = text.split("examples:\n", 1)[1]
    for line in examples.splitlines():
        if line.startswith(f"  spineseg {command} "):
            args = [a for a in line.split() if a.startswith("-") and a != "\\"]
            assert set(args) <= set(helps), line


def test_profile_fast_is_said_on_stderr_and_in_the_sidecar(tmp_path, capsys):
    from napari_spineseg.demo import demo_model_folder

    img, _ = cord_phantom()
    nib.save(img, tmp_path / "a.nii.gz")
    argv = ["segment", "--model", str(demo_model_folder()), "--trust", "-device", "cpu"]
    assert cli.main([*argv, "-i", str(tmp_path / "a.nii.gz"), "-profile", "fast", "-q"]) == 0
    res = capsys.readouterr()
    assert (
        "note: inference profile 'fast': nnU-Net ran fold 0 only (of 0) with tile step 0.75"
        in (res.err)
    )
    side = json.loads((tmp_path / "a_cord_seg.json").read_text())
    assert side["GeneratedBy"][0]["Settings"]["profile"] == "fast"
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "-i", str(tmp_path / "a.nii.gz"), "-profile", "quick"])
    assert e.value.code == 2
    assert "invalid choice: 'quick'" in capsys.readouterr().err
