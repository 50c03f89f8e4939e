"""One run's options, validated once where they are made.

Every front end (``api.segment``, ``batch.segment_many``, the CLI, the widgets, the
notebook ``review()``, the cohort commands) builds a :class:`RunOptions` and passes the
object on; nothing downstream re-parses or re-serialises a value. The frozen dataclass is
also what travels to an engine process or a remote dask worker (it pickles; it holds no
path the remote side would have to see, except a custom ``model`` the user chose), and what
a result layer keeps in its metadata so that crop-and-refine re-runs the same model with
the same options (:meth:`RunOptions.as_dict` / :meth:`RunOptions.from_dict`, JSON-safe).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import SpinesegError
from .postprocess import MinSize, parse_remove_small, split_tokens

#: inference profiles: ``sct`` runs the model as ``sct_deepseg`` does (every fold shipped,
#: nnU-Net's tile overlap 0.5); ``fast`` trades accuracy for speed for a first look
#: (first fold only, tile overlap 0.25 for nnU-Net; the other engines ignore it)
PROFILES = ("sct", "fast")


@dataclass(frozen=True)
class RemoveSmall:
    """A ``-remove-small`` setting: the tokens as written and the sizes they parse to.

    Both are kept because ``sct_deepseg`` reads the literal tokens (``10`` and ``10vox``
    differ for the 7T task; see ``postprocess.sct_reading``) while our reading uses the
    parsed sizes. Parsed once, here: a value that cannot be read fails when the options
    are made, before any model loads.
    """

    tokens: tuple[str, ...]
    sizes: tuple[MinSize, ...]

    @classmethod
    def parse(cls, value: Any) -> RemoveSmall | None:
        """``"5mm3"``, ``"10, 20vox"``, ``["10", "20vox"]``, ``10``, ``MinSize(...)`` or None."""
        if value is None or isinstance(value, RemoveSmall):
            return value
        if isinstance(value, bool):
            raise SpinesegError(
                f"remove_small: expected sizes such as '10vox' or '5mm3', got {value}"
            )
        if isinstance(value, MinSize | int | float):
            value = [value]
        if isinstance(value, str):
            tokens = tuple(split_tokens(value))
        else:
            tokens = tuple(
                t for v in value for t in ([str(v)] if isinstance(v, MinSize) else split_tokens(v))
            )
        if not tokens:
            return None
        return cls(tokens=tokens, sizes=tuple(parse_remove_small(list(tokens))))

    def __str__(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class RunOptions:
    """The task, model and options of one segmentation run (None = the task's default).

    ``task``: a catalog task id or SCT alias; ``model``: an nnU-Net folder or zip of your
    own (``trust`` must be True: checkpoints are pickles). ``threshold``, ``largest``,
    ``fill_holes``, ``remove_small``, ``test_time_aug``, ``label_vert`` are
    ``sct_deepseg``'s ``-thr``, ``-largest``, ``-fill-holes``, ``-remove-small``,
    ``-test-time-aug``, ``-label-vert``; ``sct_compat`` reproduces SCT's voxels where our
    defaults differ; ``profile`` is one of :data:`PROFILES`.
    """

    task: str | None = None
    model: str | None = None
    trust: bool = False
    device: str = "auto"
    threshold: float | None = None
    largest: bool | None = None
    fill_holes: bool | None = None
    remove_small: RemoveSmall | None = field(default=None)
    test_time_aug: bool = False
    label_vert: bool = False
    sct_compat: bool = False
    profile: str = "sct"

    def __post_init__(self) -> None:
        from .engines.base import check_device

        set_ = object.__setattr__  # frozen: normalise once, here
        if self.model is not None:
            set_(self, "model", os.fspath(self.model))
        set_(self, "device", check_device(self.device))
        set_(self, "remove_small", RemoveSmall.parse(self.remove_small))
        for name in ("trust", "test_time_aug", "label_vert", "sct_compat"):
            set_(self, name, bool(getattr(self, name)))
        for name in ("largest", "fill_holes"):
            if getattr(self, name) is not None:
                set_(self, name, bool(getattr(self, name)))
        if self.threshold is not None:
            try:
                thr = float(self.threshold)
            except (TypeError, ValueError):
                raise SpinesegError(
                    f"threshold must be a number between 0 and 1, got {self.threshold!r}"
                ) from None
            if not (0 <= thr <= 1 or (self.sct_compat and math.isfinite(thr))):
                raise SpinesegError(
                    f"threshold must be between 0 and 1, got {self.threshold} (with "
                    "sct_compat, any finite number, as sct_deepseg takes)"
                )
            set_(self, "threshold", thr)
        if self.profile not in PROFILES:
            raise SpinesegError(
                f"unknown inference profile {self.profile!r}: use one of {', '.join(PROFILES)}"
            )

    def with_(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (layer metadata, sidecar provenance, the cohort's run key)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["remove_small"] = list(self.remove_small.tokens) if self.remove_small else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunOptions:
        """The inverse of :meth:`as_dict` (unknown keys ignored, so old records still load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def run_options(options: RunOptions | None = None, /, **kwargs: Any) -> RunOptions:
    """``options`` with keyword overrides, or new options from keywords only.

    The one place the keyword form of the public functions becomes a :class:`RunOptions`;
    a keyword that is not an option is a ``TypeError`` naming it (a typo must not be
    dropped silently).
    """
    names = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"unknown run option(s): {', '.join(unknown)}")
    if options is None:
        return RunOptions(**kwargs)
    return replace(options, **kwargs) if kwargs else options


def tokens_of(remove_small: RemoveSmall | None) -> Sequence[str] | None:
    """The literal ``-remove-small`` tokens (what SCT's reading takes), or None."""
    return remove_small.tokens if remove_small is not None else None
