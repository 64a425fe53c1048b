"""Assembling a batch's triangles from a :class:`~synth_torch.spec.types.SceneSpec`.

Every image has the same padded layout (range mode, ``docs/rendering.md``): S blocks of F triangles, one per object
slot (the template of the slot's shape, padded to F = the bank's largest face count with degenerate triangles),
then the two triangles of its ground quad. Invalid slots get zero scale: their triangles are degenerate and never
cover a pixel. Nothing in the padded assembly depends on the data's values, so it runs without host
synchronisation on any device and is differentiable in poses, scales and the camera.

``compact=True`` (the default on the CPU, where it costs no synchronisation) then drops the padding and the
invalid slots' triangles, keeping the order of the rest: rasterization results are identical (ties still go to
the earlier triangle), with triangle ids renumbered. ``face_slot`` maps a triangle to its slot either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.camera import Camera, mat_vec
from synth_torch.render import TopologyHash, antialias_construct_topology_hash
from synth_torch.scene.library import TemplateBank, template_bank
from synth_torch.spec.constants import GROUND_HALF_SIZE, on_device
from synth_torch.spec.types import SceneSpec

__all__ = ["SceneGeometry", "assemble", "camera_clip"]

_QUAD = ((0, 1, 2), (0, 2, 3))
_QUAD_UV = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class SceneGeometry:
    """All triangles of a batch of B images with S object slots of F triangles each (layout: module docstring).

    Vertex buffers (range mode, one row per vertex of every image; ``Vs`` vertices per slot, 4 per ground):
        world [V, 3] world positions; local [V, 3] object-frame positions in metres (the ground's are world
        positions). Every image has the same number of vertices: :meth:`per_image` views them as [B, V / B, 3].
    normals [N, 3] world-frame unit normals (their own index buffer, ``normal_tri``), N / B per image.
    colors [V, 3] per-vertex RGB from the mesh files (ones on the ground and shapes without), indexed by ``tri``
    like ``world``; [0, 3] when no shape of the batch has vertex colours.
    uvs [U, 2] texture coordinates (``uv_tri``), shared by every image.
    tri, normal_tri, uv_tri [T, 3] int32; face_slot [T] int32: the slot of each triangle (S: the ground).
    ranges [B, 2], object_ranges [B, 2] (without the ground), slot_ranges [B * S, 2]: CPU int32 (start, count).
    slot_vertices [B, S, Vs, 3] world positions of each slot's vertices (for amodal boxes).
    topology: edge adjacency of ``tri`` for :func:`~synth_torch.render.antialias`.
    num_slots S.
    """

    world: Tensor
    local: Tensor
    normals: Tensor
    colors: Tensor
    uvs: Tensor
    tri: Tensor
    normal_tri: Tensor
    uv_tri: Tensor
    ranges: Tensor
    object_ranges: Tensor
    slot_ranges: Tensor
    slot_vertices: Tensor
    face_slot: Tensor
    topology: TopologyHash
    num_slots: int

    @property
    def batch_size(self) -> int:
        return self.ranges.shape[0]

    def per_image(self, rows: Tensor) -> Tensor:
        """A vertex or normal buffer [B * n, C] viewed as [B, n, C] (every image has the same layout)."""
        return rows.view(self.batch_size, -1, rows.shape[-1])



def _ranges(per_slot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ranges, object_ranges, slot_ranges) on the CPU from the triangle count of every slot [B, S] (the ground's
    two triangles follow each image's slots)."""
    per_slot = per_slot.cpu().to(torch.int64)
    B, S = per_slot.shape
    objects = per_slot.sum(1)
    counts = objects + 2
    start = torch.cumsum(counts, 0) - counts
    slot_start = start[:, None] + torch.cumsum(per_slot, 1) - per_slot
    as32 = lambda *cols: torch.stack(cols, -1).to(torch.int32)  # noqa: E731
    return as32(start, counts), as32(start, objects), as32(slot_start.reshape(-1), per_slot.reshape(-1))


def assemble(spec: SceneSpec, bank: TemplateBank | None = None, compact: bool | None = None,
             fast: bool | None = None) -> SceneGeometry:
    """Instantiate every slot's template and the ground quad into one set of range-mode buffers.

    ``compact``: drop padding and invalid slots (default: on the CPU; see the module docstring). ``fast``: the
    compiled CPU assembly (:mod:`synth_torch.scene._kernels`; default: compact CPU batches needing no gradient);
    otherwise the torch reference.
    """
    device = spec.device
    compact = device.type == "cpu" if compact is None else compact
    bank = template_bank(spec.shapes, device) if bank is None else bank
    if fast is None:
        fast = compact and device.type == "cpu" and not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (spec.objects.scale, spec.objects.rotation, spec.objects.translation)))
    if fast:
        return _assemble_fast(spec, bank)
    return _assemble_torch(spec, bank, compact)


def _vertex_colors(spec: SceneSpec, bank: TemplateBank, Vs: int) -> Tensor:
    """[B * (S * Vs + 4), 3] per-vertex colours in the batch's vertex layout, or [0, 3] without vertex colours."""
    if not bank.colors.shape[-1] or not spec.num_slots:
        return torch.zeros(0, 3, device=spec.device)
    B, S = spec.objects.valid.shape
    colors = bank.colors[spec.objects.shape.clamp(min=0)][:, :, :Vs].reshape(B, S * Vs, 3)
    return torch.cat((colors, colors.new_ones(B, 4, 3)), 1).reshape(-1, 3)


def _quad_topology() -> Tensor:
    return antialias_construct_topology_hash(torch.tensor(_QUAD)).opposite


def _assemble_fast(spec: SceneSpec, bank: TemplateBank) -> SceneGeometry:
    from synth_torch.render import cpu
    from synth_torch.scene import _kernels

    cpu.use_torch_threads()
    obj = spec.objects
    B, S = obj.valid.shape
    Vs, Ns, U = (bank.max_vertices, bank.max_normals, bank.uvs.shape[1]) if S else (0, 0, 0)
    shape = obj.shape.clamp(min=0)
    world, local = torch.empty(B, S * Vs + 4, 3), torch.empty(B, S * Vs + 4, 3)
    normals = torch.empty(B, S * Ns + 1, 3)
    f32 = lambda t: t.detach().to(torch.float32).contiguous().numpy()  # noqa: E731
    _kernels.instance_vertices(f32(bank.vertices[:, :Vs]), f32(bank.normals[:, :Ns]), shape.numpy(),
                               obj.valid.numpy(), f32(obj.scale), f32(obj.rotation), f32(obj.translation),
                               GROUND_HALF_SIZE[spec.surface], world.numpy(), local.numpy(), normals.numpy())
    total = int((bank.num_faces[shape] * obj.valid).sum()) + 2 * B
    tri, normal_tri, uv_tri = (torch.empty(total, 3, dtype=torch.int32) for _ in range(3))
    opposite = torch.empty(total, 3, dtype=torch.int64)
    face_slot, per_slot = torch.empty(total, dtype=torch.int32), torch.empty(B, S, dtype=torch.int64)
    _kernels.compact_faces(bank.faces.numpy(), bank.normal_faces.numpy(), bank.uv_faces.numpy(), bank.opposite.numpy(),
                           bank.num_faces.numpy(), Vs, Ns, U, torch.tensor(_QUAD).numpy(), _quad_topology().numpy(),
                           shape.numpy(), obj.valid.numpy(), tri.numpy(), normal_tri.numpy(), uv_tri.numpy(),
                           opposite.numpy(), face_slot.numpy(), per_slot.numpy())
    uvs = torch.cat((bank.uvs.reshape(-1, 2), torch.tensor(_QUAD_UV)))
    ranges, object_ranges, slot_ranges = _ranges(per_slot)
    return SceneGeometry(world=world.view(-1, 3), local=local.view(-1, 3), normals=normals.view(-1, 3),
                         colors=_vertex_colors(spec, bank, Vs), uvs=uvs,
                         tri=tri, normal_tri=normal_tri, uv_tri=uv_tri, ranges=ranges, object_ranges=object_ranges,
                         slot_ranges=slot_ranges, slot_vertices=world[:, :S * Vs].view(B, S, Vs, 3),
                         face_slot=face_slot, topology=TopologyHash(opposite, total), num_slots=S)


def _assemble_torch(spec: SceneSpec, bank: TemplateBank, compact: bool) -> SceneGeometry:
    device = spec.device
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
    corners = on_device(((-g, -g, 0.0), (g, -g, 0.0), (g, g, 0.0), (-g, g, 0.0)), device)
    ground = corners.expand(B, 4, 3).to(world.dtype)
    world_flat = torch.cat((world.reshape(B, S * Vs, 3), ground), 1).reshape(-1, 3)
    local_flat = torch.cat((local.reshape(B, S * Vs, 3), ground), 1).reshape(-1, 3)
    up = on_device((0.0, 0.0, 1.0), device).expand(B, 1, 3).to(nrm.dtype)
    normals = torch.cat((nrm.reshape(B, S * Ns, 3), up), 1).reshape(-1, 3)

    b_idx = torch.arange(B, device=device)
    s_idx = torch.arange(S, device=device)
    quad = on_device(_QUAD, device)
    faces = bank.faces[shape][:, :, :F] + (b_idx[:, None, None, None] * V_img + s_idx[None, :, None, None] * Vs)
    ground_faces = quad[None] + (b_idx * V_img + S * Vs)[:, None, None]
    tri = torch.cat((faces.reshape(B, S * F, 3), ground_faces), 1).reshape(-1, 3)
    nfaces = bank.normal_faces[shape][:, :, :F] + (b_idx[:, None, None, None] * N_img + s_idx[None, :, None, None] * Ns)
    ground_n = (b_idx * N_img + S * Ns)[:, None, None].expand(B, 2, 3)
    normal_tri = torch.cat((nfaces.reshape(B, S * F, 3), ground_n), 1).reshape(-1, 3)
    ufaces = bank.uv_faces[shape][:, :, :F] + shape[:, :, None, None] * U
    ground_uv = (quad + bank.uvs.shape[0] * U)[None].expand(B, 2, 3)
    uv_tri = torch.cat((ufaces.reshape(B, S * F, 3), ground_uv), 1).reshape(-1, 3)
    uvs = torch.cat((bank.uvs.reshape(-1, 2), on_device(_QUAD_UV, device)))
    opp = bank.opposite[shape][:, :, :F]
    opp = torch.where(opp >= 0, opp + (b_idx[:, None, None, None] * V_img + s_idx[None, :, None, None] * Vs), -1)
    quad_opp = on_device(_quad_topology().tolist(), device, torch.int64)
    ground_opp = torch.where(quad_opp >= 0, quad_opp[None] + (b_idx * V_img + S * Vs)[:, None, None], -1)
    opposite = torch.cat((opp.reshape(B, S * F, 3), ground_opp), 1).reshape(-1, 3)
    face_slot = torch.cat((s_idx.repeat_interleave(F), torch.full((2,), S, device=device))).expand(B, -1).reshape(-1)
    real = (torch.arange(F, device=device) < bank.num_faces[shape][..., None]) & obj.valid[..., None]  # [B, S, F]
    if compact:
        keep = torch.cat((real.reshape(B, S * F), torch.ones(B, 2, dtype=torch.bool, device=device)), 1).reshape(-1)
        index = keep.nonzero().squeeze(1)
        tri, normal_tri, uv_tri, opposite, face_slot = (t[index] for t in (tri, normal_tri, uv_tri, opposite, face_slot))
        ranges, object_ranges, slot_ranges = _ranges(real.sum(-1))
    else:
        ranges, object_ranges, slot_ranges = _ranges(torch.full((B, S), F))
    return SceneGeometry(world=world_flat, local=local_flat,
                         normals=normals, colors=_vertex_colors(spec, bank, Vs), uvs=uvs, tri=tri.to(torch.int32),
                         normal_tri=normal_tri.to(torch.int32), uv_tri=uv_tri.to(torch.int32), ranges=ranges,
                         object_ranges=object_ranges, slot_ranges=slot_ranges, slot_vertices=world,
                         face_slot=face_slot.to(torch.int32), topology=TopologyHash(opposite, opposite.shape[0]),
                         num_slots=S)


def camera_clip(spec: SceneSpec, geom: SceneGeometry, resolution: tuple[int, int], near: float, far: float
                ) -> tuple[Tensor, Tensor]:
    """(camera-frame positions [V, 3], clip-space positions [V, 4]) of every vertex."""
    cam = Camera(spec.camera.K, spec.camera.world_to_cam, resolution[1], resolution[0], near, far)
    T = spec.camera.world_to_cam[:, None]
    camera = mat_vec(T[..., :3, :3], geom.per_image(geom.world)) + T[..., :3, 3]
    P = cam.projection_matrix()[:, None]
    clip = mat_vec(P[..., :3], camera) + P[..., 3]
    return camera.reshape(-1, 3), clip.reshape(-1, 4)
