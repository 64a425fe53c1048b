"""Mesh templates used by scenes: every shape normalised to the box [-0.5, 0.5]^3, with keypoints.

A shape is named by a *shape key*: a primitive name, or a mesh file path with an optional up axis,
``"<path>|up=y"`` (:func:`shape_key`): the template is rotated so that this axis of the file points up (+z, the
world's up), e.g. ``y`` for glTF files, which are Y-up by specification.

:func:`template_bank` pads the templates of a scene's shapes to common sizes, so a batch's geometry is
assembled with fixed shapes (one block of ``max_faces`` triangles per object slot) and no data-dependent
indexing: padded faces are degenerate ``(0, 0, 0)`` triangles, which rasterize to nothing. The bank also holds
each shape's surface colour from its file: vertex colours and a base colour texture (resized to a common
power-of-two square for mipmapped lookups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from synth_torch.render import antialias_construct_topology_hash
from synth_torch.scene.meshes import PRIMITIVES, Mesh, load_mesh
from synth_torch.spec.constants import NUM_KEYPOINTS

UP_AXES = ("z", "y", "x", "-z", "-y", "-x")
# Rotations taking each up axis to +z (right-handed, so the shape is not mirrored).
_UP_ROTATION = {"z": ((1, 0, 0), (0, 1, 0), (0, 0, 1)), "y": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
                "x": ((0, 0, -1), (0, 1, 0), (1, 0, 0)), "-z": ((1, 0, 0), (0, -1, 0), (0, 0, -1)),
                "-y": ((1, 0, 0), (0, 0, 1), (0, -1, 0)), "-x": ((0, 0, 1), (0, 1, 0), (-1, 0, 0))}
MAX_TEXTURE_SIZE = 1024


def shape_key(path: str, up: str = "z") -> str:
    """The key of a primitive or of a mesh file seen with ``up`` as its up axis (one of :data:`UP_AXES`)."""
    if up not in UP_AXES:
        raise ValueError(f"up axis must be one of {UP_AXES}, got {up!r}")
    return path if up == "z" or path in PRIMITIVES else f"{path}|up={up}"


def parse_shape_key(key: str) -> tuple[str, str]:
    """(path or primitive name, up axis) of a shape key."""
    path, sep, up = key.rpartition("|up=")
    return (path, up) if sep and up in UP_AXES else (key, "z")

# Scene templates are tessellated for ~2-3k triangles per 10-object image.
TESSELLATION = {"sphere": dict(segments=20, rings=10), "torus": dict(segments=20, sides=10),
                "capsule": dict(segments=20, rings=4), "cylinder": dict(segments=20), "cone": dict(segments=20)}
_CORNERS = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(NUM_KEYPOINTS)])


@dataclass(frozen=True)
class Template:
    """A shape whose bounding box is exactly [-0.5, 0.5]^3 (so a slot's scale is its box size).

    ``proportions`` [3] are the shape's natural extents over the largest one; ``extent`` [3] its extents in the
    file's units (after the up-axis rotation); ``keypoints`` [8, 3] are the surface vertices furthest along the
    eight box-corner directions (box corners for a box).
    """

    mesh: Mesh
    proportions: torch.Tensor
    extent: torch.Tensor
    keypoints: torch.Tensor


@lru_cache(maxsize=256)
def template(shape: str) -> Template:
    """The normalised template of a shape key (a primitive name or mesh file path, :func:`shape_key`; cached)."""
    path, up = parse_shape_key(shape)
    mesh = PRIMITIVES[path](**TESSELLATION.get(path, {})) if path in PRIMITIVES else load_mesh(path)
    if up != "z":
        rotation = torch.eye(4)
        rotation[:3, :3] = torch.tensor(_UP_ROTATION[up], dtype=torch.float32)
        mesh = mesh.transformed(rotation)
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
    return Template(unit, extent / extent.max(), extent, keypoints)


def shape_proportions(shapes: tuple[str, ...]) -> torch.Tensor:
    """[len(shapes), 3] natural proportions, used by the sampler to size objects."""
    return torch.stack([template(s).proportions for s in shapes]) if shapes else torch.zeros(0, 3)


def shape_extents(shapes: tuple[str, ...]) -> torch.Tensor:
    """[len(shapes)] largest extent of each shape in its file's units (a category's ``scale`` multiplies it)."""
    return torch.stack([template(s).extent.max() for s in shapes]) if shapes else torch.zeros(0)


def shape_has_colors(shapes: tuple[str, ...]) -> torch.Tensor:
    """[len(shapes)] bool: the shape's file gives its surface colour (vertex colours or a texture)."""
    return torch.tensor([template(s).mesh.colors is not None or template(s).mesh.texture is not None
                         for s in shapes], dtype=torch.bool)


@dataclass(frozen=True)
class TemplateBank:
    """The templates of ``shapes``, padded to common sizes (NS shapes).

    vertices [NS, V, 3] (padded by repeating vertex 0, so extents are unchanged); normals [NS, N, 3];
    uvs [NS, U, 2]; faces, normal_faces, uv_faces [NS, F, 3] int64 (padded with (0, 0, 0): degenerate);
    keypoints [NS, 8, 3]; num_faces [NS]; opposite [NS, F, 3]: per edge of each face, the opposite vertex of the
    neighbouring face (-1: none), as :func:`~synth_torch.render.antialias_construct_topology_hash` builds it.
    Surface colours from the files: colors [NS, V, 3] per-vertex RGB ([NS, V, 0] when no shape has vertex colours;
    ones for shapes without); textures [NT, T, T, 3] the shapes' base colour textures resized to one power-of-two
    side T; texture_index [NS] long (-1: no texture).
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
    colors: torch.Tensor
    textures: torch.Tensor
    texture_index: torch.Tensor

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


def _surface(meshes: list[Mesh]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colors [NS, V, 3 or 0], textures [NT, T, T, 3], texture_index [NS]) of padded templates."""
    n = max(m.vertices.shape[0] for m in meshes)
    if any(m.colors is not None for m in meshes):
        colors = _pad([m.colors if m.colors is not None else torch.ones(m.vertices.shape[0], 3) for m in meshes], True)
    else:
        colors = torch.zeros(len(meshes), n, 0)
    images = [m.texture for m in meshes if m.texture is not None]
    index = torch.full((len(meshes),), -1, dtype=torch.long)
    if not images:
        return colors, torch.zeros(0, 1, 1, 3), index
    side = min(MAX_TEXTURE_SIZE, 2 ** math.ceil(math.log2(max(max(t.shape[:2]) for t in images))))
    textures = torch.stack([F.interpolate(t.permute(2, 0, 1)[None], size=(side, side), mode="bilinear",
                                          antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
                            for t in images])
    index[[i for i, m in enumerate(meshes) if m.texture is not None]] = torch.arange(len(images))
    return colors, textures, index


@lru_cache(maxsize=64)
def _bank_on(shapes: tuple[str, ...], device: str) -> TemplateBank:
    if not shapes:
        z3, zi = torch.zeros(0, 1, 3), torch.zeros(0, 1, 3, dtype=torch.long)
        bank = TemplateBank(shapes, z3, z3, torch.zeros(0, 1, 2), zi, zi, zi, torch.zeros(0, NUM_KEYPOINTS, 3),
                            torch.zeros(0, dtype=torch.long), zi, torch.zeros(0, 1, 0), torch.zeros(0, 1, 1, 3),
                            torch.zeros(0, dtype=torch.long))
    else:
        meshes = [template(s).mesh for s in shapes]
        bank = TemplateBank(
            shapes=shapes, vertices=_pad([m.vertices for m in meshes], True), normals=_pad([m.normals for m in meshes], True),
            uvs=_pad([m.uvs for m in meshes], True), faces=_pad([m.faces for m in meshes], False),
            normal_faces=_pad([m.normal_faces for m in meshes], False), uv_faces=_pad([m.uv_faces for m in meshes], False),
            keypoints=torch.stack([template(s).keypoints for s in shapes]),
            num_faces=torch.tensor([m.faces.shape[0] for m in meshes]),
            opposite=_pad([antialias_construct_topology_hash(m.faces).opposite for m in meshes], False) - _padding(meshes),
            **dict(zip(("colors", "textures", "texture_index"), _surface(meshes))))
    if device == "cpu":
        return bank
    return TemplateBank(bank.shapes, *(getattr(bank, f).to(device) for f in
                                       ("vertices", "normals", "uvs", "faces", "normal_faces", "uv_faces", "keypoints",
                                        "num_faces", "opposite", "colors", "textures", "texture_index")))


def template_bank(shapes: tuple[str, ...], device="cpu") -> TemplateBank:
    """The padded templates of ``shapes`` on ``device`` (cached)."""
    return _bank_on(tuple(shapes), str(torch.device(device)))
