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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpinesegError

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import TaskSpec
    from .postprocess import MinSize

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
    are made, before any model loads. ``sizes`` is None when only SCT's literal reading
    takes the tokens (``+7``, ``1_0``: Python's ``int()`` reads them, we do not); which
    reading a run uses depends on the task (``postprocess.resolve_remove_small``).
    """

    tokens: tuple[str, ...]
    sizes: tuple[MinSize, ...] | None

    @classmethod
    def parse(cls, value: Any) -> RemoveSmall | None:
        """``"5mm3"``, ``"10, 20vox"``, ``["10", "20vox"]``, ``10``, ``MinSize(...)`` or None.

        One string is split on spaces and commas (the widget's and the API's form); the
        items of a list are command-line tokens, kept as written (SCT reads ``2,4vox``
        as one token, which it refuses); a number or ``MinSize`` is written with its unit
        (``10`` -> ``10vox``: SCT's 7T reading skips a value without one).
        """
        # imported here: the CLI builds its parser from this module without numpy/scipy
        from .postprocess import MinSize, parse_remove_small, split_tokens

        if value is None or isinstance(value, RemoveSmall):
            return value
        if isinstance(value, MinSize | int | float | str):
            value = split_tokens(value) if isinstance(value, str) else [value]
        if not isinstance(value, Sequence):
            raise SpinesegError(
                f"remove_small: expected sizes such as '10vox' or '5mm3' (one, a string or "
                f"a list), got a {type(value).__name__}"
            )
        written: list[str] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, MinSize | int | float | str):
                raise SpinesegError(
                    f"remove_small: expected sizes such as '10vox' or '5mm3', got {item!r}"
                )
            if not isinstance(item, str | MinSize):
                item = MinSize(float(item))  # a number: voxels, written with its unit
            written.append(str(item))
        tokens = tuple(written)
        if not tokens:
            return None
        try:
            sizes: tuple[MinSize, ...] | None = tuple(parse_remove_small(list(tokens)))
        except SpinesegError:
            if not _sct_reads(tokens):  # no reading takes it: say what ours expects
                raise
            sizes = None
        return cls(tokens=tokens, sizes=sizes)

    def __str__(self) -> str:
        return " ".join(self.tokens)


def _sct_reads(tokens: Sequence[str]) -> bool:
    """Whether ``sct_deepseg``'s ``int()`` reading takes every token (unit from the last
    one, as ``postprocess.sct_reading``), whatever the count: ``+7``, ``1_0``, ``-3``."""
    unit = "mm3" if "mm3" in tokens[-1] else "vox"
    try:
        for token in tokens:
            int(token.replace(unit, ""))
    except ValueError:
        return False
    return True


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
        if self.model is not None:  # absolute: workers and engines run in other folders
            set_(self, "model", str(Path(os.fspath(self.model)).expanduser().absolute()))
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

    def resolved(self, spec: TaskSpec) -> RunOptions:
        """A copy with the task's SCT defaults filled in where an option is None
        (``threshold``, ``largest``, ``fill_holes``): what a run of ``spec`` uses, and what
        its provenance records. ``remove_small`` stays as given: its default and its
        reading depend on the engine (``Engine.min_sizes_for``)."""
        d = spec.postprocess
        return replace(
            self,
            threshold=self.threshold if self.threshold is not None else d.threshold,
            largest=self.largest if self.largest is not None else d.largest,
            fill_holes=self.fill_holes if self.fill_holes is not None else d.fill_holes,
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
    dropped silently). A keyword given as None means "not given": ``options`` (or the
    default) keeps its value, so ``segment(img, options=opts, threshold=None)`` runs
    ``opts`` as they are (reset a value with ``opts.with_(threshold=None)``).
    """
    names = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"unknown run option(s): {', '.join(unknown)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if options is None:
        return RunOptions(**kwargs)
    return replace(options, **kwargs) if kwargs else options


def tokens_of(remove_small: RemoveSmall | None) -> Sequence[str] | None:
    """The literal ``-remove-small`` tokens (what SCT's reading takes), or None."""
    return remove_small.tokens if remove_small is not None else None
