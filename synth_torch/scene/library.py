"""Mesh templates used by scenes: every shape normalised to the box [-0.5, 0.5]^3, with keypoints.

:func:`template_bank` pads the templates of a scene's shapes to common sizes, so a batch's geometry is
assembled with fixed shapes (one block of ``max_faces`` triangles per object slot) and no data-dependent
indexing: padded faces are degenerate ``(0, 0, 0)`` triangles, which rasterize to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from synth_torch.render import antialias_construct_topology_hash
from synth_torch.scene.meshes import PRIMITIVES, Mesh, load_mesh
from synth_torch.spec.constants import NUM_KEYPOINTS

# Scene templates are tessellated for ~2-3k triangles per 10-object image.
TESSELLATION = {"sphere": dict(segments=20, rings=10), "torus": dict(segments=20, sides=10),
                "capsule": dict(segments=20, rings=4), "cylinder": dict(segments=20), "cone": dict(segments=20)}
_CORNERS = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(NUM_KEYPOINTS)])


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
    unit = mesh.transformed(matrix).compacted()
    keypoints = unit.vertices[(unit.vertices @ _CORNERS.T).argmax(0)]
    return Template(unit, extent / extent.max(), keypoints)


def shape_proportions(shapes: tuple[str, ...]) -> torch.Tensor:
    """[len(shapes), 3] natural proportions, used by the sampler to size objects."""
    return torch.stack([template(s).proportions for s in shapes]) if shapes else torch.zeros(0, 3)


@dataclass(frozen=True)
class TemplateBank:
    """The templates of ``shapes``, padded to common sizes (NS shapes).

    vertices [NS, V, 3] (padded by repeating vertex 0, so extents are unchanged); normals [NS, N, 3];
    uvs [NS, U, 2]; faces, normal_faces, uv_faces [NS, F, 3] int64 (padded with (0, 0, 0): degenerate);
    keypoints [NS, 8, 3]; num_faces [NS]; opposite [NS, F, 3]: per edge of each face, the opposite vertex of the
    neighbouring face (-1: none), as :func:`~synth_torch.render.antialias_construct_topology_hash` builds it.
    """

    shapes: tuple[str, ...]
    vertices: torch.Tensor
    normals: torch.Tensor
    uvs: torch.Tensor
    faces: torch.Tensor
    normal_faces: torch.Tensor
    uv_faces: torch.Tensor
    keypoints: torch.Tensor
    num_faces: torch.Tensor
    opposite: torch.Tensor

    @property
    def max_vertices(self) -> int:
        return self.vertices.shape[1]

    @property
    def max_normals(self) -> int:
        return self.normals.shape[1]

    @property
    def max_faces(self) -> int:
        return self.faces.shape[1]

    def to(self, device) -> TemplateBank:
        return _bank_on(self.shapes, str(torch.device(device)))


def _pad(rows: list[torch.Tensor], fill_first: bool) -> torch.Tensor:
    n = max(r.shape[0] for r in rows)
    out = []
    for r in rows:
        pad = r[:1].expand(n - r.shape[0], -1) if fill_first else r.new_zeros(n - r.shape[0], r.shape[1])
        out.append(torch.cat((r, pad)))
    return torch.stack(out)


def _padding(meshes: list[Mesh]) -> torch.Tensor:
    """[NS, F, 1]: 1 on padded faces (whose opposite vertices become -1), else 0."""
    n = max(m.faces.shape[0] for m in meshes)
    return torch.stack([(torch.arange(n) >= m.faces.shape[0]).long() for m in meshes])[..., None]


@lru_cache(maxsize=64)
def _bank_on(shapes: tuple[str, ...], device: str) -> TemplateBank:
    if not shapes:
        z3, zi = torch.zeros(0, 1, 3), torch.zeros(0, 1, 3, dtype=torch.long)
        bank = TemplateBank(shapes, z3, z3, torch.zeros(0, 1, 2), zi, zi, zi, torch.zeros(0, NUM_KEYPOINTS, 3),
                            torch.zeros(0, dtype=torch.long), zi)
    else:
        meshes = [template(s).mesh for s in shapes]
        bank = TemplateBank(
            shapes=shapes, vertices=_pad([m.vertices for m in meshes], True), normals=_pad([m.normals for m in meshes], True),
            uvs=_pad([m.uvs for m in meshes], True), faces=_pad([m.faces for m in meshes], False),
            normal_faces=_pad([m.normal_faces for m in meshes], False), uv_faces=_pad([m.uv_faces for m in meshes], False),
            keypoints=torch.stack([template(s).keypoints for s in shapes]),
            num_faces=torch.tensor([m.faces.shape[0] for m in meshes]),
            opposite=_pad([antialias_construct_topology_hash(m.faces).opposite for m in meshes], False) - _padding(meshes))
    if device == "cpu":
        return bank
    return TemplateBank(bank.shapes, *(getattr(bank, f).to(device) for f in
                                       ("vertices", "normals", "uvs", "faces", "normal_faces", "uv_faces", "keypoints",
                                        "num_faces", "opposite")))


def template_bank(shapes: tuple[str, ...], device="cpu") -> TemplateBank:
    """The padded templates of ``shapes`` on ``device`` (cached)."""
    return _bank_on(tuple(shapes), str(torch.device(device)))
