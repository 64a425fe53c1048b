"""Visibility-only passes (synth-torch extensions of the nvdiffrast API): the nearest depth per pixel
(shadow maps) and the pixel count each range covers (visible fractions).

Both are defined by :func:`rasterize`: ``depth_map`` is ``rast[..., 2]`` where ``rast[..., 3] > 0`` (+inf
elsewhere) and ``coverage`` counts the pixels with ``rast[..., 3] > 0`` when each range is rasterized as one
image. The ``cpu`` backend computes them with the rasterizer's own visibility kernel without writing
barycentrics; other backends rasterize and reduce (the reference).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synth_torch.render import cpu
from synth_torch.render._rasterize import _check_inputs, cpu_setup, rasterize
from synth_torch.render.context import RasterizeContext

#: Ranges rasterized per call by the reference path of :func:`coverage`.
COVERAGE_CHUNK = 64


def _prepare(ctx: RasterizeContext, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges):
    """Validation for the ``cpu`` kernels; other backends go through :func:`rasterize`, which validates as it
    does for them (nvdiffrast: not at all, so nothing waits for the GPU)."""
    if not isinstance(ctx, RasterizeContext):
        raise TypeError(f"ctx must be a RasterizeContext, got {type(ctx).__name__}")
    ctx.check_device(pos, tri)
    height, width = int(resolution[0]), int(resolution[1])
    if ctx.backend != "cpu":
        return height, width, 0, 0, pos.ndim == 3
    num_images, num_vertices, instanced = _check_inputs(pos, tri, (height, width), ranges)
    return height, width, num_images, num_vertices, instanced


def depth_map(ctx: RasterizeContext, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges=None) -> torch.Tensor:
    """The z/w of the nearest triangle at each pixel centre, +inf where none covers it (no gradients).

    Arguments as :func:`rasterize`. Shape: [B, H, W], dtype float32.
    """
    height, width, num_images, num_vertices, instanced = _prepare(ctx, pos, tri, resolution, ranges)
    if ctx.backend != "cpu":
        with torch.no_grad():
            rast, _ = rasterize(ctx, pos.detach(), tri, (height, width), ranges=ranges, grad_db=False)
        return torch.where(rast[..., 3] > 0, rast[..., 2], torch.full_like(rast[..., 2], math.inf)).float()
    from synth_torch.render import _numba_kernels as nk

    out = cpu.empty((num_images, height, width), torch.float32)
    if num_images:
        args = cpu_setup(pos, tri, ranges, num_images, num_vertices, instanced, height, width)
        nk.depth_images(*args, height, width, out.view(num_images * height, width).numpy())
    return out


def coverage(ctx: RasterizeContext, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges) -> torch.Tensor:
    """Pixel centres covered by each range's triangles, rasterized alone (the union of its triangles).

    Arguments as :func:`rasterize` in range mode (``pos`` [V, 4], ``ranges`` [R, 2]). Shape: [R] int64.
    """
    if pos.ndim != 2:
        raise ValueError(f"coverage works in range mode: pos must be [V, 4], got {tuple(pos.shape)}")
    height, width, num_images, num_vertices, instanced = _prepare(ctx, pos, tri, resolution, ranges)
    if ctx.backend != "cpu":
        counts = []
        with torch.no_grad():
            for chunk in ranges.split(COVERAGE_CHUNK):
                rast, _ = rasterize(ctx, pos.detach(), tri, (height, width), ranges=chunk.contiguous(), grad_db=False)
                counts.append((rast[..., 3] > 0).flatten(1).sum(1))
        return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64, device=pos.device)
    from synth_torch.render import _numba_kernels as nk

    counts = np.zeros(num_images, dtype=np.int64)
    if num_images:
        args = cpu_setup(pos, tri, ranges, num_images, num_vertices, instanced, height, width)
        nk.coverage_counts(*args, height, width, counts)
    return torch.from_numpy(counts)
