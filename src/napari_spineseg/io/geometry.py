"""Display geometry: a lossless reorientation of NIfTI voxels for viewing and painting.

NIfTI files store voxels in any of 48 axis orders. The viewer shows every volume in one
convention, **IPL**: array axis 0 runs towards Inferior (the slider walks down the cord
one axial slice at a time), axis 1 towards Posterior, axis 2 towards the patient's Left.
With napari's default camera an axial slice then shows anterior at the top and the
patient's right on the left of the screen (radiological, like FSLeyes and ITK-SNAP), and
rolling the dims gives sagittal (superior up, anterior left) and coronal views.

Only axis permutations and flips are used (array *views*, no resampling, no copy), so
:meth:`DisplayGeometry.to_file` restores the file voxel order bit for bit. napari gets a
diagonal transform (positive ``scale`` = voxel size in mm, ``translate``); world
coordinates are ``(I, P, L)`` = ``(-z, -y, -x)`` of scanner RAS, a proper rotation of
RAS (det +1), so 3D rendering is not mirrored. Oblique acquisitions are shown on the
nearest axis-aligned grid; the residual obliquity is recorded so the reader can warn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

if TYPE_CHECKING:  # pragma: no cover
    from .volume import Volume

#: Axis codes of the display convention (direction each array axis points to).
DISPLAY_AXCODES: tuple[str, str, str] = ("I", "P", "L")
#: Anatomical names of the display axes, shown on napari's sliders.
DISPLAY_AXIS_LABELS: tuple[str, str, str] = ("S-I", "A-P", "R-L")
#: RAS (x, y, z) -> display world (I, P, L).
RAS_TO_DISPLAY = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])

#: Obliquity below which positions are considered exact (fraction of the smallest voxel).
OBLIQUE_TOLERANCE_VOXEL = 0.1


@dataclass(frozen=True)
class DisplayGeometry:
    """How one NIfTI grid maps to the display array and to napari world coordinates.

    Built from the affine only, so an image and a mask with the same header get
    identical geometry (and overlay exactly in napari).
    """

    file_shape: tuple[int, ...]  #: spatial shape in file order, padded to 3D
    file_ndim: int  #: 2 or 3: spatial rank of the file
    transform: np.ndarray  #: nibabel ornt transform, file axes -> display axes
    display_shape: tuple[int, int, int]
    scale: tuple[float, float, float]  #: mm per voxel along the display axes
    translate: tuple[float, float, float]  #: world position of display voxel (0, 0, 0)
    file_ornt: np.ndarray  #: nibabel orientation of the file axes (io_orientation)
    file_axcodes: tuple[str, str, str]  #: nibabel axis codes of the file (e.g. PSR)
    obliquity_deg: float  #: largest angle between a voxel axis and its display axis
    max_displacement_mm: float  #: largest display-vs-true position error in the FOV
    display_affine: np.ndarray  #: 4x4: display voxel -> true scanner RAS (exact)

    @classmethod
    def from_affine(cls, affine: np.ndarray, spatial_shape: tuple[int, ...]) -> DisplayGeometry:
        affine = np.asarray(affine, dtype=np.float64)
        file_ndim = len(spatial_shape)
        if file_ndim not in (2, 3):
            raise ValueError(f"spatial shape must be 2D or 3D, got {spatial_shape}")
        shape3 = tuple(int(s) for s in spatial_shape) + (1,) * (3 - file_ndim)
        file_ornt = nio.io_orientation(affine)
        axcodes = nio.ornt2axcodes(file_ornt)  # = nib.aff2axcodes(affine), computed once
        if np.isnan(file_ornt).any():
            # Degenerate affine (a zero column): fall back to voxel order.
            file_ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        transform = nio.ornt_transform(file_ornt, nio.axcodes2ornt(DISPLAY_AXCODES))
        display_shape = tuple(int(shape3[int(a)]) for a, _ in _inverse_axes(transform))
        # display voxel -> file voxel, then file voxel -> RAS
        disp_affine = affine @ nio.inv_ornt_aff(transform, shape3)
        lin = RAS_TO_DISPLAY @ disp_affine[:3, :3]
        zooms = np.sqrt((lin**2).sum(axis=0))
        zooms = np.where(zooms > 0, zooms, 1.0)
        offdiag = lin - np.diag(np.diag(lin))
        origin = RAS_TO_DISPLAY @ disp_affine[:3, 3]
        if not offdiag.any():
            scale = np.abs(np.diag(lin))
            scale = np.where(scale > 0, scale, 1.0)
            translate = origin
            obliquity = 0.0
            displacement = 0.0
        else:
            scale = zooms
            centre = (np.array(display_shape, dtype=float) - 1) / 2
            true_centre = lin @ centre + origin
            translate = true_centre - scale * centre
            cos = np.clip(np.abs(np.diag(lin)) / zooms, 0.0, 1.0)
            obliquity = float(np.degrees(np.arccos(cos)).max())
            corners = np.array(
                np.meshgrid(*[[0, n - 1] for n in display_shape], indexing="ij")
            ).reshape(3, -1)
            true = lin @ corners + origin[:, None]
            shown = scale[:, None] * corners + translate[:, None]
            displacement = float(np.sqrt(((true - shown) ** 2).sum(axis=0)).max())
        return cls(
            file_shape=shape3,
            file_ndim=file_ndim,
            transform=transform,
            file_ornt=file_ornt,
            display_shape=display_shape,  # type: ignore[arg-type]
            scale=tuple(float(v) for v in scale),  # type: ignore[arg-type]
            translate=tuple(float(v) for v in translate),  # type: ignore[arg-type]
            file_axcodes=tuple(str(c) for c in axcodes),  # type: ignore[arg-type]
            obliquity_deg=obliquity,
            max_displacement_mm=displacement,
            display_affine=disp_affine,
        )

    # ------------------------------------------------------------------ arrays
    def to_display(self, data: np.ndarray) -> np.ndarray:
        """File-order array -> display-order *view* (no copy).

        Accepts the spatial array (2D or 3D, as in the file) or an array with one extra
        trailing axis (time/volume, as NIfTI stores it), which becomes the *first*
        display axis.
        """
        data = np.asanyarray(data)
        extra = data.ndim - self.file_ndim
        if extra not in (0, 1):
            raise ValueError(f"expected a {self.file_ndim}D (+1) array, got shape {data.shape}")
        data = data.reshape(self.file_shape + data.shape[self.file_ndim :])
        out = nio.apply_orientation(data, self.transform)
        return np.moveaxis(out, -1, 0) if extra else out

    def to_file(self, data: np.ndarray) -> np.ndarray:
        """Display-order array -> file voxel order (exact inverse of :meth:`to_display`)."""
        data = np.asanyarray(data)
        extra = data.ndim - 3
        if extra not in (0, 1) or tuple(data.shape[extra:]) != self.display_shape:
            raise ValueError(
                f"expected display shape {self.display_shape} (+ a leading axis), got {data.shape}"
            )
        if extra:
            data = np.moveaxis(data, 0, -1)
        inverse = nio.ornt_transform(nio.axcodes2ornt(DISPLAY_AXCODES), self.file_ornt)
        out = nio.apply_orientation(data, inverse)
        return out.reshape(self.file_shape[: self.file_ndim] + out.shape[3:])

    # ------------------------------------------------------------------ napari
    def layer_kwargs(self, leading: tuple[float, ...] | None = None) -> dict:
        """``scale``/``translate``/``axis_labels``/``units`` for a napari layer.

        ``leading`` is the scale of an extra first axis (4D: the repetition time).
        """
        scale = tuple(self.scale)
        translate = tuple(self.translate)
        labels = DISPLAY_AXIS_LABELS
        units: tuple[str, ...] = ("mm", "mm", "mm")
        if leading is not None:
            scale = tuple(leading) + scale
            translate = (0.0,) * len(leading) + translate
            labels = ("volume",) * len(leading) + labels
            units = ("pixel",) * len(leading) + units
        return {
            "scale": scale,
            "translate": translate,
            "axis_labels": labels,
            "units": units,
        }

    def world_to_file_index(self, world: np.ndarray) -> np.ndarray:
        """Display world (I, P, L) mm -> continuous file voxel index (for tests/tools)."""
        world = np.asarray(world, dtype=float)
        disp = (world - np.array(self.translate)) / np.array(self.scale)
        ras = self.display_affine @ np.append(disp, 1.0)
        inv = np.linalg.inv(self._file_affine())
        return (inv @ ras)[:3]

    def _file_affine(self) -> np.ndarray:
        shape3 = self.file_shape
        return self.display_affine @ np.linalg.inv(nio.inv_ornt_aff(self.transform, shape3))

    def matches(self, other: DisplayGeometry, atol: float = 1e-6) -> bool:
        """Same display grid (shape, scale, translate within ``atol`` mm)."""
        return (
            self.display_shape == other.display_shape
            and np.allclose(self.scale, other.scale, atol=atol)
            and np.allclose(self.translate, other.translate, atol=atol)
        )


def _inverse_axes(transform: np.ndarray) -> list[tuple[int, int]]:
    """For each display axis, the (file axis, flip) that lands there."""
    out: list[tuple[int, int]] = [(0, 1)] * len(transform)
    for file_axis, (disp_axis, flip) in enumerate(transform):
        out[int(disp_axis)] = (file_axis, int(flip))
    return out


def crop_display(volume: Volume, start: int, stop: int) -> nib.Nifti1Image:
    """A NIfTI image of display slices ``[start, stop)`` of ``volume`` in the same world.

    The crop's voxel order *is* the display order (its affine is the display affine
    shifted by ``start`` slices), so a model's labels for it come back in display order
    and overlay the slab exactly; no file-axis bookkeeping is needed (crop-and-refine).
    A 4D series is averaged over volumes first (what :func:`api.segment` does too).
    """
    image3d = volume.image3d(reduce="mean")
    display = volume.geometry.to_display(np.asanyarray(image3d.dataobj))
    crop = np.ascontiguousarray(display[start:stop])
    affine = volume.geometry.display_affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([start, 0.0, 0.0]) + affine[:3, 3]
    img = nib.Nifti1Image(crop, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img
