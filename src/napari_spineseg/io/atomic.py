"""Crash-safe file replacement, shared by the mask writer and the JSON sidecars.

A file is never written in place: the new bytes go to a hidden temporary file in the
target's folder (``.NAME.spineseg-tmp-PID-RANDOM.EXT``), are flushed to disk, then
``os.replace`` swaps them in, so a reader or a crash sees the old file or the new one,
never half of each. Three things make this hold when processes die or compete:

* **One writer per target.** :func:`target_lock` takes an advisory lock on a hidden lock
  file next to the target (``fcntl.flock``; ``msvcrt.locking`` on Windows). Every save
  of a target runs under it, so a second process waits instead of interleaving its
  archive-then-replace with ours. The lock file is removed while still held (a waiter
  that then wins the lock on the unlinked file notices and retries), so none is left
  behind. On Windows, where an open file usually cannot be deleted, the empty lock file
  may stay; a file system without locking (some FUSE/SMB mounts) saves unlocked, with a
  logged warning.
* **Stale temporaries are ours to clean.** A killed save leaves its temporary file; the
  next save of the same target (under the lock, so no live writer owns one) removes every
  temporary whose name says it belongs to that target.
* **Short names when needed.** A legal 241-character file name plus the ~30 characters of
  the temporary suffix exceeds the usual 255-byte limit, so long names get a temporary and
  a lock file named from a hash of the target name instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import SaveRefusedError
from .checks import split_nifti_name

log = logging.getLogger(__name__)

TEMP_MARK = ".spineseg-tmp-"
LOCK_MARK = ".spineseg-lock"
#: How long a save waits for another process saving the same file before giving up.
LOCK_TIMEOUT_S = 120.0
_DEFAULT_NAME_MAX = 255
_NAME_KEY_LEN = 16

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

# What to tell the user for the errors a folder can give, keyed by errno.
_FIXES = {
    errno.EROFS: "the folder is on a read-only file system: save to another folder",
    errno.EACCES: "you may not write there: save to another folder or ask for write access",
    errno.EPERM: "you may not write there: save to another folder or ask for write access",
    errno.ENOSPC: "the disk is full: free some space or save to another disk",
    errno.EDQUOT: "your disk quota is reached: free some space or save to another disk",
    errno.ENAMETOOLONG: "the path is too long for this file system: choose a shorter name",
}


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) that ``folder``'s file system accepts."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return _DEFAULT_NAME_MAX


def _stem_ext(name: str) -> tuple[str, str]:
    stem, ext = split_nifti_name(name)
    if not ext:
        stem, ext = os.path.splitext(name)
    return stem, ext


def _name_key(target: Path) -> str:
    """A short, stable stand-in for a name too long to embed in a temporary's name."""
    return hashlib.sha256(os.fsencode(target.name)).hexdigest()[:_NAME_KEY_LEN]


def _fits(folder: Path, name: str) -> bool:
    return len(os.fsencode(name)) <= name_max(folder)


def temp_path(target: Path, folder: Path | None = None) -> Path:
    """A fresh temporary name for ``target``, in ``folder`` (default: the target's)."""
    folder = target.parent if folder is None else folder
    stem, ext = _stem_ext(target.name)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    name = f".{stem}{TEMP_MARK}{token}{ext}"
    if not _fits(folder, name):
        name = f"{TEMP_MARK}{_name_key(target)}-{token}{ext}"
    return folder / name


def _temp_pattern(target: Path) -> re.Pattern[str]:
    """Both forms :func:`temp_path` makes for ``target`` (and nothing else)."""
    stem, ext = _stem_ext(target.name)
    tail = r"\d+-[0-9a-f]{8}" + re.escape(ext)
    long_form = re.escape(f".{stem}{TEMP_MARK}") + tail
    short_form = re.escape(f"{TEMP_MARK}{_name_key(target)}-") + tail
    return re.compile(f"(?:{long_form}|{short_form})")


def stale_temps(target: Path, folder: Path | None = None) -> list[Path]:
    """Temporaries of ``target`` left in ``folder`` (only call while holding the lock)."""
    folder = target.parent if folder is None else folder
    pattern = _temp_pattern(target)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in sorted(names) if pattern.fullmatch(n)]


def remove_stale_temps(target: Path, folder: Path | None = None) -> int:
    """Delete what killed saves of ``target`` left behind; returns how many were removed."""
    removed = 0
    for path in stale_temps(target, folder):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted save", target, removed)
    return removed


def discard(path: Path) -> None:
    """Remove a temporary if it is still there; never hides the error being handled."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def lock_path(target: Path) -> Path:
    name = f".{target.name}{LOCK_MARK}"
    if not _fits(target.parent, name):
        name = f"{LOCK_MARK}-{_name_key(target)}"
    return target.parent / name


@contextlib.contextmanager
def target_lock(target: Path) -> Iterator[None]:
    """Hold the advisory lock of ``target`` (one save at a time, across processes).

    Raises :class:`SaveRefusedError` when the lock file cannot be created (read-only or
    full folder) or another process holds the lock for :data:`LOCK_TIMEOUT_S`.
    """
    path = lock_path(target)
    fd = _acquire(path, target)
    try:
        yield
    finally:
        # Unlink while holding: a process waiting on this inode sees it is gone and retries.
        with contextlib.suppress(OSError):
            os.unlink(path)
        _release(fd)


def _acquire(path: Path, target: Path) -> int:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            # Read-only is enough for flock, and lets a colleague open a lock file we made.
            fd = os.open(path, (os.O_RDONLY if fcntl else os.O_RDWR) | os.O_CREAT, 0o666)
        except OSError as exc:
            raise refusal(exc, target) from None
        try:
            locked = _wait_for_lock(fd, deadline, target)
            if not locked or os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass  # the holder removed it as we got the lock: take a fresh one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _wait_for_lock(fd: int, deadline: float, target: Path) -> bool:
    """Block until ``fd`` is locked (True), or return False where locks are unsupported."""
    delay = 0.002
    while True:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            elif msvcrt is not None:  # pragma: no cover - Windows
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:  # pragma: no cover
                return False
            return True
        except OSError as exc:
            busy = isinstance(exc, BlockingIOError) or exc.errno in (
                errno.EACCES,
                errno.EAGAIN,
                errno.EDEADLK,
            )
            if not busy:
                log.warning("%s: file locking unsupported here (%s): saving unlocked", target, exc)
                return False
        if time.monotonic() > deadline:
            raise SaveRefusedError(
                f"{target}: another program (or another napari window) has been saving this "
                f"file for {LOCK_TIMEOUT_S:.0f} s; nothing was written, your edits are still "
                "in memory. Try again when it has finished"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _release(fd: int) -> None:
    try:
        if fcntl is None and msvcrt is not None:  # pragma: no cover - Windows
            with contextlib.suppress(OSError):
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)  # closing releases a flock


def write_new(path: Path, payload: bytes, mode: int | None = None) -> None:
    """Create ``path`` (it must not exist), write ``payload`` and flush it to disk.

    ``mode`` sets the permission bits exactly; None leaves the umask's default.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with open(fd, "wb") as fh:
        if mode is not None and hasattr(os, "fchmod"):
            with contextlib.suppress(OSError):  # best effort: some shares refuse chmod
                os.fchmod(fd, mode)
        fh.write(payload)
        fh.flush()
        os.fsync(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def permission_bits(path: Path) -> int | None:
    """``path``'s permission bits, or None when it does not exist."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return None


def check_target(target: Path) -> None:
    """Refuse names the file system cannot hold and targets that are not plain files."""
    limit = name_max(target.parent)
    size = len(os.fsencode(target.name))
    if size > limit:
        raise SaveRefusedError(
            f"{target}: the file name is {size} bytes long but this file system allows "
            f"{limit}; nothing was written. Choose a shorter name"
        )
    if target.is_dir():
        raise SaveRefusedError(
            f"{target} is a folder: save the mask under a file name (inside it, or next to "
            "it); nothing was written"
        )
    if target.exists() and not target.is_file():
        raise SaveRefusedError(
            f"{target} exists and is not a regular file (a pipe or a device?): choose "
            "another name; nothing was written"
        )


def refusal(
    exc: OSError, target: Path, doing: str = "write", where: Path | None = None
) -> SaveRefusedError:
    """A :class:`SaveRefusedError` for an OS error, naming the file and the fix.

    ``doing`` is "write" (nothing was written), "archive" (keeping the previous
    version in the folder ``where`` failed) or "replace" (the final swap failed).
    """
    reason = exc.strerror or str(exc)
    fix = _FIXES.get(exc.errno, "check the folder, or save elsewhere")
    if doing == "archive":
        what = f"cannot keep the previous version in {where} ({reason}); nothing was replaced"
    elif doing == "replace":
        what = f"cannot replace the file ({reason}); it was left as it was"
    else:
        what = f"cannot write in {target.parent} ({reason}); nothing was written"
    return SaveRefusedError(f"{target}: {what}, your edits are still in memory. Fix: {fix}")


def replace_locked(target: Path, payload: bytes, mode: int | None = None) -> Path:
    """Atomically replace ``target`` with ``payload``; the caller holds its lock."""
    remove_stale_temps(target)
    tmp = temp_path(target)
    try:
        try:
            write_new(tmp, payload, mode)
            os.replace(tmp, target)
        except OSError as exc:
            raise refusal(exc, target) from None
        fsync_dir(target.parent)
    finally:
        discard(tmp)
    return target


def replace_file(target: Path, payload: bytes, mode: int | None = None) -> Path:
    """Atomically replace ``target`` with ``payload``, under its lock."""
    check_target(target)
    with target_lock(target):
        return replace_locked(target, payload, mode)
