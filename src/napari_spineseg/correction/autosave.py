"""Crash recovery for labels being corrected.

An :class:`Autosaver` keeps the latest state of one labels layer in a compressed ``.npz``
in a per-user cache folder (``platformdirs.user_cache_dir("napari-spineseg")/autosave``,
or ``$SPINESEG_AUTOSAVE_DIR``), never next to the image or the mask: a recovery file
must not be mistaken for a result, nor clutter a BIDS dataset. Files are written to a
temporary name and ``os.replace``d, so a crash during the write leaves the previous
recovery intact. One file per (source image, layer name), overwritten each time.

After a crash, :func:`find_recoveries` lists the recovery files of an image (matched by
the image content's SHA-256, so a moved file still matches and a changed one does not),
:func:`restore` reads one back and :func:`discard` removes it. The widget discards its
recovery after a successful save.

The npz holds ``labels`` and ``meta`` (UTF-8 JSON bytes); it is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SaveRefusedError, SpinesegError

ENV_VAR = "SPINESEG_AUTOSAVE_DIR"
FORMAT = "napari-spineseg-autosave/1"


def autosave_dir() -> Path:
    """The recovery folder: ``$SPINESEG_AUTOSAVE_DIR`` or the per-user cache."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-spineseg")) / "autosave"


@dataclass(frozen=True)
class RecoveryEntry:
    """One recovery file and its metadata (without loading the labels)."""

    path: Path
    source_path: str
    source_sha256: str
    layer_name: str
    saved_at: str
    n_edits: int
    shape: tuple[int, ...]
    dtype: str
    meta: dict[str, Any]


def _key(source_path: str | os.PathLike, source_sha256: str, layer_name: str) -> str:
    text = f"{Path(source_path).expanduser().resolve()}\0{source_sha256}\0{layer_name}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown format {meta.get('format')!r}")
    return meta


def _entry(path: Path, meta: dict[str, Any]) -> RecoveryEntry:
    return RecoveryEntry(
        path=path,
        source_path=str(meta["source_path"]),
        source_sha256=str(meta["source_sha256"]),
        layer_name=str(meta["layer_name"]),
        saved_at=str(meta["saved_at"]),
        n_edits=int(meta.get("n_edits", 0)),
        shape=tuple(int(s) for s in meta["shape"]),
        dtype=str(meta["dtype"]),
        meta=dict(meta.get("extra", {})),
    )


class Autosaver:
    """Throttled, atomic recovery saves of one labels layer.

    Call :meth:`note_edit` after each paint event and :meth:`maybe_save` after edits and
    from a timer: a save happens when ``every_edits`` edits have accumulated, or when
    there is at least one unsaved edit and ``every_seconds`` have passed since the last
    save (or since the first unsaved edit, if never saved). ``clock`` (monotonic seconds)
    is injectable for tests. The caller passes a snapshot (copy) of the labels when
    saving from another thread.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None,
        source_path: str | os.PathLike,
        source_sha256: str,
        layer_name: str,
        *,
        every_edits: int = 20,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else autosave_dir()
        self.source_path = str(source_path)
        self.source_sha256 = source_sha256
        self.layer_name = layer_name
        self.every_edits = int(every_edits)
        self.every_seconds = float(every_seconds)
        self._clock = clock
        src_dir = Path(source_path).expanduser().resolve().parent
        if self.cache_dir.resolve() == src_dir:
            raise SaveRefusedError(
                f"autosave folder {self.cache_dir} is the folder of {self.source_path}: "
                f"recovery files are never written next to the data; unset {ENV_VAR} or "
                "point it to another folder"
            )
        self.path = self.cache_dir / f"{_key(source_path, source_sha256, layer_name)}.npz"
        self.unsaved_edits = 0
        self.total_edits = 0
        self._since: float | None = None  # clock of the last save, or of the first edit
        self.last_saved: float | None = None

    def note_edit(self, n: int = 1) -> None:
        """Count ``n`` edits (paint strokes, tool applications) since the last save."""
        if self.unsaved_edits == 0 and self.last_saved is None:
            self._since = self._clock()
        self.unsaved_edits += n
        self.total_edits += n

    def due(self, now: float | None = None) -> bool:
        """Whether :meth:`maybe_save` would save now."""
        if self.unsaved_edits <= 0:
            return False
        if self.unsaved_edits >= self.every_edits:
            return True
        now = self._clock() if now is None else now
        return self._since is not None and now - self._since >= self.every_seconds

    def maybe_save(
        self,
        labels: np.ndarray,
        now: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Path | None:
        """Save if :meth:`due`; returns the recovery path when it saved."""
        if not self.due(now):
            return None
        return self.save(labels, metadata, now=now)

    def save(
        self,
        labels: np.ndarray,
        metadata: dict[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> Path:
        """Write the recovery file now (atomically) and reset the throttle."""
        labels = np.asarray(labels)
        meta = {
            "format": FORMAT,
            "source_path": self.source_path,
            "source_sha256": self.source_sha256,
            "layer_name": self.layer_name,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_edits": self.total_edits,
            "shape": list(labels.shape),
            "dtype": labels.dtype.str,
            "extra": metadata or {},
        }
        meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, labels=labels, meta=meta_bytes)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.unsaved_edits = 0
        self.last_saved = self._since = self._clock() if now is None else now
        return self.path

    def discard(self) -> None:
        """Remove this layer's recovery file (after a successful save of the mask)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.unsaved_edits = 0


def find_recoveries(
    source_path: str | os.PathLike,
    source_sha256: str,
    cache_dir: str | os.PathLike | None = None,
) -> list[RecoveryEntry]:
    """Recovery files of an image (same content hash), newest first.

    ``source_path`` is only used to put the entries saved under that exact path first;
    unreadable files are skipped.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else autosave_dir()
    if not folder.is_dir():
        return []
    here = str(Path(source_path).expanduser().resolve())
    found = []
    for path in folder.glob("*.npz"):
        if path.name.startswith(".tmp-"):
            continue
        try:
            meta = _read_meta(path)
            entry = _entry(path, meta)
        except Exception:  # a corrupt or foreign file must not block recovery of others
            continue
        if entry.source_sha256 == source_sha256:
            found.append(entry)
    found.sort(key=lambda e: e.saved_at, reverse=True)
    found.sort(key=lambda e: str(Path(e.source_path).expanduser().resolve()) != here)
    return found


def restore(entry: RecoveryEntry) -> tuple[np.ndarray, dict[str, Any]]:
    """Read back the labels of a recovery entry (shape and dtype checked) and the
    caller's metadata stored with it."""
    try:
        with np.load(entry.path, allow_pickle=False) as npz:
            labels = npz["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpinesegError(
            f"recovery file {entry.path} cannot be read ({exc}); discard it"
        ) from exc
    if labels.shape != entry.shape or labels.dtype.str != entry.dtype:
        raise SpinesegError(
            f"recovery file {entry.path} holds {labels.dtype} {labels.shape}, its metadata "
            f"says {entry.dtype} {entry.shape}; discard it"
        )
    return labels, dict(entry.meta)


def discard(entry: RecoveryEntry) -> None:
    """Delete a recovery file (missing files are fine)."""
    with contextlib.suppress(FileNotFoundError):
        entry.path.unlink()


def prune(max_age_days: float = 30.0, cache_dir: str | os.PathLike | None = None) -> int:
    """Delete recovery files older than ``max_age_days``; returns how many."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else autosave_dir()
    if not folder.is_dir():
        return 0
    limit = time.time() - max_age_days * 86400
    n = 0
    for path in folder.glob("*.npz"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                n += 1
        except OSError:
            continue
    return n
