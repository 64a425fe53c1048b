"""KITTI object format: ``kitti/training/{image_2,label_2,calib}/`` and ``kitti/ImageSets/train.txt``.

KITTI's labels assume a level camera: its y axis points down along gravity, boxes stand upright and turn
about y by ``rotation_y``. Our cameras look down at a table, so labels are written in the **level camera
frame** of each image: same origin as the camera, y = world down (-z), x = the camera's x axis made
horizontal, z = x cross y (forward, horizontal). ``calib`` then carries ``P2 = K' [R | 0]``, where ``R``
turns level-frame points into the camera frame and ``K'`` is ``K`` in KITTI's pixel-index convention
(integers at pixel centres: ``cx - 0.5``, ``cy - 0.5``). ``P2 @ [x, y, z, 1]`` of a label point is its pixel,
exactly as KITTI's devkit projects; tools that read ``fx``/``cx`` straight out of ``P2`` will see the
rotation mixed in. P0, P1 and P3 repeat P2 (one camera), R0_rect is the identity, and Tr_velo_to_cam /
Tr_imu_to_velo are ``[I | 0]`` (there is no LiDAR).

Each ``label_2`` line: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y``

* ``type``: the class name; ``truncated``: the share of the amodal box outside the image;
* ``occluded``: 0 when the visible fraction is >= 0.95, 1 when >= 0.5, else 2 (a hidden instance is 2);
* ``x1 y1 x2 y2``: the amodal box (the whole projected object, occluded parts included) clipped to the image,
  in pixel-index coordinates, within ``[0, W-1] x [0, H-1]``;
* ``h w l``: the box extents along its vertical axis, its second and its first horizontal axis (metres);
* ``x y z``: the bottom centre of the box in the level frame; ``rotation_y`` in [-pi, pi] turns KITTI's
  object x axis onto the box's first horizontal axis; ``alpha = rotation_y - atan2(x, z)``, wrapped.

Objects tilted away from upright (``objects.tilt_deg`` > 0, ``placement: floating``) cannot be described by a
yaw alone; they get the box axis nearest to vertical as height and are counted as ``tilted_objects`` in the
manifest.
"""

from __future__ import annotations

import math

import numpy as np

from synth_torch.export.base import ExportError, FormatWriter, Sink
from synth_torch.export.coco import clipped_box
from synth_torch.export.sample import Sample

OCCLUSION_LEVELS = (0.95, 0.5)  # visible fraction thresholds for KITTI occlusion 0 and 1
TILT_TOLERANCE = 1e-4
IMAGES = "kitti/training/image_2"
LABELS = "kitti/training/label_2"
CALIB = "kitti/training/calib"


def level_rotation(world_to_cam: np.ndarray) -> np.ndarray:
    """R [3, 3] (float64) with ``p_cam = R @ p_level`` for the level frame of a camera (see module docs)."""
    R_wc = world_to_cam[:3, :3].astype(np.float64)
    x = np.array([R_wc[0, 0], R_wc[0, 1], 0.0])
    if np.linalg.norm(x) < 1e-6:  # camera rolled by 90 degrees: use the horizontal part of its forward axis
        x = np.array([R_wc[2, 1], -R_wc[2, 0], 0.0])
    x /= np.linalg.norm(x)
    y = np.array([0.0, 0.0, -1.0])
    z = np.cross(x, y)
    M = np.stack((x, y, z))  # world -> level
    return R_wc @ M.T


def projection_matrix(K: np.ndarray, R: np.ndarray) -> np.ndarray:
    """P2 [3, 4]: KITTI's pixel-index intrinsics times ``[R | 0]``."""
    Kp = K.astype(np.float64).copy()
    Kp[0, 2] -= 0.5
    Kp[1, 2] -= 0.5
    return np.concatenate((Kp @ R, np.zeros((3, 1))), 1)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def occlusion_level(visible_fraction: float) -> int:
    return 0 if visible_fraction >= OCCLUSION_LEVELS[0] else 1 if visible_fraction >= OCCLUSION_LEVELS[1] else 2


def kitti_box(center: np.ndarray, size: np.ndarray, rotation: np.ndarray, R: np.ndarray):
    """(h, w, l, location [3], rotation_y, tilted) of a camera-frame oriented box in the level frame ``R``."""
    axes = R.T @ rotation.astype(np.float64)  # box axes (columns) in the level frame
    up = int(np.argmax(np.abs(axes[1])))
    first, second = [k for k in range(3) if k != up]
    h, l, w = (float(size[k]) for k in (up, first, second))
    heading = axes[:, first]
    ry = math.atan2(-heading[2], heading[0])
    loc = R.T @ center.astype(np.float64) + np.array([0.0, h / 2, 0.0])
    tilted = abs(abs(axes[1, up]) - 1.0) > TILT_TOLERANCE
    return h, w, l, loc, ry, tilted


class KittiWriter(FormatWriter):
    name = "kitti"

    def check(self) -> None:
        bad = [n for n in self.layout.class_names if not n or any(ch.isspace() for ch in n)]
        if bad:
            raise ExportError(f"format 'kitti': class names must not contain whitespace (KITTI label lines are "
                              f"space-separated), got {bad}")

    def begin_chunk(self, chunk: int, sink: Sink) -> None:
        self._tilted = 0

    def write(self, sample: Sample, sink: Sink) -> str:
        lay = self.layout
        W, H = lay.width, lay.height
        R = level_rotation(sample.world_to_cam)
        P2 = projection_matrix(sample.K, R)
        lines = []
        for slot in sample.annotated.tolist():
            amodal = [float(v) for v in sample.amodal_boxes[slot]]
            area = max(amodal[2] - amodal[0], 0.0) * max(amodal[3] - amodal[1], 0.0)
            x0, y0, x1, y1 = clipped_box(amodal, W, H)
            truncated = 1.0 - (x1 - x0) * (y1 - y0) / area if area > 0 else 0.0
            x0, x1 = (min(max(v - 0.5, 0.0), W - 1.0) for v in (x0, x1))
            y0, y1 = (min(max(v - 0.5, 0.0), H - 1.0) for v in (y0, y1))
            h, w, l, loc, ry, tilted = kitti_box(sample.boxes3d_center[slot], sample.boxes3d_size[slot],
                                                 sample.boxes3d_rotation[slot], R)
            self._tilted += int(tilted)
            alpha = _wrap(ry - math.atan2(loc[0], loc[2]))
            occluded = 2 if sample.is_hidden(slot) else occlusion_level(float(sample.visible_fraction[slot]))
            name = lay.class_names[int(sample.labels[slot]) - 1]
            lines.append(f"{name} {truncated:.2f} {occluded} {alpha:.4f} {x0:.2f} {y0:.2f} {x1:.2f} {y1:.2f} "
                         f"{h:.4f} {w:.4f} {l:.4f} {loc[0]:.4f} {loc[1]:.4f} {loc[2]:.4f} {_wrap(ry):.4f}")
        identity = np.concatenate((np.eye(3), np.zeros((3, 1))), 1)
        calib = [(f"P{k}", P2) for k in range(4)] + [("R0_rect", np.eye(3)), ("Tr_velo_to_cam", identity),
                                                     ("Tr_imu_to_velo", identity)]
        text = "".join(f"{key}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1).tolist()) + "\n" for key, m in calib)
        sink.write(f"{IMAGES}/{sample.stem}.png", sample.image_png)
        sink.write(f"{LABELS}/{sample.stem}.txt", "".join(line + "\n" for line in lines).encode())
        sink.write(f"{CALIB}/{sample.stem}.txt", text.encode())
        return sample.stem

    def end_chunk(self, sink: Sink) -> dict:
        return {"tilted_objects": self._tilted}

    def finalize(self, chunks: list[dict], sink: Sink) -> dict:
        stems = [stem for chunk in chunks for stem in chunk["items"]]
        sink.write("kitti/ImageSets/train.txt", "".join(s + "\n" for s in stems).encode())
        return {"tilted_objects": sum(chunk["tilted_objects"] for chunk in chunks)}
