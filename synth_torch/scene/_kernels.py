"""Compiled (numba) forward passes of the G-buffer, used on the CPU when no gradient is needed.

Each mirrors a torch reference in :mod:`synth_torch.scene.gbuffer` / :mod:`synth_torch.scene.decals`
(tests compare them): ``surface_rows`` = interpolation of the surface attributes, normalisation and
face-forwarding of normals, and the slot of each pixel; ``decal_rows`` = the defect decals on the ground.
Work is split by image rows; every pixel is computed from its own inputs only.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from synth_torch.render.cpu import sin2pi

BLOB, CRACK, SPOT, FRAY, BREAK, UNEVEN = 0, 1, 2, 3, 4, 5  # == DEFECT_KINDS order


@numba.njit(parallel=True, cache=True)
def surface_rows(rast, tri, ntri, vattr, nattr, faces_per_image, faces_per_slot, num_slots, slot, position, local,
                 light, normal):
    """rast [B*H, W*4]; tri, ntri [T, 3]; vattr [V, C] (camera xyz, local xyz, then light xyz when C == 9);
    nattr [N, 3] camera-frame normals. Writes slot [B*H, W] (-1 empty), position, local, light, normal
    [B*H, W*3] (zeros where empty; light only when C == 9)."""
    rows, width = slot.shape
    C = vattr.shape[1]
    for row in numba.prange(rows):
        for i in range(width):
            k3 = 3 * i
            t = np.int64(rast[row, 4 * i + 3]) - 1
            if t < 0:
                slot[row, i] = -1
                for c in range(3):
                    position[row, k3 + c] = 0.0
                    local[row, k3 + c] = 0.0
                    light[row, k3 + c] = 0.0
                    normal[row, k3 + c] = 0.0
                continue
            u = np.float64(rast[row, 4 * i])
            v = np.float64(rast[row, 4 * i + 1])
            w = (1.0 - u) - v
            a0, a1, a2 = tri[t, 0], tri[t, 1], tri[t, 2]
            px = u * vattr[a0, 0] + v * vattr[a1, 0] + w * vattr[a2, 0]
            py = u * vattr[a0, 1] + v * vattr[a1, 1] + w * vattr[a2, 1]
            pz = u * vattr[a0, 2] + v * vattr[a1, 2] + w * vattr[a2, 2]
            position[row, k3], position[row, k3 + 1], position[row, k3 + 2] = px, py, pz
            for c in range(3):
                local[row, k3 + c] = u * vattr[a0, 3 + c] + v * vattr[a1, 3 + c] + w * vattr[a2, 3 + c]
            if C == 9:
                for c in range(3):
                    light[row, k3 + c] = u * vattr[a0, 6 + c] + v * vattr[a1, 6 + c] + w * vattr[a2, 6 + c]
            else:
                for c in range(3):
                    light[row, k3 + c] = 0.0
            n0, n1, n2 = ntri[t, 0], ntri[t, 1], ntri[t, 2]
            nx = u * nattr[n0, 0] + v * nattr[n1, 0] + w * nattr[n2, 0]
            ny = u * nattr[n0, 1] + v * nattr[n1, 1] + w * nattr[n2, 1]
            nz = u * nattr[n0, 2] + v * nattr[n1, 2] + w * nattr[n2, 2]
            inv = 1.0 / max(math.sqrt(nx * nx + ny * ny + nz * nz), 1e-8)
            nx, ny, nz = nx * inv, ny * inv, nz * inv
            if nx * px + ny * py + nz * pz > 0.0:  # facing away from the eye (to_eye = -p)
                nx, ny, nz = -nx, -ny, -nz
            normal[row, k3], normal[row, k3 + 1], normal[row, k3 + 2] = nx, ny, nz
            slot[row, i] = min((t % faces_per_image) // max(faces_per_slot, 1), num_slots)


@numba.njit(inline="always")
def _clamp01(x):
    return min(max(x, 0.0), 1.0)


@numba.njit(cache=True)
def defect_field(kind, a, p, s, sd, mw):
    """(inside, darkness) of a defect of ``kind`` and size ``s`` at defect-frame point (a, p) (metres);
    ``sd`` in [0, 1) varies its shape; ``mw`` is the pixel footprint (thin defects are never thinner)."""
    if a * a + p * p > (0.75 * s + 3.0 * mw) ** 2:
        return False, 0.0
    if kind == BLOB or kind == SPOT or kind == UNEVEN:
        r = math.sqrt((a / (0.5 * s)) ** 2 + (p / (0.4 * s)) ** 2)
        if kind == UNEVEN:
            return r < 1.0, 0.6 * _clamp01(1.0 - r)
        return r < 1.0, _clamp01(1.6 * (1.0 - r))
    if kind == CRACK:
        off = 0.06 * s * sin2pi(3.0 * a / s + sd) + 0.03 * s * sin2pi(7.0 * a / s + 2.0 * sd)
        width = max(0.012 * s, 0.6 * mw)
        dn = abs(p - off)
        along = abs(a) < 0.5 * s
        return (dn < width) and along, _clamp01(1.5 * (1.0 - dn / width)) * _clamp01((0.5 * s - abs(a)) / (0.05 * s))
    if kind == FRAY:
        spacing = max(0.15 * s, 2.5 * mw)
        x = p / spacing + sd
        q = abs((x - math.floor(x)) - 0.5)
        inside = abs(a) < 0.5 * s and abs(p) < 0.35 * s
        if not inside:
            return False, 0.0
        return q < 0.2, 0.8 * _clamp01((0.2 - q) / 0.1)
    theta = math.atan2(p, a)  # BREAK: an irregular chipped region
    radius = 0.5 * s * (1.0 + 0.3 * sin2pi(3.0 * theta / (2.0 * math.pi) + sd)
                        + 0.15 * sin2pi(7.0 * theta / (2.0 * math.pi)))
    dist = math.sqrt(a * a + p * p)
    return dist < radius, _clamp01((radius - dist) / (0.15 * radius))


@numba.njit(parallel=True, cache=True)
def decal_rows(slot, local, position, height, num_slots, fx, dtype, dkind, center, size, cos_a, sin_a, contrast, seed,
               defect, decal):
    """Defect decals on ground pixels: ``defect`` [B*H, W] (0 none, d + 1 for the last slot d whose mask holds)
    and ``decal`` [B*H, W] = 1 - prod_d (1 - contrast_d * darkness_d). Per-image tables are [B] / [B, D]
    (``cos_a``, ``sin_a``: of each defect's angle)."""
    rows, width = slot.shape
    D = dtype.shape[1]
    for row in numba.prange(rows):
        b = row // height
        for i in range(width):
            defect[row, i] = 0
            decal[row, i] = 0.0
            if slot[row, i] != num_slots:
                continue
            x, y = np.float64(local[row, 3 * i]), np.float64(local[row, 3 * i + 1])
            mw = np.float64(position[row, 3 * i + 2]) / fx[b]
            factor = 1.0
            for d in range(D):
                if dtype[b, d] < 0:
                    continue
                rx, ry = x - center[b, d, 0], y - center[b, d, 1]
                c, s = cos_a[b, d], sin_a[b, d]
                inside, dark = defect_field(dkind[b, d], c * rx + s * ry, -s * rx + c * ry, np.float64(size[b, d]),
                                            np.float64(seed[b, d]), mw)
                factor *= 1.0 - contrast[b, d] * dark
                if inside:
                    defect[row, i] = d + 1
            decal[row, i] = 1.0 - factor
