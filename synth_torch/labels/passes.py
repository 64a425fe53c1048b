"""Label passes: every ground-truth label of a batch, read from the G-buffer and the scene spec (never from
shading).

Instances are numbered per image: labeled object slots first (instance ``i + 1`` for object slot i), then
defect slots (``num_objects + d + 1``). Distractors, occluders and the ground are background (0). All
conventions are documented in ``docs/labels.md``. The dense pass has a compiled CPU forward
(:mod:`synth_torch.labels._kernels`) and a torch reference (:func:`dense_labels_torch`); the per-instance
labels are small tensor operations. Nothing here synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.camera import mat_mat, mat_vec, project_camera_points
from synth_torch.render import cpu
from synth_torch.scene.decals import HALF_EXTENT
from synth_torch.scene.gbuffer import GBuffer
from synth_torch.scene.geometry import SceneGeometry
from synth_torch.scene.library import template_bank
from synth_torch.spec.constants import NUM_KEYPOINTS, on_device
from synth_torch.spec.types import SceneSpec

__all__ = ["KEYPOINT_DEPTH_TOLERANCE", "Labels", "dense_labels_torch", "label_passes"]

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

    instance: Tensor
    semantic: Tensor
    depth: Tensor
    normals: Tensor
    valid: Tensor
    labels: Tensor
    boxes: Tensor
    amodal_boxes: Tensor
    boxes3d_center: Tensor
    boxes3d_size: Tensor
    boxes3d_rotation: Tensor
    boxes3d_corners: Tensor
    keypoints: Tensor
    visible_pixels: Tensor
    visible_fraction: Tensor


def dense_labels_torch(g: GBuffer, inst_label: Tensor, num_objects: int):
    """(instance, semantic, depth, normals, boxes [B, N, 4], visible pixels [B, N]) from the G-buffer (reference)."""
    B, H, W = g.slot.shape
    N = inst_label.shape[1]
    slot, defect = g.slot.long(), g.defect.long()
    instance = torch.where((slot >= 0) & (slot < num_objects), slot + 1, torch.zeros_like(slot))
    instance = torch.where(defect > 0, num_objects + defect, instance)
    label0 = torch.cat((torch.zeros_like(inst_label[:, :1]), inst_label), 1)
    semantic = label0.gather(1, instance.view(B, -1)).view(B, H, W)
    depth = g.position[..., 2].unsqueeze(1).contiguous()
    normals = g.normal.permute(0, 3, 1, 2).contiguous()
    # Boxes: scatter every pixel into bucket (image, instance); bucket 0 of each image collects the background.
    idx = (torch.arange(B, device=slot.device)[:, None, None] * (N + 1) + instance).reshape(-1)
    xs = torch.arange(W, device=slot.device).expand(B, H, W).reshape(-1)
    ys = torch.arange(H, device=slot.device)[:, None].expand(B, H, W).reshape(-1)
    big = torch.iinfo(torch.int64).max

    def reduce(values: Tensor, init: int, how: str) -> Tensor:
        return torch.full((B * (N + 1),), init, device=slot.device).scatter_reduce(0, idx, values, how)

    box = torch.stack((reduce(xs, big, "amin"), reduce(ys, big, "amin"), reduce(xs, -1, "amax") + 1,
                       reduce(ys, -1, "amax") + 1), -1).view(B, N + 1, 4)[:, 1:].float()
    count = torch.zeros(B * (N + 1), dtype=torch.int64, device=slot.device).scatter_add_(
        0, idx, torch.ones_like(idx)).view(B, N + 1)[:, 1:]  # not bincount: its size would wait for the GPU
    box = torch.where((count > 0)[..., None], box, torch.zeros_like(box))
    return instance, semantic, depth, normals, box, count


def _dense_labels_fast(g: GBuffer, inst_label: Tensor, num_objects: int):
    from synth_torch.labels import _kernels

    cpu.use_torch_threads()
    B, H, W = g.slot.shape
    N = inst_label.shape[1]
    instance, semantic = cpu.empty((B, H, W), torch.int64), cpu.empty((B, H, W), torch.int64)
    depth, normals = cpu.empty((B, 1, H, W), torch.float32), cpu.empty((B, 3, H, W), torch.float32)
    boxes, counts = torch.empty(B, N, 4), torch.empty(B, N, dtype=torch.int64)
    _kernels.dense_labels(g.slot.numpy(), g.defect.numpy(), g.position.detach().numpy(), g.normal.detach().numpy(),
                          inst_label.contiguous().numpy(), num_objects, instance.numpy(), semantic.numpy(),
                          depth.numpy(), normals.numpy(), boxes.numpy(), counts.numpy())
    return instance, semantic, depth, normals, boxes, counts


def label_passes(spec: SceneSpec, gbuffer: GBuffer, geom: SceneGeometry, num_objects: int,
                 fast: bool | None = None) -> Labels:
    """Every label of a rendered batch from independent quantities of the same scene.

    Args:
        num_objects: object slots that hold labeled objects (the first slots); fast: compiled dense pass (default:
            on CPU without gradients). Class ids come from the spec (``objects.label``, ``defects.label``).
    """
    g = gbuffer
    device = g.slot.device
    B, H, W = g.slot.shape
    obj, dfx = spec.objects, spec.defects
    D = spec.num_defects
    N = num_objects + D
    inst_label = torch.cat((obj.label[:, :num_objects], dfx.label), 1)
    if fast is None:
        fast = device.type == "cpu" and not (torch.is_grad_enabled() and g.position.requires_grad)
    dense = _dense_labels_fast if fast else dense_labels_torch
    instance, semantic, depth, normals, boxes, visible_pixels = dense(g, inst_label, num_objects)
    valid = torch.cat((obj.valid[:, :num_objects], dfx.label > 0), 1)

    # Oriented 3D boxes in the camera frame: template boxes are exactly [-0.5, 0.5]^3 times the slot scale.
    K, T = spec.camera.K, spec.camera.world_to_cam
    R_wc, t_wc = T[:, :3, :3], T[:, :3, 3]
    obj_R = mat_mat(R_wc[:, None], obj.rotation[:, :num_objects])
    obj_c = mat_vec(R_wc[:, None], obj.translation[:, :num_objects]) + t_wc[:, None]
    obj_size = obj.scale[:, :num_objects]
    c, s = torch.cos(dfx.angle), torch.sin(dfx.angle)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    d_rot = torch.stack((c, -s, z, s, c, z, z, z, o), -1).view(B, D, 3, 3)
    d_world = torch.cat((dfx.center, torch.zeros(B, D, 1, device=device)), -1)
    center = torch.cat((obj_c, mat_vec(R_wc[:, None], d_world) + t_wc[:, None]), 1)
    rotation = torch.cat((obj_R, mat_mat(R_wc[:, None], d_rot)), 1)
    half = on_device(HALF_EXTENT, device, dfx.size.dtype)[dfx.kind]
    d_size = torch.cat((2 * half * dfx.size[..., None], torch.zeros_like(dfx.size)[..., None]), -1)
    size = torch.cat((obj_size, d_size), 1)
    corners_cam = center[:, :, None] + mat_vec(rotation[:, :, None], _UNIT_CORNERS.to(device)[None, None] * size[:, :, None])
    corners_px = project_camera_points(corners_cam.reshape(B, -1, 3), K).view(B, N, 8, 2)

    # Amodal boxes: extent of every projected vertex of the object (the hull of its projection); defects are
    # decals, nothing can hide part of them.
    verts = geom.slot_vertices[:, :num_objects]
    Vs = verts.shape[2]
    v_cam = mat_vec(R_wc[:, None, None], verts) + t_wc[:, None, None]
    v_px = project_camera_points(v_cam.reshape(B, -1, 3), K).view(B, num_objects, Vs, 2)
    amodal_obj = torch.cat((v_px.amin(2), v_px.amax(2)), -1) if Vs else torch.zeros(B, num_objects, 4, device=device)
    amodal_obj = torch.where(obj.valid[:, :num_objects, None], amodal_obj, torch.zeros_like(amodal_obj))
    amodal = torch.cat((amodal_obj, boxes[:, num_objects:]), 1)

    # Keypoints: template keypoints projected; visibility from the instance map and depth.
    bank = template_bank(spec.shapes, device)
    kp_local = bank.keypoints[obj.shape[:, :num_objects].clamp(min=0)] * obj_size[:, :, None]
    kp_cam = obj_c[:, :, None] + mat_vec(obj_R[:, :, None], kp_local)
    kp_obj = project_camera_points(kp_cam.reshape(B, -1, 3), K).view(B, num_objects, NUM_KEYPOINTS, 2)
    vis_obj = _keypoint_visibility(kp_obj, kp_cam[..., 2], instance, depth[:, 0],
                                   torch.arange(1, num_objects + 1, device=device))
    d_px = project_camera_points(center[:, num_objects:], K)
    inside = (d_px[..., 0] >= 0) & (d_px[..., 0] < W) & (d_px[..., 1] >= 0) & (d_px[..., 1] < H)
    kp_def = torch.zeros(B, D, NUM_KEYPOINTS, 3, device=device)
    kp_def = torch.cat((torch.cat((d_px, torch.where(inside & (dfx.label > 0), 2.0, 0.0)[..., None]), -1)[:, :, None],
                        kp_def[:, :, 1:]), 2)
    keypoints = torch.cat((torch.cat((kp_obj, vis_obj[..., None]), -1), kp_def), 1) * valid[:, :, None, None]

    # Visible fraction: visible pixels over the pixels each object covers when rendered alone.
    frac_obj = visible_pixels[:, :num_objects] / g.coverage[:, :num_objects].clamp_min(1)
    frac_def = (visible_pixels[:, num_objects:] > 0).float()
    visible_fraction = torch.cat((frac_obj.float(), frac_def), 1) * valid
    return Labels(instance=instance, semantic=semantic, depth=depth, normals=normals, valid=valid, labels=inst_label,
                  boxes=boxes, amodal_boxes=amodal, boxes3d_center=center, boxes3d_size=size, boxes3d_rotation=rotation,
                  boxes3d_corners=corners_px, keypoints=keypoints, visible_pixels=visible_pixels,
                  visible_fraction=visible_fraction)


def _keypoint_visibility(xy: Tensor, z: Tensor, instance: Tensor, depth: Tensor, ids: Tensor) -> Tensor:
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
