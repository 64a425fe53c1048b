"""``texture``: filtered 2D texture lookups with mipmaps (nvdiffrast semantics, 2D textures)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synth_torch.render._dispatch import check_finite, check_same_device, use_nvdiffrast
from synth_torch.render.context import nvdiffrast_ops

FILTER_MODES = ("auto", "nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp", "zero")


@dataclass
class TextureMip:
    """A mip pyramid: ``levels[0]`` is the texture [B, H, W, C], each next level halves both sides (min 1)."""

    levels: list[torch.Tensor]


def texture_construct_mip(tex: torch.Tensor, max_mip_level: int | None = None, cube_mode: bool = False) -> TextureMip:
    """Build mip levels by 2x2 box filtering (a side of length 1 stays 1).

    ``max_mip_level`` is the highest level index built (None: down to 1x1). An odd side longer than one
    texel cannot be halved exactly and raises ``ValueError``, as in nvdiffrast.
    """
    if cube_mode:
        raise ValueError("cube maps are only supported by the nvdiffrast backend (CUDA)")
    levels = [tex]
    while max(levels[-1].shape[1:3]) > 1 and (max_mip_level is None or len(levels) <= max_mip_level):
        t = levels[-1]
        h, w = t.shape[1:3]
        if (h > 1 and h % 2) or (w > 1 and w % 2):
            raise ValueError(f"cannot build mip level {len(levels)}: texture level of size {h}x{w} has an odd "
                             "side; use power-of-two textures or set max_mip_level")
        t = t.permute(0, 3, 1, 2)
        t = torch.nn.functional.avg_pool2d(t, kernel_size=(2 if h > 1 else 1, 2 if w > 1 else 1))
        levels.append(t.permute(0, 2, 3, 1).contiguous())
    return TextureMip(levels)


def _taps(coord: torch.Tensor, size: int,
          boundary: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two bilinear taps along one axis: (index0, index1, weight1, valid mask [2, ...])."""
    x = coord * size - 0.5
    if boundary == "clamp":
        x = x.clamp(0, size - 1)
    x0 = torch.floor(x)
    frac = x - x0
    i0, i1 = x0.long(), x0.long() + 1
    if boundary == "wrap":
        valid = torch.ones((2,) + i0.shape, dtype=torch.bool, device=i0.device)
        i0, i1 = i0 % size, i1 % size
    else:
        valid = torch.stack(((i0 >= 0) & (i0 < size), (i1 >= 0) & (i1 < size)))
        i0, i1 = i0.clamp(0, size - 1), i1.clamp(0, size - 1)
    return i0, i1, frac, valid


def _gather(tex: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """tex [Bt, h, w, C], iy/ix [B, H, W] -> [B, H, W, C] (tex broadcast when Bt == 1)."""
    Bt, h, w, C = tex.shape
    B = ix.shape[0]
    flat = (iy * w + ix).reshape(B, -1)
    if Bt == 1:
        return tex.reshape(h * w, C)[flat].reshape(*ix.shape, C)
    return torch.gather(tex.reshape(Bt, h * w, C), 1, flat[..., None].expand(-1, -1, C)).reshape(*ix.shape, C)


def _sample(tex: torch.Tensor, uv: torch.Tensor, nearest: bool, boundary: str) -> torch.Tensor:
    """Sample one level: tex [Bt, h, w, C], uv [B, H, W, 2] -> [B, H, W, C]."""
    h, w = tex.shape[1:3]
    u, v = uv[..., 0], uv[..., 1]
    if boundary == "wrap":
        u, v = u - torch.floor(u), v - torch.floor(v)
    if nearest:
        ix, iy = torch.floor(u * w).long(), torch.floor(v * h).long()
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        out = _gather(tex, iy.clamp(0, h - 1), ix.clamp(0, w - 1))
        return out * ok[..., None] if boundary == "zero" else out
    x0, x1, fx, vx = _taps(u, w, boundary)
    y0, y1, fy, vy = _taps(v, h, boundary)
    fx, fy = fx[..., None], fy[..., None]
    out = 0
    for iy, wy, oky in ((y0, 1 - fy, vy[0]), (y1, fy, vy[1])):
        for ix, wx, okx in ((x0, 1 - fx, vx[0]), (x1, fx, vx[1])):
            weight = wy * wx
            if boundary == "zero":
                weight = weight * (oky & okx)[..., None]
            out = out + weight * _gather(tex, iy, ix)
    return out


def mip_level(uv_da: torch.Tensor | None, mip_level_bias: torch.Tensor | None, height: int, width: int,
              max_level: int) -> torch.Tensor:
    """Continuous level of detail, clamped to [0, max_level]: half the log2 of the squared major axis of
    the pixel footprint ellipse in texels (from ``uv_da`` = (du/dX, du/dY, dv/dX, dv/dY)), plus the bias."""
    if uv_da is not None:
        dsdx, dsdy = uv_da[..., 0] * width, uv_da[..., 1] * width
        dtdx, dtdy = uv_da[..., 2] * height, uv_da[..., 3] * height
        a = dsdx * dsdx + dtdx * dtdx
        b = dsdy * dsdy + dtdy * dtdy
        c = dsdx * dsdy + dtdx * dtdy
        major_sq = 0.5 * (a + b) + torch.sqrt(0.25 * (a - b) ** 2 + c * c + 1e-30)
        level = 0.5 * torch.log2(major_sq.clamp_min(1e-30))
        if mip_level_bias is not None:
            level = level + mip_level_bias
    else:
        level = mip_level_bias
    return level.clamp(0, max_level)


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
            mip_level_bias: torch.Tensor | None = None, mip: TextureMip | list | None = None,
            filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None) -> torch.Tensor:
    """Sample a 2D texture at per-pixel texture coordinates.

    Args:
        tex: [B or 1, Ht, Wt, C]. Texel (i, j) = ``tex[:, j, i]`` is centred at uv ``((i + 0.5)/Wt, (j + 0.5)/Ht)``;
            v = 0 is tensor row 0.
        uv: [B, H, W, 2] texture coordinates.
        uv_da: [B, H, W, 4] ``(du/dX, du/dY, dv/dX, dv/dY)``, e.g. from ``interpolate(..., diff_attrs=...)``.
        mip_level_bias: [B, H, W] added to the level of detail (the level itself when ``uv_da`` is None).
        mip: a prebuilt :class:`TextureMip` (from :func:`texture_construct_mip`) or list of levels.
        filter_mode: ``'nearest'``, ``'linear'``, ``'linear-mipmap-nearest'``, ``'linear-mipmap-linear'`` or
            ``'auto'`` (trilinear when ``uv_da`` or ``mip_level_bias`` is given, else linear).
        boundary_mode: ``'wrap'``, ``'clamp'`` (to edge texel centres) or ``'zero'``.
        max_mip_level: highest mip level used (0 disables mipmapping).

    Returns: [B, H, W, C]. Gradients reach ``tex``, ``uv``, ``uv_da`` and ``mip_level_bias``.
    """
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"filter_mode must be one of {FILTER_MODES}, got {filter_mode!r}")
    if boundary_mode == "cube":
        raise ValueError("boundary_mode='cube' is only supported by the nvdiffrast backend (CUDA)")
    if boundary_mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary_mode must be one of {BOUNDARY_MODES + ('cube',)}, got {boundary_mode!r}")
    if tex.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"expected tex [B,Ht,Wt,C] and uv [B,H,W,2], got {tuple(tex.shape)} and {tuple(uv.shape)}")
    if tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"tex batch {tex.shape[0]} matches neither 1 nor uv's batch {uv.shape[0]}")
    check_same_device("texture", tex=tex, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
    check_finite("texture", tex=tex, uv=uv, uv_da=uv_da, mip_level_bias=mip_level_bias)
    if use_nvdiffrast(tex, uv) and mip is None:
        nvdr = nvdiffrast_ops()

        return nvdr.texture(tex.contiguous(), uv.contiguous(), uv_da=uv_da, mip_level_bias=mip_level_bias,
                            filter_mode=filter_mode, boundary_mode=boundary_mode, max_mip_level=max_mip_level)
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if (uv_da is not None or mip_level_bias is not None) else "linear"
    if filter_mode.startswith("linear-mipmap") and max_mip_level == 0:
        filter_mode = "linear"
    if filter_mode in ("nearest", "linear"):
        return _sample(tex, uv, filter_mode == "nearest", boundary_mode)
    if uv_da is None and mip_level_bias is None:
        raise ValueError(f"filter_mode={filter_mode!r} needs uv_da or mip_level_bias")
    levels = mip.levels if isinstance(mip, TextureMip) else (mip or texture_construct_mip(tex, max_mip_level).levels)
    if max_mip_level is not None:
        levels = levels[: max_mip_level + 1]
    level = mip_level(uv_da, mip_level_bias, tex.shape[1], tex.shape[2], len(levels) - 1)
    lo = torch.floor(level).long()
    if filter_mode == "linear-mipmap-nearest":
        out = 0
        for i, t in enumerate(levels):
            out = out + (lo == i)[..., None] * _sample(t, uv, False, boundary_mode)
        return out
    frac = (level - lo)[..., None]
    hi = (lo + 1).clamp(max=len(levels) - 1)
    out = 0
    for i, t in enumerate(levels):
        at_lo, at_hi = lo == i, hi == i
        if bool((at_lo | at_hi).any()):
            weight = at_lo[..., None] * (1 - frac) + at_hi[..., None] * frac
            out = out + weight * _sample(t, uv, False, boundary_mode)
    return out
