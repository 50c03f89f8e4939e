"""Safe extraction of model archives and detection of the model layouts found in releases.

Release zips are untrusted input, and so is a zip the user trusts (trust is about the
pickled checkpoints, not about the archive being well formed). Before anything is written,
every member is checked and the whole archive is refused if one is bad:

* zip slip: a member named ``../../.bashrc``, ``/etc/x``, ``C:x``, ``.`` or a symlink;
* members Python cannot read (encrypted, PPMd/Deflate64/... compression), a name that is
  both a file and a folder, a name given twice;
* zip bombs: more than :data:`MAX_TOTAL_BYTES` declared, a declared/compressed ratio above
  :data:`MAX_RATIO` (real models compress ~1.1:1, JSON ~10:1), more than the free disk
  space. While writing, the bytes actually produced are counted against the declared
  sizes (headers are not trusted), and on any failure everything written is removed.

Layouts found in the real releases:

* nnU-Net: ``[...]/Dataset…/nnUNetTrainer…__nnUNetPlans__3d_fullres/{dataset.json,
  plans.json, fold_N/checkpoint_{final,best}.pth}`` at any depth (SCIsegV2, rootlets, mouse,
  and each of TotalSpineSeg's two dataset zips);
* ivadomed: a GitHub source archive of a tag, ``<repo>-<tag>/<name>.onnx`` next to
  ``<name>.json`` (the 7T model).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ModelNotInstalledError
from .model_json import nnunet_folder_problems, read_json_file

#: Most bytes an archive may expand to (the largest SCT model, TotalSpineSeg, is ~0.5 GB).
MAX_TOTAL_BYTES = 20 * 10**9
#: Largest expanded/compressed ratio (float32 weights ~1.1:1, JSON ~10:1, zip bombs 1000:1).
MAX_RATIO = 200
#: Below this many declared bytes the ratio is not checked (nothing that small fills a disk).
RATIO_FLOOR = 64 << 20
MAX_MEMBERS = 20_000
#: Free space left on the disk after an extraction.
FREE_SPACE_RESERVE = 256 << 20

_READABLE = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "Deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}
_UNREADABLE = {9: "Deflate64", 93: "Zstandard", 95: "xz", 96: "JPEG", 97: "WavPack", 98: "PPMd"}
_RECREATE = "re-create the archive with standard (Deflate) compression and no password"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one member cannot be extracted safely (None: it can), from its header alone."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if info.flag_bits & 0x1 or info.compress_type == 99:  # 99: WinZip AES
        return f"is encrypted (password-protected); {_RECREATE}"
    if info.compress_type not in _READABLE:
        method = _UNREADABLE.get(info.compress_type, "an unknown")
        return (
            f"uses {method} compression (method {info.compress_type}), which cannot be "
            f"read here; {_RECREATE}"
        )
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "contains '..'"
    if not parts:
        return "has no file name (it names the archive's own folder)"
    return None


def _parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    return PurePosixPath(info.filename.replace("\\", "/")).parts


def open_zip(archive: str | Path) -> zipfile.ZipFile:
    """Open a zip, or raise :class:`ModelNotInstalledError` saying it is not one."""
    archive = Path(archive)
    if not archive.is_file():
        raise ModelNotInstalledError(f"{archive}: not a regular file, so not a zip archive")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelNotInstalledError(
            f"{archive}: not a valid zip archive ({exc}); download it again"
        ) from exc


def _free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _plan(archive: Path, infos: list[zipfile.ZipInfo], target: Path) -> int:
    """Check every member and the archive's totals; returns the declared bytes to write."""

    def refuse(what: str) -> ModelNotInstalledError:
        return ModelNotInstalledError(
            f"{archive}: refused to extract: {what} (unsafe archive, nothing was installed)"
        )

    if len(infos) > MAX_MEMBERS:
        raise refuse(f"it has {len(infos):,} members (a model has at most {MAX_MEMBERS:,})")
    files: dict[tuple[str, ...], str] = {}
    folders: set[tuple[str, ...]] = set()
    for info in infos:
        reason = member_problem(info)
        if reason is None:
            dest = (target / info.filename).resolve()
            if dest != target and target not in dest.parents:
                reason = "resolves outside the model folder"
        if reason:
            raise refuse(f"member {info.filename!r} {reason}")
        parts = _parts(info)
        folders.update(parts[:i] for i in range(1, len(parts)))
        if info.is_dir():
            folders.add(parts)
        elif parts in files:
            raise refuse(f"member {info.filename!r} appears twice")
        else:
            files[parts] = info.filename
    clash = sorted(set(files) & folders)
    if clash:
        raise refuse(f"{files[clash[0]]!r} is both a file and a folder")
    declared = sum(i.file_size for i in infos)
    size = max(archive.stat().st_size, 1)
    if declared > MAX_TOTAL_BYTES:
        raise refuse(
            f"it expands to {_gb(declared)}, more than the {_gb(MAX_TOTAL_BYTES)} any model "
            "needs (a zip bomb?)"
        )
    if declared > RATIO_FLOOR and declared > MAX_RATIO * size:
        raise refuse(
            f"{_gb(size)} expand to {_gb(declared)} ({declared / size:,.0f}:1; real models "
            f"compress less than {MAX_RATIO}:1: a zip bomb?)"
        )
    require_space(archive, declared, target)
    return declared


def require_space(source: Path, needed: int, target: Path) -> None:
    """Refuse (before writing) when ``needed`` bytes would not fit on ``target``'s disk."""
    free = _free_bytes(target)
    if needed + FREE_SPACE_RESERVE > free:
        raise ModelNotInstalledError(
            f"{source}: needs {_gb(needed)} but only {_gb(free)} is free on the disk of "
            f"{target} (keeping {_gb(FREE_SPACE_RESERVE)} spare); free some space or set "
            "SPINESEG_MODELS_DIR to a larger disk, then retry (nothing was installed)"
        )


def safe_extract(archive: str | Path, target: str | Path) -> list[Path]:
    """Extract a zip into ``target``, refusing unsafe archives (see module docstring).

    Raises :class:`ModelNotInstalledError` naming the archive, the member and the fix;
    nothing is left behind on refusal or failure (files and folders created are removed).
    """
    archive = Path(archive)
    target = Path(target).resolve()
    created: list[Path] = []
    written: list[Path] = []
    with open_zip(archive) as zf:
        infos = zf.infolist()
        declared = _plan(archive, infos, target)
        member = "(the model folder)"
        try:
            _mkdirs(target, created)
            total = 0
            for info in infos:
                member = repr(info.filename)
                dest = target.joinpath(*_parts(info))
                if info.is_dir():
                    _mkdirs(dest, created)
                    continue
                _mkdirs(dest.parent, created)
                total = _write_member(zf, info, dest, archive, total, declared, created)
                written.append(dest)
        except ModelNotInstalledError:
            _remove(created)
            raise
        except OSError as exc:  # a folder name too long for this file system, a full disk...
            _remove(created)
            raise ModelNotInstalledError(
                f"{archive}: member {member} cannot be extracted into {target} "
                f"({exc.strerror or exc}); nothing was installed"
            ) from exc
        except BaseException:
            _remove(created)
            raise
    return written


def _mkdirs(folder: Path, created: list[Path]) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(d)


def _write_member(zf, info, dest: Path, archive: Path, total: int, declared: int, created):
    """Stream one member to ``dest``, counting real bytes against the declared sizes."""
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise ModelNotInstalledError(
            f"{archive}: refused to extract: member {info.filename!r} would replace "
            f"{dest}, which is not a regular file (nothing was installed)"
        )
    n = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            created.append(dest)
            while chunk := src.read(1 << 20):
                n += len(chunk)
                total += len(chunk)
                if n > info.file_size or total > declared:
                    raise ModelNotInstalledError(
                        f"{archive}: refused to extract: member {info.filename!r} expands "
                        f"beyond the {info.file_size:,} bytes its header declares (a zip "
                        "bomb?); nothing was installed"
                    )
                out.write(chunk)
    except ModelNotInstalledError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelNotInstalledError(
                f"{archive}: the disk filled up while extracting {info.filename!r} into "
                f"{dest.parent}; free some space and retry (nothing was installed)"
            ) from exc
        raise ModelNotInstalledError(
            f"{archive}: cannot write {dest} ({exc.strerror or exc}); nothing was installed"
        ) from exc
    except Exception as exc:  # BadZipFile (CRC), zlib.error, lzma.LZMAError, EOFError ...
        raise _corrupt(archive, info, exc) from exc
    return total


def _corrupt(archive: Path, info: zipfile.ZipInfo, exc: BaseException) -> ModelNotInstalledError:
    return ModelNotInstalledError(
        f"{archive}: member {info.filename!r} is corrupt ({type(exc).__name__}: {exc}); "
        "download the archive again (nothing was installed)"
    )


def _remove(paths: list[Path]) -> None:
    for p in reversed(paths):
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()


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
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"cannot be read ({exc})"
    return None


def check_onnx(path: str | Path) -> str | None:
    """Problem with an ivadomed ONNX model + JSON pair (None when it looks fine)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return "is missing or empty"
    try:
        read_json_file(path.with_suffix(".json"), fix="")
    except ModelNotInstalledError as exc:
        return f"has no readable {path.with_suffix('.json').name} ({str(exc).rstrip('; ')})"
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
        problems += nnunet_folder_problems(folder, root)
        for ck in nnunet_checkpoints(folder):
            p = check_checkpoint(ck)
            if p:
                problems.append(f"{ck.relative_to(root)} {p}")
    return problems
