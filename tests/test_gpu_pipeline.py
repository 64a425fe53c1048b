"""The whole generation pipeline on CUDA (skipped cleanly without a GPU): torch passes and shader in float32,
labels as on the CPU, and (with nvdiffrast) no host synchronisation inside a batch once the spec is on the device."""

from __future__ import annotations

import pytest
import torch

from synth_torch import SynthDataset
from synth_torch.labels import label_passes
from synth_torch.scene import assemble, build_gbuffer
from synth_torch.sensor import apply_sensor
from synth_torch.shading import render_image


@pytest.mark.gpu
@pytest.mark.parametrize("scenario", ["tabletop", "defects"])
def test_cuda_torch_backend_matches_the_cpu(scenario):
    """The torch rasterizer gives the CPU's triangle ids bit for bit, so labels agree; shading differs only by
    float32 (CUDA) against float64 (CPU) arithmetic."""
    kw = dict(batch_size=6, resolution=64, seed=2, sensor=False)
    cpu = SynthDataset(scenario, **kw).render_batch(torch.arange(6))
    gpu = SynthDataset(scenario, device="cuda", backend="torch", **kw).render_batch(torch.arange(6)).to("cpu")
    assert gpu.image.dtype == torch.float32
    for name in ("instance", "semantic", "valid", "labels", "boxes", "visible_pixels"):
        assert torch.equal(getattr(cpu, name), getattr(gpu, name)), name
    torch.testing.assert_close(gpu.depth, cpu.depth, atol=1e-4, rtol=1e-5)
    diff = (gpu.image - cpu.image).abs()
    assert float(diff.max()) < 2 / 255 and float(diff.mean()) < 0.05 / 255


@pytest.mark.nvdiffrast
def test_a_cuda_batch_never_waits_for_the_host():
    ds = SynthDataset("tabletop", batch_size=8, resolution=64, seed=0, device="cuda")
    index = torch.arange(8)
    params = ds.sampler.sample_params(index, ds.slice_ids(index), ds.weights.overrides(ds.scenario))
    spec = ds.sampler.build(params, ds.resolution).to("cuda")
    sensor = {k: v for k, v in params.values.items() if k.startswith("sensor.")}  # validated on the CPU
    keys = spec.keys

    def batch():
        geom = assemble(spec)
        g = build_gbuffer(spec, geom, ds.context, ds.resolution, shadows=True)
        image = render_image(spec, geom, g, "torch")
        labels = label_passes(spec, g, geom, ds.sampler.num_objects)
        return apply_sensor(image, sensor, keys, ds.sensor_supports), labels

    batch()  # warm-up: caches, kernels, the template bank on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        image, labels = batch()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert image.is_cuda and labels.instance.is_cuda and torch.isfinite(image).all()
