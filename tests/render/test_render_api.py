"""Public API snapshot of ``synth_torch.render``: removing or renaming a name, a parameter, a default or a field
must fail loudly."""

from __future__ import annotations

import dataclasses
import inspect

import synth_torch.render as dr

# name -> parameters with their defaults (functions), field names (dataclasses), or the value (constants)
EXPECTED = {
    "BACKENDS": ("auto", "nvdiffrast", "cpu", "torch"),
    "RasterizeContext": ["device", "backend", "_native"],
    "RasterizeCudaContext": ["device=None", "backend='auto'"],
    "RasterizeGLContext": ["output_db=True", "mode='automatic'", "device=None", "backend='auto'"],
    "TextureMip": ["levels"],
    "TopologyHash": ["opposite", "num_triangles"],
    "antialias": ["color", "rast", "pos", "tri", "topology_hash=None", "pos_gradient_boost=1.0"],
    "antialias_construct_topology_hash": ["tri"],
    "coverage": ["ctx", "pos", "tri", "resolution", "ranges"],
    "depth_map": ["ctx", "pos", "tri", "resolution", "ranges=None"],
    "interpolate": ["attr", "rast", "tri", "rast_db=None", "diff_attrs=None"],
    "nvdiffrast_available": [],
    "rasterize": ["ctx", "pos", "tri", "resolution", "ranges=None", "grad_db=True"],
    "texture": ["tex", "uv", "uv_da=None", "mip_level_bias=None", "mip=None", "filter_mode='auto'",
                "boundary_mode='wrap'", "max_mip_level=None"],
    "texture_construct_mip": ["tex", "max_mip_level=None", "cube_mode=False"],
}


def surface(obj):
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    if inspect.isfunction(obj):
        return [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in inspect.signature(obj).parameters.values()]
    return obj


def test_public_names_and_their_surface():
    assert sorted(dr.__all__) == sorted(EXPECTED)
    assert {name: surface(getattr(dr, name)) for name in dr.__all__} == EXPECTED


def test_signatures_follow_nvdiffrast():
    """The four ops and the two constructors take nvdiffrast's parameters in nvdiffrast's order."""
    nvdiffrast = {
        "rasterize": ["glctx", "pos", "tri", "resolution", "ranges", "grad_db"],
        "interpolate": ["attr", "rast", "tri", "rast_db", "diff_attrs"],
        "texture": ["tex", "uv", "uv_da", "mip_level_bias", "mip", "filter_mode", "boundary_mode", "max_mip_level"],
        "antialias": ["color", "rast", "pos", "tri", "topology_hash", "pos_gradient_boost"],
        "antialias_construct_topology_hash": ["tri"],
        "texture_construct_mip": ["tex", "max_mip_level", "cube_mode"],
    }
    for name, params in nvdiffrast.items():
        ours = [p.split("=")[0] for p in EXPECTED[name]]
        assert ours == ["ctx" if p == "glctx" else p for p in params], name
