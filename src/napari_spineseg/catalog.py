"""The task catalog: the five ``sct_deepseg`` tasks as declarative data, plus custom models.

Everything a front end needs to know about a task lives here, as plain frozen dataclasses,
so that the widget, the CLI and the docs read the same facts: where the model comes from
(release URL and, when published, its SHA-256), which backend runs it, what the classes
are called and coloured, which files SCT writes (suffixes and how a prediction is split
into them) and which post-processing SCT applies by default. Keeping SCT's names and
suffixes exactly means our outputs drop into SCT pipelines (``sct_process_segmentation``,
``sct_analyze_lesion``, ``manual-correction``) unchanged.

Facts come from SCT's ``deepseg/models.py`` and ``scripts/sct_deepseg.py`` (see
``docs/tasks.md``). None of the five release archives has a published SHA-256 (SCT does
not pin hashes), so their ``sha256`` is ``None`` and the model store records the hash of
the first download (trust on first use) and says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotInstalledError, TaskError

RGBA = tuple[float, float, float, float]

BACKENDS = ("nnunet", "ivadomed_onnx", "totalspineseg")


@dataclass(frozen=True)
class ModelSource:
    """One downloadable archive of a model release.

    ``sha256`` is ``None`` when no hash is published: the store then records the hash of
    the first download ("trust on first use") and reports that the release is not pinned.
    """

    url: str
    sha256: str | None
    filename: str


@dataclass(frozen=True)
class OutputSpec:
    """One output file of a task, as SCT names and fills it.

    ``map``: the prediction map it is cut from (``Prediction.maps[map]``; ``map_aliases``
    are accepted too, so engines may use their own names). ``classes``: for a binary file,
    the class names OR-ed into the mask (a region such as SCIseg's ``sc`` = values 1 and 2);
    ``None`` for a multi-label file written as predicted. ``names``: value -> class name of
    the written file (binary files: ``{1: name}``).
    """

    suffix: str
    map: str = "labels"
    classes: tuple[str, ...] | None = None
    binary: bool = True
    names: Mapping[int, str] = field(default_factory=dict)
    colors: Mapping[int, RGBA] = field(default_factory=dict)
    map_aliases: tuple[str, ...] = ()
    title: str = ""


@dataclass(frozen=True)
class PostprocessSpec:
    """SCT's default post-processing for a task (``segment_non_ivadomed`` order).

    ``threshold``: binarize soft outputs at this value (``None``: the model outputs labels).
    ``remove_small``: e.g. ``("3vox",)`` or per class ``("10", "20vox")``.
    """

    threshold: float | None = None
    largest: bool = False
    fill_holes: bool = False
    remove_small: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """Everything about one segmentation task (see module docstring)."""

    id: str
    aliases: tuple[str, ...]
    title: str
    description: str
    species: str
    contrasts: tuple[str, ...]
    citation: str
    backend: str
    sources: tuple[ModelSource, ...]
    orientation: str
    classes: Mapping[int, str]
    colors: Mapping[int, RGBA]
    outputs: tuple[OutputSpec, ...]
    postprocess: PostprocessSpec = PostprocessSpec()
    url: str = ""
    sct_model: str = ""
    flags: tuple[str, ...] = ()
    custom: bool = False
    model_path: str | None = None  # custom tasks: the folder or zip given by the user

    @property
    def pinned(self) -> bool:
        """True when every archive has a known SHA-256 (no trust on first use needed)."""
        return bool(self.sources) and all(s.sha256 for s in self.sources)

    def install_command(self) -> str:
        """The one command that installs this task's model."""
        if self.custom:
            return f"spineseg install {self.id} --from {self.model_path} --trust"
        return f"spineseg install {self.id}"


# ----------------------------------------------------------------------------- colours

RED: RGBA = (1.0, 0.0, 0.0, 1.0)
CYAN: RGBA = (0.0, 1.0, 1.0, 1.0)
YELLOW: RGBA = (1.0, 0.85, 0.0, 1.0)
BLUE: RGBA = (0.2, 0.4, 1.0, 1.0)
GREEN: RGBA = (0.2, 0.85, 0.2, 1.0)
MAGENTA: RGBA = (1.0, 0.2, 1.0, 1.0)


def _hsv(h: float, s: float = 0.75, v: float = 0.95) -> RGBA:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r, 4), round(g, 4), round(b, 4), 1.0)


def palette(values, start: float = 0.0) -> dict[int, RGBA]:
    """Distinct colours for label values (golden-ratio hue steps, stable per value order)."""
    return {int(v): _hsv(start + 0.61803398875 * i) for i, v in enumerate(values)}


# ----------------------------------------------------------------------------- tables


def spinal_level_name(n: int) -> str:
    """Spinal level of rootlet value ``n`` (SCT rootlets: 2 = C2 ... 8 = C8, 9 = T1 ...)."""
    if 1 <= n <= 8:
        return f"C{n}"
    if 9 <= n <= 20:
        return f"T{n - 8}"
    if 21 <= n <= 25:
        return f"L{n - 20}"
    return f"level {n}"


ROOTLET_CLASSES: dict[int, str] = {v: f"{spinal_level_name(v)} rootlets" for v in range(2, 10)}

_VERT = ["C"] * 7 + ["T"] * 12 + ["L"] * 5
_VERT_NAMES = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
_VERT_NAMES += [f"L{i}" for i in range(1, 6)]


def _tss_all_classes() -> dict[int, str]:
    """TotalSpineSeg's final labels (``resources/labels_maps/tss_map.json``)."""
    t: dict[int, str] = {1: "spinal cord", 2: "spinal canal"}
    t.update({10 + i: f"vertebra C{i}" for i in range(1, 8)})
    t.update({20 + i: f"vertebra T{i}" for i in range(1, 13)})
    t.update({40 + i: f"vertebra L{i}" for i in range(1, 6)})
    t[50] = "sacrum"
    discs = [f"C{i}-C{i + 1}" for i in range(2, 7)]  # 63..67
    t.update({63 + i: f"disc {d}" for i, d in enumerate(discs)})
    discs_t = ["C7-T1"] + [f"T{i}-T{i + 1}" for i in range(1, 12)]  # 71..82
    t.update({71 + i: f"disc {d}" for i, d in enumerate(discs_t)})
    discs_l = ["T12-L1"] + [f"L{i}-L{i + 1}" for i in range(1, 5)]  # 91..95
    t.update({91 + i: f"disc {d}" for i, d in enumerate(discs_l)})
    t[100] = "disc L5-S"
    return t


def _tss_all_colors(classes: Mapping[int, str]) -> dict[int, RGBA]:
    colors: dict[int, RGBA] = {1: YELLOW, 2: (0.3, 0.55, 1.0, 1.0), 50: (0.85, 0.55, 0.3, 1.0)}
    vert = [v for v in classes if 11 <= v <= 47]
    discs = [v for v in classes if v >= 63]
    colors.update(palette(vert, start=0.05))
    # discs alternate between two light tones so neighbours stay distinguishable
    colors.update(
        {
            v: (0.95, 0.95, 0.95, 1.0) if i % 2 else (0.7, 1.0, 0.7, 1.0)
            for i, v in enumerate(discs)
        }
    )
    return colors


def _disc_level_name(n: int) -> str:
    """SCT disc-level convention: 1 = top of C1, 2 = C1-C2, 3 = C2-C3 ... 25 = L5-S."""
    if n == 1:
        return "top of C1"
    if n == 25:
        return "disc L5-S"
    return f"disc {_VERT_NAMES[n - 2]}-{_VERT_NAMES[n - 1]}"


TSS_ALL_CLASSES = _tss_all_classes()
TSS_DISC_CLASSES: dict[int, str] = {n: _disc_level_name(n) for n in range(1, 26)}


# ----------------------------------------------------------------------------- citations

CITATION_7T = (
    "Laines Medina NJ, Gros C, Cohen-Adad J, Callot V, Le Troter A. 2D Multi-Class Model for "
    "Gray and White Matter Segmentation of the Cervical Spinal Cord at 7T. arXiv:2110.06516 "
    "(2021)."
)
CITATION_MOUSE = (
    "Cohen-Adad J. Segmentation model of ex vivo mouse spinal cord white and gray matter "
    "(v0.5). Zenodo (2024). doi:10.5281/zenodo.10819207"
)
CITATION_SCI = (
    "Karthik EN, Valosek J, Farner L, Pfyffer D, Schading-Sassenhausen S, Lebret A, David G, "
    "Smith AC, Weber KA II, Seif M, Freund P, Cohen-Adad J. SCIsegV2: A Universal Tool for "
    "Segmentation of Intramedullary Lesions in Spinal Cord Injury. Applications of Medical "
    "Artificial Intelligence (AMAI 2024), Springer, 2025, pp. 198-209. "
    "doi:10.1007/978-3-031-82007-6_19"
)
CITATION_ROOTLETS = (
    "Valosek J, Mathieu T, Schlienger R, Kowalczyk OS, Cohen-Adad J. Automatic Segmentation of "
    "the Spinal Cord Nerve Rootlets. Imaging Neuroscience 2 (2024). doi:10.1162/imag_a_00218; "
    "multi-contrast model: Krejci K et al. RootletSeg: Deep learning method for spinal rootlets "
    "segmentation across MRI contrasts. arXiv:2509.16255 (2025)."
)
CITATION_TSS = (
    "Warszawer Y, Molinier N, Valosek J, Shirbint E, Benveniste PL, Achiron A, Eshaghi A, "
    "Cohen-Adad J. Fully Automatic Vertebrae and Spinal Cord Segmentation Using a Hybrid "
    "Approach Combining nnU-Net and Iterative Algorithm. Proceedings of the 32nd Annual "
    "Meeting of ISMRM (2024)."
)

# ----------------------------------------------------------------------------- the tasks

_URL_7T = (
    "https://github.com/ivadomed/model_seg_gm-wm_t2star_7t_unet3d-multiclass/archive/refs/"
    "tags/r20211012.zip"
)
_URL_MOUSE = (
    "https://github.com/ivadomed/model_seg_mouse-sc_wm-gm_t1/releases/download/v0.4/model.zip"
)
_URL_SCI = (
    "https://github.com/ivadomed/model_seg_sci/releases/download/r20240729/"
    "model_SCIsegV2_r20240729.zip"
)
_URL_ROOTLETS = (
    "https://github.com/ivadomed/model-spinal-rootlets/releases/download/r20250318/"
    "model-spinal-rootlets-multicon-r20250318.zip"
)
_URL_TSS = "https://github.com/neuropoly/totalspineseg/releases/download/r20251124/"


def _tss_sources() -> tuple[ModelSource, ...]:
    """TotalSpineSeg's weights as its installed package declares them (as SCT does).

    The labelling algorithm comes from the installed ``totalspineseg`` package, and each
    package version expects the weights of its own release (``Project-URL:
    Dataset10x_...`` in its metadata); without the package, the release SCT 7.3 pins.
    """
    urls: list[str] = []
    try:
        from importlib.metadata import PackageNotFoundError, metadata

        meta = metadata("totalspineseg")
        for entry in meta.get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().startswith("Dataset10") and url.strip().endswith(".zip"):
                urls.append(url.strip())
    except PackageNotFoundError:
        urls = []
    if len(urls) != 2:
        urls = [
            _URL_TSS + "Dataset101_TotalSpineSeg_step1_r20251124.zip",
            _URL_TSS + "Dataset102_TotalSpineSeg_step2_r20251124.zip",
        ]
    return tuple(ModelSource(u, None, u.rsplit("/", 1)[1]) for u in sorted(urls))


def _binary(suffix: str, cls: str, color: RGBA, title: str, aliases=()) -> OutputSpec:
    return OutputSpec(
        suffix=suffix,
        classes=(cls,),
        binary=True,
        names={1: cls},
        colors={1: color},
        title=title,
        map_aliases=tuple(aliases),
    )


GM_SC_7T = TaskSpec(
    id="gm_sc_7t_t2star",
    aliases=("seg_gm_sc_7t_t2star",),
    title="SC/GM on 7T T2*w",
    description="Spinal cord and gray matter segmentation on T2*-weighted images at 7T "
    "(ivadomed 2D U-Net, 72 subjects: 34 healthy, 25 ALS, 13 MS).",
    species="human",
    contrasts=("t2star",),
    citation=CITATION_7T,
    backend="ivadomed_onnx",
    sources=(ModelSource(_URL_7T, None, "model_7t_multiclass_gm_sc_unet2d-r20211012.zip"),),
    orientation="RAS",  # ivadomed: nib.as_closest_canonical, axial slices
    classes={1: "sc", 2: "gm"},
    colors={1: RED, 2: CYAN},
    outputs=(
        _binary("_7t_multiclass_sc", "sc", RED, "spinal cord"),
        _binary("_7t_multiclass_gm", "gm", CYAN, "gray matter"),
    ),
    # The model JSON asks for binarize 0.5 + remove_small 3 vox; SCT 7's defaults
    # (-largest 0, -fill-holes 0) delete keep_largest/fill_holes from that config.
    # remove_small as an sct_deepseg command line that SCT accepts (one per class, unit on
    # the last value) and that reproduces the JSON's 3 voxels per class.
    postprocess=PostprocessSpec(threshold=0.5, remove_small=("3", "3vox")),
    url="https://github.com/ivadomed/model_seg_gm-wm_t2star_7t_unet3d-multiclass",
    sct_model="model_7t_multiclass_gm_sc_unet2d",
    flags=("thr",),
)

GM_WM_MOUSE = TaskSpec(
    id="gm_wm_mouse_t1",
    aliases=("seg_mouse_gm_wm_t1w",),
    title="Mouse GM/WM (ex vivo T1w)",
    description="Gray and white matter segmentation of the ex vivo mouse spinal cord on "
    "T1-weighted MRI (nnU-Net 3d_fullres, 22 mice / 72 chunks at 0.05 mm isotropic).",
    species="mouse",
    contrasts=("t1",),
    citation=CITATION_MOUSE,
    backend="nnunet",
    sources=(ModelSource(_URL_MOUSE, None, "model_seg_gm_wm_mouse_nnunet-v0.4.zip"),),
    orientation="RAS",  # SCT default "LPI" (its naming) = nibabel RAS+
    classes={1: "GM", 2: "WM"},
    colors={1: CYAN, 2: RED},
    outputs=(
        _binary("_GM_seg", "GM", CYAN, "gray matter"),
        _binary("_WM_seg", "WM", RED, "white matter"),
    ),
    url="https://github.com/ivadomed/model_seg_mouse-sc_wm-gm_t1",
    sct_model="model_seg_gm_wm_mouse_nnunet",
    flags=("test_time_aug",),
)

LESION_SCI = TaskSpec(
    id="lesion_sci_t2",
    aliases=("seg_sc_lesion_t2w_sci",),
    title="SCI lesion + cord (T2w)",
    description="Intramedullary lesion and spinal cord segmentation in spinal cord injury "
    "(SCIsegV2, nnU-Net, T2w from 7 sites: traumatic, ischemic, DCM).",
    species="human",
    contrasts=("t2",),
    citation=CITATION_SCI,
    backend="nnunet",
    sources=(ModelSource(_URL_SCI, None, "model_SCIsegV2_r20240729.zip"),),
    # The release's dataset.json says image_orientation "RPI" (model_seg_sci's conversion
    # script writes it); without it SCT falls back by dataset name: LPI (= nibabel RAS).
    orientation="RAS",
    classes={1: "sc", 2: "lesion"},
    colors={1: RED, 2: CYAN},
    outputs=(
        _binary("_sc_seg", "sc", RED, "spinal cord (includes the lesion)"),
        _binary("_lesion_seg", "lesion", CYAN, "lesion"),
    ),
    url="https://github.com/ivadomed/model_seg_sci",
    sct_model="model_seg_sci_multiclass_sc_lesion_nnunet",
    flags=("test_time_aug",),
)

ROOTLETS = TaskSpec(
    id="rootlets",
    aliases=("seg_spinal_rootlets_t2w",),
    title="Spinal nerve rootlets",
    description="Level-specific segmentation of the dorsal and ventral spinal nerve rootlets "
    "C2-T1 (value = spinal level: 2 = C2 ... 8 = C8, 9 = T1) on T2w and MP2RAGE.",
    species="human",
    contrasts=("t2", "UNIT1", "T1w-INV1", "T1w-INV2"),
    citation=CITATION_ROOTLETS,
    backend="nnunet",
    sources=(ModelSource(_URL_ROOTLETS, None, "model-spinal-rootlets-multicon-r20250318.zip"),),
    orientation="RAS",
    classes=ROOTLET_CLASSES,
    colors=palette(ROOTLET_CLASSES, start=0.0),
    outputs=(
        OutputSpec(
            suffix="_rootlets",
            classes=None,
            binary=False,
            names=ROOTLET_CLASSES,
            colors=palette(ROOTLET_CLASSES, start=0.0),
            title="rootlets by spinal level",
        ),
    ),
    url="https://github.com/ivadomed/model-spinal-rootlets",
    sct_model="model_seg_spinal_rootlets_nnunet",
    flags=("test_time_aug",),
)

SPINE = TaskSpec(
    id="spine",
    aliases=("totalspineseg",),
    title="TotalSpineSeg (vertebrae, discs, cord, canal)",
    description="Instance segmentation and labelling of vertebrae, intervertebral discs, "
    "spinal cord and canal on any MRI contrast (TotalSpineSeg: two nnU-Nets + iterative "
    "labelling). Outputs the disc levels and the step-1 labels (SCT default -label-vert 0).",
    species="human",
    contrasts=("any",),
    citation=CITATION_TSS,
    backend="totalspineseg",
    sources=_tss_sources(),
    orientation="RAS",  # TSS: canonical orientation, 1 mm isotropic, back to input grid
    classes=TSS_ALL_CLASSES,
    colors=_tss_all_colors(TSS_ALL_CLASSES),
    outputs=(
        OutputSpec(
            suffix="_totalspineseg_discs",
            map="discs",
            classes=None,
            binary=False,
            names=TSS_DISC_CLASSES,
            colors=palette(TSS_DISC_CLASSES, start=0.3),
            map_aliases=("levels", "step1_levels"),
            title="disc levels (single voxels)",
        ),
        OutputSpec(
            suffix="_totalspineseg_all",
            map="all",
            classes=None,
            binary=False,
            names=TSS_ALL_CLASSES,
            colors=_tss_all_colors(TSS_ALL_CLASSES),
            map_aliases=("labels", "step1_output", "step2_output"),
            title="vertebrae, discs, cord and canal",
        ),
    ),
    url="https://github.com/neuropoly/totalspineseg",
    sct_model="model_seg_spine_contrast_agnostic",
    flags=("label_vert",),
)

TASKS: dict[str, TaskSpec] = {
    t.id: t for t in (GM_SC_7T, GM_WM_MOUSE, LESION_SCI, ROOTLETS, SPINE)
}
_ALIASES: dict[str, str] = {a: t.id for t in TASKS.values() for a in t.aliases}


def get_task(name_or_alias: str | TaskSpec) -> TaskSpec:
    """Look a task up by id or SCT's old name (``seg_sc_lesion_t2w_sci`` -> ``lesion_sci_t2``)."""
    if isinstance(name_or_alias, TaskSpec):
        return name_or_alias
    key = str(name_or_alias).strip()
    if key in TASKS:
        return TASKS[key]
    if key in _ALIASES:
        return TASKS[_ALIASES[key]]
    low = key.lower()
    for k, v in {**{t: t for t in TASKS}, **_ALIASES}.items():
        if k.lower() == low:
            return TASKS[v]
    raise TaskError(
        f"unknown task {key!r}; available tasks: {', '.join(TASKS)} "
        "(list them with `spineseg tasks`; for your own nnU-Net model use --model FOLDER)"
    )


# ----------------------------------------------------------------------------- custom models

_LVL = re.compile(r"^lvl(\d+)$", re.IGNORECASE)


def _read_dataset_json(path: Path) -> tuple[dict, str]:
    """dataset.json of a model folder or zip (size-capped and checked, never extracted)."""
    from .models.model_json import read_dataset_json

    return read_dataset_json(path)


def outputs_from_labels(
    labels: Mapping[str, object],
) -> tuple[dict[int, str], tuple[OutputSpec, ...]]:
    """SCT's generic rule for nnU-Net ``dataset.json`` labels (``inference.segment_nnunet``).

    * labels all named ``lvl<N>`` -> one multi-label ``_rootlets`` file;
    * only ``sc`` -> one binary ``_seg`` file;
    * otherwise one binary ``_<label>_seg`` file per label (list-valued regions OR-ed).
    Returns (value -> class name, outputs).
    """
    fg = {k: v for k, v in labels.items() if k != "background"}
    classes: dict[int, str] = {}
    for name, value in fg.items():  # plain labels first: their value is theirs
        if not isinstance(value, list | tuple):
            classes[int(value)] = name
    for name, value in fg.items():  # a region takes its lowest value not already named
        if isinstance(value, list | tuple):
            free = [int(v) for v in sorted(value) if int(v) not in classes]
            if free:  # (a region made only of named values needs no value of its own)
                classes[free[0]] = name
    if fg and all(_LVL.match(k) for k in fg):
        names = {int(_LVL.match(k).group(1)): k for k in fg}
        return names, (
            OutputSpec(
                suffix="_rootlets",
                classes=None,
                binary=False,
                names=names,
                colors=palette(names),
                title="multi-label",
            ),
        )
    cols = palette(range(len(fg)))
    if list(fg) == ["sc"]:
        return classes, (_binary("_seg", "sc", RED, "sc"),)
    outs = tuple(_binary(f"_{name}_seg", name, cols[i], name) for i, name in enumerate(fg))
    return classes, outs


def custom_task(folder_or_zip: str | Path) -> TaskSpec:
    """A task for any nnU-Net v2 model folder or zip (classes from its ``dataset.json``)."""
    path = Path(folder_or_zip).expanduser().resolve()
    if not path.exists():
        raise ModelNotInstalledError(f"{path}: no such model folder or zip")
    dataset, _inner = _read_dataset_json(path)
    labels = dataset.get("labels") or {}
    if not isinstance(labels, dict) or not labels:
        raise ModelNotInstalledError(f"{path}: dataset.json has no 'labels' table")
    classes, outputs = outputs_from_labels(labels)
    stem = path.name[:-4] if path.name.lower().endswith(".zip") else path.name
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    return TaskSpec(
        id=f"custom-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}",
        aliases=(),
        title=f"custom nnU-Net model {stem}",
        description=f"User-supplied nnU-Net v2 model from {path}",
        species="unknown",
        contrasts=tuple(str(c) for c in channels.values()) if isinstance(channels, dict) else (),
        citation="",
        backend="nnunet",
        sources=(ModelSource(path.as_uri(), None, path.name),),
        orientation=_orientation_from_dataset(dataset),
        classes=classes,
        colors=palette(classes),
        outputs=outputs,
        custom=True,
        model_path=str(path),
    )


def _orientation_from_dataset(dataset: dict) -> str:
    """``image_orientation`` (SCT naming, e.g. "RPI") -> nibabel axcodes; else SCT's fallback.

    The fallback goes by the dataset's name (``dataset.json`` ``name`` here; the engine
    checks the plans' ``dataset_name`` when the model is loaded, as SCT does).
    """
    from .engines._nnunet_orientation import sct_fallback_orientation, sct_to_nibabel

    sct = dataset.get("image_orientation")
    try:
        return sct_to_nibabel(sct if isinstance(sct, str) else "")
    except ValueError:
        return sct_to_nibabel(sct_fallback_orientation(dataset.get("name")))


def tasks() -> list[TaskSpec]:
    """The catalog's tasks, in display order."""
    return list(TASKS.values())
