"""SCT parity on the edges: our ``-sct-compat`` mode gives ``sct_deepseg``'s voxels.

Every oracle below is SCT's (or ivadomed's) own code, rewritten as a plain function and
cited by file and function (SCT HEAD 3b3c5b22d, post-7.3; ivadomed 2.9.10, the version SCT
7.3 pins). Each case is a small label volume on which SCT's rule and our default differ,
so a test passes only when the SCT mode reproduces SCT voxel for voxel (and the default
keeps its documented behaviour); thresholds are probed on both sides of the boundary.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_spineseg import api, catalog, segmentation
from napari_spineseg import postprocess as pp
from napari_spineseg.engines import _nnunet_orientation as orient
from napari_spineseg.engines import engine_class
from napari_spineseg.engines.base import Prediction
from napari_spineseg.errors import SpinesegError
from napari_spineseg.options import RunOptions

ROOTLETS = catalog.get_task("rootlets")
SPINE = catalog.get_task("spine")
SCI = catalog.get_task("lesion_sci_t2")
GM_SC_7T = catalog.get_task("gm_sc_7t_t2star")
MODELS = Path(__file__).resolve().parent / "data" / "models"

# ------------------------------------------------------------------------------------------
# Oracles: SCT's code, rewritten plainly
# ------------------------------------------------------------------------------------------


def sct_get_dimension_zooms(zooms) -> list[float]:
    """spinalcordtoolbox/image.py ``get_dimension``: float32 zooms rounded to their spacing."""
    out = []
    for zoom_f32 in np.asarray(zooms, dtype=np.float32):
        spacing_exp = np.floor(np.log10(np.abs(np.spacing(zoom_f32)))).astype(int)
        out.append(round(float(zoom_f32), -spacing_exp - 1))
    return out


def sct_keep_largest_object(prediction: np.ndarray) -> np.ndarray:
    """spinalcordtoolbox/deepseg_/postprocessing.py ``keep_largest_object`` (x_cOm=None)."""
    prediction = prediction.copy()
    labeled_obj, num_obj = ndimage.label(prediction)
    if num_obj > 1:
        largest = np.bincount(labeled_obj.flat)[1:].argmax() + 1
        prediction[np.where(labeled_obj != largest)] = 0
    return prediction


def sct_fill_holes(predictions: np.ndarray) -> np.ndarray:
    """spinalcordtoolbox/deepseg_/postprocessing.py ``fill_holes``."""
    assert np.array_equal(predictions, predictions.astype(bool)), "fill_holes expects binary"
    structure = [3] * len(predictions.shape)
    return ndimage.binary_fill_holes(predictions, structure=np.ones(structure)).astype(int)


def sct_remove_small_objects(data, dim_lst, unit, thr):
    """spinalcordtoolbox/math.py ``remove_small_objects``."""
    data = data.copy()
    px, py, pz = dim_lst
    num_classes = data.shape[0] if len(data.shape) == 4 else 1
    data_label, n = ndimage.label(data, structure=ndimage.generate_binary_structure(3, 2))
    if isinstance(thr, list) and (num_classes != len(thr)):
        raise ValueError(f"Length mismatch: threshold length of {len(thr)}")
    thr = thr[0] if num_classes == 1 else thr
    size_min = thr if unit == "vox" else np.round(thr / (px * py * pz))
    for idx in range(1, n + 1):
        if np.count_nonzero(data_label == idx) < size_min:
            data[data_label == idx] = 0
    return data


def sct_postprocess(data, zooms, threshold=None, keep_largest=0, fill_holes=0, remove_small=None):
    """spinalcordtoolbox/deepseg/inference.py ``segment_non_ivadomed``, the 4 steps per file."""
    data = np.array(data, copy=True)
    if threshold:
        data = data > threshold  # math.binarize
    if keep_largest != 0:
        data[data < 0.001] = 0
        data = sct_keep_largest_object(data)
    if fill_holes != 0:
        data = sct_fill_holes(data)
    if remove_small is not None:
        unit = "mm3" if "mm3" in remove_small[-1] else "vox"
        thr = [int(t.replace(unit, "")) for t in remove_small]
        data = sct_remove_small_objects(data, sct_get_dimension_zooms(zooms), unit, thr)
    return data


def ivadomed_postprocess(probs, json_post, options, pixdim):
    """ivadomed/inference.py ``set_postprocessing_options`` + postprocessing.py
    ``Postprocessing.apply`` (binarize_prediction, remove_noise, uncertainty, remove_small)
    on the (X, Y, Z, class) prediction, as SCT calls them (``options`` = SCT's arguments).
    """
    post = copy.deepcopy(json_post)
    postpro = {}
    if options.get("binarize_prediction") is not None:
        postpro["binarize_prediction"] = {"thr": options["binarize_prediction"]}
    for key in ("keep_largest", "fill_holes"):
        if options.get(key) is not None:
            if options[key]:
                postpro[key] = {}
            elif key in post:
                del post[key]
    rs = options.get("remove_small")
    if rs and ("mm" in rs[-1] or "vox" in rs[-1]):
        unit = "mm3" if "mm3" in rs[-1] else "vox"
        postpro["remove_small"] = {"unit": unit, "thr": [int(t.replace(unit, "")) for t in rs]}
    post.update(postpro)
    data = probs.copy()
    px, py, pz = np.asarray(pixdim, dtype=np.float32)
    n_classes = data.shape[-1]
    for name, params in post.items():
        if name == "binarize_prediction" and params["thr"] >= 0:
            data = data.copy()
            low = data < params["thr"]
            data[low] = 0
            data[data >= params["thr"]] = 1  # threshold_predictions
            data = data.astype(int)
        elif name == "remove_noise" and params["thr"] >= 0:
            data = data * (data > params["thr"])
        elif name == "uncertainty":
            assert params["thr"] < 0  # no uncertainty maps in SCT's runs
        elif name == "remove_small":
            thr = params["thr"]
            if isinstance(thr, list) and n_classes != len(thr):
                raise ValueError("Length mismatch for remove small object postprocessing step")
            if isinstance(thr, int):
                thr = [thr] * n_classes
            size_min = thr if params["unit"] == "vox" else np.round(thr / (px * py * pz))
            for c in range(n_classes):
                lab, n = ndimage.label(data[..., c], ndimage.generate_binary_structure(3, 2))
                for idx in range(1, n + 1):
                    if np.count_nonzero(lab == idx) < size_min[c]:
                        data[..., c][lab == idx] = 0
        else:
            assert name not in ("keep_largest", "fill_holes"), name  # not exercised here
    return data


def sct_model_orientation(dataset_json: dict, dataset_name: str) -> str:
    """spinalcordtoolbox/deepseg/inference.py ``segment_nnunet``: the model orientation."""
    if "image_orientation" in dataset_json:
        return dataset_json["image_orientation"]
    if "RegionBasedLesionSeg" in dataset_name:
        return "AIL"
    return "LPI"


# ------------------------------------------------------------------------------------------
# Label volumes where SCT's rule and ours differ
# ------------------------------------------------------------------------------------------


def rootlets_volume() -> np.ndarray:
    """Level 2 (27 vox) face-touching level 3 (6 vox); a detached level 4 (8 vox); a lone
    level-3 voxel; a level-5 pair edge-connected (18- but not 6-connected) to level 4."""
    lab = np.zeros((14, 12, 12), np.uint8)
    lab[1:4, 1:4, 1:4] = 2
    lab[4:6, 1:4, 2] = 3  # touches level 2 by faces: one object for SCT's label()
    lab[8:10, 7:9, 7:9] = 4
    lab[10, 9, 8] = 5  # edge-neighbour of lab[9, 8, 8]
    lab[11, 10, 8] = 5
    lab[12, 1, 10] = 3
    return lab


def rootlets_prediction(lab: np.ndarray) -> Prediction:
    names = {v: f"lvl{v}" for v in range(1, 6)}
    return Prediction(maps={"labels": lab}, classes={"labels": names})


def _split(spec, pred, zooms=(1.0, 1.0, 1.0), **options):
    opts = RunOptions(**options).resolved(spec)
    outs, _steps = segmentation.split_outputs(spec, pred, zooms, opts)
    return outs


def _min_sizes(spec, tokens, **options):
    """The task's -remove-small reading, as a run does it (the engine class's hook)."""
    opts = RunOptions(remove_small=tokens, **options)
    return engine_class(spec.backend).min_sizes_for(spec, opts)


@pytest.mark.parametrize(
    "options",
    [
        {"largest": True},
        {"remove_small": ["10"]},
        {"remove_small": ["34"]},  # the level 2+3 object is 33 voxels: removed by SCT
        {"remove_small": ["33"]},  # ...and kept at exactly 33
        {"largest": True, "remove_small": ["2vox"]},
        {"threshold": 0.5},
        {"threshold": 3.0 / 4, "largest": True},
        {"threshold": 0.5, "fill_holes": True, "largest": True, "remove_small": ["4"]},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_rootlets_sct_compat_gives_scts_voxels(options):
    lab = rootlets_volume()
    expected = sct_postprocess(
        lab,
        (1, 1, 1),
        threshold=options.get("threshold"),
        keep_largest=int(options.get("largest", False)),
        fill_holes=int(options.get("fill_holes", False)),
        remove_small=options.get("remove_small"),
    )
    out = _split(ROOTLETS, rootlets_prediction(lab), sct_compat=True, **options)["_rootlets"]
    np.testing.assert_array_equal(out.labels, np.asarray(expected).astype(np.uint8))
    assert out.binary == bool(options.get("threshold"))


def test_rootlets_default_is_per_class_and_differs_from_sct():
    """Documented default: each spinal level is its own mask (docs/tasks.md)."""
    lab = rootlets_volume()
    pred = rootlets_prediction(lab)
    largest = _split(ROOTLETS, pred, largest=True)["_rootlets"].labels
    sct = sct_postprocess(lab, (1, 1, 1), keep_largest=1)
    # SCT keeps the one largest object of the whole map: levels 2 and 3 only
    assert set(np.unique(sct)) == {0, 2, 3} and (sct == 3).sum() == 6
    # per class: the largest object of every level (the lone level-3 voxel goes; the two
    # level-5 voxels touch by an edge only, two objects of one voxel: the first is kept)
    expected = lab.copy()
    expected[12, 1, 10] = 0
    expected[11, 10, 8] = 0
    np.testing.assert_array_equal(largest, expected)
    small = _split(ROOTLETS, pred, remove_small=["10"])["_rootlets"].labels
    # per class, levels 3 (6 vox), 4 (8) and 5 (2) are each below 10 voxels
    np.testing.assert_array_equal(small, np.where(lab == 2, 2, 0))
    sct_small = sct_postprocess(lab, (1, 1, 1), remove_small=["10"])
    assert (sct_small == 3).sum() == 6 and (sct_small == 4).sum() == 8  # 2+3: 33, 4+5: 10
    assert (sct_small == 5).sum() == 2


def test_remove_small_boundary_on_an_18_connected_union():
    """Level 4 (8 vox) + level 5 (2 vox) touch only by edges: 10 voxels for SCT at 18-conn."""
    lab = rootlets_volume()
    pred = rootlets_prediction(lab)
    for size, kept in ((10, True), (11, False)):
        out = _split(ROOTLETS, pred, sct_compat=True, remove_small=[str(size)])["_rootlets"]
        assert bool((out.labels == 5).any()) is kept
        assert bool((out.labels == 4).any()) is kept
        expected = sct_postprocess(lab, (1, 1, 1), remove_small=[str(size)])
        np.testing.assert_array_equal(out.labels, expected)


def test_fill_holes_on_a_multilabel_map_is_refused_like_sct():
    lab = rootlets_volume()
    with pytest.raises(AssertionError):
        sct_postprocess(lab, (1, 1, 1), fill_holes=1)
    with pytest.raises(SpinesegError, match=r"_rootlets: sct_deepseg cannot fill holes.*-thr"):
        _split(ROOTLETS, rootlets_prediction(lab), sct_compat=True, fill_holes=True)
    # a map holding only 0/1 passes SCT's assertion, and ours
    ones = (lab == 2).astype(np.uint8)
    ones[2, 2, 2] = 0  # an enclosed hole
    out = _split(ROOTLETS, rootlets_prediction(ones), sct_compat=True, fill_holes=True)
    np.testing.assert_array_equal(
        out["_rootlets"].labels, sct_postprocess(ones, (1, 1, 1), fill_holes=1)
    )
    assert out["_rootlets"].labels[2, 2, 2] == 1


@pytest.mark.parametrize("thr", [1.0, 2.0, 2.5, 4.0, 0.25])
def test_thr_binarises_nnunet_labels_strictly_above(thr):
    """SCT: ``binarize(data, thr)`` is ``data > thr``; a label equal to thr is dropped."""
    lab = rootlets_volume()
    out = _split(ROOTLETS, rootlets_prediction(lab), sct_compat=True, threshold=thr)
    np.testing.assert_array_equal(out["_rootlets"].labels, (lab > thr).astype(np.uint8))
    assert out["_rootlets"].classes == {1: f"rootlets by spinal level > {thr:g}"}
    if thr > 1:  # only sct_compat takes it: SCT does, and RunOptions refuses it otherwise
        with pytest.raises(SpinesegError, match="threshold must be between 0 and 1"):
            RunOptions(threshold=thr)
        return
    default = _split(ROOTLETS, rootlets_prediction(lab), threshold=thr)["_rootlets"]
    np.testing.assert_array_equal(default.labels, lab)  # ignored (a note says so)


def test_spine_outputs_follow_the_same_rule():
    """TotalSpineSeg's files go through ``segment_non_ivadomed`` too (SCT inference.py)."""
    allmap = np.zeros((12, 10, 10), np.uint8)
    allmap[1:9, 3:6, 3:6] = 1  # cord
    allmap[1:9, 6, 3:6] = 2  # canal, touching the cord
    allmap[10, 8, 8] = 41  # a stray vertebra voxel
    allmap[1:3, 0:2, 0:2] = 63  # a disc, detached
    discs = np.zeros_like(allmap)
    discs[2, 4, 4], discs[6, 4, 4] = 3, 4
    pred = Prediction(
        maps={"discs": discs, "all": allmap},
        classes={"discs": {3: "C2-C3", 4: "C3-C4"}, "all": {1: "cord", 2: "canal"}},
    )
    outs = _split(SPINE, pred, sct_compat=True, largest=True, remove_small=["2"])
    for suffix, data in (("_totalspineseg_discs", discs), ("_totalspineseg_all", allmap)):
        expected = sct_postprocess(data, (1, 1, 1), keep_largest=1, remove_small=["2"])
        np.testing.assert_array_equal(outs[suffix].labels, expected)
    assert not outs["_totalspineseg_discs"].labels.any()  # one disc voxel < 2 voxels
    default = _split(SPINE, pred, largest=True)
    assert (default["_totalspineseg_all"].labels == 63).sum() == 8  # per class: kept


# ------------------------------------------------------------------------------------------
# -remove-small command lines (nnU-Net path)
# ------------------------------------------------------------------------------------------

NNUNET_TOKENS = [
    ["10"],
    ["10vox"],
    ["5mm3"],
    ["+7"],  # int() takes a sign
    ["1_0"],  # ...and digit separators
    ["-3"],  # a negative size removes nothing
    ["10", "10"],  # one per output file: SCT refuses (length mismatch)
    ["10mm3", "20"],  # unit on the first token: SCT takes 'vox' from the last, int fails
    ["2.5"],  # int() refuses decimals
    ["10VOX"],  # the unit is case-sensitive for SCT
    ["10,20vox"],  # int('10,20') fails; ours: two values, one per output file
    ["10", "20", "30"],
]


def _sct_nnunet_sizes(tokens):
    """The minimum sizes SCT uses, or the exception it raises (oracle of the parsing)."""
    unit = "mm3" if "mm3" in tokens[-1] else "vox"
    thr = [int(t.replace(unit, "")) for t in tokens]  # may raise ValueError
    if len(thr) != 1:
        raise ValueError("Length mismatch for remove small object postprocessing step")
    return unit, thr


@pytest.mark.parametrize("tokens", NNUNET_TOKENS, ids=" ".join)
def test_remove_small_tokens_nnunet(tokens):
    """Wherever SCT accepts the tokens our masks are SCT's; elsewhere, documented rules."""
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:3, 0:3, 0:2] = 2  # 18 vox: sc
    lab[5:7, 5:7, 5] = 1  # 4 vox: sc
    lab[8, 8, 8] = 2  # 1 vox: sc + lesion
    lab[4, 0:4, 9] = 2  # 4 vox: sc + lesion
    pred = Prediction(
        maps={"labels": lab},
        classes={"labels": {1: "sc", 2: "lesion"}},
        groups={"labels": {"sc": (1, 2), "lesion": (2,)}},
    )
    zooms = (1.0, 1.0, 2.0)
    try:
        _sct_nnunet_sizes(tokens)
        sct_ok = True
    except ValueError:
        sct_ok = False
    if sct_ok:
        for compat in (False, True):
            outs = _split(SCI, pred, zooms, remove_small=tokens, sct_compat=compat)
            for suffix, values in (("_sc_seg", (1, 2)), ("_lesion_seg", (2,))):
                expected = sct_postprocess(np.isin(lab, values), zooms, remove_small=tokens)
                np.testing.assert_array_equal(outs[suffix].labels, expected.astype(np.uint8))
        sizes, notes = _min_sizes(SCI, tokens)
        assert notes == [] and len(sizes) == 2
        return
    with pytest.raises(SpinesegError, match="sct_deepseg refuses this"):
        _split(SCI, pred, zooms, remove_small=tokens, sct_compat=True)
    if len(tokens) > 2:
        with pytest.raises(SpinesegError, match="one value for all or one per output file"):
            _min_sizes(SCI, tokens)
        return
    sizes, notes = _min_sizes(SCI, tokens)
    assert len(notes) == 1 and "sct_deepseg refuses it" in notes[0]
    friendly = pp.parse_remove_small(tokens)
    assert sizes == (friendly * 2 if len(friendly) == 1 else friendly)


def test_mm3_rounds_half_to_even_like_sct():
    """5 mm3 at 2 mm3 per voxel is 2.5 voxels: np.round gives 2, so 2-voxel objects stay."""
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[0, 0, 0:2] = 1  # 2 vox
    lab[3, 3, 3] = 1  # 1 vox
    lab[5, 0:3, 5] = 1  # 3 vox
    pred = Prediction(
        maps={"labels": lab},
        classes={"labels": {1: "sc", 2: "lesion"}},
        groups={"labels": {"sc": (1, 2), "lesion": (2,)}},
    )
    zooms = (1.0, 1.0, 2.0)
    # 4/2 = 2 ; 5/2 = 2.5 -> 2 ; 6/2 = 3 ; 7/2 = 3.5 -> 4
    for tokens, kept in ((["4mm3"], 5), (["5mm3"], 5), (["6mm3"], 3), (["7mm3"], 0)):
        expected = sct_postprocess(lab.astype(bool), zooms, remove_small=tokens)
        out = _split(SCI, pred, zooms, remove_small=tokens)["_sc_seg"].labels
        np.testing.assert_array_equal(out, expected.astype(np.uint8))
        assert out.sum() == kept, tokens
    # 0.8 mm iso: 32 mm3 = 62.5 voxels (in decimal) -> 62, in SCT's and our arithmetic
    assert pp.MinSize(32, "mm3").voxels((0.8, 0.8, 0.8)) == 62
    unit, thr = _sct_nnunet_sizes(["32mm3"])
    assert np.round(thr[0] / np.prod(sct_get_dimension_zooms((0.8, 0.8, 0.8)))) == 62


# ------------------------------------------------------------------------------------------
# The 7T ivadomed task: -remove-small and -thr
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_7t():
    from napari_spineseg.engines.ivadomed_onnx import IvadomedOnnxModel

    return IvadomedOnnxModel.load(MODELS / "gm_sc_7t" / "model_7t_multiclass_gm_sc_unet2d")


def _probs_7t() -> np.ndarray:
    p = np.zeros((12, 12, 6, 2), np.float32)
    p[1:3, 1:3, 1, 0] = 0.9  # 4 vox sc
    p[6, 6, 1:3, 0] = 0.7  # 2 vox sc
    p[9, 9, 4, 0] = 0.5  # exactly the threshold: kept by ivadomed's >=
    p[9, 2, 4, 0] = np.nextafter(np.float32(0.5), np.float32(0))  # just below: dropped
    p[2:5, 8, 3, 1] = 0.8  # 3 vox gm
    p[10, 10, 0:5, 1] = 0.95  # 5 vox gm
    p[0, 11, 5, 1] = 0.6  # 1 vox gm
    return p


TOKENS_7T = [
    ["10", "10"],  # no unit on the last token: ivadomed skips it, the JSON's 3 vox stay
    ["2", "4vox"],
    ["3vox", "5vox"],
    ["8mm3", "8mm3"],
    ["10VOX", "10VOX"],  # 'vox' is case-sensitive: skipped too
    ["5vox"],  # one value for two classes: ValueError (length mismatch)
    ["5mm"],  # 'mm' lets it through, then int('5mm') fails
    ["2.5vox", "2vox"],
    ["2,4vox"],  # int('2,4') fails; ours: one per class
]


def _ivadomed_outcome(tokens, probs, json_post, pixdim, thr=None):
    try:
        return ivadomed_postprocess(
            probs,
            json_post,
            {
                "binarize_prediction": thr,
                "keep_largest": 0,
                "fill_holes": 0,
                "remove_small": tokens,
            },
            pixdim,
        )
    except ValueError:
        return None


@pytest.mark.parametrize("tokens", TOKENS_7T, ids=" ".join)
def test_remove_small_tokens_7t(model_7t, tokens):
    probs = _probs_7t()
    pixdim = (0.5, 0.5, 2.0)
    expected = _ivadomed_outcome(tokens, probs, model_7t.postprocessing, pixdim)
    try:
        friendly = pp.parse_remove_small(tokens)
    except SpinesegError:
        friendly = None
    for compat in (False, True):
        if expected is None and friendly is None:  # neither SCT nor our reading takes it:
            with pytest.raises(SpinesegError, match="cannot read"):  # refused when made
                RunOptions(remove_small=tokens, sct_compat=compat)
            continue
        if expected is None and compat:
            with pytest.raises(SpinesegError, match="sct_deepseg refuses this"):
                _min_sizes(GM_SC_7T, tokens, sct_compat=compat)
            continue
        sizes, notes = _min_sizes(GM_SC_7T, tokens, sct_compat=compat)
        steps, _soft = model_7t._postprocessing_steps(None, sizes, False, False)
        out = model_7t._apply_postprocessing(probs, steps, pixdim)
        if expected is not None:
            np.testing.assert_array_equal(out, expected)
            if sizes is None:
                assert "was ignored, as sct_deepseg ignores it" in notes[0]
        else:
            assert "sct_deepseg refuses it" in notes[0]
            assert sizes == (friendly * 2 if len(friendly) == 1 else friendly)


def test_7t_catalog_default_is_an_sct_command_line_for_the_json_default(model_7t):
    """The widget shows the task default; run as is it must be SCT's, without a note."""
    tokens = list(GM_SC_7T.postprocess.remove_small)
    probs = _probs_7t()
    sizes, notes = _min_sizes(GM_SC_7T, tokens, sct_compat=True)
    assert notes == []
    steps, _ = model_7t._postprocessing_steps(None, sizes, False, False)
    expected = _ivadomed_outcome(tokens, probs, model_7t.postprocessing, (1, 1, 1))
    np.testing.assert_array_equal(model_7t._apply_postprocessing(probs, steps, (1,) * 3), expected)
    steps, _ = model_7t._postprocessing_steps(None, None, False, False)  # the JSON's own
    np.testing.assert_array_equal(model_7t._apply_postprocessing(probs, steps, (1,) * 3), expected)


def test_7t_threshold_boundary_is_inclusive(model_7t):
    probs = _probs_7t()
    steps, _ = model_7t._postprocessing_steps(0.5, 0, False, False)
    out = model_7t._apply_postprocessing(probs, steps, (1.0, 1.0, 1.0))
    assert out[9, 9, 4, 0] == 1 and out[9, 2, 4, 0] == 0
    expected = ivadomed_postprocess(
        probs, {"binarize_prediction": {"thr": 0.5}}, {"binarize_prediction": 0.5}, (1, 1, 1)
    )
    np.testing.assert_array_equal(out, expected)


def test_threshold_range(model_7t, region_model):
    """Default: [0, 1]. SCT mode: any finite number, with SCT's result."""
    lab = rootlets_volume()
    img = nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4))
    run = {"model": region_model, "trust": True, "device": "cpu"}
    with pytest.raises(SpinesegError, match=r"between 0 and 1, got 2\.0 \(with sct_compat"):
        api.segment(img, threshold=2.0, **run)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(SpinesegError, match="threshold must be between 0 and 1"):
            api.segment(img, threshold=bad, sct_compat=True, **run)
    # nnU-Net, SCT: `if threshold:` then data > thr; -1 makes every voxel 1
    out = _split(ROOTLETS, rootlets_prediction(lab), sct_compat=True, threshold=-1.0)
    np.testing.assert_array_equal(out["_rootlets"].labels, sct_postprocess(lab, (1,), -1.0))
    assert out["_rootlets"].labels.all()
    # 7T, SCT: ivadomed binarises at >= 1.5 (nothing); -1 is ivadomed's "no binarisation"
    probs = _probs_7t()
    for thr in (1.5, -1.0):
        steps, soft = model_7t._postprocessing_steps(thr, 0, False, False, sct_compat=True)
        options = {"binarize_prediction": thr, "keep_largest": 0, "fill_holes": 0}
        post = {k: v for k, v in model_7t.postprocessing.items() if k != "remove_small"}
        expected = ivadomed_postprocess(probs, post, options, (1, 1, 1))
        np.testing.assert_array_equal(
            model_7t._apply_postprocessing(probs, steps, (1,) * 3), expected
        )
        assert soft == (thr < 0)
    with pytest.raises(SpinesegError, match=r"threshold must be in \[0, 1\]"):
        model_7t._postprocessing_steps(1.5, 0, False, False)


def test_7t_thr_zero(model_7t):
    """SCT passes -thr 0 to ivadomed, which binarises at >= 0: every voxel becomes 1."""
    from napari_spineseg.phantom import cord_phantom
    from napari_spineseg.progress import Reporter

    probs = _probs_7t()
    options = {"binarize_prediction": 0.0, "keep_largest": 0, "fill_holes": 0}
    sct = ivadomed_postprocess(probs, model_7t.postprocessing, options, (1, 1, 1))
    assert sct.min() == 1  # SCT 7.3's output: all ones, background included
    steps, soft = model_7t._postprocessing_steps(0.0, None, False, False, sct_compat=True)
    np.testing.assert_array_equal(model_7t._apply_postprocessing(probs, steps, (1, 1, 1)), sct)
    assert not soft
    steps, soft = model_7t._postprocessing_steps(0.0, None, False, False)
    assert soft and "binarize_prediction" not in dict(steps)  # default: soft maps
    img, _ = cord_phantom(shape=(64, 64, 4), zooms=(0.25, 0.25, 2.0), seed=3, gm=True)
    pred = model_7t.predict(img, Reporter(), RunOptions(threshold=0, sct_compat=True))
    assert all(m.all() for m in pred.maps.values())


# ------------------------------------------------------------------------------------------
# Orientation fallback (nnU-Net models without image_orientation)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset_json", "name"),
    [
        ({}, "Dataset101_RegionBasedLesionSeg_canproco"),
        ({}, "Dataset501_allSCIsegV2RegionSeed710"),  # 6.x's "SCI" -> RPI rule is gone
        ({}, "Dataset302_RootletsMulticon"),
        ({"image_orientation": "RPI"}, "Dataset101_RegionBasedLesionSeg"),
        ({}, ""),
    ],
)
def test_sct_orientation_rule(dataset_json, name):
    expected = sct_model_orientation(dataset_json, name)
    got = dataset_json.get("image_orientation") or orient.sct_fallback_orientation(name)
    assert got == expected
    spec = catalog._orientation_from_dataset({**dataset_json, "name": name})
    assert spec == orient.sct_to_nibabel(expected)


def _random_model(root: Path, dataset_name: str, image_orientation: str | None = None) -> Path:
    from napari_spineseg.engines._nnunet_random import write_random_model

    folder = write_random_model(
        root / f"{dataset_name}/nnUNetTrainer__nnUNetPlans__3d_fullres",
        labels={"background": 0, "sc": [1, 2], "lesion": 2},
        regions_class_order=[1, 2],
        image_orientation=image_orientation,
    )
    plans = json.loads((folder / "plans.json").read_text())
    plans["dataset_name"] = dataset_name
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder


@pytest.mark.parametrize(
    ("dataset_name", "image_orientation", "nibabel"),
    [
        ("Dataset777_RegionBasedLesionSeg_lab", None, "PSR"),  # SCT AIL
        ("Dataset501_allSCIsegV2RegionSeed710", None, "RAS"),  # SCT LPI
        ("Dataset777_RegionBasedLesionSeg_lab", "RPI", "LAS"),  # dataset.json wins
    ],
)
def test_engine_orientation_for_catalog_and_custom_models(
    tmp_path, dataset_name, image_orientation, nibabel
):
    folder = _random_model(tmp_path, dataset_name, image_orientation)
    custom = catalog.custom_task(folder)
    segmentation.clear_engine_cache()
    for spec in (custom, SCI):  # a lab's model, and a newer model for the SCI task
        engine = segmentation.load_engine(spec, folder, RunOptions(device="cpu"))
        assert engine.orientation == nibabel, spec.id
        segmentation.clear_engine_cache()


# ------------------------------------------------------------------------------------------
# End to end: API and CLI
# ------------------------------------------------------------------------------------------


def test_api_sct_compat_end_to_end_with_the_rootlets_stand_in(tmp_path):
    """The real nnU-Net engine on a phantom: SCT mode = SCT's steps on the raw labels."""
    from napari_spineseg.phantom import cord_phantom

    with zipfile.ZipFile(
        MODELS / "rootlets" / "model-spinal-rootlets-multicon-r20250318.zip"
    ) as zf:
        zf.extractall(tmp_path / "m")
    model = next((tmp_path / "m").rglob("dataset.json")).parent
    img, _ = cord_phantom(shape=(48, 48, 16), zooms=(0.6, 0.6, 2.0), seed=21, rootlets=True)
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(img, path)
    run = {"task": "rootlets", "model": model, "trust": True, "device": "cpu"}
    raw = api.segment(path, **run).outputs["_rootlets"].labels
    assert len(np.unique(raw)) > 2  # several levels: the rules can differ
    ours = api.segment(path, largest=True, remove_small="20", **run)
    sct = api.segment(path, largest=True, remove_small="20", sct_compat=True, **run)
    expected = sct_postprocess(raw, img.header.get_zooms(), keep_largest=1, remove_small=["20"])
    np.testing.assert_array_equal(sct.outputs["_rootlets"].labels, expected)
    per_class = pp.postprocess_multilabel(
        raw, zooms=img.header.get_zooms(), largest=True, min_sizes=pp.MinSize(20)
    )
    np.testing.assert_array_equal(ours.outputs["_rootlets"].labels, per_class)
    assert sct.provenance["settings"]["sct_compat"] is True
    assert "_rootlets: largest" in sct.provenance["postprocessing"]
    noted = api.segment(path, threshold=0.5, **run)
    assert any("-thr 0.5 was ignored" in n for n in noted.provenance["notes"])


def test_cli_flag_reaches_the_api():
    from napari_spineseg import cli

    for command in ("segment", "batch"):
        args = cli._parser().parse_args([command, "rootlets", "-i", "x.nii.gz", "-sct-compat"])
        assert args.sct_compat is True
        args = cli._parser().parse_args([command, "rootlets", "-i", "x.nii.gz"])
        assert args.sct_compat is False
    help_text = cli._parser()._subparsers._group_actions[0].choices["segment"].format_help()
    assert "-sct-compat" in help_text and "all labels as one object" in help_text
