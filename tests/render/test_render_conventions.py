"""Conventions pinned to exact pixels: pixel centres, row order, non-square images, barycentric order,
triangle ids, depth, depth ties, range mode, input validation (see docs/rendering.md)."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr
from render_helpers import F64, context, ndc_from_pixel, pixel_centres, quad, render, sphere_scene


def covered(rast: torch.Tensor) -> torch.Tensor:
    return rast[..., 3] > 0


@pytest.mark.parametrize("H,W", [(12, 16), (7, 20), (1, 5), (9, 1)])
def test_rectangle_covers_exactly_the_centres_inside(backend, H, W):
    # Rectangle in pixel units chosen so that no pixel centre lies on its border.
    px0, px1, py0, py1 = 0.3 * W + 0.01, 0.81 * W, 0.2 * H + 0.02, 0.77 * H
    pos, tri = quad(ndc_from_pixel(px0, W), ndc_from_pixel(py0, H), ndc_from_pixel(px1, W), ndc_from_pixel(py1, H))
    rast, _ = render(pos, tri, (H, W), backend)
    assert rast.shape == (1, H, W, 4)
    i = torch.arange(W, dtype=F64) + 0.5
    j = torch.arange(H, dtype=F64) + 0.5
    expected = ((j > py0) & (j < py1))[:, None] & ((i > px0) & (i < px1))[None, :]
    assert torch.equal(covered(rast)[0], expected)


def test_row_zero_is_ndc_y_minus_one(backend):
    H, W = 8, 6
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [0.0, -1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 1.0]]])
    rast, _ = render(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W), backend)
    cov = covered(rast)[0]
    assert cov[0, 0] and not cov[H - 1, 0] and not cov[0, W - 1] and not cov[H - 1, W - 1]
    # Exactly the centres with x_n + y_n < -1 (strictly inside; none lies on the hypotenuse here).
    xn, yn = pixel_centres(H, W)
    assert torch.equal(cov, xn + yn < -1.0)


def test_barycentrics_depth_and_id_on_an_affine_triangle(backend):
    H, W = 10, 14
    v = torch.tensor([[-0.9, -0.7], [0.8, -0.85], [-0.2, 0.9]], dtype=F64)
    z = torch.tensor([0.1, -0.3, 0.6], dtype=F64)
    pos = torch.cat((v, z[:, None], torch.ones(3, 1, dtype=F64)), 1)[None]
    tri = torch.tensor([[0, 1, 2], [0, 0, 0]], dtype=torch.int32)  # second triangle is degenerate
    rast, _ = render(pos, tri, (H, W), backend)
    xn, yn = pixel_centres(H, W)
    # Solve p = u v0 + v v1 + (1 - u - v) v2 for every pixel centre.
    A = torch.stack((v[0] - v[2], v[1] - v[2]), 1)
    rhs = torch.stack((xn - v[2, 0], yn - v[2, 1]), -1)
    uv = torch.linalg.solve(A, rhs.reshape(-1, 2).T).T.reshape(H, W, 2)
    u, w1 = uv[..., 0], uv[..., 1]
    inside = (u > 0) & (w1 > 0) & (1 - u - w1 > 0)
    assert torch.equal(covered(rast)[0], inside)
    m = inside
    torch.testing.assert_close(rast[0, ..., 0][m], u[m], atol=1e-12, rtol=0)
    torch.testing.assert_close(rast[0, ..., 1][m], w1[m], atol=1e-12, rtol=0)
    depth = u * z[0] + w1 * z[1] + (1 - u - w1) * z[2]
    torch.testing.assert_close(rast[0, ..., 2][m], depth[m], atol=1e-12, rtol=0)
    assert (rast[0, ..., 3][m] == 1).all()
    assert (rast[0][~m] == 0).all()


def test_vertex_zero_gets_weight_u(backend):
    """A pixel next to vertex 0 has u close to 1, next to vertex 1 v close to 1."""
    H = W = 32
    pos = torch.tensor([[[-0.95, -0.95, 0, 1], [0.95, -0.95, 0, 1], [-0.95, 0.95, 0, 1]]], dtype=torch.float32)
    rast, _ = render(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W), backend)
    assert rast[0, 1, 1, 0] > 0.9  # near vertex 0 at NDC (-0.95, -0.95): row 1, column 1
    assert rast[0, 1, W - 3, 1] > 0.9  # near vertex 1, at the far end of row 1
    assert 1 - rast[0, H - 3, 1, 0] - rast[0, H - 3, 1, 1] > 0.9  # near vertex 2, row H - 3


def test_nearest_triangle_wins_and_ties_go_to_the_lowest_id(backend):
    H, W = 6, 8
    full = [[-1.0, -1.0], [3.0, -1.0], [-1.0, 3.0]]  # covers the whole viewport

    def tri_at(z):
        return [[x, y, z, 1.0] for x, y in full]

    pos = torch.tensor([tri_at(0.5) + tri_at(0.2) + tri_at(0.2) + tri_at(-0.4) + tri_at(-0.4)])
    tri = torch.arange(15, dtype=torch.int32).reshape(5, 3)
    rast, _ = render(pos, tri, (H, W), backend)
    assert (rast[..., 3] == 4).all()  # nearest depth -0.4: ids 3 and 4 tie, id 3 wins (stored as id + 1)
    rast, _ = render(pos, tri[[4, 3, 1, 0, 2]], (H, W), backend)
    assert (rast[..., 3] == 1).all()  # now triangle 0 (old 4) and 1 (old 3) tie: id 0 wins
    torch.testing.assert_close(rast[..., 2], torch.full((1, H, W), -0.4), atol=1e-7, rtol=0)


def test_depth_tie_between_overlapping_coplanar_triangles(backend):
    H = W = 16
    pos = torch.tensor([[[-0.8, -0.8, 0.3, 1], [1.1, -0.8, 0.3, 1], [-0.8, 1.1, 0.3, 1],
                         [0.8, 0.8, 0.3, 1], [-1.1, 0.8, 0.3, 1], [0.8, -1.1, 0.3, 1]]])
    tri = torch.tensor([[3, 4, 5], [0, 1, 2]], dtype=torch.int32)
    both = torch.tensor([[0, 1, 2]], dtype=torch.int32), torch.tensor([[3, 4, 5]], dtype=torch.int32)
    a = covered(render(pos, both[1], (H, W), backend)[0])
    b = covered(render(pos, both[0], (H, W), backend)[0])
    rast, _ = render(pos, tri, (H, W), backend)
    assert (a & b).any()
    assert (rast[..., 3][a & b] == 1).all()  # overlap: id 0 (first row of tri) wins the tie
    assert (rast[..., 3][b & ~a] == 2).all()


def test_range_mode_equals_instanced_mode_with_global_ids(backend):
    pos, tri = sphere_scene(3, seed=5, rings=8, segments=10)
    B, V = pos.shape[:2]
    T = tri.shape[0]
    inst, inst_db = render(pos, tri, (24, 32), backend)
    flat_tri = torch.cat([tri + b * V for b in range(B)])
    ranges = torch.tensor([[b * T, T] for b in range(B)], dtype=torch.int32)
    rng, rng_db = render(pos.reshape(-1, 4), flat_tri, (24, 32), backend, ranges=ranges)
    offset = torch.arange(B)[:, None, None] * T
    expected_ids = torch.where(inst[..., 3] > 0, inst[..., 3] + offset, 0)
    assert torch.equal(rng[..., 3], expected_ids)
    assert torch.equal(rng[..., :3], inst[..., :3])
    assert torch.equal(rng_db, inst_db)


def test_range_mode_with_partial_and_empty_ranges(backend):
    pos, tri = quad(-0.5, -0.5, 0.5, 0.5)
    ranges = torch.tensor([[1, 1], [0, 0], [0, 2]])
    rast, _ = render(pos[0], tri, (8, 8), backend, ranges=ranges)
    assert set(rast[0, ..., 3].unique().tolist()) == {0.0, 2.0}
    assert (rast[1] == 0).all()
    assert set(rast[2, ..., 3].unique().tolist()) == {0.0, 1.0, 2.0}


def test_rast_db_is_du_dv_per_pixel_on_an_affine_triangle(backend):
    H, W = 20, 30
    pos = torch.tensor([[[-0.9, -0.8, 0, 1], [0.7, -0.9, 0, 1], [0.1, 0.9, 0, 1]]], dtype=F64)
    rast, db = render(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W), backend)
    m = covered(rast)[0]
    # Affine case: du/dX is the change of u from one pixel to the next, constant over the triangle.
    both = m[:, 1:] & m[:, :-1]
    du_dx = (rast[0, :, 1:, 0] - rast[0, :, :-1, 0])[both]
    torch.testing.assert_close(db[0, :, :-1, 0][both], du_dx, atol=1e-9, rtol=0)
    both = m[1:, :] & m[:-1, :]
    dv_dy = (rast[0, 1:, :, 1] - rast[0, :-1, :, 1])[both]
    torch.testing.assert_close(db[0, :-1, :, 3][both], dv_dy, atol=1e-9, rtol=0)
    assert (db[0][~m] == 0).all()


def test_dtype_preserved_inputs_untouched_and_empty_inputs(backend, dtype):
    pos, tri = sphere_scene(2, seed=1, rings=6, segments=8, dtype=dtype)
    versions = pos._version, tri._version
    before = pos.clone(), tri.clone()
    ctx = context(backend)
    rast, db = dr.rasterize(ctx, pos.to(ctx.device), tri.to(ctx.device), (12, 10))
    assert rast.dtype == dtype and db.dtype == dtype and rast.device == db.device == ctx.device
    assert (pos._version, tri._version) == versions and torch.equal(pos, before[0]) and torch.equal(tri, before[1])
    empty_batch, _ = render(pos[:0], tri, (12, 10), backend)
    assert empty_batch.shape == (0, 12, 10, 4)
    no_tri, _ = render(pos, tri[:0], (12, 10), backend)
    assert no_tri.shape == (2, 12, 10, 4) and (no_tri == 0).all()


def test_batched_equals_unbatched(backend):
    pos, tri = sphere_scene(4, seed=2, rings=8, segments=12)
    rast, db = render(pos, tri, (20, 24), backend)
    for b in range(4):
        one, one_db = render(pos[b:b + 1], tri, (20, 24), backend)
        assert torch.equal(one[0], rast[b]) and torch.equal(one_db[0], db[b])


def test_tri_dtypes_are_equivalent(backend):
    pos, tri = sphere_scene(1, seed=3, rings=6, segments=8)
    a, _ = render(pos, tri.to(torch.int32), (16, 16), backend)
    b, _ = render(pos, tri.to(torch.int64), (16, 16), backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pos_raises(backend, bad):
    pos, tri = quad(-0.5, -0.5, 0.5, 0.5)
    pos[0, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        render(pos, tri, (4, 4), backend)


@pytest.mark.parametrize("case,exc,match", [
    ("pos_shape", ValueError, r"pos must have shape \[B, V, 4\]"),
    ("pos_int", TypeError, "float32 or float64"),
    ("pos_half", TypeError, "float32 or float64"),
    ("tri_shape", ValueError, r"tri must be an integer tensor of shape \[T, 3\]"),
    ("tri_float", ValueError, "tri must be an integer tensor"),
    ("tri_range", ValueError, "tri indexes vertices in"),
    ("resolution", ValueError, "resolution must be"),
    ("ranges_instanced", ValueError, "ranges is only valid in range mode"),
    ("ranges_missing", ValueError, "needs ranges"),
    ("ranges_shape", ValueError, r"ranges must be a CPU integer tensor of shape \[B, 2\]"),
    ("ranges_out", ValueError, "ranges select triangles outside tri"),
])
def test_invalid_inputs_raise_clear_errors(backend, case, exc, match):
    pos, tri = quad(-0.5, -0.5, 0.5, 0.5)
    kwargs = {}
    res = (4, 4)
    if case == "pos_shape":
        pos = pos[..., :3]
    elif case == "pos_int":
        pos = pos.to(torch.int32)
    elif case == "pos_half":
        pos = pos.to(torch.float16)
    elif case == "tri_shape":
        tri = tri[:, :2]
    elif case == "tri_float":
        tri = tri.float()
    elif case == "tri_range":
        tri = tri + 3
    elif case == "resolution":
        res = (0, 4)
    elif case == "ranges_instanced":
        kwargs["ranges"] = torch.tensor([[0, 2]])
    elif case == "ranges_missing":
        pos = pos[0]
    elif case == "ranges_shape":
        pos, kwargs["ranges"] = pos[0], torch.tensor([0, 2])
    elif case == "ranges_out":
        pos, kwargs["ranges"] = pos[0], torch.tensor([[1, 2]])
    with pytest.raises(exc, match=match):
        render(pos, tri, res, backend, **kwargs)


def test_context_errors(backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        dr.RasterizeContext("cpu", backend="opengl")
    with pytest.raises(TypeError, match="ctx must be a RasterizeContext"):
        dr.rasterize(None, *quad(-0.5, -0.5, 0.5, 0.5), (4, 4))


def test_nvdiffrast_backend_on_cpu_says_how_to_install():
    with pytest.raises((ValueError, RuntimeError)) as info:
        dr.RasterizeContext("cpu", backend="nvdiffrast")
    message = str(info.value)
    assert "CUDA" in message
    if not dr.nvdiffrast_available():
        assert 'pip install "synth-torch[nvdiffrast]"' in message and "--no-build-isolation" in message


def test_auto_backend_on_cpu_is_cpu():
    assert dr.RasterizeContext("cpu").backend == "cpu"
