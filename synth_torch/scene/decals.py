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

from synth_torch.spec.constants import DEFECT_KINDS

_KIND = {name: i for i, name in enumerate(DEFECT_KINDS)}
_TWO_PI = 2 * math.pi


def defect_field(kind: Tensor, a: Tensor, p: Tensor, s: Tensor, seed: Tensor, mw: Tensor) -> tuple[Tensor, Tensor]:
    """Footprint and darkness of defects at defect-frame points (broadcast tensors of one shape).

    Args:
        kind: index into ``DEFECT_KINDS``; a, p: coordinates along and across the defect's axis (metres,
            centre at the origin); s: size (metres); seed: in [0, 1), varies the shape; mw: pixel footprint
            (metres): thin defects (cracks, fray) are never thinner than it.
    Returns:
        (inside: bool, darkness in [0, 1]) of the same shape.
    """
    near = a * a + p * p <= (0.75 * s + 3.0 * mw) ** 2
    r = torch.sqrt(((a / (0.5 * s)) ** 2 + (p / (0.4 * s)) ** 2).clamp_min(1e-24))
    blob_in, blob_dark = r < 1, (1.6 * (1 - r)).clamp(0, 1)
    uneven_dark = 0.6 * (1 - r).clamp(0, 1)
    off = 0.06 * s * torch.sin(_TWO_PI * (3 * a / s + seed)) + 0.03 * s * torch.sin(_TWO_PI * (7 * a / s + 2 * seed))
    width = torch.maximum(0.012 * s, 0.6 * mw)
    dn = (p - off).abs()
    crack_in = (dn < width) & (a.abs() < 0.5 * s)
    crack_dark = (1.5 * (1 - dn / width)).clamp(0, 1) * ((0.5 * s - a.abs()) / (0.05 * s)).clamp(0, 1)
    spacing = torch.maximum(0.15 * s, 2.5 * mw)
    q = (torch.frac(p / spacing + seed) - 0.5).abs()
    fray_box = (a.abs() < 0.5 * s) & (p.abs() < 0.35 * s)
    fray_in, fray_dark = fray_box & (q < 0.2), torch.where(fray_box, 0.8 * ((0.2 - q) / 0.1).clamp(0, 1), 0.0)
    theta = torch.atan2(p, a)
    radius = 0.5 * s * (1 + 0.3 * torch.sin(3 * theta + _TWO_PI * seed) + 0.15 * torch.sin(7 * theta))
    dist = torch.sqrt((a * a + p * p).clamp_min(1e-24))
    break_in, break_dark = dist < radius, ((radius - dist) / (0.15 * radius)).clamp(0, 1)
    inside = torch.zeros_like(near)
    dark = torch.zeros_like(a)
    for name, m, dk in (("blowhole", blob_in, blob_dark), ("spot", blob_in, blob_dark), ("uneven", blob_in, uneven_dark),
                        ("crack", crack_in, crack_dark), ("fray", fray_in, fray_dark), ("break", break_in, break_dark)):
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
        defect [B, H, W] int32 (0 none, d + 1 for the last defect slot d covering the pixel) and decal
        [B, H, W] = 1 - prod_d (1 - contrast_d * darkness_d).
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
        factor = factor * torch.where(present, 1 - per(defects.contrast) * dark, torch.ones_like(dark))
        defect = torch.where(present & inside, torch.full_like(defect, d + 1), defect)
    return defect, 1 - factor
