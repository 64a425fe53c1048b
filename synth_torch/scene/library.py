"""Mesh templates used by scenes: every shape normalised to the box [-0.5, 0.5]^3, with keypoints."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from synth_torch.scene.meshes import PRIMITIVES, Mesh, load_mesh

NUM_KEYPOINTS = 8
# Scene templates are tessellated for ~2-3k triangles per 10-object image.
TESSELLATION = {"sphere": dict(segments=20, rings=10), "torus": dict(segments=20, sides=10),
                "capsule": dict(segments=20, rings=4), "cylinder": dict(segments=20), "cone": dict(segments=20)}
_CORNERS = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)])


@dataclass(frozen=True)
class Template:
    """A shape whose bounding box is exactly [-0.5, 0.5]^3 (so a slot's scale is its box size).

    ``proportions`` [3] are the shape's natural extents over the largest one; ``keypoints`` [8, 3] are
    the surface vertices furthest along the eight box-corner directions (box corners for a box).
    """

    mesh: Mesh
    proportions: torch.Tensor
    keypoints: torch.Tensor


@lru_cache(maxsize=64)
def template(shape: str) -> Template:
    """The normalised template of a primitive name or mesh file path (cached)."""
    mesh = PRIMITIVES[shape](**TESSELLATION.get(shape, {})) if shape in PRIMITIVES else load_mesh(shape)
    lo, hi = mesh.bounds()
    extent = hi - lo
    if float(extent.max()) <= 0:
        raise ValueError(f"shape {shape!r} has a degenerate bounding box")
    safe = torch.where(extent > 1e-6 * extent.max(), extent, extent.max())
    centre = (hi + lo) / 2
    matrix = torch.eye(4)
    matrix[:3, :3] = torch.diag(1.0 / safe)
    matrix[:3, 3] = -centre / safe
    unit = mesh.transformed(matrix)
    keypoints = unit.vertices[(unit.vertices @ _CORNERS.T).argmax(0)]
    return Template(unit, extent / extent.max(), keypoints)


def shape_proportions(shapes: tuple[str, ...]) -> torch.Tensor:
    """[len(shapes), 3] natural proportions, used by the sampler to size objects."""
    return torch.stack([template(s).proportions for s in shapes]) if shapes else torch.zeros(0, 3)
