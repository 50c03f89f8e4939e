"""The JSON files of a model (``dataset.json``, ``plans.json``, ivadomed's ``<name>.json``).

They come from release archives and from folders a user points at, so they are untrusted
input, read *before* any trust decision (to name a custom model's classes) and before any
allocation sized by their numbers. Hence:

* a size cap (:data:`MAX_JSON_BYTES`): nothing bigger is read, whatever a zip header or
  the file system claims (a 1.6 MB zip can declare a 3 GB ``dataset.json``);
* UTF-8 only, an object at the top level, at most :data:`MAX_JSON_DEPTH` levels deep
  (``[[[[...]]]]`` 10,000 deep makes Python's parser raise ``RecursionError``);
* ``dataset.json``: labels map a class name to an integer value (or a list of them);
* ``plans.json``: patch sizes, spacings and network widths that a real nnU-Net model can
  have, checked before a network or a sliding window is sized by them.

Every refusal is a :class:`ModelNotInstalledError` naming the file, the value and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelNotInstalledError

#: Largest JSON file read from a model (real ones are a few kB; plans.json < 100 kB).
MAX_JSON_BYTES = 8 << 20
#: Deepest nesting accepted (real files: 6 levels).
MAX_JSON_DEPTH = 64
#: Label values are written as uint8/int16 masks.
MAX_LABEL_VALUE = 32767
MAX_LABELS = 1000
#: Patch bounds: nnU-Net's planner stays far below (3d_fullres ~ 128^3 = 2 M voxels).
MAX_PATCH_EDGE = 2048
MAX_PATCH_VOXELS = 1 << 24  # 16.8 M voxels = 256^3
#: Target spacing bounds in mm (the mouse model uses 0.05 mm).
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0
MAX_FEATURES = 2048
MAX_STAGES = 12
MAX_CONVS = 16
MAX_KERNEL = 15
MAX_STRIDE = 16

_LABEL_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,100}$")


class _Refused(ValueError):
    """A JSON text that is refused; the message says why (file name added by the caller)."""


# ----------------------------------------------------------------------------- reading


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (stops past MAX_JSON_DEPTH)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _read_capped(f) -> bytes:
    """At most MAX_JSON_BYTES + 1 bytes, in small reads (a decompressor inflates each read)."""
    chunks, n = [], 0
    while n <= MAX_JSON_BYTES and (chunk := f.read(1 << 16)):
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


def _too_big(size: int) -> str:
    return (
        f"is {size:,} bytes, more than the {MAX_JSON_BYTES >> 20} MB a model description can have"
    )


def parse_json_object(data: bytes) -> dict:
    """Parse bytes that must hold a JSON object; raises ``_Refused`` with the reason."""
    if len(data) > MAX_JSON_BYTES:
        raise _Refused(_too_big(len(data)))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _Refused(f"is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise _Refused(f"is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Refused(f"holds a JSON {type(obj).__name__} at the top level, expected an object")
    if _depth(obj) > MAX_JSON_DEPTH:
        raise _Refused(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _refusal(where: str, problem: str, fix: str) -> ModelNotInstalledError:
    return ModelNotInstalledError(f"{where} {problem}; {fix}")


def read_json_file(path: str | Path, *, fix: str) -> dict:
    """A model's JSON file as a dict, read with the size cap; ``fix`` ends the message."""
    path = Path(path)
    if path.exists() and not path.is_file():  # opening a FIFO would wait for a writer
        raise _refusal(str(path), "is not a regular file", fix)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_JSON_BYTES:
                raise _refusal(str(path), _too_big(os.fstat(f.fileno()).st_size), fix)
            data = _read_capped(f)  # never more than the cap, whatever stat() said
    except ModelNotInstalledError:
        raise
    except OSError as exc:
        raise _refusal(str(path), f"cannot be read ({exc.strerror or exc})", fix) from exc
    try:
        return parse_json_object(data)
    except _Refused as exc:
        raise _refusal(str(path), str(exc), fix) from None


def read_json_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, *, fix: str
) -> dict:
    """A JSON member of an open zip, read with the size cap (the header is not trusted)."""
    from .archives import member_problem

    where = f"{archive}: {info.filename}"
    problem = member_problem(info)
    if problem is None and info.file_size > MAX_JSON_BYTES:
        problem = _too_big(info.file_size)
    if problem:
        raise _refusal(where, problem, fix)
    try:
        with zf.open(info) as f:
            data = _read_capped(f)
        return parse_json_object(data)
    except _Refused as exc:
        raise _refusal(where, str(exc), fix) from None
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise _refusal(where, f"cannot be read from the archive ({exc})", fix) from exc
    except Exception as exc:  # zlib.error, lzma.LZMAError: corrupt compressed data
        raise _refusal(where, f"is corrupt in the archive ({exc})", fix) from exc


# ----------------------------------------------------------------------------- dataset.json


def _is_label_value(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_LABEL_VALUE


def dataset_problems(dataset: Mapping) -> list[str]:
    """What makes a ``dataset.json`` unusable (empty list: fine). nnU-Net v2 format."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        return [
            "has no 'labels' table (nnU-Net v2 maps each class name to its value, "
            'e.g. {"background": 0, "sc": 1})'
        ]
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(f"has {len(labels)} labels (at most {MAX_LABELS})")
    for name, value in labels.items():
        if not _LABEL_NAME.match(name) or name in {".", ".."}:
            problems.append(
                f"has a label name {name[:60]!r} that cannot be part of a file name "
                "(no '/', '\\' or control characters, 1 to 100 characters)"
            )
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_label_value(v) for v in values):
            hint = ""
            if isinstance(value, str) and name.isdigit():
                hint = " (this looks like an nnU-Net v1 table, value -> name)"
            problems.append(
                f"gives label {name!r} the value {json.dumps(value)[:60]}; expected an "
                f"integer 0..{MAX_LABEL_VALUE} or a list of them (a region){hint}"
            )
    order = dataset.get("regions_class_order")
    if order is not None and not (
        isinstance(order, list) and order and all(_is_label_value(v) for v in order)
    ):
        problems.append(
            f"has regions_class_order {json.dumps(order)[:60]}; expected a list of integers"
        )
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    if not isinstance(channels, dict):
        problems.append(
            f"has channel_names {json.dumps(channels)[:60]}; expected an object "
            '(e.g. {"0": "T2w"})'
        )
    return problems


def check_dataset(dataset: dict, where: str, *, fix: str) -> dict:
    """``dataset`` if usable, else a :class:`ModelNotInstalledError` naming every problem."""
    problems = dataset_problems(dataset)
    if problems:
        raise _refusal(f"{where}:", "dataset.json " + "; ".join(problems), fix)
    return dataset


def read_dataset_json(path: str | Path) -> tuple[dict, str]:
    """(checked dataset.json, its folder) of an nnU-Net model folder or zip, never extracting.

    The folder whose dataset.json has a plans.json next to it wins, shallowest first (as
    :func:`~napari_spineseg.models.archives.find_nnunet_folders` finds them).
    """
    path = Path(path)
    fix = "this is not a usable nnU-Net v2 model (dataset.json, plans.json, fold_N/)"
    if path.is_dir():
        found = sorted(path.rglob("dataset.json"), key=lambda p: len(p.parts))
        found = [p for p in found if (p.parent / "plans.json").is_file()] or found
        if not found:
            raise ModelNotInstalledError(
                f"{path}: no nnU-Net model found (expected a folder with dataset.json, "
                "plans.json and fold_N/checkpoint_*.pth)"
            )
        dataset = read_json_file(found[0], fix=fix)
        return check_dataset(dataset, str(found[0]), fix=fix), str(found[0].parent)
    if not path.is_file() or not zipfile.is_zipfile(path):
        # A NIfTI or any other file given as --model: say what is expected, not "re-download".
        raise ModelNotInstalledError(
            f"{path}: not a model folder or a zip file (give the folder that holds "
            "dataset.json and plans.json, or the model's release .zip)"
        )
    from .archives import open_zip

    with open_zip(path) as zf:
        infos = zf.infolist()
        names = {i.filename for i in infos}
        candidates = sorted(
            (i for i in infos if i.filename.rsplit("/", 1)[-1] == "dataset.json"),
            key=lambda i: i.filename.count("/"),
        )
        with_plans = [
            i for i in candidates if i.filename[: -len("dataset.json")] + "plans.json" in names
        ]
        candidates = with_plans or candidates
        if not candidates:
            raise ModelNotInstalledError(
                f"{path}: the zip contains no dataset.json, so it is not an nnU-Net model"
            )
        info = candidates[0]
        dataset = read_json_member(zf, info, path, fix=fix)
        inner = info.filename.rsplit("/", 1)[0] if "/" in info.filename else ""
        return check_dataset(dataset, f"{path}: {info.filename}", fix=fix), inner


# ----------------------------------------------------------------------------- plans.json


def _ints(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return value


def _resolve(configs: Mapping, name: str) -> tuple[dict | None, str | None]:
    """A configuration with its ``inherits_from`` chain applied (as nnU-Net's PlansManager)."""
    chain: list[str] = []
    current = name
    while True:
        if current in chain:
            return None, f"inherits_from forms a loop ({' -> '.join([*chain, current])})"
        chain.append(current)
        cfg = configs.get(current)
        if not isinstance(cfg, dict):
            return None, f"inherits from {current!r}, which is not a configuration"
        parent = cfg.get("inherits_from")
        if parent is None:
            break
        if not isinstance(parent, str):
            return None, f"inherits_from {json.dumps(parent)[:40]} is not a configuration name"
        current = parent
    merged: dict = {}
    for link in reversed(chain):
        merged.update(configs[link])
    return merged, None


def _configuration_problems(cfg: Mapping) -> list[str]:
    problems = []
    patch = cfg.get("patch_size")
    edges = _ints(patch)
    if edges is None or len(edges) not in (2, 3):
        problems.append(f"patch_size {json.dumps(patch)[:80]} is not 2 or 3 integers")
        edges = None
    elif min(edges) < 1 or max(edges) > MAX_PATCH_EDGE or math.prod(edges) > MAX_PATCH_VOXELS:
        problems.append(
            f"patch_size {edges} ({math.prod(edges):,} voxels per tile) is outside what an "
            f"nnU-Net model uses (1..{MAX_PATCH_EDGE} per axis, at most "
            f"{MAX_PATCH_VOXELS:,} voxels)"
        )
    spacing = cfg.get("spacing")
    ok = isinstance(spacing, list) and spacing
    ok = ok and all(isinstance(s, int | float) and not isinstance(s, bool) for s in spacing)
    if not ok:
        problems.append(f"spacing {json.dumps(spacing)[:80]} is not a list of numbers")
    else:
        bad = [s for s in spacing if not (MIN_SPACING_MM <= s <= MAX_SPACING_MM)]  # NaN too
        if bad:
            problems.append(
                f"spacing {spacing} has {', '.join(repr(s) for s in bad)} mm, outside "
                f"{MIN_SPACING_MM}..{MAX_SPACING_MM:g} mm"
            )
        elif edges is not None and len(spacing) != len(edges):
            problems.append(
                f"spacing {spacing} has {len(spacing)} values for a {len(edges)}D patch_size"
            )
    arch = cfg.get("architecture")
    kwargs = arch.get("arch_kwargs") if isinstance(arch, dict) else None
    if arch is not None and not isinstance(kwargs, dict):
        problems.append("architecture has no arch_kwargs object")
    elif isinstance(kwargs, dict):
        problems += _arch_problems(kwargs)
    for key in ("UNet_base_num_features", "unet_max_num_features"):  # plans before nnU-Net 2.3
        v = cfg.get(key)
        if v is not None and not (isinstance(v, int) and 1 <= v <= MAX_FEATURES):
            problems.append(f"{key} {json.dumps(v)[:40]} is outside 1..{MAX_FEATURES}")
    return problems


def _arch_problems(kwargs: Mapping) -> list[str]:
    problems = []
    n = kwargs.get("n_stages")
    if n is not None and not (isinstance(n, int) and 1 <= n <= MAX_STAGES):
        problems.append(f"n_stages {json.dumps(n)[:40]} is outside 1..{MAX_STAGES}")
    feats = kwargs.get("features_per_stage")
    if feats is not None:
        f = _ints(feats if isinstance(feats, list) else [feats])
        if f is None or min(f) < 1 or max(f) > MAX_FEATURES or len(f) > MAX_STAGES:
            problems.append(
                f"features_per_stage {json.dumps(feats)[:80]} is outside 1..{MAX_FEATURES} "
                f"features per stage, at most {MAX_STAGES} stages"
            )
    for key in ("n_conv_per_stage", "n_conv_per_stage_decoder"):
        value = kwargs.get(key)
        if value is None:
            continue
        convs = _ints(value if isinstance(value, list) else [value])
        if convs is None or min(convs) < 1 or max(convs) > MAX_CONVS or len(convs) > MAX_STAGES:
            problems.append(f"{key} {json.dumps(value)[:80]} is outside 1..{MAX_CONVS} per stage")
    for key, top in (("kernel_sizes", MAX_KERNEL), ("strides", MAX_STRIDE)):
        value = kwargs.get(key)
        if value is None:
            continue
        rows = value if isinstance(value, list) else None
        flat = [x for r in rows or [] for x in (r if isinstance(r, list) else [r])]
        if rows is None or len(rows) > MAX_STAGES or _ints(flat) is None:
            problems.append(f"{key} {json.dumps(value)[:80]} is not a list of integers per stage")
        elif min(flat) < 1 or max(flat) > top:
            problems.append(f"{key} {json.dumps(value)[:80]} is outside 1..{top}")
    return problems


def plans_problems(plans: Mapping, configuration: str | None = None) -> list[str]:
    """What makes a ``plans.json`` unusable (empty: fine), for one configuration or all.

    Checked before anything is sized by these numbers: patch size (sliding-window tiles and
    Gaussian weights), target spacing (resampled image size), network widths.
    """
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not configs:
        return ["has no 'configurations' table"]
    problems = []
    for key in ("transpose_forward", "transpose_backward"):
        value = plans.get(key)
        if value is not None and (_ints(value) is None or sorted(value) != [0, 1, 2]):
            problems.append(f"{key} {json.dumps(value)[:40]} is not a permutation of [0, 1, 2]")
    names = [configuration] if configuration is not None else list(configs)
    for name in names:
        cfg, problem = _resolve(configs, name)
        if problem:
            problems.append(f"configuration {name!r} {problem}")
            continue
        problems += [f"configuration {name!r}: {p}" for p in _configuration_problems(cfg)]
    return problems


def check_plans(plans: dict, where: str, *, fix: str, configuration: str | None = None) -> dict:
    """``plans`` if usable, else a :class:`ModelNotInstalledError` with every number refused."""
    problems = plans_problems(plans, configuration)
    if problems:
        raise _refusal(f"{where}:", "plans.json " + "; ".join(problems), fix)
    return plans


def nnunet_folder_problems(folder: str | Path, root: str | Path | None = None) -> list[str]:
    """Problems of an nnU-Net folder's dataset.json and plans.json (read capped, checked).

    File names are given relative to ``root`` when given (an install's staging folder is
    temporary: the user knows the archive, and its inner path).
    """
    folder = Path(folder)
    problems = []
    for name, check in (("dataset.json", dataset_problems), ("plans.json", plans_problems)):
        path = folder / name
        shown = str(path.relative_to(root)) if root is not None else str(path)
        try:
            data = read_json_file(path, fix="")
        except ModelNotInstalledError as exc:
            problems.append(shown + str(exc)[len(str(path)) :].rstrip("; "))
            continue
        problems += [f"{shown} {p}" for p in check(data)]
    return problems
