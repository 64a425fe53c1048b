"""Inverse rendering on CPU, in the spirit of nvdiffrast's samples: recover a pose and vertex positions from a
target image through rasterize + interpolate + antialias with Adam."""

from __future__ import annotations

import torch

import synth_torch.render as dr
from render_helpers import context

RES = 32
BASE = torch.tensor([[-0.5, -0.4], [0.5, -0.4], [0.5, 0.4], [-0.5, 0.4], [0.0, 0.0]])
TRI = torch.tensor([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]], dtype=torch.int32)
COLORS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])[None]


def shade(xy: torch.Tensor, ctx: dr.RasterizeContext) -> torch.Tensor:
    pos = torch.cat((xy, torch.zeros(len(xy), 1), torch.ones(len(xy), 1)), 1)[None].to(ctx.device)
    tri = TRI.to(ctx.device)
    rast, _ = dr.rasterize(ctx, pos, tri, (RES, RES))
    color, _ = dr.interpolate(COLORS.to(ctx.device), rast, tri)
    return dr.antialias(color, rast, pos, tri).cpu()


def posed(params: torch.Tensor) -> torch.Tensor:
    tx, ty, angle = params
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack((torch.stack((c, -s)), torch.stack((s, c))))
    return BASE @ rot.T + torch.stack((tx, ty))


def fit(render, start: torch.Tensor, target: torch.Tensor, steps: int, lr: float):
    p = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    losses = []
    for _ in range(steps):
        loss = ((render(p) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.detach(), losses[0], ((render(p.detach()) - target) ** 2).mean().item()


def test_fit_translation_and_rotation(backend):
    ctx = context(backend)
    truth = torch.tensor([0.1, -0.05, 0.3])
    target = shade(posed(truth), ctx)
    params, first, last = fit(lambda p: shade(posed(p), ctx), torch.tensor([-0.15, 0.12, -0.1]), target,
                              steps=80, lr=0.03)
    assert last < first / 100
    torch.testing.assert_close(params, truth, atol=1e-2, rtol=0)


def test_fit_vertex_positions():
    ctx = dr.RasterizeContext("cpu", "cpu")
    target = shade(BASE, ctx)
    g = torch.Generator().manual_seed(0)
    start = BASE + 0.08 * torch.randn(BASE.shape, generator=g)
    _, first, last = fit(lambda xy: shade(xy, ctx), start, target, steps=150, lr=0.005)
    assert last < first / 10
