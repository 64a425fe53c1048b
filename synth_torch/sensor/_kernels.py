"""The compiled (numba) forward of :func:`synth_torch.sensor.apply_sensor` for samples without hue shift or JPEG.

One work item per sample; the steps and their order are those of the torch reference (``docs/sensor.md``) and
every value of a sample depends only on its own image, parameters and key. Noise replays the reference's
counter-based draws (:mod:`synth_torch.spec.random`) exactly, up to float rounding of the Box-Muller transform.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from synth_torch.render.cpu import sin2pi

_MASK32 = 0xFFFFFFFF
_COUNTER_SALT = 0x9E3779B9
_GRAY = (0.299, 0.587, 0.114)


@numba.njit(inline="always")
def _mix32(x):
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


@numba.njit(inline="always")
def _uniform(key_mix, counter):
    """The reference's ``uniform(keys, stream, ...)`` value number ``counter`` (``key_mix`` = mix32(key ^ mix32(stream)))."""
    return np.float64((_mix32(key_mix + _mix32(counter + _COUNTER_SALT)) >> 8)) * (1.0 / (1 << 24))


@numba.njit(inline="always")
def _tap(x, c, y, xx):
    H, W = x.shape[1], x.shape[2]
    return x[c, min(max(y, 0), H - 1), min(max(xx, 0), W - 1)]


@numba.njit(parallel=True, cache=True)
def sensor_images(image, active, ev, wb_red, wb_blue, motion, defocus, vignette, read, shot, gamma, saturation,
                  gray, stream_radius, stream_phase, keys, out):
    """image, out [B, 3, H, W] float32; active [B] bool (others are left untouched); per-sample parameters [B]
    float64; motion [B, K, K] motion-blur kernels (K = 1: none); defocus [B, 2R+1] Gaussian taps (zeros beyond a
    sample's own radius; all zero: none); stream_radius/stream_phase: stream ids of the noise draws; keys [B]."""
    B, C, H, W = image.shape
    n = C * H * W
    m = (n + 1) // 2
    K = motion.shape[1]
    r = K // 2
    R = (defocus.shape[1] - 1) // 2
    for b in numba.prange(B):
        if not active[b]:
            continue
        x = np.empty((C, H, W), dtype=np.float32)
        e = 2.0 ** ev[b]
        gains = (e * wb_red[b], e, e * wb_blue[b])
        for c in range(C):
            for y in range(H):
                for i in range(W):
                    x[c, y, i] = image[b, c, y, i] * np.float32(gains[c])
        if motion[b, r, r] != 1.0:
            src = x.copy()
            for c in range(C):
                for y in range(H):
                    for i in range(W):
                        acc = np.float32(0.0)
                        for ky in range(K):
                            for kx in range(K):
                                w = motion[b, ky, kx]
                                if w != 0.0:
                                    acc += w * _tap(src, c, y + ky - r, i + kx - r)
                        x[c, y, i] = acc
        if defocus[b, R] != 0.0:
            src = x.copy()
            for c in range(C):
                for y in range(H):
                    for i in range(W):
                        acc = np.float32(0.0)
                        for k in range(2 * R + 1):
                            w = defocus[b, k]
                            if w != 0.0:
                                acc += w * _tap(src, c, y, i + k - R)
                        x[c, y, i] = acc
            src = x.copy()
            for c in range(C):
                for y in range(H):
                    for i in range(W):
                        acc = np.float32(0.0)
                        for k in range(2 * R + 1):
                            w = defocus[b, k]
                            if w != 0.0:
                                acc += w * _tap(src, c, y + k - R, i)
                        x[c, y, i] = acc
        if vignette[b] > 0.0:
            corner2 = max(((H - 1) / 2) ** 2 + ((W - 1) / 2) ** 2, 1e-12)
            norm = 1.0 - 2.0 ** -2
            for y in range(H):
                for i in range(W):
                    rho2 = ((y - (H - 1) / 2) ** 2 + (i - (W - 1) / 2) ** 2) / corner2
                    g = np.float32(1.0 - vignette[b] * (1.0 - (1.0 + rho2) ** -2) / norm)
                    for c in range(C):
                        x[c, y, i] *= g
        if read[b] > 0.0 or shot[b] > 0.0:
            kr = _mix32(keys[b] ^ _mix32(stream_radius))
            kp = _mix32(keys[b] ^ _mix32(stream_phase))
            j = 0
            for c in range(C):
                for y in range(H):
                    for i in range(W):
                        pair = j if j < m else j - m
                        u1 = max(_uniform(kr, pair), 1.0 / (1 << 24))
                        ph = _uniform(kp, pair)
                        z = math.sqrt(-2.0 * math.log(u1)) * (sin2pi(ph + 0.25) if j < m else sin2pi(ph))
                        v = x[c, y, i]
                        var = read[b] * read[b] + shot[b] * max(v, 0.0)
                        x[c, y, i] = v + np.float32(math.sqrt(max(var, 1e-20)) * z)
                        j += 1
        inv_gamma = 1.0 / gamma[b]
        for y in range(H):
            for i in range(W):
                rgb = (min(max(x[0, y, i], 0.0), 1.0), min(max(x[1, y, i], 0.0), 1.0), min(max(x[2, y, i], 0.0), 1.0))
                if gamma[b] != 1.0:
                    rgb = (math.exp(math.log(rgb[0]) * inv_gamma) if rgb[0] > 0 else 0.0,
                           math.exp(math.log(rgb[1]) * inv_gamma) if rgb[1] > 0 else 0.0,
                           math.exp(math.log(rgb[2]) * inv_gamma) if rgb[2] > 0 else 0.0)
                    rgb = (min(rgb[0], 1.0), min(rgb[1], 1.0), min(rgb[2], 1.0))
                if saturation[b] != 1.0:
                    lum = _GRAY[0] * rgb[0] + _GRAY[1] * rgb[1] + _GRAY[2] * rgb[2]
                    s = saturation[b]
                    rgb = (min(max((1 - s) * lum + s * rgb[0], 0.0), 1.0), min(max((1 - s) * lum + s * rgb[1], 0.0), 1.0),
                           min(max((1 - s) * lum + s * rgb[2], 0.0), 1.0))
                if gray[b] > 0.0:
                    lum = _GRAY[0] * rgb[0] + _GRAY[1] * rgb[1] + _GRAY[2] * rgb[2]
                    w = gray[b]
                    rgb = ((1 - w) * rgb[0] + w * lum, (1 - w) * rgb[1] + w * lum, (1 - w) * rgb[2] + w * lum)
                out[b, 0, y, i], out[b, 1, y, i], out[b, 2, y, i] = rgb[0], rgb[1], rgb[2]
