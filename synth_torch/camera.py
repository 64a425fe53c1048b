"""Pinhole cameras with OpenCV intrinsics, and the bridge to the rasterizer's clip space.

Conventions (see ``docs/labels.md``):

* World frame: right-handed, z up (the ground plane is z = 0), metres.
* Camera frame (OpenCV): x right, y down, z forward; ``world_to_cam`` maps world to camera coordinates.
* Pixel coordinates: x right, y down, **continuous with integer values at pixel corners**: pixel
  (column i, row j) covers ``[i, i+1) x [j, j+1)`` and its centre is ``(i + 0.5, j + 0.5)``. This is the
  convention of torchvision boxes and nvdiffrast. OpenCV's ``cv2`` functions place integer coordinates
  at pixel centres instead: subtract 0.5 to convert. ``K``'s principal point uses our convention, so
  ``cx = W / 2`` is the exact image centre.
* Clip space: :meth:`Camera.project_to_clip` maps image row j to rasterizer row j, so ``rast[:, j]`` is
  image row j (row 0 at the top) and a point projected to ``(x, y)`` by :meth:`Camera.project` is
  covered by pixel ``(floor(x), floor(y))``. Depth in ``[near, far]`` maps to z/w in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


def mat_vec(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``M @ v`` for M [..., R, 3] and v [..., 3] (broadcast), written elementwise so that every result is
    bit-identical whatever the batch size (BLAS kernels change summation order with the problem size)."""
    return M[..., 0] * v[..., None, 0] + M[..., 1] * v[..., None, 1] + M[..., 2] * v[..., None, 2]


def mat_mat(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B`` for 3x3 matrices [..., 3, 3], elementwise (see :func:`mat_vec`)."""
    return torch.stack([mat_vec(A, B[..., :, j]) for j in range(3)], -1)


def _batched(t: torch.Tensor, dims: int) -> torch.Tensor:
    return t if t.ndim == dims + 1 else t.unsqueeze(0)


def check_finite_camera(K: torch.Tensor, world_to_cam: torch.Tensor, where: str = "camera") -> None:
    """Raise ``ValueError`` naming the field and the images when ``K`` [B, 3, 3] or ``world_to_cam`` [B, 4, 4]
    holds NaN or infinite values. CPU tensors only (on CUDA the check would wait for the device)."""
    for name, t in (("K", K), ("world_to_cam", world_to_cam)):
        if t.device.type != "cpu":
            continue
        bad = ~torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(1)
        if bad.any():
            images = bad.nonzero().flatten().tolist()
            raise ValueError(f"{where}.{name} contains NaN or infinite values (image(s) {images[:10]})")


@dataclass
class Camera:
    """A batch of pinhole cameras sharing one image size.

    Attributes:
        K: [B, 3, 3] intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        world_to_cam: [B, 4, 4] rigid transforms from world to the OpenCV camera frame.
        width, height: image size in pixels.
        near, far: clip distances along the camera z axis in metres (0 < near < far).
    """

    K: torch.Tensor
    world_to_cam: torch.Tensor
    width: int
    height: int
    near: float = 0.05
    far: float = 100.0

    def __post_init__(self) -> None:
        self.K = _batched(torch.as_tensor(self.K, dtype=torch.float32), 2)
        self.world_to_cam = _batched(torch.as_tensor(self.world_to_cam, dtype=torch.float32, device=self.K.device), 2)
        if self.K.shape[-2:] != (3, 3) or self.world_to_cam.shape[-2:] != (4, 4):
            raise ValueError(f"K must be [B,3,3] and world_to_cam [B,4,4], got {tuple(self.K.shape)} and "
                             f"{tuple(self.world_to_cam.shape)}")
        if self.K.shape[0] != self.world_to_cam.shape[0]:
            raise ValueError(f"K batch {self.K.shape[0]} != world_to_cam batch {self.world_to_cam.shape[0]}")
        check_finite_camera(self.K, self.world_to_cam)
        if not (0 < self.near < self.far):
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width and height must be positive, got {self.width}x{self.height}")

    @property
    def batch_size(self) -> int:
        return self.K.shape[0]

    @property
    def device(self) -> torch.device:
        return self.K.device

    def to(self, device) -> Camera:
        return replace(self, K=self.K.to(device), world_to_cam=self.world_to_cam.to(device))

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points [B, N, 3] (or [N, 3], shared) to camera-frame points [B, N, 3]."""
        points = points.expand(self.batch_size, -1, -1) if points.ndim == 2 else points
        R, t = self.world_to_cam[:, :3, :3], self.world_to_cam[:, :3, 3]
        return mat_vec(R[:, None], points) + t[:, None]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World points [B, N, 3] to pixel coordinates [B, N, 2] (see module conventions)."""
        return project_camera_points(self.to_camera(points), self.K)

    def projection_matrix(self) -> torch.Tensor:
        """[B, 4, 4] matrix from camera-frame homogeneous points to clip space."""
        K, W, H, n, f = self.K, float(self.width), float(self.height), self.near, self.far
        P = K.new_zeros((self.batch_size, 4, 4))
        P[:, 0, 0] = 2 * K[:, 0, 0] / W
        P[:, 0, 1] = 2 * K[:, 0, 1] / W
        P[:, 0, 2] = 2 * K[:, 0, 2] / W - 1
        P[:, 1, 1] = 2 * K[:, 1, 1] / H
        P[:, 1, 2] = 2 * K[:, 1, 2] / H - 1
        P[:, 2, 2] = (f + n) / (f - n)
        P[:, 2, 3] = -2 * f * n / (f - n)
        P[:, 3, 2] = 1
        return P

    def project_to_clip(self, points: torch.Tensor) -> torch.Tensor:
        """World points [B, N, 3] (or [N, 3]) to clip-space positions [B, N, 4] for :func:`rasterize`."""
        P = self.projection_matrix()[:, None]
        return mat_vec(P[..., :3], self.to_camera(points)) + P[..., 3]


def project_camera_points(points_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points [B, N, 3] to pixel coordinates [B, N, 2] with intrinsics K [B, 3, 3]."""
    uvw = mat_vec(K[:, None], points_cam)
    return uvw[..., :2] / points_cam[..., 2:3]


def intrinsics(fx, fy, cx, cy, skew=0.0) -> torch.Tensor:
    """Build K [B, 3, 3] from per-camera values (floats or [B] tensors)."""
    fx, fy, cx, cy, skew = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float32) for v in
                                                     (fx, fy, cx, cy, skew)))
    K = torch.zeros(fx.shape + (3, 3))
    K[..., 0, 0], K[..., 0, 1], K[..., 0, 2] = fx, skew, cx
    K[..., 1, 1], K[..., 1, 2], K[..., 2, 2] = fy, cy, 1.0
    return K.reshape(-1, 3, 3)


def intrinsics_from_mm(focal_mm, sensor_width_mm: float, sensor_height_mm: float, width: int, height: int,
                       cx=None, cy=None) -> torch.Tensor:
    """K [B, 3, 3] from a focal length in mm and the sensor size in mm (square or rectangular pixels)."""
    if sensor_width_mm <= 0 or sensor_height_mm <= 0:
        raise ValueError(f"sensor size must be positive, got {sensor_width_mm} x {sensor_height_mm} mm")
    f = torch.as_tensor(focal_mm, dtype=torch.float32)
    return intrinsics(f * width / sensor_width_mm, f * height / sensor_height_mm,
                      width / 2 if cx is None else cx, height / 2 if cy is None else cy)


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0), roll=0.0) -> torch.Tensor:
    """World-to-camera [B, 4, 4] (OpenCV frame) for cameras at ``eye`` [B, 3] looking at ``target`` [B, 3].

    ``roll`` (radians, [B] or float) turns the camera clockwise about its viewing axis as seen in the image.
    Raises ``ValueError`` when the view direction is parallel to ``up`` or eye == target.
    """
    eye, target = torch.broadcast_tensors(torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3),
                                          torch.as_tensor(target, dtype=torch.float32).reshape(-1, 3))
    up = torch.as_tensor(up, dtype=torch.float32, device=eye.device).expand_as(eye)
    forward = target - eye
    right = torch.linalg.cross(forward, up)
    if (forward.norm(dim=-1) < 1e-9).any() or (right.norm(dim=-1) < 1e-6 * forward.norm(dim=-1)).any():
        raise ValueError("look_at: eye equals target or the view direction is parallel to up")
    z = forward / forward.norm(dim=-1, keepdim=True)
    x = right / right.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    roll = torch.as_tensor(roll, dtype=torch.float32, device=eye.device).expand(eye.shape[0])
    c, s = torch.cos(roll)[:, None], torch.sin(roll)[:, None]
    x, y = c * x + s * y, -s * x + c * y
    R = torch.stack((x, y, z), dim=1)
    T = torch.eye(4, device=eye.device).repeat(eye.shape[0], 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = -mat_vec(R, eye)
    return T


def orbit_pose(target, distance, azimuth, elevation, roll=0.0) -> torch.Tensor:
    """World-to-camera [B, 4, 4] for cameras orbiting ``target`` [B, 3].

    ``azimuth`` is measured in the xy plane from +x towards +y, ``elevation`` above the xy plane
    (radians, both in (-pi/2, pi/2) for elevation); ``distance`` in metres.
    """
    distance, azimuth, elevation = (torch.as_tensor(v, dtype=torch.float32) for v in (distance, azimuth, elevation))
    if (elevation.abs() >= math.pi / 2).any():
        raise ValueError("orbit_pose: |elevation| must be below pi/2 (the view would be parallel to up)")
    direction = torch.stack(torch.broadcast_tensors(torch.cos(elevation) * torch.cos(azimuth),
                                                    torch.cos(elevation) * torch.sin(azimuth),
                                                    torch.sin(elevation)), dim=-1).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=torch.float32).reshape(-1, 3)
    eye = target + distance.reshape(-1, 1) * direction
    return look_at(eye, target.expand_as(eye), roll=roll)
