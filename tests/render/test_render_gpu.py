"""nvdiffrast against the torch reference on CUDA (skipped cleanly without CUDA or nvdiffrast)."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr
from render_helpers import random_soup, sphere_scene


def edge_distance(rast, db):
    """Approximate distance in pixels from each pixel centre to the nearest edge of its triangle:
    barycentric / |its screen gradient| (b0 = u, b1 = v, b2 = 1 - u - v)."""
    u, v = rast[..., 0], rast[..., 1]
    gu, gv = db[..., 0:2], db[..., 2:4]
    dist = [u / gu.norm(dim=-1), v / gv.norm(dim=-1), (1 - u - v) / (gu + gv).norm(dim=-1)]
    return torch.stack(dist, -1).amin(-1).nan_to_num(0.0)


def compare(pos, tri, res):
    ref, ref_db = dr.rasterize(dr.RasterizeContext("cuda", backend="torch"), pos, tri, res)
    nv, nv_db = dr.rasterize(dr.RasterizeContext("cuda", backend="nvdiffrast"), pos, tri, res)
    covered = (ref[..., 3] > 0) | (nv[..., 3] > 0)
    same = ref[..., 3] == nv[..., 3]
    # nvdiffrast snaps vertices to a sub-pixel grid and keeps its own depth precision: compare ids away
    # from edges (0.05 px) and from depth ties between the two answers
    near_edge = (edge_distance(ref, ref_db) < 0.05) | (edge_distance(nv, nv_db) < 0.05)
    tie = (ref[..., 2] - nv[..., 2]).abs() < 1e-5
    valid = covered & ~near_edge & ~(tie & ~same)
    assert valid.sum() > 0.5 * covered.sum()
    assert same[valid].float().mean() >= 0.999
    both = same & covered & ~near_edge
    torch.testing.assert_close(nv[..., :3][both], ref[..., :3][both], atol=1e-4, rtol=0)
    torch.testing.assert_close(nv_db[both], ref_db[both], atol=1e-4, rtol=1e-3)


@pytest.mark.nvdiffrast
def test_nvdiffrast_matches_reference_on_spheres():
    for seed in range(3):
        pos, tri = sphere_scene(4, seed, rings=24, segments=32)
        compare(pos.cuda(), tri.cuda(), (96, 128))


@pytest.mark.nvdiffrast
def test_nvdiffrast_matches_reference_on_soups():
    for seed in range(3):
        pos, tri = random_soup(2, 200, seed)
        compare(pos.cuda(), tri.cuda(), (128, 128))


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu():
    pos, tri = random_soup(2, 100, seed=1)
    cpu, cpu_db = dr.rasterize(dr.RasterizeContext("cpu", "cpu"), pos, tri, (64, 64))
    gpu, gpu_db = dr.rasterize(dr.RasterizeContext("cuda", "torch"), pos.cuda(), tri.cuda(), (64, 64))
    assert torch.equal(cpu[..., 3], gpu[..., 3].cpu())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu_db.cpu(), cpu_db, atol=1e-5, rtol=1e-5)
