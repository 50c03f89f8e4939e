"""The cohort review queue, Qt-free: cases, their status, and its file in the derivatives.

Why a file and not memory: a study is corrected over days and sometimes by two people.
The queue lives in ``DERIV/.spineseg/cohort.json`` (status, rater, time spent and who has
a case open, per image), re-read before every change and written atomically under a
lock (read-modify-write: two sessions saving at once lose nothing), so the next
day's session or a second reviewer picks it up, and opening a case another reviewer has
open gives a :class:`CaseOpenWarning`.

Saving a corrected case writes each mask over itself in the derivatives through
:func:`napari_spineseg.io.save_labels` (exact geometry, atomic, previous version kept in
``.spineseg-history``) and appends to its sidecar the ``GeneratedBy`` entry that SCT's
``manual-correction`` appends (``Name: Manual``, ``Author``, ``Date``), with what this tool
knows: voxels added/removed per class (:mod:`napari_spineseg.correction.edits`), the time
spent on the case and the tool version (:func:`napari_spineseg.correction.correction_record`).

Each case's **lowest confidence** is read from its masks' sidecars when the queue is built
(the record the batch writes, :mod:`.confidence`; no NIfTI file is opened): the model's
lowest per-slice confidence over the case's classes, blank when the model gave none. It
always describes the model's output: once a mask is corrected the value stays and the
case is marked (``0.81*``), since the definition needs probabilities the corrected mask
does not have.

    >>> s = CohortSession.open_path("derivatives/spineseg", rater="Jane Doe")
    >>> case = s.open(0)              # loads the image and its masks (display order)
    >>> s.save({"_sc_seg": edited})   # writes the mask, appends the Manual entry
    >>> s.approve(); s.next()
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpinesegError
from . import bids
from .confidence import CaseConfidence, case_confidence
from .confidence import read as read_confidence

STATE_JSON = "cohort.json"
STATUSES = ("to do", "in progress", "corrected", "approved")
#: QC marks, in the order SCT's QC report cycles them with its F key ("" is no mark)
MARKS = ("pass", "fail", "artifact")
#: the folder of this tool's per-user settings (the rater's name), for tests and kiosks
CONFIG_ENV = "SPINESEG_CONFIG_DIR"
#: a case open elsewhere for longer than this is taken as abandoned (no warning)
STALE_OPEN_S = 12 * 3600


class CaseOpenWarning(UserWarning):
    """Another reviewer (or another session) has this case open."""


@dataclass
class Case:
    """One image of the cohort and its masks (``masks``: SCT suffix -> mask path)."""

    id: str  # image path relative to the raw dataset
    subject: str
    session: str
    image: Path
    masks: dict[str, Path]
    qc: str = ""  # the QC report's mark when read from its YAML ("fail", "artifact")
    status: str = "to do"
    rater: str = ""
    seconds: float = 0.0
    flags: dict[str, int] = field(default_factory=dict)  # flag -> flagged slices, once opened
    #: the model's lowest confidence, from the sidecars (see the module docstring)
    confidence: CaseConfidence = field(default_factory=lambda: CaseConfidence(None))

    def row(self) -> dict[str, Any]:
        """The table row (plain values; ``confidence`` as shown: ``0.81``, ``0.81*``
        when corrected since, blank when unknown)."""
        return {
            "subject": self.subject,
            "session": self.session,
            "image": self.image.name,
            "outputs": ", ".join(self.masks),
            "qc": self.qc,
            "flags": ", ".join(f"{k} ×{v}" for k, v in self.flags.items()),
            "confidence": self.confidence.text(),
            "status": self.status,
            "rater": self.rater,
            "time": _hms(self.seconds),
        }


@dataclass
class OpenCase:
    """A case loaded for review: the image and its masks in display order."""

    case: Case
    volume: Any  # io.Volume of the image
    labels: dict[str, np.ndarray]  # suffix -> display-order labels as on disk at open
    classes: dict[str, dict[int, str]]
    colors: dict[str, dict[int, tuple]]
    opened_at: float


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s else ""


class CohortSession:
    """The review queue of one derivatives folder (see the module docstring)."""

    def __init__(
        self,
        deriv: str | os.PathLike,
        rater: str | None = None,
        *,
        only: dict[str, str] | None = None,
    ) -> None:
        """``only``: image file name -> QC mark, to keep just those cases (a QC YAML)."""
        self.plan = bids.load_plan(deriv)
        self.deriv = self.plan.deriv
        self.rater = rater or getpass.getuser()
        self.session_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.cases: list[Case] = []
        for image in self.plan.images:
            folder = self.plan.folder(image)
            names = bids.output_names(self.plan.spec, image)
            masks = {s: folder / n for s, n in names.items() if (folder / n).is_file()}
            if not masks:
                continue
            rel = image.relative_to(self.plan.raw_root).as_posix()
            mark = only.get(image.name) if only is not None else ""
            if only is not None and mark is None:
                continue
            ent = bids.entities(image)
            case = Case(rel, ent["sub"], ent.get("ses", ""), image, masks, mark)
            case.confidence = _confidence_of(masks)
            self.cases.append(case)
        if not self.cases:
            what = "the QC YAML's images" if only is not None else "this folder"
            raise SpinesegError(f"{self.deriv}: no segmented case among {what}")
        self.index: int | None = None
        # Opened from a QC YAML: its marks are the newer triage, shown over the queue's
        # until a case is marked again in this session.
        self._yaml_marks = only is not None
        self._marked_here: set[str] = set()
        self.current: OpenCase | None = None
        self._refresh_from_disk()

    # ------------------------------------------------------------------ construction
    @classmethod
    def open_path(
        cls,
        path: str | os.PathLike,
        rater: str | None = None,
        deriv: str | os.PathLike | None = None,
    ) -> CohortSession:
        """A session on a derivatives folder, or on a QC YAML (``qc_fail.yml``: only its
        images, marked "fail"; the derivatives folder found from them unless given)."""
        path = Path(path).expanduser()
        if path.is_dir():
            return cls(path, rater)
        from .qc_report import read_marks_yaml

        lists = read_marks_yaml(path)
        mark = "artifact" if "artifact" in path.name else "fail"
        only = {Path(f).name: mark for files in lists.values() for f in files}
        if deriv is None:
            deriv = _guess_deriv([Path(f) for files in lists.values() for f in files], path)
        return cls(deriv, rater, only=only)

    # ------------------------------------------------------------------ state file
    @property
    def state_path(self) -> Path:
        return self.deriv / bids.STATE_DIR / STATE_JSON

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"cases": {}}
        except (OSError, ValueError) as exc:
            raise SpinesegError(
                f"{self.state_path}: unreadable review queue ({exc}); restore it from "
                "a backup or delete it (the masks and sidecars are not affected)"
            ) from None
        return data if isinstance(data, dict) and "cases" in data else {"cases": {}}

    def _update(
        self,
        case: Case,
        *,
        add_seconds: float = 0.0,
        keep_status_unless_to_do: bool = False,
        release: bool = False,
        **changes: Any,
    ) -> dict[str, Any]:
        """Change one case's entry in the file and return it: read, change, write, all
        under the file's lock (:func:`~napari_spineseg.io.atomic.target_lock`), so two
        sessions updating the queue at once never lose each other's changes.

        ``changes``: new values (None removes the key). ``add_seconds`` is added to the
        time spent as the file has it then; with ``keep_status_unless_to_do`` a ``status``
        change applies only to a case still "to do" (opening a corrected case keeps it
        corrected); ``release`` removes ``open_by`` if it is this session's (a second
        reviewer who opened the case since keeps it).
        """
        from ..io.atomic import replace_locked, target_lock

        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with target_lock(self.state_path):
            data = self._read_state()
            entry = data["cases"].setdefault(case.id, {})
            if keep_status_unless_to_do and entry.get("status", "to do") != "to do":
                changes.pop("status", None)
            for k, v in changes.items():
                if v is None:
                    entry.pop(k, None)
                else:
                    entry[k] = v
            held = entry.get("open_by")
            if release and isinstance(held, dict) and held.get("session") == self.session_id:
                del entry["open_by"]
            if add_seconds:
                entry["seconds"] = float(entry.get("seconds", 0.0)) + add_seconds
            text = json.dumps(data, indent=4, ensure_ascii=False) + "\n"
            replace_locked(self.state_path, text.encode("utf-8"))
        self._apply(case, entry)
        return entry

    def _apply(self, case: Case, entry: dict[str, Any]) -> None:
        case.status = entry.get("status", "to do")
        case.rater = entry.get("rater", "")
        case.seconds = float(entry.get("seconds", 0.0))
        case.flags = dict(entry.get("flags", {}))
        if "qc" in entry and (not self._yaml_marks or case.id in self._marked_here):
            case.qc = str(entry["qc"])

    def _refresh_from_disk(self) -> None:
        """Take the file's state (another reviewer's changes) into ``cases``."""
        entries = self._read_state()["cases"]
        for case in self.cases:
            self._apply(case, entries.get(case.id, {}))

    # ------------------------------------------------------------------ navigation
    def open(self, i: int) -> OpenCase:
        """Load case ``i`` (image + masks), mark it in progress, warn if open elsewhere."""
        from ..correction import qc
        from ..io import load

        if not 0 <= i < len(self.cases):
            raise IndexError(f"case {i} out of range 0..{len(self.cases) - 1}")
        self.close()
        case = self.cases[i]
        entry = self._read_state()["cases"].get(case.id, {})
        other = entry.get("open_by")
        if (
            isinstance(other, dict)
            and other.get("session") != self.session_id
            and time.time() - float(other.get("since", 0)) < STALE_OPEN_S
        ):
            warnings.warn(
                f"{case.id} is open by {other.get('rater')} on {other.get('host')} since "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(other.get('since', 0)))}; "
                "if you both save, the last save wins (the other version is kept in "
                ".spineseg-history)",
                CaseOpenWarning,
                stacklevel=2,
            )
        volume = load(case.image)
        labels, classes, colors, flags = {}, {}, {}, {}
        outputs = {o.suffix: o for o in self.plan.spec.outputs}
        for suffix, path in case.masks.items():
            mask = load(path)
            if not volume.geometry.matches(mask.geometry):
                raise SpinesegError(f"{path}: not on the grid of {case.image}; re-run the batch")
            labels[suffix] = np.asarray(mask.display_data())
            out = outputs.get(suffix)
            classes[suffix] = dict(out.names) if out and out.names else {1: suffix.strip("_")}
            colors[suffix] = dict(out.colors) if out else {}
            table = qc.slice_table(labels[suffix], volume.geometry.scale, classes[suffix])
            for name in qc.FLAGS:
                n = int(table.flags[name].sum())
                if n:
                    flags[name] = flags.get(name, 0) + n
            # low_confidence needs the model's probabilities: the batch's record has its
            # slices, as long as the mask is still the model's output
            model = case.confidence.masks.get(suffix)
            low = model.flagged_slices() if model is not None else []
            if low:
                flags["low_confidence"] = flags.get("low_confidence", 0) + len(low)
        self._update(
            case,
            status="in progress",
            keep_status_unless_to_do=True,
            open_by={
                "rater": self.rater,
                "host": socket.gethostname(),
                "session": self.session_id,
                "since": time.time(),
            },
            flags=flags,
        )
        self.index = i
        self.current = OpenCase(case, volume, labels, classes, colors, time.monotonic())
        return self.current

    def close(self) -> None:
        """Leave the current case: add the time spent, release it for other reviewers."""
        if self.current is None:
            return
        case = self.current.case
        spent = time.monotonic() - self.current.opened_at
        self._update(case, add_seconds=spent, release=True)
        self.current = None

    def next(self) -> OpenCase | None:
        """Open the next case (None, and the current one closed, at the end)."""
        i = -1 if self.index is None else self.index
        if i + 1 >= len(self.cases):
            self.close()
            return None
        return self.open(i + 1)

    def previous(self) -> OpenCase | None:
        """Open the previous case (None at the start)."""
        if not self.index:
            return None
        return self.open(self.index - 1)

    # ------------------------------------------------------------------ decisions
    def _require(self) -> OpenCase:
        if self.current is None:
            raise SpinesegError("no case is open: call open(i) or next() first")
        return self.current

    def time_on_case(self) -> float:
        """Seconds spent on the current case, this session included."""
        cur = self._require()
        return cur.case.seconds + (time.monotonic() - cur.opened_at)

    def save(self, labels: dict[str, np.ndarray], *, author: str | None = None) -> list[Path]:
        """Write the edited masks (display order, per suffix) over their derivatives files
        and append the manual-correction entry to each sidecar; status "corrected"."""
        from .. import sidecar
        from ..correction import EditTracker, correction_record
        from ..saving import save_mask

        cur = self._require()
        unknown = set(labels) - set(cur.labels)
        if unknown:
            raise SpinesegError(
                f"{cur.case.id}: no mask with suffix {sorted(unknown)}; it has {list(cur.labels)}"
            )
        spent = round(self.time_on_case(), 1)
        written = []
        for suffix, data in labels.items():
            data = np.asarray(data)
            if data.shape != cur.labels[suffix].shape:
                raise SpinesegError(
                    f"{cur.case.masks[suffix]}: labels of shape {data.shape}, the mask is "
                    f"{cur.labels[suffix].shape} (display order)"
                )
            edits = EditTracker(cur.labels[suffix]).diff(data)
            path = cur.case.masks[suffix]
            record = correction_record(
                author or self.rater,
                classes=cur.classes[suffix],
                edits=edits,
                extra={
                    "Task": self.plan.spec.id,
                    "TimeSpentSeconds": spent,
                    "Tool": "napari-spineseg cohort review",
                },
            )
            save_mask(  # the one save path: history, atomic mask then sidecar
                cur.volume.geometry.to_file(data),
                path,
                like=cur.volume,
                classes=cur.classes[suffix],
                loaded=sidecar.read(path),
                record=record,
            )
            cur.labels[suffix] = data.copy()
            written.append(path)
        cur.case.confidence = _confidence_of(cur.case.masks)  # now marked corrected
        self._update(cur.case, status="corrected", rater=author or self.rater)
        return written

    def approve(self) -> None:
        """Mark the current case approved (by this rater)."""
        cur = self._require()
        self._update(cur.case, status="approved", rater=self.rater)

    def set_status(self, i: int, status: str) -> None:
        """Set a case's status by hand (one of :data:`STATUSES`)."""
        if status not in STATUSES:
            raise SpinesegError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        self._update(self.cases[i], status=status)

    def mark(self, i: int, mark: str) -> None:
        """Set case ``i``'s QC mark (one of :data:`MARKS`, or "" for none), kept in the
        queue file like its status."""
        if mark and mark not in MARKS:
            raise SpinesegError(f"QC mark {mark!r}: use one of {', '.join(MARKS)} (or '')")
        self._marked_here.add(self.cases[i].id)
        self._update(self.cases[i], qc=mark)

    def write_marks_yaml(self, path: str | os.PathLike, mark: str = "fail") -> Path:
        """Write the images marked ``mark`` as a manual-correction YAML (``qc_fail.yml``:
        one list per kind of file, as the QC report's Save Fails writes it)."""
        from ..io.atomic import replace_file
        from .qc_report import manual_correction_key

        self._refresh_from_disk()
        outputs = {o.suffix: o for o in self.plan.spec.outputs}
        lists: dict[str, list[str]] = {}
        for case in self.cases:
            if case.qc != mark:
                continue
            for suffix in case.masks:
                key = manual_correction_key(outputs[suffix]) if suffix in outputs else "FILES_SEG"
                if str(case.image) not in lists.setdefault(key, []):
                    lists[key].append(str(case.image))
        text = "".join(
            f"{key}:\n" + "".join(f"- {json.dumps(p)}\n" for p in images)
            for key, images in lists.items()
        )
        return replace_file(Path(path), (text or "# No rows matched\n").encode("utf-8"))

    def rows(self) -> list[dict[str, Any]]:
        """The table (one dict per case), refreshed from the file."""
        self._refresh_from_disk()
        return [c.row() for c in self.cases]


def _confidence_of(masks: dict[str, Path]) -> CaseConfidence:
    """A case's lowest confidence from its masks' sidecars (JSON only: fast for a cohort)."""
    from .. import sidecar

    return case_confidence({s: read_confidence(sidecar.read(p)) for s, p in masks.items()})


def next_mark(mark: str) -> str:
    """The mark after ``mark`` in SCT's cycle: none -> pass -> fail -> artifact -> none."""
    cycle = ("", *MARKS)
    return cycle[(cycle.index(mark) + 1) % len(cycle)] if mark in cycle else MARKS[0]


def _rater_file() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser() / "rater.json"
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-spineseg")) / "rater.json"


def remembered_rater() -> str:
    """The rater's name saved by :func:`remember_rater` ("" when none), so that the name
    is asked once per user, not once per session."""
    try:
        data = json.loads(_rater_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name = data.get("rater") if isinstance(data, dict) else None
    return name.strip() if isinstance(name, str) else ""


def remember_rater(name: str) -> None:
    """Keep ``name`` in the per-user config folder (``platformdirs.user_config_dir``, or
    ``$SPINESEG_CONFIG_DIR``). Best effort: a folder that cannot be written only means
    the name is asked again next time, so it is logged, never raised."""
    from ..io.atomic import replace_file

    path = _rater_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"rater": name.strip()}, ensure_ascii=False) + "\n"
        replace_file(path, payload.encode("utf-8"))
    except (OSError, SpinesegError) as exc:
        logging.getLogger(__name__).warning("could not remember the rater in %s: %s", path, exc)


def _guess_deriv(images: list[Path], yaml_path: Path) -> Path:
    """``<raw root>/derivatives/spineseg`` of the YAML's first image (BIDS convention)."""
    for image in images:
        for parent in image.parents:
            if (parent / "dataset_description.json").is_file() and parent.name != "anat":
                guess = parent / "derivatives" / "spineseg"
                if (guess / bids.STATE_DIR / bids.PLAN_JSON).is_file():
                    return guess
                break
    raise SpinesegError(
        f"{yaml_path}: cannot tell which derivatives folder its images belong to; "
        "pass it: cohort(viewer, YAML, deriv=DERIV)"
    )
