"""The visibility-only extensions (``depth_map``, ``coverage``) and the compiled antialias forward, each against
its definition through the ``torch`` reference."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr
from render_helpers import random_soup, sphere_scene


def _range_mode(seed: int):
    pos, tri = random_soup(1, 120, seed)
    pos = pos[0]
    ranges = torch.tensor([[0, 40], [40, 40], [80, 40], [0, 0], [10, 100], [0, 120]], dtype=torch.int32)
    return pos, tri, ranges


@pytest.mark.parametrize("seed,res", [(0, (32, 32)), (1, (17, 45)), (2, (64, 48))])
def test_depth_map_is_the_rasterized_depth(seed, res):
    pos, tri, ranges = _range_mode(seed)
    ref = dr.RasterizeContext(device="cpu", backend="torch")
    rast, _ = dr.rasterize(ref, pos, tri, res, ranges=ranges)
    expected = torch.where(rast[..., 3] > 0, rast[..., 2], torch.full_like(rast[..., 2], float("inf")))
    for backend in ("cpu", "torch"):
        got = dr.depth_map(dr.RasterizeContext(device="cpu", backend=backend), pos, tri, res, ranges=ranges)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert torch.equal(got, expected), backend
    assert torch.isfinite(expected).any() and torch.isinf(expected).any()


def test_depth_map_instanced_mode():
    pos, tri = sphere_scene(3, 0, rings=8, segments=10)
    ctx = dr.RasterizeContext(device="cpu")
    rast, _ = dr.rasterize(ctx, pos, tri, (40, 30))
    expected = torch.where(rast[..., 3] > 0, rast[..., 2], torch.full_like(rast[..., 2], float("inf")))
    assert torch.equal(dr.depth_map(ctx, pos, tri, (40, 30)), expected)


@pytest.mark.parametrize("seed,res", [(0, (32, 32)), (3, (25, 31))])
def test_coverage_counts_each_range_alone(seed, res):
    pos, tri, ranges = _range_mode(seed)
    ref = dr.RasterizeContext(device="cpu", backend="torch")
    rast, _ = dr.rasterize(ref, pos, tri, res, ranges=ranges)
    expected = (rast[..., 3] > 0).flatten(1).sum(1)
    for backend in ("cpu", "torch"):
        got = dr.coverage(dr.RasterizeContext(device="cpu", backend=backend), pos, tri, res, ranges)
        assert got.dtype == torch.int64 and torch.equal(got, expected), backend
    assert expected[3] == 0 and expected[5] > expected[0]  # the empty range, and the union of all triangles


def test_coverage_needs_range_mode():
    pos, tri = sphere_scene(2, 0, rings=4, segments=6)
    with pytest.raises(ValueError, match="range mode"):
        dr.coverage(dr.RasterizeContext(device="cpu"), pos, tri, (8, 8), None)


@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_antialias_matches_the_torch_path(seed, monkeypatch):
    pos, tri = sphere_scene(4, seed, rings=10, segments=14)
    ctx = dr.RasterizeContext(device="cpu")
    rast, _ = dr.rasterize(ctx, pos, tri, (48, 40))
    color = torch.rand(4, 48, 40, 3, generator=torch.Generator().manual_seed(seed))
    fast = dr.antialias(color, rast, pos, tri)
    monkeypatch.setenv("SYNTH_TORCH_RENDER_BACKEND", "torch")
    ref = dr.antialias(color, rast, pos, tri)
    assert (ref != color).any(dim=-1).sum() > 30  # silhouettes were blended
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
