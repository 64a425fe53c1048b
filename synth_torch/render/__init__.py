"""Differentiable rasterization with nvdiffrast's API on CPU and GPU.

``import synth_torch.render as dr`` works for code written against ``nvdiffrast.torch``. Two extensions serve
passes that need visibility only: :func:`depth_map` (shadow maps) and :func:`coverage` (pixels per range).
Conventions
(clip space, pixel centres, row order, barycentric order, triangle ids) are in ``docs/rendering.md``.
"""

from synth_torch.render._antialias import TopologyHash, antialias, antialias_construct_topology_hash
from synth_torch.render._interpolate import interpolate
from synth_torch.render._rasterize import rasterize
from synth_torch.render._texture import TextureMip, texture, texture_construct_mip
from synth_torch.render._visibility import coverage, depth_map
from synth_torch.render.context import (
    BACKENDS,
    RasterizeContext,
    RasterizeCudaContext,
    RasterizeGLContext,
    nvdiffrast_available,
)

__all__ = [
    "BACKENDS",
    "RasterizeContext",
    "RasterizeCudaContext",
    "RasterizeGLContext",
    "TextureMip",
    "TopologyHash",
    "antialias",
    "antialias_construct_topology_hash",
    "coverage",
    "depth_map",
    "interpolate",
    "nvdiffrast_available",
    "rasterize",
    "texture",
    "texture_construct_mip",
]
