"""Camera conventions against hand-written pinhole geometry and the rasterizer's coverage.

Every expectation here is computed in the test (K written out, axes worked by hand), never read back from
``synth_torch.camera``.
"""

from __future__ import annotations

import math

import pytest
import torch

import synth_torch.render as dr
from synth_torch.camera import Camera, intrinsics, intrinsics_from_mm, look_at, orbit_pose

W, H = 48, 32  # non-square on purpose
FX, FY, CX, CY = 40.0, 44.0, 21.3, 17.8  # off-centre principal point, fx != fy, skew 0


def hand_K() -> torch.Tensor:
    return torch.tensor([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])


def hand_pose() -> torch.Tensor:
    """World-to-camera for a camera at (0.3, -2, 0.8) looking along world +y (x right, y down = world -z)."""
    R = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    eye = torch.tensor([0.3, -2.0, 0.8])
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


def pinhole(points_world: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Reference projection, float64: pixel coordinates with integer values at pixel corners."""
    p = points_world.double() @ T[:3, :3].double().T + T[:3, 3].double()
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 1] * p[:, 1] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    return torch.stack((u, v), -1)


@pytest.fixture(scope="module")
def ctx():
    return dr.RasterizeContext(device="cpu")


def test_project_matches_hand_pinhole():
    cam = Camera(hand_K(), hand_pose(), W, H)
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(50, 3, generator=g) * torch.tensor([2.0, 3.0, 2.0]) + torch.tensor([-0.7, -0.5, -0.2])
    got = cam.project(pts)
    assert got.shape == (1, 50, 2)
    torch.testing.assert_close(got[0].double(), pinhole(pts, hand_K(), hand_pose()), atol=1e-4, rtol=1e-5)
    # Two cameras in a batch, points shared ([N, 3]) or per camera ([B, N, 3]).
    K2 = torch.stack((hand_K(), hand_K() * torch.tensor([[2.0], [2.0], [1.0]])))
    cam2 = Camera(K2, hand_pose().expand(2, 4, 4), W, H)
    torch.testing.assert_close(cam2.project(pts)[1].double(), pinhole(pts, K2[1], hand_pose()), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(cam2.project(pts.expand(2, -1, -1)), cam2.project(pts))


def test_project_known_points():
    """A point on the optical axis lands on the principal point; one metre right at depth 2 lands fx/2 right."""
    cam = Camera(hand_K(), hand_pose(), W, H)
    eye = torch.tensor([0.3, -2.0, 0.8])
    pts = torch.stack((eye + torch.tensor([0.0, 2.0, 0.0]), eye + torch.tensor([1.0, 2.0, 0.0]),
                       eye + torch.tensor([0.0, 2.0, 1.0])))
    got = cam.project(pts)[0]
    expected = torch.tensor([[CX, CY], [CX + FX / 2, CY], [CX, CY - FY / 2]])  # world up is image up (row decreases)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_skew_enters_x_only():
    K = hand_K()
    K[0, 1] = 3.0
    cam = Camera(K, hand_pose(), W, H)
    pts = torch.tensor([[0.5, 1.0, 0.2], [-0.4, 0.3, 1.5]])
    torch.testing.assert_close(cam.project(pts)[0].double(), pinhole(pts, K, hand_pose()), atol=1e-4, rtol=1e-5)


def _pixel_centres_in_triangle(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: signed distances (pixels) of every pixel centre to the three edges of triangle ``xy`` [3, 2].
    Returns (inside [H, W] bool, min distance to an edge [H, W])."""
    jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    area = (xy[1, 0] - xy[0, 0]) * (xy[2, 1] - xy[0, 1]) - (xy[1, 1] - xy[0, 1]) * (xy[2, 0] - xy[0, 0])
    sign = 1.0 if area > 0 else -1.0
    dists = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        ex, ey = xy[b, 0] - xy[a, 0], xy[b, 1] - xy[a, 1]
        cross = ex * (jj - xy[a, 1]) - ey * (ii - xy[a, 0])
        dists.append(sign * cross / math.hypot(ex, ey))
    d = torch.stack(dists).amin(0)
    return d > 0, d.abs()


def test_clip_rows_are_image_rows_and_projected_points_are_covered(ctx):
    """The contract between project_to_clip, rasterize and project (row j of rast is image row j)."""
    cam = Camera(hand_K(), hand_pose(), W, H, near=0.1, far=10.0)
    tri_world = torch.tensor([[-0.2, 0.0, 0.3], [0.9, 0.4, 0.5], [0.1, -0.3, 1.4]])
    clip = cam.project_to_clip(tri_world)
    rast, _ = dr.rasterize(ctx, clip, torch.tensor([[0, 1, 2]], dtype=torch.int32), (H, W))
    covered = rast[0, ..., 3] > 0
    xy = pinhole(tri_world, hand_K(), hand_pose())
    inside, dist = _pixel_centres_in_triangle(xy)
    clear = dist > 1e-3
    assert inside.sum() > 40, "the test triangle should cover a fair number of pixels"
    assert torch.equal(covered[clear], inside[clear])

    # Points inside the triangle, at least one pixel diagonal from every edge: the pixel (floor x, floor y)
    # that ``project`` puts them on is fully inside, hence covered.
    g = torch.Generator().manual_seed(1)
    w = torch.rand(400, 3, generator=g)
    w = w / w.sum(1, keepdim=True)
    pts = w @ tri_world
    px = cam.project(pts)[0].double()
    ix, iy = px[:, 0].floor().long(), px[:, 1].floor().long()
    deep = dist[iy.clamp(0, H - 1), ix.clamp(0, W - 1)] > 1.5
    deep &= inside[iy.clamp(0, H - 1), ix.clamp(0, W - 1)]
    assert deep.sum() > 50
    assert covered[iy[deep], ix[deep]].all()


def test_top_of_scene_is_low_rows(ctx):
    """A triangle above the optical axis (world z above the eye) appears in rows < cy, one below in rows > cy."""
    cam = Camera(hand_K(), hand_pose(), W, H)
    high = torch.tensor([[0.0, 0.0, 1.2], [0.6, 0.0, 1.2], [0.3, 0.0, 1.6]])
    low = high - torch.tensor([0.0, 0.0, 1.0])
    for tri_world, above in ((high, True), (low, False)):
        rast, _ = dr.rasterize(ctx, cam.project_to_clip(tri_world), torch.tensor([[0, 1, 2]]), (H, W))
        rows = (rast[0, ..., 3] > 0).nonzero()[:, 0].float()
        assert rows.numel() > 0
        assert (rows + 0.5 < CY).all() if above else (rows + 0.5 > CY).all()


def test_depth_maps_near_far_to_minus_one_plus_one(ctx):
    n, f = 0.2, 8.0
    cam = Camera(hand_K(), torch.eye(4), W, H, near=n, far=f)
    for z, expected in ((n, -1.0), (f, 1.0), (1.0, (f + n) / (f - n) - 2 * f * n / ((f - n) * 1.0))):
        clip = cam.project_to_clip(torch.tensor([[0.1, -0.2, z]]))[0, 0]
        assert float(clip[3]) == pytest.approx(z, rel=1e-6)  # w is the camera-frame depth
        assert float(clip[2] / clip[3]) == pytest.approx(expected, abs=1e-5)
    # A fronto-parallel quad at depth 2 fills the image with the same z/w.
    d = 2.0
    corners = torch.tensor([[-5.0, -5.0, d], [5.0, -5.0, d], [5.0, 5.0, d], [-5.0, 5.0, d]])
    rast, _ = dr.rasterize(ctx, cam.project_to_clip(corners), torch.tensor([[0, 1, 2], [0, 2, 3]]), (H, W))
    assert (rast[..., 3] > 0).all()
    expected = (f + n) / (f - n) - 2 * f * n / ((f - n) * d)
    torch.testing.assert_close(rast[..., 2], torch.full((1, H, W), expected), atol=1e-5, rtol=0)


def test_look_at_axes_by_hand():
    """Camera at (0, -2, 0) looking at the origin: x = world +x, y = world -z (down), z = world +y."""
    T = look_at(torch.tensor([0.0, -2.0, 0.0]), torch.zeros(3))
    assert T.shape == (1, 4, 4)
    expected_R = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(T[0, :3, :3], expected_R, atol=1e-6, rtol=0)
    torch.testing.assert_close(T[0, :3, 3], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(T[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))

    # Looking along world -x from (3, 0, 0): z = (-1,0,0),
    # x = z cross up = (-1,0,0) x (0,0,1) = (0,1,0), y = z cross x = (0,0,-1).
    T = look_at(torch.tensor([3.0, 0.0, 0.0]), torch.zeros(3))
    expected_R = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    torch.testing.assert_close(T[0, :3, :3], expected_R, atol=1e-6, rtol=0)


def test_look_at_is_rigid_and_right_handed():
    g = torch.Generator().manual_seed(2)
    eye = torch.randn(16, 3, generator=g) * 2
    target = torch.randn(16, 3, generator=g) * 0.3
    T = look_at(eye, target, roll=torch.rand(16, generator=g))
    R = T[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16), atol=1e-5, rtol=0)
    # The eye maps to the camera origin and the target onto the +z axis.
    eye_cam = (R @ eye[..., None])[..., 0] + T[:, :3, 3]
    torch.testing.assert_close(eye_cam, torch.zeros(16, 3), atol=1e-5, rtol=0)
    tgt_cam = (R @ target[..., None])[..., 0] + T[:, :3, 3]
    torch.testing.assert_close(tgt_cam[:, :2], torch.zeros(16, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(tgt_cam[:, 2], (target - eye).norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_look_at_world_up_is_image_up_and_roll_turns_the_camera_clockwise():
    eye, target = torch.tensor([0.0, -2.0, 0.0]), torch.zeros(3)
    cam = Camera(hand_K(), look_at(eye, target), W, H)
    up_right = cam.project(torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]))[0]
    assert up_right[0, 1] < CY and abs(float(up_right[0, 0]) - CX) < 1e-4  # world up -> smaller row
    assert up_right[1, 0] > CX and abs(float(up_right[1, 1]) - CY) < 1e-4  # world +x -> larger column
    # roll = +90 deg turns the camera clockwise, so the scene turns counter-clockwise as displayed:
    # the world's right (+x) moves to the top of the image and world up moves to the left.
    cam = Camera(hand_K(), look_at(eye, target, roll=math.pi / 2), W, H)
    up_right = cam.project(torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]))[0]
    torch.testing.assert_close(up_right[0], torch.tensor([CX - FX * 0.25, CY]), atol=1e-4, rtol=0)
    torch.testing.assert_close(up_right[1], torch.tensor([CX, CY - FY * 0.25]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("azimuth,elevation", [(0.0, 0.3), (1.1, 0.8), (-2.5, -0.4), (math.pi, 1.4)])
def test_orbit_pose_distance_and_elevation(azimuth, elevation):
    target = torch.tensor([0.2, -0.1, 0.05])
    distance = 1.7
    T = orbit_pose(target, distance, azimuth, elevation)
    R, t = T[0, :3, :3], T[0, :3, 3]
    eye = -R.T @ t
    expected_eye = target + distance * torch.tensor([math.cos(elevation) * math.cos(azimuth),
                                                     math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    torch.testing.assert_close(eye, expected_eye, atol=1e-5, rtol=0)
    rel = eye - target
    assert float(rel.norm()) == pytest.approx(distance, rel=1e-5)
    assert math.asin(float(rel[2] / rel.norm())) == pytest.approx(elevation, abs=1e-5)
    # Optical axis (third row of R) points from the eye to the target; image x stays horizontal (no roll).
    torch.testing.assert_close(R[2], -rel / rel.norm(), atol=1e-5, rtol=0)
    assert abs(float(R[0, 2])) < 1e-6
    # The target projects onto the principal point.
    cam = Camera(hand_K(), T, W, H)
    torch.testing.assert_close(cam.project(target[None])[0, 0], torch.tensor([CX, CY]), atol=1e-4, rtol=0)


def test_orbit_pose_batched():
    T = orbit_pose(torch.zeros(3, 3), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]),
                   torch.tensor([0.1, 0.2, 0.3]))
    assert T.shape == (3, 4, 4)
    eyes = -(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:])[..., 0]
    torch.testing.assert_close(eyes.norm(dim=-1), torch.tensor([1.0, 2.0, 3.0]), atol=1e-5, rtol=0)


def test_intrinsics_from_mm():
    # 35 mm lens on a 36 x 24 mm sensor imaged at 640 x 480 (non-square pixels): fx = 35 * 640 / 36, fy = 35 * 480 / 24.
    K = intrinsics_from_mm(35.0, 36.0, 24.0, 640, 480)
    expected = torch.tensor([[[35 * 640 / 36, 0.0, 320.0], [0.0, 700.0, 240.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(K, expected)
    K = intrinsics_from_mm(torch.tensor([20.0, 50.0]), 36.0, 36.0, 100, 100, cx=40.0, cy=61.0)
    assert K.shape == (2, 3, 3)
    torch.testing.assert_close(K[:, 0, 0], torch.tensor([2000 / 36, 5000 / 36]))
    torch.testing.assert_close(K[:, :2, 2], torch.tensor([[40.0, 61.0], [40.0, 61.0]]))


def test_intrinsics_layout():
    K = intrinsics(torch.tensor([10.0, 20.0]), 30.0, 4.0, 5.0, skew=0.5)
    expected = torch.tensor([[10.0, 0.5, 4.0], [0.0, 30.0, 5.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(K[0], expected)
    assert float(K[1, 0, 0]) == 20.0


def test_camera_to_moves_every_tensor():
    cam = Camera(hand_K(), hand_pose(), W, H)
    moved = cam.to("cpu")
    assert moved.K.device == moved.world_to_cam.device == torch.device("cpu")
    assert (moved.width, moved.height, moved.near, moved.far) == (W, H, cam.near, cam.far)


@pytest.mark.parametrize("kwargs,match", [
    (dict(K=torch.eye(2)), "K must be"),
    (dict(world_to_cam=torch.eye(3)), "world_to_cam"),
    (dict(world_to_cam=torch.eye(4).expand(2, 4, 4)), "batch"),
    (dict(near=1.0, far=1.0), "near"),
    (dict(near=-0.1), "near"),
    (dict(width=0), "width"),
    (dict(height=-3), "width and height"),
    (dict(K=hand_K().index_put_((torch.tensor(0), torch.tensor(2)), torch.tensor(float("nan")))),
     r"camera.K contains NaN or infinite values \(image\(s\) \[0\]\)"),
    (dict(world_to_cam=hand_pose().index_put_((torch.tensor(1), torch.tensor(3)), torch.tensor(float("inf")))),
     r"camera.world_to_cam contains NaN or infinite"),
])
def test_camera_rejects_bad_inputs(kwargs, match):
    args = dict(K=hand_K(), world_to_cam=hand_pose(), width=W, height=H) | kwargs
    with pytest.raises(ValueError, match=match):
        Camera(**args)


def test_pose_helpers_reject_degenerate_inputs():
    with pytest.raises(ValueError, match="eye equals target"):
        look_at(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 0.0, 3.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="elevation"):
        orbit_pose(torch.zeros(3), 1.0, 0.0, math.pi / 2)
    with pytest.raises(ValueError, match="sensor size"):
        intrinsics_from_mm(35.0, 0.0, 24.0, 64, 64)
