"""The torch pipeline is differentiable with respect to the scene: light direction and intensity, material albedo,
object translation and rotation, camera pose, defect contrast and size. Each autograd directional derivative of a
fixed random projection of the image is checked against central finite differences of the same render.

Shading parameters (light, albedo, defects) move no geometry: the whole image is compared. Geometric parameters
(poses, camera) also move triangle boundaries, where the image jumps by whole pixels; antialiasing turns
silhouette jumps into smooth changes only approximately (its own gradient is checked in
``tests/render/test_render_antialias.py``). Their check compares the pixels whose triangle does not change within
the finite-difference step and that are not seen at a grazing angle (where the normal facing the camera may flip
sign), on smooth surfaces (spheres, Lambertian, smooth textures), where the image is a smooth function of the pose
and autograd must agree with finite differences to a fraction of a percent of sum |w * dI/dt| (the random
projection w has signed weights, so the sum itself may be much smaller than its terms).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import synth_torch.render as dr
from synth_torch.scenario import ScenarioSampler, load_scenario
from synth_torch.scene import assemble, build_gbuffer
from synth_torch.shading import render_image
from synth_torch.shading.materials import LightTable

RES = (64, 64)
CTX = dr.RasterizeContext(device="cpu")
TABLE = {"objects": {"count": 3, "distractors": 0}, "sensor": {"noise_sigma": 0.0}}
SMOOTH = {"categories": [{"name": "ball", "shape": "sphere", "textures": ["solid", "noise"]}],
          "ground_textures": ["noise"], "objects": {"count": 3}, "light": {"specular": 0.0}}


def _spec(scenario, overrides: dict, seed: int = 0):
    sc = load_scenario(scenario, overrides)
    return ScenarioSampler(sc, seed).sample(torch.arange(2), torch.zeros(2, dtype=torch.long),
                                           [s.overrides for s in sc.slices.values()], RES)


def _render(spec, shadows: bool, antialias: bool = True):
    geom = assemble(spec, fast=False)
    gbuffer = build_gbuffer(spec, geom, CTX, RES, shadows=shadows, fast=False)
    return render_image(spec, geom, gbuffer, "torch", antialias=antialias), gbuffer


def _check(spec, edit, eps: float, rtol: float, shadows: bool = True, geometric: bool = False):
    """``edit(spec, t)`` moves the scene along one direction by the scalar t (t = 0: unchanged)."""
    weights = torch.rand(2, 3, *RES, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    with torch.no_grad():
        (plus, g_plus), (minus, g_minus), (_, g) = (_render(edit(spec, torch.tensor(v)), shadows, not geometric)
                                                   for v in (eps, -eps, 0.0))
    if geometric:  # pixels whose visible triangle stays the same over the step, not at grazing angles, and that
        # stay on one side of the Lambertian terminator (max(0, n.l) has a kink there)
        ids = [x.rast[..., 3] for x in (g_plus, g_minus, g)]
        facing = -(g.normal * g.position).sum(-1) / g.position.norm(dim=-1).clamp_min(1e-9)
        light = LightTable.from_spec(spec).direction[:, None, None]
        lit = [(x.normal * light).sum(-1) > 0 for x in (g_plus, g_minus)]
        keep = (ids[0] == ids[2]) & (ids[1] == ids[2]) & ((facing > 0.1) | (g.slot < 0)) & (lit[0] == lit[1])
        weights = weights * keep[:, None]
    # The image is clamped to [0, 1]: pixels that touch a bound within the step are not differentiable there.
    weights = weights * ((plus > 1e-6) & (plus < 1 - 1e-6) & (minus > 1e-6) & (minus < 1 - 1e-6))
    fd = float(((plus.double() - minus.double()) * weights).sum()) / (2 * eps)
    t = torch.zeros((), requires_grad=True)
    image, _ = _render(edit(spec, t), shadows, not geometric)
    (grad,) = torch.autograd.grad((image.double() * weights).sum(), t)
    # Random signed weights make the projection a sum of terms that largely cancel: the error is measured against
    # the size of those terms, sum |w * dI/dt|, not against their (possibly small) sum.
    scale = float(((plus.double() - minus.double()).abs() * weights.abs()).sum()) / (2 * eps)
    assert math.isfinite(float(grad)) and abs(fd) > 1e-3, (float(grad), fd)
    assert abs(float(grad) - fd) <= rtol * scale, (float(grad), fd, scale)


def test_light_intensity():
    spec = _spec("tabletop", TABLE)
    _check(spec, lambda s, t: replace(s, light=replace(s.light, intensity=s.light.intensity + t)), 1e-2, 1e-4)


def test_light_direction():
    spec = _spec("tabletop", TABLE)
    d = torch.tensor([0.3, -0.2, 0.1])

    def edit(s, t):
        direction = s.light.direction + t * d
        return replace(s, light=replace(s.light, direction=direction / direction.norm(dim=-1, keepdim=True)))

    _check(spec, edit, 1e-3, 1e-4, shadows=False)


def test_material_albedo():
    spec = _spec("tabletop", TABLE)
    d = torch.rand(spec.objects.albedo.shape, generator=torch.Generator().manual_seed(1))
    _check(spec, lambda s, t: replace(s, objects=replace(s.objects, albedo=s.objects.albedo + t * d)), 1e-2, 1e-4)


def test_object_translation():
    spec = _spec(SMOOTH, {})
    d = torch.zeros(spec.objects.translation.shape)
    d[:, :, 0], d[:, :, 1] = 1.0, 0.5
    _check(spec, lambda s, t: replace(s, objects=replace(s.objects, translation=s.objects.translation + t * d)),
           1e-4, 1e-3, shadows=False, geometric=True)


def test_object_rotation():
    spec = _spec(SMOOTH, {})

    def edit(s, t):
        c, sn, z, o = torch.cos(t), torch.sin(t), torch.zeros(()), torch.ones(())
        Rz = torch.stack((c, -sn, z, sn, c, z, z, z, o)).view(3, 3)
        Rx = torch.stack((o, z, z, z, c, -sn, z, sn, c)).view(3, 3)
        return replace(s, objects=replace(s.objects, rotation=Rx @ Rz @ s.objects.rotation))

    _check(spec, edit, 2e-4, 3e-3, shadows=False, geometric=True)


def test_camera_pose():
    spec = _spec(SMOOTH, {})
    d = torch.zeros(4, 4)
    d[0, 3], d[1, 3], d[2, 3] = 1.0, -0.5, 0.3  # slide the camera in its own frame

    def edit(s, t):
        return replace(s, camera=replace(s.camera, world_to_cam=s.camera.world_to_cam + t * d))

    _check(spec, edit, 1e-4, 1e-4, shadows=False, geometric=True)


@pytest.mark.parametrize("field,eps,rtol", [("contrast", 1e-2, 1e-4), ("size", 1e-4, 1e-3)])
def test_defect_contrast_and_size(field, eps, rtol):
    spec = _spec("defects", {"defects": {"count": 3, "decoys": 0}, "sensor": {"noise_sigma": 0.0}})
    assert (spec.defects.type[:, :3] >= 0).all() and (spec.defects.type[:, 3:] < 0).all()

    def edit(s, t):
        value = getattr(s.defects, field)
        return replace(s, defects=replace(s.defects, **{field: value * (1 + t)}))

    _check(spec, edit, eps, rtol, shadows=False)
