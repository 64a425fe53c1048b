"""Compiled kernels of the ``cpu`` backend (numba).

``setup_vertices``
    Per-vertex screen bounds and clip outcodes, parallel over vertices (always first).
``setup_triangles``
    Triangle setup, parallel over (image, triangle) slots (used when there are few images).
``rasterize_images``
    Setup, visibility and fill, one work item per image; the image's setup stays in a per-item
    scratch buffer (cache-resident) instead of a batch-wide array.
``rasterize_bands``
    Visibility and fill from a precomputed setup, one work item per (image, band of rows).
``depth_images`` / ``coverage_counts``
    Visibility only: the nearest z/w per pixel, or the number of pixel centres each range covers.
``interpolate_rows``
    Forward of :func:`synth_torch.render.interpolate` when no gradient is needed, parallel over rows.
``antialias_images``
    Forward of :func:`synth_torch.render.antialias` when no gradient is needed, one work item per image.

Every pixel belongs to exactly one work item and triangles are visited in ascending id order inside
it, so results never depend on thread count or timing. Every float64 expression mirrors
:mod:`synth_torch.render._raster` operand by operand (see its "arithmetic contract"), so setups are
bitwise equal and ids identical to the ``torch`` reference. numba does not contract ``a * b + c`` into
FMAs without ``fastmath``, which must stay off here (the exact predicates rely on it too).

Setup layout, one row per slot: ``coef`` [M, 13] float64 = (a0 b0 c0 a1 b1 c1 a2 b2 c2 | za zb zc |
bound) and ``bbox`` [M, 5] int32 = (x0 y0 x1 y1 flip), flip = 1 when the exact orientation is negative.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from synth_torch.render.cpu import use_torch_threads  # noqa: F401  (threading set-up before any kernel)

BOUND_SLACK = 1e-6  # == _raster.BOUND_SLACK
ERR = 1e-13  # == _raster.ERR
DOUBT = 2  # bbox[:, 4] bit during setup: the float orientation sign needs an exact check

# ----------------------------------------------------------------------------------------------------
# Exact sign of a 3x3 determinant (error-free transformations, Dekker / Shewchuk expansions)


@numba.njit(inline="always")
def _two_sum(a, b):
    s = a + b
    bv = s - a
    av = s - bv
    return s, (a - av) + (b - bv)


@numba.njit(inline="always")
def _split(a):
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


@numba.njit(inline="always")
def _two_product(a, b):
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, al * bl - (((p - ah * bh) - al * bh) - ah * bl)


@numba.njit(inline="always")
def _grow(expansion, length, value):
    """Add ``value`` to the nonoverlapping expansion ``expansion[:length]``; returns the new length."""
    q = value
    for k in range(length):
        q, expansion[k] = _two_sum(q, expansion[k])
    expansion[length] = q
    return length + 1


@numba.njit(inline="always")
def _add_triple(expansion, length, x, y, z):
    """Add the exact product ``x * y * z`` (four doubles) to the expansion."""
    h, l = _two_product(x, y)
    h1, l1 = _two_product(h, z)
    h2, l2 = _two_product(l, z)
    length = _grow(expansion, length, l2)
    length = _grow(expansion, length, l1)
    length = _grow(expansion, length, h2)
    return _grow(expansion, length, h1)


@numba.njit(cache=True)
def exact_det3_sign(px, py, pw, qx, qy, qw, rx, ry, rw):
    """Exact sign (-1, 0, 1) of ``r . (p x q)`` for finite doubles (no overflow or underflow)."""
    e = np.empty(24, dtype=np.float64)
    n = 0
    n = _add_triple(e, n, rx, py, qw)
    n = _add_triple(e, n, -rx, pw, qy)
    n = _add_triple(e, n, ry, pw, qx)
    n = _add_triple(e, n, -ry, px, qw)
    n = _add_triple(e, n, rw, px, qy)
    n = _add_triple(e, n, -rw, py, qx)
    for k in range(n - 1, -1, -1):
        if e[k] > 0.0:
            return 1
        if e[k] < 0.0:
            return -1
    return 0


@numba.njit(inline="always")
def _sign(value, bound, px, py, pw, qx, qy, qw, rx, ry, rw):
    """Sign of ``r . (p x q)`` given its float value and an error bound: exact only when in doubt."""
    if value > bound:
        return 1
    if value < -bound:
        return -1
    return exact_det3_sign(px, py, pw, qx, qy, qw, rx, ry, rw)


# ----------------------------------------------------------------------------------------------------
# Triangle setup


@numba.njit(inline="always")
def _screen(v, w, half_size, big):
    return min(max((v / w + 1.0) * half_size, -big), big)


@numba.njit(inline="always")
def _max_abs9(v0, v1, v2, v3, v4, v5, v6, v7, v8):
    return max(max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))),
               max(max(abs(v4), abs(v5)), max(max(abs(v6), abs(v7)), abs(v8))))


@numba.njit(inline="always")
def _image_of(image_offsets, m):
    """The image b of setup slot m: the last one with ``image_offsets[b] <= m`` (binary search)."""
    lo, hi = 0, image_offsets.shape[0] - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if image_offsets[mid] <= m:
            lo = mid
        else:
            hi = mid - 1
    return lo


@numba.njit(inline="always")
def _load(pos, row):
    return np.float64(pos[row, 0]), np.float64(pos[row, 1]), np.float64(pos[row, 2]), np.float64(pos[row, 3])


BEHIND = 64  # outcode bit: w <= 0


@numba.njit(inline="always")
def _setup_vertex(pos, n, half_w, half_h, big, vbox, vcode):
    x, y, z, w = _load(pos, n)
    vcode[n] = ((x > w) * 1 | (x < -w) * 2 | (y > w) * 4 | (y < -w) * 8 | (z > w) * 16 | (z < -w) * 32
                | (w <= 0.0) * BEHIND)
    if w > 0.0:
        s = _screen(x, w, half_w, big)
        vbox[n, 0] = math.ceil((s - 0.5) - BOUND_SLACK)
        vbox[n, 2] = math.floor((s - 0.5) + BOUND_SLACK)
        s = _screen(y, w, half_h, big)
        vbox[n, 1] = math.ceil((s - 0.5) - BOUND_SLACK)
        vbox[n, 3] = math.floor((s - 0.5) + BOUND_SLACK)


@numba.njit(parallel=True, cache=True)
def setup_vertices(pos, height, width, vbox, vcode):
    """Per vertex: candidate pixel bounds ``vbox`` [N, 4] int32 (ceil((s_x - 0.5) - slack), floor((s_x - 0.5) +
    slack), same for y; only meaningful when w > 0) and clip outcodes ``vcode`` [N] uint8 (bits: x > w,
    x < -w, y > w, y < -w, z > w, z < -w, w <= 0).

    A triangle's box is the min / max of its vertices' (ceil, floor and rounding are monotone, so this equals
    the per-triangle formula of the reference) and it lies outside one clip plane iff the AND of its
    vertices' outcodes is not zero.
    """
    big = 4.0 * max(width, height)
    for n in numba.prange(pos.shape[0]):
        _setup_vertex(pos, n, 0.5 * width, 0.5 * height, big, vbox, vcode)


@numba.njit(cache=True)
def setup_vertices_serial(pos, height, width, vbox, vcode):
    """:func:`setup_vertices` without a thread launch, for inputs too small to gain from one."""
    big = 4.0 * max(width, height)
    for n in range(pos.shape[0]):
        _setup_vertex(pos, n, 0.5 * width, 0.5 * height, big, vbox, vcode)


PARALLEL_VERTICES = 1 << 18


@numba.njit(inline="always")
def _setup_one(pos, tri, vbox, vcode, t, base, height, width, coef, bbox, slot):
    """Set up triangle ``t`` (vertex rows offset by ``base``) into ``coef[slot]`` and ``bbox[slot]``."""
    i0, i1, i2 = base + tri[t, 0], base + tri[t, 1], base + tri[t, 2]
    x0, y0, z0, w0 = _load(pos, i0)
    x1, y1, z1, w1 = _load(pos, i1)
    x2, y2, z2, w2 = _load(pos, i2)
    a0, b0, c0 = y1 * w2 - w1 * y2, w1 * x2 - x1 * w2, x1 * y2 - y1 * x2
    a1, b1, c1 = y2 * w0 - w2 * y0, w2 * x0 - x2 * w0, x2 * y0 - y2 * x0
    a2, b2, c2 = y0 * w1 - w0 * y1, w0 * x1 - x0 * w1, x0 * y1 - y0 * x1
    det = (x0 * a0 + y0 * b0) + w0 * c0
    za = ((z0 * a0 + z1 * a1) + z2 * a2) / det
    zb = ((z0 * b0 + z1 * b1) + z2 * b2) / det
    zc = ((z0 * c0 + z1 * c1) + z2 * c2) / det
    mag = _max_abs9(x0, y0, w0, x1, y1, w1, x2, y2, w2)
    finite = math.isfinite(det) and math.isfinite(za) and math.isfinite(zb) and math.isfinite(zc)
    sigma = 0  # the float sign; when in doubt, _resolve_orientation replaces it by the exact one
    doubt = False
    if finite and det != 0.0:
        sigma = 1 if det > 0.0 else -1
        doubt = abs(det) <= ERR * (mag * mag * mag)
    if sigma < 0:
        a0, b0, c0, a1, b1, c1, a2, b2, c2 = -a0, -b0, -c0, -a1, -b1, -c1, -a2, -b2, -c2
    coef[slot, 0], coef[slot, 1], coef[slot, 2] = a0, b0, c0
    coef[slot, 3], coef[slot, 4], coef[slot, 5] = a1, b1, c1
    coef[slot, 6], coef[slot, 7], coef[slot, 8] = a2, b2, c2
    coef[slot, 9], coef[slot, 10], coef[slot, 11] = za, zb, zc
    coef[slot, 12] = ERR * (mag * mag)

    c0, c1, c2 = vcode[i0], vcode[i1], vcode[i2]
    outside = (c0 & c1 & c2) != 0
    bx0, by0, bx1, by1 = 0, 0, width - 1, height - 1
    if ((c0 | c1 | c2) & BEHIND) == 0:
        bx0 = max(min(min(vbox[i0, 0], vbox[i1, 0]), vbox[i2, 0]), 0)
        by0 = max(min(min(vbox[i0, 1], vbox[i1, 1]), vbox[i2, 1]), 0)
        bx1 = min(max(max(vbox[i0, 2], vbox[i1, 2]), vbox[i2, 2]), width - 1)
        by1 = min(max(max(vbox[i0, 3], vbox[i1, 3]), vbox[i2, 3]), height - 1)
    if sigma != 0 and finite and not outside and bx0 <= bx1 and by0 <= by1:
        bbox[slot, 0], bbox[slot, 1], bbox[slot, 2], bbox[slot, 3] = bx0, by0, bx1, by1
    else:
        bbox[slot, 0], bbox[slot, 1], bbox[slot, 2], bbox[slot, 3] = 0, 0, -1, -1
        doubt = False
    bbox[slot, 4] = (1 if sigma < 0 else 0) + (DOUBT if doubt else 0)


@numba.njit(cache=True)
def _resolve_orientation(pos, tri, t, base, coef, bbox, slot):
    """Replace the float orientation of a nearly degenerate triangle by the exact one (cull it when zero)."""
    x0, y0, _, w0 = _load(pos, base + tri[t, 0])
    x1, y1, _, w1 = _load(pos, base + tri[t, 1])
    x2, y2, _, w2 = _load(pos, base + tri[t, 2])
    sigma = exact_det3_sign(x1, y1, w1, x2, y2, w2, x0, y0, w0)
    if sigma == 0:
        bbox[slot, 0], bbox[slot, 1], bbox[slot, 2], bbox[slot, 3] = 0, 0, -1, -1
    elif (sigma < 0) != (bbox[slot, 4] & 1 == 1):
        for k in range(9):
            coef[slot, k] = -coef[slot, k]
    bbox[slot, 4] = 1 if sigma < 0 else 0


@numba.njit(parallel=True, cache=True)
def setup_triangles(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, coef, bbox):
    """Set up every slot into ``coef`` [M, 13] and ``bbox`` [M, 5] (see the module docstring).

    pos [N, 4] flat clip-space positions (float32 or float64); tri [T, 3] int32; vbox, vcode from
    :func:`setup_vertices`. Slot ``m`` of image
    ``b`` (``image_offsets[b] <= m < image_offsets[b + 1]``) is triangle ``tri_start[b] + m -
    image_offsets[b]`` with vertex rows offset by ``vert_offset[b]``.
    """
    for m in numba.prange(coef.shape[0]):
        b = _image_of(image_offsets, m)
        t = tri_start[b] + (m - image_offsets[b])
        _setup_one(pos, tri, vbox, vcode, t, vert_offset[b], height, width, coef, bbox, m)
        if bbox[m, 4] & DOUBT:
            _resolve_orientation(pos, tri, t, vert_offset[b], coef, bbox, m)


# ----------------------------------------------------------------------------------------------------
# Visibility and fill


@numba.njit(inline="always")
def _edge_in(sigma, e, bound, px, py, pw, qx, qy, qw, xn, yn):
    """Fill rule on one edge with exact signs: inside, or exactly on it and the edge owns on-edge centres
    (the sample moved by an infinitesimal (+eps, +eps**2): the sign of a, else of b)."""
    s = sigma * _sign(sigma * e, bound, px, py, pw, qx, qy, qw, xn, yn, 1.0)
    if s != 0:
        return s > 0
    sa = sigma * exact_det3_sign(px, py, pw, qx, qy, qw, 1.0, 0.0, 0.0)
    if sa != 0:
        return sa > 0
    return sigma * exact_det3_sign(px, py, pw, qx, qy, qw, 0.0, 1.0, 0.0) > 0


@numba.njit(cache=True)
def _exact_covered(pos, tri, t, base, flip, xn, yn, e0, e1, e2, bound):
    """Coverage of a pixel centre within rounding distance of an edge of triangle ``t``."""
    x0, y0, _, w0 = _load(pos, base + tri[t, 0])
    x1, y1, _, w1 = _load(pos, base + tri[t, 1])
    x2, y2, _, w2 = _load(pos, base + tri[t, 2])
    sigma = -1 if flip else 1
    return (_edge_in(sigma, e0, bound, x1, y1, w1, x2, y2, w2, xn, yn)
            and _edge_in(sigma, e1, bound, x2, y2, w2, x0, y0, w0, xn, yn)
            and _edge_in(sigma, e2, bound, x0, y0, w0, x1, y1, w1, xn, yn))


@numba.njit(inline="always")
def _visibility(pos, tri, base, coef, bbox, lo, hi, r0, r1, xn_of, yn_of, id_base, zbuf, index):
    """Nearest setup slot (``index``, slot - lo; -1 for none) and its float32 z/w (``zbuf``) for rows r0..r1."""
    for m in range(lo, hi):
        y0 = max(bbox[m, 1], r0)
        y1 = min(bbox[m, 3], r1)
        if y0 > y1:
            continue
        x0, x1 = bbox[m, 0], bbox[m, 2]
        a0, b0, c0 = coef[m, 0], coef[m, 1], coef[m, 2]
        a1, b1, c1 = coef[m, 3], coef[m, 4], coef[m, 5]
        a2, b2, c2 = coef[m, 6], coef[m, 7], coef[m, 8]
        za, zb, zc = coef[m, 9], coef[m, 10], coef[m, 11]
        bound = coef[m, 12]
        nbound = -bound
        slot = np.int32(m - lo)
        for j in range(y0, y1 + 1):
            yn = yn_of[j]
            t0, t1, t2, tz = b0 * yn + c0, b1 * yn + c1, b2 * yn + c2, zb * yn + zc
            jj = j - r0
            for i in range(x0, x1 + 1):
                xn = xn_of[i]
                e0 = a0 * xn + t0
                e1 = a1 * xn + t1
                e2 = a2 * xn + t2
                if (e0 >= nbound) & (e1 >= nbound) & (e2 >= nbound):
                    if (e0 <= bound) | (e1 <= bound) | (e2 <= bound):  # rare: within rounding distance of an edge
                        if not _exact_covered(pos, tri, id_base + slot, base, bbox[m, 4], xn, yn, e0, e1, e2, bound):
                            continue
                    depth = za * xn + tz
                    if not (depth >= -1.0 and depth <= 1.0):
                        continue
                    d32 = np.float32(depth)
                    if d32 < zbuf[jj, i]:
                        zbuf[jj, i] = d32
                        index[jj, i] = slot


@numba.njit(inline="always")
def _raster_rows(pos, tri, base, coef, bbox, lo, hi, r0, r1, xn_of, yn_of, id_base, rast, rast_db, row_base):
    """Visibility then fill of rows ``r0..r1`` of one image from setup slots ``lo..hi-1``.

    Slot ``lo + k`` is triangle ``id_base + k`` with vertex rows offset by ``base``. ``rast``/``rast_db``
    are [B*H, W*4] views; image row ``j`` is view row ``row_base + j``. Every value of those rows is
    written (zeros where no triangle covers the pixel centre). A ``rast_db`` with no columns is not written.
    """
    width = xn_of.shape[0]
    zbuf = np.full((r1 - r0 + 1, width), np.inf, dtype=np.float32)
    index = np.full((r1 - r0 + 1, width), -1, dtype=np.int32)  # slot - lo of the nearest triangle
    _visibility(pos, tri, base, coef, bbox, lo, hi, r0, r1, xn_of, yn_of, id_base, zbuf, index)
    with_db = rast_db.shape[1] > 0
    dx_scale, dy_scale = 2.0 / width, 2.0 / yn_of.shape[0]
    for j in range(r0, r1 + 1):
        o = row_base + j
        for k in range(4 * width):
            rast[o, k] = 0.0
        if with_db:
            for k in range(4 * width):
                rast_db[o, k] = 0.0
        yn = yn_of[j]
        for i in range(width):
            slot = index[j - r0, i]
            if slot < 0:
                continue
            m = lo + slot
            a0, b0, a1, b1, a2, b2 = coef[m, 0], coef[m, 1], coef[m, 3], coef[m, 4], coef[m, 6], coef[m, 7]
            xn = xn_of[i]
            e0 = a0 * xn + (b0 * yn + coef[m, 2])
            e1 = a1 * xn + (b1 * yn + coef[m, 5])
            e2 = a2 * xn + (b2 * yn + coef[m, 8])
            s = (e0 + e1) + e2
            inv_s = 1.0 / s
            k = 4 * i
            rast[o, k] = e0 * inv_s
            rast[o, k + 1] = e1 * inv_s
            rast[o, k + 2] = coef[m, 9] * xn + (coef[m, 10] * yn + coef[m, 11])
            rast[o, k + 3] = np.float64(id_base + slot + 1)
            if with_db:
                inv_ss = inv_s * inv_s
                sa = (a0 + a1) + a2
                sb = (b0 + b1) + b2
                rast_db[o, k] = (a0 * s - e0 * sa) * inv_ss * dx_scale
                rast_db[o, k + 1] = (b0 * s - e0 * sb) * inv_ss * dy_scale
                rast_db[o, k + 2] = (a1 * s - e1 * sa) * inv_ss * dx_scale
                rast_db[o, k + 3] = (b1 * s - e1 * sb) * inv_ss * dy_scale


@numba.njit(inline="always")
def _setup_image(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, b):
    """Setup of image b's triangles into fresh (coef, bbox) scratch arrays."""
    n = image_offsets[b + 1] - image_offsets[b]
    coef = np.empty((n, 13), dtype=np.float64)
    bbox = np.empty((n, 5), dtype=np.int32)
    for k in range(n):
        _setup_one(pos, tri, vbox, vcode, tri_start[b] + k, vert_offset[b], height, width, coef, bbox, k)
        if bbox[k, 4] & DOUBT:
            _resolve_orientation(pos, tri, tri_start[b] + k, vert_offset[b], coef, bbox, k)
    return coef, bbox


@numba.njit(cache=True)
def _pixel_centres(size):
    out = np.empty(size, dtype=np.float64)
    for i in range(size):
        out[i] = (2.0 * i + 1.0) / size - 1.0
    return out


@numba.njit(parallel=True, cache=True)
def rasterize_images(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, rast, rast_db):
    """Setup, visibility and fill, one work item per image (setup kept in a per-image scratch buffer).

    Arguments as :func:`setup_triangles`; ``rast``/``rast_db`` are [B*H, W*4] views of the outputs
    (``rast_db`` with no columns: not computed).
    """
    xn_of, yn_of = _pixel_centres(width), _pixel_centres(height)
    for b in numba.prange(image_offsets.shape[0] - 1):
        coef, bbox = _setup_image(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, b)
        _raster_rows(pos, tri, vert_offset[b], coef, bbox, 0, coef.shape[0], 0, height - 1, xn_of, yn_of,
                     tri_start[b], rast, rast_db, b * height)


@numba.njit(parallel=True, cache=True)
def depth_images(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, depth):
    """Nearest z/w per pixel (``depth`` [B*H, W] float32, +inf where no triangle covers the centre), one work item
    per image; the same visibility as :func:`rasterize_images`."""
    xn_of, yn_of = _pixel_centres(width), _pixel_centres(height)
    for b in numba.prange(image_offsets.shape[0] - 1):
        coef, bbox = _setup_image(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, b)
        zbuf = np.full((height, width), np.inf, dtype=np.float32)
        index = np.full((height, width), -1, dtype=np.int32)
        _visibility(pos, tri, vert_offset[b], coef, bbox, 0, coef.shape[0], 0, height - 1, xn_of, yn_of, tri_start[b],
                    zbuf, index)
        depth[b * height:(b + 1) * height] = zbuf


@numba.njit(parallel=True, cache=True)
def coverage_counts(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, counts):
    """Pixel centres covered by the union of each range's triangles (``counts`` [R] int64), one work item per
    range, with the coverage rule of :func:`rasterize_images` (fill rule and z/w clipping; no depth test is needed
    for a union, so only a bitmap of the range's box is kept)."""
    xn_of, yn_of = _pixel_centres(width), _pixel_centres(height)
    for b in numba.prange(image_offsets.shape[0] - 1):
        coef, bbox = _setup_image(pos, tri, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, b)
        n = coef.shape[0]
        x0, y0, x1, y1 = width, height, -1, -1
        for m in range(n):
            if bbox[m, 0] <= bbox[m, 2]:
                x0, y0 = min(x0, bbox[m, 0]), min(y0, bbox[m, 1])
                x1, y1 = max(x1, bbox[m, 2]), max(y1, bbox[m, 3])
        if x1 < x0:
            counts[b] = 0
            continue
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        base, id_base = vert_offset[b], tri_start[b]
        for m in range(n):
            if bbox[m, 0] > bbox[m, 2]:
                continue
            a0, b0, c0 = coef[m, 0], coef[m, 1], coef[m, 2]
            a1, b1, c1 = coef[m, 3], coef[m, 4], coef[m, 5]
            a2, b2, c2 = coef[m, 6], coef[m, 7], coef[m, 8]
            za, zb, zc = coef[m, 9], coef[m, 10], coef[m, 11]
            bound = coef[m, 12]
            nbound = -bound
            for j in range(bbox[m, 1], bbox[m, 3] + 1):
                yn = yn_of[j]
                t0, t1, t2, tz = b0 * yn + c0, b1 * yn + c1, b2 * yn + c2, zb * yn + zc
                for i in range(bbox[m, 0], bbox[m, 2] + 1):
                    if mask[j - y0, i - x0]:
                        continue
                    xn = xn_of[i]
                    e0, e1, e2 = a0 * xn + t0, a1 * xn + t1, a2 * xn + t2
                    if (e0 >= nbound) & (e1 >= nbound) & (e2 >= nbound):
                        if (e0 <= bound) | (e1 <= bound) | (e2 <= bound):
                            if not _exact_covered(pos, tri, id_base + m, base, bbox[m, 4], xn, yn, e0, e1, e2, bound):
                                continue
                        depth = za * xn + tz
                        if depth >= -1.0 and depth <= 1.0:
                            mask[j - y0, i - x0] = 1
        counts[b] = mask.sum()


@numba.njit(parallel=True, cache=True)
def rasterize_bands(pos, tri, coef, bbox, image_offsets, tri_start, vert_offset, height, width, band_rows, rast,
                    rast_db):
    """Visibility and fill from a precomputed setup, one work item per (image, band of ``band_rows`` rows)."""
    xn_of, yn_of = _pixel_centres(width), _pixel_centres(height)
    num_images = image_offsets.shape[0] - 1
    bands = (height + band_rows - 1) // band_rows
    for item in numba.prange(num_images * bands):
        b = item // bands
        r0 = (item % bands) * band_rows
        r1 = min(r0 + band_rows, height) - 1
        _raster_rows(pos, tri, vert_offset[b], coef, bbox, image_offsets[b], image_offsets[b + 1], r0, r1, xn_of,
                     yn_of, tri_start[b], rast, rast_db, b * height)


# ----------------------------------------------------------------------------------------------------
# Interpolation


@numba.njit(parallel=True, cache=True)
def interpolate_rows(attr, rast, tri, rast_db, diff_idx, one, height, out, out_da, bad_id):
    """``out = u a_0 + v a_1 + (1 - u - v) a_2`` per pixel, and interleaved (dA/dX, dA/dY) for ``diff_idx``.

    attr [Ba, V, C] (Ba == 1: shared by all images); rast, rast_db [B*H, W*4] row views; tri [T, 3] int32;
    ``one`` is 1 in the dtype of ``rast`` (the arithmetic stays in that dtype, as in the torch path);
    ``height`` is H. Writes every value of ``out`` [B*H, W*C] and ``out_da`` [B*H, W*2D] (D = len(diff_idx));
    sets ``bad_id[row]`` when a pixel of that row holds a triangle id outside ``tri``.
    """
    rows = rast.shape[0]
    width = rast.shape[1] // 4
    shared = attr.shape[0] == 1
    channels = attr.shape[2]
    num_diff = diff_idx.shape[0]
    num_tri = tri.shape[0]
    for row in numba.prange(rows):
        ab = 0 if shared else row // height
        for k in range(width * channels):
            out[row, k] = 0.0
        for k in range(width * 2 * num_diff):
            out_da[row, k] = 0.0
        for i in range(width):
            t = np.int64(rast[row, 4 * i + 3]) - 1
            if t < 0:
                continue
            if t >= num_tri:
                bad_id[row] = 1
                continue
            k0, k1, k2 = tri[t, 0], tri[t, 1], tri[t, 2]
            u, v = rast[row, 4 * i], rast[row, 4 * i + 1]
            w = (one - u) - v
            o = i * channels
            for c in range(channels):
                out[row, o + c] = (u * attr[ab, k0, c] + v * attr[ab, k1, c]) + w * attr[ab, k2, c]
            o = i * 2 * num_diff
            for d in range(num_diff):
                c = diff_idx[d]
                d_u = attr[ab, k0, c] - attr[ab, k2, c]
                d_v = attr[ab, k1, c] - attr[ab, k2, c]
                out_da[row, o + 2 * d] = rast_db[row, 4 * i] * d_u + rast_db[row, 4 * i + 2] * d_v
                out_da[row, o + 2 * d + 1] = rast_db[row, 4 * i + 1] * d_u + rast_db[row, 4 * i + 3] * d_v



# ----------------------------------------------------------------------------------------------------
# Antialiasing


@numba.njit(inline="always")
def _screen_xy(pos, row, half_w, half_h):
    w = pos[row, 3]
    sw = w if w > 0 else 1.0
    return (pos[row, 0] / sw + 1.0) * half_w, (pos[row, 1] / sw + 1.0) * half_h, w > 0


@numba.njit(inline="always")
def _aa_pair(color, rast, pos, vstride, tri, opposite, out, b, j0, i0, j1, i1, vertical):
    """The blend of one pair of neighbouring pixels with different triangle ids (see ``_antialias.py``)."""
    id0 = np.int64(rast[b, j0, i0, 3]) - 1
    id1 = np.int64(rast[b, j1, i1, 3]) - 1
    if id0 == id1:
        return
    pick1 = id0 < 0 or (id1 >= 0 and not (rast[b, j0, i0, 2] < rast[b, j1, i1, 2]))
    if pick1:
        t, ds, cj, ci = id1, -1.0, j1 + 0.5, i1 + 0.5
    else:
        t, ds, cj, ci = id0, 1.0, j0 + 0.5, i0 + 0.5
    H, W = rast.shape[1], rast.shape[2]
    half_w, half_h = 0.5 * W, 0.5 * H
    base = b * vstride
    sx = np.empty(3)
    sy = np.empty(3)
    front = True
    for k in range(3):
        sx[k], sy[k], ok = _screen_xy(pos, base + tri[t, k], half_w, half_h)
        front = front and ok
    if not front:
        return
    area = (sx[1] - sx[0]) * (sy[2] - sy[0]) - (sy[1] - sy[0]) * (sx[2] - sx[0])
    if area == 0.0:
        return
    best, crossing, usable = -np.inf, 0.0, False
    for e in range(3):
        ei, ej, ek = e, (e + 1) % 3, (e + 2) % 3
        if vertical:
            a0, a1, c0, c1 = sy[ei] - cj, sy[ej] - cj, sx[ei] - ci, sx[ej] - ci
        else:
            a0, a1, c0, c1 = sx[ei] - ci, sx[ej] - ci, sy[ei] - cj, sy[ej] - cj
        if (c0 < 0) == (c1 < 0):
            continue
        x_c = a0 - c0 * (a1 - a0) / (c1 - c0)
        score = ds * x_c
        if not score > best:
            continue
        o = opposite[t, e]
        o = base + (o if o >= 0 else tri[t, ek])
        ox, oy, _ = _screen_xy(pos, o, half_w, half_h)
        ex, ey = sx[ej] - sx[ei], sy[ej] - sy[ei]
        side = ex * (oy - sy[ei]) - ey * (ox - sx[ei])
        edge_area = ex * (sy[ek] - sy[ei]) - ey * (sx[ek] - sx[ei])
        silhouette = (side > 0 and edge_area > 0) or (side < 0 and edge_area < 0)
        best, crossing, usable = score, score, silhouette and abs(c1 - c0) >= abs(a1 - a0)
    if not (usable and crossing > -1.0 / 16 and crossing < 1.0 + 1.0 / 16):
        return
    alpha = ds * (0.5 - min(max(crossing, 0.0), 1.0))
    jt, it = (j0, i0) if alpha > 0 else (j1, i1)
    for c in range(color.shape[3]):
        out[b, jt, it, c] += alpha * (color[b, j1, i1, c] - color[b, j0, i0, c])


@numba.njit(parallel=True, cache=True)
def antialias_images(color, rast, pos, vstride, tri, opposite, out):
    """Forward of :func:`synth_torch.render.antialias` without gradients, one work item per image.

    color, out [B, H, W, C]; rast [B, H, W, 4]; pos [N, 4] (vertex ``b * vstride + k`` of image b; vstride 0 in
    range mode); tri, opposite [T, 3]. Horizontal pairs, then vertical ones, each in row-major order, add their
    blends to ``out`` (a copy of ``color``), as the reference's ``index_add`` does.
    """
    B, H, W = color.shape[0], color.shape[1], color.shape[2]
    for b in numba.prange(B):
        out[b] = color[b]
        for j in range(H):
            for i in range(W - 1):
                _aa_pair(color, rast, pos, vstride, tri, opposite, out, b, j, i, j, i + 1, False)
        for j in range(H - 1):
            for i in range(W):
                _aa_pair(color, rast, pos, vstride, tri, opposite, out, b, j, i, j + 1, i, True)
