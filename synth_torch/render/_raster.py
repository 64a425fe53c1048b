"""Rasterization shared by the ``cpu`` and ``torch`` backends.

Method (homogeneous rasterization, Olano & Greer 1997): for a triangle with clip-space vertices
``c_i = (x_i, y_i, w_i)`` the matrix ``M = [c_0 c_1 c_2]`` maps barycentric-like weights to a
homogeneous screen point. For the NDC pixel centre ``r = (x_n, y_n, 1)``, ``e = sign(det M) adj(M) r``
is, up to a positive factor, the perspective-correct barycentric vector of the point of the
triangle seen through that pixel. The pixel is covered iff all ``e_i >= 0``; this also handles
triangles that cross ``w = 0`` without clipping the x/y planes. Depth ``z/w`` is affine in
``r`` and is clipped per pixel to ``[-1, 1]`` (near and far planes).

Fill rule: a pixel centre exactly on an edge (``e_i == 0``) belongs to the triangle for which the
edge coefficients ``(a_i, b_i)`` satisfy ``a_i > 0 or (a_i == 0 and b_i > 0)``. Edge rows are cross
products of the two edge vertices, so two triangles sharing an edge get exactly negated rows and
exactly one of them takes the pixel: no cracks, no double coverage.

Depth test: the smallest ``z/w`` rounded to float32 wins; ties go to the lowest triangle id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE = 8  # torch reference: pixels per tile side for binning


@dataclass
class TriangleSetup:
    """Per (image, triangle) setup in float64, triangles of one image in ascending id order.

    Shapes (M = number of surviving image-triangle pairs):
        image: [M] image index; tri: [M] global triangle index; vidx: [M, 3] rows of the flat pos.
        edges: [M, 3, 3] ``(a_i, b_i, c_i)`` per edge, sign-normalised; zrow: [M, 3] ``z/w = a x_n + b y_n + c``.
        bbox: [M, 4] inclusive pixel bounds (x0, y0, x1, y1).
    """

    image: torch.Tensor
    tri: torch.Tensor
    vidx: torch.Tensor
    edges: torch.Tensor
    zrow: torch.Tensor
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


def triangle_setup(pos_flat: torch.Tensor, tri: torch.Tensor, ranges: torch.Tensor | None, num_images: int,
                   num_vertices: int, instanced: bool, height: int, width: int) -> TriangleSetup:
    """Cull and set up every (image, triangle) pair; see the module docstring for the maths."""
    image, tri_idx, vidx = image_triangles(num_images, num_vertices, tri, ranges, instanced)
    p = pos_flat.detach().to(torch.float64)[vidx]  # [M, 3, 4]
    x, y, z, w = p.unbind(-1)
    c = torch.stack((x, y, w), dim=-1)  # columns of M, [M, 3, 3]
    rows = torch.stack((torch.linalg.cross(c[:, 1], c[:, 2]), torch.linalg.cross(c[:, 2], c[:, 0]),
                        torch.linalg.cross(c[:, 0], c[:, 1])), dim=1)
    det = (c[:, 0] * rows[:, 0]).sum(-1)
    zrow = (z[:, :, None] * rows).sum(1) / det[:, None]
    edges = rows * torch.sign(det)[:, None, None]

    outside = ((x > w).all(1) | (x < -w).all(1) | (y > w).all(1) | (y < -w).all(1)
               | (z > w).all(1) | (z < -w).all(1) | (w <= 0).all(1))
    keep = (det != 0) & torch.isfinite(det) & torch.isfinite(zrow).all(1) & ~outside

    # Conservative pixel bounds: projected extent plus one pixel; whole viewport when a vertex has w <= 0.
    in_front = (w > 0).all(1)
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    sx = (x / safe_w + 1.0) * (0.5 * width) - 0.5
    sy = (y / safe_w + 1.0) * (0.5 * height) - 0.5
    big = float(max(width, height) * 4)
    x0 = torch.where(in_front, sx.amin(1).clamp(-big, big).floor() - 1, torch.zeros_like(det))
    x1 = torch.where(in_front, sx.amax(1).clamp(-big, big).ceil() + 1, torch.full_like(det, width - 1))
    y0 = torch.where(in_front, sy.amin(1).clamp(-big, big).floor() - 1, torch.zeros_like(det))
    y1 = torch.where(in_front, sy.amax(1).clamp(-big, big).ceil() + 1, torch.full_like(det, height - 1))
    bbox = torch.stack((x0.clamp(0, width - 1), y0.clamp(0, height - 1),
                        x1.clamp(0, width - 1), y1.clamp(0, height - 1)), dim=1).to(torch.int32)
    keep &= (x0 <= width - 1) & (x1 >= 0) & (y0 <= height - 1) & (y1 >= 0)
    sel = keep.nonzero().squeeze(1)
    return TriangleSetup(image=image[sel], tri=tri_idx[sel], vidx=vidx[sel], edges=edges[sel], zrow=zrow[sel],
                         bbox=bbox[sel])


def _covered(e: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fill rule on one edge: strictly inside, or on the edge and the edge is a 'top-left' one."""
    return (e > 0) | ((e == 0) & ((a > 0) | ((a == 0) & (b > 0))))


def sortable_depth_key(depth32: torch.Tensor) -> torch.Tensor:
    """Map float32 depths to int64 keys in [-2^31, 2^31) with the same order (-0.0 treated as +0.0)."""
    bits = (depth32 + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def visibility_torch(setup: TriangleSetup, num_images: int, height: int, width: int,
                     max_pairs: int = 1 << 22) -> torch.Tensor:
    """Reference visibility: index into ``setup`` of the nearest triangle per pixel, -1 where empty.

    Returns: [B, H, W] int64.
    """
    device = setup.edges.device
    M = setup.edges.shape[0]
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    bb = setup.bbox.to(torch.long)
    tx0, ty0, tx1, ty1 = bb[:, 0] // TILE, bb[:, 1] // TILE, bb[:, 2] // TILE, bb[:, 3] // TILE
    ntx, nty = tx1 - tx0 + 1, ty1 - ty0 + 1
    pairs_per_tri = ntx * nty
    key = torch.full((num_images * height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    local = torch.arange(TILE, device=device)
    # Process triangles in chunks so that the (pair, pixel) tensors stay bounded.
    cum = torch.cumsum(pairs_per_tri * TILE * TILE, 0)
    start = 0
    while start < M:
        limit = (cum[start - 1] if start > 0 else 0) + max_pairs
        end = max(start + 1, int(torch.searchsorted(cum, limit, right=True)))
        end = min(end, M)
        m = torch.arange(start, end, device=device).repeat_interleave(pairs_per_tri[start:end])
        first = torch.cumsum(pairs_per_tri[start:end], 0) - pairs_per_tri[start:end]
        k = torch.arange(m.numel(), device=device) - first[m - start]
        tx = tx0[m] + k % ntx[m]
        ty = ty0[m] + k // ntx[m]
        px = (tx[:, None] * TILE + local[None, :])[:, None, :].expand(-1, TILE, TILE).reshape(-1)
        py = (ty[:, None] * TILE + local[None, :])[:, :, None].expand(-1, TILE, TILE).reshape(-1)
        mm = m[:, None].expand(-1, TILE * TILE).reshape(-1)
        inb = (px <= bb[mm, 2]) & (py <= bb[mm, 3]) & (px >= bb[mm, 0]) & (py >= bb[mm, 1])
        px, py, mm = px[inb], py[inb], mm[inb]
        xn, yn = pixel_ndc(px, width), pixel_ndc(py, height)
        ed = setup.edges[mm]
        inside = torch.ones_like(xn, dtype=torch.bool)
        for i in range(3):
            a, b, c = ed[:, i, 0], ed[:, i, 1], ed[:, i, 2]
            inside &= _covered(a * xn + b * yn + c, a, b)
        zr = setup.zrow[mm]
        depth = zr[:, 0] * xn + zr[:, 1] * yn + zr[:, 2]
        inside &= (depth >= -1.0) & (depth <= 1.0)
        flat = (setup.image[mm] * height + py) * width + px
        packed = (sortable_depth_key(depth.to(torch.float32)) << 32) | mm
        key.scatter_reduce_(0, flat[inside], packed[inside], reduce="amin")
        start = end
    hit = key != torch.iinfo(torch.int64).max
    index = torch.where(hit, key & 0xFFFFFFFF, torch.full_like(key, -1))
    return index.view(num_images, height, width)


def barycentrics(pos_flat: torch.Tensor, vidx: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, width: int,
                 height: int, with_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Differentiable (u, v, z/w, rast_db) at NDC points for triangles ``vidx`` of ``pos_flat``.

    ``u`` weights vertex 0, ``v`` vertex 1 and ``1 - u - v`` vertex 2. ``z/w`` carries no gradient
    (as in nvdiffrast); ``u, v`` and ``rast_db = (du/dX, du/dY, dv/dX, dv/dY)`` (pixel units) depend on
    the x, y, w of the three vertices.

    Shapes: pos_flat [N, 4]; vidx [P, 3]; xn, yn [P]; returns [P] x3 and [P, 4] or None.
    """
    p = pos_flat[vidx]  # [P, 3, 4]
    x, y, z, w = p.unbind(-1)
    c = torch.stack((x, y, w), dim=-1)
    rows = torch.stack((torch.linalg.cross(c[:, 1], c[:, 2]), torch.linalg.cross(c[:, 2], c[:, 0]),
                        torch.linalg.cross(c[:, 0], c[:, 1])), dim=1)  # [P, 3, 3]
    xn, yn = xn.to(p.dtype), yn.to(p.dtype)
    e = rows[..., 0] * xn[:, None] + rows[..., 1] * yn[:, None] + rows[..., 2]  # [P, 3]
    s = e.sum(1)
    u, v = e[:, 0] / s, e[:, 1] / s
    det = (c[:, 0] * rows[:, 0]).sum(-1)
    zw = ((z * e).sum(1) / det).detach()
    if not with_db:
        return u, v, zw, None
    sa, sb = rows[..., 0].sum(1), rows[..., 1].sum(1)
    du_dx = (rows[:, 0, 0] * s - e[:, 0] * sa) / (s * s) * (2.0 / width)
    du_dy = (rows[:, 0, 1] * s - e[:, 0] * sb) / (s * s) * (2.0 / height)
    dv_dx = (rows[:, 1, 0] * s - e[:, 1] * sa) / (s * s) * (2.0 / width)
    dv_dy = (rows[:, 1, 1] * s - e[:, 1] * sb) / (s * s) * (2.0 / height)
    return u, v, zw, torch.stack((du_dx, du_dy, dv_dx, dv_dy), dim=1)
