"""Sampling a scenario into per-image scene specifications (kornia-style: sample here, apply in the renderer).

Every value is a pure function of (scenario digest, seed, sample index, slice), drawn with the
counter-based generator in :mod:`synth_torch.scenario.random`, vectorised over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from synth_torch.camera import intrinsics, mat_mat, mat_vec, orbit_pose
from synth_torch.scenario.config import DEFECT_KINDS, PARAM_NAMES, TEXTURES, Scenario
from synth_torch.scenario.distributions import Dist
from synth_torch.scenario.random import normal, sample_keys, uniform
from synth_torch.scene.library import shape_proportions

KIND_OBJECT, KIND_DISTRACTOR, KIND_OCCLUDER = 0, 1, 2
PER_OBJECT_PARAMS = ("material.saturation", "material.value", "material.texture_scale", "material.texture_contrast")
GROUND_HALF_SIZE = {"tabletop": 3.0, "inspection": 0.16}  # metres
TARGET_HEIGHT = 0.03  # the camera orbits a point this high above the ground


@dataclass
class SceneSpec:
    """Everything the renderer needs for a batch of B images with S object slots and D defect slots.

    Frames: world z-up metres (ground at z = 0). Slot kinds: 0 labeled object, 1 distractor, 2 occluder.
    """

    keys: torch.Tensor  # [B] int64 sample keys
    sample_index: torch.Tensor  # [B] int64
    slice_id: torch.Tensor  # [B] int64
    params: dict[str, torch.Tensor]  # name -> [B] float32, every sampled scene parameter
    K: torch.Tensor  # [B, 3, 3]
    world_to_cam: torch.Tensor  # [B, 4, 4]
    light_dir: torch.Tensor  # [B, 3] unit vector towards the light
    light_color: torch.Tensor  # [B, 3] linear RGB times intensity
    slot_valid: torch.Tensor  # [B, S] bool
    slot_kind: torch.Tensor  # [B, S] long
    slot_shape: torch.Tensor  # [B, S] long, index into ``shapes``
    slot_label: torch.Tensor  # [B, S] long, class id (1..C) of labeled objects, else 0
    slot_scale: torch.Tensor  # [B, S, 3] metres along the template's axes
    slot_rotation: torch.Tensor  # [B, S, 3, 3] object-to-world
    slot_translation: torch.Tensor  # [B, S, 3] world position of the template centre
    slot_albedo: torch.Tensor  # [B, S, 3]
    slot_texture: torch.Tensor  # [B, S] long, index into TEXTURES
    slot_texture_params: torch.Tensor  # [B, S, 3] (scale, contrast, phase)
    ground_albedo: torch.Tensor  # [B, 3]
    ground_texture: torch.Tensor  # [B] long
    ground_texture_params: torch.Tensor  # [B, 4] (scale, contrast, phase, grain)
    defect_type: torch.Tensor  # [B, D] long, index into scenario.defect_types, -1 for empty slots
    defect_kind: torch.Tensor  # [B, D] long, index into DEFECT_KINDS (valid where defect_type >= 0)
    defect_center: torch.Tensor  # [B, D, 2] ground-plane xy (metres)
    defect_size: torch.Tensor  # [B, D] metres
    defect_angle: torch.Tensor  # [B, D] radians
    defect_contrast: torch.Tensor  # [B, D]
    defect_seed: torch.Tensor  # [B, D] float phase in [0, 1)
    shapes: tuple[str, ...]
    surface: str

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def to(self, device) -> SceneSpec:
        return SceneSpec(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k = torch.stack(((5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6), -1)
    return v[..., None] - v[..., None] * s[..., None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_temperature_rgb(kelvin: torch.Tensor) -> torch.Tensor:
    """Approximate sRGB colour of a black body at ``kelvin`` [B] (1000-40000 K), max channel 1. Shape [B, 3]."""
    t = kelvin / 100.0
    r = torch.where(t <= 66, torch.full_like(t, 255.0), 329.698727446 * (t - 60).clamp_min(1e-3) ** -0.1332047592)
    g = torch.where(t <= 66, 99.4708025861 * torch.log(t) - 161.1195681661,
                    288.1221695283 * (t - 60).clamp_min(1e-3) ** -0.0755148492)
    b = torch.where(t >= 66, torch.full_like(t, 255.0),
                    torch.where(t <= 19, torch.zeros_like(t), 138.5177312231 * torch.log((t - 10).clamp_min(1e-3))
                                - 305.0447927307))
    rgb = torch.stack((r, g, b), -1).clamp(0, 255) / 255.0
    return rgb / rgb.amax(-1, keepdim=True)


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    c, s, z, o = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((c, -s, z, s, c, z, z, z, o), -1).reshape(*angle.shape, 3, 3)


def _rotation_x(angle: torch.Tensor) -> torch.Tensor:
    c, s, z, o = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((o, z, z, z, c, -s, z, s, c), -1).reshape(*angle.shape, 3, 3)


def _random_rotation(keys: torch.Tensor, stream: str, n: int) -> torch.Tensor:
    """Uniform random rotations [B, n, 3, 3] from normalised Gaussian quaternions."""
    q = normal(keys, stream, (n, 4))
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)).unbind(-1)
    return torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1).reshape(-1, n, 3, 3)


class ScenarioSampler:
    """Draws :class:`SceneSpec` batches from a :class:`Scenario`.

    Args:
        scenario: the validated scenario.
        seed: user seed; with the scenario digest it forms the base of every sample key.
        extra_slices: optional further slices ``name -> overrides`` (e.g. mined ones), appended after the
            scenario's own slices, so slice ids of the scenario stay stable.
    """

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.seed = int(seed)
        self.base = (scenario.digest() ^ (self.seed * 0x9E3779B1)) & 0x7FFFFFFF
        self.shapes = tuple(sorted({c.shape for c in scenario.categories} | set(scenario.distractor_shapes)
                                   | ({"box"} if scenario.max_occluders else set())))
        self.max_slots = scenario.max_objects + scenario.max_distractors + scenario.max_occluders

    def keys(self, sample_index: torch.Tensor) -> torch.Tensor:
        return sample_keys(self.base, sample_index)

    def _draw(self, name: str, keys: torch.Tensor, slice_overrides: list[dict[str, Dist]], slice_id: torch.Tensor,
              shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Sample parameter ``name`` for each sample under its slice's override (if any)."""
        u = uniform(keys, name, shape)
        out = self.scenario.parameters[name].icdf(u)
        for k, overrides in enumerate(slice_overrides):
            if name in overrides:
                rows = slice_id == k
                if rows.any():
                    out[rows] = overrides[name].icdf(u[rows])
        return out

    def sample(self, sample_index: torch.Tensor, slice_id: torch.Tensor, slice_overrides: list[dict[str, Dist]],
               resolution: tuple[int, int]) -> SceneSpec:
        """Scene specs for ``sample_index`` [B] drawn under ``slice_id`` [B] (index into ``slice_overrides``)."""
        sc = self.scenario
        H, W = resolution
        sample_index = sample_index.to(torch.int64).cpu()
        slice_id = slice_id.to(torch.int64).cpu()
        keys = self.keys(sample_index) ^ (slice_id * 0x61C88647 & 0xFFFFFFFF)
        B = keys.shape[0]
        draw = lambda name, shape=(): self._draw(name, keys, slice_overrides, slice_id, shape)  # noqa: E731
        params = {name: draw(name) for name in PARAM_NAMES if name not in PER_OBJECT_PARAMS}

        # Camera: orbit around a point just above the ground.
        fx = params["camera.focal_mm"] * W / params["camera.sensor_mm"]
        jitter_y = sc.parameters["camera.principal_jitter"].icdf(uniform(keys, "camera.principal_jitter_y"))
        cx = W / 2 + params["camera.principal_jitter"] * W
        cy = H / 2 + jitter_y * H
        K = intrinsics(fx, fx, cx, cy)
        target = torch.tensor([0.0, 0.0, TARGET_HEIGHT if sc.surface == "tabletop" else 0.0]).expand(B, 3)
        world_to_cam = orbit_pose(target, params["camera.distance"], torch.deg2rad(params["camera.azimuth_deg"]),
                                  torch.deg2rad(params["camera.elevation_deg"]), torch.deg2rad(params["camera.roll_deg"]))
        params.update({"camera.fx": fx, "camera.cx": cx, "camera.cy": cy})

        el, az = torch.deg2rad(params["light.elevation_deg"]), torch.deg2rad(params["light.azimuth_deg"])
        light_dir = torch.stack((torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)), -1)
        light_color = color_temperature_rgb(params["light.temperature_k"]) * params["light.intensity"][:, None]

        slots = self._slots(keys, params, draw, world_to_cam, target)
        defects = self._defects(keys, params)
        ground_tex_choice = (uniform(keys, "ground.texture") * len(sc.ground_textures)).long()
        ground_texture = torch.tensor([TEXTURES.index(t) for t in sc.ground_textures])[ground_tex_choice]
        ground_albedo = _hsv_to_rgb(uniform(keys, "ground.hue"), params["ground.saturation"], params["ground.value"])
        ground_params = torch.stack((params["ground.texture_scale"], params["ground.texture_contrast"],
                                     uniform(keys, "ground.phase"), params["ground.grain"]), -1)
        return SceneSpec(keys=keys, sample_index=sample_index, slice_id=slice_id, params=params, K=K,
                         world_to_cam=world_to_cam, light_dir=light_dir, light_color=light_color, **slots,
                         ground_albedo=ground_albedo, ground_texture=ground_texture,
                         ground_texture_params=ground_params, **defects, shapes=self.shapes, surface=sc.surface)

    def _slots(self, keys, params, draw, world_to_cam, target) -> dict[str, torch.Tensor]:
        sc = self.scenario
        B, S = keys.shape[0], self.max_slots
        n_obj, n_dis, n_occ = sc.max_objects, sc.max_distractors, sc.max_occluders
        kind = torch.tensor([KIND_OBJECT] * n_obj + [KIND_DISTRACTOR] * n_dis + [KIND_OCCLUDER] * n_occ,
                            dtype=torch.long).expand(B, S)
        counts = {KIND_OBJECT: params["objects.count"], KIND_DISTRACTOR: params["objects.distractors"],
                  KIND_OCCLUDER: params["objects.occluders"]}
        rank = torch.cat([torch.arange(n) for n in (n_obj, n_dis, n_occ)]).expand(B, S)
        valid = torch.zeros(B, S, dtype=torch.bool)
        for k, c in counts.items():
            valid |= (kind == k) & (rank < torch.round(c)[:, None])

        # Shapes and labels: categories for objects, distractor shapes, boxes for occluders.
        u_cat = uniform(keys, "objects.category", (S,))
        cat = (u_cat * max(len(sc.categories), 1)).long().clamp(max=max(len(sc.categories) - 1, 0))
        cat_shape = torch.tensor([self.shapes.index(c.shape) for c in sc.categories] or [0])
        dis = (u_cat * max(len(sc.distractor_shapes), 1)).long().clamp(max=max(len(sc.distractor_shapes) - 1, 0))
        dis_shape = torch.tensor([self.shapes.index(s) for s in sc.distractor_shapes] or [0])
        box = self.shapes.index("box") if "box" in self.shapes else 0
        shape = torch.where(kind == KIND_OBJECT, cat_shape[cat], torch.where(kind == KIND_DISTRACTOR, dis_shape[dis], box))
        label = torch.where((kind == KIND_OBJECT) & valid, cat + 1, 0)

        # Sizes: the category's largest extent, scaled by objects.scale, one axis stretched by the aspect.
        u_size, u_aspect = uniform(keys, "objects.size", (S,)), uniform(keys, "objects.aspect", (S,))
        size = torch.full((B, S), 0.1)
        aspect = torch.ones(B, S)
        for i, c in enumerate(sc.categories):
            rows = kind == KIND_OBJECT
            rows &= cat == i
            size = torch.where(rows, c.size.icdf(u_size), size)
            aspect = torch.where(rows, c.aspect.icdf(u_aspect), aspect)
        size = size * params["objects.scale"][:, None]
        spread = params["objects.spread"]
        grid = max(1, math.ceil(math.sqrt(max(n_obj + n_dis, 1))))
        cell = 2 * spread / grid
        natural = shape_proportions(self.shapes)[shape] * torch.stack((torch.ones_like(aspect),
                                                                       torch.ones_like(aspect), aspect), -1)
        scale = size[..., None] * natural / natural.amax(-1, keepdim=True)

        yaw = 2 * math.pi * uniform(keys, "objects.yaw", (S,))
        tilt = torch.deg2rad(params["objects.tilt_deg"])[:, None] * (2 * uniform(keys, "objects.tilt", (S,)) - 1)
        if sc.placement == "floating":
            rotation = _random_rotation(keys, "objects.rotation", S)
        else:
            rotation = mat_mat(_rotation_z(yaw), _rotation_x(tilt))
        # Lowest point of the rotated template box, so objects rest on the ground exactly when upright.
        corners = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)])
        # Footprint radius: half the horizontal diagonal (whole diagonal once tilted); shrink objects whose
        # footprint exceeds 95% of their grid cell so that neighbours can never intersect.
        reach = 0.5 * torch.where((tilt == 0)[..., None], scale * torch.tensor([1.0, 1.0, 0.0]), scale).norm(dim=-1)
        shrink = (0.475 * cell[:, None] / reach.clamp_min(1e-9)).clamp(max=1.0)
        scale, reach = scale * shrink[..., None], reach * shrink
        world_corners = mat_vec(rotation[:, :, None], corners * scale[:, :, None])  # [B, S, 8, 3]
        lowest, highest = world_corners[..., 2].amin(-1), world_corners[..., 2].amax(-1)

        # Ground placement on a jittered grid: each slot gets its own cell, so objects never intersect.
        order = torch.argsort(uniform(keys, "objects.cells", (grid * grid,)), dim=1)
        slot_cell = torch.cat((order, order.new_zeros(B, max(0, S - grid * grid))), 1)[:, :S]
        cx = (slot_cell % grid).float() + 0.5
        cy = (slot_cell // grid).float() + 0.5
        margin = (cell[:, None] / 2 - reach).clamp_min(0)
        jx = (2 * uniform(keys, "objects.jitter_x", (S,)) - 1) * margin
        jy = (2 * uniform(keys, "objects.jitter_y", (S,)) - 1) * margin
        x = -spread[:, None] + cx * cell[:, None] + jx
        y = -spread[:, None] + cy * cell[:, None] + jy
        z = -lowest
        if sc.placement == "floating":
            z = spread[:, None] * (0.3 + 1.2 * uniform(keys, "objects.height", (S,)))
        elif sc.placement == "stacked":
            # Every second object sits on the one before it (same cell).
            below = torch.arange(S) - 1
            stack = (torch.arange(S) % 2 == 1) & (kind[0] == KIND_OBJECT) & (below >= 0)
            stack_rows = stack[None].expand(B, S) & valid[:, below.clamp(min=0)]
            x = torch.where(stack_rows, x[:, below.clamp(min=0)], x)
            y = torch.where(stack_rows, y[:, below.clamp(min=0)], y)
            z = torch.where(stack_rows, highest[:, below.clamp(min=0)] - lowest[:, below.clamp(min=0)] - lowest, z)
        translation = torch.stack((x, y, z), -1)

        # Occluders: planks floating between the camera and the scene centre.
        occ = kind == KIND_OCCLUDER
        if occ.any():
            R_wc, t_wc = world_to_cam[:, :3, :3], world_to_cam[:, :3, 3]
            eye = -mat_vec(R_wc.transpose(1, 2), t_wc)
            right, up = R_wc[:, 0], -R_wc[:, 1]
            t = 0.35 + 0.25 * uniform(keys, "occluders.depth", (S,))
            lateral = (2 * uniform(keys, "occluders.x", (S,)) - 1) * spread[:, None] * 0.6
            vertical = (2 * uniform(keys, "occluders.y", (S,)) - 1) * spread[:, None] * 0.4
            centre = (target[:, None] + t[..., None] * (eye - target)[:, None] + lateral[..., None] * right[:, None]
                      + vertical[..., None] * up[:, None])
            translation = torch.where(occ[..., None], centre, translation)
            plank = torch.stack((0.5 + 0.6 * uniform(keys, "occluders.length", (S,)),
                                 0.04 + 0.04 * uniform(keys, "occluders.width", (S,)),
                                 0.04 + 0.04 * uniform(keys, "occluders.thickness", (S,))), -1) * spread[:, None, None]
            scale = torch.where(occ[..., None], plank, scale)
            spin = mat_mat(_rotation_z(yaw), _rotation_x(2 * math.pi * uniform(keys, "occluders.spin", (S,))))
            rotation = torch.where(occ[..., None, None], spin, rotation)

        # Materials, per object, under the slice's material distributions.
        sat, val = draw("material.saturation", (S,)), draw("material.value", (S,))
        albedo = _hsv_to_rgb(uniform(keys, "material.hue", (S,)), sat, val)
        tex_scale, tex_contrast = draw("material.texture_scale", (S,)), draw("material.texture_contrast", (S,))
        u_tex = uniform(keys, "material.texture", (S,))
        texture = torch.zeros(B, S, dtype=torch.long)
        for i, c in enumerate(sc.categories):
            allowed = torch.tensor([TEXTURES.index(t) for t in c.textures])
            pick = allowed[(u_tex * len(allowed)).long().clamp(max=len(allowed) - 1)]
            texture = torch.where((kind == KIND_OBJECT) & (cat == i), pick, texture)
        tex_params = torch.stack((tex_scale, tex_contrast, uniform(keys, "material.phase", (S,))), -1)
        denom = valid.sum(1).clamp_min(1)
        for name, value in zip(PER_OBJECT_PARAMS, (sat, val, tex_scale, tex_contrast)):
            params[name] = (value * valid).sum(1) / denom
        return dict(slot_valid=valid, slot_kind=kind.clone(), slot_shape=shape, slot_label=label, slot_scale=scale,
                    slot_rotation=rotation, slot_translation=translation, slot_albedo=albedo, slot_texture=texture,
                    slot_texture_params=tex_params)

    def _defects(self, keys, params) -> dict[str, torch.Tensor]:
        sc = self.scenario
        B, D = keys.shape[0], sc.max_defects
        if D == 0:
            z = torch.zeros(B, 0)
            return dict(defect_type=z.long(), defect_kind=z.long(), defect_center=torch.zeros(B, 0, 2), defect_size=z, defect_angle=z,
                        defect_contrast=z, defect_seed=z)
        weights = torch.tensor([d.weight for d in sc.defect_types])
        cdf = torch.cumsum(weights, 0) / weights.sum()
        kind = torch.searchsorted(cdf, uniform(keys, "defects.type", (D,)).contiguous(), right=True)
        kind = kind.clamp(max=len(weights) - 1)
        present = torch.arange(D)[None] < torch.round(params["defects.count"])[:, None]
        u_size = uniform(keys, "defects.size", (D,))
        side = 2 * GROUND_HALF_SIZE["inspection"]
        size = torch.zeros(B, D)
        for i, d in enumerate(sc.defect_types):
            size = torch.where(kind == i, d.size.icdf(u_size) * side, size)
        size = size * params["defects.size"][:, None]
        jitter = 0.85 + 0.3 * uniform(keys, "defects.contrast_jitter", (D,))
        contrast = (params["defects.contrast"][:, None] * jitter).clamp(0, 1)
        centre = (2 * uniform(keys, "defects.center", (D, 2)) - 1) * (0.6 * GROUND_HALF_SIZE["inspection"])
        kinds = torch.tensor([DEFECT_KINDS.index(d.kind) for d in sc.defect_types])
        return dict(defect_type=torch.where(present, kind, -1), defect_kind=kinds[kind], defect_center=centre, defect_size=size,
                    defect_angle=math.pi * uniform(keys, "defects.angle", (D,)), defect_contrast=contrast,
                    defect_seed=uniform(keys, "defects.seed", (D,)))
