"""The compiled (numba) forward of :func:`synth_torch.sensor.apply_sensor` for samples without hue shift or JPEG.

One work item per sample; the steps and their order are those of the torch reference (``docs/sensor.md``) and
every value of a sample depends only on its own image, parameters and key. Noise replays the reference's
counter-based draws (:mod:`synth_torch.spec.random`) exactly, up to float rounding of the Box-Muller transform.
Blurs visit a sample's non-zero taps in the reference's row-major order, in float32.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from synth_torch.render.cpu import sin2pi

_MASK32 = 0xFFFFFFFF
_COUNTER_SALT = 0x9E3779B9
_GRAY_R, _GRAY_G, _GRAY_B = 0.299, 0.587, 0.114


@numba.njit(inline="always")
def _mix32(x):
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


@numba.njit(inline="always")
def _to_unit(bits):
    return np.float64(bits >> 8) * (1.0 / (1 << 24))


@numba.njit(inline="always")
def _blur(src, dst, ty, tx, tw, nt):
    """dst[c, y, x] = sum_k tw[k] * src[c, clamp(y + ty[k]), clamp(x + tx[k])] (replicate borders), accumulated
    in float32 in tap order. Taps are outermost and the interior runs over slice views from index 0, so the inner
    loop has no negative-index checks and vectorises."""
    C, H, W = src.shape
    acc = np.empty(W, dtype=np.float32)
    for c in range(C):
        for y in range(H):
            acc[:] = 0.0
            for k in range(nt):
                w, dx = tw[k], tx[k]
                row = src[c, min(max(y + ty[k], 0), H - 1)]
                lo, hi = min(max(-dx, 0), W), max(min(W - dx, W), 0)
                for i in range(lo):
                    acc[i] += w * row[0]
                if hi > lo:
                    inner, seg = acc[lo:hi], row[lo + dx:hi + dx]
                    for i in range(hi - lo):
                        inner[i] += w * seg[i]
                for i in range(max(hi, lo), W):
                    acc[i] += w * row[W - 1]
            dst[c, y] = acc


@numba.njit(parallel=True, cache=True)
def sensor_images(image, active, ev, wb_red, wb_blue, blur_px, motion, defocus, vignette, read, shot, gamma,
                  saturation, gray, stream_radius, stream_phase, keys, out):
    """image, out [B, 3, H, W] float32; active [B] bool (others are left untouched); per-sample parameters [B]
    float64; blur_px [B] motion-blur lengths (0: no motion blur); motion [B, K, K] float32 motion-blur kernels; defocus [B, 2R+1] float32 Gaussian taps
    (zeros beyond a sample's own radius; all zero: none); stream_radius/stream_phase: stream ids of the noise
    draws; keys [B] int64."""
    B, C, H, W = image.shape
    n = C * H * W
    m = (n + 1) // 2
    K = motion.shape[1]
    r = K // 2
    R = (defocus.shape[1] - 1) // 2
    for b in numba.prange(B):
        if not active[b]:
            continue
        e = 2.0 ** ev[b]
        gains = (np.float32(e * wb_red[b]), np.float32(e), np.float32(e * wb_blue[b]))
        x = np.empty((C, H, W), dtype=np.float32)
        for c in range(C):
            for y in range(H):
                for i in range(W):
                    x[c, y, i] = image[b, c, y, i] * gains[c]
        tmp = np.empty((C, H, W), dtype=np.float32)
        if blur_px[b] > 0.0:
            ty, tx, tw = np.empty(K * K, np.int64), np.empty(K * K, np.int64), np.empty(K * K, np.float32)
            nt = 0
            for ky in range(K):
                for kx in range(K):
                    if motion[b, ky, kx] != 0.0:
                        ty[nt], tx[nt], tw[nt] = ky - r, kx - r, motion[b, ky, kx]
                        nt += 1
            _blur(x, tmp, ty, tx, tw, nt)
            x, tmp = tmp, x
        if defocus[b, R] != 0.0:
            zeros = np.zeros(2 * R + 1, np.int64)
            offs, tw = np.empty(2 * R + 1, np.int64), np.empty(2 * R + 1, np.float32)
            nt = 0
            for k in range(2 * R + 1):
                if defocus[b, k] != 0.0:
                    offs[nt], tw[nt] = k - R, defocus[b, k]
                    nt += 1
            _blur(x, tmp, zeros, offs, tw, nt)
            _blur(tmp, x, offs, zeros, tw, nt)
        if vignette[b] > 0.0:
            cy, cx = (H - 1) / 2, (W - 1) / 2
            inv_corner2 = 1.0 / max(cy * cy + cx * cx, 1e-12)
            scale = vignette[b] / (1.0 - 0.25)
            for y in range(H):
                for i in range(W):
                    rho2 = ((y - cy) ** 2 + (i - cx) ** 2) * inv_corner2
                    g = np.float32(1.0 - scale * (1.0 - 1.0 / ((1.0 + rho2) * (1.0 + rho2))))
                    for c in range(C):
                        x[c, y, i] *= g
        flat = x.reshape(n)
        if read[b] > 0.0 or shot[b] > 0.0:
            kr = _mix32(keys[b] ^ _mix32(stream_radius))
            kp = _mix32(keys[b] ^ _mix32(stream_phase))
            var0, s = read[b] * read[b], shot[b]
            for k in range(m):
                cm = _mix32(k + _COUNTER_SALT)
                u1 = max(_to_unit(_mix32(kr + cm)), 1.0 / (1 << 24))
                ph = _to_unit(_mix32(kp + cm))
                rad = math.sqrt(-2.0 * math.log(u1))
                v = flat[k]
                flat[k] = v + np.float32(math.sqrt(max(var0 + s * max(v, 0.0), 1e-20)) * rad * sin2pi(ph + 0.25))
                if k + m < n:
                    v = flat[k + m]
                    flat[k + m] = v + np.float32(math.sqrt(max(var0 + s * max(v, 0.0), 1e-20)) * rad * sin2pi(ph))
        inv_gamma = 1.0 / gamma[b]
        sat, w = saturation[b], gray[b]
        for y in range(H):
            for i in range(W):
                cr = min(max(x[0, y, i], 0.0), 1.0)
                cg = min(max(x[1, y, i], 0.0), 1.0)
                cb = min(max(x[2, y, i], 0.0), 1.0)
                if gamma[b] != 1.0:
                    cr = min(math.exp(math.log(cr) * inv_gamma), 1.0) if cr > 0 else 0.0
                    cg = min(math.exp(math.log(cg) * inv_gamma), 1.0) if cg > 0 else 0.0
                    cb = min(math.exp(math.log(cb) * inv_gamma), 1.0) if cb > 0 else 0.0
                if sat != 1.0:
                    lum = _GRAY_R * cr + _GRAY_G * cg + _GRAY_B * cb
                    cr = min(max((1 - sat) * lum + sat * cr, 0.0), 1.0)
                    cg = min(max((1 - sat) * lum + sat * cg, 0.0), 1.0)
                    cb = min(max((1 - sat) * lum + sat * cb, 0.0), 1.0)
                if w > 0.0:
                    lum = _GRAY_R * cr + _GRAY_G * cg + _GRAY_B * cb
                    cr, cg, cb = (1 - w) * cr + w * lum, (1 - w) * cg + w * lum, (1 - w) * cb + w * lum
                out[b, 0, y, i], out[b, 1, y, i], out[b, 2, y, i] = cr, cg, cb
