"""Rasterization maths and the pure-torch reference (the ``torch`` backend).

Method (homogeneous rasterization, Olano & Greer 1997): for a triangle with clip-space vertices
``c_k = (x_k, y_k, w_k)`` the matrix ``M = [c_0 c_1 c_2]`` maps barycentric-like weights to a
homogeneous screen point. For the NDC pixel centre ``r = (x_n, y_n, 1)``, ``e = sign(det M) adj(M) r``
is, up to a positive factor, the perspective-correct barycentric vector of the point of the
triangle seen through that pixel. The pixel is covered iff all ``e_k >= 0``; then ``sum(e) > 0`` and
the point lies in front of the eye (``w > 0``), so triangles crossing ``w = 0`` need no clipping
against the x/y planes. Depth ``z/w = (z_0 e_0 + z_1 e_1 + z_2 e_2) / det`` is affine in ``r`` and is
clipped per pixel to ``[-1, 1]`` (near and far planes).

Fill rule: a pixel centre exactly on an edge (``e_k == 0``) belongs to the triangle for which the
edge normal ``(a_k, b_k)`` satisfies ``a_k > 0 or (a_k == 0 and b_k > 0)``: the rule of the sample point
moved by an infinitesimal ``(+eps, +eps**2)``, so every pixel centre on shared edges or vertices goes to
exactly one triangle of a closed mesh or fan. That needs exact signs: wherever a float edge value is
within its rounding error bound of zero (``|e_k| <= bound``), the sign of ``e_k``, and likewise of
``det``, ``a_k`` and ``b_k``, is recomputed exactly (the reference uses ``fractions.Fraction``, the
``cpu`` kernels error-free transformations); elsewhere the float sign is already exact.

Depth test: the smallest ``z/w`` rounded to float32 wins; ties go to the lowest triangle id.

Arithmetic contract. The ``cpu`` backend (:mod:`synth_torch.render._numba_kernels`) must return the
same triangle ids as this reference, so both evaluate every float64 quantity with the same
expression, operand order included (written out below, never ``sum`` or ``linalg.cross``):

- rows (edge k is opposite vertex k; ``r_k = c_{k+1} x c_{k+2}``)::

      a_k = y_i * w_j - w_i * y_j;  b_k = w_i * x_j - x_i * w_j;  c_k = x_i * y_j - y_i * x_j

- ``det = (x_0 * a_0 + y_0 * b_0) + w_0 * c_0``; ``zrow = ((z_0 * r_0 + z_1 * r_1) + z_2 * r_2) / det``;
  edges are ``rows`` negated when the exact sign of ``det`` is negative;
- rounding bounds, from ``mag = max |x_k|, |y_k|, |w_k|`` over the three vertices:
  ``bound = ERR * (mag * mag)`` for every edge value (pixel centres have ``|x_n|, |y_n| < 1``) and
  ``ERR * (mag * mag * mag)`` for ``det``;
- pixel centre ``x_n = (2 i + 1) / W - 1`` (``y_n`` likewise with ``j`` and ``H``);
- edge value ``e_k = a_k * x_n + (b_k * y_n + c_k)``, depth ``zrow_a * x_n + (zrow_b * y_n + zrow_c)``;
- ``s = (e_0 + e_1) + e_2``, ``r = 1 / s``, ``u = e_0 * r``, ``v = e_1 * r``;
  ``du/dX = (a_0 * s - e_0 * ((a_0 + a_1) + a_2)) * (r * r) * (2 / W)`` and likewise for dY, dv;
- candidate pixels: when all ``w_k > 0``, pixel ``i`` is tested iff its centre ``i + 0.5`` lies in
  the projected extent ``[min s_x, max s_x]`` widened by :data:`BOUND_SLACK` pixels, with
  ``s_x = (x / w + 1) * (0.5 W)`` clamped to ``+-4 max(W, H)``; otherwise the whole viewport.

A culled triangle (zero or non-finite determinant, all vertices beyond one clip plane, no candidate
pixel) keeps its slot, with the empty pixel box ``(0, 0, -1, -1)``, so that each image's triangles
stay one contiguous, id-ordered range.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

BOUND_SLACK = 1e-6  # pixels added on each side of the projected extent (absorbs rounding)
ERR = 1e-13  # rounding bound of edge values / det relative to mag**2 / mag**3 (worst case is 4e-15)
EMPTY_BOX = (0, 0, -1, -1)


@dataclass
class TriangleSetup:
    """Per (image, triangle) setup in float64; one slot per pair, each image's triangles contiguous and id-ordered.

    Shapes (M = number of image-triangle pairs, culled ones included):
        image: [M] image index; tri: [M] global triangle index; vidx: [M, 3] rows of the flat pos.
        edges: [M, 3, 3] ``(a_k, b_k, c_k)`` per edge, sign-normalised; zrow: [M, 3] ``z/w = a x_n + b y_n + c``.
        bound: [M] rounding bound of the edge values; sigma: [M] exact orientation sign (0: degenerate);
        xyw: [M, 3, 3] vertex (x, y, w), for exact signs.
        bbox: [M, 4] int32 inclusive candidate pixel bounds (x0, y0, x1, y1); :data:`EMPTY_BOX` when culled.
    """

    image: torch.Tensor
    tri: torch.Tensor
    vidx: torch.Tensor
    edges: torch.Tensor
    zrow: torch.Tensor
    bound: torch.Tensor
    sigma: torch.Tensor
    xyw: torch.Tensor
    bbox: torch.Tensor


def image_triangles(num_images: int, num_vertices: int, tri: torch.Tensor, ranges: torch.Tensor | None,
                    instanced: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Enumerate (image, global triangle, flat vertex rows) for instanced or range mode."""
    device = tri.device
    if instanced:
        T = tri.shape[0]
        image = torch.arange(num_images, device=device).repeat_interleave(T)
        tri_idx = torch.arange(T, device=device).repeat(num_images)
        vidx = tri[tri_idx] + (image * num_vertices)[:, None]
    else:
        start = ranges[:, 0].to(device=device, dtype=torch.long)
        count = ranges[:, 1].to(device=device, dtype=torch.long)
        image = torch.arange(num_images, device=device).repeat_interleave(count)
        first = torch.cumsum(count, 0) - count
        tri_idx = torch.arange(int(count.sum()), device=device) - first[image] + start[image]
        vidx = tri[tri_idx]
    return image, tri_idx, vidx


def pixel_ndc(index: torch.Tensor, size: int) -> torch.Tensor:
    """NDC coordinate of pixel centres ``(2 i + 1) / size - 1`` in float64 (same expression as the kernel)."""
    return (2.0 * index.to(torch.float64) + 1.0) / size - 1.0


def exact_det3_sign(p, q, r) -> int:
    """Exact sign (-1, 0, 1) of ``r . (p x q)`` for 3-tuples of floats (rational arithmetic)."""
    (px, py, pw), (qx, qy, qw), (rx, ry, rw) = ([Fraction(float(c)) for c in v] for v in (p, q, r))
    d = rx * (py * qw - pw * qy) + ry * (pw * qx - px * qw) + rw * (px * qy - py * qx)
    return (d > 0) - (d < 0)


def robust_sign(value: torch.Tensor, bound: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                r: torch.Tensor) -> torch.Tensor:
    """Sign of ``r . (p x q)`` (rows of [N, 3]) from its float ``value``: the float sign where
    ``|value| > bound``, the exact one elsewhere. Returns int64 [N]."""
    sign = torch.where(value > bound, 1, torch.where(value < -bound, -1, 0))
    unsure = ((value <= bound) & (value >= -bound)).nonzero().squeeze(1)
    if unsure.numel():
        p, q, r = (t[unsure].tolist() for t in torch.broadcast_tensors(p, q, r))
        sign[unsure] = torch.tensor([exact_det3_sign(*args) for args in zip(p, q, r)], dtype=sign.dtype,
                                    device=sign.device)
    return sign


def adjugate_rows(v0, v1, v2):
    """Rows ``r_k = c_i x c_j`` ((i, j) = (1, 2), (2, 0), (0, 1)) of ``adj([c_0 c_1 c_2])`` and its determinant.

    ``v_k = (x_k, y_k, w_k)`` are tuples of tensors of any (equal) shape; differentiable.
    Returns ``(((a_0, b_0, c_0), (a_1, b_1, c_1), (a_2, b_2, c_2)), det)``.
    """

    def cross(p, q):
        (xi, yi, wi), (xj, yj, wj) = p, q
        return (yi * wj - wi * yj, wi * xj - xi * wj, xi * yj - yi * xj)

    rows = (cross(v1, v2), cross(v2, v0), cross(v0, v1))
    x0, y0, w0 = v0
    det = (x0 * rows[0][0] + y0 * rows[0][1]) + w0 * rows[0][2]
    return rows, det


def _split_vertices(p: torch.Tensor):
    """[P, 3, 4] vertex positions -> per-vertex (x, y, w) tuples and (z_0, z_1, z_2)."""
    verts = tuple((p[:, k, 0], p[:, k, 1], p[:, k, 3]) for k in range(3))
    return verts, tuple(p[:, k, 2] for k in range(3))


def _pixel_bounds(v, w, in_front, size: int, big: float):
    """Inclusive candidate pixel range along one axis; ``v``, ``w`` [M, 3] (see the module docstring)."""
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    s = ((v / safe_w + 1.0) * (0.5 * size)).clamp(-big, big)
    s_min = torch.minimum(torch.minimum(s[:, 0], s[:, 1]), s[:, 2])
    s_max = torch.maximum(torch.maximum(s[:, 0], s[:, 1]), s[:, 2])
    lo = torch.ceil((s_min - 0.5) - BOUND_SLACK).clamp(min=0)
    hi = torch.floor((s_max - 0.5) + BOUND_SLACK).clamp(max=size - 1)
    lo = torch.where(in_front, lo, torch.zeros_like(lo))
    hi = torch.where(in_front, hi, torch.full_like(hi, size - 1))
    return lo.to(torch.int32), hi.to(torch.int32)


def triangle_setup(pos_flat: torch.Tensor, tri: torch.Tensor, ranges: torch.Tensor | None, num_images: int,
                   num_vertices: int, instanced: bool, height: int, width: int) -> TriangleSetup:
    """Set up (and flag culled) every (image, triangle) pair; see the module docstring for the maths."""
    image, tri_idx, vidx = image_triangles(num_images, num_vertices, tri, ranges, instanced)
    p = pos_flat.detach().to(torch.float64)[vidx]  # [M, 3, 4]
    verts, (z0, z1, z2) = _split_vertices(p)
    rows, det = adjugate_rows(*verts)
    zrow = torch.stack([((z0 * rows[0][k] + z1 * rows[1][k]) + z2 * rows[2][k]) / det for k in range(3)], dim=1)
    finite = torch.isfinite(det) & torch.isfinite(zrow).all(1)

    # Rounding bounds, and the exact orientation where the float sign is in doubt.
    xyw = p[..., [0, 1, 3]]  # [M, 3 vertices, (x, y, w)]
    mag = xyw.abs().flatten(1).amax(1)
    sigma = robust_sign(torch.where(finite, det, torch.ones_like(det)),  # non-finite: culled below, not examined
                        torch.where(finite, ERR * (mag * mag * mag), torch.zeros_like(det)),
                        xyw[:, 1], xyw[:, 2], xyw[:, 0])
    sigma = torch.where(finite, sigma, torch.zeros_like(sigma))
    edges = torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)  # [M, 3 edges, (a, b, c)]
    edges = torch.where((sigma < 0)[:, None, None], -edges, edges)

    x, y, z, w = p.unbind(-1)
    outside = ((x > w).all(1) | (x < -w).all(1) | (y > w).all(1) | (y < -w).all(1)
               | (z > w).all(1) | (z < -w).all(1) | (w <= 0).all(1))
    keep = (det != 0) & (sigma != 0) & finite & ~outside
    in_front = (w > 0).all(1)
    big = 4.0 * max(width, height)
    bx0, bx1 = _pixel_bounds(x, w, in_front, width, big)
    by0, by1 = _pixel_bounds(y, w, in_front, height, big)
    keep &= (bx0 <= bx1) & (by0 <= by1)
    bbox = torch.stack((bx0, by0, bx1, by1), dim=1)
    bbox = torch.where(keep[:, None], bbox, torch.tensor(EMPTY_BOX, dtype=torch.int32, device=bbox.device))
    return TriangleSetup(image=image, tri=tri_idx, vidx=vidx, edges=edges, zrow=zrow, bound=ERR * (mag * mag),
                         sigma=sigma, xyw=xyw, bbox=bbox)


def _edge_in_exact(sigma: int, p, q, point) -> bool:
    """Fill rule on one edge (vertices p, q) at a point, in exact arithmetic: inside, or exactly on the edge
    and its normal (a, b) has a > 0 or a == 0 < b (the sample moved by an infinitesimal (+eps, +eps**2))."""
    for r in (point, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):  # e, then a, then b
        s = sigma * exact_det3_sign(p, q, r)
        if s != 0:
            return s > 0
    return False


def covered(setup: TriangleSetup, m: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
    """Fill rule for setup slots ``m`` at NDC points ``(xn, yn)`` [P], with exact signs where needed."""
    bound = setup.bound[m]
    e = torch.stack(edge_values(setup.edges[m], xn, yn), 1)  # [P, 3]
    inside = (e > bound[:, None]).all(1)
    unsure = ((e >= -bound[:, None]).all(1) & ~inside).nonzero().squeeze(1)  # within rounding distance of an edge
    if unsure.numel():
        sigma = setup.sigma[m[unsure]].tolist()
        xyw = setup.xyw[m[unsure]].tolist()
        point = torch.stack((xn[unsure], yn[unsure], torch.ones_like(xn[unsure])), 1).tolist()
        exact = [all(_edge_in_exact(sg, v[i], v[j], pt) for i, j in ((1, 2), (2, 0), (0, 1)))
                 for sg, v, pt in zip(sigma, xyw, point)]
        inside[unsure] = torch.tensor(exact, dtype=torch.bool, device=inside.device)
    return inside


def sortable_depth_key(depth32: torch.Tensor) -> torch.Tensor:
    """Map float32 depths to int64 keys in [-2^31, 2^31) with the same order (-0.0 treated as +0.0)."""
    bits = (depth32 + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def edge_values(edges: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``e_k = a_k * x_n + (b_k * y_n + c_k)`` for edges [P, 3, 3] at points [P]."""
    return tuple(edges[:, k, 0] * xn + (edges[:, k, 1] * yn + edges[:, k, 2]) for k in range(3))


def plane_depth(zrow: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
    """``z/w = zrow_a * x_n + (zrow_b * y_n + zrow_c)`` for zrow [P, 3] at points [P]."""
    return zrow[:, 0] * xn + (zrow[:, 1] * yn + zrow[:, 2])


def visibility_torch(setup: TriangleSetup, num_images: int, height: int, width: int,
                     max_pairs: int = 1 << 22) -> torch.Tensor:
    """Reference visibility: index into ``setup`` of the nearest triangle per pixel, -1 where empty.

    Every (triangle, candidate pixel) pair is tested; a deterministic ``scatter_reduce(amin)`` over
    keys packing (float32 depth, setup index) keeps the nearest, lowest-id triangle per pixel.
    Triangles are processed in chunks of at most ``max_pairs`` pairs (at least one triangle).

    Returns: [B, H, W] int64.
    """
    device = setup.edges.device
    bb = setup.bbox.to(torch.long)
    nx = (bb[:, 2] - bb[:, 0] + 1).clamp(min=0)
    ny = (bb[:, 3] - bb[:, 1] + 1).clamp(min=0)
    count = nx * ny
    cum = torch.cumsum(count, 0)
    key = torch.full((num_images * height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    M, start = count.shape[0], 0
    while start < M:
        base = int(cum[start - 1]) if start > 0 else 0
        end = min(M, max(start + 1, int(torch.searchsorted(cum, base + max_pairs, right=True))))
        m = torch.arange(start, end, device=device).repeat_interleave(count[start:end])
        k = torch.arange(m.numel(), device=device) - (cum[m] - count[m] - base)
        px, py = bb[m, 0] + k % nx[m], bb[m, 1] + k // nx[m]
        xn, yn = pixel_ndc(px, width), pixel_ndc(py, height)
        inside = covered(setup, m, xn, yn)
        depth = plane_depth(setup.zrow[m], xn, yn)
        inside &= (depth >= -1.0) & (depth <= 1.0)
        flat = (setup.image[m] * height + py) * width + px
        packed = (sortable_depth_key(depth.to(torch.float32)) << 32) | m
        key.scatter_reduce_(0, flat[inside], packed[inside], reduce="amin")
        start = end
    hit = key != torch.iinfo(torch.int64).max
    index = torch.where(hit, key & 0xFFFFFFFF, torch.full_like(key, -1))
    return index.view(num_images, height, width)


def fill_torch(setup: TriangleSetup, index: torch.Tensor, height: int, width: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fill of rast ``(u, v, z/w, id + 1)`` and rast_db for the pixels ``index`` marks visible."""
    B = index.shape[0]
    device = setup.edges.device
    rast = torch.zeros((B, height, width, 4), dtype=dtype, device=device)
    rast_db = torch.zeros((B, height, width, 4), dtype=dtype, device=device)
    b, py, px = (index >= 0).nonzero(as_tuple=True)
    m = index[b, py, px]
    xn, yn = pixel_ndc(px, width), pixel_ndc(py, height)
    ed = setup.edges[m]
    e0, e1, e2 = edge_values(ed, xn, yn)
    s = (e0 + e1) + e2
    inv_s = 1.0 / s
    rast[b, py, px] = torch.stack((e0 * inv_s, e1 * inv_s, plane_depth(setup.zrow[m], xn, yn),
                                   (setup.tri[m] + 1).to(torch.float64)), dim=1).to(dtype)
    sa = (ed[:, 0, 0] + ed[:, 1, 0]) + ed[:, 2, 0]
    sb = (ed[:, 0, 1] + ed[:, 1, 1]) + ed[:, 2, 1]
    inv_ss = inv_s * inv_s
    db = [(ed[:, k, col] * s - e * ssum) * inv_ss * scale
          for k, e in ((0, e0), (1, e1))
          for col, ssum, scale in ((0, sa, 2.0 / width), (1, sb, 2.0 / height))]
    rast_db[b, py, px] = torch.stack(db, dim=1).to(dtype)
    return rast, rast_db


def barycentrics(pos_flat: torch.Tensor, vidx: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, width: int,
                 height: int, with_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Differentiable ``(u, v, rast_db)`` at NDC points for triangles ``vidx`` of ``pos_flat`` (backward pass).

    ``u`` weights vertex 0, ``v`` vertex 1 and ``1 - u - v`` vertex 2; ``rast_db = (du/dX, du/dY, dv/dX,
    dv/dY)`` in pixel units. They depend on the x, y, w of the three vertices (not on z). Same expressions
    as the forward pass, on un-normalised rows (the sign of ``det`` cancels in every ratio).

    Shapes: pos_flat [N, 4]; vidx [P, 3]; xn, yn [P]; returns [P], [P] and [P, 4] or None.
    """
    verts, _ = _split_vertices(pos_flat[vidx])
    rows, _ = adjugate_rows(*verts)
    xn, yn = xn.to(pos_flat.dtype), yn.to(pos_flat.dtype)
    e0, e1, e2 = (a * xn + (b * yn + c) for a, b, c in rows)
    s = (e0 + e1) + e2
    inv_s = 1.0 / s
    u, v = e0 * inv_s, e1 * inv_s
    if not with_db:
        return u, v, None
    sa = (rows[0][0] + rows[1][0]) + rows[2][0]
    sb = (rows[0][1] + rows[1][1]) + rows[2][1]
    inv_ss = inv_s * inv_s
    db = [(rows[k][col] * s - e * ssum) * inv_ss * scale
          for k, e in ((0, e0), (1, e1))
          for col, ssum, scale in ((0, sa, 2.0 / width), (1, sb, 2.0 / height))]
    return u, v, torch.stack(db, dim=1)
