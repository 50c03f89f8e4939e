"""Deterministic synthetic cervico-thoracic spine phantom (T2w-like image + label maps).

Why: the TotalSpineSeg engine needs an input whose anatomy is known voxel for voxel --
vertebrae C1..T2, the discs between them, the spinal canal and the cord -- to train the
tiny step-1/step-2 test models and to check, without real data or real weights, that
the labelling pipeline puts cord=1, canal=2, C3=13, disc C2-C3=63 ... where they belong.
It is also written in *any* of the 48 NIfTI voxel orders with the anatomy at exactly the
same world position, so orientation handling can be checked against ground truth.

The anatomy is built in RAS voxel order (axis 0 -> Right, axis 1 -> Anterior, axis 2 ->
Superior) from shapes given in millimetres, so any voxel size works; it is then
reoriented losslessly (axis permutations and flips only).

Label maps returned (all uint8, same grid as the image):

``"tss"``: TotalSpineSeg's final values (``tss_map.json``): cord 1, canal (CSF) 2,
C1..C7 = 11..17, T1 = 21, T2 = 22, discs C2-C3..C6-C7 = 63..67, C7-T1 = 71, T1-T2 = 72.

``"step1"``: the raw labels of the step-1 model (``Dataset101`` ``dataset.json``): disc 1,
disc C2-C3 2, disc C7-T1 3 (4 = T12-L1 and 5 = L5-S are outside this field of view),
vertebrae 6, vertebra C1 7, canal 8, cord 9.

``"step2"``: the raw labels of the step-2 model (``Dataset102``): discs as step 1,
odd vertebrae (C1, C3, C5, C7, T2) 7, even vertebrae (C2, C4, C6, T1) 8, canal 10,
cord 11 (6 = extra vertebral fragments and 9 = sacrum do not occur here).

``"odd_discs"``: the second input channel of step 2 for this anatomy, i.e. what
TotalSpineSeg's ``extract_alternate`` makes of a perfect step-1 result (discs C2-C3,
C4-C5, C6-C7, T1-T2 = 1).

Landmark discs get their own T2 brightness (C2-C3 brighter, C7-T1 darker than the other
discs) and the atlas (C1) brighter marrow, so that a tiny CPU model with a small
receptive field can tell them apart locally; the real model uses the whole field of
view for this.
"""

from __future__ import annotations

from collections.abc import Iterable

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from .phantom import _nifti  # same header conventions as the cord phantom

#: Vertebrae from superior to inferior, with their TotalSpineSeg output value.
VERTEBRAE: dict[str, int] = {
    "C1": 11,
    "C2": 12,
    "C3": 13,
    "C4": 14,
    "C5": 15,
    "C6": 16,
    "C7": 17,
    "T1": 21,
    "T2": 22,
}
#: Discs from superior to inferior, with their TotalSpineSeg output value.
DISCS: dict[str, int] = {
    "C2-C3": 63,
    "C3-C4": 64,
    "C4-C5": 65,
    "C5-C6": 66,
    "C6-C7": 67,
    "C7-T1": 71,
    "T1-T2": 72,
}
#: SCT disc-level values (``levels_maps.json``) of the discs above.
DISC_LEVELS: dict[str, int] = {
    "C2-C3": 3,
    "C3-C4": 4,
    "C4-C5": 5,
    "C5-C6": 6,
    "C6-C7": 7,
    "C7-T1": 8,
    "T1-T2": 9,
}
CORD, CANAL = 1, 2

#: Raw step-1 values (Dataset101_TotalSpineSeg_step1 dataset.json, region-based).
STEP1 = {"disc": 1, "disc_C2_C3": 2, "disc_C7_T1": 3, "vertebrae": 6, "vertebrae_C1": 7,
         "canal": 8, "cord": 9}  # fmt: skip
#: Raw step-2 values (Dataset102_TotalSpineSeg_step2 dataset.json, region-based).
STEP2 = {"disc": 1, "disc_C2_C3": 2, "disc_C7_T1": 3, "vertebrae_O": 7, "vertebrae_E": 8,
         "canal": 10, "cord": 11}  # fmt: skip

# Superior-to-inferior layout in mm: (name, kind, height). Gaps are soft tissue.
_LAYOUT = (
    ("top", "gap", 6.0),
    ("C1", "vert", 7.0),
    ("C1-C2", "gap", 3.0),
    ("C2", "vert", 15.0),
    ("C2-C3", "disc", 4.0),
    ("C3", "vert", 11.0),
    ("C3-C4", "disc", 4.0),
    ("C4", "vert", 11.0),
    ("C4-C5", "disc", 4.0),
    ("C5", "vert", 11.0),
    ("C5-C6", "disc", 4.0),
    ("C6", "vert", 11.0),
    ("C6-C7", "disc", 4.0),
    ("C7", "vert", 12.0),
    ("C7-T1", "disc", 5.0),
    ("T1", "vert", 13.0),
    ("T1-T2", "disc", 5.0),
    ("T2", "vert", 13.0),
    ("bottom", "gap", 5.0),
)
#: Field of view (mm) that holds the whole phantom: x (R-L), y (P-A), z (I-S).
EXTENT_MM = (40.0, 52.0, float(sum(h for _, _, h in _LAYOUT)))

_INTENSITY = {
    "tissue": 0.30,
    "csf": 1.00,
    "cord": 0.45,
    "marrow": 0.42,
    "atlas": 0.62,
    "cortex": 0.12,
    "posterior": 0.22,
    "disc": 0.78,
    "annulus": 0.50,
    "disc_C2-C3": 0.95,
    "disc_C7-T1": 0.22,
}


def spine_phantom(
    zooms: tuple[float, float, float] = (1.0, 1.0, 1.0),
    axcodes: str | Iterable[str] = "RAS",
    seed: int = 0,
    dtype: str = "int16",
    *,
    noise: float = 0.03,
    jitter: bool = True,
) -> tuple[nib.Nifti1Image, dict[str, nib.Nifti1Image]]:
    """Return ``(image, labels)``: a T2w-like spine phantom and its label maps.

    ``zooms`` are the voxel sizes in RAS order (before reorientation); the field of view
    is :data:`EXTENT_MM`. ``seed`` varies heights (+-1 mm), curvature, gain, texture and
    noise (``jitter=False`` keeps the nominal anatomy). ``labels`` has the keys ``"tss"``,
    ``"step1"``, ``"step2"`` and ``"odd_discs"`` described in the module docstring. The
    same arguments give the same images on every call.
    """
    axcodes = tuple(axcodes)
    if len(axcodes) != 3:
        raise ValueError(f"spine_phantom: axcodes must name 3 axes, got {axcodes}")
    target = nio.axcodes2ornt(axcodes)
    zooms = tuple(float(z) for z in zooms)
    shape = tuple(int(round(e / z)) for e, z in zip(EXTENT_MM, zooms))
    rng = np.random.default_rng(seed)

    intensity, maps = _build_ras(shape, zooms, rng, jitter)
    image = _finish(intensity, zooms, rng, noise, dtype)

    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(zooms)
    affine[:3, 3] += (2.0, 10.0, -30.0)  # world origin away from the voxel centre
    transform = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), target)
    affine = affine @ nio.inv_ornt_aff(transform, shape)
    image = _nifti(nio.apply_orientation(image, transform), affine)
    labels = {
        k: _nifti(nio.apply_orientation(v, transform).astype(np.uint8), affine, "label")
        for k, v in maps.items()
    }
    return image, labels


def _build_ras(shape, zooms, rng, jitter):
    """Anatomy in RAS voxel space: float intensities and the four label maps."""
    nx, ny, nz = shape
    zx, zy, zz = zooms
    x = (np.arange(nx) - (nx - 1) / 2.0) * zx
    y = (np.arange(ny) - (ny - 1) / 2.0) * zy
    z = (np.arange(nz) - (nz - 1) / 2.0) * zz  # mm, superior positive
    top = nz * zz / 2.0

    # Gentle curvature: the whole column shifts along A-P and R-L with height.
    ph = rng.uniform(0, 2 * np.pi, 2) if jitter else np.zeros(2)
    amp = rng.uniform(0.8, 1.8, 2) if jitter else np.array([1.0, 1.0])
    sy = amp[0] * np.sin(2 * np.pi * z / 180.0 + ph[0])
    sx = 0.5 * amp[1] * np.sin(2 * np.pi * z / 230.0 + ph[1])
    X = x[:, None, None] - sx[None, None, :]
    Y = y[None, :, None] - sy[None, None, :]

    # Z spans of each element (superior edge first), heights jittered by +-1 mm.
    spans = {}
    edge = top
    for name, kind, h in _LAYOUT:
        if jitter and kind != "gap":
            h = h + float(rng.uniform(-1.0, 1.0))
        spans[name] = (kind, edge - h, edge)
        edge -= h
    Z = z[None, None, :]

    def zin(name, lo_pad=0.0, hi_pad=0.0):
        _, lo, hi = spans[name]
        return (lo + lo_pad < Z) & (hi - hi_pad >= Z)

    # Cross-sections (mm): canal centred at y=-7, cord inside, body centred at y=+8.
    cord_a, cord_b = 4.8, 3.4
    canal = (X / 7.0) ** 2 + ((Y + 7.0) / 5.0) ** 2 <= 1.0
    cord = ((X / cord_a) ** 2 + ((Y + 6.6) / cord_b) ** 2 <= 1.0) & canal
    r_body = np.sqrt((X / 10.0) ** 2 + ((Y - 8.0) / 8.0) ** 2)
    r_canal = np.sqrt((X / 7.0) ** 2 + ((Y + 7.0) / 5.0) ** 2)
    ring = (r_canal > 1.25) & (r_canal <= 1.75) & (Y < 1.0)
    pedicle = (np.abs(X) >= 5.0) & (np.abs(X) <= 9.5) & (Y > -6.0) & (Y < 3.0) & (r_canal > 1.25)
    spinous = (np.abs(X) <= 2.0) & (Y < -14.0) & (Y > -21.0)

    img = np.full(shape, _INTENSITY["tissue"], np.float32)
    tss = np.zeros(shape, np.uint8)
    s1 = np.zeros(shape, np.uint8)
    s2 = np.zeros(shape, np.uint8)
    odd = np.zeros(shape, np.uint8)

    verts = list(VERTEBRAE)
    for i, name in enumerate(verts):
        value = VERTEBRAE[name]
        parity = STEP2["vertebrae_O"] if i % 2 == 0 else STEP2["vertebrae_E"]
        if name == "C1":
            # Atlas: a ring (anterior arch, lateral masses, posterior arch), no body.
            r_out = np.sqrt((X / 13.0) ** 2 + ((Y + 2.5) / 14.5) ** 2)
            r_in = np.sqrt((X / 10.0) ** 2 + ((Y + 2.5) / 11.0) ** 2)
            bone = (r_out <= 1.0) & (r_in > 1.0) & zin(name)
            shell = bone & ~((r_out <= 0.9) & (r_in > 1.1))
            img[bone] = _INTENSITY["atlas"]
            img[shell] = _INTENSITY["cortex"]
            tss[bone], s1[bone], s2[bone] = value, STEP1["vertebrae_C1"], parity
            continue
        zmask = zin(name)
        body = (r_body <= 1.0) & zmask
        post = (ring | pedicle | spinous) & zin(name, 1.5, 1.5)
        bone = body | post
        if name == "C2":  # dens: a peg rising from C2's body into the atlas ring
            dens = (X**2 + (Y - 4.0) ** 2 <= 9.0) & (spans[name][2] - 1.0 < Z)
            dens &= spans["C1"][2] - 1.0 >= Z
            bone |= dens
        img[bone] = _INTENSITY["posterior"]
        img[body] = _INTENSITY["marrow"]
        cortex = body & ((r_body > 0.88) | ~zin(name, 1.0, 1.0))
        img[cortex] = _INTENSITY["cortex"]
        if name == "C2":
            img[dens] = _INTENSITY["marrow"]
        tss[bone], s1[bone], s2[bone] = value, STEP1["vertebrae"], parity

    for i, name in enumerate(DISCS):
        zmask = zin(name)
        r = np.sqrt((X / 9.6) ** 2 + ((Y - 8.0) / 7.6) ** 2)
        disc = (r <= 1.0) & zmask
        key = f"disc_{name}" if f"disc_{name}" in _INTENSITY else "disc"
        img[disc] = _INTENSITY["annulus"]
        img[disc & (r <= 0.7) & zin(name, 0.8, 0.8)] = _INTENSITY[key]
        raw = {"C2-C3": STEP1["disc_C2_C3"], "C7-T1": STEP1["disc_C7_T1"]}.get(name, 1)
        tss[disc], s1[disc], s2[disc] = DISCS[name], raw, raw
        if i % 2 == 0:
            odd[disc] = 1

    img[canal] = _INTENSITY["csf"]
    img[cord] = _INTENSITY["cord"]
    for lab, (c_val, k_val) in ((tss, (CANAL, CORD)), (s1, (8, 9)), (s2, (10, 11))):
        lab[canal] = c_val
        lab[cord] = k_val
    return img, {"tss": tss, "step1": s1, "step2": s2, "odd_discs": odd}


def _finish(img, zooms, rng, noise, dtype):
    """Partial-volume blur, smooth texture, Rician noise, random gain, cast to ``dtype``."""
    from scipy import ndimage

    zooms = np.asarray(zooms, float)
    img = ndimage.gaussian_filter(img, 0.5 / zooms)
    texture = ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 1.5)
    texture /= max(float(texture.std()), 1e-6)
    img = img + (img < 0.5) * 0.04 * texture
    re = img + noise * rng.standard_normal(img.shape)
    im = noise * rng.standard_normal(img.shape)
    out = np.sqrt(re**2 + im**2) * rng.uniform(500.0, 1500.0)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        out = np.clip(np.rint(out), 0, np.iinfo(dt).max)
    return out.astype(dt)
