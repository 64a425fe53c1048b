"""The ``cpu`` (numba) backend against the ``torch`` reference: setups bitwise equal, identical ids, values
within 1e-5; the compiled interpolate against the torch path; the exact-sign predicate against rationals."""

from __future__ import annotations

import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

import synth_torch.render as dr
from synth_torch.render import _numba_kernels as nk
from synth_torch.render import _raster
from render_helpers import random_soup, render, sphere_scene


def assert_backends_agree(pos, tri, res, ranges=None):
    a, a_db = render(pos, tri, res, "cpu", ranges=ranges)
    b, b_db = render(pos, tri, res, "torch", ranges=ranges)
    assert torch.equal(a[..., 3], b[..., 3])
    torch.testing.assert_close(a[..., :3], b[..., :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(a_db, b_db, atol=1e-5, rtol=1e-5)
    return a


@pytest.mark.parametrize("seed,batch,res", [(0, 1, (32, 32)), (1, 3, (17, 45)), (2, 2, (64, 48)), (3, 5, (8, 8))])
def test_random_triangle_soups_agree(seed, batch, res):
    pos, tri = random_soup(batch, 60, seed)
    rast = assert_backends_agree(pos, tri, res)
    assert (rast[..., 3] > 0).float().mean() > 0.2  # the scene is not empty


@pytest.mark.parametrize("seed,batch,res", [(0, 2, (40, 40)), (1, 9, (24, 36))])
def test_sphere_scenes_agree(seed, batch, res):
    pos, tri = sphere_scene(batch, seed, rings=10, segments=14)
    assert_backends_agree(pos, tri, res)


def test_band_split_agrees_with_one_item_per_image(monkeypatch):
    """Few images take the banded path (setup kernel + row bands); many take one item per image."""
    from synth_torch.render import _rasterize

    pos, tri = random_soup(2, 80, seed=4)
    whole = render(pos, tri, (40, 40), "cpu")
    monkeypatch.setattr(_rasterize, "_band_rows", lambda num_images, height: 8)
    banded = render(pos, tri, (40, 40), "cpu")
    monkeypatch.setattr(_rasterize, "_band_rows", lambda num_images, height: height)
    single = render(pos, tri, (40, 40), "cpu")
    for x, y in zip(banded, single):
        assert torch.equal(x, y)
    assert torch.equal(whole[0], single[0])


def test_range_mode_agrees():
    pos, tri = random_soup(1, 90, seed=6)
    ranges = torch.tensor([[0, 30], [30, 0], [10, 70], [60, 30]])
    assert_backends_agree(pos[0], tri, (30, 26), ranges=ranges)


def test_float64_agrees_and_differs_from_float32_only_by_rounding():
    """float32 changes a triangle id only where float32 rounding can move the decision (a centre within a
    hair of an edge, or a near depth tie), and elsewhere agrees with float64 to float32 precision."""
    pos, tri = random_soup(2, 40, seed=7, dtype=torch.float64)
    r64 = assert_backends_agree(pos, tri, (33, 31))
    r32, db32 = render(pos.float(), tri, (33, 31), "cpu")
    assert r32.dtype == torch.float32 and (r64[..., 3] > 0).float().mean() > 0.2
    same = r32[..., 3] == r64[..., 3]
    assert same.float().mean() > 0.99
    both = same & (r64[..., 3] > 0)
    torch.testing.assert_close(r32[both][:, :3].double(), r64[both][:, :3], atol=2e-5, rtol=1e-4)
    # where the ids differ, the float64 answer is ambiguous at float32 precision: a barycentric within 1e-4 of
    # an edge, or the float32 winner's depth within 1e-4 of the float64 winner's
    def edge_margin(r):  # smallest barycentric of the triangle a pixel shows (inf for an empty pixel)
        return float(torch.stack((r[0], r[1], 1 - r[0] - r[1])).min()) if r[3] > 0 else float("inf")

    differ = (~same).nonzero().tolist()
    for b, j, i in differ:
        a, c = r32[b, j, i].double(), r64[b, j, i]
        near_edge = min(edge_margin(a), edge_margin(c)) < 1e-4
        tie = a[3] > 0 and c[3] > 0 and abs(float(a[2] - c[2])) < 1e-4
        assert near_edge or tie, (b, j, i, a.tolist(), c.tolist())


def test_setups_are_bitwise_equal():
    pos, tri = random_soup(3, 50, seed=8)
    H, W = 37, 29
    B, V = pos.shape[:2]
    T = tri.shape[0]
    ref = _raster.triangle_setup(pos.reshape(-1, 4), tri.long(), None, B, V, True, H, W)
    coef = np.empty((B * T, 13))
    bbox = np.empty((B * T, 5), dtype=np.int32)
    flat = pos.reshape(-1, 4).numpy()
    vbox = np.empty((len(flat), 4), dtype=np.int32)
    vcode = np.empty(len(flat), dtype=np.uint8)
    nk.setup_vertices(flat, H, W, vbox, vcode)
    nk.setup_triangles(flat, tri.numpy(), vbox, vcode, np.arange(B + 1) * T, np.zeros(B, dtype=np.int64),
                       np.arange(B) * V, H, W, coef, bbox)
    assert np.array_equal(coef[:, :9], ref.edges.reshape(-1, 9).numpy())
    assert np.array_equal(coef[:, 9:12], ref.zrow.numpy())
    assert np.array_equal(coef[:, 12], ref.bound.numpy())
    assert np.array_equal(bbox[:, :4], ref.bbox.numpy())
    assert np.array_equal(bbox[:, 4], (ref.sigma < 0).to(torch.int32).numpy())
    assert nk.BOUND_SLACK == _raster.BOUND_SLACK and nk.ERR == _raster.ERR


def rational_det_sign(p, q, r) -> int:
    """Independent rational evaluation of det[[p], [q], [r]] by cofactor expansion along the first row."""
    (a, b, c), (d, e, f), (g, h, i) = ([Fraction(v) for v in row] for row in (p, q, r))
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return (det > 0) - (det < 0)


def test_exact_sign_predicate_matches_rationals():
    rng = random.Random(0)
    signs = set()
    for _ in range(400):
        # near-singular determinants: the third row close to a combination of the first two
        p = [rng.uniform(-2, 2) for _ in range(3)]
        q = [rng.uniform(-2, 2) for _ in range(3)]
        s, t = rng.uniform(-1, 1), rng.uniform(-1, 1)
        r = [s * a + t * b for a, b in zip(p, q)]
        if rng.random() < 0.5:
            r[rng.randrange(3)] += rng.choice([0.0, 1e-17, -1e-17, 1e-300])
        expected = rational_det_sign(p, q, r)
        signs.add(expected)
        assert nk.exact_det3_sign(*p, *q, *r) == expected
        assert _raster.exact_det3_sign(p, q, r) == expected
    p = [0.1, 0.7, 1.3]
    q = [2 * c for c in p]  # exactly parallel to p: the determinant is exactly zero
    assert nk.exact_det3_sign(*p, *q, 0.3, 0.1, 0.7) == 0 == _raster.exact_det3_sign(p, q, (0.3, 0.1, 0.7))
    assert signs == {-1, 1}


@pytest.mark.parametrize("attr_shape", ["shared", "per_image", "range"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_interpolate_matches_torch_path(monkeypatch, attr_shape, dtype):
    pos, tri = sphere_scene(3, seed=1, rings=8, segments=10, dtype=dtype)
    rast, db = render(pos, tri, (20, 28), "cpu")
    V = pos.shape[1]
    g = torch.Generator().manual_seed(0)
    attr = {"shared": torch.rand(1, V, 3, generator=g), "per_image": torch.rand(3, V, 2, generator=g),
            "range": torch.rand(V, 4, generator=g)}[attr_shape].to(dtype)
    got = dr.interpolate(attr, rast, tri, db, diff_attrs=[0, -1])
    monkeypatch.setenv("SYNTH_TORCH_RENDER_BACKEND", "torch")
    want = dr.interpolate(attr, rast, tri, db, diff_attrs=[0, -1])
    for x, y in zip(got, want):
        assert x.dtype == dtype and x.shape == y.shape
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_compiled_interpolate_is_used_without_grad_and_validates_ids():
    pos, tri = sphere_scene(1, seed=1, rings=6, segments=8)
    rast, _ = render(pos, tri, (12, 12), "cpu")
    with pytest.raises(ValueError, match="triangle ids beyond tri"):
        dr.interpolate(torch.rand(1, pos.shape[1], 2), rast, tri[:5])
    with pytest.raises(ValueError, match="diff_attrs needs rast_db"):
        dr.interpolate(torch.rand(1, pos.shape[1], 2), rast, tri, diff_attrs="all")
    assert os.environ.get("SYNTH_TORCH_RENDER_BACKEND", "auto") != "torch"


@pytest.mark.slow
@pytest.mark.parametrize("res", [(256, 256), (97, 513)])
def test_large_random_scenes_agree(res):
    pos, tri = random_soup(2, 400, seed=11)
    assert_backends_agree(pos, tri, res)


def test_cpu_backend_follows_and_keeps_torch_thread_count():
    import numba

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        pos, tri = sphere_scene(2, seed=0, rings=6, segments=8)
        rast, _ = render(pos, tri, (16, 16), "cpu")
        dr.interpolate(torch.rand(1, pos.shape[1], 2), rast, tri)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
