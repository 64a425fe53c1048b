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

BLOB, CRACK, SPOT, FRAY, BREAK, UNEVEN, STAIN, DUST, SCRATCH = range(9)  # == DEFECT_KINDS order


@numba.njit(parallel=True, cache=True)
def surface_rows(rast, tri, ntri, vattr, nattr, face_slot, slot, position, local, light, normal):
    """rast [B*H, W*4]; tri, ntri [T, 3]; vattr [V, C] (camera xyz, local xyz, then light xyz when C == 9);
    nattr [N, 3] camera-frame normals; face_slot [T]. Writes slot [B*H, W] (-1 empty), position, local, light,
    normal [B*H, W*3] (zeros where empty; light only when C == 9). Indices are unsigned so that numba emits no
    negative-index checks."""
    rows, width = slot.shape
    with_light = vattr.shape[1] == 9
    for row in numba.prange(rows):
        r, sl, po, lo, li, no = rast[row], slot[row], position[row], local[row], light[row], normal[row]
        for i in range(width):
            k3 = 3 * i
            t = np.int64(r[4 * i + 3]) - 1
            if t < 0:
                sl[i] = -1
                for c in range(3):
                    po[k3 + c], lo[k3 + c], li[k3 + c], no[k3 + c] = 0.0, 0.0, 0.0, 0.0
                continue
            tu = np.uint64(t)
            u, v = np.float64(r[4 * i]), np.float64(r[4 * i + 1])
            w = (1.0 - u) - v
            a0, a1, a2 = vattr[np.uint64(tri[tu, 0])], vattr[np.uint64(tri[tu, 1])], vattr[np.uint64(tri[tu, 2])]
            px = u * a0[0] + v * a1[0] + w * a2[0]
            py = u * a0[1] + v * a1[1] + w * a2[1]
            pz = u * a0[2] + v * a1[2] + w * a2[2]
            po[k3], po[k3 + 1], po[k3 + 2] = px, py, pz
            for c in range(3):
                lo[k3 + c] = u * a0[3 + c] + v * a1[3 + c] + w * a2[3 + c]
                li[k3 + c] = u * a0[6 + c] + v * a1[6 + c] + w * a2[6 + c] if with_light else 0.0
            b0, b1, b2 = nattr[np.uint64(ntri[tu, 0])], nattr[np.uint64(ntri[tu, 1])], nattr[np.uint64(ntri[tu, 2])]
            nx = u * b0[0] + v * b1[0] + w * b2[0]
            ny = u * b0[1] + v * b1[1] + w * b2[1]
            nz = u * b0[2] + v * b1[2] + w * b2[2]
            inv = 1.0 / max(math.sqrt(nx * nx + ny * ny + nz * nz), 1e-8)
            if nx * px + ny * py + nz * pz > 0.0:  # facing away from the eye (to_eye = -p)
                inv = -inv
            no[k3], no[k3 + 1], no[k3 + 2] = nx * inv, ny * inv, nz * inv
            sl[i] = face_slot[tu]


@numba.njit(inline="always")
def _clamp01(x):
    return min(max(x, 0.0), 1.0)


@numba.njit(inline="always")
def _ellipse(a, p, s, ra, rp):
    return math.sqrt(max((a / (ra * s)) ** 2 + (p / (rp * s)) ** 2, 1e-24))


@numba.njit(inline="always")
def _line(a, dn, s, mw, core):
    w = max(core * s, 0.5 * mw)
    return (dn < w) and abs(a) < 0.5 * s, _clamp01((w + mw - dn) / mw) * _clamp01((0.5 * s - abs(a)) / (0.05 * s))


@numba.njit(cache=True)
def defect_field(kind, a, p, s, sd, mw, extent):
    """(inside, darkness) of a defect of ``kind`` and size ``s`` at defect-frame point (a, p) (metres);
    ``sd`` in [0, 1) varies its shape; ``mw`` is the pixel footprint; ``extent`` = ``decals.EXTENT``."""
    if a * a + p * p > (extent[kind] * s + 3.0 * mw) ** 2:
        return False, 0.0
    if kind == BLOB:
        r = _ellipse(a, p, s, 0.5, 0.35)
        return r < 1.0, _clamp01(2.0 * (1.0 - r))
    if kind == SPOT:
        r = _ellipse(a, p, s, 0.5, 0.4)
        return r < 1.0, _clamp01(1.6 * (1.0 - r))
    if kind == CRACK:
        off = 0.025 * s * sin2pi(2.0 * a / s + sd) + 0.01 * s * sin2pi(5.0 * a / s + 2.0 * sd)
        return _line(a, abs(p - off), s, mw, 0.004)
    if kind == FRAY:
        r = _ellipse(a, p, s, 0.5, 0.2)
        edge = 1.0 + 0.25 * sin2pi(5.0 * a / s + sd) + 0.15 * sin2pi(13.0 * a / s + 2.0 * sd)
        return r < edge, 0.7 * _clamp01((edge - r) / 0.2) * (0.7 + 0.3 * sin2pi(17.0 * p / s + sd))
    if kind == BREAK:
        theta = math.atan2(p, a)
        radius = 0.5 * s * (1.0 + 0.3 * math.sin(3.0 * theta + 2.0 * math.pi * sd) + 0.15 * math.sin(7.0 * theta))
        dist = math.sqrt(max(a * a + p * p, 1e-24))
        return dist < radius, _clamp01((radius - dist) / (0.15 * radius))
    if kind == UNEVEN:
        r = _ellipse(a, p, s, 1.5, 0.5)
        edge = 1.0 + 0.1 * sin2pi(2.0 * a / s + sd)
        return r < edge, 0.6 * _clamp01((edge - r) / 0.3)
    if kind == STAIN:
        r = _ellipse(a, p, s, 0.5, 0.45) * (1.0 + 0.15 * sin2pi(2.0 * p / s + sd))
        return r < 1.0, 0.5 * _clamp01(1.0 - r) ** 2
    if kind == DUST:
        rad = max(0.1 * s, 0.7 * mw)
        r = math.sqrt(max((a * a + p * p) / (rad * rad), 1e-24))
        return r < 1.0, _clamp01(1.5 * (1.0 - r))
    inside, dark = _line(a, abs(p), s, mw, 0.002)  # SCRATCH
    return inside, 0.8 * dark


@numba.njit(parallel=True, cache=True)
def decal_rows(slot, local, position, height, num_slots, fx, dtype, dlabel, dkind, center, size, cos_a, sin_a,
               contrast, seed, extent, sign, defect, decal):
    """Defect decals on ground pixels: ``defect`` [B*H, W] (0 none, d + 1 for the last labeled slot d whose
    mask holds) and ``decal`` [B*H, W] = 1 - prod_d (1 - sign_d * contrast_d * darkness_d). Per-image tables
    are [B] / [B, D] (``cos_a``, ``sin_a``: of each defect's angle); ``extent``, ``sign``: per kind."""
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
                k = dkind[b, d]
                inside, dark = defect_field(k, c * rx + s * ry, -s * rx + c * ry, np.float64(size[b, d]),
                                            np.float64(seed[b, d]), mw, extent)
                factor *= 1.0 - sign[k] * contrast[b, d] * dark
                if inside and dlabel[b, d] > 0:
                    defect[row, i] = d + 1
            decal[row, i] = 1.0 - factor


@numba.njit(parallel=True, cache=True)
def instance_vertices(bank_vertices, bank_normals, shape, valid, scale, rotation, translation, ground_half, world,
                      local, normals):
    """The vertex stage of :func:`synth_torch.scene.geometry.assemble`: every slot's template vertices scaled,
    rotated and placed ([B, S*Vs + 4, 3] world and local, the ground quad last) and its normals rotated
    ([B, S*Ns + 1, 3], unit, the ground's +z last). Invalid slots get zero scale."""
    B, S = shape.shape
    Vs, Ns = bank_vertices.shape[1], bank_normals.shape[1]
    for b in numba.prange(B):
        for s in range(S):
            k = max(shape[b, s], 0)
            on = valid[b, s]
            sx, sy, sz = scale[b, s, 0], scale[b, s, 1], scale[b, s, 2]
            for v in range(Vs):
                lx = bank_vertices[k, v, 0] * sx * on
                ly = bank_vertices[k, v, 1] * sy * on
                lz = bank_vertices[k, v, 2] * sz * on
                o = s * Vs + v
                local[b, o, 0], local[b, o, 1], local[b, o, 2] = lx, ly, lz
                for c in range(3):
                    world[b, o, c] = (rotation[b, s, c, 0] * lx + rotation[b, s, c, 1] * ly
                                      + rotation[b, s, c, 2] * lz) + translation[b, s, c]
            ix, iy, iz = 1.0 / max(sx, 1e-12), 1.0 / max(sy, 1e-12), 1.0 / max(sz, 1e-12)
            for v in range(Ns):
                nx, ny, nz = bank_normals[k, v, 0] * ix, bank_normals[k, v, 1] * iy, bank_normals[k, v, 2] * iz
                rx = rotation[b, s, 0, 0] * nx + rotation[b, s, 0, 1] * ny + rotation[b, s, 0, 2] * nz
                ry = rotation[b, s, 1, 0] * nx + rotation[b, s, 1, 1] * ny + rotation[b, s, 1, 2] * nz
                rz = rotation[b, s, 2, 0] * nx + rotation[b, s, 2, 1] * ny + rotation[b, s, 2, 2] * nz
                inv = 1.0 / max(math.sqrt(rx * rx + ry * ry + rz * rz), 1e-12)
                o = s * Ns + v
                normals[b, o, 0], normals[b, o, 1], normals[b, o, 2] = rx * inv, ry * inv, rz * inv
        g = ground_half
        o = S * Vs
        for v, (x, y) in enumerate(((-g, -g), (g, -g), (g, g), (-g, g))):
            world[b, o + v, 0], world[b, o + v, 1], world[b, o + v, 2] = x, y, 0.0
            local[b, o + v, 0], local[b, o + v, 1], local[b, o + v, 2] = x, y, 0.0
        normals[b, S * Ns, 0], normals[b, S * Ns, 1], normals[b, S * Ns, 2] = 0.0, 0.0, 1.0


@numba.njit(cache=True)
def compact_faces(bank_faces, bank_normal_faces, bank_uv_faces, bank_opposite, num_faces, Vs, Ns, U, quad,
                  quad_opposite, shape, valid, tri, normal_tri, uv_tri, opposite, face_slot, per_slot):
    """The face stage of :func:`~synth_torch.scene.geometry.assemble` with ``compact=True``: the real faces of the
    valid slots, then each image's ground quad, in order, with vertex, normal and uv indices offset into the batch
    buffers (``Vs``, ``Ns`` vertices and normals per slot, ``U`` uvs per template); ``per_slot`` [B, S] receives
    each slot's face count. The outputs are sized by the caller; returns the number of faces written."""
    B, S = shape.shape
    NS = num_faces.shape[0]
    V_img, N_img = S * Vs + 4, S * Ns + 1
    n = 0
    for b in range(B):
        for s in range(S):
            count = 0
            if valid[b, s]:
                k = max(shape[b, s], 0)
                vbase, nbase, ubase = b * V_img + s * Vs, b * N_img + s * Ns, k * U
                count = num_faces[k]
                for f in range(count):
                    for c in range(3):
                        tri[n, c] = bank_faces[k, f, c] + vbase
                        normal_tri[n, c] = bank_normal_faces[k, f, c] + nbase
                        uv_tri[n, c] = bank_uv_faces[k, f, c] + ubase
                        o = bank_opposite[k, f, c]
                        opposite[n, c] = o + vbase if o >= 0 else -1
                    face_slot[n] = s
                    n += 1
            per_slot[b, s] = count
        gv, gn = b * V_img + S * Vs, b * N_img + S * Ns
        for f in range(2):
            for c in range(3):
                tri[n, c] = quad[f, c] + gv
                normal_tri[n, c] = gn
                uv_tri[n, c] = quad[f, c] + NS * U
                o = quad_opposite[f, c]
                opposite[n, c] = o + gv if o >= 0 else -1
            face_slot[n] = S
            n += 1
    return n


@numba.njit(parallel=True, cache=True)
def vertex_attributes(world, local, normals, world_to_cam, projection, light_frame, light_scale, vattr, clip,
                      light_clip, nattr):
    """Per image b: camera-frame positions, local positions and (when ``vattr`` has 9 columns) light-space
    positions of every vertex into ``vattr`` [B, V, 6|9]; clip-space positions [B, V, 4] for the camera and, with
    light, for the shadow map (``light_clip``, w = 1); camera-frame normals ``nattr`` [B, N, 3]."""
    B, V = world.shape[0], world.shape[1]
    N = normals.shape[1]
    with_light = vattr.shape[2] == 9
    for b in numba.prange(B):
        for v in range(V):
            x, y, z = world[b, v, 0], world[b, v, 1], world[b, v, 2]
            T = world_to_cam
            cx = (T[b, 0, 0] * x + T[b, 0, 1] * y + T[b, 0, 2] * z) + T[b, 0, 3]
            cy = (T[b, 1, 0] * x + T[b, 1, 1] * y + T[b, 1, 2] * z) + T[b, 1, 3]
            cz = (T[b, 2, 0] * x + T[b, 2, 1] * y + T[b, 2, 2] * z) + T[b, 2, 3]
            vattr[b, v, 0], vattr[b, v, 1], vattr[b, v, 2] = cx, cy, cz
            for c in range(3):
                vattr[b, v, 3 + c] = local[b, v, c]
            for c in range(4):
                clip[b, v, c] = (projection[b, c, 0] * cx + projection[b, c, 1] * cy + projection[b, c, 2] * cz) \
                    + projection[b, c, 3]
            if with_light:
                for c in range(3):
                    q = (light_frame[b, c, 0] * x + light_frame[b, c, 1] * y + light_frame[b, c, 2] * z) / light_scale[b, c]
                    vattr[b, v, 6 + c] = q
                    light_clip[b, v, c] = q
                light_clip[b, v, 3] = 1.0
        for v in range(N):
            x, y, z = normals[b, v, 0], normals[b, v, 1], normals[b, v, 2]
            for c in range(3):
                nattr[b, v, c] = world_to_cam[b, c, 0] * x + world_to_cam[b, c, 1] * y + world_to_cam[b, c, 2] * z
