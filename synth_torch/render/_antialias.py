"""``antialias``: analytic silhouette antialiasing with position gradients (nvdiffrast semantics).

For each pair of horizontally or vertically adjacent pixels whose triangle ids differ, the nearer
triangle (the one covering the other pixel's side, or the only one) is examined. The edge through
which the segment between the two pixel centres leaves it is found; if that edge is a silhouette
(no neighbour across it, or the neighbour folds behind) and runs more across the segment than along
it, the crossing point ``t`` in [0, 1] from the front pixel decides a blend: the pixel on the
crossing's side receives ``|0.5 - t|`` of the difference of the two colours. Because ``t`` is a
smooth function of the edge's vertex positions, autograd carries gradients to ``pos`` (x, y, w).
Triangles with a vertex at ``w <= 0`` are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from synth_torch.render import cpu
from synth_torch.render._dispatch import check_same_device, use_nvdiffrast
from synth_torch.render.context import nvdiffrast_ops

_EDGES = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # (vertex i, vertex j, opposite vertex k)


@dataclass
class TopologyHash:
    """For triangle t and edge e (vertices ``_EDGES[e][:2]``), ``opposite[t, e]`` is the opposite vertex of the
    single other triangle sharing that edge, or -1 (open boundary or non-manifold edge). Shape [T, 3]."""

    opposite: torch.Tensor
    num_triangles: int


def antialias_construct_topology_hash(tri: torch.Tensor) -> TopologyHash:
    """Edge adjacency of ``tri`` [T, 3]; pass it to :func:`antialias` to avoid rebuilding it per call."""
    tri = tri.to(torch.long)
    T = tri.shape[0]
    if T == 0:
        return TopologyHash(tri.new_full((0, 3), -1), 0)
    n = int(tri.max()) + 1
    i = torch.cat([tri[:, a] for a, _, _ in _EDGES])
    j = torch.cat([tri[:, b] for _, b, _ in _EDGES])
    k = torch.cat([tri[:, c] for _, _, c in _EDGES])
    key = torch.minimum(i, j) * n + torch.maximum(i, j)
    order = torch.argsort(key, stable=True)
    sk = key[order]
    _, counts = torch.unique_consecutive(sk, return_counts=True)
    group_size = counts.repeat_interleave(counts)
    first = (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    pos_in_group = torch.arange(sk.numel(), device=tri.device) - first
    partner = (first + (1 - pos_in_group).clamp(min=0)).clamp(max=sk.numel() - 1)
    opp_sorted = torch.where(group_size == 2, k[order][partner], torch.full_like(sk, -1))
    opposite = torch.empty_like(opp_sorted)
    opposite[order] = opp_sorted
    return TopologyHash(opposite.view(3, T).t().contiguous(), T)


def _use_kernel(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor) -> bool:
    """The compiled forward serves CPU calls that need no gradient; autograd goes through the torch path."""
    if os.environ.get("SYNTH_TORCH_RENDER_BACKEND", "auto") == "torch":
        return False
    if any(t.device.type != "cpu" for t in (color, rast, pos)) or color.dtype not in (torch.float32, torch.float64):
        return False
    return not (torch.is_grad_enabled() and (color.requires_grad or pos.requires_grad))


def _antialias_cpu(color, rast, pos, tri, topology_hash):
    from synth_torch.render import _numba_kernels as nk

    nk.use_torch_threads()
    out = cpu.empty(tuple(color.shape), color.dtype)
    vstride = pos.shape[1] if pos.ndim == 3 else 0
    nk.antialias_images(color.detach().contiguous().numpy(), rast.detach().contiguous().numpy(),
                        pos.detach().reshape(-1, 4).contiguous().numpy(), vstride,
                        tri.to(torch.int64).contiguous().numpy(), topology_hash.opposite.contiguous().numpy(),
                        out.numpy())
    return out


def _cross2(ax, ay, bx, by):
    return ax * by - ay * bx


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology_hash: TopologyHash | None = None, pos_gradient_boost: float = 1.0) -> torch.Tensor:
    """Antialias silhouette edges of ``color`` [B, H, W, C] rendered from ``rast`` [B, H, W, 4].

    Args:
        pos: the clip-space positions given to :func:`rasterize` ([B, V, 4] or [V, 4]).
        tri: [T, 3] the triangles given to :func:`rasterize`.
        topology_hash: from :func:`antialias_construct_topology_hash` (built here when None).
        pos_gradient_boost: multiplies the gradient reaching ``pos``.

    Returns: [B, H, W, C]. Gradients reach ``color`` and ``pos``.
    """
    if color.ndim != 4 or rast.shape[:3] != color.shape[:3]:
        raise ValueError(f"color must be [B,H,W,C] matching rast [B,H,W,4], got {tuple(color.shape)} "
                         f"and {tuple(rast.shape)}")
    if topology_hash is not None and topology_hash.num_triangles != tri.shape[0]:
        raise ValueError("topology_hash was built for a different triangle tensor")
    check_same_device("antialias", color=color, rast=rast, pos=pos)
    if use_nvdiffrast(color, rast, pos):
        nvdr = nvdiffrast_ops()

        tri32 = tri.to(device=rast.device, dtype=torch.int32)
        native_hash = nvdr.antialias_construct_topology_hash(tri32)
        return nvdr.antialias(color, rast, pos, tri32, topology_hash=native_hash,
                              pos_gradient_boost=pos_gradient_boost)
    if topology_hash is None:
        topology_hash = antialias_construct_topology_hash(tri)
    if _use_kernel(color, rast, pos):
        return _antialias_cpu(color, rast, pos, tri, topology_hash)
    B, H, W, C = color.shape
    tri = tri.to(device=color.device, dtype=torch.long)
    if pos_gradient_boost != 1.0:
        pos = pos.detach() + pos_gradient_boost * (pos - pos.detach())
    ids = rast[..., 3].to(torch.long) - 1
    zw = rast[..., 2]

    pairs = []  # (b, j0, i0, j1, i1, direction)
    for d, (dj, di) in enumerate(((0, 1), (1, 0))):
        a, c = ids[:, : H - dj, : W - di], ids[:, dj:, di:]
        b, j, i = (a != c).nonzero(as_tuple=True)
        pairs.append((b, j, i, j + dj, i + di, torch.full_like(b, d)))
    b, j0, i0, j1, i1, direction = (torch.cat(t) for t in zip(*pairs))
    id0, id1 = ids[b, j0, i0], ids[b, j1, i1]
    pick1 = (id0 < 0) | ((id1 >= 0) & ~(zw[b, j0, i0] < zw[b, j1, i1]))
    t = torch.where(pick1, id1, id0)
    ds = torch.where(pick1, -1.0, 1.0).to(color.dtype)
    cj = torch.where(pick1, j1, j0).to(color.dtype) + 0.5
    ci = torch.where(pick1, i1, i0).to(color.dtype) + 0.5

    vi = tri[t]  # [P, 3]
    opp = topology_hash.opposite.to(color.device)[t]  # [P, 3]
    flat = pos.reshape(-1, 4)
    offset = (b * pos.shape[1])[:, None] if pos.ndim == 3 else 0
    p = flat[vi + offset]  # [P, 3, 4]
    w = p[..., 3]
    front = (w > 0).all(1)
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    sx = (p[..., 0] / safe_w + 1.0) * (0.5 * W)
    sy = (p[..., 1] / safe_w + 1.0) * (0.5 * H)
    vertical = (direction == 1)[:, None]
    along = torch.where(vertical, sy - cj[:, None], sx - ci[:, None])
    across = torch.where(vertical, sx - ci[:, None], sy - cj[:, None])
    area = _cross2(sx[:, 1] - sx[:, 0], sy[:, 1] - sy[:, 0], sx[:, 2] - sx[:, 0], sy[:, 2] - sy[:, 0])

    best = torch.full_like(ds, -float("inf"))
    crossing = torch.zeros_like(ds)
    usable = torch.zeros_like(front)
    for e, (ei, ej, ek) in enumerate(_EDGES):
        a0, a1, c0, c1 = along[:, ei], along[:, ej], across[:, ei], across[:, ej]
        straddles = (c0 < 0) != (c1 < 0)
        dc = torch.where(straddles, c1 - c0, torch.ones_like(c0))
        x_c = a0 - c0 * (a1 - a0) / dc
        score = torch.where(straddles, ds * x_c, torch.full_like(x_c, -float("inf")))
        # Opposite vertex across the edge: the neighbour's, or our own when there is none (always silhouette).
        o = torch.where(opp[:, e] >= 0, opp[:, e], vi[:, ek])
        po = flat[o + (offset[:, 0] if pos.ndim == 3 else 0)]
        ow = torch.where(po[:, 3] > 0, po[:, 3], torch.ones_like(po[:, 3]))
        ox, oy = (po[:, 0] / ow + 1.0) * (0.5 * W), (po[:, 1] / ow + 1.0) * (0.5 * H)
        ex, ey = sx[:, ej] - sx[:, ei], sy[:, ej] - sy[:, ei]
        side = _cross2(ex, ey, ox - sx[:, ei], oy - sy[:, ei])
        edge_area = _cross2(ex, ey, sx[:, ek] - sx[:, ei], sy[:, ek] - sy[:, ei])
        silhouette = ((side > 0) & (edge_area > 0)) | ((side < 0) & (edge_area < 0))
        steep = (c1 - c0).abs() >= (a1 - a0).abs()
        better = score > best
        best = torch.where(better, score, best)
        crossing = torch.where(better, ds * x_c, crossing)
        usable = torch.where(better, silhouette & steep, usable)
    ok = front & usable & (area != 0) & (crossing > -1.0 / 16) & (crossing < 1.0 + 1.0 / 16)
    crossing = crossing.clamp(0.0, 1.0)
    alpha = ds * (0.5 - crossing)
    sel = ok.nonzero().squeeze(1)
    alpha = alpha[sel]
    b, j0, i0, j1, i1 = b[sel], j0[sel], i0[sel], j1[sel], i1[sel]
    delta = alpha[:, None] * (color[b, j1, i1] - color[b, j0, i0])
    target = torch.where(alpha > 0, (b * H + j0) * W + i0, (b * H + j1) * W + i1)
    return color.reshape(-1, C).index_add(0, target, delta).view(B, H, W, C)
