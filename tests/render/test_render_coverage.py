"""Watertightness (fill rule), clipping and degenerate triangles, against brute-force and closed-form geometry."""

from __future__ import annotations

import math

import pytest
import torch

from render_helpers import F64, perspective, pixel_rays, quad, ray_triangle, render, sphere_scene, to_clip, uv_sphere


def coverage_count(pos, tri, res, backend):
    """Number of triangles covering each pixel when each is rendered alone: [B, H, W]."""
    count = 0
    for t in range(tri.shape[0]):
        rast, _ = render(pos, tri[t:t + 1], res, backend)
        count = count + (rast[..., 3] > 0).to(torch.int64)
    return count


def test_uv_sphere_is_closed():
    _, tri = uv_sphere(8, 10)
    edges = torch.cat((tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]])).to(torch.int64)
    directed = set(map(tuple, edges.tolist()))
    assert len(directed) == edges.shape[0]  # consistent winding: each directed edge once
    assert all((b, a) in directed for a, b in directed)  # and its reverse is present: closed


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_mesh_covers_every_pixel_of_its_silhouette_exactly_once(backend, seed):
    """Front and back faces of a closed sphere: every covered pixel is covered exactly twice (once per layer)
    by the triangles rendered alone, and the full render covers exactly those pixels."""
    pos, tri = sphere_scene(1, seed=seed, rings=6, segments=8, dtype=torch.float64)
    res = (29, 37)
    count = coverage_count(pos, tri, res, backend)
    rast, _ = render(pos, tri, res, backend)
    assert count.max() == 2 and (count != 1).all()
    assert torch.equal(rast[..., 3] > 0, count == 2)


def test_sphere_front_faces_cover_exactly_once(backend):
    pos, tri = sphere_scene(1, seed=3, rings=6, segments=10, dtype=torch.float64)
    p = pos[0]
    a, b, c = (p[tri[:, k].long()] for k in range(3))
    ax, ay = a[:, 0] / a[:, 3], a[:, 1] / a[:, 3]
    area = (b[:, 0] / b[:, 3] - ax) * (c[:, 1] / c[:, 3] - ay) - (b[:, 1] / b[:, 3] - ay) * (c[:, 0] / c[:, 3] - ax)
    for sign in (1, -1):
        faces = tri[sign * area > 0]
        count = coverage_count(pos, faces, (31, 23), backend)
        assert count.max() == 1
        rast, _ = render(pos, faces, (31, 23), backend)
        assert torch.equal(rast[..., 3] > 0, count == 1)


@pytest.mark.parametrize("H,W", [(8, 8), (9, 13)])
def test_quad_diagonal_through_pixel_centres_is_covered_once(backend, H, W):
    """The shared diagonal of a full-viewport quad passes exactly through pixel centres (H == W) or not."""
    pos, tri = quad(-1.0, -1.0, 1.0, 1.0)
    count = coverage_count(pos, tri, (H, W), backend)
    assert (count == 1).all()
    rast, _ = render(pos, tri, (H, W), backend)
    assert (rast[..., 3] > 0).all()
    if H == W:  # centres on the diagonal exist and went to exactly one of the two triangles
        diag = rast[0, torch.arange(H), torch.arange(W), 3]
        assert len(set(diag.tolist())) == 1


@pytest.mark.parametrize("n", [5, 16])
def test_triangle_fan_covers_each_pixel_once(backend, n):
    """A fan around a pixel centre, spokes through pixel centres (horizontal, vertical, diagonal)."""
    H = W = 16
    centre = (0.0 + 1.0 / W, 0.0 + 1.0 / H)  # centre of pixel (8, 8)
    angles = [2 * math.pi * k / n for k in range(n)]
    if n == 16:  # include spokes through rows/columns/diagonals of centres
        angles = [math.pi * k / 8 for k in range(16)]
    ring = [(centre[0] + 3 * math.cos(t), centre[1] + 3 * math.sin(t)) for t in angles]
    verts = [centre] + ring
    pos = torch.tensor([[[x, y, 0.0, 1.0] for x, y in verts]], dtype=F64)
    tri = torch.tensor([[0, 1 + k, 1 + (k + 1) % n] for k in range(n)], dtype=torch.int32)
    count = coverage_count(pos, tri, (H, W), backend)
    assert (count == 1).all()


def test_random_meshes_shared_edges_no_cracks(backend):
    """A random triangulated grid (jittered vertices, random diagonals) covers the viewport exactly once."""
    g = torch.Generator().manual_seed(0)
    n = 5
    xs = torch.linspace(-1.5, 1.5, n + 1, dtype=F64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    inner = (grid.abs() < 1.4).all(1)
    grid[inner] += 0.2 * (torch.rand(int(inner.sum()), 2, generator=g, dtype=F64) - 0.5)
    tris = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            tris += [(a, b, e), (a, e, d)] if torch.rand(1, generator=g) < 0.5 else [(a, b, d), (b, e, d)]
    pos = torch.cat((grid, torch.zeros(len(grid), 1, dtype=F64), torch.ones(len(grid), 1, dtype=F64)), 1)[None]
    count = coverage_count(pos, torch.tensor(tris, dtype=torch.int32), (17, 23), backend)
    assert (count == 1).all()


def test_camera_inside_a_box_covers_every_pixel(backend):
    """A cube around the eye: its triangles cross w = 0, yet every pixel sees exactly the wall its ray hits."""
    c = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)], dtype=F64)
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tri = torch.tensor([t for a, b, cc, d in faces for t in ((a, b, cc), (a, cc, d))], dtype=torch.int32)
    proj = perspective(fov_deg=100.0, near=0.1, far=10.0)
    angle = 0.3
    rot = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]],
                       dtype=F64)
    verts = c @ rot.T + torch.tensor([0.1, -0.2, 0.15], dtype=F64)
    pos = to_clip(verts, proj)[None]
    H, W = 21, 27
    rast, _ = render(pos, tri, (H, W), backend)
    assert (rast[..., 3] > 0).all()
    # The triangle hit first by each pixel ray, by brute force, is the one reported.
    rays = pixel_rays(H, W, perspective(fov_deg=100.0, near=0.1, far=10.0, aspect=1.0))
    best_t = torch.full((H, W), math.inf, dtype=F64)
    for k in range(tri.shape[0]):
        v0, v1, v2 = (verts[tri[k, i].long()] for i in range(3))
        t, b1, b2 = ray_triangle(rays, v0, v1, v2)
        hit = (t > 0) & (b1 > 1e-9) & (b2 > 1e-9) & (b1 + b2 < 1 - 1e-9)
        best_t = torch.where(hit, torch.minimum(best_t, t), best_t)
    hit_point = rays * best_t[..., None]
    ids = rast[0, ..., 3].long() - 1
    face_of = ids // 2
    # each face lies on one plane of the (rotated, shifted) cube: check the hit point is on the reported face
    local = (hit_point - torch.tensor([0.1, -0.2, 0.15], dtype=F64)) @ rot
    normal_axis = torch.tensor([0, 0, 1, 1, 2, 2])[face_of]
    normal_sign = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0], dtype=F64)[face_of]
    coord = local.gather(-1, normal_axis[..., None])[..., 0]
    edge_pixels = torch.isinf(best_t)  # rays exactly through a cube edge (none expected)
    assert not edge_pixels.any()
    torch.testing.assert_close(coord, normal_sign, atol=1e-9, rtol=0)


def floor_case(backend, near: float, far: float, H=24, W=32):
    """A floor triangle under the eye, clipped by near/far: coverage is the closed form z/w in [-1, 1]."""
    proj = perspective(fov_deg=70.0, near=near, far=far, aspect=W / H)
    v = torch.tensor([[-30.0, -1.0, -0.2], [30.0, -1.0, -0.2], [0.0, -1.0, -40.0]], dtype=F64)
    rast, _ = render(to_clip(v, proj)[None], torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W), backend)
    rays = pixel_rays(H, W, proj)
    t, b1, b2 = ray_triangle(rays, v[0], v[1], v[2])
    clip = to_clip(rays * t[..., None], proj)
    zw = clip[..., 2] / clip[..., 3]
    inside = (t > 0) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
    expected = inside & (zw >= -1) & (zw <= 1)
    ambiguous = ((zw + 1).abs() < 1e-9) | ((zw - 1).abs() < 1e-9)
    cov = rast[0, ..., 3] > 0
    assert torch.equal(cov[~ambiguous], expected[~ambiguous])
    torch.testing.assert_close(rast[0, ..., 2][cov], zw[cov], atol=1e-9, rtol=0)
    return cov, inside


def test_near_plane_clips_per_pixel(backend):
    cov, inside = floor_case(backend, near=1.5, far=100.0)
    near_clipped = inside & ~cov
    assert cov.any() and near_clipped.any()
    assert near_clipped[0].any()  # row 0 is NDC y = -1: rays looking down at the closest floor


def test_far_plane_clips_per_pixel(backend):
    cov, inside = floor_case(backend, near=0.1, far=6.0)
    far_clipped = inside & ~cov
    assert cov.any() and far_clipped.any()
    rows = far_clipped.any(1).nonzero().squeeze(1)
    assert rows.min() > cov.any(1).nonzero().squeeze(1).min()  # the far floor is in higher rows than the near one


def test_triangle_crossing_w_zero(backend):
    """One vertex behind the eye: coverage is the set of pixel rays that hit the triangle in front of the eye."""
    H, W = 23, 31
    near, far = 0.1, 50.0
    proj = perspective(fov_deg=80.0, near=near, far=far, aspect=W / H)
    v = torch.tensor([[-1.0, -1.5, -2.0], [1.5, -0.5, -3.0], [0.3, 1.0, 2.0]], dtype=F64)  # vertex 2 behind
    pos = to_clip(v, proj)[None]
    assert pos[0, 2, 3] < 0
    rast, _ = render(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W), backend)
    rays = pixel_rays(H, W, proj)
    t, b1, b2 = ray_triangle(rays, v[0], v[1], v[2])
    clip = to_clip(rays * t[..., None], proj)
    zw = clip[..., 2] / clip[..., 3]
    b0 = 1 - b1 - b2
    expected = (t > 0) & (b0 > 0) & (b1 > 0) & (b2 > 0) & (zw >= -1) & (zw <= 1)
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 10 and torch.equal(cov, expected)
    # the perspective-correct barycentrics are those of the ray hit
    torch.testing.assert_close(rast[0, ..., 0][cov], b0[cov], atol=1e-6, rtol=0)
    torch.testing.assert_close(rast[0, ..., 1][cov], b1[cov], atol=1e-6, rtol=0)


def test_triangle_entirely_behind_the_eye_is_invisible(backend):
    v = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 3.0]], dtype=F64)
    pos = to_clip(v, perspective())[None]
    rast, _ = render(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (16, 16), backend)
    assert (rast == 0).all()


@pytest.mark.parametrize("case", ["collinear", "repeated", "point", "edge_on", "zero_w"])
def test_degenerate_triangles_produce_nothing(backend, case):
    if case == "collinear":
        pos = [[-0.5, -0.5, 0, 1], [0.0, 0.0, 0, 1], [0.5, 0.5, 0, 1]]
    elif case == "repeated":
        pos = [[-0.5, -0.5, 0, 1], [-0.5, -0.5, 0, 1], [0.5, 0.2, 0, 1]]
    elif case == "point":
        pos = [[0.1, 0.1, 0, 1]] * 3
    elif case == "edge_on":  # the triangle's plane passes through the eye: a line on screen
        pos = to_clip(torch.tensor([[0.0, -1.0, -2.0], [0.0, 1.0, -3.0], [0.0, 0.5, -5.0]], dtype=F64),
                      perspective()).tolist()
    else:
        pos = [[0.0, 0.0, 0.0, 0.0]] * 3
    rast, db = render(torch.tensor([pos], dtype=F64), torch.tensor([[0, 1, 2]], dtype=torch.int32), (16, 16), backend)
    assert (rast == 0).all() and (db == 0).all()


def test_outside_the_frustum_is_culled(backend):
    for shift in ([3.0, 0, 0], [-3.0, 0, 0], [0, 3.0, 0], [0, -3.0, 0], [0, 0, 3.0], [0, 0, -3.0]):
        p = torch.tensor([[[-0.5, -0.5, 0, 1], [0.5, -0.5, 0, 1], [0, 0.5, 0, 1]]], dtype=F64)
        p[..., :3] += torch.tensor(shift, dtype=F64)
        rast, _ = render(p, torch.tensor([[0, 1, 2]], dtype=torch.int32), (8, 8), backend)
        assert (rast == 0).all()
