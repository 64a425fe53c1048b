"""Material and light tables, and the reference (torch) definitions of the procedural textures and lighting.

A shader reads a :class:`~synth_torch.scene.gbuffer.GBuffer` plus two tables built from the scene spec:
:class:`MaterialTable` (one row per object slot, then the ground, so a pixel's material is row ``slot``) and
:class:`LightTable` (one light per image, in the camera frame). The functions here are the executable
definitions the compiled shader (:mod:`synth_torch.shading._kernels`) is tested against; they work on tensors
of any shape and device and are differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.camera import mat_vec
from synth_torch.scene.gbuffer import SHADOW_DEPTH_RANGE
from synth_torch.spec.constants import TEXTURES
from synth_torch.spec.types import SceneSpec

__all__ = ["BACKGROUND", "LightTable", "MaterialTable", "blinn_phong", "environment_light", "grain", "pattern",
           "shadow_lookup"]

_TWO_PI = 2 * math.pi
#: Flat background colour (linear RGB) where no surface covers a pixel, per scenario surface.
BACKGROUND = {"tabletop": (0.62, 0.68, 0.75), "inspection": (0.06, 0.06, 0.06)}
#: Object texture coordinates are local positions over the object's size times this and the texture scale.
OBJECT_TEXTURE_UNIT = 0.25
SHADOW_BIAS = 0.01  # metres of light-space depth a surface may lie behind the map and still be lit
SHADOW_DARKNESS = 0.85  # fraction of direct light a shadow removes at softness 0

WAVE_DIRS = ((0.83, 0.47, 0.31), (-0.39, 0.91, 0.17), (0.22, -0.35, 0.91))
WAVE_FREQ = (1.0, 1.7, 2.9)
WAVE_WEIGHT = (0.55, 0.3, 0.15)
STREAK_FREQ = (0.35, 1.0, 2.37, 5.13)
STREAK_WEIGHT = (0.35, 0.3, 0.2, 0.15)


@dataclass(frozen=True)
class MaterialTable:
    """Materials of the S object slots and the ground (row S), per image.

    albedo [B, S+1, 3] linear RGB; texture [B, S+1] long (index into ``TEXTURES``); coord_scale [B, S+1]
    (texture coordinates = local position * coord_scale); contrast, phase, grain [B, S+1]; specular [B, S+1]
    factor on the light's highlight; mapped [B, S+1] bool: the row's albedo is read per pixel from the albedo map
    (mesh textures and vertex colours, ground images) instead of ``albedo``.
    """

    albedo: Tensor
    texture: Tensor
    coord_scale: Tensor
    contrast: Tensor
    phase: Tensor
    grain: Tensor
    specular: Tensor
    mapped: Tensor

    @classmethod
    def from_spec(cls, spec: SceneSpec) -> MaterialTable:
        o, g = spec.objects, spec.ground
        size = o.scale.amax(-1).clamp_min(1e-9)
        zero = torch.zeros_like(o.texture_contrast)

        def rows(obj: Tensor, ground: Tensor) -> Tensor:
            return torch.cat((obj, ground[:, None].to(obj.dtype)), 1)

        return cls(albedo=torch.cat((o.albedo, g.albedo[:, None]), 1), texture=rows(o.texture, g.texture),
                   coord_scale=rows(o.texture_scale * OBJECT_TEXTURE_UNIT / size, g.texture_scale),
                   contrast=rows(o.texture_contrast, g.texture_contrast), phase=rows(o.texture_phase, g.texture_phase),
                   grain=rows(zero, g.grain), specular=rows(o.specular, torch.ones_like(g.grain)),
                   mapped=rows(o.colored, g.image >= 0))


@dataclass(frozen=True)
class LightTable:
    """direction [B, 3]: unit vector towards the light in the camera frame; radiance [B, 3]: colour times
    intensity; ambient, specular, shininess, shadow_softness [B]; environment [B, 3, 4, 4]: the irradiance form of
    :class:`~synth_torch.spec.types.LightSpec` in the camera frame (:func:`environment_light` evaluates it)."""

    direction: Tensor
    radiance: Tensor
    ambient: Tensor
    specular: Tensor
    shininess: Tensor
    shadow_softness: Tensor
    environment: Tensor

    @classmethod
    def from_spec(cls, spec: SceneSpec) -> LightTable:
        light = spec.light
        R = spec.camera.world_to_cam[:, :3, :3]
        direction = mat_vec(R, light.direction)
        A = torch.zeros(R.shape[0], 4, 4, dtype=light.environment.dtype, device=R.device)
        A[:, :3, :3] = R.transpose(1, 2).to(A.dtype)  # n_world = R^T n_camera
        A[:, 3, 3] = 1.0
        env = A.transpose(1, 2)[:, None] @ light.environment @ A[:, None]
        return cls(direction=direction / direction.norm(dim=-1, keepdim=True),
                   radiance=light.color * light.intensity[:, None], ambient=light.ambient, specular=light.specular,
                   shininess=light.shininess, shadow_softness=light.shadow_softness, environment=env)


def environment_light(environment: Tensor, normal: Tensor) -> Tensor:
    """Irradiance [..., 3] of the surroundings at unit normals ``normal`` [..., 3] from per-channel forms
    ``environment`` [..., 3, 4, 4] (broadcast): ``[n, 1]^T M_c [n, 1]`` for each channel c."""
    n = torch.cat((normal, torch.ones_like(normal[..., :1])), -1)
    return ((environment @ n[..., None, :, None])[..., 0] * n[..., None, :]).sum(-1)


def _waves(x: Tensor, y: Tensor, z: Tensor, phase: Tensor) -> Tensor:
    """Band-limited pseudo-noise in [-1, 1]: three sine waves in fixed skew directions."""
    out = torch.zeros_like(x)
    for k, ((dx, dy, dz), f, w) in enumerate(zip(WAVE_DIRS, WAVE_FREQ, WAVE_WEIGHT)):
        out = out + w * torch.sin(_TWO_PI * ((x * dx + y * dy + z * dz) * f + (k + 1) * phase))
    return out


def _streaks(x: Tensor, phase: Tensor) -> Tensor:
    """An irregular 1-D streak profile in [-1, 1] along ``x``."""
    out = torch.zeros_like(x)
    for k, (f, w) in enumerate(zip(STREAK_FREQ, STREAK_WEIGHT)):
        out = out + w * torch.sin(_TWO_PI * (f * x + (k + 1) * phase))
    return out


def pattern(kind: Tensor, x: Tensor, y: Tensor, z: Tensor, contrast: Tensor, phase: Tensor) -> Tensor:
    """Brightness modulation ``1 - contrast * v`` of texture ``kind`` (index into ``TEXTURES``) at texture
    coordinates (x, y, z); every argument broadcasts to one shape."""
    v = torch.zeros_like(x)
    for k, name in enumerate(TEXTURES):
        if name == "solid":
            continue
        if name == "checker":
            s = torch.floor(x) + torch.floor(y) + torch.floor(z)
            value = s - 2 * torch.floor(s / 2)
        elif name == "stripes":
            value = 0.5 + 0.5 * torch.sin(_TWO_PI * (x + phase))
        elif name == "noise":
            value = 0.5 + 0.5 * _waves(x, y, z, phase)
        elif name == "marble":
            value = 0.5 + 0.5 * torch.sin(_TWO_PI * (x + 1.5 * _waves(0.5 * x, 0.5 * y, 0.5 * z, phase)))
        elif name == "wood":
            t = torch.sqrt(x * x + y * y) + 0.3 * _waves(0.3 * x, 0.3 * y, 0.3 * z, phase)
            value = t - torch.floor(t)
        else:  # brushed: irregular streaks across x
            value = 0.5 + 0.5 * _streaks(x + 0.02 * y, phase)
        v = torch.where(kind == k, value, v)
    return 1.0 - contrast * v


def grain(x: Tensor, y: Tensor, z: Tensor, amount: Tensor, phase: Tensor) -> Tensor:
    """Fine multiplicative grain around 1 (a sintered-material look) at texture coordinates (x, y, z)."""
    fine = _waves(7.3 * x, 7.3 * y, 7.3 * z, phase) * _waves(3.1 * x + 0.37, 3.1 * y + 0.37, 3.1 * z + 0.37, phase + 0.5)
    return 1.0 + amount * 0.35 * fine


def shadow_lookup(depth: Tensor, light: Tensor, softness: Tensor) -> Tensor:
    """Fraction of the direct light reaching pixels at light-space positions ``light`` [B, H, W, 3], from the
    shadow map ``depth`` [B, n, n] (2x2 percentage-closer filter); ``softness`` [B]. Shape [B, H, W]."""
    B, n = depth.shape[0], depth.shape[-1]
    fx = ((light[..., 0] + 1) * 0.5 * n - 0.5).clamp(0, n - 1)
    fy = ((light[..., 1] + 1) * 0.5 * n - 0.5).clamp(0, n - 1)
    x0, y0 = fx.floor(), fy.floor()
    wx, wy = fx - x0, fy - y0
    x0, y0 = x0.long(), y0.long()
    flat = depth.reshape(B, -1).to(light.dtype)
    bias = SHADOW_BIAS / SHADOW_DEPTH_RANGE
    lit = torch.zeros_like(fx)
    for dy, wyy in ((0, 1 - wy), (1, wy)):
        for dx, wxx in ((0, 1 - wx), (1, wx)):
            index = (y0 + dy).clamp(max=n - 1) * n + (x0 + dx).clamp(max=n - 1)
            d = torch.gather(flat, 1, index.reshape(B, -1)).view_as(fx)
            lit = lit + wxx * wyy * (light[..., 2] <= d + bias).to(fx.dtype)
    return 1.0 - (1.0 - lit) * (SHADOW_DARKNESS / (1.0 + 0.15 * softness[:, None, None]))


def blinn_phong(albedo: Tensor, normal: Tensor, to_light: Tensor, to_eye: Tensor, radiance: Tensor, ambient: Tensor,
                specular: Tensor, shininess: Tensor, shadow: Tensor) -> Tensor:
    """Linear RGB [..., 3] from albedo and unit vectors [..., 3] and per-pixel light terms (``radiance`` and
    ``ambient`` [..., 3], the others [...])."""
    n_dot_l = (normal * to_light).sum(-1).clamp_min(0)
    half = to_light + to_eye
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    n_dot_h = (normal * half).sum(-1).clamp_min(0)
    lit = shadow * (n_dot_l > 0)
    spec = specular * torch.where(n_dot_h > 0, n_dot_h.clamp_min(1e-30).pow(shininess), 0.0) * lit
    return albedo * (ambient + radiance * (n_dot_l * shadow)[..., None]) + radiance * spec[..., None]
