"""Surface defects as decals on the ground or tile: their footprints (the labeled region) and darkness.

:func:`defect_field` is the reference definition of every defect kind (``docs/labels.md``); the G-buffer's
decal pass evaluates it for every defect slot at every ground pixel. Darkness is continuous in position and
size (soft edges), so images are differentiable in defect size and contrast; the mask is the hard footprint.
:mod:`synth_torch.scene._kernels` holds the compiled forward of the same definitions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from synth_torch.spec.constants import BRIGHT_DEFECT_KINDS, DEFECT_KINDS, on_device

_KIND = {name: i for i, name in enumerate(DEFECT_KINDS)}
_TWO_PI = 2 * math.pi


#: Half extents (along, across the defect's axis) of each kind (``DEFECT_KINDS`` order), in sizes: the shape lies
#: in this box, except that thin lines are never thinner than half a pixel footprint.
HALF_EXTENT = ((0.5, 0.35), (0.5, 0.04), (0.5, 0.4), (0.7, 0.28), (0.725, 0.725), (1.65, 0.55), (0.59, 0.53),
               (0.1, 0.1), (0.5, 0.002))
#: Radius of each kind in sizes: nothing of a defect lies further than this times its size (plus 3 pixel
#: footprints) from its centre.
EXTENT = tuple(math.hypot(a, p) for a, p in HALF_EXTENT)
#: +1 for kinds that darken the surface, -1 for those that lighten it (``BRIGHT_DEFECT_KINDS``).
SIGN = tuple(-1.0 if k in BRIGHT_DEFECT_KINDS else 1.0 for k in DEFECT_KINDS)


def _line(a: Tensor, dn: Tensor, s: Tensor, mw: Tensor, core: float) -> tuple[Tensor, Tensor]:
    """A thin line at distance ``dn`` across, of length s along ``a``: a core at least half a pixel wide, fully
    dark, fading over one pixel footprint (so that a line thinner than a pixel stays continuous), tapered at
    its ends. Returns (inside, darkness)."""
    w = torch.maximum(core * s, 0.5 * mw)
    inside = (dn < w) & (a.abs() < 0.5 * s)
    return inside, ((w + mw - dn) / mw).clamp(0, 1) * ((0.5 * s - a.abs()) / (0.05 * s)).clamp(0, 1)


def defect_field(kind: Tensor, a: Tensor, p: Tensor, s: Tensor, seed: Tensor, mw: Tensor) -> tuple[Tensor, Tensor]:
    """Footprint and darkness of defects at defect-frame points (broadcast tensors of one shape).

    Args:
        kind: index into ``DEFECT_KINDS``; a, p: coordinates along and across the defect's axis (metres,
            centre at the origin); s: size (metres); seed: in [0, 1), varies the shape; mw: pixel footprint
            (metres): thin defects (cracks, scratches) are never thinner than half of it.
    Returns:
        (inside: bool, darkness in [0, 1]) of the same shape. Kinds in ``BRIGHT_DEFECT_KINDS`` lighten by it.
    """
    def ellipse(ra, rp):
        return torch.sqrt(((a / (ra * s)) ** 2 + (p / (rp * s)) ** 2).clamp_min(1e-24))

    def wave(freq, x, shift):
        return torch.sin(_TWO_PI * (freq * x / s + shift))

    hole = ellipse(0.5, 0.35)
    spot = ellipse(0.5, 0.4)
    off = 0.025 * s * wave(2, a, seed) + 0.01 * s * wave(5, a, 2 * seed)
    crack_in, crack_dark = _line(a, (p - off).abs(), s, mw, 0.004)
    fray = ellipse(0.5, 0.2)
    fray_edge = 1 + 0.25 * wave(5, a, seed) + 0.15 * wave(13, a, 2 * seed)
    theta = torch.atan2(p, a)
    radius = 0.5 * s * (1 + 0.3 * torch.sin(3 * theta + _TWO_PI * seed) + 0.15 * torch.sin(7 * theta))
    dist = torch.sqrt((a * a + p * p).clamp_min(1e-24))
    band = ellipse(1.5, 0.5)
    band_edge = 1 + 0.1 * wave(2, a, seed)
    stain = ellipse(0.5, 0.45) * (1 + 0.15 * wave(2, p, seed))
    speck = torch.sqrt(((a * a + p * p) / torch.maximum(0.1 * s, 0.7 * mw) ** 2).clamp_min(1e-24))
    scratch_in, scratch_dark = _line(a, p.abs(), s, mw, 0.002)
    shapes = {
        "blowhole": (hole < 1, (2 * (1 - hole)).clamp(0, 1)),
        "crack": (crack_in, crack_dark),
        "spot": (spot < 1, (1.6 * (1 - spot)).clamp(0, 1)),
        "fray": (fray < fray_edge, 0.7 * ((fray_edge - fray) / 0.2).clamp(0, 1) * (0.7 + 0.3 * wave(17, p, seed))),
        "break": (dist < radius, ((radius - dist) / (0.15 * radius)).clamp(0, 1)),
        "uneven": (band < band_edge, 0.6 * ((band_edge - band) / 0.3).clamp(0, 1)),
        "stain": (stain < 1, 0.5 * (1 - stain).clamp(0, 1) ** 2),
        "dust": (speck < 1, (1.5 * (1 - speck)).clamp(0, 1)),
        "scratch": (scratch_in, 0.8 * scratch_dark),
    }
    extent = on_device(EXTENT, a.device, a.dtype)[kind]
    near = a * a + p * p <= (extent * s + 3.0 * mw) ** 2
    inside = torch.zeros_like(near)
    dark = torch.zeros_like(a)
    for name, (m, dk) in shapes.items():
        sel = kind == _KIND[name]
        inside = torch.where(sel, m, inside)
        dark = torch.where(sel, dk, dark)
    return inside & near, torch.where(near, dark, torch.zeros_like(dark))


def decal_pass(ground: Tensor, local: Tensor, depth: Tensor, fx: Tensor, defects) -> tuple[Tensor, Tensor]:
    """Defect ids and decal opacity of every pixel (torch reference, differentiable in defect size and contrast).

    Args:
        ground: [B, H, W] bool, pixels of the ground/tile; local: [B, H, W, 3] ground coordinates (world, metres);
        depth: [B, H, W] camera-frame z; fx: [B] focal length in pixels; defects: a
        :class:`~synth_torch.spec.types.DefectSpec` ([B, D] tables).
    Returns:
        defect [B, H, W] int32 (0 none, d + 1 for the last labeled defect slot d covering the pixel; decoys are
        drawn but leave no id) and decal [B, H, W] = 1 - prod_d (1 - sign_d * contrast_d * darkness_d), with
        sign -1 for kinds that lighten the surface (the decal is then negative).
    """
    B, D = defects.type.shape
    defect = torch.zeros(ground.shape, dtype=torch.int32, device=ground.device)
    factor = torch.ones(ground.shape, dtype=local.dtype, device=ground.device)
    if D == 0:
        return defect, 1 - factor
    x, y = local[..., 0], local[..., 1]
    mw = depth / fx[:, None, None]
    for d in range(D):
        def per(t: Tensor) -> Tensor:
            return t[:, d, None, None]

        present = ground & (per(defects.type) >= 0)
        rx, ry = x - defects.center[:, d, 0, None, None], y - defects.center[:, d, 1, None, None]
        c, s = torch.cos(per(defects.angle)), torch.sin(per(defects.angle))
        inside, dark = defect_field(per(defects.kind), c * rx + s * ry, -s * rx + c * ry, per(defects.size),
                                    per(defects.seed), mw)
        sign = on_device(SIGN, dark.device, dark.dtype)[per(defects.kind)]
        factor = factor * torch.where(present, 1 - sign * per(defects.contrast) * dark, torch.ones_like(dark))
        labeled = present & (per(defects.label) > 0)
        defect = torch.where(labeled & inside, torch.full_like(defect, d + 1), defect)
    return defect, 1 - factor
