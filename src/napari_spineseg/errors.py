"""Exceptions the plugin raises on purpose.

Every error a user can cause (a bad file, a missing model, a refused save) is one of
these, with a message that names the file or task and says what to do. Front ends (CLI,
widgets) catch :class:`SpinesegError` and show the message; anything else is a bug.
"""

from __future__ import annotations


class SpinesegError(Exception):
    """Base class: a problem the user can act on (message is meant to be shown as is)."""


class NiftiError(SpinesegError, ValueError):
    """A file is not a NIfTI image we can read safely (corrupt, truncated, unsupported)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LabelsError(SpinesegError, ValueError):
    """A label array cannot be used as given (written without changing its values, merged,
    interpolated...)."""


class SaveRefusedError(SpinesegError, OSError):
    """A save was refused to protect existing data (source image, sibling file, ...)."""


class ModelNotInstalledError(SpinesegError, FileNotFoundError):
    """The model of a task is missing, incomplete or corrupt; the message says how to fix it."""


class UntrustedModelError(SpinesegError, PermissionError):
    """A model from an unpinned source needs explicit trust (checkpoints are pickles)."""


class TaskError(SpinesegError, KeyError):
    """Unknown task name, or a task that cannot run on this input."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class Cancelled(SpinesegError):
    """A run was cancelled by the user; nothing was written."""


class GeometryWarning(UserWarning):
    """Geometry that other tools may interpret differently (obliquity, q/s mismatch...)."""


class EngineStoppedError(SpinesegError):
    """The engine process (or remote engine) died or went away during a run.

    Killed for memory, a crash inside the model's libraries, or a remote scheduler that
    stopped: nothing from that run is used, and the next run starts a fresh engine. (Not
    a ``RuntimeError``: napari's thread workers drop those as "aborted thread" errors.)
    """
