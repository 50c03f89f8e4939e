"""The per-user model store: install, locate, verify and remove models.

Layout: ``<models dir>/<task id>/`` holds the extracted release (kept as shipped, so the
nnU-Net folder can also be used by SCT, Slicer or nnU-Net itself) plus ``source.json``
(where it came from, the SHA-256 of every archive, whether it was pinned, trusted or
custom, when and by which version it was installed). The models dir is
``platformdirs.user_cache_dir("napari-spineseg")/models`` unless ``SPINESEG_MODELS_DIR``
says otherwise.

Installs are atomic: archives are downloaded and extracted into a temporary folder inside
the models dir, the layout is checked, and only then is the folder renamed into place, so
an interrupted or cancelled install never leaves a half model behind.

Security: nnU-Net checkpoints are Python pickles, which can run code when loaded. A model
from a catalog release is accepted (its hash is checked when published, otherwise recorded
on first download); anything else (a URL, a zip or folder given by the user) needs
explicit trust (``trust=True`` / ``--trust``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..catalog import ModelSource, TaskSpec, custom_task, get_task
from ..errors import ModelNotInstalledError, SpinesegError, TaskError, UntrustedModelError
from ..progress import CancelToken, ProgressCallback, Reporter
from .archives import (
    MAX_TOTAL_BYTES,
    expected_count,
    layout_problems,
    model_folders,
    require_space,
    safe_extract,
    sha256_file,
)

ENV_MODELS_DIR = "SPINESEG_MODELS_DIR"
SOURCE_JSON = "source.json"

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def models_dir() -> Path:
    """Root of the model store (``SPINESEG_MODELS_DIR`` or the per-user cache)."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-spineseg")) / "models"


def _task_id(task: str | TaskSpec) -> str:
    if isinstance(task, TaskSpec):
        return task.id
    try:
        return get_task(task).id
    except TaskError:
        if (models_dir() / str(task) / SOURCE_JSON).is_file():
            return str(task)  # an installed custom model
        raise


def task_dir(task: str | TaskSpec) -> Path:
    """Folder of a task's model (whether installed or not)."""
    return models_dir() / _task_id(task)


def read_source(task: str | TaskSpec) -> dict | None:
    """The ``source.json`` of an installed model, or None."""
    p = task_dir(task) / SOURCE_JSON
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _spec_for(task: str | TaskSpec) -> TaskSpec:
    """Catalog spec, or the spec of an installed custom model."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return get_task(task)
    except TaskError:
        folder = models_dir() / str(task)
        src = read_source(str(task)) if folder.is_dir() else None
        if src and src.get("custom"):
            spec = custom_task(folder)
            return _rename(spec, str(task))
        raise


def _rename(spec: TaskSpec, new_id: str) -> TaskSpec:
    from dataclasses import replace

    return replace(spec, id=new_id)


# ----------------------------------------------------------------------------- locate


def model_folder(task: str | TaskSpec) -> Path:
    """The folder an engine loads for ``task``; raises with the fix when not usable.

    nnU-Net tasks: the ``nnUNetTrainer…`` result folder; ivadomed: the folder holding the
    ``.onnx``/``.json`` pair; TotalSpineSeg: the task folder (both dataset folders inside).
    """
    spec = _spec_for(task)
    root = task_dir(spec)
    fix = spec.install_command()
    if not (root / SOURCE_JSON).is_file():
        raise ModelNotInstalledError(
            f"the model for task '{spec.id}' is not installed (looked in {root}); "
            f"install it with: {fix}"
        )
    problems = layout_problems(root, spec.backend, len(spec.sources))
    if problems:
        raise ModelNotInstalledError(
            f"the model for task '{spec.id}' in {root} is incomplete or corrupt "
            f"({'; '.join(problems)}); reinstall it with: {fix}"
        )
    if spec.backend == "totalspineseg":
        return root
    return model_folders(root, spec.backend)[0]


def is_installed(task: str | TaskSpec) -> bool:
    """True when the model is installed and complete (cheap check, nothing is loaded)."""
    try:
        model_folder(task)
    except (ModelNotInstalledError, TaskError):
        return False
    return True


# ----------------------------------------------------------------------------- install


class _DownloadProgress:
    """Adapts pooch's tqdm-like progress-bar protocol to our :class:`Reporter`.

    Every update is a cancellation point: raising :class:`Cancelled` here aborts the
    download, and pooch deletes its partial file.
    """

    def __init__(self, report: Reporter, label: str) -> None:
        self.report = report
        self.label = label
        self.total = 0
        self.n = 0

    def update(self, k: int) -> None:
        self.n += int(k)
        total = int(self.total or 0)
        frac = min(self.n / total, 1.0) if total else 0.0
        self.report(
            frac,
            f"downloading {self.label}",
            min(self.n, total) if total else self.n,
            total or None,
        )

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass


def _as_reporter(
    progress: ProgressCallback | Reporter | None, cancel: CancelToken | None
) -> Reporter:
    if isinstance(progress, Reporter):
        return progress
    return Reporter(progress, cancel)


def _download(src: ModelSource, dest_dir: Path, report: Reporter, known: str | None) -> Path:
    import pooch
    import requests

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    downloader = pooch.HTTPDownloader(
        progressbar=_DownloadProgress(report, src.filename), chunk_size=1 << 20, timeout=60
    )
    try:
        path = pooch.retrieve(
            src.url,
            known_hash=f"sha256:{known}" if known else None,
            fname=src.filename,
            path=dest_dir,
            downloader=downloader,
        )
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise ModelNotInstalledError(
                f"the download of {src.url} failed its integrity check (expected SHA-256 "
                f"{known}); it was deleted and nothing was installed. Retry later; if it "
                "persists the release was changed or the download is being tampered with."
            ) from exc
        raise
    except requests.RequestException as exc:
        raise ModelNotInstalledError(
            f"could not download {src.url} ({exc}). Check your internet connection, or "
            f"download the file elsewhere and install it offline with --from FILE"
        ) from exc
    finally:
        logger.setLevel(level)
    return Path(path)


@dataclass
class _Archive:
    """One archive (or folder) that goes into an install, with its provenance."""

    path: Path
    url: str
    filename: str
    sha256: str | None
    pinned: bool
    is_dir: bool = False
    extra: dict = field(default_factory=dict)


def _local_sources(spec: TaskSpec, source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Local files/folders for an offline install (a folder may hold the release zips)."""
    items = [source] if isinstance(source, str | Path) else list(source)
    paths = [Path(s).expanduser().resolve() for s in items]
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise ModelNotInstalledError(f"{p}: no such file or folder")
        if not (p.is_file() or p.is_dir()):  # a FIFO or /dev/zero would never end
            raise ModelNotInstalledError(
                f"{p}: not a regular file or folder; give the release zip or the model folder"
            )
        if p.is_dir() and not model_folders(p, spec.backend):
            zips = [p / s.filename for s in spec.sources if (p / s.filename).is_file()]
            if not zips:
                zips = sorted(z for z in p.glob("*.zip") if z.is_file())
            if not zips:
                raise ModelNotInstalledError(
                    f"{p}: contains neither a model folder nor the release archive(s) "
                    f"({', '.join(s.filename for s in spec.sources) or '*.zip'})"
                )
            out.extend(zips)
        else:
            out.append(p)
    return out


def install(
    task: str | TaskSpec,
    source: str | Path | Sequence[str | Path] | None = None,
    *,
    progress: ProgressCallback | Reporter | None = None,
    cancel: CancelToken | None = None,
    trust: bool = False,
    sources: Sequence[ModelSource] | None = None,
    force: bool = False,
    log: Log | None = _stderr,
) -> Path:
    """Install a task's model into the store and return its folder (see module docstring).

    ``source``: None -> download the catalog release(s) (or ``sources``, e.g. a mirror);
    a path to a zip or model folder (or a folder holding the release zips) -> offline
    install; an ``http(s)://`` URL -> a custom release. Anything whose hash is not pinned
    by the catalog needs ``trust=True``. An installed, complete model is left alone unless
    ``force``.
    """
    spec = get_task(task) if not isinstance(task, TaskSpec) else task
    log = log or (lambda _m: None)
    report = _as_reporter(progress, cancel)
    final = _store_folder(spec)
    if spec.backend == "totalspineseg":
        _require_totalspineseg(spec)
    if not force and source is None and sources is None and is_installed(spec):
        report(1.0, f"{spec.id} already installed")
        return final
    previous = read_source(spec) or {}
    recorded = {a.get("filename"): a.get("sha256") for a in previous.get("archives", [])}

    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.id}-", dir=root))
    try:
        archives = _gather(spec, source, sources, tmp / "downloads", report, trust, recorded, log)
        staged = tmp / "model"
        staged.mkdir()
        for i, arc in enumerate(archives):
            report.sub(0.9, 1.0)(i / max(len(archives), 1), f"extracting {arc.filename}")
            if arc.is_dir:
                _copy_model_dir(arc.path, staged, spec.backend)
            else:
                safe_extract(arc.path, staged)
        problems = layout_problems(staged, spec.backend, max(len(archives), 1))
        if problems:
            shown = [a.url if a.path.is_relative_to(tmp) else str(a.path) for a in archives]
            raise ModelNotInstalledError(
                f"{', '.join(shown)} does not contain a usable "
                f"{spec.backend} model for task '{spec.id}': {'; '.join(problems)}"
            )
        _write_source(staged, spec, archives, trusted=trust)
        report.check()
        old = None
        if final.exists():
            old = final.with_name(f".old-{spec.id}-{uuid.uuid4().hex[:8]}")
            final.rename(old)
        staged.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"installed {spec.id}")
    return final


_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _store_folder(spec: TaskSpec) -> Path:
    """``task_dir(spec)``, refused unless it is a direct child of the store (``../x``)."""
    folder = task_dir(spec)
    if not _SAFE_ID.match(spec.id) or folder.resolve().parent != models_dir().resolve():
        raise TaskError(
            f"{spec.id!r} cannot name a model: use letters, digits, '_', '-' or '.' "
            "(at most 100 characters, not starting with '.' or '-')"
        )
    return folder


def _require_totalspineseg(spec: TaskSpec) -> None:
    """Refuse before any download when the TotalSpineSeg package (the extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("totalspineseg") is not None:
        return
    from ..engines.totalspineseg import INSTALL_HINT

    names = " ".join(s.filename for s in spec.sources) or "Dataset101_*.zip Dataset102_*.zip"
    raise SpinesegError(
        f"task '{spec.id}' (TotalSpineSeg) needs the 'totalspineseg' package, which is not "
        f"installed; install it first with: {INSTALL_HINT}. Then `spineseg install "
        f"{spec.id}` downloads its two model archives; offline, give both zips: "
        f"`spineseg install {spec.id} --from {names}` (or a folder holding them)."
    )


def custom_install_spec(name: str, source: str | Path, *, trust: bool) -> TaskSpec:
    """The spec to install a lab's nnU-Net model (zip or folder) under ``name``.

    The trust check comes first: nothing of the archive is read before the user said they
    trust it (its dataset.json is then read, size-capped and checked, to name the classes).
    """
    path = Path(source).expanduser().resolve()
    if not trust:
        raise UntrustedModelError(
            f"{path} is not a model napari-spineseg knows ('{name}' is not a catalog task). "
            "Model checkpoints are Python pickles and can run arbitrary code when loaded; "
            f"install it only if you trust its author, with: spineseg install {name} "
            f"--from {path} --trust"
        )
    spec = _rename(custom_task(path), name)
    _store_folder(spec)
    return spec


def _gather(
    spec: TaskSpec,
    source,
    sources: Sequence[ModelSource] | None,
    dl_dir: Path,
    report: Reporter,
    trust: bool,
    recorded: dict,
    log: Log,
) -> list[_Archive]:
    """Download or locate the archives of an install, enforcing the trust rules."""
    dl_dir.mkdir(parents=True, exist_ok=True)
    urls: list[ModelSource]
    custom_url = isinstance(source, str) and source.startswith(("http://", "https://"))
    if source is None or custom_url:
        if custom_url:
            if not trust:
                raise UntrustedModelError(
                    f"{source} is not a release pinned by napari-spineseg. Model checkpoints "
                    "are Python pickles and can run arbitrary code when loaded; install it "
                    f"only if you trust its author, with: spineseg install {spec.id} "
                    f"--from {source} --trust"
                )
            urls = [
                ModelSource(source, None, source.rstrip("/").rsplit("/", 1)[-1] or "model.zip")
            ]
        else:
            urls = list(sources if sources is not None else spec.sources)
        if not urls:
            raise ModelNotInstalledError(
                f"task '{spec.id}' has no download source; install it with --from PATH"
            )
        out = []
        n = len(urls)
        for i, src in enumerate(urls):
            known = src.sha256 or (None if custom_url else recorded.get(src.filename))
            path = _download(src, dl_dir, report.sub(0.9 * i / n, 0.9 * (i + 1) / n), known)
            digest = sha256_file(path)
            pinned = bool(src.sha256) and not custom_url
            if not src.sha256 and not custom_url:
                how = (
                    "matches the hash recorded at the first install"
                    if known
                    else "was recorded (trust on first use)"
                )
                log(
                    f"warning: the release {src.filename} is not pinned by napari-spineseg "
                    f"(no published SHA-256); its SHA-256 {digest} {how} in source.json."
                )
            out.append(_Archive(path, src.url, src.filename, digest, pinned))
        return out

    # offline: local files or folders
    pinned_hashes = {s.sha256.lower(): s for s in spec.sources if s.sha256}
    out = []
    for p in _local_sources(spec, source):
        report.check()
        if p.is_dir():
            out.append(_Archive(p, p.as_uri(), p.name, None, False, is_dir=True))
            continue
        digest = sha256_file(p)
        match = pinned_hashes.get(digest)
        out.append(_Archive(p, match.url if match else p.as_uri(), p.name, digest, bool(match)))
    unpinned = [a for a in out if not a.pinned]
    if unpinned and not trust:
        names = ", ".join(str(a.path) for a in unpinned)
        raise UntrustedModelError(
            f"{names}: not a release whose SHA-256 is pinned by napari-spineseg. Model "
            "checkpoints are Python pickles and can run arbitrary code when loaded; install "
            f"it only if you trust where it came from, with: spineseg install {spec.id} "
            f"--from {unpinned[0].path} --trust"
        )
    return out


def _copy_model_dir(src: Path, staged: Path, backend: str) -> None:
    """Copy a model folder into the staging folder, refusing symbolic links inside it."""
    if not model_folders(src, backend):
        raise ModelNotInstalledError(f"{src}: no {backend} model folder found inside")
    entries = list(src.rglob("*"))
    links = [p for p in entries if p.is_symlink()]
    if links:
        raise ModelNotInstalledError(
            f"{src}: refused: the model folder contains a symbolic link ({links[0]})"
        )
    special = [p for p in entries if not (p.is_file() or p.is_dir())]
    if special:
        raise ModelNotInstalledError(
            f"{src}: refused: {special[0]} is not a regular file (a pipe or a device)"
        )
    size = sum(p.stat().st_size for p in entries if p.is_file())
    if size > MAX_TOTAL_BYTES:
        raise ModelNotInstalledError(
            f"{src}: refused: the folder holds {size / 1e9:.1f} GB, more than the "
            f"{MAX_TOTAL_BYTES / 1e9:.0f} GB any model needs; point to the model folder itself"
        )
    require_space(src, size, staged)
    shutil.copytree(src, staged / src.name, dirs_exist_ok=True)


def _package_version() -> str:
    from .. import __version__

    return __version__


def _write_source(staged: Path, spec: TaskSpec, archives: list[_Archive], trusted: bool) -> None:
    data: dict[str, Any] = {
        "task": spec.id,
        "title": spec.title,
        "backend": spec.backend,
        "urls": [a.url for a in archives],
        "sha256": [a.sha256 for a in archives],
        "archives": [
            {"url": a.url, "filename": a.filename, "sha256": a.sha256, "pinned": a.pinned}
            for a in archives
        ],
        "pinned": all(a.pinned for a in archives),
        # like SCT: anything but the catalog's own release is "custom" (never auto-updated)
        "custom": spec.custom
        or any(a.url not in {s.url for s in spec.sources} and not a.pinned for a in archives),
        "trusted": bool(trusted),
        "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "package": "napari-spineseg",
        "package_version": _package_version(),
        "sct_model": spec.sct_model,
    }
    (staged / SOURCE_JSON).write_text(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------- custom


def prepare_custom(
    path: str | Path, *, trust: bool = False, report: Reporter | None = None
) -> Path:
    """Model folder for ``segment(model=...)``: a folder is used in place, a zip extracted once.

    Both need ``trust=True`` (checkpoints are pickles). Extracted zips are cached under
    ``<models dir>/custom-<name>-<sha12>`` so a second run does not extract again.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ModelNotInstalledError(f"{p}: no such model folder or zip")
    if not trust:
        raise UntrustedModelError(
            f"{p} is a custom model: nnU-Net checkpoints are Python pickles and can run "
            "arbitrary code when loaded. Use it only if you trust its author, and say so "
            "with trust=True (CLI: --trust)."
        )
    if p.is_dir():
        folders = model_folders(p, "nnunet")
        if not folders:
            raise ModelNotInstalledError(
                f"{p}: no nnU-Net model found (expected dataset.json, plans.json and "
                "fold_N/checkpoint_*.pth)"
            )
        if len(folders) > 1:
            # e.g. `--model ~/` or a folder of several trainings: running whichever sorts
            # first would silently segment with a model the user did not choose
            listed = "\n  ".join(str(f) for f in folders[:5])
            more = f"\n  ... and {len(folders) - 5} more" if len(folders) > 5 else ""
            raise ModelNotInstalledError(
                f"{p}: {len(folders)} nnU-Net models found under this folder:\n  {listed}"
                f"{more}\ngive the folder of the one to run"
            )
        problems = layout_problems(p, "nnunet")
        if problems:
            raise ModelNotInstalledError(f"{p}: {'; '.join(problems)}")
        return folders[0]
    digest = sha256_file(p)
    spec = custom_task(p)  # reads only dataset.json (size-capped, checked)
    spec = _rename(spec, f"{spec.id[:80]}-{digest[:12]}")
    dest = task_dir(spec)
    if not (dest / SOURCE_JSON).is_file() or layout_problems(dest, "nnunet"):
        install(spec, p, trust=True, progress=report, force=True, log=None)
    return model_folders(dest, "nnunet")[0]


# ----------------------------------------------------------------------------- list / verify


@dataclass
class InstalledModel:
    """One installed model as found on disk."""

    task: str
    path: Path
    source: dict
    complete: bool


def list_installed() -> list[InstalledModel]:
    """Every model folder in the store (complete or not), sorted by task id."""
    root = models_dir()
    out: list[InstalledModel] = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            src = json.loads((d / SOURCE_JSON).read_text())
        except (OSError, ValueError):
            src = {}
        backend = src.get("backend")
        if backend is None:
            try:
                backend = get_task(d.name).backend
            except TaskError:
                backend = "nnunet"
        n = len(src.get("archives") or [1])
        complete = bool(src) and not layout_problems(d, backend, n)
        out.append(InstalledModel(d.name, d, src, complete))
    return out


@dataclass
class VerifyReport:
    """Result of :func:`verify`: ``ok`` and the list of problems found."""

    task: str
    path: Path
    ok: bool
    problems: list[str]
    source: dict


def verify(task: str | TaskSpec) -> VerifyReport:
    """Check an installed model: files present, checkpoints readable, archive hashes recorded.

    Nothing is unpickled. Pinned archives whose recorded hash differs from the catalog's
    are reported (the release changed since the install).
    """
    spec = _spec_for(task)
    root = task_dir(spec)
    src = read_source(spec)
    problems: list[str] = []
    if not root.is_dir():
        return VerifyReport(spec.id, root, False, ["not installed"], {})
    if src is None:
        problems.append("source.json is missing or unreadable")
        src = {}
    n = len(src.get("archives") or spec.sources or [1])
    problems += layout_problems(root, src.get("backend", spec.backend), n)
    for arc in src.get("archives", []):
        if not arc.get("sha256") and not str(arc.get("url", "")).startswith("file:"):
            problems.append(f"no SHA-256 recorded for {arc.get('filename')}")
    for s in spec.sources:
        if s.sha256 and not spec.custom:
            got = [
                a.get("sha256") for a in src.get("archives", []) if a.get("filename") == s.filename
            ]
            if got and got[0] != s.sha256:
                problems.append(
                    f"{s.filename}: recorded SHA-256 {got[0]} differs from the catalog's "
                    f"{s.sha256}"
                )
    return VerifyReport(spec.id, root, not problems, problems, src)


def remove(task: str | TaskSpec) -> bool:
    """Delete an installed model; False when there was nothing to delete."""
    try:
        root = task_dir(task)
    except TaskError:
        root = models_dir() / str(task)
    if not root.is_dir():
        return False
    if root.resolve().parent != models_dir().resolve():
        raise SpinesegError(f"refusing to delete {root}: not inside the model store")
    trash = root.with_name(f".old-{root.name}-{uuid.uuid4().hex[:8]}")
    root.rename(trash)  # atomic: a concurrent reader sees it installed or gone
    shutil.rmtree(trash, ignore_errors=True)
    return True


__all__ = [
    "ENV_MODELS_DIR",
    "InstalledModel",
    "VerifyReport",
    "expected_count",
    "install",
    "is_installed",
    "list_installed",
    "model_folder",
    "models_dir",
    "prepare_custom",
    "read_source",
    "remove",
    "task_dir",
    "verify",
    "custom_install_spec",
]
