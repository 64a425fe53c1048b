"""Gradients: ``torch.autograd.gradcheck`` in float64 for rasterize, interpolate and texture, and a
finite-difference check of antialias's position gradient."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import synth_torch.render as dr
from render_helpers import F64, context, perspective, to_clip

TRI = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)


def two_triangles() -> torch.Tensor:
    """A perspective quad (w varies per vertex) covering part of an 8 x 10 image, no centre near an edge."""
    v = torch.tensor([[-0.61, -0.53, -2.1], [0.57, -0.47, -2.6], [0.49, 0.62, -3.3], [-0.52, 0.44, -2.4]], dtype=F64)
    return to_clip(v, perspective(fov_deg=50.0))[None]


@pytest.mark.parametrize("grad_db", [True, False])
def test_rasterize_gradcheck(backend, grad_db):
    ctx = context(backend)
    pos = two_triangles().to(ctx.device).requires_grad_(True)
    tri = TRI.to(ctx.device)
    rast0, _ = dr.rasterize(ctx, pos.detach(), tri, (8, 10))
    assert (rast0[..., 3] > 0).sum() > 12

    def f(p):
        rast, db = dr.rasterize(ctx, p, tri, (8, 10), grad_db=grad_db)
        assert torch.equal(rast[..., 3], rast0[..., 3])  # no pixel changes triangle under the perturbation
        return (rast[..., :2], db) if grad_db else rast[..., :2]

    assert gradcheck(f, (pos,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_rasterize_gradcheck_range_mode():
    ctx = dr.RasterizeContext("cpu", "cpu")
    pos = two_triangles()[0].requires_grad_(True)
    ranges = torch.tensor([[0, 1], [1, 1], [0, 2]])

    def f(p):
        rast, db = dr.rasterize(ctx, p, TRI, (8, 10), ranges=ranges)
        return rast[..., :2], db

    assert gradcheck(f, (pos,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_z_and_id_channels_carry_no_gradient():
    ctx = dr.RasterizeContext("cpu", "cpu")
    pos = two_triangles().requires_grad_(True)
    rast, _ = dr.rasterize(ctx, pos, TRI, (8, 10))
    (g,) = torch.autograd.grad(rast[..., 2:].sum(), pos, allow_unused=True)
    assert g is None or (g == 0).all()
    # float32 inputs get float32 gradients
    pos32 = two_triangles().float().requires_grad_(True)
    rast, db = dr.rasterize(ctx, pos32, TRI, (8, 10))
    (rast[..., :2].sum() + db.sum()).backward()
    assert pos32.grad.dtype == torch.float32 and pos32.grad.abs().sum() > 0


@pytest.fixture
def raster_out():
    ctx = dr.RasterizeContext("cpu", "cpu")
    rast, db = dr.rasterize(ctx, two_triangles(), TRI, (8, 10))
    return rast, db


def test_interpolate_gradcheck(raster_out):
    rast, db = raster_out
    g = torch.Generator().manual_seed(0)
    attr = torch.rand(1, 4, 3, generator=g, dtype=F64, requires_grad=True)
    uv = rast[..., :2].clone().requires_grad_(True)
    db = db.clone().requires_grad_(True)
    rest = rast[..., 2:]

    def f(a, uv_, db_):
        out, out_da = dr.interpolate(a, torch.cat((uv_, rest), -1), TRI, db_, diff_attrs=[0, 2])
        return out, out_da

    assert gradcheck(f, (attr, uv, db), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_interpolate_then_rasterize_gradcheck_through_pos():
    ctx = dr.RasterizeContext("cpu", "cpu")
    attr = torch.tensor([[[0.0, 1.0], [1.0, 0.2], [0.3, 0.7], [0.9, 0.9]]], dtype=F64)

    def f(p):
        rast, db = dr.rasterize(ctx, p, TRI, (8, 10))
        return dr.interpolate(attr, rast, TRI, db, diff_attrs="all")

    assert gradcheck(f, (two_triangles().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def away_from_texel_centres(uv, size):
    x = uv * size - 0.5
    frac = x - x.floor()
    return (frac > 0.05) & (frac < 0.95)


def smooth_uv(lo=0.1, hi=0.9, sizes=(8,), seed=0, H=4, W=5):
    """Texture coordinates [1, H, W, 2] away from texel centres of every size (where bilinear has kinks)."""
    g = torch.Generator().manual_seed(seed)
    cand = lo + (hi - lo) * torch.rand(50 * H * W * 2, generator=g, dtype=F64)
    ok = torch.stack([away_from_texel_centres(cand, s) for s in sizes]).all(0)
    return cand[ok][: H * W * 2].reshape(1, H, W, 2)


@pytest.mark.parametrize("boundary", ["wrap", "clamp", "zero"])
def test_texture_linear_gradcheck(boundary, reference_device):
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(1, 8, 8, 3, generator=g, dtype=F64).to(reference_device).requires_grad_(True)
    uv = smooth_uv(lo=-0.3 if boundary != "clamp" else 0.1, hi=1.3 if boundary != "clamp" else 0.9)
    uv = uv.to(reference_device).requires_grad_(True)
    f = lambda t, c: dr.texture(t, c, filter_mode="linear", boundary_mode=boundary)  # noqa: E731
    assert gradcheck(f, (tex, uv), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_texture_mipmap_gradcheck():
    g = torch.Generator().manual_seed(2)
    tex = torch.rand(1, 8, 8, 2, generator=g, dtype=F64, requires_grad=True)
    uv = smooth_uv(sizes=(8, 4, 2), seed=3).requires_grad_(True)
    # footprints of about 2.5 texels: mip level between 1 and 2, away from integers
    uv_da = torch.tensor([0.32, 0.04, -0.06, 0.30], dtype=F64).expand(1, 4, 5, 4).clone()
    uv_da += 0.01 * torch.rand(1, 4, 5, 4, generator=g, dtype=F64)
    uv_da.requires_grad_(True)
    f = lambda t, c, d: dr.texture(t, c, d, filter_mode="linear-mipmap-linear")  # noqa: E731
    assert gradcheck(f, (tex, uv, uv_da), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    bias = torch.full((1, 4, 5), 0.3, dtype=F64, requires_grad=True)
    f = lambda t, c, d, b: dr.texture(t, c, d, mip_level_bias=b, filter_mode="linear-mipmap-linear")  # noqa: E731
    assert gradcheck(f, (tex, uv, uv_da, bias), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def antialias_loss(p, tri, target, attr, ctx, res):
    rast, _ = dr.rasterize(ctx, p, tri, res)
    color, _ = dr.interpolate(attr, rast, tri)
    out = dr.antialias(color, rast, p, tri)
    return ((out - target) ** 2).sum(), rast, out, color


def flat_quad():
    v = torch.tensor([[-0.63, -0.57, 0.0, 1.0], [0.61, -0.42, 0.0, 1.0], [0.47, 0.59, 0.0, 1.0],
                      [-0.52, 0.51, 0.0, 1.0]], dtype=F64)[None]
    return v, TRI, [0, 1, 2, 3]


def perspective_quad():
    """The quad seen in perspective: w differs per vertex, so x, y and w all move the silhouette."""
    v = torch.tensor([[-0.71, -0.63, -2.1], [0.67, -0.52, -2.9], [0.58, 0.66, -3.6], [-0.62, 0.49, -2.4]], dtype=F64)
    return to_clip(v, perspective(fov_deg=50.0))[None], TRI, [0, 1, 2, 3]


def occluded_quad():
    """A triangle in front of a larger quad: its edges over the quad are occluding (not outer) silhouettes."""
    back = torch.tensor([[-1.4, -1.2, -4.0], [1.3, -1.25, -4.2], [1.35, 1.2, -4.4], [-1.3, 1.3, -4.1]], dtype=F64)
    front = torch.tensor([[-0.52, -0.41, -2.3], [0.47, -0.23, -2.6], [-0.08, 0.53, -2.2]], dtype=F64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]], dtype=torch.int32)
    return to_clip(torch.cat((back, front)), perspective(fov_deg=60.0))[None], tri, [4, 5, 6]


@pytest.mark.parametrize("scene", ["flat", "perspective", "occluding"])
def test_antialias_position_gradient_matches_finite_differences(scene):
    """Move each silhouette vertex's x, y and w by +-eps (the rasterized ids stay the same); the loss change
    matches the analytic gradient, z gets none, and the silhouette really moves the loss."""
    ctx = dr.RasterizeContext("cpu", "cpu")
    res = (24, 24)
    v, tri, moving = {"flat": flat_quad, "perspective": perspective_quad, "occluding": occluded_quad}[scene]()
    g = torch.Generator().manual_seed(0)
    attr = torch.rand(1, v.shape[1], 2, generator=g, dtype=F64)
    attr[0, 4:] += 1.0  # the front triangle's colour differs from the quad behind it
    target = torch.zeros(1, *res, 2, dtype=F64)
    p = v.clone().requires_grad_(True)
    loss, rast0, out, color = antialias_loss(p, tri, target, attr, ctx, res)
    (grad,) = torch.autograd.grad(loss, p)
    if scene == "occluding":  # pixels blended across the front triangle's edges, where both sides are covered
        ids = rast0[0, ..., 3]
        over = torch.zeros_like(ids, dtype=torch.bool)
        over[:, :-1] |= (ids[:, :-1] == 3) & (ids[:, 1:] > 0) & (ids[:, 1:] != 3)
        over[:, 1:] |= (ids[:, 1:] == 3) & (ids[:, :-1] > 0) & (ids[:, :-1] != 3)
        assert ((out != color).any(-1)[0] & over).sum() > 5
    coords = (0, 1) if scene == "flat" else (0, 1, 3)  # w = 1 stays fixed for the flat quad
    eps = 1e-6 if scene == "flat" else 1e-7
    checked = 0
    for k in moving:
        assert grad[0, k, 2] == 0  # z/w carries no gradient
        for c in coords:
            dp = torch.zeros_like(v)
            dp[0, k, c] = eps
            lp, rp, _, _ = antialias_loss(v + dp, tri, target, attr, ctx, res)
            lm, rm, _, _ = antialias_loss(v - dp, tri, target, attr, ctx, res)
            assert torch.equal(rp[..., 3], rast0[..., 3]) and torch.equal(rm[..., 3], rast0[..., 3])
            fd = (lp - lm) / (2 * eps)
            torch.testing.assert_close(grad[0, k, c], fd, atol=1e-6, rtol=1e-4)
            checked += grad[0, k, c].abs() > 1e-3
    assert checked >= len(moving) * len(coords) - 1, checked


def test_pos_gradient_boost_scales_the_antialias_gradient():
    ctx = dr.RasterizeContext("cpu", "cpu")
    pos = two_triangles()
    rast, _ = dr.rasterize(ctx, pos, TRI, (8, 10))
    color = torch.ones(1, 8, 10, 1, dtype=F64) * (rast[..., 3:] > 0)
    grads = []
    for boost in (1.0, 3.0):
        p = pos.clone().requires_grad_(True)
        dr.antialias(color, rast, p, TRI, pos_gradient_boost=boost).sum().backward()
        grads.append(p.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], 3.0 * grads[0])
