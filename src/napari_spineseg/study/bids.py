"""A BIDS dataset in, a BIDS-derivatives dataset out: discovery, layout, resume, status.

Why: a study is segmented as a whole, often over several nights, so the output folder has
to say by itself what is finished. A mask is *done* when every output file of its task
exists with a sidecar recording the same run key (task, model hash, requested settings)
and the BIDS ``Sources`` of its image; anything else is redone on the next run (a run
killed between two output files leaves the image "pending", never half counted). Masks a
rater has corrected (a ``"Manual"`` entry in the sidecar) are never recomputed without
``--overwrite``. Failures are logged in ``DERIV/.spineseg/failures.json`` with their
message, and the batch's plan (raw root, task, files) in ``DERIV/.spineseg/batch.json``,
so ``spineseg batch --status DERIV`` answers without the raw data being re-scanned.

Layout (BIDS derivatives)::

    DERIV/dataset_description.json          DatasetType "derivative", GeneratedBy
    DERIV/sub-01/ses-01/anat/sub-01_ses-01_T2w<SCT suffix>.nii.gz  (+ .json sidecar)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import catalog, sidecar
from ..catalog import TaskSpec
from ..errors import SpinesegError
from ..io.checks import split_nifti_name

BIDS_VERSION = "1.9.0"
STATE_DIR = ".spineseg"  # hidden: ignored by the BIDS validator
PLAN_JSON = "batch.json"
FAILURES_JSON = "failures.json"
RAW_LINK = "raw"  # DatasetLinks name of the source dataset (BIDS URI "bids:raw:<path>")
RUN_KEY = "SpinesegRun"  # the GeneratedBy field that the resume check compares

#: SCT contrast names (catalog ``TaskSpec.contrasts``) -> BIDS anatomical suffixes.
BIDS_SUFFIX = {"t1": "T1w", "t2": "T2w", "t2star": "T2starw", "UNIT1": "UNIT1"}

_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")
_SKIP_TOP = {"derivatives", "sourcedata", "code", "tmp_dir"}


class BidsError(SpinesegError):
    """A dataset or derivatives folder that cannot be used as given (message says why)."""


# ----------------------------------------------------------------------------- discovery


def contrast_suffixes(spec: TaskSpec) -> list[str] | None:
    """BIDS suffixes of the task's contrasts; None when the task takes any contrast."""
    if "any" in spec.contrasts:
        return None
    out = [BIDS_SUFFIX.get(c, c) for c in spec.contrasts]
    return out or None


def discover(root: str | os.PathLike, spec: TaskSpec, pattern: str | None = None) -> list[Path]:
    """The images of a BIDS dataset the task segments, sorted.

    Default: ``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]`` for the task's contrasts (every
    anatomical image when the task takes any contrast). ``pattern`` (a glob relative to
    ``root``, e.g. ``sub-*/anat/*_acq-sag_T2w.nii.gz``) replaces that rule. Files under
    ``derivatives/``, ``sourcedata/`` and hidden folders are never taken.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise BidsError(f"{root}: not a folder; give a BIDS dataset root or image files")
    if pattern:
        found = [p for p in root.glob(pattern) if p.is_file()]
    else:
        suffixes = contrast_suffixes(spec)
        ends = [f"_{s}" for s in suffixes] if suffixes else [""]
        found = []
        for sub in ("sub-*/anat", "sub-*/ses-*/anat"):
            for p in root.glob(f"{sub}/*.nii*"):
                base, ext = split_nifti_name(p.name)
                if ext and any(base.endswith(e) for e in ends):
                    found.append(p)
    keep = []
    for p in found:
        rel = p.relative_to(root)
        if rel.parts[0] in _SKIP_TOP or any(part.startswith(".") for part in rel.parts):
            continue
        if split_nifti_name(p.name)[1]:
            keep.append(p)
    if not keep:
        what = f"pattern {pattern!r}" if pattern else _default_rule(spec)
        raise BidsError(
            f"{root}: no image matches {what}; check the dataset, or pass --pattern "
            "(e.g. 'sub-*/anat/*_T2w.nii.gz')"
        )
    return sorted(keep)


def _default_rule(spec: TaskSpec) -> str:
    suffixes = contrast_suffixes(spec)
    names = "|".join(suffixes) if suffixes else "*"
    return f"sub-*/[ses-*/]anat/*_{names}.nii.gz (task {spec.id}'s contrasts)"


def entities(image: str | os.PathLike) -> dict[str, str]:
    """``{"sub": "01", "ses": "02"}`` from a BIDS file name (``ses`` only when present)."""
    found = dict(_ENTITY.findall(Path(image).name))
    if "sub" not in found:
        raise BidsError(
            f"{image}: not a BIDS file name (no 'sub-<label>' entity); rename it or give "
            "the image files with -i and a plain -o folder"
        )
    return found


def derivative_folder(deriv: str | os.PathLike, image: str | os.PathLike) -> Path:
    """``DERIV/sub-XX/[ses-YY/]anat``: where the masks of ``image`` go."""
    ent = entities(image)
    folder = Path(deriv) / f"sub-{ent['sub']}"
    if "ses" in ent:
        folder = folder / f"ses-{ent['ses']}"
    return folder / "anat"


def output_names(spec: TaskSpec, image: str | os.PathLike) -> dict[str, str]:
    """SCT suffix -> mask file name of ``image`` (``<name><suffix>.nii.gz``)."""
    base = split_nifti_name(Path(image).name)[0]
    return {o.suffix: f"{base}{o.suffix}.nii.gz" for o in spec.outputs}


# ----------------------------------------------------------------------------- run key


def model_hash(spec: TaskSpec, model: str | os.PathLike | None) -> str | None:
    """A fingerprint of the model that will run (changes when the weights change).

    Catalog task: the SHA-256(s) the model store recorded at install. Own model: the
    SHA-256 of the zip, or of a folder's ``dataset.json``, ``plans.json`` and checkpoints.
    """
    if model is None:
        from ..models import store

        src = store.read_source(spec) or {}
        shas = src.get("sha256")
        return ",".join(str(s) for s in shas) if isinstance(shas, list) else shas
    path = Path(model).expanduser().absolute()
    digest = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and (p.suffix == ".pth" or p.name in ("dataset.json", "plans.json"))
        )
    )
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def run_key(spec: TaskSpec, model_sha: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """What must match for an existing mask to count as done: the settings as requested,
    without the defaults (None, False) so that an API call and the CLI agree, and without
    the device (the same model on another device is the same run)."""
    kept = {
        k: v
        for k, v in sorted(settings.items())
        if k != "device" and v is not None and v is not False
    }
    return {"Task": spec.id, "ModelHash": model_sha, "Settings": kept}


# ----------------------------------------------------------------------------- dataset files


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=4, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BidsError(f"{path}: unreadable JSON ({exc}); fix or delete it") from None


def write_dataset_description(deriv: Path, raw_root: Path, spec: TaskSpec) -> Path:
    """``dataset_description.json`` of the derivatives (kept when it already is one)."""
    from .. import __version__
    from ..segmentation import CODE_URL

    path = deriv / "dataset_description.json"
    existing = _read_json(path)
    if existing is not None:
        if not isinstance(existing, dict) or existing.get("DatasetType") != "derivative":
            raise BidsError(
                f"{path} exists and is not a derivatives dataset (DatasetType "
                f"{existing.get('DatasetType') if isinstance(existing, dict) else None!r}); "
                "choose another -o folder"
            )
        return path
    _write_json(
        path,
        {
            "Name": f"napari-spineseg {spec.id}",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "napari-spineseg",
                    "Version": __version__,
                    "CodeURL": CODE_URL,
                    "Description": f"sct_deepseg task {spec.id}: {spec.title}",
                }
            ],
            "SourceDatasets": [{"URL": raw_root.as_uri()}],
            "DatasetLinks": {RAW_LINK: raw_root.as_uri()},
        },
    )
    return path


def source_uri(raw_root: Path, image: Path) -> str:
    """The BIDS URI of an image of the raw dataset (``bids:raw:sub-01/anat/...``)."""
    return f"bids:{RAW_LINK}:{image.relative_to(raw_root).as_posix()}"


def raw_root_of(deriv: Path) -> Path:
    """The source dataset recorded in ``DERIV/dataset_description.json``."""
    desc = _read_json(deriv / "dataset_description.json") or {}
    uri = (desc.get("DatasetLinks") or {}).get(RAW_LINK)
    if not isinstance(uri, str) or not uri.startswith("file://"):
        raise BidsError(
            f"{deriv}: dataset_description.json has no DatasetLinks.{RAW_LINK} file:// entry; "
            "was the folder written by `spineseg batch -i BIDS_ROOT -o DERIV`?"
        )
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def image_of(mask: str | os.PathLike, raw_root: Path | None = None) -> Path | None:
    """The raw image a derivative mask was made from (its sidecar's ``Sources``)."""
    data = sidecar.read(mask)
    sources = data.get("Sources") or []
    prefix = f"bids:{RAW_LINK}:"
    for s in sources:
        if isinstance(s, str) and s.startswith(prefix):
            if raw_root is None:
                raw_root = raw_root_of(_deriv_root(Path(mask)))
            return raw_root / s[len(prefix) :]
    return None


def _deriv_root(mask: Path) -> Path:
    for parent in mask.absolute().parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    raise BidsError(f"{mask}: no dataset_description.json above it: not in a derivatives folder")


# ----------------------------------------------------------------------------- plan and state


@dataclass(frozen=True)
class Plan:
    """One batch over a BIDS dataset: what runs on which images, and where it writes."""

    raw_root: Path
    deriv: Path
    spec: TaskSpec
    images: tuple[Path, ...]
    key: dict[str, Any]
    model: str | None = None

    def folder(self, image: Path) -> Path:
        return derivative_folder(self.deriv, image)

    def outputs(self, image: Path) -> list[Path]:
        return [self.folder(image) / n for n in output_names(self.spec, image).values()]

    def save(self) -> Path:
        """Record the plan in ``DERIV/.spineseg/batch.json`` (read by ``--status``)."""
        path = self.deriv / STATE_DIR / PLAN_JSON
        _write_json(
            path,
            {
                "raw_root": str(self.raw_root),
                "task": self.spec.id,
                "model": self.model,
                "suffixes": [o.suffix for o in self.spec.outputs],
                "key": self.key,
                "images": [i.relative_to(self.raw_root).as_posix() for i in self.images],
            },
        )
        return path


def output_state(path: Path, key: dict[str, Any] | None) -> str:
    """``"missing"``, ``"incomplete"`` (no sidecar or no Sources), ``"corrected"``,
    ``"stale"`` (another run key) or ``"done"`` for one output file."""
    if not path.is_file():
        return "missing"
    data = sidecar.read(path)
    entries = data.get("GeneratedBy")
    if not isinstance(entries, list) or not entries or not data.get("Sources"):
        return "incomplete"
    if any(isinstance(e, dict) and e.get("Name") == "Manual" for e in entries):
        return "corrected"
    if key is not None and entries[0].get(RUN_KEY) != key:
        return "stale"
    return "done"


def image_state(plan: Plan, image: Path, key: dict[str, Any] | None = None) -> str:
    """The state of an image from its outputs: done / corrected / stale / pending.

    One corrected output makes the image "corrected": redoing it would replace the
    rater's work (only ``--overwrite`` does, keeping the previous version).
    """
    states = {output_state(p, key) for p in plan.outputs(image)}
    if "corrected" in states:
        return "corrected"
    if states & {"missing", "incomplete"}:
        return "pending"
    return "done" if states == {"done"} else "stale"


def remove_debris(folder: Path, names: Iterable[str]) -> list[Path]:
    """Temporary files a killed run left for these mask names (writer and sidecar temps)."""
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        base = split_nifti_name(name)[0]
        for pattern in (f".{base}.spineseg-tmp-*", f".{base}.json.*.tmp"):
            for tmp in folder.glob(pattern):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def read_failures(deriv: Path) -> dict[str, dict[str, Any]]:
    """``{image relative path: {"error": message, "key": run key}}`` of the last runs."""
    data = _read_json(Path(deriv) / STATE_DIR / FAILURES_JSON)
    return data if isinstance(data, dict) else {}


def record_failures(
    deriv: Path, failed: dict[str, str], succeeded: Iterable[str], key: dict[str, Any]
) -> None:
    """Merge this run's failures into the log; images that now succeeded leave it."""
    log = read_failures(deriv)
    for rel in succeeded:
        log.pop(rel, None)
    for rel, msg in failed.items():
        log[rel] = {"error": msg, "key": key}
    _write_json(Path(deriv) / STATE_DIR / FAILURES_JSON, log)


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StatusRow:
    image: str  # relative to the raw root
    state: str  # done / corrected / failed / pending / stale
    detail: str = ""


def load_plan(deriv: str | os.PathLike) -> Plan:
    """The plan of the last batch into ``deriv`` (``DERIV/.spineseg/batch.json``)."""
    deriv = Path(deriv).expanduser().absolute()
    data = _read_json(deriv / STATE_DIR / PLAN_JSON)
    if not isinstance(data, dict):
        raise BidsError(
            f"{deriv}: no batch recorded here ({STATE_DIR}/{PLAN_JSON} missing); run "
            "`spineseg batch TASK -i BIDS_ROOT -o DERIV` first"
        )
    raw = Path(data["raw_root"])
    model = data.get("model")
    try:
        spec = catalog.get_task(data["task"])
    except SpinesegError:
        if not model:
            raise
        spec = catalog.custom_task(model)
    return Plan(
        raw_root=raw,
        deriv=deriv,
        spec=spec,
        images=tuple(raw / rel for rel in data.get("images", [])),
        key=data.get("key") or {},
        model=model,
    )


def status(deriv: str | os.PathLike) -> list[StatusRow]:
    """One row per image of the last batch: done, corrected, failed (why), stale, pending."""
    plan = load_plan(deriv)
    failures = read_failures(plan.deriv)
    rows = []
    for image in plan.images:
        rel = image.relative_to(plan.raw_root).as_posix()
        state = image_state(plan, image, plan.key)
        detail = ""
        if state == "pending" and rel in failures:
            state, detail = "failed", str(failures[rel].get("error", ""))
        elif state == "pending":
            missing = [p.name for p in plan.outputs(image) if output_state(p, None) != "done"]
            have = len(plan.outputs(image)) - len(missing)
            detail = f"{have} of {len(plan.outputs(image))} outputs" if have else ""
        elif state == "stale":
            detail = "written with another model or settings (re-run to update)"
        rows.append(StatusRow(rel, state, detail))
    return rows


def status_table(rows: Sequence[StatusRow]) -> str:
    """The ``--status`` text: one line per image, then counts per state."""
    width = max([len(r.image) for r in rows] + [5])
    lines = [f"{'IMAGE':<{width}}  {'STATE':<9}  DETAIL"]
    lines += [f"{r.image:<{width}}  {r.state:<9}  {r.detail}".rstrip() for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    order = ("done", "corrected", "failed", "stale", "pending")
    lines.append(", ".join(f"{counts[s]} {s}" for s in order if s in counts) + f" of {len(rows)}")
    return "\n".join(lines)
