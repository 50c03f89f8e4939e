"""RunOptions as the fronts build it: keyword overrides, -remove-small read once, the
task's defaults, and refusals before any image or model is read."""

from __future__ import annotations

import pickle

import pytest

from napari_spineseg import api, catalog
from napari_spineseg.errors import SpinesegError
from napari_spineseg.options import RemoveSmall, RunOptions, run_options
from napari_spineseg.postprocess import MinSize


def test_keywords_given_as_none_keep_the_options_values():
    base = RunOptions(task="lesion_sci_t2", device="cpu", largest=True, remove_small="5vox")
    assert run_options(base, largest=None, device=None, profile=None) is base
    assert run_options(base, largest=False).largest is False
    assert run_options(None, threshold=None, profile=None) == RunOptions()
    with pytest.raises(TypeError, match="unknown run option"):
        run_options(base, larget=True)


def test_remove_small_tokens_are_read_once_and_kept_as_written():
    # one string: split on spaces and commas; a list: command-line tokens as typed
    assert RemoveSmall.parse("10, 20vox").tokens == ("10", "20vox")
    assert RemoveSmall.parse(["2,4vox"]).tokens == ("2,4vox",)  # one token, as SCT reads it
    # a number is written with its unit: SCT's 7T reading skips a value without one
    assert RemoveSmall.parse(10).tokens == ("10vox",)
    assert RemoveSmall.parse([MinSize(5, "mm3"), "3mm3"]).tokens == ("5mm3", "3mm3")
    assert RemoveSmall.parse([2.5, 4]).sizes == (MinSize(2.5), MinSize(4))
    both = RemoveSmall.parse(["10", "20vox"])
    assert both.sizes == (MinSize(10), MinSize(20))
    # tokens only SCT's int() reads: accepted, our sizes unknown (the task decides)
    assert RemoveSmall.parse(["+7"]) == RemoveSmall(tokens=("+7",), sizes=None)
    assert RemoveSmall.parse(["1_0"]).sizes is None
    # tokens no reading takes: refused when the options are made
    with pytest.raises(SpinesegError, match="cannot read '5mm'; write a number"):
        RunOptions(remove_small=["5mm"])
    with pytest.raises(SpinesegError, match="expected sizes such as '10vox' .*got True"):
        RunOptions(remove_small=[True])
    with pytest.raises(SpinesegError, match="one, a string or a list\\), got a set"):
        RunOptions(remove_small={10})
    opts = RunOptions(remove_small=["10", "20vox"])
    assert RunOptions.from_dict(opts.as_dict()) == opts
    assert pickle.loads(pickle.dumps(opts)) == opts


def test_resolved_fills_the_task_defaults_only_where_not_given():
    spec = catalog.get_task("gm_sc_7t_t2star")
    resolved = RunOptions().resolved(spec)
    assert (resolved.threshold, resolved.largest, resolved.fill_holes) == (0.5, False, False)
    given = RunOptions(threshold=0.3, largest=True).resolved(spec)
    assert (given.threshold, given.largest) == (0.3, True)
    assert resolved.remove_small is None  # its default depends on the engine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "quick"}, "unknown inference profile 'quick': use one of sct, fast"),
        ({"threshold": 1.5}, "threshold must be between 0 and 1, got 1.5"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"remove_small": "ten"}, "cannot read 'ten'"),
    ],
)
def test_segment_refuses_bad_options_before_reading_anything(kwargs, message):
    # neither the (missing) image nor the task's model is looked at
    with pytest.raises(SpinesegError, match=message):
        api.segment("/nonexistent/scan.nii.gz", task="lesion_sci_t2", **kwargs)
    with pytest.raises(SpinesegError, match=message):
        api.segment("/nonexistent/scan.nii.gz", options=RunOptions(task="lesion_sci_t2"), **kwargs)


def test_a_relative_model_path_is_made_absolute_once(tmp_path, monkeypatch):
    """Workers and engine processes run in other folders: the path is fixed where made."""
    monkeypatch.chdir(tmp_path)
    from napari_spineseg.options import RunOptions as Options

    opts = Options(model="lab/my_model", trust=True)
    assert opts.model == str(tmp_path / "lab" / "my_model")
    assert Options.from_dict(opts.as_dict()) == opts
