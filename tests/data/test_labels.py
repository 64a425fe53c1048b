"""Labels against independent geometry.

Two kinds of scenes:

* hand-built :class:`SceneSpec` batches with known boxes and spheres, rendered with ``render`` +
  ``extract_labels``, compared with a brute-force ray caster written here (ray-box slabs, ray-sphere,
  ray-plane per pixel centre) and a pinhole projection with K written out in the test;
* :class:`SynthDataset` batches (tabletop, defects), checked for internal consistency and against the
  same pinhole projection of the recorded 3D boxes.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F

import synth_torch.render as dr
from synth_torch import SynthDataset
from synth_torch.labels import label_passes
from synth_torch.scenario.config import load_scenario
from synth_torch.scenario.sampler import ScenarioSampler
from synth_torch.scene import assemble, build_gbuffer
from synth_torch.scene.library import template
from synth_torch.shading import render_image
from synth_torch.spec.types import CameraSpec, tree_map

H, W = 48, 64
FX = FY = 80.0
CORNERS = torch.tensor([[(k & 1) - 0.5, ((k >> 1) & 1) - 0.5, ((k >> 2) & 1) - 0.5] for k in range(8)],
                       dtype=torch.float64)
SCENE = {"categories": [{"name": "cube", "shape": "box"}, {"name": "ball", "shape": "sphere"}],
         "objects": {"count": 4}, "shadows": False}
CUBE, BALL = 1, 2  # class ids in SCENE


# ----------------------------------------------------------------------------------------------------------
# Independent geometry: pinhole projection and a per-pixel ray caster (float64).

def K_matrix(cx: float = W / 2, cy: float = H / 2) -> torch.Tensor:
    return torch.tensor([[FX, 0.0, cx], [0.0, FY, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def pose(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera (OpenCV: x right, y down, z forward), built here from first principles."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = (target - eye) / (target - eye).norm()
    x = torch.linalg.cross(z, up)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.stack((x, y, z))
    T[:3, 3] = -T[:3, :3] @ eye
    return T


TOP_DOWN = pose((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))  # looks straight down, image up = +y
OBLIQUE = pose((0.55, -0.75, 0.7), (0.0, 0.0, 0.05))


def project_cam(p: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points [..., 3] to pixels [..., 2]: u = (fx x + s y) / z + cx, v = fy y / z + cy."""
    p, K = p.double(), K.double()
    return torch.stack(((K[0, 0] * p[..., 0] + K[0, 1] * p[..., 1]) / p[..., 2] + K[0, 2],
                        K[1, 1] * p[..., 1] / p[..., 2] + K[1, 2]), -1)


def project(points_world: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return project_cam(points_world.double() @ T[:3, :3].T + T[:3, 3], K)


def yaw_matrix(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def box_corners_world(obj) -> torch.Tensor:
    """[8, 3] corners in the documented order: corner k has offsets ((k&1)-.5, (k>>1&1)-.5, (k>>2&1)-.5) * size."""
    size = torch.tensor(obj["size"], dtype=torch.float64)
    centre = torch.tensor(obj["center"], dtype=torch.float64)
    R = yaw_matrix(obj.get("yaw", 0.0))
    return (CORNERS * size) @ R.T + centre


def ray_cast(objects, K: torch.Tensor, T: torch.Tensor, offset=(0.5, 0.5)):
    """Cast a ray through every pixel point (i + offset_x, j + offset_y).

    Returns (id [H, W]: 0 ground / -1 miss / k + 1 for object k, depth [H, W] along the camera z axis,
    world normal [H, W, 3] of the hit surface).
    """
    jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64) + offset[1],
                            torch.arange(W, dtype=torch.float64) + offset[0], indexing="ij")
    d_cam = torch.stack(((ii - K[0, 2]) / K[0, 0], (jj - K[1, 2]) / K[1, 1], torch.ones_like(ii)), -1)  # z = 1
    R, t = T[:3, :3], T[:3, 3]
    d = d_cam @ R  # world directions (R^T d_cam); parameter along the ray == camera-frame depth
    eye = -R.T @ t
    best = torch.full((H, W), math.inf, dtype=torch.float64)
    ids = torch.full((H, W), -1, dtype=torch.long)
    normal = torch.zeros(H, W, 3, dtype=torch.float64)
    t_ground = -eye[2] / d[..., 2]
    hit = (t_ground > 0) & (d[..., 2] < 0)
    best = torch.where(hit, t_ground, best)
    ids[hit] = 0
    normal[hit] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for k, obj in enumerate(objects):
        centre = torch.tensor(obj["center"], dtype=torch.float64)
        if obj["shape"] == "sphere":
            r = obj["size"][0] / 2
            oc = eye - centre
            a, b, c = (d * d).sum(-1), 2 * (d * oc).sum(-1), (oc * oc).sum() - r * r
            disc = b * b - 4 * a * c
            tk = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
            ok = (disc >= 0) & (tk > 0)
            n = eye + tk[..., None] * d - centre
            n = n / r
        else:
            Ro = yaw_matrix(obj.get("yaw", 0.0))
            half = torch.tensor(obj["size"], dtype=torch.float64) / 2
            o, dl = Ro.T @ (eye - centre), d @ Ro  # ray in the box frame
            t1, t2 = (-half - o) / dl, (half - o) / dl
            tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
            tk, axis = tmin.max(-1)
            ok = (tk <= tmax.min(-1).values) & (tk > 0)
            n_local = torch.zeros(H, W, 3, dtype=torch.float64)
            n_local.scatter_(-1, axis[..., None], -torch.sign(dl.gather(-1, axis[..., None])))
            n = n_local @ Ro.T
        closer = ok & (tk < best)
        best = torch.where(closer, tk, best)
        ids[closer] = k + 1
        normal[closer] = n[closer]
    return ids, best, normal


def stable(objects, K, T, eps=0.03):
    """Pixels whose ray-cast id does not change when the ray moves by +-eps pixel (away from silhouettes)."""
    ref, _, _ = ray_cast(objects, K, T)
    same = torch.ones(H, W, dtype=torch.bool)
    for off in ((0.5 - eps, 0.5), (0.5 + eps, 0.5), (0.5, 0.5 - eps), (0.5, 0.5 + eps)):
        same &= ray_cast(objects, K, T, off)[0] == ref
    return same


def mask_extent(mask: torch.Tensor) -> torch.Tensor:
    """Pixel-edge xyxy extent of a boolean mask [H, W] (zeros when empty), by brute force."""
    ys, xs = mask.nonzero(as_tuple=True)
    if ys.numel() == 0:
        return torch.zeros(4)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Hand-built scenes through render + extract_labels.

def render_scene(objects, cameras, K=None, fast=None, device="cpu"):
    """One image per camera, all with the same ``objects`` (dicts: shape, size, center, yaw in degrees), through
    the G-buffer passes (compiled when ``fast``, torch reference when not) and the label passes; on CUDA the torch
    passes and the torch rasterizer (bit-identical to the CPU's), results back on the CPU."""
    sc = load_scenario(SCENE)
    sampler = ScenarioSampler(sc, 0)
    B, S = len(cameras), sampler.max_slots
    assert len(objects) <= sampler.num_objects
    spec = sampler.sample(torch.arange(B), torch.zeros(B, dtype=torch.long),
                          [s.overrides for s in sc.slices.values()], (H, W))
    valid = torch.zeros(B, S, dtype=torch.bool)
    shape = torch.zeros(B, S, dtype=torch.long)
    label = torch.zeros(B, S, dtype=torch.long)
    scale = torch.full((B, S, 3), 0.1)
    rotation = torch.eye(3).repeat(B, S, 1, 1)
    translation = torch.zeros(B, S, 3)
    for i, obj in enumerate(objects):
        valid[:, i] = True
        shape[:, i] = spec.shapes.index(obj["shape"])
        label[:, i] = CUBE if obj["shape"] == "box" else BALL
        scale[:, i] = torch.tensor(obj["size"])
        rotation[:, i] = yaw_matrix(obj.get("yaw", 0.0)).float()
        translation[:, i] = torch.tensor(obj["center"])
    K = K_matrix() if K is None else K
    spec = replace(spec, camera=CameraSpec(K=K.float().expand(B, 3, 3).clone(), world_to_cam=torch.stack(cameras).float()),
                   objects=replace(spec.objects, valid=valid, shape=shape, label=label, scale=scale, rotation=rotation,
                                   translation=translation))
    ctx = dr.RasterizeContext(device=device, backend="auto" if device == "cpu" else "torch")
    spec = spec.to(device)
    geom = assemble(spec)
    gbuffer = build_gbuffer(spec, geom, ctx, (H, W), shadows=False, fast=fast)
    image = render_image(spec, geom, gbuffer, "numba" if fast in (None, True) else "torch", antialias=False)
    labels = label_passes(spec, gbuffer, geom, sampler.num_objects, fast=fast)
    return image.cpu(), tree_map(labels, lambda t: t.cpu())


BOX = {"shape": "box", "size": (0.3, 0.18, 0.1), "center": (0.05, -0.03, 0.05), "yaw": 30.0}
BALL_OBJ = {"shape": "sphere", "size": (0.16, 0.16, 0.16), "center": (-0.2, 0.12, 0.08)}
TALL = {"shape": "box", "size": (0.08, 0.08, 0.2), "center": (0.2, 0.17, 0.1), "yaw": -15.0}


@pytest.fixture(scope="module", params=["compiled", "reference", pytest.param("cuda", marks=pytest.mark.gpu)])
def box_scene(request):
    """The same hand-built scene through the compiled passes, through the torch references, and on CUDA."""
    objects = [BOX, BALL_OBJ, TALL]
    device = "cuda" if request.param == "cuda" else "cpu"
    image, labels = render_scene(objects, [TOP_DOWN, OBLIQUE], fast=request.param == "compiled", device=device)
    return objects, image, labels


def test_compiled_and_reference_passes_give_identical_labels():
    objects = [BOX, BALL_OBJ, TALL]
    _, fast = render_scene(objects, [TOP_DOWN, OBLIQUE], fast=True)
    _, ref = render_scene(objects, [TOP_DOWN, OBLIQUE], fast=False)
    for f in fields(fast):
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        assert a.dtype == b.dtype, f.name
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6 if a.is_floating_point() else 0, msg=f.name)


def test_instance_mask_matches_ray_casting(box_scene):
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, _, _ = ray_cast(objects, K_matrix(), T)
        keep = stable(objects, K_matrix(), T)
        assert keep.float().mean() > 0.9
        expected = ids.clamp_min(0)
        boxes_only = torch.tensor([o["shape"] == "box" for o in objects])
        # Boxes are exact; the sphere mesh is inscribed in the true sphere, so only check its interior here.
        exact = keep & ((expected == 0) | boxes_only[(expected - 1).clamp_min(0)])
        inst = lab.instance[b]
        exact &= (inst == 0) | boxes_only[(inst - 1).clamp_min(0)]
        differ = int((inst[exact] != expected[exact]).sum())
        assert differ == 0, f"image {b}: {differ} pixels differ"


def test_sphere_mask_and_depth_within_tessellation_error(box_scene):
    objects, _, lab = box_scene
    k = 2  # instance id of the ball
    r = BALL_OBJ["size"][0] / 2
    centre = torch.tensor(BALL_OBJ["center"], dtype=torch.float64)
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, depth, _ = ray_cast(objects, K_matrix(), T)
        inst = lab.instance[b]
        # Every pixel of the ball lies on a ray that hits the true sphere...
        assert (ids[inst == k] == k).all()
        # ...and every ray passing well inside the sphere is covered (inscribed mesh: radius >= 0.95 r).
        jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                                indexing="ij")
        d = torch.stack(((ii - W / 2) / FX, (jj - H / 2) / FY, torch.ones_like(ii)), -1) @ T[:3, :3]
        eye = -T[:3, :3].T @ T[:3, 3]
        oc = centre - eye
        dist = torch.linalg.cross(d, oc.expand_as(d)).norm(dim=-1) / d.norm(dim=-1)  # ray-centre distance
        core = (dist < 0.95 * r) & (ids == k)
        assert core.sum() > 20 and (inst[core] == k).all()
        # Depth: the mesh lies inside the sphere, so it is hit a little later, by at most ~2.5% of r along the
        # normal (9 degree facets), i.e. 0.05 r along rays within 60 degrees of the normal.
        gap = lab.depth[b, 0].double() - depth
        facing = core & (dist < 0.85 * r)
        assert (gap[facing] > -1e-5).all() and (gap[facing] < 0.05 * r).all(), gap[facing].abs().max()


def test_depth_matches_ray_plane_and_ray_box(box_scene):
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, depth, _ = ray_cast(objects, K_matrix(), T)
        keep = stable(objects, K_matrix(), T) & (lab.instance[b] != 2) & (ids != 2)
        torch.testing.assert_close(lab.depth[b, 0].double()[keep], depth[keep], rtol=1e-4, atol=1e-5)
    # Looking straight down from 1 m, every ground pixel is 1 m away along the optical axis.
    ids, _, _ = ray_cast(objects, K_matrix(), TOP_DOWN)
    ground = (ids == 0) & stable(objects, K_matrix(), TOP_DOWN)
    torch.testing.assert_close(lab.depth[0, 0][ground], torch.ones(int(ground.sum())), atol=1e-5, rtol=0)
    # The camera is above the first box's footprint, so only its top (z = 0.1, 0.9 m away) is seen.
    top = (ids == 1) & stable(objects, K_matrix(), TOP_DOWN)
    assert top.sum() > 50
    torch.testing.assert_close(lab.depth[0, 0][top], torch.full((int(top.sum()),), 0.9), atol=1e-5, rtol=0)


def test_normals_are_camera_frame_surface_normals(box_scene):
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, _, n_world = ray_cast(objects, K_matrix(), T)
        keep = stable(objects, K_matrix(), T)
        n_cam = n_world @ T[:3, :3].T
        got = lab.normals[b].permute(1, 2, 0).double()
        flat = keep & (ids != 2)
        torch.testing.assert_close(got[flat], n_cam[flat], atol=1e-4, rtol=0)
        ground = keep & (ids == 0)
        torch.testing.assert_close(got[ground], (T[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
                                   .expand(int(ground.sum()), 3), atol=1e-5, rtol=0)
        ball = keep & (ids == 2) & (lab.instance[b] == 2)
        # Smooth sphere normals agree with the analytic ones to a few degrees.
        assert ((got[ball] * n_cam[ball]).sum(-1) > 0.98).all()
        assert torch.allclose(got.norm(dim=-1)[lab.depth[b, 0] > 0].double(), torch.tensor(1.0, dtype=torch.float64),
                              atol=1e-4)


def test_tight_boxes_are_mask_extents(box_scene):
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, _, _ = ray_cast(objects, K_matrix(), T)
        for k in range(len(objects)):
            torch.testing.assert_close(lab.boxes[b, k], mask_extent(lab.instance[b] == k + 1))
            assert int(lab.visible_pixels[b, k]) == int((lab.instance[b] == k + 1).sum())
            if objects[k]["shape"] == "box":  # and the brute-force mask gives the same box within a pixel
                torch.testing.assert_close(lab.boxes[b, k], mask_extent(ids == k + 1), atol=1.0, rtol=0)
        assert (lab.boxes[b, len(objects):] == 0).all() and not lab.valid[b, len(objects):].any()


def test_box_corners_keypoints_and_amodal_boxes_by_pinhole(box_scene):
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        for k, obj in enumerate(objects):
            if obj["shape"] != "box":
                continue
            corners = project(box_corners_world(obj), K_matrix(), T)
            torch.testing.assert_close(lab.boxes3d_corners[b, k].double(), corners, atol=2e-3, rtol=0)
            torch.testing.assert_close(lab.keypoints[b, k, :, :2].double(), corners, atol=2e-3, rtol=0)
            # For a box the projected mesh vertices are the projected corners.
            hull = torch.cat((corners.amin(0), corners.amax(0)))
            torch.testing.assert_close(lab.amodal_boxes[b, k].double(), hull, atol=2e-3, rtol=0)
            # The 3D box itself, in the camera frame.
            centre = T[:3, :3] @ torch.tensor(obj["center"], dtype=torch.float64) + T[:3, 3]
            torch.testing.assert_close(lab.boxes3d_center[b, k].double(), centre, atol=1e-5, rtol=0)
            torch.testing.assert_close(lab.boxes3d_size[b, k].double(), torch.tensor(obj["size"], dtype=torch.float64),
                                       atol=1e-6, rtol=0)
            torch.testing.assert_close(lab.boxes3d_rotation[b, k].double(), T[:3, :3] @ yaw_matrix(obj["yaw"]),
                                       atol=1e-5, rtol=0)


def test_amodal_boxes_contain_tight_boxes(box_scene):
    _, _, lab = box_scene
    v = lab.valid & (lab.visible_pixels > 0)
    a, t = lab.amodal_boxes[v], lab.boxes[v]
    assert (a[:, :2] <= t[:, :2] + 0.5).all() and (a[:, 2:] >= t[:, 2:] - 0.5).all()


def test_sphere_keypoints(box_scene):
    """Sphere keypoints are surface points in the eight diagonal octants; seen from above the upper four are
    visible (2) and the lower four hidden by the ball itself (1)."""
    objects, _, lab = box_scene
    kp_unit = template("sphere").keypoints.double()
    torch.testing.assert_close(kp_unit.norm(dim=-1), torch.full((8,), 0.5, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(torch.sign(kp_unit), torch.sign(CORNERS))
    r = BALL_OBJ["size"][0] / 2
    world = kp_unit * 2 * r + torch.tensor(BALL_OBJ["center"], dtype=torch.float64)
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        torch.testing.assert_close(lab.keypoints[b, 1, :, :2].double(), project(world, K_matrix(), T), atol=2e-3,
                                   rtol=0)
    assert lab.keypoints[0, 1, 4:, 2].tolist() == [2.0] * 4
    assert lab.keypoints[0, 1, :4, 2].tolist() == [1.0] * 4


def test_visible_fraction_matches_ray_casting(box_scene):
    """Visible fraction = pixels showing the object / pixels it covers when rendered alone: 1 for the objects
    that nothing hides, and the ray-cast ratio for the ball that the big box partly hides in the oblique view."""
    objects, _, lab = box_scene
    for b, T in enumerate((TOP_DOWN, OBLIQUE)):
        ids, _, _ = ray_cast(objects, K_matrix(), T)
        for k, obj in enumerate(objects):
            alone = (ray_cast([obj], K_matrix(), T)[0] == 1).sum()
            expected = float((ids == k + 1).sum()) / float(alone)
            tol = 1e-6 if expected == 1.0 else 0.05  # silhouette pixels of the tessellated ball
            assert float(lab.visible_fraction[b, k]) == pytest.approx(expected, abs=tol), (b, k)
    torch.testing.assert_close(lab.visible_fraction[0, :3], torch.ones(3))  # nothing overlaps seen from above
    assert float(lab.visible_fraction[1, 1]) < 0.99  # the box hides a bit of the ball in the oblique view
    assert (lab.visible_fraction[:, 3:] == 0).all()
    assert torch.equal(lab.labels[:, :3], torch.tensor([[CUBE, BALL, CUBE]] * 2))
    # Semantic map = class of the instance under each pixel.
    sem = torch.tensor([0, CUBE, BALL, CUBE, 0])[lab.instance]
    assert torch.equal(lab.semantic, sem)


def test_half_hidden_object():
    """A flat tile at the origin, half covered (x > 0) by a floating slab: seen from straight above with the
    principal point at the image centre, the slab's edge x = 0 projects onto the middle column for any height."""
    tile = {"shape": "box", "size": (0.24, 0.2, 0.02), "center": (0.0, 0.0, 0.01)}
    slab = {"shape": "box", "size": (0.3, 0.5, 0.02), "center": (0.15, 0.0, 0.3)}
    hidden = {"shape": "sphere", "size": (0.06, 0.06, 0.06), "center": (0.08, 0.0, 0.03)}  # entirely under the slab
    edge = {"shape": "box", "size": (0.3, 0.1, 0.1), "center": (-0.45, 0.1, 0.05)}  # crosses the left image border
    objects = [tile, slab, hidden, edge]
    _, lab = render_scene(objects, [TOP_DOWN])
    full = (ray_cast([tile], K_matrix(), TOP_DOWN)[0] == 1).sum()
    assert int(lab.visible_pixels[0, 0]) == int(full) // 2
    assert float(lab.visible_fraction[0, 0]) == pytest.approx(0.5, abs=1e-6)
    assert float(lab.visible_fraction[0, 1]) == pytest.approx(1.0)
    # The tight box of the tile stops at the middle column; its amodal box spans the whole tile.
    assert float(lab.boxes[0, 0, 2]) == W / 2
    hull = project(box_corners_world(tile), K_matrix(), TOP_DOWN)
    torch.testing.assert_close(lab.amodal_boxes[0, 0].double(), torch.cat((hull.amin(0), hull.amax(0))), atol=2e-3,
                               rtol=0)
    # Tile corners: those under the slab (x > 0) are occluded (1).
    kp = lab.keypoints[0, 0]
    assert (kp[[1, 3, 5, 7], 2] == 1).all()
    # The hidden ball: valid, zero visible pixels, empty tight box, keypoints occluded, dropped by drop_hidden.
    assert bool(lab.valid[0, 2]) and int(lab.visible_pixels[0, 2]) == 0
    assert float(lab.visible_fraction[0, 2]) == 0.0
    assert (lab.boxes[0, 2] == 0).all() and (lab.amodal_boxes[0, 2, 2:] > lab.amodal_boxes[0, 2, :2]).all()
    assert (lab.keypoints[0, 2, :, 2] == 1).all()
    # The object crossing the border: unoccluded, so fully "visible" (the fraction counts in-frame pixels),
    # tight box clipped to the image, amodal box and keypoints leaving it (visibility 0 outside).
    assert float(lab.visible_fraction[0, 3]) == pytest.approx(1.0)
    assert float(lab.boxes[0, 3, 0]) == 0.0 and float(lab.amodal_boxes[0, 3, 0]) < 0
    corners = project(box_corners_world(edge), K_matrix(), TOP_DOWN)
    outside = corners[:, 0] < 0
    assert outside.any() and (lab.keypoints[0, 3, outside, 2] == 0).all()
    assert (lab.keypoints[0, 3, ~outside, 2] > 0).all()


# ----------------------------------------------------------------------------------------------------------
# SynthDataset batches.

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module", params=DEVICES)
def tabletop_pair(request):
    """The same tabletop samples with and without sensor effects (heavy occlusion slice included), rendered on
    each device (CUDA: whatever backend ``auto`` picks, nvdiffrast when it imports) and checked on the CPU."""
    kw = dict(batch_size=3, resolution=(48, 64), seed=5, device=request.param)
    on, off = SynthDataset("tabletop", sensor=True, **kw), SynthDataset("tabletop", sensor=False, **kw)
    slices = torch.tensor([0, on.slice_names.index("heavy_occlusion"), on.slice_names.index("motion_blur")])
    return (on.render_batch(torch.arange(3), slices).to("cpu"), off.render_batch(torch.arange(3), slices).to("cpu"),
            on.scenario)


@pytest.fixture(scope="module", params=DEVICES)
def defects_batch(request):
    """Four samples of the base slice (1-3 labeled defects each, 0-2 decoys), rendered on each device."""
    ds = SynthDataset("defects", batch_size=4, resolution=64, seed=1, sensor=False, device=request.param)
    return ds.render_batch(torch.arange(4), torch.zeros(4, dtype=torch.long)).to("cpu")


def _label_fields():
    return ("depth", "normals", "instance", "semantic", "valid", "labels", "boxes", "amodal_boxes", "boxes3d_center",
            "boxes3d_size", "boxes3d_rotation", "boxes3d_corners", "keypoints", "visible_pixels", "visible_fraction",
            "K", "world_to_cam", "slice_id", "sample_id")


def test_sensor_effects_leave_labels_unchanged(tabletop_pair):
    on, off, _ = tabletop_pair
    for name in _label_fields():
        assert torch.equal(getattr(on, name), getattr(off, name)), name
    assert not torch.equal(on.image, off.image)


@pytest.mark.parametrize("which", ["tabletop", "defects"])
def test_dataset_boxes_are_mask_extents(which, tabletop_pair, defects_batch):
    batch = tabletop_pair[1] if which == "tabletop" else defects_batch
    B, N = batch.valid.shape
    for b in range(B):
        for k in range(N):
            mask = batch.instance[b] == k + 1
            torch.testing.assert_close(batch.boxes[b, k], mask_extent(mask))
            assert int(batch.visible_pixels[b, k]) == int(mask.sum())
            if mask.any():
                assert batch.valid[b, k]
                assert (batch.semantic[b][mask] == batch.labels[b, k]).all()
    assert (batch.semantic[batch.instance == 0] == 0).all()
    v = batch.valid & (batch.visible_pixels > 0)
    a, t = batch.amodal_boxes[v], batch.boxes[v]
    assert (a[:, :2] <= t[:, :2] + 0.5).all() and (a[:, 2:] >= t[:, 2:] - 0.5).all()


def test_dataset_3d_boxes_keypoints_and_amodal_by_pinhole(tabletop_pair):
    _, batch, scenario = tabletop_pair
    for b in range(len(batch)):
        K = batch.K[b].double()
        for k in batch.valid[b].nonzero()[:, 0].tolist():
            c, s, R = batch.boxes3d_center[b, k].double(), batch.boxes3d_size[b, k].double(), \
                batch.boxes3d_rotation[b, k].double()
            torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
            px = project_cam((CORNERS * s) @ R.T + c, K)
            torch.testing.assert_close(batch.boxes3d_corners[b, k].double(), px, atol=2e-3, rtol=0)
            shape = scenario.categories[int(batch.labels[b, k]) - 1].shape
            # Amodal box: extent of the projected template vertices placed by the 3D box.
            vp = project_cam(template(shape).mesh.vertices.double() * s @ R.T + c, K)
            torch.testing.assert_close(batch.amodal_boxes[b, k].double(), torch.cat((vp.amin(0), vp.amax(0))),
                                       atol=5e-3, rtol=0)
            # Keypoints: projected template keypoints; for boxes these are the 3D box corners.
            kpx = project_cam(template(shape).keypoints.double() * s @ R.T + c, K)
            torch.testing.assert_close(batch.keypoints[b, k, :, :2].double(), kpx, atol=2e-3, rtol=0)
            if shape == "box":
                torch.testing.assert_close(batch.keypoints[b, k, :, :2], batch.boxes3d_corners[b, k])
            # Untilted objects stand upright on the ground: the box's z axis is world up, its centre half its
            # height above the ground.
            if float(batch.params["objects.tilt_deg"][b]) != 0.0:
                continue
            R_wc, t_wc = batch.world_to_cam[b, :3, :3].double(), batch.world_to_cam[b, :3, 3].double()
            centre_world = R_wc.T @ (c - t_wc)
            axis_world = R_wc.T @ R[:, 2]
            torch.testing.assert_close(axis_world, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-4,
                                       rtol=0)
            assert float(centre_world[2]) == pytest.approx(float(s[2]) / 2, abs=1e-4)


def test_dataset_keypoint_visibility_semantics(tabletop_pair):
    """Visibility against independent geometry: each keypoint's camera-frame depth comes from the template keypoint
    placed by the 3D box (not from the label pass); 2 = its pixel shows its instance at that depth within 2 %
    (docs/labels.md), 1 = inside the image but not so, 0 = outside."""
    _, batch, scenario = tabletop_pair
    kp = batch.keypoints
    vis = kp[..., 2]
    assert set(vis.unique().tolist()) <= {0.0, 1.0, 2.0}
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    assert (vis[~inside & batch.valid[..., None]] == 0).all()
    assert (vis[~batch.valid] == 0).all()
    checked = {1.0: 0, 2.0: 0}
    for b, n in batch.valid.nonzero().tolist():
        shape = scenario.categories[int(batch.labels[b, n]) - 1].shape
        s, R, c = (t[b, n].double() for t in (batch.boxes3d_size, batch.boxes3d_rotation, batch.boxes3d_center))
        z = ((template(shape).keypoints.double() * s) @ R.T + c)[:, 2]
        for k in inside[b, n].nonzero().flatten().tolist():
            ix, iy = int(x[b, n, k].floor()), int(y[b, n, k].floor())
            own = int(batch.instance[b, iy, ix]) == n + 1
            at_depth = abs(float(batch.depth[b, 0, iy, ix]) - float(z[k])) <= 0.02 * float(z[k])
            assert float(vis[b, n, k]) == (2.0 if own and at_depth else 1.0), (b, n, k)
            checked[float(vis[b, n, k])] += 1
    assert checked[1.0] > 0 and checked[2.0] > 0, checked


def test_dataset_depth_and_ground_normals_by_ray_plane(tabletop_pair):
    """Pixels whose depth equals the ray-plane intersection are the ground; their normal is R_wc @ (0, 0, 1)."""
    _, batch, _ = tabletop_pair
    jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    for b in range(len(batch)):
        K, T = batch.K[b].double(), batch.world_to_cam[b].double()
        d = torch.stack(((ii - K[0, 2]) / K[0, 0], (jj - K[1, 2]) / K[1, 1], torch.ones_like(ii)), -1) @ T[:3, :3]
        eye = -T[:3, :3].T @ T[:3, 3]
        plane_depth = -eye[2] / d[..., 2]
        depth = batch.depth[b, 0].double()
        on_plane = (depth - plane_depth).abs() < 1e-4 * plane_depth
        assert on_plane.float().mean() > 0.3, "the ground should fill a good part of a tabletop view"
        # Objects stand on the ground: a pixel at a contact point lies on the plane too; away from the
        # edges of the plane region (eroded by a pixel) every pixel is ground.
        ground = -F.max_pool2d(-on_plane[None, None].float(), 3, 1, 1)[0, 0] > 0.5
        assert ground.float().mean() > 0.2 and (batch.instance[b][ground] == 0).all()
        # Nothing is behind the ground plane, and everything else is in front of it.
        assert (depth <= plane_depth * (1 + 1e-4)).all()
        assert (depth[batch.instance[b] > 0] < plane_depth[batch.instance[b] > 0]).all()
        up = T[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        n = batch.normals[b].permute(1, 2, 0).double()[ground]
        torch.testing.assert_close(n, up.expand_as(n), atol=1e-4, rtol=0)


def test_defect_masks_lie_on_the_tile(defects_batch):
    batch = defects_batch
    tile_half = 0.16
    jj, ii = torch.meshgrid(torch.arange(64, dtype=torch.float64) + 0.5, torch.arange(64, dtype=torch.float64) + 0.5,
                            indexing="ij")
    assert batch.valid.any(1).all()
    n_classes = len(batch.class_names)
    for b in range(len(batch)):
        K, T = batch.K[b].double(), batch.world_to_cam[b].double()
        d = torch.stack(((ii - K[0, 2]) / K[0, 0], (jj - K[1, 2]) / K[1, 1], torch.ones_like(ii)), -1) @ T[:3, :3]
        eye = -T[:3, :3].T @ T[:3, 3]
        t = -eye[2] / d[..., 2]
        world = eye + t[..., None] * d
        on_tile = (world[..., 0].abs() < tile_half) & (world[..., 1].abs() < tile_half)
        footprint = t / K[0, 0]  # metres per pixel on the tile
        for k in batch.valid[b].nonzero()[:, 0].tolist():
            mask = batch.instance[b] == k + 1
            assert on_tile[mask].all(), "defect pixels must be tile pixels"
            torch.testing.assert_close(batch.depth[b, 0].double()[mask], t[mask], rtol=1e-4, atol=0)
            # Inside the circle around its flat 3D box (plus a pixel's blur either side).
            R_wc, t_wc = batch.world_to_cam[b, :3, :3].double(), batch.world_to_cam[b, :3, 3].double()
            centre = R_wc.T @ (batch.boxes3d_center[b, k].double() - t_wc)
            assert abs(float(centre[2])) < 1e-5  # on the surface
            radius = 0.5 * float(batch.boxes3d_size[b, k, :2].norm())
            reach = (world[mask][:, :2] - centre[:2]).norm(dim=-1) - 2 * footprint[mask]
            assert (reach <= radius).all() and float(batch.boxes3d_size[b, k, 2]) == 0.0
            # Decals: amodal box = tight box, visible fraction 1 when seen, label a defect class.
            if mask.any():
                torch.testing.assert_close(batch.amodal_boxes[b, k], batch.boxes[b, k])
                assert float(batch.visible_fraction[b, k]) == 1.0
            assert 1 <= int(batch.labels[b, k]) <= n_classes
            # One keypoint: the defect centre, projected; visible (2) when inside the image.
            kp = batch.keypoints[b, k, 0].double()
            c_px = K @ batch.boxes3d_center[b, k].double()
            torch.testing.assert_close(kp[:2], c_px[:2] / c_px[2], atol=2e-3, rtol=0)
            assert float(kp[2]) == (2.0 if (0 <= kp[0] < 64 and 0 <= kp[1] < 64) else 0.0)
            assert (batch.keypoints[b, k, 1:] == 0).all()


def test_decoys_are_drawn_but_never_labeled():
    data = {"surface": "inspection", "objects": {"count": 0}, "shadows": False,
            "defect_types": [{"name": "crack", "kind": "crack"}, {"name": "stain", "kind": "stain", "decoy": True},
                             {"name": "dust", "kind": "dust", "decoy": True}],
            "defects": {"count": 0, "decoys": 3, "size": 2.0, "contrast": 0.8}}
    batch = SynthDataset(data, batch_size=4, resolution=48, sensor=False).render_batch(torch.arange(4))
    clean = SynthDataset({**data, "defects": {**data["defects"], "decoys": 0}}, batch_size=4, resolution=48,
                         sensor=False).render_batch(torch.arange(4))
    assert batch.class_names == ("crack",)
    assert not batch.valid.any() and (batch.instance == 0).all() and (batch.semantic == 0).all()
    assert (batch.boxes == 0).all() and (batch.keypoints == 0).all()
    assert torch.equal(clean.semantic, batch.semantic)
    assert (batch.image - clean.image).abs().amax() > 0.1  # the decoys are in the picture


def test_instance_numbering_defects_after_objects():
    """Objects take instances 1..max_objects, defects max_objects + d + 1; semantic ids follow class_names."""
    data = {"categories": [{"name": "cube", "shape": "box"}], "objects": {"count": 2},
            "defect_types": [{"name": "scratch", "kind": "crack"}], "defects": {"count": 2, "size": 3.0},
            "shadows": False}
    batch = SynthDataset(data, batch_size=2, resolution=48, sensor=False).render_batch(torch.arange(2))
    assert batch.class_names == ("cube", "scratch")
    assert batch.valid.shape[1] == 4
    assert torch.equal(batch.labels, torch.tensor([[1, 1, 2, 2]] * 2))
    ids = set(batch.instance.unique().tolist()) - {0}
    assert ids and ids <= {1, 2, 3, 4}
    for k in ids:
        assert (batch.semantic[batch.instance == k] == (1 if k <= 2 else 2)).all()


def test_drop_hidden(tabletop_pair):
    _, batch, _ = tabletop_pair
    dropped = batch.drop_hidden(min_visible_pixels=10)
    assert torch.equal(dropped.valid, batch.valid & (batch.visible_pixels >= 10))
    assert torch.equal(dropped.instance, batch.instance) and torch.equal(dropped.boxes, batch.boxes)
    frac = batch.drop_hidden(min_visible_pixels=1, min_visible_fraction=0.6)
    assert torch.equal(frac.valid, batch.valid & (batch.visible_pixels >= 1) & (batch.visible_fraction >= 0.6))
    assert dropped.valid.sum() <= batch.valid.sum()


def test_to_torchvision_feeds_a_detection_model(tabletop_pair):
    from torchvision import tv_tensors
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    _, batch, scenario = tabletop_pair
    images, targets = batch.to_torchvision()
    assert len(images) == len(targets) == len(batch)
    for i, t in enumerate(targets):
        assert isinstance(t["boxes"], tv_tensors.BoundingBoxes)
        assert t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY and tuple(t["boxes"].canvas_size) == (H, W)
        assert isinstance(t["masks"], tv_tensors.Mask) and t["masks"].dtype == torch.bool
        assert t["masks"].shape == (len(t["boxes"]), H, W)
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
        for box, mask in zip(t["boxes"], t["masks"]):
            torch.testing.assert_close(box.as_subclass(torch.Tensor), mask_extent(mask))
        assert t["labels"].dtype == torch.int64
        assert ((t["labels"] >= 1) & (t["labels"] <= len(scenario.class_names))).all()
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                              num_classes=len(scenario.class_names) + 1, min_size=96, max_size=128)
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_torchvision_flip_moves_keypoints_with_boxes_and_masks(tabletop_pair):
    """v2 transforms move every target leaf: after a horizontal flip the keypoints are mirrored like the boxes
    (a keypoint at x lands at W - x in the batch's pixel-corner convention) and stay inside their flipped box."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    _, batch, _ = tabletop_pair
    images, targets = batch.to_torchvision()
    checked = 0
    for image, target in zip(images, targets):
        assert isinstance(target["keypoints"], tv_tensors.KeyPoints)
        assert tuple(target["keypoints"].canvas_size) == (H, W)
        flipped_image, flipped = v2.RandomHorizontalFlip(p=1.0)(tv_tensors.Image(image), target)
        torch.testing.assert_close(flipped_image.as_subclass(torch.Tensor), image.flip(-1))
        assert torch.equal(flipped["masks"], target["masks"].flip(-1))
        kp, kp_f = target["keypoints"].as_subclass(torch.Tensor), flipped["keypoints"].as_subclass(torch.Tensor)
        torch.testing.assert_close(kp_f[..., 0] + 0.5, W - (kp[..., 0] + 0.5))
        torch.testing.assert_close(kp_f[..., 1], kp[..., 1])
        box, box_f = target["boxes"].as_subclass(torch.Tensor), flipped["boxes"].as_subclass(torch.Tensor)
        torch.testing.assert_close(box_f[:, [0, 2]], W - box[:, [2, 0]])
        # keypoints seen in the image lie within the amodal extent; tight boxes contain the visible ones
        visible = (target["keypoints_visibility"] == 2)
        xy = kp_f + 0.5
        inside = ((xy[..., 0] >= box_f[:, None, 0] - 1) & (xy[..., 0] <= box_f[:, None, 2] + 1)
                  & (xy[..., 1] >= box_f[:, None, 1] - 1) & (xy[..., 1] <= box_f[:, None, 3] + 1))
        assert inside[visible].all()
        checked += int(visible.sum())
    assert checked > 0


def test_batch_fields_have_documented_shapes(tabletop_pair):
    _, batch, _ = tabletop_pair
    B, N = batch.valid.shape
    shapes = {"image": (B, 3, H, W), "depth": (B, 1, H, W), "normals": (B, 3, H, W), "instance": (B, H, W),
              "semantic": (B, H, W), "labels": (B, N), "boxes": (B, N, 4), "amodal_boxes": (B, N, 4),
              "boxes3d_center": (B, N, 3), "boxes3d_size": (B, N, 3), "boxes3d_rotation": (B, N, 3, 3),
              "boxes3d_corners": (B, N, 8, 2), "keypoints": (B, N, 8, 3), "visible_pixels": (B, N),
              "visible_fraction": (B, N), "K": (B, 3, 3), "world_to_cam": (B, 4, 4), "slice_id": (B,),
              "sample_id": (B,)}
    for name, shape in shapes.items():
        assert tuple(getattr(batch, name).shape) == shape, name
    assert all(f.name in shapes or f.name in ("valid", "params", "class_names", "slice_names", "batch_index",
                                               "mixture_version", "extras")
               for f in fields(batch))
    # Background has zero depth and normal.
    bg = batch.depth[:, 0] == 0
    assert (batch.normals.permute(0, 2, 3, 1)[bg] == 0).all()
