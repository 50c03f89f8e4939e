"""Safe extraction of model archives and detection of the model layouts found in releases.

Release zips are untrusted input: a member named ``../../.bashrc``, ``/etc/x`` or a
symlink pointing outside would write outside the model folder ("zip slip"). Every member
is checked *before* anything is written, and the whole archive is refused if one is bad.

Layouts found in the real releases:

* nnU-Net: ``[...]/Dataset…/nnUNetTrainer…__nnUNetPlans__3d_fullres/{dataset.json,
  plans.json, fold_N/checkpoint_{final,best}.pth}`` at any depth (SCIsegV2, rootlets, mouse,
  and each of TotalSpineSeg's two dataset zips);
* ivadomed: a GitHub source archive of a tag, ``<repo>-<tag>/<name>.onnx`` next to
  ``<name>.json`` (the 7T model).
"""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ModelNotInstalledError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "contains '..'"
    return None


def safe_extract(archive: str | Path, target: str | Path) -> list[Path]:
    """Extract a zip into ``target``, refusing members that would escape it.

    Raises :class:`ModelNotInstalledError` (nothing written) when a member is absolute,
    contains ``..``, is a symlink, or resolves outside ``target``; or when the file is not
    a valid zip.
    """
    archive = Path(archive)
    target = Path(target).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelNotInstalledError(
            f"{archive}: not a valid zip archive ({exc}); download it again"
        ) from exc
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_reason(info)
            if reason is None:
                dest = (target / info.filename).resolve()
                if dest != target and target not in dest.parents:
                    reason = "resolves outside the model folder"
            if reason:
                raise ModelNotInstalledError(
                    f"{archive}: refused to extract: member {info.filename!r} {reason} "
                    "(unsafe archive, nothing was installed)"
                )
        bad = zf.testzip()
        if bad is not None:
            raise ModelNotInstalledError(f"{archive}: member {bad!r} is corrupt; download again")
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for info in infos:
            written.append(Path(zf.extract(info, target)))
    return written


# ----------------------------------------------------------------------------- layouts


def find_nnunet_folders(root: str | Path) -> list[Path]:
    """nnU-Net result folders under ``root``: dataset.json + plans.json + a fold checkpoint."""
    out = []
    for ds in sorted(Path(root).rglob("dataset.json")):
        folder = ds.parent
        if (folder / "plans.json").is_file() and nnunet_checkpoints(folder):
            out.append(folder)
    return out


def nnunet_checkpoints(folder: str | Path) -> list[Path]:
    """``fold_*/checkpoint_*.pth`` files of an nnU-Net result folder."""
    return sorted(Path(folder).glob("fold_*/checkpoint_*.pth"))


def find_onnx_models(root: str | Path) -> list[Path]:
    """ivadomed ONNX models: ``<name>.onnx`` with a ``<name>.json`` next to it."""
    return [p for p in sorted(Path(root).rglob("*.onnx")) if p.with_suffix(".json").is_file()]


def check_checkpoint(path: str | Path) -> str | None:
    """Problem with a torch checkpoint file, without unpickling it (None when it looks fine).

    ``torch.save`` writes a zip holding ``<name>/data.pkl``; a truncated download or an
    HTML error page fails this check. Nothing is loaded, so this is safe on untrusted files.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return "is missing or empty"
    if not zipfile.is_zipfile(path):
        return "is not a torch checkpoint (not a zip: truncated or corrupt download?)"
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return "has no data.pkl record (not a torch checkpoint)"
    except (zipfile.BadZipFile, OSError) as exc:
        return f"cannot be read ({exc})"
    return None


def check_onnx(path: str | Path) -> str | None:
    """Problem with an ivadomed ONNX model + JSON pair (None when it looks fine)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return "is missing or empty"
    try:
        json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as exc:
        return f"has no readable {path.with_suffix('.json').name} ({exc})"
    return None


def model_folders(root: str | Path, backend: str) -> list[Path]:
    """The model folders an engine of ``backend`` needs, found under ``root``."""
    if backend == "ivadomed_onnx":
        return [p.parent for p in find_onnx_models(root)]
    return find_nnunet_folders(root)


def expected_count(backend: str, n_sources: int) -> int:
    """How many model folders a complete install has (TotalSpineSeg: one per dataset zip)."""
    if backend == "totalspineseg":
        return max(2, n_sources)
    return 1


def layout_problems(root: str | Path, backend: str, n_sources: int = 1) -> list[str]:
    """What is missing or broken in an installed model folder (empty list: complete)."""
    root = Path(root)
    problems: list[str] = []
    if backend == "ivadomed_onnx":
        models = find_onnx_models(root)
        if not models:
            return ["no ivadomed model (<name>.onnx next to <name>.json) found"]
        for m in models:
            p = check_onnx(m)
            if p:
                problems.append(f"{m.relative_to(root)} {p}")
        return problems
    folders = find_nnunet_folders(root)
    need = expected_count(backend, n_sources)
    if len(folders) < need:
        problems.append(
            f"found {len(folders)} nnU-Net model folder(s), expected {need} "
            "(dataset.json, plans.json and fold_N/checkpoint_*.pth)"
        )
    for folder in folders:
        for ck in nnunet_checkpoints(folder):
            p = check_checkpoint(ck)
            if p:
                problems.append(f"{ck.relative_to(root)} {p}")
    return problems
