"""Public API snapshot of ``synth_torch.render``: removing or renaming a name must fail loudly."""

from __future__ import annotations

import inspect

import synth_torch.render as dr

EXPECTED = [
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


def test_public_names():
    assert sorted(dr.__all__) == EXPECTED
    for name in EXPECTED:
        assert callable(getattr(dr, name)) or name == "BACKENDS", name
    assert dr.BACKENDS == ("auto", "nvdiffrast", "cpu", "torch")


def test_signatures_follow_nvdiffrast():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(dr.rasterize) == ["ctx", "pos", "tri", "resolution", "ranges", "grad_db"]
    assert params(dr.interpolate) == ["attr", "rast", "tri", "rast_db", "diff_attrs"]
    assert params(dr.texture) == ["tex", "uv", "uv_da", "mip_level_bias", "mip", "filter_mode", "boundary_mode",
                                  "max_mip_level"]
    assert params(dr.antialias) == ["color", "rast", "pos", "tri", "topology_hash", "pos_gradient_boost"]
    assert params(dr.depth_map) == ["ctx", "pos", "tri", "resolution", "ranges"]
    assert params(dr.coverage) == ["ctx", "pos", "tri", "resolution", "ranges"]
