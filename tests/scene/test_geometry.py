"""Batch assembly and the G-buffer passes: the compiled CPU paths against the torch references, and the padded
(GPU) layout against the compacted (CPU) one."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

import synth_torch.render as dr
from synth_torch import SynthDataset
from synth_torch.labels import label_passes
from synth_torch.scene import GBuffer, assemble, build_gbuffer
from synth_torch.shading import render_image

CTX = dr.RasterizeContext(device="cpu")
RES = (48, 56)


def _spec(scenario: str, batch: int = 6):
    ds = SynthDataset(scenario, batch_size=batch, resolution=RES, seed=4)
    index = torch.arange(batch)
    params = ds.sampler.sample_params(index, index % len(ds.slice_names), ds.mixture.overrides())
    return ds, ds.sampler.build(params, RES)


@pytest.mark.parametrize("scenario", ["tabletop", "defects"])
def test_compiled_assembly_equals_the_torch_reference(scenario):
    _, spec = _spec(scenario)
    fast, ref = assemble(spec, fast=True), assemble(spec, fast=False, compact=True)
    for f in fields(fast):
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        if torch.is_tensor(a):
            assert a.shape == b.shape and a.dtype == b.dtype, f.name
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f.name)
        elif f.name == "topology":
            assert torch.equal(a.opposite, b.opposite)
        else:
            assert a == b, f.name


def test_compaction_keeps_only_real_faces_of_valid_slots():
    _, spec = _spec("tabletop")
    padded, compact = assemble(spec, compact=False), assemble(spec)
    assert compact.tri.shape[0] < padded.tri.shape[0]
    per_slot = compact.slot_ranges[:, 1].view(spec.batch_size, -1)
    assert torch.equal(per_slot > 0, spec.objects.valid)
    assert torch.equal(compact.ranges[:, 1], per_slot.sum(1).int() + 2)
    # every face of a compact geometry has three distinct vertices (no padding left)
    t = compact.tri.long()
    assert ((t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])).all()


@pytest.mark.parametrize("scenario", ["tabletop", "defects"])
def test_padded_and_compact_layouts_render_the_same_batch(scenario):
    ds, spec = _spec(scenario)
    out = {}
    for compact in (False, True):
        geom = assemble(spec, compact=compact, fast=False)
        g = build_gbuffer(spec, geom, CTX, RES, shadows=ds.scenario.shadows, fast=False)
        image = render_image(spec, geom, g, "torch")
        labels = label_passes(spec, g, geom, ds.sampler.num_objects, fast=False)
        out[compact] = (g, image, labels)
    (g0, i0, l0), (g1, i1, l1) = out[False], out[True]
    for name in ("slot", "position", "normal", "local", "light", "shadow_depth", "defect", "decal", "coverage"):
        assert torch.equal(getattr(g0, name), getattr(g1, name)), name
    assert torch.equal(i0, i1)
    for f in fields(l0):
        assert torch.equal(getattr(l0, f.name), getattr(l1, f.name)), f.name


@pytest.mark.parametrize("scenario", ["tabletop", "defects"])
def test_compiled_passes_match_the_torch_passes(scenario):
    ds, spec = _spec(scenario)
    geom = assemble(spec)
    fast = build_gbuffer(spec, geom, CTX, RES, shadows=ds.scenario.shadows, fast=True)
    ref = build_gbuffer(spec, geom, CTX, RES, shadows=ds.scenario.shadows, fast=False)
    for name in ("rast", "slot", "shadow_depth", "defect", "coverage"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    for name in ("position", "normal", "local", "light", "decal"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-5, rtol=1e-6, msg=name)
    if scenario == "defects":
        assert (fast.defect > 0).any() and fast.decal.max() > 0.1
    else:
        assert torch.isfinite(fast.shadow_depth).any() and (fast.light != 0).any()


def test_gbuffer_shapes_and_detach():
    ds, spec = _spec("tabletop", batch=2)
    geom = assemble(spec)
    g = build_gbuffer(spec, geom, CTX, RES, uv=True)
    B, S = 2, ds.sampler.max_slots
    H, W = RES
    assert isinstance(g, GBuffer) and g.resolution == RES
    assert g.slot.shape == (B, H, W) and g.slot.dtype == torch.int32
    for name in ("position", "normal", "local", "light"):
        assert getattr(g, name).shape == (B, H, W, 3), name
    assert g.uv.shape == (B, H, W, 2) and g.uv_da.shape == (B, H, W, 4)
    assert g.coverage.shape == (B, S) and g.defect.shape == (B, H, W) and g.decal.shape == (B, H, W)
    assert g.shadow_depth.shape[0] == B and g.shadow_depth.shape[1] == g.shadow_depth.shape[2] >= 64
    assert ((g.slot >= -1) & (g.slot <= S)).all() and (g.slot == S).any()
    unit = g.normal.norm(dim=-1)[g.covered]
    torch.testing.assert_close(unit, torch.ones_like(unit), atol=1e-5, rtol=0)
    position = g.position.clone().requires_grad_(True)
    detached = GBuffer(**{f.name: (position if f.name == "position" else getattr(g, f.name)) for f in fields(g)}).detach()
    assert not detached.position.requires_grad
