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


# ---------------------------------------------------------------------------------------------------------------
# nvdiffrast's interpolate, texture and antialias against the torch reference, on the same CUDA inputs. The
# reference runs through the public ops with SYNTH_TORCH_RENDER_BACKEND=torch. Tolerances (float32 on both sides):
#   interpolate  values 1e-5 abs, pixel derivatives 1e-4 abs + 1e-3 rel, attribute gradients 1e-4 abs;
#   texture      nearest: identical but for texel-boundary ties (at most 0.1 % of lookups); linear and mipmapped:
#                1e-4 abs (nvdiffrast's fast log2 moves the mip level by ~1e-6);
#   antialias    at most 0.2 % of values differ by more than 1e-4 (near-ties between two crossing edges), the
#                blended total agrees to 1e-3 relative, and the position gradients point the same way (cos > 0.99).


def _reference(monkeypatch, fn):
    """``fn()`` through the torch reference on the same (CUDA) inputs."""
    with monkeypatch.context() as m:
        m.setenv("SYNTH_TORCH_RENDER_BACKEND", "torch")
        return fn()


def _scene(batch=4, seed=0, res=(72, 96)):
    pos, tri = sphere_scene(batch, seed, rings=20, segments=28)
    pos, tri = pos.cuda(), tri.cuda()
    rast, db = dr.rasterize(dr.RasterizeContext("cuda", backend="torch"), pos, tri, res)
    assert (rast[..., 3] > 0).float().mean() > 0.05
    return pos, tri, rast, db


@pytest.mark.nvdiffrast
@pytest.mark.parametrize("layout", ["per_image", "shared"])
def test_nvdiffrast_interpolate_matches_the_reference(monkeypatch, layout):
    pos, tri, rast, db = _scene()
    g = torch.Generator().manual_seed(1)
    shape = (pos.shape[0] if layout == "per_image" else 1, pos.shape[1], 5)
    attr = torch.rand(shape, generator=g).cuda().requires_grad_(True)

    def run():
        out, da = dr.interpolate(attr, rast, tri, db, diff_attrs="all")
        (grad,) = torch.autograd.grad((out * 1.3).sum() + da.sum(), attr)
        return out, da, grad

    nv, ref = run(), _reference(monkeypatch, run)
    torch.testing.assert_close(nv[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(nv[1], ref[1], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(nv[2], ref[2], atol=1e-4, rtol=1e-4)


@pytest.mark.nvdiffrast
@pytest.mark.parametrize("boundary", ["wrap", "clamp", "zero"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear"])
def test_nvdiffrast_texture_matches_the_reference(monkeypatch, mode, boundary):
    g = torch.Generator().manual_seed(2)
    tex = torch.rand(2, 32, 32, 3, generator=g).cuda()
    uv = (torch.rand(2, 40, 48, 2, generator=g) * 1.6 - 0.3).cuda()  # outside [0, 1] too: boundary modes
    uv_da = (torch.rand(2, 40, 48, 4, generator=g) - 0.5).mul(0.2).cuda()  # footprints from < 1 to ~6 texels
    kwargs = {} if mode in ("nearest", "linear") else {"uv_da": uv_da}

    def run():
        return dr.texture(tex, uv, filter_mode=mode, boundary_mode=boundary, **kwargs)

    nv, ref = run(), _reference(monkeypatch, run)
    assert nv.shape == ref.shape == (2, 40, 48, 3)
    if mode == "nearest":
        assert ((nv - ref).abs() > 1e-6).any(-1).float().mean() <= 1e-3
    else:
        torch.testing.assert_close(nv, ref, atol=1e-4, rtol=0)


@pytest.mark.nvdiffrast
@pytest.mark.parametrize("seed", [0, 1])
def test_nvdiffrast_antialias_matches_the_reference(monkeypatch, seed):
    pos, tri, rast, _ = _scene(seed=seed)
    g = torch.Generator().manual_seed(seed)
    color = torch.rand(*rast.shape[:3], 3, generator=g).cuda() * (rast[..., 3:] > 0)
    weights = torch.rand(color.shape, generator=g).cuda()

    def run():
        p = pos.clone().requires_grad_(True)
        out = dr.antialias(color, rast, p, tri)
        (grad,) = torch.autograd.grad((out * weights).sum(), p)
        return out, grad

    (nv, nv_grad), (ref, ref_grad) = run(), _reference(monkeypatch, run)
    assert (ref != color).any(-1).sum() > 20  # silhouettes were blended
    assert ((nv - ref).abs() > 1e-4).float().mean() <= 2e-3
    blended = (ref - color).abs().sum()
    assert float(((nv - color).abs().sum() - blended).abs()) <= 1e-3 * float(blended)
    cos = torch.nn.functional.cosine_similarity(nv_grad.flatten(), ref_grad.flatten(), dim=0)
    assert float(cos) > 0.99 and ref_grad.abs().sum() > 0
