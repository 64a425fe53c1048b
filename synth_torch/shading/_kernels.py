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
def _wave(k, x, y, z, phase):
    d = WAVE_DIRS[k]
    return WAVE_WEIGHT[k] * sin2pi((x * d[0] + y * d[1] + z * d[2]) * WAVE_FREQ[k] + (k + 1) * phase)


@numba.njit(inline="always")
def _waves(x, y, z, phase):
    # literal indices: numba folds them into constants (a loop index into global tuples costs ~20 ns a call)
    return _wave(0, x, y, z, phase) + _wave(1, x, y, z, phase) + _wave(2, x, y, z, phase)


@numba.njit(inline="always")
def _streak(k, u, phase):
    return STREAK_WEIGHT[k] * sin2pi(STREAK_FREQ[k] * u + (k + 1) * phase)


@numba.njit(inline="always")
def _pattern_value(kind, x, y, z, phase):
    """The texture value v of ``kind`` (modulation ``1 - contrast * v``); kind is a compile-time constant in the
    row loops below, so each loop is branch-free and vectorises."""
    if kind == CHECKER:
        s = math.floor(x) + math.floor(y) + math.floor(z)
        return s - 2.0 * math.floor(s / 2.0)
    if kind == STRIPES:
        return 0.5 + 0.5 * sin2pi(x + phase)
    if kind == NOISE:
        return 0.5 + 0.5 * _waves(x, y, z, phase)
    if kind == MARBLE:
        return 0.5 + 0.5 * sin2pi(x + 1.5 * _waves(0.5 * x, 0.5 * y, 0.5 * z, phase))
    if kind == WOOD:
        t = math.sqrt(x * x + y * y) + 0.3 * _waves(0.3 * x, 0.3 * y, 0.3 * z, phase)
        return t - math.floor(t)
    u = x + 0.02 * y
    return 0.5 + 0.5 * (_streak(0, u, phase) + _streak(1, u, phase) + _streak(2, u, phase) + _streak(3, u, phase))


@numba.njit(inline="always")
def _apply_pattern(kind, n, texture, x, y, z, contrast, phase, mod):
    for i in range(n):
        v = _pattern_value(kind, x[i], y[i], z[i], phase[i])
        mod[i] = 1.0 - contrast[i] * v if texture[i] == kind else mod[i]


@numba.njit(inline="always")
def _pow_unit(x, p):
    """``x ** p`` for x in [1e-4, 1] and p >= 1 to ~1e-4 relative, with arithmetic and square roots only (so the
    loop vectorises): ln x = 16 ln x^(1/16) by the atanh series, exp(y) = exp(y / 16) ** 16 by Taylor."""
    r = math.sqrt(math.sqrt(math.sqrt(math.sqrt(x))))
    s = (r - 1.0) / (r + 1.0)
    s2 = s * s
    ln = 32.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 / 11)))))
    z = max(p * ln, -40.0) / 16.0
    e = 1.0 + z * (1.0 + z * (0.5 + z * (1.0 / 6 + z * (1.0 / 24 + z * (1.0 / 120 + z * (1.0 / 720 + z / 5040))))))
    e = e * e
    e = e * e
    e = e * e
    return e * e


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


@numba.njit(inline="always")
def _irradiance(env, b, c, nx, ny, nz):
    """[n, 1]^T M [n, 1] for the 4 x 4 form M = env[b, c] (the environment's light at unit normal n)."""
    m = env[b, c]
    return (nx * (m[0, 0] * nx + m[0, 1] * ny + m[0, 2] * nz + m[0, 3])
            + ny * (m[1, 0] * nx + m[1, 1] * ny + m[1, 2] * nz + m[1, 3])
            + nz * (m[2, 0] * nx + m[2, 1] * ny + m[2, 2] * nz + m[2, 3])
            + (m[3, 0] * nx + m[3, 1] * ny + m[3, 2] * nz + m[3, 3]))


@numba.njit(parallel=True, cache=True)
def shade_rows(slot, position, normal, local, light, decal, height, albedo, texture, coord_scale, contrast, phase,
               grain, spec_scale, mapped, light_dir, radiance, ambient, specular, shininess, softness, environment,
               with_env, shadow_depth, depth_range, albedo_map, bg_color, bg_image, out):
    """G-buffer rows ([B*H, W] and [B*H, W*3]) and tables ([B, S+1, ...], [B, 3], [B]) to ``out`` [B*H, W*3].

    ``shadow_depth`` [B, n, n] (n = 0: no shadows); ``albedo_map`` [B*H, W*3] replaces the albedo of the rows
    ``mapped`` [B, S+1] when it has columns; ``spec_scale`` [B, S+1] scales the highlight per row; the ambient term
    is ``ambient * E(n)`` with E the ``environment`` [B, 3, 4, 4] forms when ``with_env`` (else 1);
    ``bg_image`` [B*H, W*3] fills empty pixels when it has columns, else ``bg_color`` [B, 3].
    Each row is shaded in passes over row buffers (gather, one loop per texture present, lighting), so that the
    arithmetic loops vectorise.
    """
    rows, W = slot.shape
    with_shadow = shadow_depth.shape[1] > 0
    with_map = albedo_map.shape[1] > 0
    with_bg = bg_image.shape[1] > 0
    bias = SHADOW_BIAS / depth_range
    for row in numba.prange(rows):
        b = np.uint64(row // height)
        sl, po, no, lo, li, dc, o = slot[row], position[row], normal[row], local[row], light[row], decal[row], out[row]
        tex = np.empty(W, np.int64)
        x, y, z, con, ph, gr, mod = (np.empty(W), np.empty(W), np.empty(W), np.empty(W), np.empty(W), np.empty(W),
                                     np.empty(W))
        present = np.zeros(7, np.bool_)
        any_grain = False
        for i in range(W):  # gather the materials (empty pixels: solid, so every loop below may run over them)
            s = np.uint64(max(sl[i], 0))
            cs = coord_scale[b, s]
            x[i], y[i], z[i] = lo[3 * i] * cs, lo[3 * i + 1] * cs, lo[3 * i + 2] * cs
            tex[i] = texture[b, s] if sl[i] >= 0 else SOLID
            con[i], ph[i], gr[i] = contrast[b, s], phase[b, s], grain[b, s]
            present[tex[i]] = True
            any_grain |= gr[i] != 0.0
            mod[i] = 1.0
        if present[CHECKER]:
            _apply_pattern(CHECKER, W, tex, x, y, z, con, ph, mod)
        if present[STRIPES]:
            _apply_pattern(STRIPES, W, tex, x, y, z, con, ph, mod)
        if present[NOISE]:
            _apply_pattern(NOISE, W, tex, x, y, z, con, ph, mod)
        if present[MARBLE]:
            _apply_pattern(MARBLE, W, tex, x, y, z, con, ph, mod)
        if present[WOOD]:
            _apply_pattern(WOOD, W, tex, x, y, z, con, ph, mod)
        if present[BRUSHED]:
            _apply_pattern(BRUSHED, W, tex, x, y, z, con, ph, mod)
        if any_grain:
            for i in range(W):
                fine = _waves(7.3 * x[i], 7.3 * y[i], 7.3 * z[i], ph[i]) * _waves(
                    3.1 * x[i] + 0.37, 3.1 * y[i] + 0.37, 3.1 * z[i] + 0.37, ph[i] + 0.5)
                mod[i] *= 1.0 + gr[i] * 0.35 * fine
        lx, ly, lz = light_dir[b, 0], light_dir[b, 1], light_dir[b, 2]
        cut = math.exp(SPECULAR_CUTOFF_LOG / shininess[b])  # n_dot_h ** shininess < 1e-4 below this
        p_spec, amb, soft = shininess[b], ambient[b], softness[b]
        diffuse, spec = np.empty(W), np.empty(W)
        for i in range(W):  # lighting, shadows aside
            px, py, pz = po[3 * i], po[3 * i + 1], po[3 * i + 2]
            inv = 1.0 / max(math.sqrt(px * px + py * py + pz * pz), 1e-8)
            hx, hy, hz = lx - px * inv, ly - py * inv, lz - pz * inv
            nx, ny, nz = no[3 * i], no[3 * i + 1], no[3 * i + 2]
            n_dot_l = max(nx * lx + ny * ly + nz * lz, 0.0)
            hn = 1.0 / max(math.sqrt(hx * hx + hy * hy + hz * hz), 1e-8)
            n_dot_h = max((nx * hx + ny * hy + nz * hz) * hn, 0.0)
            diffuse[i] = n_dot_l
            lobe = specular[b] * _pow_unit(max(n_dot_h, 1e-4), p_spec)
            spec[i] = lobe if n_dot_l > 0.0 and n_dot_h > cut else 0.0
        if with_shadow:
            for i in range(W):
                if sl[i] >= 0:
                    shadow = _shadow(shadow_depth, b, li[3 * i], li[3 * i + 1], li[3 * i + 2], soft, bias)
                    diffuse[i] *= shadow
                    spec[i] *= shadow
        for i in range(W):
            si, k = sl[i], 3 * i
            if si < 0:
                for c in range(3):
                    o[k + c] = bg_image[row, k + c] if with_bg else bg_color[b, c]
                continue
            s = np.uint64(si)
            m = mod[i] * (1.0 - dc[i])
            use_map = with_map and mapped[b, s] != 0
            sp = spec[i] * spec_scale[b, s]
            nx, ny, nz = no[k], no[k + 1], no[k + 2]
            for c in range(3):
                a = (albedo_map[row, k + c] if use_map else albedo[b, s, c]) * m
                e = _irradiance(environment, b, c, nx, ny, nz) if with_env else 1.0
                o[k + c] = a * (amb * e + radiance[b, c] * diffuse[i]) + radiance[b, c] * sp
