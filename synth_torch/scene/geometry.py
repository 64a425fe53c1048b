"""Assembling a batch's triangles from a :class:`~synth_torch.spec.types.SceneSpec`, with fixed sizes.

Every image has the same layout (range mode, ``docs/rendering.md``): S blocks of F triangles, one per object slot
(the template of the slot's shape, padded to F = the bank's largest face count with degenerate triangles), then
the two triangles of its ground quad. Image b's triangles are ``b * T + [0, T)`` with ``T = S * F + 2``, and
a triangle id's slot is ``min((id % T) // F, S)`` (S: the ground). Invalid slots get zero scale: their
triangles are degenerate and never cover a pixel. Nothing in the assembly depends on the data's values, so it
runs without host synchronisation on any device and is differentiable in poses, scales and the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.camera import Camera, mat_vec
from synth_torch.render import TopologyHash, antialias_construct_topology_hash
from synth_torch.scene.library import TemplateBank, template_bank
from synth_torch.spec.constants import GROUND_HALF_SIZE
from synth_torch.spec.types import SceneSpec

__all__ = ["SceneGeometry", "assemble", "camera_clip"]

_QUAD = ((0, 1, 2), (0, 2, 3))


@dataclass(frozen=True)
class SceneGeometry:
    """All triangles of a batch of B images with S object slots of F triangles each (layout: module docstring).

    Vertex buffers (range mode, one row per vertex of every image; ``Vs`` vertices per slot, 4 per ground):
        world [V, 3] world positions; local [V, 3] object-frame positions in metres (the ground's are world
        positions); vertex_image [V] long.
    normals [N, 3] world-frame unit normals (their own index buffer, ``normal_tri``); normal_image [N] long.
    uvs [U, 2] texture coordinates (``uv_tri``), shared by every image.
    tri, normal_tri, uv_tri [B * T, 3] int32.
    ranges [B, 2], object_ranges [B, 2] (without the ground), slot_ranges [B * S, 2]: CPU int32 (start, count).
    slot_vertices [B, S, Vs, 3] world positions of each slot's vertices (for amodal boxes).
    topology: edge adjacency of ``tri`` for :func:`~synth_torch.render.antialias`.
    num_slots S; faces_per_slot F.
    """

    world: Tensor
    local: Tensor
    vertex_image: Tensor
    normals: Tensor
    normal_image: Tensor
    uvs: Tensor
    tri: Tensor
    normal_tri: Tensor
    uv_tri: Tensor
    ranges: Tensor
    object_ranges: Tensor
    slot_ranges: Tensor
    slot_vertices: Tensor
    topology: TopologyHash
    num_slots: int
    faces_per_slot: int

    @property
    def faces_per_image(self) -> int:
        return self.num_slots * self.faces_per_slot + 2

    def face_slot(self, tri_id: Tensor) -> Tensor:
        """Slot (0..S-1, S for the ground) of global triangle ids (any shape, >= 0)."""
        return torch.clamp((tri_id % self.faces_per_image) // max(self.faces_per_slot, 1), max=self.num_slots)


def _ranges(B: int, S: int, F: int) -> tuple[Tensor, Tensor, Tensor]:
    T = S * F + 2
    start = torch.arange(B, dtype=torch.int32) * T
    ranges = torch.stack((start, torch.full((B,), T, dtype=torch.int32)), 1)
    objects = torch.stack((start, torch.full((B,), S * F, dtype=torch.int32)), 1)
    slot_start = (start[:, None] + torch.arange(S, dtype=torch.int32)[None] * F).reshape(-1)
    slots = torch.stack((slot_start, torch.full((B * S,), F, dtype=torch.int32)), 1)
    return ranges, objects, slots


def assemble(spec: SceneSpec, bank: TemplateBank | None = None) -> SceneGeometry:
    """Instantiate every slot's template and the ground quad into one set of range-mode buffers."""
    device = spec.device
    bank = template_bank(spec.shapes, device) if bank is None else bank
    obj = spec.objects
    B, S = obj.valid.shape
    Vs, Ns, F, U = bank.max_vertices, bank.max_normals, bank.max_faces, bank.uvs.shape[1]
    if S == 0:
        Vs = Ns = F = 0
    V_img, N_img = S * Vs + 4, S * Ns + 1
    shape = obj.shape.clamp(min=0)
    scale = obj.scale * obj.valid[..., None]
    R, t = obj.rotation, obj.translation
    local = bank.vertices[shape][:, :, :Vs] * scale[:, :, None]  # [B, S, Vs, 3]
    world = mat_vec(R[:, :, None], local) + t[:, :, None]
    nrm = mat_vec(R[:, :, None], bank.normals[shape][:, :, :Ns] / obj.scale.clamp_min(1e-12)[:, :, None])
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    g = GROUND_HALF_SIZE[spec.surface]
    corners = torch.tensor([[-g, -g, 0.0], [g, -g, 0.0], [g, g, 0.0], [-g, g, 0.0]], device=device)
    ground = corners.expand(B, 4, 3).to(world.dtype)
    world_flat = torch.cat((world.reshape(B, S * Vs, 3), ground), 1).reshape(-1, 3)
    local_flat = torch.cat((local.reshape(B, S * Vs, 3), ground), 1).reshape(-1, 3)
    up = torch.tensor([0.0, 0.0, 1.0], device=device).expand(B, 1, 3).to(nrm.dtype)
    normals = torch.cat((nrm.reshape(B, S * Ns, 3), up), 1).reshape(-1, 3)

    b_idx = torch.arange(B, device=device)
    s_idx = torch.arange(S, device=device)
    quad = torch.tensor(_QUAD, device=device)
    faces = bank.faces[shape][:, :, :F] + (b_idx[:, None, None, None] * V_img + s_idx[None, :, None, None] * Vs)
    ground_faces = quad[None] + (b_idx * V_img + S * Vs)[:, None, None]
    tri = torch.cat((faces.reshape(B, S * F, 3), ground_faces), 1).reshape(-1, 3)
    nfaces = bank.normal_faces[shape][:, :, :F] + (b_idx[:, None, None, None] * N_img + s_idx[None, :, None, None] * Ns)
    ground_n = (b_idx * N_img + S * Ns)[:, None, None].expand(B, 2, 3)
    normal_tri = torch.cat((nfaces.reshape(B, S * F, 3), ground_n), 1).reshape(-1, 3)
    ufaces = bank.uv_faces[shape][:, :, :F] + shape[:, :, None, None] * U
    ground_uv = (quad + bank.uvs.shape[0] * U)[None].expand(B, 2, 3)
    uv_tri = torch.cat((ufaces.reshape(B, S * F, 3), ground_uv), 1).reshape(-1, 3)
    quad_uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], device=device)
    uvs = torch.cat((bank.uvs.reshape(-1, 2), quad_uv))
    opp = bank.opposite[shape][:, :, :F]
    opp = torch.where(opp >= 0, opp + (b_idx[:, None, None, None] * V_img + s_idx[None, :, None, None] * Vs), -1)
    quad_opp = antialias_construct_topology_hash(quad).opposite.to(device)
    ground_opp = torch.where(quad_opp >= 0, quad_opp[None] + (b_idx * V_img + S * Vs)[:, None, None], -1)
    opposite = torch.cat((opp.reshape(B, S * F, 3), ground_opp), 1).reshape(-1, 3)
    ranges, object_ranges, slot_ranges = _ranges(B, S, F)
    return SceneGeometry(world=world_flat, local=local_flat,
                         vertex_image=b_idx.repeat_interleave(V_img), normals=normals,
                         normal_image=b_idx.repeat_interleave(N_img), uvs=uvs, tri=tri.to(torch.int32),
                         normal_tri=normal_tri.to(torch.int32), uv_tri=uv_tri.to(torch.int32), ranges=ranges,
                         object_ranges=object_ranges, slot_ranges=slot_ranges, slot_vertices=world,
                         topology=TopologyHash(opposite, opposite.shape[0]), num_slots=S,
                         faces_per_slot=F)


def camera_clip(spec: SceneSpec, geom: SceneGeometry, resolution: tuple[int, int], near: float, far: float
                ) -> tuple[Tensor, Tensor]:
    """(camera-frame positions [V, 3], clip-space positions [V, 4]) of every vertex."""
    cam = Camera(spec.camera.K, spec.camera.world_to_cam, resolution[1], resolution[0], near, far)
    image = geom.vertex_image
    R, t = spec.camera.world_to_cam[image, :3, :3], spec.camera.world_to_cam[image, :3, 3]
    camera = mat_vec(R, geom.world) + t
    P = cam.projection_matrix()[image]
    return camera, mat_vec(P[:, :, :3], camera) + P[:, :, 3]
