"""interpolate: perspective-correct values against ray casting, the diff_attrs layout against finite
differences across pixels, attribute layouts and validation."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr
from render_helpers import F64, context, perspective, pixel_rays, ray_triangle, render, to_clip

H, W = 24, 32
PROJ = perspective(fov_deg=60.0, near=0.5, far=20.0, aspect=W / H)
V = torch.tensor([[-1.6, -1.1, -2.0], [1.8, -0.9, -4.5], [0.1, 1.7, -3.0]], dtype=F64)  # strong perspective
TRI = torch.tensor([[0, 1, 2]], dtype=torch.int32)


def rendered(backend="cpu"):
    return render(to_clip(V, PROJ)[None], TRI, (H, W), backend)


@pytest.mark.parametrize("grad", [False, True])
def test_interpolated_positions_are_the_ray_hits(backend, grad):
    """Interpolating the camera-space vertex positions gives the point each pixel ray hits (perspective-correct)."""
    rast, _ = rendered(backend)
    attr = V[None].clone().requires_grad_(grad)
    device = context(backend).device  # interpolate on the backend's device
    out, _ = dr.interpolate(attr.to(device), rast.to(device), TRI.to(device))
    out = out.cpu()
    rays = pixel_rays(H, W, PROJ)
    t, b1, b2 = ray_triangle(rays, V[0], V[1], V[2])
    hit = rays * t[..., None]
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 100
    torch.testing.assert_close(out[0][cov], hit[cov], atol=1e-9, rtol=0)
    assert (out[0][~cov] == 0).all()
    # screen-space (affine) interpolation would be visibly wrong here: make sure the test can tell
    affine = rast[0, ..., :1] * V[0] + rast[0, ..., 1:2] * V[1]
    assert not torch.allclose(affine[cov], hit[cov], atol=1e-2)


def test_diff_attrs_layout_matches_pixel_finite_differences():
    rast, db = rendered()
    attr = torch.stack((V[:, 0] * 3.0, V[:, 1] * -2.0, V[:, 2]), -1)[None]  # varies along X, Y and depth
    out, out_da = dr.interpolate(attr, rast, TRI, db, diff_attrs=[0, 1])
    assert out_da.shape == (1, H, W, 4)
    cov = rast[0, ..., 3] > 0
    interior = cov.clone()
    interior[1:-1, 1:-1] &= cov[1:-1, :-2] & cov[1:-1, 2:] & cov[:-2, 1:-1] & cov[2:, 1:-1]
    interior[0], interior[-1], interior[:, 0], interior[:, -1] = False, False, False, False
    assert interior.sum() > 50
    for a in range(2):
        fd_x = (out[0, 1:-1, 2:, a] - out[0, 1:-1, :-2, a]) / 2
        fd_y = (out[0, 2:, 1:-1, a] - out[0, :-2, 1:-1, a]) / 2
        m = interior[1:-1, 1:-1]
        dx, dy = out_da[0, 1:-1, 1:-1, 2 * a], out_da[0, 1:-1, 1:-1, 2 * a + 1]
        torch.testing.assert_close(dx[m], fd_x[m], atol=2e-3, rtol=2e-2)
        torch.testing.assert_close(dy[m], fd_y[m], atol=2e-3, rtol=2e-2)
    # all / negative indices / subsets select the same columns in the same order
    _, da_all = dr.interpolate(attr, rast, TRI, db, diff_attrs="all")
    _, da_neg = dr.interpolate(attr, rast, TRI, db, diff_attrs=[-1])
    torch.testing.assert_close(da_all[..., :4], out_da)
    torch.testing.assert_close(da_all[..., 4:], da_neg)


def test_attribute_layouts(backend):
    device = context(backend).device
    rast, _ = rendered(backend)
    rast = rast.to(device)
    attr = torch.rand(1, 3, 2, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)
    tri = TRI.to(device)
    shared, da = dr.interpolate(attr, rast, tri)
    assert da.shape == (1, H, W, 0)
    flat, _ = dr.interpolate(attr[0], rast, tri)  # [V, C] (range-mode layout)
    torch.testing.assert_close(flat, shared)
    two = torch.cat((rast, rast))
    per_image, _ = dr.interpolate(torch.cat((attr, 2 * attr)), two, tri)
    torch.testing.assert_close(per_image[1], 2 * shared[0])
    broadcast, _ = dr.interpolate(attr, two, tri)
    torch.testing.assert_close(broadcast[1], shared[0])


def test_constant_attribute_is_reproduced_exactly_inside():
    rast, _ = rendered()
    out, _ = dr.interpolate(torch.full((1, 3, 1), 0.375, dtype=F64), rast, TRI)
    cov = rast[..., 3] > 0
    torch.testing.assert_close(out[..., 0][cov], torch.full_like(out[..., 0][cov], 0.375), atol=1e-12, rtol=0)


@pytest.mark.parametrize("case,match", [
    ("attr_ndim", "expected attr"),
    ("rast_shape", "expected attr"),
    ("batch", "matches neither 1 nor rast's batch"),
    ("diff_str", "diff_attrs must be 'all'"),
    ("diff_range", "out of range"),
    ("db_shape", "rast_db must have the shape of rast"),
    ("attr_nan", "interpolate: attr contains NaN or infinite values"),
    ("attr_inf", "interpolate: attr contains NaN or infinite values"),
    ("devices", r"interpolate: inputs on different devices \(attr on meta, rast on cpu\)"),
])
def test_interpolate_validation(case, match):
    rast, db = rendered()
    attr = torch.rand(1, 3, 2, dtype=F64)
    kwargs = {}
    if case == "attr_ndim":
        attr = attr[None]
    elif case == "rast_shape":
        rast = rast[..., :3]
    elif case == "batch":
        attr = torch.rand(2, 3, 2, dtype=F64)
    elif case == "diff_str":
        kwargs = dict(rast_db=db, diff_attrs="some")
    elif case == "diff_range":
        kwargs = dict(rast_db=db, diff_attrs=[2])
    elif case == "db_shape":
        kwargs = dict(rast_db=db[..., :2], diff_attrs=[0])
    elif case in ("attr_nan", "attr_inf"):
        attr[0, 1, 1] = float("nan") if case == "attr_nan" else -float("inf")
    elif case == "devices":
        attr = attr.to("meta")
    with pytest.raises(ValueError, match=match):
        dr.interpolate(attr, rast, TRI, **kwargs)
