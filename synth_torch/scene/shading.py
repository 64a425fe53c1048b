"""Per-pixel material patterns, surface defects and Blinn-Phong lighting (torch, vectorised over pixels).

All functions take flat per-pixel tensors ([P] or [P, 3]) so that only covered pixels are shaded.
"""

from __future__ import annotations

import math

import torch

from synth_torch.scenario.config import DEFECT_KINDS, TEXTURES

_TWO_PI = 2 * math.pi


_WAVE_DIRS = ((0.83, 0.47, 0.31), (-0.39, 0.91, 0.17), (0.22, -0.35, 0.91))


def _waves(p: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Cheap band-limited pseudo-noise in [-1, 1] from three sine waves in fixed skew directions. p [P, 3]."""
    out = torch.zeros_like(p[:, 0])
    for (dx, dy, dz), freq, k, weight in zip(_WAVE_DIRS, (1.0, 1.7, 2.9), (1.0, 2.0, 3.0), (0.55, 0.3, 0.15)):
        proj = (p[:, 0] * dx + p[:, 1] * dy + p[:, 2] * dz) * freq + _TWO_PI * k * phase
        out = out + weight * torch.sin(_TWO_PI * proj)
    return out


_STREAK_FREQ = (0.35, 1.0, 2.37, 5.13)
_STREAK_WEIGHT = (0.35, 0.3, 0.2, 0.15)


def _streaks(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Irregular 1-D streak profile in [-1, 1] along ``x`` [P]."""
    out = torch.zeros_like(x)
    for k, (f, w) in enumerate(zip(_STREAK_FREQ, _STREAK_WEIGHT)):
        out = out + w * torch.sin(_TWO_PI * (f * x + (k + 1) * phase))
    return out


def pattern(kind: torch.Tensor, coords: torch.Tensor, contrast: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Brightness modulation in [0, 1] of texture ``kind`` [P] (index into TEXTURES) at texture-space
    ``coords`` [P, 3] (already multiplied by the texture scale); ``contrast`` [P] in [0, 1]."""
    out = torch.ones_like(coords[:, 0])
    for k, name in enumerate(TEXTURES):
        rows = (kind == k).nonzero().squeeze(1)
        if name == "solid" or rows.numel() == 0:
            continue
        p, ph = coords[rows], phase[rows]
        if name == "checker":
            v = (torch.floor(p[:, 0]) + torch.floor(p[:, 1]) + torch.floor(p[:, 2])).remainder(2)
        elif name == "stripes":
            v = 0.5 + 0.5 * torch.sin(_TWO_PI * (p[:, 0] + ph))
        elif name == "noise":
            v = 0.5 + 0.5 * _waves(p, ph)
        elif name == "marble":
            v = 0.5 + 0.5 * torch.sin(_TWO_PI * (p[:, 0] + 1.5 * _waves(0.5 * p, ph)))
        elif name == "wood":
            v = torch.frac(torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) + 0.3 * _waves(0.3 * p, ph))
        else:  # brushed: irregular streaks along y (incommensurate frequencies across x)
            v = 0.5 + 0.5 * _streaks(p[:, 0] + 0.02 * p[:, 1], ph)
        out[rows] = 1.0 - contrast[rows] * v
    return out


def grain(coords: torch.Tensor, amount: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Fine multiplicative grain (sintered-material look) around 1, coords [P, 3] in texture units."""
    fine = _waves(coords * 7.3, phase) * _waves(coords * 3.1 + 0.37, phase + 0.5)
    return 1.0 + amount * 0.35 * fine


def defect_masks(kind: torch.Tensor, local: torch.Tensor, size: torch.Tensor, seed: torch.Tensor,
                 min_width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Defect footprint at surface points.

    Args:
        kind: [P] index into DEFECT_KINDS; local: [P, 2] surface coordinates (metres) in the defect's frame
        (defect centre at the origin, along-axis first); size: [P] metres; seed: [P] in [0, 1);
        min_width: [P] metres, the pixel footprint (thin defects are never thinner than this).
    Returns:
        (mask [P] bool: the labeled region, darkness [P] in [0, 1]: shading weight).
    """
    a, p = local[:, 0], local[:, 1]
    mask = torch.zeros_like(a, dtype=torch.bool)
    dark = torch.zeros_like(a)
    for k, name in enumerate(DEFECT_KINDS):
        rows = (kind == k).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        ar, pr, s, sd, mw = a[rows], p[rows], size[rows], seed[rows], min_width[rows]
        if name in ("blowhole", "spot", "uneven"):
            r = torch.sqrt((ar / (0.5 * s)) ** 2 + (pr / (0.4 * s)) ** 2)
            m = r < 1
            d = (1.6 * (1 - r)).clamp(0, 1) if name != "uneven" else 0.6 * (1 - r).clamp(0, 1)
        elif name == "crack":
            offset = 0.06 * s * torch.sin(_TWO_PI * (3 * ar / s + sd)) + 0.03 * s * torch.sin(_TWO_PI * (7 * ar / s + 2 * sd))
            width = torch.maximum(0.012 * s, 0.6 * mw)
            m = ((pr - offset).abs() < width) & (ar.abs() < 0.5 * s)
            d = m.to(a.dtype)
        elif name == "fray":
            spacing = torch.maximum(0.15 * s, 2.5 * mw)
            m = ((torch.frac(pr / spacing + sd) - 0.5).abs() < 0.2) & (ar.abs() < 0.5 * s) & (pr.abs() < 0.35 * s)
            d = 0.8 * m.to(a.dtype)
        else:  # break: an irregular chipped region
            theta = torch.atan2(pr, ar)
            radius = 0.5 * s * (1 + 0.3 * torch.sin(3 * theta + _TWO_PI * sd) + 0.15 * torch.sin(7 * theta))
            m = torch.sqrt(ar ** 2 + pr ** 2) < radius
            d = m.to(a.dtype)
        mask[rows] = m
        dark[rows] = d
    return mask, dark


def blinn_phong(albedo: torch.Tensor, normal: torch.Tensor, to_light: torch.Tensor, to_eye: torch.Tensor,
                light_color: torch.Tensor, ambient: torch.Tensor, specular: torch.Tensor, shininess: torch.Tensor,
                shadow: torch.Tensor) -> torch.Tensor:
    """Linear RGB [P, 3] from albedo, unit vectors [P, 3] and per-pixel light terms ([P, 3] or [P])."""
    n_dot_l = (normal * to_light).sum(-1).clamp_min(0)
    half = to_light + to_eye
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    n_dot_h = (normal * half).sum(-1).clamp_min(0)
    lit = shadow * (n_dot_l > 0)
    spec = specular * n_dot_h.pow(shininess) * lit
    return albedo * (ambient[:, None] + light_color * (n_dot_l * shadow)[:, None]) + light_color * spec[:, None]
