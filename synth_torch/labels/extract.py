"""Ground-truth labels read off the renderer's fragments and the scene specification.

Instances are numbered per image: labeled object slots first (instance ``i + 1`` for object slot i),
then defect slots (``max_objects + d + 1``). Distractors, occluders and the ground are background (0).
All conventions are documented in ``docs/labels.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import synth_torch.render as dr
from synth_torch.camera import mat_mat, mat_vec, project_camera_points
from synth_torch.scenario.sampler import KIND_OBJECT, SceneSpec
from synth_torch.scene.library import NUM_KEYPOINTS, template
from synth_torch.scene.renderer import Fragments, SceneGeometry

_UNIT_CORNERS = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)])
KEYPOINT_DEPTH_TOLERANCE = 0.02  # relative depth agreement for a keypoint to count as visible


@dataclass
class Labels:
    """Per-pixel and per-instance labels of B images with N instance slots (padded; ``valid`` marks real ones).

    Dense (row 0 at the top, pixel (i, j) covers [i, i+1) x [j, j+1)):
        depth [B, 1, H, W] metres along the camera z axis, 0 on
        background; normals [B, 3, H, W] unit normals in the camera frame (OpenCV: x right, y down,
        z forward), 0 on background; instance [B, H, W] (0 background, i + 1 for instance slot i);
        semantic [B, H, W] class ids (0 background).
    Per instance:
        valid [B, N] bool; labels [B, N] class ids 1..C; boxes [B, N, 4] tight xyxy over visible pixels
        (pixel edges, zeros when nothing is visible); amodal_boxes [B, N, 4] xyxy of the whole projection
        (continuous, may leave the image); boxes3d_center [B, N, 3], boxes3d_size [B, N, 3] (metres, along
        the box axes), boxes3d_rotation [B, N, 3, 3] (box axes in the camera frame, columns),
        boxes3d_corners [B, N, 8, 2] projected corners (corner k has offsets ((k&1)-.5, (k>>1&1)-.5,
        (k>>2&1)-.5) times the size); keypoints [B, N, K, 3] (x, y, visibility: 0 outside the image,
        1 occluded, 2 visible); visible_pixels [B, N]; visible_fraction [B, N].
    """

    instance: torch.Tensor
    semantic: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    amodal_boxes: torch.Tensor
    boxes3d_center: torch.Tensor
    boxes3d_size: torch.Tensor
    boxes3d_rotation: torch.Tensor
    boxes3d_corners: torch.Tensor
    keypoints: torch.Tensor
    visible_pixels: torch.Tensor
    visible_fraction: torch.Tensor


def _mask_boxes(instance: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight xyxy boxes [B, num, 4] (pixel edges: a single pixel (i, j) gives (i, j, i+1, j+1)) and pixel
    counts [B, num] of instance ids 1..num in ``instance`` [B, H, W]."""
    B, H, W = instance.shape
    device = instance.device
    b, y, x = (instance > 0).nonzero(as_tuple=True)
    idx = b * num + instance[b, y, x] - 1
    big = torch.iinfo(torch.int64).max
    lo_x = torch.full((B * num,), big, device=device).scatter_reduce(0, idx, x, "amin")
    lo_y = torch.full((B * num,), big, device=device).scatter_reduce(0, idx, y, "amin")
    hi_x = torch.full((B * num,), -1, device=device).scatter_reduce(0, idx, x, "amax")
    hi_y = torch.full((B * num,), -1, device=device).scatter_reduce(0, idx, y, "amax")
    count = torch.bincount(idx, minlength=B * num).view(B, num)
    boxes = torch.stack((lo_x, lo_y, hi_x + 1, hi_y + 1), -1).view(B, num, 4).float()
    return torch.where((count > 0)[..., None], boxes, torch.zeros_like(boxes)), count


def extract_labels(spec: SceneSpec, frags: Fragments, geom: SceneGeometry, ctx: dr.RasterizeContext,
                   num_categories: int, resolution: tuple[int, int]) -> Labels:
    """Compute every label of a rendered batch from independent quantities of the same scene."""
    H, W = resolution
    device = frags.rast.device
    B, S = spec.slot_valid.shape
    n_obj = int((spec.slot_kind[0] == KIND_OBJECT).sum()) if S else 0
    D = spec.defect_type.shape[1]
    N = n_obj + D

    # Dense maps.
    slot = frags.slot
    is_obj = (slot >= 0) & (slot < n_obj)
    instance = torch.where(is_obj, slot + 1, torch.zeros_like(slot))
    instance = torch.where(frags.defect > 0, n_obj + frags.defect, instance)
    inst_label = torch.cat((spec.slot_label[:, :n_obj], torch.where(spec.defect_type >= 0, num_categories + 1 + spec.defect_type,
                                                                     torch.zeros_like(spec.defect_type))), 1)
    semantic = torch.where(instance > 0, inst_label.gather(1, (instance - 1).clamp(min=0).view(B, -1)).view(B, H, W),
                           torch.zeros_like(instance))
    depth = frags.camera[..., 2].unsqueeze(1).clone()
    normals = frags.normal.permute(0, 3, 1, 2).contiguous()
    valid = torch.cat((spec.slot_valid[:, :n_obj], spec.defect_type >= 0), 1)
    boxes, visible_pixels = _mask_boxes(instance, N) if N else (torch.zeros(B, 0, 4, device=device),
                                                                 torch.zeros(B, 0, dtype=torch.long, device=device))

    # Oriented 3D boxes in the camera frame: template boxes are exactly [-0.5, 0.5]^3 times the slot scale.
    R_wc, t_wc = spec.world_to_cam[:, :3, :3], spec.world_to_cam[:, :3, 3]
    obj_R = mat_mat(R_wc[:, None], spec.slot_rotation[:, :n_obj])
    obj_c = mat_vec(R_wc[:, None], spec.slot_translation[:, :n_obj]) + t_wc[:, None]
    obj_size = spec.slot_scale[:, :n_obj]
    d_angle = spec.defect_angle
    c, s, z, o = torch.cos(d_angle), torch.sin(d_angle), torch.zeros_like(d_angle), torch.ones_like(d_angle)
    d_rot_world = torch.stack((c, -s, z, s, c, z, z, z, o), -1).view(B, D, 3, 3)
    d_world = torch.cat((spec.defect_center, torch.zeros(B, D, 1, device=device)), -1)
    center = torch.cat((obj_c, mat_vec(R_wc[:, None], d_world) + t_wc[:, None]), 1)
    rotation = torch.cat((obj_R, mat_mat(R_wc[:, None], d_rot_world)), 1)
    size = torch.cat((obj_size, torch.stack((spec.defect_size, spec.defect_size, torch.zeros_like(spec.defect_size)),
                                            -1)), 1)
    corners_cam = center[:, :, None] + mat_vec(rotation[:, :, None], _UNIT_CORNERS.to(device)[None, None] * size[:, :, None])
    corners_px = project_camera_points(corners_cam.reshape(B, -1, 3), spec.K).view(B, N, 8, 2)

    # Amodal boxes: extent of every projected vertex of the object (the hull of its projection).
    amodal = torch.zeros(B, N, 4, device=device)
    if n_obj:
        obj_vert = geom.vertex_slot < n_obj
        vs = geom.vertex_slot[obj_vert]
        vb = geom.image[obj_vert]
        cl = frags.clip[obj_vert]
        px = (cl[:, 0] / cl[:, 3] + 1) * (W / 2)
        py = (cl[:, 1] / cl[:, 3] + 1) * (H / 2)
        idx = vb * n_obj + vs
        inf = torch.tensor(float("inf"), device=device)
        lo_x = inf.expand(B * n_obj).clone().scatter_reduce(0, idx, px, "amin")
        lo_y = inf.expand(B * n_obj).clone().scatter_reduce(0, idx, py, "amin")
        hi_x = (-inf).expand(B * n_obj).clone().scatter_reduce(0, idx, px, "amax")
        hi_y = (-inf).expand(B * n_obj).clone().scatter_reduce(0, idx, py, "amax")
        box = torch.stack((lo_x, lo_y, hi_x, hi_y), -1).view(B, n_obj, 4)
        amodal[:, :n_obj] = torch.where(spec.slot_valid[:, :n_obj, None], box, torch.zeros_like(box))
    amodal[:, n_obj:] = boxes[:, n_obj:]  # defects are decals: nothing can hide part of them

    # Keypoints: template keypoints projected; visibility from the instance map and depth.
    keypoints = torch.zeros(B, N, NUM_KEYPOINTS, 3, device=device)
    if n_obj:
        kp_local = torch.zeros(B, n_obj, NUM_KEYPOINTS, 3, device=device)
        for si, shape in enumerate(spec.shapes):
            rows = spec.slot_shape[:, :n_obj] == si
            kp_local[rows] = template(shape).keypoints.to(device)
        kp_obj = kp_local * obj_size[:, :, None]
        kp_cam = obj_c[:, :, None] + mat_vec(obj_R[:, :, None], kp_obj)
        keypoints[:, :n_obj, :, :2] = project_camera_points(kp_cam.reshape(B, -1, 3), spec.K).view(B, n_obj, -1, 2)
        keypoints[:, :n_obj, :, 2] = _keypoint_visibility(keypoints[:, :n_obj, :, :2], kp_cam[..., 2], instance, depth[:, 0],
                                                           torch.arange(1, n_obj + 1, device=device))
    if D:
        d_px = project_camera_points(center[:, n_obj:], spec.K)
        keypoints[:, n_obj:, 0, :2] = d_px
        inside = (d_px[..., 0] >= 0) & (d_px[..., 0] < W) & (d_px[..., 1] >= 0) & (d_px[..., 1] < H)
        keypoints[:, n_obj:, 0, 2] = torch.where(inside & (spec.defect_type >= 0), 2.0, 0.0)
    keypoints = keypoints * valid[:, :, None, None]

    # Visible fraction: visible pixels over the pixels each object covers when rendered alone (in frame).
    visible_fraction = torch.zeros(B, N, device=device)
    if n_obj:
        alone, _ = dr.rasterize(ctx, frags.clip.contiguous(), geom.tri, (H, W),
                                ranges=geom.slot_ranges[:, :n_obj].reshape(-1, 2).contiguous())
        alone_pixels = (alone[..., 3] > 0).view(B, n_obj, -1).sum(-1)
        visible_fraction[:, :n_obj] = visible_pixels[:, :n_obj] / alone_pixels.clamp_min(1)
    visible_fraction[:, n_obj:] = (visible_pixels[:, n_obj:] > 0).float()
    return Labels(instance=instance, semantic=semantic, depth=depth, normals=normals, valid=valid, labels=inst_label,
                  boxes=boxes, amodal_boxes=amodal, boxes3d_center=center, boxes3d_size=size, boxes3d_rotation=rotation,
                  boxes3d_corners=corners_px, keypoints=keypoints, visible_pixels=visible_pixels,
                  visible_fraction=visible_fraction * valid)


def _keypoint_visibility(xy: torch.Tensor, z: torch.Tensor, instance: torch.Tensor, depth: torch.Tensor,
                         ids: torch.Tensor) -> torch.Tensor:
    """0 outside the image (or behind the camera), 2 where the pixel shows this instance at the keypoint's
    depth (within KEYPOINT_DEPTH_TOLERANCE), else 1 (occluded, also by the object itself)."""
    B, N, K, _ = xy.shape
    H, W = instance.shape[1:]
    ix, iy = torch.floor(xy[..., 0]).long(), torch.floor(xy[..., 1]).long()
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & (z > 0)
    b = torch.arange(B, device=xy.device)[:, None, None].expand(B, N, K)
    seen_id = instance[b, iy.clamp(0, H - 1), ix.clamp(0, W - 1)]
    seen_depth = depth[b, iy.clamp(0, H - 1), ix.clamp(0, W - 1)]
    visible = (seen_id == ids[None, :, None]) & ((seen_depth - z).abs() <= KEYPOINT_DEPTH_TOLERANCE * z)
    return torch.where(inside, torch.where(visible, 2.0, 1.0), 0.0)
