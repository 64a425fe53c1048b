"""Rasterization passes of a batch into a :class:`GBuffer`: what shaders and label passes read.

Passes, in order (``fragments = rasterize(scene)``; shading and labels come after, in their own packages):

1. camera: one range-mode :func:`~synth_torch.render.rasterize` of every image;
2. shadow map: the objects seen from the directional light (orthographic), :func:`~synth_torch.render.depth_map`;
3. surface: per-pixel attributes interpolated from the vertices (camera-frame position and normal, object-frame
   position, light-space position, and texture coordinates when the scene uses ground images);
4. decals: the defects painted on the ground (:mod:`synth_torch.scene.decals`);
5. visibility: the pixels each object would cover if it were alone (:func:`~synth_torch.render.coverage`).

The vertex transforms and passes 3 and 4 have a compiled CPU forward (:mod:`synth_torch.scene._kernels`) used
when no gradient is needed, and a torch reference that is differentiable and runs on any device; ``fast``
chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

import synth_torch.render as dr
from synth_torch.camera import Camera, mat_vec
from synth_torch.render import cpu
from synth_torch.scene.decals import EXTENT, SIGN, decal_pass
from synth_torch.scene.geometry import SceneGeometry, camera_clip
from synth_torch.spec.constants import on_device
from synth_torch.spec.types import SceneSpec, tree_map

__all__ = ["GBuffer", "SHADOW_DEPTH_RANGE", "build_gbuffer", "light_frame", "needs_grad", "shadow_resolution"]

SHADOW_DEPTH_RANGE = 4.0  # metres of light-space depth mapped to the shadow map's z in [-1, 1]
NEAR, FAR = 0.05, 20.0  # camera clip distances (metres)


@dataclass(frozen=True)
class GBuffer:
    """Per-pixel results of the rasterization passes of B images (H x W) with S object slots.

    Camera pass: rast, rast_db [B, H, W, 4] (``docs/rendering.md``); clip [V, 4] clip-space vertices; tri [T, 3].
    Surface pass (zeros where no surface): slot [B, H, W] int32 (-1 empty, 0..S-1 object slot, S ground);
    position [B, H, W, 3] camera frame (metres; z is the depth); normal [B, H, W, 3] camera-frame unit normal
    facing the camera; local [B, H, W, 3] object-frame position in metres (world position on the ground);
    light [B, H, W, 3] light-space position (x, y in [-1, 1] across the shadow map, z its depth; zeros without
    shadows); uv [B, H, W, 2] and uv_da [B, H, W, 4] texture coordinates and their pixel derivatives (only
    when requested, else [B, H, W, 0]); color [B, H, W, 3] the mesh files' vertex colours (only when the
    geometry has vertex colours, else [B, H, W, 0]).
    Shadow pass: shadow_depth [B, n, n] nearest light-space depth (+inf where empty; [B, 0, 0] without shadows).
    Decal pass: defect [B, H, W] int32 (0 none, d + 1: defect slot d, the last one wins where they overlap);
    decal [B, H, W] opacity of the defects' darkening, ``1 - prod_d (1 - contrast_d * darkness_d)``.
    Visibility pass: coverage [B, S] int64, pixels each slot covers when rendered alone.
    """

    rast: Tensor
    rast_db: Tensor
    clip: Tensor
    tri: Tensor
    slot: Tensor
    position: Tensor
    normal: Tensor
    local: Tensor
    light: Tensor
    uv: Tensor
    uv_da: Tensor
    color: Tensor
    shadow_depth: Tensor
    defect: Tensor
    decal: Tensor
    coverage: Tensor

    @property
    def resolution(self) -> tuple[int, int]:
        return self.slot.shape[1], self.slot.shape[2]

    @property
    def covered(self) -> Tensor:
        return self.slot >= 0

    def detach(self) -> GBuffer:
        return tree_map(self, Tensor.detach)


def needs_grad(*values) -> bool:
    """True when autograd is on and a tensor among ``values`` (dataclasses searched) requires a gradient."""
    if not torch.is_grad_enabled():
        return False
    found = []
    tree_map(list(values), lambda t: found.append(t.requires_grad) or t)
    return any(found)


def shadow_resolution(resolution: tuple[int, int]) -> int:
    """Side of the shadow map for images of ``resolution``: the larger image side, within 64..512."""
    return int(min(max(max(resolution), 64), 512))


def light_frame(direction: Tensor) -> Tensor:
    """Rotations [B, 3, 3] from world to the light frame (z along ``-direction`` [B, 3], the light's travel)."""
    z = -direction / direction.norm(dim=-1, keepdim=True)
    helper = torch.where(z[:, 2:3].abs() > 0.99, on_device((1.0, 0.0, 0.0), z.device, z.dtype),
                         on_device((0.0, 0.0, 1.0), z.device, z.dtype))
    x = torch.linalg.cross(z, helper)
    x = x / x.norm(dim=-1, keepdim=True)
    return torch.stack((x, torch.linalg.cross(z, x), z), 1)


def _light_transform(spec: SceneSpec) -> tuple[Tensor, Tensor]:
    """(rotation [B, 3, 3] world -> light frame, scale [B, 3]): light-space positions are ``R p / scale``; the
    shadow map spans the objects' extent across the light and SHADOW_DEPTH_RANGE along it."""
    R = light_frame(spec.light.direction)
    obj = spec.objects
    centre = mat_vec(R[:, None], obj.translation)  # [B, S, 3]
    reach = centre[..., :2].abs().amax(-1) + 0.5 * obj.scale.norm(dim=-1)
    radius = torch.where(obj.valid, reach, torch.zeros_like(reach)).amax(1).detach() * 1.05 + 1e-3
    return R, torch.stack((radius, radius, torch.full_like(radius, SHADOW_DEPTH_RANGE)), -1)


def _vertices_torch(spec, geom, resolution, light):
    """(vertex attributes [V, 6|9], camera clip [V, 4], light clip [V, 4] or None, camera-frame normals [N, 3])."""
    camera_pts, clip = camera_clip(spec, geom, resolution, NEAR, FAR)
    attrs, light_clip = [camera_pts, geom.local], None
    if light is not None:
        R, scale = light
        q = (mat_vec(R[:, None], geom.per_image(geom.world)) / scale[:, None]).reshape(-1, 3)
        attrs.append(q)
        light_clip = torch.cat((q, torch.ones_like(q[:, :1])), -1)
    R_wc = spec.camera.world_to_cam[:, :3, :3]
    nattr = mat_vec(R_wc[:, None], geom.per_image(geom.normals)).reshape(-1, 3)
    return torch.cat(attrs, -1), clip.contiguous(), light_clip, nattr


def _vertices_fast(spec, geom, resolution, light):
    from synth_torch.scene import _kernels

    cpu.use_torch_threads()
    B = spec.batch_size
    world, local, normals = geom.per_image(geom.world), geom.per_image(geom.local), geom.per_image(geom.normals)
    V, N = world.shape[1], normals.shape[1]
    cam = Camera(spec.camera.K, spec.camera.world_to_cam, resolution[1], resolution[0], NEAR, FAR)
    R, scale = light if light is not None else (torch.zeros(B, 3, 3), torch.ones(B, 3))
    vattr = torch.empty(B, V, 9 if light is not None else 6)
    clip, light_clip = torch.empty(B, V, 4), torch.empty(B, V if light is not None else 0, 4)
    nattr = torch.empty(B, N, 3)
    f32 = lambda t: t.detach().to(torch.float32).contiguous().numpy()  # noqa: E731
    _kernels.vertex_attributes(f32(world), f32(local), f32(normals), f32(spec.camera.world_to_cam),
                               f32(cam.projection_matrix()), f32(R), f32(scale), vattr.numpy(), clip.numpy(),
                               light_clip.numpy(), nattr.numpy())
    return (vattr.view(B * V, -1), clip.view(-1, 4), light_clip.view(-1, 4) if light is not None else None,
            nattr.view(-1, 3))


def _surface_torch(geom, rast, vattr, nattr):
    interp, _ = dr.interpolate(vattr, rast, geom.tri)
    nrm, _ = dr.interpolate(nattr, rast, geom.normal_tri)
    covered = rast[..., 3] > 0
    position, local = interp[..., 0:3], interp[..., 3:6]
    light = interp[..., 6:9] if vattr.shape[1] == 9 else torch.zeros_like(position)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    away = (nrm * position).sum(-1, keepdim=True) > 0
    nrm = torch.where(away, -nrm, nrm)
    tri_id = rast[..., 3].to(torch.long) - 1
    slot = torch.where(covered, geom.face_slot[tri_id.clamp(min=0)].long(), torch.full_like(tri_id, -1)).to(torch.int32)
    keep = covered[..., None]
    zero = torch.zeros_like(position)
    return (slot, torch.where(keep, position, zero), torch.where(keep, nrm, zero), torch.where(keep, local, zero),
            torch.where(keep, light, zero))


def _surface_fast(geom, rast, vattr, nattr):
    from synth_torch.scene import _kernels

    cpu.use_torch_threads()
    B, H, W, _ = rast.shape
    slot = cpu.empty((B, H, W), torch.int32)
    out = [cpu.empty((B, H, W, 3), torch.float32) for _ in range(4)]
    _kernels.surface_rows(rast.contiguous().view(B * H, W * 4).numpy(), geom.tri.numpy(), geom.normal_tri.numpy(),
                          vattr.contiguous().numpy(), nattr.contiguous().numpy(), geom.face_slot.numpy(),
                          slot.view(B * H, W).numpy(),
                          *(o.view(B * H, W * 3).numpy() for o in out))
    position, local, light, normal = out
    return slot, position, normal, local, light


_EXTENT, _SIGN = np.array(EXTENT), np.array(SIGN)


def _decals_fast(spec, slot, local, position):
    from synth_torch.scene import _kernels

    B, H, W = slot.shape
    d = spec.defects
    defect = cpu.empty((B, H, W), torch.int32)
    decal = cpu.empty((B, H, W), torch.float32)
    a = d.angle.double()
    _kernels.decal_rows(slot.view(B * H, W).numpy(), local.view(B * H, W * 3).numpy(),
                        position.view(B * H, W * 3).numpy(), H, spec.num_slots,
                        spec.camera.K[:, 0, 0].double().numpy(), d.type.numpy(), d.label.numpy(), d.kind.numpy(),
                        d.center.double().numpy(), d.size.numpy(), torch.cos(a).numpy(), torch.sin(a).numpy(),
                        d.contrast.double().numpy(), d.seed.numpy(), _EXTENT, _SIGN,
                        defect.view(B * H, W).numpy(),
                        decal.view(B * H, W).numpy())
    return defect, decal


def build_gbuffer(spec: SceneSpec, geom: SceneGeometry, ctx: dr.RasterizeContext, resolution: tuple[int, int],
                  shadows: bool = True, uv: bool = False, fast: bool | None = None) -> GBuffer:
    """Run every pass for the batch ``spec`` assembled as ``geom``, on ``ctx``'s device and backend.

    Args:
        shadows: render the shadow map (skipped when the scene has no object slots).
        uv: interpolate texture coordinates (scenes with ground images or textured meshes).
        fast: use the compiled CPU passes; default: on CPU when no input requires a gradient.
    """
    if fast is None:
        fast = ctx.device.type == "cpu" and not needs_grad(spec, geom)
    H, W = resolution
    B, S = spec.batch_size, spec.num_slots
    light = _light_transform(spec) if shadows and S > 0 else None
    vattr, clip, light_clip, nattr = (_vertices_fast if fast else _vertices_torch)(spec, geom, resolution, light)
    rast, rast_db = dr.rasterize(ctx, clip, geom.tri, resolution, ranges=geom.ranges)
    if light is not None:
        n = shadow_resolution(resolution)
        shadow_depth = dr.depth_map(ctx, light_clip, geom.tri, (n, n), ranges=geom.object_ranges)
    else:
        shadow_depth = torch.zeros(B, 0, 0, device=clip.device)
    surface = _surface_fast if fast else _surface_torch
    slot, position, normal, local, light = surface(geom, rast, vattr, nattr)
    if spec.num_defects == 0:
        defect = torch.zeros(B, H, W, dtype=torch.int32, device=clip.device)
        decal = torch.zeros(B, H, W, dtype=position.dtype, device=clip.device)
    elif fast:
        defect, decal = _decals_fast(spec, slot, local, position)
    else:
        defect, decal = decal_pass(slot == S, local, position[..., 2], spec.camera.K[:, 0, 0], spec.defects)
    if uv:
        uv_map, uv_da = dr.interpolate(geom.uvs, rast, geom.uv_tri, rast_db=rast_db, diff_attrs="all")
    else:
        uv_map, uv_da = (torch.zeros(B, H, W, 0, device=clip.device) for _ in range(2))
    if geom.colors.shape[0]:
        color, _ = dr.interpolate(geom.colors.to(clip.device), rast, geom.tri)
    else:
        color = torch.zeros(B, H, W, 0, device=clip.device)
    coverage = (dr.coverage(ctx, clip.detach(), geom.tri, resolution, geom.slot_ranges).view(B, S).to(clip.device)
                if S else torch.zeros(B, 0, dtype=torch.int64, device=clip.device))
    return GBuffer(rast=rast, rast_db=rast_db, clip=clip, tri=geom.tri, slot=slot, position=position, normal=normal,
                   local=local, light=light, uv=uv_map, uv_da=uv_da, color=color, shadow_depth=shadow_depth, defect=defect,
                   decal=decal, coverage=coverage)
