"""Per-slice quality control of a segmentation, for slice-by-slice review.

Reviewing a cord mask means walking down the cord one axial slice at a time; this module
ranks the slices so the reviewer looks at the doubtful ones first. Everything works on
label arrays in the display orientation (axis 0 runs superior -> inferior, one axial
slice per index; axes 1/2 are in-plane) with the voxel size ``spacing = (s0, s1, s2)``
in mm.

Flags (per slice; a slice is flagged when any class raises the flag):

``empty``
    a cord class has no voxel on a slice *inside* its own superior-inferior extent
    (between its first and last non-empty slice): a gap in the cord is never anatomy.
``area_jump``
    for cord and other non-lesion classes, inside the class extent: the cross-sectional
    area differs from the median area of the up to four neighbouring slices (±2, same
    extent, the slice itself excluded) by more than ``jump_tolerance`` (30 %) of that
    median. Needs at least two neighbours. Lesions are excluded: their area changes
    abruptly by nature.
``extra_components``
    a cord class has more than one 2D connected component (8-connectivity) on the slice.
``low_confidence``
    the model confidence of a class (see below) is below ``low_confidence`` (0.75).
``lesion_outside_cord``
    a 2D lesion component (8-connectivity) neither overlaps nor touches (8-neighbour)
    the cord on that slice. The cord is the union of the cord classes (lesion voxels
    usually *replace* cord voxels in a multi-class map, hence "touches" rather than
    "inside"), or ``cord_reference`` when the cord is a separate mask (SCT's
    ``_sc_seg`` next to ``_lesion_seg``). Without any cord, the flag is never raised.

Model confidence of class ``c`` on a slice, from its probability map ``p``: the mean of
``max(p, 1 - p)`` over the voxels where the model *or* the current labels see the class
(``p > 0.5`` or ``labels == c``). It is 1 where the model is certain, 0.5 where it hesitated,
and it drops where the labels were painted over voxels the model rejected. NaN when the
class is absent from the slice or no probability map was given (never flagged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import LabelsError

#: A non-lesion class's area differing from its neighbours' median by more than this
#: fraction of it raises ``area_jump`` (calibrated: docs/review.md, "Flag calibration").
JUMP_TOLERANCE = 0.30
#: Model confidence below this raises ``low_confidence``.
LOW_CONFIDENCE = 0.75
#: A crop-and-refine slab is suggested only when the poor run at an end of the cord is at
#: most this fraction of the cord's length ...
MAX_SLAB_FRACTION = 1 / 3
#: ... and never when more than this fraction of the cord's slices is poor: the model
#: does not fit the image, and refining a slab will not fix that.
POOR_THROUGHOUT = 0.5

#: Weight of each flag in the severity used to sort slices (higher first).
FLAG_WEIGHTS: dict[str, int] = {
    "empty": 8,
    "lesion_outside_cord": 4,
    "extra_components": 2,
    "area_jump": 2,
    "low_confidence": 1,
}
FLAGS: tuple[str, ...] = tuple(FLAG_WEIGHTS)

_CORD_NAMES = {"sc", "cord", "spinal cord", "spinal_cord", "spinalcord", "wm", "gm"}
_CORD_WORDS = ("cord", "matter")


def is_cord_name(name: str) -> bool:
    """Default guess of the cord classes: "cord", "spinal_cord", "sc", "wm", "gm", "* matter"."""
    n = name.strip().lower()
    return n in _CORD_NAMES or any(w in n for w in _CORD_WORDS)


def is_lesion_name(name: str) -> bool:
    """Default guess of the lesion classes: any name containing "lesion"."""
    return "lesion" in name.strip().lower()


# Components on each axial slice, never across slices: 8-connectivity in-plane only.
_SLICE_8CONN = np.zeros((3, 3, 3), dtype=bool)
_SLICE_8CONN[1] = True


@dataclass
class SliceTable:
    """Per-slice, per-class QC values of one label array (see the module docstring).

    Arrays are indexed by display slice (axis 0). ``area``/``components``/``confidence``
    map a class value to an array of length ``n_slices``; ``class_flags[flag][value]`` is
    a boolean array; ``flags[flag]`` is the per-slice union over classes. ``reviewed`` is
    the reviewer's own mark and survives recomputation (see ``slice_table(previous=)``).
    """

    n_slices: int
    spacing: tuple[float, float, float]
    classes: dict[int, str]
    cord_classes: tuple[int, ...]
    lesion_classes: tuple[int, ...]
    area: dict[int, np.ndarray]
    components: dict[int, np.ndarray]
    confidence: dict[int, np.ndarray]
    extent: dict[int, tuple[int, int] | None]
    class_flags: dict[str, dict[int, np.ndarray]]
    flags: dict[str, np.ndarray]
    reviewed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    #: how far past its bound each flag is, 0..1 per slice (ranks slices of equal
    #: severity: a 2-voxel speck after a blob half the size of the cord)
    magnitude: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ per-slice values
    def severity(self) -> np.ndarray:
        """Sum of :data:`FLAG_WEIGHTS` of the flags raised on each slice (0 = clean)."""
        sev = np.zeros(self.n_slices, dtype=int)
        for name, weight in FLAG_WEIGHTS.items():
            sev += weight * self.flags[name]
        return sev

    def badness(self) -> np.ndarray:
        """Sum over the raised flags of their :attr:`magnitude` (0 = clean)."""
        out = np.zeros(self.n_slices)
        for name, mag in self.magnitude.items():
            out += np.where(self.flags[name], mag, 0.0)
        return out

    def slice_confidence(self) -> np.ndarray:
        """Lowest class confidence on each slice (NaN where no class has one)."""
        if not self.confidence:
            return np.full(self.n_slices, np.nan)
        stack = np.stack(list(self.confidence.values()))
        out = np.full(self.n_slices, np.nan)
        has = ~np.all(np.isnan(stack), axis=0)
        out[has] = np.nanmin(stack[:, has], axis=0)
        return out

    def summary(self) -> dict[int, ClassSummary]:
        """Per-class size and extent from the table's areas (what :func:`summary`
        computes from the labels, without reading them again)."""
        s0, s1, s2 = self.spacing
        out = {}
        for v, name in self.classes.items():
            counts = np.rint(self.area[v] / (s1 * s2)).astype(np.int64)
            ext = self.extent.get(v)
            n = int(counts.sum())
            out[v] = ClassSummary(
                value=v,
                name=name,
                voxels=n,
                volume_mm3=n * s0 * s1 * s2,
                first=None if ext is None else ext[0],
                last=None if ext is None else ext[1],
                length_mm=0.0 if ext is None else (ext[1] - ext[0] + 1) * s0,
                area_profile=counts * (s1 * s2) if v in self.cord_classes else None,
            )
        return out

    def flagged(self) -> np.ndarray:
        """Boolean per slice: any flag raised."""
        return self.severity() > 0

    def flag_names(self, index: int) -> list[str]:
        """Names of the flags raised on slice ``index`` (in severity order)."""
        return [name for name in FLAGS if self.flags[name][index]]

    # ------------------------------------------------------------------------- ordering
    def order(
        self, by: str = "severity", *, only_flagged: bool = False, hide_reviewed: bool = False
    ) -> np.ndarray:
        """Slice indices in review order.

        ``by="severity"``: most severe first, then furthest past the flags' bounds
        (:meth:`badness`), then least confident, then superior first.
        ``by="confidence"``: least confident first (slices without confidence last), then
        most severe. ``by="slice"``: superior to inferior.
        """
        idx = np.arange(self.n_slices)
        sev = self.severity()
        conf = self.slice_confidence()
        conf_key = np.where(np.isnan(conf), np.inf, conf)
        if by == "severity":
            order = np.lexsort((idx, conf_key, -self.badness(), -sev))
        elif by == "confidence":
            order = np.lexsort((idx, -sev, conf_key))
        elif by == "slice":
            order = idx
        else:
            raise ValueError(f"order(by={by!r}): use 'severity', 'confidence' or 'slice'")
        keep = np.ones(self.n_slices, bool)
        if only_flagged:
            keep &= sev > 0
        if hide_reviewed:
            keep &= ~self.reviewed
        return order[keep[order]]

    # ------------------------------------------------------------------- review marks
    def set_reviewed(self, slices: int | Iterable[int], value: bool = True) -> None:
        """Mark (or unmark with ``value=False``) slices as reviewed."""
        sl = np.atleast_1d(np.asarray(slices if np.isscalar(slices) else list(slices), int))
        if sl.size and (sl.min() < 0 or sl.max() >= self.n_slices):
            raise IndexError(f"slice index out of range 0..{self.n_slices - 1}: {sl.tolist()}")
        self.reviewed[sl] = value

    def clear_reviewed(self) -> None:
        """Forget every review mark."""
        self.reviewed[:] = False

    def reviewed_slices(self) -> list[int]:
        """Indices of the slices marked as reviewed (for the provenance record)."""
        return np.flatnonzero(self.reviewed).tolist()

    # ---------------------------------------------------------------------- table rows
    def rows(self, order: Iterable[int] | None = None) -> list[dict]:
        """One plain dict per slice (for a table widget): slice, severity, flags,
        confidence, reviewed and ``area``/``components``/``confidence`` per class name."""
        sev = self.severity()
        conf = self.slice_confidence()
        out = []
        for i in self.order("slice") if order is None else order:
            i = int(i)
            out.append(
                {
                    "slice": i,
                    "severity": int(sev[i]),
                    "flags": self.flag_names(i),
                    "confidence": float(conf[i]),
                    "reviewed": bool(self.reviewed[i]),
                    "area": {self.classes[v]: float(a[i]) for v, a in self.area.items()},
                    "components": {self.classes[v]: int(c[i]) for v, c in self.components.items()},
                    "class_confidence": {
                        self.classes[v]: float(c[i]) for v, c in self.confidence.items()
                    },
                }
            )
        return out


def _check(labels: np.ndarray, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise LabelsError(f"review needs a 3D label array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise LabelsError(f"review needs an integer label array, got dtype {labels.dtype}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise LabelsError(f"spacing must be three positive voxel sizes in mm, got {spacing!r}")
    return labels, sp  # type: ignore[return-value]


def _class_sets(classes, cord_classes, lesion_classes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if cord_classes is None:
        cord = tuple(v for v, n in classes.items() if is_cord_name(n))
    else:
        cord = tuple(int(v) for v in cord_classes)
    if lesion_classes is None:
        lesion = tuple(v for v, n in classes.items() if is_lesion_name(n) and v not in cord)
    else:
        lesion = tuple(int(v) for v in lesion_classes)
    return cord, lesion


def _inplane_crop(occupied: np.ndarray) -> tuple[slice, slice, slice]:
    """All slices, in-plane bounding box of ``occupied`` padded by one voxel.

    Per-slice areas and components do not depend on the empty surroundings; cropping to
    the cord's box makes the table about 20x cheaper on a 320x320 in-plane grid.
    """
    out = [slice(None)]
    for axis in (1, 2):
        other = 2 if axis == 1 else 1
        idx = np.flatnonzero(occupied.any(axis=(0, other)))
        if idx.size == 0:
            out.append(slice(0, 1))
        else:
            out.append(slice(max(0, idx[0] - 1), idx[-1] + 2))
    return tuple(out)  # type: ignore[return-value]


def _extent(counts: np.ndarray) -> tuple[int, int] | None:
    nz = np.flatnonzero(counts)
    return (int(nz[0]), int(nz[-1])) if nz.size else None


def _components_per_slice(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number of 8-connected 2D components on each axial slice (one 3D label call), and
    the fraction of the slice's voxels outside its largest component."""
    lab, n = ndimage.label(mask, structure=_SLICE_8CONN)
    out = np.zeros(mask.shape[0], dtype=int)
    largest = np.zeros(mask.shape[0], dtype=np.int64)
    total = np.zeros(mask.shape[0], dtype=np.int64)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    for k, obj in enumerate(ndimage.find_objects(lab), start=1):
        if obj is not None:
            z = obj[0].start  # every object lies on exactly one slice
            out[z] += 1
            total[z] += sizes[k]
            largest[z] = max(largest[z], sizes[k])
    outside = np.zeros(mask.shape[0])
    has = total > 0
    outside[has] = 1.0 - largest[has] / total[has]
    return out, outside


def _area_jump(
    area: np.ndarray, ext: tuple[int, int] | None, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """The flag, and the relative deviation from the neighbours' median (0..1)."""
    flag = np.zeros(area.shape[0], bool)
    deviation = np.zeros(area.shape[0])
    if ext is None:
        return flag, deviation
    first, last = ext
    for i in range(first, last + 1):
        nb = [area[j] for j in range(i - 2, i + 3) if j != i and first <= j <= last]
        if len(nb) < 2:
            continue
        med = float(np.median(nb))
        flag[i] = med > 0 and abs(area[i] - med) > tolerance * med
        deviation[i] = min(1.0, abs(area[i] - med) / med) if med > 0 else 0.0
    return flag, deviation


def _confidence(labels_c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean of max(p, 1-p) per slice over voxels with p > 0.5 or labelled (module doc)."""
    p = np.asarray(p, dtype=np.float32)
    region = (p > 0.5) | labels_c
    certainty = np.maximum(p, 1.0 - p)
    n = region.sum(axis=(1, 2))
    s = np.where(region, certainty, 0).sum(axis=(1, 2), dtype=np.float64)
    out = np.full(labels_c.shape[0], np.nan)
    out[n > 0] = s[n > 0] / n[n > 0]
    return out


def _lesion_outside(lesion: np.ndarray, cord: np.ndarray) -> np.ndarray:
    """Per slice: some 2D lesion component neither overlaps nor touches the cord."""
    flag = np.zeros(lesion.shape[0], bool)
    rows = np.flatnonzero(lesion.any(axis=(1, 2)))  # only slices with a lesion
    if rows.size == 0:
        return flag
    lesion, cord = lesion[rows], cord[rows]
    near = ndimage.binary_dilation(cord, structure=_SLICE_8CONN)
    lab, n = ndimage.label(lesion, structure=_SLICE_8CONN)
    touching = np.zeros(n + 1, bool)
    touching[np.unique(lab[near & lesion])] = True
    for k, obj in enumerate(ndimage.find_objects(lab), start=1):
        if obj is not None and not touching[k]:
            flag[rows[obj[0].start]] = True
    return flag


def slice_table(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    classes: Mapping[int, str],
    probabilities: Mapping[str | int, np.ndarray] | None = None,
    cord_classes: Iterable[int] | None = None,
    lesion_classes: Iterable[int] | None = None,
    *,
    cord_reference: np.ndarray | None = None,
    low_confidence: float = LOW_CONFIDENCE,
    jump_tolerance: float = JUMP_TOLERANCE,
    previous: SliceTable | None = None,
) -> SliceTable:
    """Compute the per-slice QC table of ``labels`` (display orientation, axis 0 = S->I).

    ``classes`` maps label value -> name (values absent from it are ignored).
    ``probabilities`` maps a class name (or value) to a float array of the labels' shape.
    ``cord_classes``/``lesion_classes`` default to a guess from the names
    (:func:`is_cord_name`, :func:`is_lesion_name`). ``cord_reference`` is an optional
    separate cord mask used for ``lesion_outside_cord``. ``previous`` carries the review
    marks of an earlier table of the same volume over (recompute after each edit).
    """
    labels, sp = _check(labels, spacing)
    classes = {int(v): str(n) for v, n in classes.items() if int(v) != 0}
    cord, lesion = _class_sets(classes, cord_classes, lesion_classes)
    n_slices = labels.shape[0]
    pixel_mm2 = sp[1] * sp[2]
    probabilities = dict(probabilities or {})
    if cord_reference is not None:
        cord_reference = np.asarray(cord_reference) > 0
        if cord_reference.shape != labels.shape:
            raise LabelsError(
                f"cord_reference has shape {cord_reference.shape}, the labels {labels.shape}"
            )
    occupied = labels != 0
    if cord_reference is not None:
        occupied |= cord_reference
    for p in probabilities.values():  # the model's own voxels count for its confidence
        if np.shape(p) == labels.shape:  # (a map of the wrong shape is refused below)
            occupied |= np.asarray(p) > 0.5
    crop = _inplane_crop(occupied)
    full_shape = labels.shape
    labels = labels[crop]

    area, comps, conf, extent = {}, {}, {}, {}
    class_flags: dict[str, dict[int, np.ndarray]] = {f: {} for f in FLAGS}
    no_flag = np.zeros(n_slices, bool)
    magnitude = {f: np.zeros(n_slices) for f in FLAGS}
    magnitude["empty"][:] = magnitude["lesion_outside_cord"][:] = 1.0
    for v, name in classes.items():
        mask = labels == v
        counts = mask.sum(axis=(1, 2))
        area[v] = counts * pixel_mm2
        comps[v], outside = _components_per_slice(mask)
        extent[v] = ext = _extent(counts)
        p = probabilities.get(name, probabilities.get(v))
        if p is not None:
            if np.shape(p) != full_shape:
                raise LabelsError(
                    f"probability map of class {name!r} has shape {np.shape(p)}, "
                    f"the labels {full_shape}: pass maps on the labels' grid"
                )
            conf[v] = _confidence(mask, np.asarray(p)[crop])
        else:
            conf[v] = np.full(n_slices, np.nan)

        empty = no_flag.copy()
        if v in cord and ext is not None:
            empty[ext[0] : ext[1] + 1] = counts[ext[0] : ext[1] + 1] == 0
        class_flags["empty"][v] = empty
        jump, deviation = _area_jump(area[v], ext, jump_tolerance)
        class_flags["area_jump"][v] = no_flag.copy() if v in lesion else jump
        class_flags["extra_components"][v] = (comps[v] > 1) if v in cord else no_flag.copy()
        conf_or_1 = np.nan_to_num(conf[v], nan=1.0)
        class_flags["low_confidence"][v] = conf_or_1 < low_confidence
        for flag, mag in (
            ("area_jump", np.where(jump, deviation, 0.0) if v not in lesion else None),
            ("extra_components", outside if v in cord else None),
            ("low_confidence", np.clip((low_confidence - conf_or_1) / low_confidence, 0, 1)),
        ):
            if mag is not None:
                magnitude[flag] = np.maximum(magnitude[flag], mag)
        class_flags["lesion_outside_cord"][v] = no_flag.copy()

    if lesion:
        if cord_reference is not None:
            cord_mask = cord_reference[crop]
        else:
            cord_mask = np.isin(labels, cord) if cord else None
        if cord_mask is not None and cord_mask.any():
            for v in lesion:
                if v in classes:
                    class_flags["lesion_outside_cord"][v] = _lesion_outside(labels == v, cord_mask)

    flags = {
        f: (np.any(np.stack(list(per.values())), axis=0) if per else no_flag.copy())
        for f, per in class_flags.items()
    }
    if previous is not None and previous.n_slices == n_slices:
        reviewed = previous.reviewed.copy()
    else:
        reviewed = np.zeros(n_slices, bool)
    return SliceTable(
        n_slices=n_slices,
        spacing=sp,
        classes=classes,
        cord_classes=cord,
        lesion_classes=lesion,
        area=area,
        components=comps,
        confidence=conf,
        extent=extent,
        class_flags=class_flags,
        flags=flags,
        reviewed=reviewed,
        magnitude=magnitude,
    )


@dataclass(frozen=True)
class ClassSummary:
    """Size and extent of one class: volume, superior-inferior extent, area profile.

    ``first``/``last`` are display slice indices (inclusive); ``length_mm`` is the number
    of slices spanned times the slice spacing. ``area_profile`` (mm² per slice, for a
    small plot) is given for cord classes only, else None.
    """

    value: int
    name: str
    voxels: int
    volume_mm3: float
    first: int | None
    last: int | None
    length_mm: float
    area_profile: np.ndarray | None


def summary(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    classes: Mapping[int, str],
    cord_classes: Iterable[int] | None = None,
) -> dict[int, ClassSummary]:
    """Per class: voxel count, volume (mm³), S-I extent and, for cord classes, the
    cross-sectional area profile (mm² per axial slice)."""
    labels, sp = _check(labels, spacing)
    classes = {int(v): str(n) for v, n in classes.items() if int(v) != 0}
    cord, _ = _class_sets(classes, cord_classes, ())
    out = {}
    for v, name in classes.items():
        counts = (labels == v).sum(axis=(1, 2))
        ext = _extent(counts)
        n = int(counts.sum())
        out[v] = ClassSummary(
            value=v,
            name=name,
            voxels=n,
            volume_mm3=n * sp[0] * sp[1] * sp[2],
            first=None if ext is None else ext[0],
            last=None if ext is None else ext[1],
            length_mm=0.0 if ext is None else (ext[1] - ext[0] + 1) * sp[0],
            area_profile=counts * (sp[1] * sp[2]) if v in cord else None,
        )
    return out


@dataclass(frozen=True)
class EdgeSlabs:
    """Suggested slabs (half-open ``(start, stop)`` display slice ranges) of poor slices
    at the superior (``top``) and inferior (``bottom``) ends of the cord; None if there is
    none worth refining. ``note`` says why nothing is suggested (e.g. poor throughout);
    ``poor_fraction`` is the fraction of the cord's slices that are poor."""

    top: tuple[int, int] | None
    bottom: tuple[int, int] | None
    note: str = ""
    poor_fraction: float = 0.0


def edge_slices(
    table: SliceTable,
    n: int = 3,
    *,
    max_fraction: float = MAX_SLAB_FRACTION,
    poor_throughout: float = POOR_THROUGHOUT,
) -> EdgeSlabs:
    """Prefill for crop-and-refine: the run of poor slices at each end of the cord.

    A slice is poor when it is flagged and not marked reviewed. The cord extent is that
    of the cord classes (all classes if there is none). ``top`` is the contiguous run of
    poor slices whose first slice lies within the first ``n`` slices of the extent;
    ``bottom`` likewise from the last slice upwards. A run longer than ``max_fraction``
    of the extent is not suggested, and nothing is when more than ``poor_throughout`` of
    the extent is poor: a slab is for a poor *end*, never the whole cord (the model does
    not fit the image; ``note`` says so).
    """
    if n < 1:
        raise ValueError(f"edge_slices(n={n}): n must be at least 1")
    values = table.cord_classes or tuple(table.classes)
    exts = [table.extent[v] for v in values if table.extent.get(v) is not None]
    if not exts:
        return EdgeSlabs(None, None)
    first = min(e[0] for e in exts)
    last = max(e[1] for e in exts)
    length = last - first + 1
    poor = table.flagged() & ~table.reviewed
    fraction = float(poor[first : last + 1].sum()) / length
    if fraction > poor_throughout:
        return EdgeSlabs(
            None,
            None,
            f"{fraction:.0%} of the cord's slices are flagged: the result is poor "
            "throughout, so refining a slab will not fix it (check the task and the "
            "image contrast, or re-run the model)",
            fraction,
        )

    top = None
    for i in range(first, min(first + n, last + 1)):
        if poor[i]:
            j = i
            while j + 1 <= last and poor[j + 1]:
                j += 1
            top = (i, j + 1)
            break
    bottom = None
    for i in range(last, max(last - n, first - 1), -1):
        if poor[i]:
            j = i
            while j - 1 >= first and poor[j - 1]:
                j -= 1
            bottom = (j, i + 1)
            break
    note = ""
    limit = max_fraction * length
    for slab in (top, bottom):
        if slab is not None and slab[1] - slab[0] > limit:
            note = (
                f"the poor run {slab[0]}–{slab[1] - 1} is longer than "
                f"{max_fraction:.0%} of the cord: review it slice by slice"
            )
    top = top if top is not None and top[1] - top[0] <= limit else None
    bottom = bottom if bottom is not None and bottom[1] - bottom[0] <= limit else None
    return EdgeSlabs(top, bottom, note, fraction)
