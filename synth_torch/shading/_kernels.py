"""The compiled (numba) shader: the forward of :mod:`synth_torch.shading.materials`, fused per pixel.

Used for generation on the CPU without gradients. Every expression follows the torch definitions (tests compare
the two); sines use :func:`synth_torch.render.cpu.sin2pi`. Work is split by image rows and every pixel reads
only its own G-buffer values and its image's tables, so a sample never depends on its batch.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from synth_torch.render.cpu import sin2pi
from synth_torch.shading.materials import (
    SHADOW_BIAS,
    SHADOW_DARKNESS,
    STREAK_FREQ,
    STREAK_WEIGHT,
    WAVE_DIRS,
    WAVE_FREQ,
    WAVE_WEIGHT,
)

SOLID, CHECKER, STRIPES, NOISE, MARBLE, WOOD, BRUSHED = range(7)  # == TEXTURES order
SPECULAR_CUTOFF_LOG = math.log(1e-4)  # highlights weaker than 1e-4 of the specular strength are skipped


@numba.njit(inline="always")
def _waves(x, y, z, phase):
    out = 0.0
    for k in range(3):
        dx, dy, dz = WAVE_DIRS[k]
        out += WAVE_WEIGHT[k] * sin2pi((x * dx + y * dy + z * dz) * WAVE_FREQ[k] + (k + 1) * phase)
    return out


@numba.njit(inline="always")
def _pattern(kind, x, y, z, contrast, phase):
    if kind == SOLID:
        return 1.0
    if kind == CHECKER:
        s = math.floor(x) + math.floor(y) + math.floor(z)
        v = s - 2.0 * math.floor(s / 2.0)
    elif kind == STRIPES:
        v = 0.5 + 0.5 * sin2pi(x + phase)
    elif kind == NOISE:
        v = 0.5 + 0.5 * _waves(x, y, z, phase)
    elif kind == MARBLE:
        v = 0.5 + 0.5 * sin2pi(x + 1.5 * _waves(0.5 * x, 0.5 * y, 0.5 * z, phase))
    elif kind == WOOD:
        t = math.sqrt(x * x + y * y) + 0.3 * _waves(0.3 * x, 0.3 * y, 0.3 * z, phase)
        v = t - math.floor(t)
    else:
        u = x + 0.02 * y
        v = 0.0
        for k in range(4):
            v += STREAK_WEIGHT[k] * sin2pi(STREAK_FREQ[k] * u + (k + 1) * phase)
        v = 0.5 + 0.5 * v
    return 1.0 - contrast * v


@numba.njit(inline="always")
def _shadow(depth, b, lx, ly, lz, softness, bias):
    n = depth.shape[1]
    fx = min(max((lx + 1.0) * 0.5 * n - 0.5, 0.0), n - 1.0)
    fy = min(max((ly + 1.0) * 0.5 * n - 0.5, 0.0), n - 1.0)
    x0, y0 = math.floor(fx), math.floor(fy)
    wx, wy = fx - x0, fy - y0
    ix, iy = np.uint64(x0), np.uint64(y0)
    ix1, iy1 = np.uint64(min(x0 + 1, n - 1)), np.uint64(min(y0 + 1, n - 1))
    d = depth[b]
    lit = ((1 - wx) * (1 - wy) * (lz <= d[iy, ix] + bias) + wx * (1 - wy) * (lz <= d[iy, ix1] + bias)
           + (1 - wx) * wy * (lz <= d[iy1, ix] + bias) + wx * wy * (lz <= d[iy1, ix1] + bias))
    return 1.0 - (1.0 - lit) * (SHADOW_DARKNESS / (1.0 + 0.15 * softness))


@numba.njit(parallel=True, cache=True)
def shade_rows(slot, position, normal, local, light, decal, height, albedo, texture, coord_scale, contrast, phase,
               grain, light_dir, radiance, ambient, specular, shininess, softness, shadow_depth, depth_range,
               albedo_map, bg_color, bg_image, out):
    """G-buffer rows ([B*H, W] and [B*H, W*3]) and tables ([B, S+1, ...], [B, 3], [B]) to ``out`` [B*H, W*3].

    ``shadow_depth`` [B, n, n] (n = 0: no shadows); ``albedo_map`` [B*H, W*3] replaces the ground albedo when it
    has columns; ``bg_image`` [B*H, W*3] fills empty pixels when it has columns, else ``bg_color`` [B, 3].
    """
    rows, width = slot.shape
    S = albedo.shape[1] - 1
    with_shadow = shadow_depth.shape[1] > 0
    with_map = albedo_map.shape[1] > 0
    with_bg = bg_image.shape[1] > 0
    bias = SHADOW_BIAS / depth_range
    for row in numba.prange(rows):
        b = np.uint64(row // height)
        lx, ly, lz = light_dir[b, 0], light_dir[b, 1], light_dir[b, 2]
        cut = math.exp(SPECULAR_CUTOFF_LOG / shininess[b])  # n_dot_h ** shininess < 1e-4 below this
        sl, po, no, lo, li, dc, o = slot[row], position[row], normal[row], local[row], light[row], decal[row], out[row]
        for i in range(width):
            k = 3 * i
            si = sl[i]
            if si < 0:
                for c in range(3):
                    o[k + c] = bg_image[row, k + c] if with_bg else bg_color[b, c]
                continue
            s = np.uint64(si)
            cs = coord_scale[b, s]
            x, y, z = lo[k] * cs, lo[k + 1] * cs, lo[k + 2] * cs
            mod = _pattern(texture[b, s], x, y, z, contrast[b, s], phase[b, s])
            if grain[b, s] != 0.0:
                fine = _waves(7.3 * x, 7.3 * y, 7.3 * z, phase[b, s]) * _waves(
                    3.1 * x + 0.37, 3.1 * y + 0.37, 3.1 * z + 0.37, phase[b, s] + 0.5)
                mod *= 1.0 + grain[b, s] * 0.35 * fine
            mod *= 1.0 - dc[i]
            px, py, pz = po[k], po[k + 1], po[k + 2]
            inv = 1.0 / max(math.sqrt(px * px + py * py + pz * pz), 1e-8)
            ex, ey, ez = -px * inv, -py * inv, -pz * inv
            nx, ny, nz = no[k], no[k + 1], no[k + 2]
            n_dot_l = max(nx * lx + ny * ly + nz * lz, 0.0)
            hx, hy, hz = lx + ex, ly + ey, lz + ez
            hn = 1.0 / max(math.sqrt(hx * hx + hy * hy + hz * hz), 1e-8)
            n_dot_h = max((nx * hx + ny * hy + nz * hz) * hn, 0.0)
            shadow = 1.0
            if with_shadow:
                shadow = _shadow(shadow_depth, b, li[k], li[k + 1], li[k + 2], softness[b], bias)
            lit = shadow if n_dot_l > 0.0 else 0.0
            spec = specular[b] * math.exp(shininess[b] * math.log(n_dot_h)) * lit if lit > 0.0 and n_dot_h > cut else 0.0
            ground_map = with_map and si == S
            for c in range(3):
                a = (albedo_map[row, k + c] if ground_map else albedo[b, s, c]) * mod
                o[k + c] = a * (ambient[b] + radiance[b, c] * (n_dot_l * shadow)) + radiance[b, c] * spec
