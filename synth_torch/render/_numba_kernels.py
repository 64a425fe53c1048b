"""Compiled kernels of the ``cpu`` backend (numba).

``setup_triangles``
    Triangle setup, parallel over (image, triangle) pairs. One slot per pair, culled pairs get an
    empty box, so each image's triangles stay one contiguous, id-ordered range.
``rasterize_bands``
    Visibility and fill, parallel over (image, row band) work items. Every pixel belongs to exactly
    one work item and triangles are visited in ascending id order inside it, so the result never
    depends on thread count or timing.
``interpolate_rows``
    Forward of :func:`synth_torch.render.interpolate` when no gradient is needed, parallel over rows.

Every float64 expression mirrors :mod:`synth_torch.render._raster` operand by operand (see the
"arithmetic contract" there), so ids are identical to the ``torch`` reference and the backend
agreement tests can ask for bitwise-equal setups. numba does not contract ``a * b + c`` into FMAs
without ``fastmath``, which must stay off here.
"""

from __future__ import annotations

import math

import numba
import numpy as np

BOUND_SLACK = 1e-6  # == _raster.BOUND_SLACK (checked by the tests)


@numba.njit(inline="always")
def _covered(e, a, b):
    return e > 0.0 or (e == 0.0 and (a > 0.0 or (a == 0.0 and b > 0.0)))


@numba.njit(inline="always")
def _screen(v, w, half_size, big):
    return min(max((v / w + 1.0) * half_size, -big), big)


@numba.njit(parallel=True, cache=True)
def setup_triangles(pos, tri, image_offsets, tri_start, vert_offset, height, width, edges, zrow, bbox):
    """Fill ``edges`` [M, 3, 3], ``zrow`` [M, 3] (float64) and ``bbox`` [M, 4] (int32) in place.

    pos [N, 4] flat clip-space positions (float32 or float64); tri [T, 3] int32. Slot ``m`` of image
    ``b`` (``image_offsets[b] <= m < image_offsets[b + 1]``) is triangle ``tri_start[b] + m -
    image_offsets[b]`` with vertex rows offset by ``vert_offset[b]``.
    """
    num_items = edges.shape[0]
    last_image = image_offsets.shape[0] - 2
    big = 4.0 * max(width, height)
    half_w, half_h = 0.5 * width, 0.5 * height
    for m in numba.prange(num_items):
        lo, hi = 0, last_image  # image b: the last one with image_offsets[b] <= m
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if image_offsets[mid] <= m:
                lo = mid
            else:
                hi = mid - 1
        t = tri_start[lo] + (m - image_offsets[lo])
        base = vert_offset[lo]
        i0, i1, i2 = base + tri[t, 0], base + tri[t, 1], base + tri[t, 2]
        x0, y0, z0, w0 = np.float64(pos[i0, 0]), np.float64(pos[i0, 1]), np.float64(pos[i0, 2]), np.float64(pos[i0, 3])
        x1, y1, z1, w1 = np.float64(pos[i1, 0]), np.float64(pos[i1, 1]), np.float64(pos[i1, 2]), np.float64(pos[i1, 3])
        x2, y2, z2, w2 = np.float64(pos[i2, 0]), np.float64(pos[i2, 1]), np.float64(pos[i2, 2]), np.float64(pos[i2, 3])
        a0, b0, c0 = y1 * w2 - w1 * y2, w1 * x2 - x1 * w2, x1 * y2 - y1 * x2
        a1, b1, c1 = y2 * w0 - w2 * y0, w2 * x0 - x2 * w0, x2 * y0 - y2 * x0
        a2, b2, c2 = y0 * w1 - w0 * y1, w0 * x1 - x0 * w1, x0 * y1 - y0 * x1
        det = (x0 * a0 + y0 * b0) + w0 * c0
        za = ((z0 * a0 + z1 * a1) + z2 * a2) / det
        zb = ((z0 * b0 + z1 * b1) + z2 * b2) / det
        zc = ((z0 * c0 + z1 * c1) + z2 * c2) / det
        zrow[m, 0], zrow[m, 1], zrow[m, 2] = za, zb, zc
        if det < 0.0:
            a0, b0, c0, a1, b1, c1, a2, b2, c2 = -a0, -b0, -c0, -a1, -b1, -c1, -a2, -b2, -c2
        edges[m, 0, 0], edges[m, 0, 1], edges[m, 0, 2] = a0, b0, c0
        edges[m, 1, 0], edges[m, 1, 1], edges[m, 1, 2] = a1, b1, c1
        edges[m, 2, 0], edges[m, 2, 1], edges[m, 2, 2] = a2, b2, c2

        keep = (det != 0.0 and math.isfinite(det) and math.isfinite(za) and math.isfinite(zb)
                and math.isfinite(zc))
        outside = ((x0 > w0 and x1 > w1 and x2 > w2) or (x0 < -w0 and x1 < -w1 and x2 < -w2)
                   or (y0 > w0 and y1 > w1 and y2 > w2) or (y0 < -w0 and y1 < -w1 and y2 < -w2)
                   or (z0 > w0 and z1 > w1 and z2 > w2) or (z0 < -w0 and z1 < -w1 and z2 < -w2)
                   or (w0 <= 0.0 and w1 <= 0.0 and w2 <= 0.0))
        bx0, by0, bx1, by1 = 0, 0, width - 1, height - 1
        if w0 > 0.0 and w1 > 0.0 and w2 > 0.0:
            s0, s1, s2 = _screen(x0, w0, half_w, big), _screen(x1, w1, half_w, big), _screen(x2, w2, half_w, big)
            bx0 = max(math.ceil((min(min(s0, s1), s2) - 0.5) - BOUND_SLACK), 0)
            bx1 = min(math.floor((max(max(s0, s1), s2) - 0.5) + BOUND_SLACK), width - 1)
            s0, s1, s2 = _screen(y0, w0, half_h, big), _screen(y1, w1, half_h, big), _screen(y2, w2, half_h, big)
            by0 = max(math.ceil((min(min(s0, s1), s2) - 0.5) - BOUND_SLACK), 0)
            by1 = min(math.floor((max(max(s0, s1), s2) - 0.5) + BOUND_SLACK), height - 1)
        if keep and not outside and bx0 <= bx1 and by0 <= by1:
            bbox[m, 0], bbox[m, 1], bbox[m, 2], bbox[m, 3] = bx0, by0, bx1, by1
        else:
            bbox[m, 0], bbox[m, 1], bbox[m, 2], bbox[m, 3] = 0, 0, -1, -1


@numba.njit(parallel=True, cache=True)
def rasterize_bands(edges, zrow, bbox, image_offsets, tri_start, height, width, band_rows, rast, rast_db):
    """Write ``rast`` and ``rast_db`` [B, H, W, 4] (every pixel, zeros where empty) from a setup."""
    num_images = rast.shape[0]
    bands = (height + band_rows - 1) // band_rows
    xn_of = np.empty(width, dtype=np.float64)
    for i in range(width):
        xn_of[i] = (2.0 * i + 1.0) / width - 1.0
    yn_of = np.empty(height, dtype=np.float64)
    for j in range(height):
        yn_of[j] = (2.0 * j + 1.0) / height - 1.0
    dx_scale, dy_scale = 2.0 / width, 2.0 / height
    for item in numba.prange(num_images * bands):
        b = item // bands
        r0 = (item % bands) * band_rows
        r1 = min(r0 + band_rows, height) - 1
        zbuf = np.full((r1 - r0 + 1, width), np.inf, dtype=np.float32)
        index = np.full((r1 - r0 + 1, width), -1, dtype=np.int32)  # setup slot minus the image's first
        first = image_offsets[b]
        for m in range(first, image_offsets[b + 1]):
            y0 = max(bbox[m, 1], r0)
            y1 = min(bbox[m, 3], r1)
            if y0 > y1:
                continue
            x0, x1 = bbox[m, 0], bbox[m, 2]
            a0, b0, c0 = edges[m, 0, 0], edges[m, 0, 1], edges[m, 0, 2]
            a1, b1, c1 = edges[m, 1, 0], edges[m, 1, 1], edges[m, 1, 2]
            a2, b2, c2 = edges[m, 2, 0], edges[m, 2, 1], edges[m, 2, 2]
            tl0 = a0 > 0.0 or (a0 == 0.0 and b0 > 0.0)  # fill rule: pixels on this edge are ours
            tl1 = a1 > 0.0 or (a1 == 0.0 and b1 > 0.0)
            tl2 = a2 > 0.0 or (a2 == 0.0 and b2 > 0.0)
            za, zb, zc = zrow[m, 0], zrow[m, 1], zrow[m, 2]
            slot = np.int32(m - first)
            for j in range(y0, y1 + 1):
                yn = yn_of[j]
                t0, t1, t2, tz = b0 * yn + c0, b1 * yn + c1, b2 * yn + c2, zb * yn + zc
                zrow_buf = zbuf[j - r0]
                index_row = index[j - r0]
                for i in range(x0, x1 + 1):
                    xn = xn_of[i]
                    e0 = a0 * xn + t0
                    e1 = a1 * xn + t1
                    e2 = a2 * xn + t2
                    depth = za * xn + tz
                    inside = ((e0 > 0.0) | ((e0 == 0.0) & tl0)) & ((e1 > 0.0) | ((e1 == 0.0) & tl1)) \
                        & ((e2 > 0.0) | ((e2 == 0.0) & tl2)) & (depth >= -1.0) & (depth <= 1.0)
                    if inside:
                        d32 = np.float32(depth)
                        if d32 < zrow_buf[i]:
                            zrow_buf[i] = d32
                            index_row[i] = slot
        for j in range(r0, r1 + 1):
            yn = yn_of[j]
            out = rast[b, j]
            out_db = rast_db[b, j]
            index_row = index[j - r0]
            for i in range(width):
                slot = index_row[i]
                if slot < 0:
                    for c in range(4):
                        out[i, c] = 0.0
                        out_db[i, c] = 0.0
                    continue
                m = first + slot
                xn = xn_of[i]
                a0, b0, a1, b1, a2, b2 = edges[m, 0, 0], edges[m, 0, 1], edges[m, 1, 0], edges[m, 1, 1], \
                    edges[m, 2, 0], edges[m, 2, 1]
                e0 = a0 * xn + (b0 * yn + edges[m, 0, 2])
                e1 = a1 * xn + (b1 * yn + edges[m, 1, 2])
                e2 = a2 * xn + (b2 * yn + edges[m, 2, 2])
                s = (e0 + e1) + e2
                out[i, 0] = e0 / s
                out[i, 1] = e1 / s
                out[i, 2] = zrow[m, 0] * xn + (zrow[m, 1] * yn + zrow[m, 2])
                out[i, 3] = np.float64(tri_start[b] + slot + 1)
                sa = (a0 + a1) + a2
                sb = (b0 + b1) + b2
                ss = s * s
                out_db[i, 0] = (a0 * s - e0 * sa) / ss * dx_scale
                out_db[i, 1] = (b0 * s - e0 * sb) / ss * dy_scale
                out_db[i, 2] = (a1 * s - e1 * sa) / ss * dx_scale
                out_db[i, 3] = (b1 * s - e1 * sb) / ss * dy_scale


@numba.njit(parallel=True, cache=True)
def interpolate_rows(attr, rast, tri, rast_db, diff_idx, one, out, out_da, bad_id):
    """``out = u a_0 + v a_1 + (1 - u - v) a_2`` per pixel, and interleaved (dA/dX, dA/dY) for ``diff_idx``.

    attr [Ba, V, C] (Ba == 1: shared by all images); rast, rast_db [B, H, W, 4]; tri [T, 3] int32;
    ``one`` is 1 in the dtype of ``rast`` (the arithmetic stays in that dtype, as in the torch path).
    Writes every pixel of ``out`` [B, H, W, C] and ``out_da`` [B, H, W, 2 len(diff_idx)]; sets
    ``bad_id[row]`` when a pixel holds a triangle id outside ``tri``.
    """
    num_images, height, width = rast.shape[0], rast.shape[1], rast.shape[2]
    shared = attr.shape[0] == 1
    channels = attr.shape[2]
    num_tri = tri.shape[0]
    for row in numba.prange(num_images * height):
        b = row // height
        j = row - b * height
        ab = 0 if shared else b
        for i in range(width):
            t = np.int64(rast[b, j, i, 3]) - 1
            if t < 0 or t >= num_tri:
                if t >= num_tri:
                    bad_id[row] = 1
                for c in range(channels):
                    out[b, j, i, c] = 0.0
                for c in range(out_da.shape[3]):
                    out_da[b, j, i, c] = 0.0
                continue
            k0, k1, k2 = tri[t, 0], tri[t, 1], tri[t, 2]
            u, v = rast[b, j, i, 0], rast[b, j, i, 1]
            w = (one - u) - v
            for c in range(channels):
                out[b, j, i, c] = (u * attr[ab, k0, c] + v * attr[ab, k1, c]) + w * attr[ab, k2, c]
            for d in range(diff_idx.shape[0]):
                c = diff_idx[d]
                d_u = attr[ab, k0, c] - attr[ab, k2, c]
                d_v = attr[ab, k1, c] - attr[ab, k2, c]
                out_da[b, j, i, 2 * d] = rast_db[b, j, i, 0] * d_u + rast_db[b, j, i, 2] * d_v
                out_da[b, j, i, 2 * d + 1] = rast_db[b, j, i, 1] * d_u + rast_db[b, j, i, 3] * d_v
