"""antialias: silhouette pixels are blended, interiors and internal edges are not, and the antialiased
coverage approximates the exact triangle area better than the aliased one."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr
from render_helpers import context, quad, render

F64 = torch.float64
H, W = 40, 48


def flat(v):
    v = torch.as_tensor(v, dtype=F64)
    return torch.cat((v, torch.zeros(len(v), 1, dtype=F64), torch.ones(len(v), 1, dtype=F64)), 1)[None]


def pixel_area(v) -> float:
    px = (torch.as_tensor(v, dtype=F64) + 1) * 0.5 * torch.tensor([W, H], dtype=F64)
    (ax, ay), (bx, by), (cx, cy) = px.tolist()
    return 0.5 * abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def distance_to_edges(v) -> torch.Tensor:
    """Distance in pixels from every pixel centre to the nearest edge of triangle v (NDC)."""
    px = (torch.as_tensor(v, dtype=F64) + 1) * 0.5 * torch.tensor([W, H], dtype=F64)
    cx, cy = torch.meshgrid(torch.arange(W, dtype=F64) + 0.5, torch.arange(H, dtype=F64) + 0.5, indexing="xy")
    p = torch.stack((cx, cy), -1)
    best = torch.full((H, W), float("inf"), dtype=F64)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        d = px[b] - px[a]
        t = (((p - px[a]) * d).sum(-1) / (d * d).sum()).clamp(0, 1)
        best = torch.minimum(best, (p - (px[a] + t[..., None] * d)).norm(dim=-1))
    return best


TRI = torch.tensor([[0, 1, 2]], dtype=torch.int32)


def aa(color, rast, pos, tri, backend):
    """``antialias`` on ``backend``'s device, result on the CPU."""
    device = context(backend).device
    return dr.antialias(color.to(device), rast.to(device), pos.to(device), tri.to(device)).cpu()
V = [[-0.71, -0.62], [0.77, -0.33], [-0.12, 0.81]]


def test_silhouette_pixels_blend_strictly_between_foreground_and_background(backend):
    pos = flat(V)
    rast, _ = render(pos, TRI, (H, W), backend)
    inside = rast[..., 3:] > 0
    fg, bg = torch.tensor([0.9, 0.2, 0.4], dtype=F64), torch.tensor([0.1, 0.6, 0.0], dtype=F64)
    color = torch.where(inside, fg, bg)
    out = aa(color, rast, pos, TRI, backend)
    changed = (out != color).any(-1)[0]
    assert changed.sum() > 30
    t = (out[0] - bg) / (fg - bg)  # per channel blend factor: the same for every channel
    assert torch.allclose(t[..., 0], t[..., 1]) and torch.allclose(t[..., 0], t[..., 2])
    assert ((t[..., 0] > 0) & (t[..., 0] < 1))[changed].all()
    far_from_edge = distance_to_edges(V) > 1.5
    assert not changed[far_from_edge].any()  # interior and far background untouched
    assert torch.equal(out[0][far_from_edge], color[0][far_from_edge])


def test_internal_edge_of_a_mesh_is_not_blended(backend):
    x0, y0, x1, y1 = -0.6, -0.55, 0.5, 0.7
    pos, tri = quad(x0, y0, x1, y1, dtype=F64)
    rast, _ = render(pos, tri, (H, W), backend)
    ids = rast[0, ..., 3]
    color = torch.stack(((ids == 1).to(F64), (ids == 2).to(F64)), -1)[None]  # one colour per triangle
    out = aa(color, rast, pos, tri, backend)
    changed = (out != color).any(-1)[0]
    # pixels next to the diagonal: a neighbour belongs to the other triangle of the quad
    internal = torch.zeros(H, W, dtype=torch.bool)
    for dj, di in ((0, 1), (1, 0)):
        a, b = ids[: H - dj, : W - di], ids[dj:, di:]
        pair = (a != b) & (a > 0) & (b > 0)
        internal[: H - dj, : W - di] |= pair
        internal[dj:, di:] |= pair
    outline = torch.zeros(H, W, dtype=torch.bool)
    cx, cy = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    for c, lo, hi, size in ((cx, x0, x1, W), (cy, y0, y1, H)):
        outline |= ((c - (lo + 1) * 0.5 * size).abs() < 1.5) | ((c - (hi + 1) * 0.5 * size).abs() < 1.5)
    assert (internal & ~outline).sum() > 20
    assert not changed[internal & ~outline].any()
    assert changed[outline].sum() > 20  # the silhouette is antialiased


def test_antialiased_coverage_approximates_the_exact_area(backend):
    g = torch.Generator().manual_seed(0)
    err_aa, err_aliased = [], []
    while len(err_aa) < 8:
        v = (torch.rand(3, 2, generator=g, dtype=F64) - 0.5) * 1.8
        area = pixel_area(v)
        if area < 150:
            continue
        pos = flat(v)
        rast, _ = render(pos, TRI, (H, W), backend)
        mask = (rast[..., 3:] > 0).to(F64)
        blended = aa(mask, rast, pos, TRI, backend)
        err_aa.append(abs(float(blended.sum()) - area) / area)
        err_aliased.append(abs(float(mask.sum()) - area) / area)
    assert max(err_aa) < 0.015
    assert sum(err_aa) < 0.6 * sum(err_aliased)


def test_topology_hash_and_validation():
    _, tri = quad(-0.5, -0.5, 0.5, 0.5)
    th = dr.antialias_construct_topology_hash(tri)
    # edge (0, 2) is shared: triangle 0's edge 2 (vertices 2, 0) sees vertex 3; triangle 1's edge 0 sees vertex 1
    assert th.opposite.tolist() == [[-1, -1, 3], [1, -1, -1]]
    pos, tri = quad(-0.5, -0.5, 0.5, 0.5)
    rast, _ = render(pos, tri, (8, 8))
    color = torch.ones(1, 8, 8, 1)
    same = dr.antialias(color, rast, pos, tri, topology_hash=th)
    assert torch.equal(same, dr.antialias(color, rast, pos, tri))
    with pytest.raises(ValueError, match="different triangle tensor"):
        dr.antialias(color, rast, pos, tri[:1], topology_hash=th)
    with pytest.raises(ValueError, match="color must be"):
        dr.antialias(color[..., 0], rast, pos, tri)
    with pytest.raises(ValueError, match=r"antialias: inputs on different devices \(color on meta, rast on cpu"):
        dr.antialias(color.to("meta"), rast, pos, tri)
