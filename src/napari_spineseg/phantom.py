"""Deterministic synthetic spinal-cord phantoms (T2w-like image + label image).

Why: the sample data, the demo and the tiny test models all need an image whose truth is
known voxel for voxel, that looks like a cord on a T2-weighted scan (bright CSF, mid-grey
cord, darker tissue, noise), and that can be written in *any* of the 48 NIfTI voxel
orders with the anatomy at exactly the same world position, so orientation handling can
be tested against ground truth.

The phantom is built in RAS voxel order (axis 0 -> Right, axis 1 -> Anterior, axis 2 ->
Superior; the cord runs along axis 2) and then reoriented losslessly (axis permutations
and flips only, the affine adjusted to match), so world coordinates never change.
"""

from __future__ import annotations

from collections.abc import Iterable

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

#: Label values written by :func:`cord_phantom` (only those requested appear).
#:
#: ===============  =====  ===========================================================
#: name             value  when present
#: ===============  =====  ===========================================================
#: ``cord``         1      ``"cord" in structures``; with ``gm=True`` this is the WM
#: ``csf``          2      ``"csf" in structures`` (ring around the cord)
#: ``lesion``       3      ``lesion=True`` (ellipsoid inside the cord, T2-hyperintense)
#: ``gm``           4      ``gm=True`` (butterfly inside the cord, takes over from 1)
#: ``rootlet_lvl2`` 12     ``rootlets=True``: dark blobs in the CSF, left and right of
#: ``rootlet_lvl3`` 13     the cord, at three heights (lvl2 most superior); value =
#: ``rootlet_lvl4`` 14     10 + level. Each level has its own darkness so it can be told
#:                         apart locally.
#: ===============  =====  ===========================================================
#:
#: Precedence where structures overlap: lesion > gm > cord; rootlets > csf.
PHANTOM_LABELS: dict[str, int] = {
    "cord": 1,
    "csf": 2,
    "lesion": 3,
    "gm": 4,
    "rootlet_lvl2": 12,
    "rootlet_lvl3": 13,
    "rootlet_lvl4": 14,
}

# T2w-like relative intensities (CSF brightest, cord mid-grey, GM slightly brighter than WM,
# lesion hyperintense, rootlets dark inside the CSF, dura/bone ring dark).
_INTENSITY = {
    "tissue": 0.22,
    "dura": 0.12,
    "csf": 1.00,
    "cord": 0.45,
    "gm": 0.58,
    "lesion": 0.85,
    "rootlet_lvl2": 0.05,
    "rootlet_lvl3": 0.32,
    "rootlet_lvl4": 0.68,
}

_VALID_STRUCTURES = ("cord", "csf")


def cord_phantom(
    shape: tuple[int, int, int] = (64, 64, 24),
    zooms: tuple[float, float, float] = (0.8, 0.8, 2.5),
    axcodes: str | Iterable[str] = "RAS",
    seed: int = 0,
    structures: Iterable[str] = ("cord", "csf"),
    lesion: bool = False,
    gm: bool = False,
    dtype: str = "int16",
    *,
    rootlets: bool = False,
    anatomy_scale: float = 1.0,
    noise: float = 0.04,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Return ``(image, labels)``: a T2w-like cord phantom and its exact labels.

    ``shape`` and ``zooms`` are given in RAS voxel order (x: R, y: A, z: S, the cord axis),
    i.e. *before* reorientation; the returned arrays have them permuted as ``axcodes``
    says. Both images share one affine (qform and sform, code 1 = scanner) whose world
    coordinates do not depend on ``axcodes``. The same ``seed`` gives the same images on
    every call. Label values are listed in :data:`PHANTOM_LABELS`.

    ``anatomy_scale`` multiplies every anatomical size (cord, CSF, drift) given in mm, e.g.
    0.4 for a mouse-sized cord; ``noise`` is the Rician noise level relative to CSF.
    ``dtype`` is the image's on-disk dtype ("int16", "uint16", "float32", ...); labels are
    always uint8.
    """
    structures = tuple(structures)
    bad = [s for s in structures if s not in _VALID_STRUCTURES]
    if bad:
        raise ValueError(f"cord_phantom: unknown structure(s) {bad}; use {_VALID_STRUCTURES}")
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"cord_phantom: shape must be 3 sizes >= 4, got {shape}")
    axcodes = tuple(axcodes)
    target = nio.axcodes2ornt(axcodes)  # raises on invalid codes
    if len(axcodes) != 3:
        raise ValueError(f"cord_phantom: axcodes must name 3 axes, got {axcodes}")

    rng = np.random.default_rng(seed)
    intensity, labels = _build_ras(
        tuple(int(s) for s in shape), zooms, rng, anatomy_scale, lesion, gm, rootlets
    )
    image = _finish_image(intensity, zooms, rng, noise, dtype)
    labels = _select_labels(labels, structures, lesion, gm, rootlets)

    affine = np.diag([*map(float, zooms), 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(zooms, float)
    affine[:3, 3] += (3.0, -12.0, 40.0)  # a non-trivial origin: world != voxel centre

    transform = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), target)
    image = nio.apply_orientation(image, transform)
    labels = nio.apply_orientation(labels, transform)
    affine = affine @ nio.inv_ornt_aff(transform, tuple(shape))
    return _nifti(image, affine), _nifti(labels.astype(np.uint8), affine, intent="label")


def _build_ras(shape, zooms, rng, scale, lesion, gm, rootlets):
    """Anatomy in RAS voxel space: a float intensity map and the full label map."""
    nx, ny, nz = shape
    zx, zy, zz = (float(z) for z in zooms)
    x = (np.arange(nx) - (nx - 1) / 2.0) * zx
    y = (np.arange(ny) - (ny - 1) / 2.0) * zy
    zmm = (np.arange(nz) - (nz - 1) / 2.0) * zz
    length = max(nz * zz, 1.0)

    # Cord centre drifts smoothly along S-I; cross-section varies a little (enlargement).
    phase = rng.uniform(0, 2 * np.pi, size=4)
    amp = rng.uniform(0.8, 1.6, size=2) * scale
    cx = amp[0] * np.sin(2 * np.pi * zmm / (1.7 * length) + phase[0])
    cy = amp[1] * np.sin(2 * np.pi * zmm / (2.3 * length) + phase[1])
    a0, b0 = rng.uniform(4.5, 5.5) * scale, rng.uniform(3.0, 3.7) * scale
    a = a0 * (1 + 0.08 * np.sin(2 * np.pi * zmm / length + phase[2]))
    b = b0 * (1 + 0.06 * np.sin(2 * np.pi * zmm / length + phase[3]))
    ring = rng.uniform(2.6, 3.4) * scale  # CSF thickness (mm)
    dura = 1.2 * scale

    X = x[:, None, None] - cx[None, None, :]
    Y = y[None, :, None] - cy[None, None, :]
    u, v = X / a[None, None, :], Y / b[None, None, :]
    r_cord = np.sqrt(u**2 + v**2)  # 1 on the cord surface
    r_csf = np.sqrt((X / (a + ring)) ** 2 + (Y / (b + ring)) ** 2)
    r_dura = np.sqrt((X / (a + ring + dura)) ** 2 + (Y / (b + ring + dura)) ** 2)

    cord = r_cord <= 1.0
    csf = (r_csf <= 1.0) & ~cord
    lab = np.zeros(shape, np.uint8)
    img = np.full(shape, _INTENSITY["tissue"], np.float32)
    img[r_dura <= 1.0] = _INTENSITY["dura"]
    img[csf] = _INTENSITY["csf"]
    img[cord] = _INTENSITY["cord"]
    lab[csf] = PHANTOM_LABELS["csf"]
    lab[cord] = PHANTOM_LABELS["cord"]

    if gm:
        # Butterfly: four horns + grey commissure, in cord-normalised coordinates.
        horns = np.zeros(shape, bool)
        for sx in (-1, 1):
            for sy, (hy, ry) in ((1, (0.35, 0.45)), (-1, (0.40, 0.40))):
                horns |= ((u - sx * 0.38) / 0.22) ** 2 + ((v - sy * hy) / ry) ** 2 <= 1.0
        bar = (np.abs(u) <= 0.45) & (np.abs(v) <= 0.16)
        gmask = (horns | bar) & (r_cord <= 0.92)
        img[gmask] = _INTENSITY["gm"]
        lab[gmask] = PHANTOM_LABELS["gm"]

    if lesion:
        zc = rng.uniform(-0.15, 0.15) * length
        la, lb = 0.45, 0.5  # fraction of the cord semi-axes
        lz = rng.uniform(0.15, 0.22) * length
        lu, lv = rng.uniform(-0.15, 0.15, size=2)
        d = ((u - lu) / la) ** 2 + ((v - lv) / lb) ** 2 + ((zmm[None, None, :] - zc) / lz) ** 2
        lmask = (d <= 1.0) & cord
        img[lmask] = _INTENSITY["lesion"]
        lab[lmask] = PHANTOM_LABELS["lesion"]

    if rootlets:
        # Three levels, superior to inferior, each a pair of blobs in the lateral CSF.
        heights = np.array([0.28, 0.0, -0.28]) * length + rng.uniform(-0.04, 0.04, 3) * length
        for level, zc in zip((2, 3, 4), heights):
            name = f"rootlet_lvl{level}"
            k = int(np.argmin(np.abs(zmm - zc)))
            for side in (-1, 1):
                bx = side * (a[k] + 0.5 * ring)
                d = ((X - bx) / (0.42 * ring)) ** 2 + (Y / (0.75 * ring)) ** 2
                d = d + ((zmm[None, None, :] - zc) / max(1.6 * zz, 2.5 * scale)) ** 2
                bmask = (d <= 1.0) & csf
                img[bmask] = _INTENSITY[name]
                lab[bmask] = PHANTOM_LABELS[name]
    return img, lab


def _finish_image(img, zooms, rng, noise, dtype):
    """Partial volume blur, smooth texture/bias, Rician noise, then scale to ``dtype``."""
    from scipy import ndimage

    zooms = np.asarray(zooms, float)
    sigma = 0.45 / (zooms / zooms.min())  # ~half a voxel in the finest direction
    img = ndimage.gaussian_filter(img, sigma)
    texture = ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 2.0)
    texture /= max(float(texture.std()), 1e-6)
    tissue = img < 0.4
    img = img + tissue * 0.03 * texture
    bias = 1.0 + 0.08 * np.linspace(-1, 1, img.shape[1])[None, :, None]
    img = img * bias
    re = img + noise * rng.standard_normal(img.shape)
    im = noise * rng.standard_normal(img.shape)
    img = np.sqrt(re**2 + im**2)
    gain = rng.uniform(600.0, 1200.0)
    out = img * gain
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        out = np.clip(np.rint(out), 0, np.iinfo(dt).max)
    return out.astype(dt)


def _select_labels(lab, structures, lesion, gm, rootlets):
    """Zero the label values the caller did not ask for (the image keeps the anatomy)."""
    keep = set()
    if "cord" in structures:
        keep.add(PHANTOM_LABELS["cord"])
    if "csf" in structures:
        keep.add(PHANTOM_LABELS["csf"])
    if lesion:
        keep.add(PHANTOM_LABELS["lesion"])
    if gm:
        keep.add(PHANTOM_LABELS["gm"])
    if rootlets:
        keep.update(PHANTOM_LABELS[f"rootlet_lvl{i}"] for i in (2, 3, 4))
    out = lab.copy()
    out[~np.isin(out, sorted(keep))] = 0
    return out


def _nifti(data: np.ndarray, affine: np.ndarray, intent: str | None = None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if intent:
        img.header.set_intent(intent)
    return img
