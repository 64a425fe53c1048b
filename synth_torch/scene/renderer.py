"""Rendering a batch of :class:`SceneSpec` into images and fragments (``fragments = rasterize(scene)``,
then shading and label extraction read the same fragments).

All images of a batch go through one range-mode :func:`synth_torch.render.rasterize` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import synth_torch.render as dr
from synth_torch.camera import Camera, mat_vec
from synth_torch.scenario.sampler import GROUND_HALF_SIZE, SceneSpec
from synth_torch.scene.library import template
from synth_torch.scene.shading import blinn_phong, defect_masks, grain, pattern

SHADOW_RESOLUTION = 192
SHADOW_DEPTH_RANGE = 4.0  # metres mapped to the shadow map's z/w range
BACKGROUND = {"tabletop": (0.62, 0.68, 0.75), "inspection": (0.06, 0.06, 0.06)}


@dataclass
class SceneGeometry:
    """All triangles of a batch, sorted by (image, slot); the ground is slot S of every image.

    Shapes: world [V, 3]; local [V, 3] (object frame, metres); image [V]; normals [Vn, 3] (world);
    normal_image [Vn]; uvs [Vt, 2]; tri, normal_tri, uv_tri [F, 3]; face_slot [F] in 0..S; ranges [B, 2] (CPU) per image;
    slot_ranges [B, S, 2] (CPU) per object slot (count 0 for empty slots).
    """

    world: torch.Tensor
    local: torch.Tensor
    image: torch.Tensor
    normals: torch.Tensor
    normal_image: torch.Tensor
    uvs: torch.Tensor
    tri: torch.Tensor
    normal_tri: torch.Tensor
    uv_tri: torch.Tensor
    face_slot: torch.Tensor
    vertex_slot: torch.Tensor
    ranges: torch.Tensor
    slot_ranges: torch.Tensor


@dataclass
class Fragments:
    """Per-pixel rasterization results of the camera view.

    Shapes: rast, rast_db [B, H, W, 4]; clip [V, 4]; slot [B, H, W] (-1 empty, S ground, else object slot);
    camera (camera-frame position, metres), normal (camera frame, unit, facing the camera) [B, H, W, 3];
    defect [B, H, W] (0 none, d + 1 for defect slot d).
    """

    rast: torch.Tensor
    rast_db: torch.Tensor
    clip: torch.Tensor
    slot: torch.Tensor
    camera: torch.Tensor
    normal: torch.Tensor
    defect: torch.Tensor


def assemble(spec: SceneSpec) -> SceneGeometry:
    """Instantiate every valid slot's template and the ground into one set of buffers."""
    device = spec.keys.device
    B, S = spec.slot_valid.shape
    world, local, vimage, vslot, normals, nimage, uvs, tri, ntri, uvtri, owner = ([] for _ in range(11))
    nv = nn = nt = 0
    for si, shape in enumerate(spec.shapes):
        b, i = (spec.slot_valid & (spec.slot_shape == si)).nonzero(as_tuple=True)
        if b.numel() == 0:
            continue
        mesh = template(shape).mesh
        scale, R, t = spec.slot_scale[b, i], spec.slot_rotation[b, i], spec.slot_translation[b, i]
        obj = mesh.vertices.to(device)[None] * scale[:, None]  # [n, V, 3]
        world.append((mat_vec(R[:, None], obj) + t[:, None]).reshape(-1, 3))
        local.append(obj.reshape(-1, 3))
        V, F, n = mesh.vertices.shape[0], mesh.faces.shape[0], b.numel()
        vimage.append(b.repeat_interleave(V))
        vslot.append(i.repeat_interleave(V))
        nrm = mat_vec(R[:, None], mesh.normals.to(device)[None] / scale[:, None])
        normals.append((nrm / nrm.norm(dim=-1, keepdim=True)).reshape(-1, 3))
        nimage.append(b.repeat_interleave(mesh.normals.shape[0]))
        uvs.append(mesh.uvs.to(device))
        inst = torch.arange(n, device=device)[:, None, None]
        tri.append((mesh.faces.to(device)[None] + nv + inst * V).reshape(-1, 3))
        ntri.append((mesh.normal_faces.to(device)[None] + nn + inst * mesh.normals.shape[0]).reshape(-1, 3))
        uvtri.append((mesh.uv_faces.to(device) + nt).repeat(n, 1))
        owner.append((b * (S + 1) + i).repeat_interleave(F))
        nv, nn, nt = nv + n * V, nn + n * mesh.normals.shape[0], nt + mesh.uvs.shape[0]
    # Ground (tabletop) or inspected tile: one quad per image at z = 0.
    g = GROUND_HALF_SIZE[spec.surface]
    corners = torch.tensor([[-g, -g, 0.0], [g, -g, 0.0], [g, g, 0.0], [-g, g, 0.0]], device=device)
    world.append(corners.repeat(B, 1))
    local.append(corners.repeat(B, 1))
    vimage.append(torch.arange(B, device=device).repeat_interleave(4))
    vslot.append(torch.full((4 * B,), S, device=device, dtype=torch.long))
    normals.append(torch.tensor([[0.0, 0.0, 1.0]], device=device).repeat(B, 1))
    nimage.append(torch.arange(B, device=device))
    uvs.append(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], device=device))
    quad = torch.tensor([[0, 1, 2], [0, 2, 3]], device=device)
    tri.append((quad[None] + nv + 4 * torch.arange(B, device=device)[:, None, None]).reshape(-1, 3))
    ntri.append((nn + torch.arange(B, device=device)).repeat_interleave(2)[:, None].expand(-1, 3))
    uvtri.append((quad + nt).repeat(B, 1))
    owner.append((torch.arange(B, device=device) * (S + 1) + S).repeat_interleave(2))

    owner = torch.cat(owner)
    order = torch.argsort(owner, stable=True)
    owner = owner[order]
    counts = torch.bincount(owner, minlength=B * (S + 1)).view(B, S + 1).cpu()
    starts = (torch.cumsum(counts.flatten(), 0) - counts.flatten()).view(B, S + 1)
    ranges = torch.stack((starts[:, 0], counts.sum(1)), 1).to(torch.int32)
    slot_ranges = torch.stack((starts[:, :S], counts[:, :S]), -1).to(torch.int32)
    return SceneGeometry(world=torch.cat(world), local=torch.cat(local), image=torch.cat(vimage),
                         normals=torch.cat(normals), normal_image=torch.cat(nimage), uvs=torch.cat(uvs), tri=torch.cat(tri)[order].to(torch.int32),
                         normal_tri=torch.cat(ntri)[order].to(torch.int32), uv_tri=torch.cat(uvtri)[order].to(torch.int32),
                         face_slot=owner % (S + 1), vertex_slot=torch.cat(vslot), ranges=ranges, slot_ranges=slot_ranges)


def project_vertices(points: torch.Tensor, image: torch.Tensor, spec: SceneSpec, resolution, near: float,
                     far: float) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [V, 3] of images ``image`` [V] to (camera-frame points [V, 3], clip positions [V, 4])."""
    cam = Camera(spec.K, spec.world_to_cam, resolution[1], resolution[0], near, far)
    R, t = spec.world_to_cam[image, :3, :3], spec.world_to_cam[image, :3, 3]
    camera = mat_vec(R, points) + t
    P = cam.projection_matrix()[image]
    clip = mat_vec(P[:, :, :3], camera) + P[:, :, 3]
    return camera, clip


def _shadow_map(spec: SceneSpec, geom: SceneGeometry, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthographic shadow map of the directional light, rendered by the same rasterizer (objects only: the
    ground receives shadows but casts none). Returns (depth [B, n, n], +inf where empty; light-space
    vertex positions [V, 3] with x, y in [-1, 1] over the map and z the map's depth)."""
    device = geom.world.device
    z = -spec.light_dir
    helper = torch.where((z[:, 2:3].abs() > 0.99), torch.tensor([1.0, 0, 0], device=device),
                         torch.tensor([0, 0, 1.0], device=device))
    x = torch.linalg.cross(z, helper)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    R = torch.stack((x, y, z), 1)  # [B, 3, 3] world -> light
    radius = 1.2 * spec.params["objects.spread"].to(device) + 0.15
    q = mat_vec(R[geom.image], geom.world)
    q = torch.stack((q[:, 0] / radius[geom.image], q[:, 1] / radius[geom.image], q[:, 2] / SHADOW_DEPTH_RANGE), -1)
    ranges = geom.ranges.clone()
    ranges[:, 1] -= 2  # the ground quad is the last two faces of each image
    n = SHADOW_RESOLUTION
    rast, _ = dr.rasterize(ctx, torch.cat((q, torch.ones_like(q[:, :1])), -1).contiguous(), geom.tri, (n, n),
                           ranges=ranges)
    return torch.where(rast[..., 3] > 0, rast[..., 2], torch.full_like(rast[..., 2], math.inf)), q


def _shadow_lookup(depth: torch.Tensor, q: torch.Tensor, image: torch.Tensor, softness: torch.Tensor) -> torch.Tensor:
    """Fraction of the light reaching pixels at light-space positions q [P, 3] (2x2 percentage-closer filter).

    Light space is affine in world space, so per-vertex light positions interpolate exactly to pixels.
    """
    n = depth.shape[-1]
    fx = ((q[:, 0] + 1) * 0.5 * n - 0.5).clamp(0, n - 1)
    fy = ((q[:, 1] + 1) * 0.5 * n - 0.5).clamp(0, n - 1)
    x0, y0 = fx.floor().long(), fy.floor().long()
    wx, wy = fx - x0, fy - y0
    bias = 0.01 / SHADOW_DEPTH_RANGE
    lit = torch.zeros_like(fx)
    for dy, wyy in ((0, 1 - wy), (1, wy)):
        for dx, wxx in ((0, 1 - wx), (1, wx)):
            d = depth[image, (y0 + dy).clamp(max=n - 1), (x0 + dx).clamp(max=n - 1)]
            lit = lit + wxx * wyy * (q[:, 2] <= d + bias).to(fx.dtype)
    # Never fully black: the ambient term stands in for light bounced from the surroundings.
    return 1.0 - (1.0 - lit) * (0.85 / (1.0 + 0.15 * softness))


def render(spec: SceneSpec, resolution: tuple[int, int], ctx: dr.RasterizeContext, shadows: bool = True,
           antialias: bool = True, near: float = 0.05, far: float = 20.0, ground_texture: torch.Tensor | None = None,
           background: torch.Tensor | None = None) -> tuple[torch.Tensor, Fragments, SceneGeometry]:
    """Render a batch. Returns (image [B, 3, H, W] in [0, 1] before sensor effects, fragments, geometry).

    ``ground_texture`` [B, h, w, 3] optionally replaces the procedural ground pattern (sampled with
    mipmapped :func:`texture`); ``background`` [B, 3, H, W] fills pixels that no surface covers.
    """
    H, W = resolution
    spec = spec.to(ctx.device)
    device = ctx.device
    B, S = spec.slot_valid.shape
    geom = assemble(spec)
    camera_pts, clip = project_vertices(geom.world, geom.image, spec, resolution, near, far)
    rast, rast_db = dr.rasterize(ctx, clip.contiguous(), geom.tri, resolution, ranges=geom.ranges)
    use_shadows = shadows and S > 0
    attrs = [geom.world, geom.local, camera_pts]
    if use_shadows:
        shadow_depth, light_q = _shadow_map(spec, geom, ctx)
        attrs.append(light_q)
    interp, _ = dr.interpolate(torch.cat(attrs, -1), rast, geom.tri)
    # Shading happens in the camera frame: normals are rotated per vertex, not per pixel.
    R_wc = spec.world_to_cam[:, :3, :3]
    normal_c, _ = dr.interpolate(mat_vec(R_wc[geom.normal_image], geom.normals), rast, geom.normal_tri)
    tri_id = rast[..., 3].long() - 1
    covered = tri_id >= 0
    slot = torch.where(covered, geom.face_slot[tri_id.clamp(min=0)], torch.full_like(tri_id, -1))

    b, py, px = covered.nonzero(as_tuple=True)
    pix_slot = slot[b, py, px]
    on_ground = pix_slot == S
    obj_slot = pix_slot.clamp(max=S - 1) if S else pix_slot.clamp(max=0)
    # Shading runs in float64: vectorised and scalar (tail) code paths of transcendental functions can differ in
    # the last bit, and which pixels land in the tail depends on the batch; rounding the float64 result to
    # float32 hides that, so a sample's image does not depend on its batch-mates.
    pix = interp[b, py, px].double()
    p_world, p_local, p_cam = pix[:, 0:3], pix[:, 3:6], pix[:, 6:9]
    n_cam = normal_c[b, py, px].double()
    n_cam = n_cam / n_cam.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    to_eye = -p_cam / p_cam.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    n_cam = torch.where(((n_cam * to_eye).sum(-1) < 0)[:, None], -n_cam, n_cam)

    # Albedo: procedural solid textures on objects, procedural or image texture on the ground.
    albedo = torch.empty_like(p_world)
    defect = torch.zeros(B, H, W, dtype=torch.long, device=device)
    obj_rows, ground_rows = (~on_ground).nonzero().squeeze(1), on_ground.nonzero().squeeze(1)
    if obj_rows.numel():
        ob, os_ = b[obj_rows], obj_slot[obj_rows]
        size = spec.slot_scale[ob, os_].amax(-1)
        tp = spec.slot_texture_params[ob, os_]
        coords = p_local[obj_rows] / size[:, None] * tp[:, 0:1] * 0.25
        mod = pattern(spec.slot_texture[ob, os_], coords, tp[:, 1], tp[:, 2])
        albedo[obj_rows] = spec.slot_albedo[ob, os_] * mod[:, None]
    gb = b[ground_rows]
    g = spec.ground_texture_params[gb]
    ground_coords = p_world[ground_rows] * g[:, 0:1]
    ground_mod = pattern(spec.ground_texture[gb], ground_coords, g[:, 1], g[:, 2]) * grain(ground_coords, g[:, 3], g[:, 2])
    if ground_texture is not None:
        uv, uv_da = dr.interpolate(geom.uvs, rast, geom.uv_tri, rast_db=rast_db, diff_attrs="all")
        tex = dr.texture(ground_texture.to(device), uv.contiguous(), uv_da.contiguous(), filter_mode="linear-mipmap-linear")
        albedo[ground_rows] = tex[gb, py[ground_rows], px[ground_rows]] * ground_mod[:, None]
    else:
        albedo[ground_rows] = spec.ground_albedo[gb] * ground_mod[:, None]

    # Surface defects painted on the ground/tile; the last defect slot wins where they overlap.
    D = spec.defect_type.shape[1]
    for d in range(D):
        rows = (on_ground & (spec.defect_type[b, d] >= 0)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        bb = b[rows]
        rel = p_world[rows, :2] - spec.defect_center[bb, d]
        c, s = torch.cos(spec.defect_angle[bb, d]), torch.sin(spec.defect_angle[bb, d])
        local2 = torch.stack((c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]), -1)
        footprint = p_cam[rows, 2] / spec.K[bb, 0, 0]
        mask, dark = defect_masks(spec.defect_kind[bb, d], local2, spec.defect_size[bb, d], spec.defect_seed[bb, d],
                                  footprint)
        albedo[rows] = albedo[rows] * (1 - spec.defect_contrast[bb, d] * dark)[:, None]
        hit = rows[mask]
        defect[b[hit], py[hit], px[hit]] = d + 1

    params = {k: v.to(device) for k, v in spec.params.items()}
    if use_shadows:
        shadow = _shadow_lookup(shadow_depth, pix[:, 9:12], b, params["light.shadow_softness"][b])
    else:
        shadow = torch.ones_like(p_world[:, 0])
    light_cam = mat_vec(R_wc, spec.light_dir)
    color = blinn_phong(albedo, n_cam, light_cam[b], to_eye, spec.light_color[b], params["light.ambient"][b],
                        params["light.specular"][b], params["light.shininess"][b], shadow)
    bg = torch.tensor(BACKGROUND[spec.surface], device=device)
    image = bg.expand(B, H, W, 3).clone() if background is None else background.to(device).permute(0, 2, 3, 1).clone()
    image[b, py, px] = color.to(image.dtype)
    if antialias:
        image = dr.antialias(image.contiguous(), rast, clip.contiguous(), geom.tri)
    image = image.clamp(0, 1).permute(0, 3, 1, 2).contiguous()

    camera_map = torch.zeros(B, H, W, 3, device=device)
    camera_map[b, py, px] = p_cam.float()
    normal_map = torch.zeros(B, H, W, 3, device=device)
    normal_map[b, py, px] = n_cam.float()
    return image, Fragments(rast, rast_db, clip, slot, camera_map, normal_map, defect), geom

