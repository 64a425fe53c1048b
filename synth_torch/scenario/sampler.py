"""Sampling a scenario into scene specifications, kornia-style: :meth:`ScenarioSampler.sample_params` draws
every random value of a batch (:class:`SceneParams`), :meth:`ScenarioSampler.build` applies them
(:class:`~synth_torch.spec.types.SceneSpec`), deterministically and differentiably in the continuous values.

Every value is a pure function of (scenario digest, seed, sample index, slice), drawn with the counter-based
generator of :mod:`synth_torch.spec.random`, vectorised over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.camera import intrinsics, mat_mat, mat_vec, orbit_pose
from synth_torch.scenario.config import Scenario
from synth_torch.scenario.distributions import ConfigError, Dist, ParamTable
from synth_torch.scene.assets import environment_irradiance, list_images, uniform_environment
from synth_torch.scene.library import shape_extents, shape_has_colors, shape_proportions
from synth_torch.spec import params as registry
from synth_torch.spec.constants import DEFECT_KINDS, GROUND_HALF_SIZE, TARGET_HEIGHT, TEXTURES, SlotKind
from synth_torch.spec.random import Streams, sample_keys, stable_hash
from synth_torch.spec.types import CameraSpec, DefectSpec, GroundSpec, LightSpec, ObjectSpec, SceneSpec

__all__ = ["SceneParams", "ScenarioSampler", "color_temperature_rgb"]

SCALAR_PARAMS = tuple(p.name for p in registry.PARAMS if not p.per_object)
OBJECT_PARAMS = tuple(p.name for p in registry.PARAMS if p.per_object)
_ROTATION_PAIR = 0x5BD1E995  # second uniform stream of a Box-Muller pair (as spec.random.normal)
_SLICE_SALT = 0x61C88647


@dataclass(frozen=True)
class SceneParams:
    """Every random value of a batch of B samples, before it is applied.

    sample_index, slice_id, keys: [B] int64.
    values: ``name -> [B]`` float32 for every per-image registry parameter, ``[B, S]`` for per-object ones
    (``material.*``); integer parameters hold integer values. These are the values a hard-example search
    may change (within the scenario's supports) before :meth:`ScenarioSampler.build`.
    draws: ``name -> [B, ...]`` uniforms in [0, 1) for structural choices (categories, yaw, placement cells,
    colours, defect types and positions, ...).
    """

    sample_index: Tensor
    slice_id: Tensor
    keys: Tensor
    values: dict[str, Tensor]
    draws: dict[str, Tensor]


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    k = torch.stack(((5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6), -1)
    return v[..., None] - v[..., None] * s[..., None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_temperature_rgb(kelvin: Tensor) -> Tensor:
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


def _rotation_z(angle: Tensor) -> Tensor:
    c, s, z, o = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((c, -s, z, s, c, z, z, z, o), -1).reshape(*angle.shape, 3, 3)


def _rotation_x(angle: Tensor) -> Tensor:
    c, s, z, o = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((o, z, z, z, c, -s, z, s, c), -1).reshape(*angle.shape, 3, 3)


def _quaternion_rotation(u1: Tensor, u2: Tensor) -> Tensor:
    """Uniform random rotations [..., 3, 3] from normalised Gaussian quaternions (Box-Muller on u1, u2 [..., 4])."""
    q = torch.sqrt(-2.0 * torch.log(u1.clamp_min(1.0 / (1 << 24)))) * torch.cos(2.0 * math.pi * u2)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)).unbind(-1)
    return torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1).reshape(
        *q.shape[:-1], 3, 3)


class ScenarioSampler:
    """Draws and builds :class:`SceneSpec` batches from a :class:`Scenario`.

    Args:
        scenario: the validated scenario.
        seed: user seed; with the scenario digest it forms the base of every sample key.

    Slices are given per call as a list of per-slice overrides (``slice_overrides[k]``: parameter name ->
    :class:`Dist`), the scenario's slices first, then mined ones, so slice ids of the scenario stay stable.
    """

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.seed = int(seed)
        self.base = (scenario.digest() ^ (self.seed * 0x9E3779B1)) & 0x7FFFFFFF
        sc = scenario
        self.shapes = tuple(sorted({k for c in sc.categories for k in sc.shape_keys(c)} | set(sc.distractor_keys())
                                   | ({"box"} if sc.max_occluders else set())))
        self.num_objects, self.num_distractors, self.num_occluders = sc.max_objects, sc.max_distractors, sc.max_occluders
        self.max_slots = self.num_objects + self.num_distractors + self.num_occluders
        self.max_defects = sc.max_defects
        S, D = self.max_slots, self.max_defects
        self.grid = max(1, math.ceil(math.sqrt(max(self.num_objects + self.num_distractors, 1))))
        self._proportions = shape_proportions(self.shapes)
        self._extents = shape_extents(self.shapes)
        self._has_colors = shape_has_colors(self.shapes)
        # each category's shapes (indices into self.shapes, padded with the first) and their number
        keys = [[self.shapes.index(k) for k in sc.shape_keys(c)] for c in sc.categories] or [[0]]
        width = max(len(k) for k in keys)
        self._category_shapes = torch.tensor([k + k[:1] * (width - len(k)) for k in keys])
        self._category_counts = torch.tensor([len(k) for k in keys])
        self._environments = (torch.stack([environment_irradiance(f) for f in list_images(sc.resolve(
            sc.environment_images))]).float() if sc.environment_images else None)
        self._num_texture_images = len(list_images(sc.resolve(sc.texture_images))) if sc.texture_images else 0
        self._num_backgrounds = len(list_images(sc.resolve(sc.background_images))) if sc.background_images else 0
        streams: list[tuple[str | int, tuple[int, ...]]] = [(n, ()) for n in SCALAR_PARAMS]
        streams += [("camera.principal_jitter_y", ())] + [(n, (S,)) for n in OBJECT_PARAMS]
        draws = {"objects.category": (S,), "objects.size": (S,), "objects.aspect": (S,), "objects.yaw": (S,),
                 "objects.tilt": (S,), "objects.cells": (self.grid * self.grid,), "objects.jitter_x": (S,),
                 "objects.jitter_y": (S,), "material.hue": (S,), "material.texture": (S,), "material.phase": (S,),
                 "ground.texture": (), "ground.hue": (), "ground.phase": (), "ground.image": (), "background.image": (),
                 "defects.type": (D,), "defects.type_size": (D,), "defects.contrast_jitter": (D,), "defects.center": (D, 2),
                 "defects.angle": (D,), "defects.seed": (D,), "defects.side": (D,)}
        if sc.placement == "floating":
            draws["objects.height"] = (S,)
            draws["objects.rotation"] = (S, 4)
        if any(len(c.meshes) > 1 for c in sc.categories):
            draws["objects.mesh"] = (S,)
        if any(c.saturation is not None or c.value is not None for c in sc.categories):
            draws["material.category_saturation"] = (S,)
            draws["material.category_value"] = (S,)
        if any(c.specular is not None for c in sc.categories):
            draws["material.specular"] = (S,)
        if self._environments is not None:
            draws["environment.image"] = ()
            draws["environment.azimuth"] = ()
        if self.num_occluders:
            draws.update({f"occluders.{k}": (S,) for k in ("depth", "x", "y", "length", "width", "thickness", "spin")})
        streams += [(n, s) for n, s in draws.items()]
        if sc.placement == "floating":
            streams.append((stable_hash("objects.rotation") ^ _ROTATION_PAIR, (S, 4)))
        self._draw_names = tuple(draws) + (("objects.rotation/pair",) if sc.placement == "floating" else ())
        self._streams = Streams(streams)
        self._tables: dict = {}

    def keys(self, sample_index: Tensor) -> Tensor:
        """Per-sample random keys [B] (before the slice is mixed in)."""
        return sample_keys(self.base, sample_index)

    def _param_tables(self, slice_overrides: list[dict[str, Dist]]) -> tuple[ParamTable, ParamTable]:
        cache_key = tuple(tuple(sorted(ov.items())) for ov in slice_overrides)
        if cache_key not in self._tables:
            base = self.scenario.parameters

            def dist(ov, name):
                return ov.get(name, base[name])

            scalar = [[dist(ov, n) for n in SCALAR_PARAMS] + [dist(ov, "camera.principal_jitter")]
                      for ov in slice_overrides]
            per_object = [[dist(ov, n) for n in OBJECT_PARAMS] for ov in slice_overrides]
            integer = [registry.get(n).integer for n in SCALAR_PARAMS] + [False]
            self._tables[cache_key] = (ParamTable(scalar, integer),
                                       ParamTable(per_object, [registry.get(n).integer for n in OBJECT_PARAMS]))
        return self._tables[cache_key]

    def sample_params(self, sample_index: Tensor, slice_id: Tensor, slice_overrides: list[dict[str, Dist]]
                      ) -> SceneParams:
        """Draw every random value for samples ``sample_index`` [B] under slices ``slice_id`` [B] (CPU)."""
        sample_index = torch.as_tensor(sample_index, dtype=torch.int64).cpu()
        slice_id = torch.as_tensor(slice_id, dtype=torch.int64).cpu()
        if sample_index.ndim != 1 or slice_id.shape != sample_index.shape:
            raise ValueError(f"sample_index and slice_id must both have shape [B], got {tuple(sample_index.shape)} "
                             f"and {tuple(slice_id.shape)}")
        keys = self.keys(sample_index) ^ (slice_id * _SLICE_SALT & 0xFFFFFFFF)
        u = self._streams.draw(keys)
        scalar, per_object = self._param_tables(slice_overrides)
        names = SCALAR_PARAMS + ("camera.principal_jitter_y",)
        table = scalar.icdf(torch.stack([u[n] for n in names], 1), slice_id)
        values = dict(zip(names, table.unbind(1)))
        if OBJECT_PARAMS:
            obj = per_object.icdf(torch.stack([u[n] for n in OBJECT_PARAMS], 1), slice_id)
            values.update(zip(OBJECT_PARAMS, obj.unbind(1)))
        draws = {n: u[n] for n in self._draw_names if n in u}
        if "objects.rotation/pair" in self._draw_names:
            draws["objects.rotation/pair"] = u[self._streams.names[-1]]
        return SceneParams(sample_index=sample_index, slice_id=slice_id, keys=keys, values=values, draws=draws)

    def sample(self, sample_index: Tensor, slice_id: Tensor, slice_overrides: list[dict[str, Dist]],
               resolution: tuple[int, int]) -> SceneSpec:
        """``build(sample_params(...), resolution)``."""
        return self.build(self.sample_params(sample_index, slice_id, slice_overrides), resolution)

    # ------------------------------------------------------------------------------------------ build
    def build(self, p: SceneParams, resolution: tuple[int, int]) -> SceneSpec:
        """Apply sampled values: a :class:`SceneSpec` for images of ``resolution`` (H, W). Differentiable in
        the continuous ``p.values``."""
        sc, v, d = self.scenario, p.values, p.draws
        H, W = resolution
        B = p.keys.shape[0]
        for name, value in v.items():  # edited values (e.g. by a hard-example search) fail here, named
            bad = ~torch.isfinite(value.detach().cpu()).reshape(B, -1).all(1)
            if bad.any():
                images = bad.nonzero().flatten().tolist()[:10]
                raise ConfigError(f"{name} holds NaN or infinite values (image(s) {images})")
        fx = v["camera.focal_mm"] * W / v["camera.sensor_mm"]
        K = intrinsics(fx, fx, W / 2 + v["camera.principal_jitter"] * W, H / 2 + v["camera.principal_jitter_y"] * H)
        target = torch.tensor([0.0, 0.0, TARGET_HEIGHT if sc.surface == "tabletop" else 0.0]).expand(B, 3)
        world_to_cam = orbit_pose(target, v["camera.distance"], torch.deg2rad(v["camera.azimuth_deg"]),
                                  torch.deg2rad(v["camera.elevation_deg"]), torch.deg2rad(v["camera.roll_deg"]))
        el, az = torch.deg2rad(v["light.elevation_deg"]), torch.deg2rad(v["light.azimuth_deg"])
        light = LightSpec(
            direction=torch.stack((torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)), -1),
            color=color_temperature_rgb(v["light.temperature_k"]), intensity=v["light.intensity"],
            ambient=v["light.ambient"], specular=v["light.specular"], shininess=v["light.shininess"],
            shadow_softness=v["light.shadow_softness"], environment=self._environment(p))
        objects = self._objects(p, world_to_cam, target)
        ground = GroundSpec(
            albedo=_hsv_to_rgb(d["ground.hue"], v["ground.saturation"], v["ground.value"]),
            texture=torch.tensor([TEXTURES.index(t) for t in sc.ground_textures])[
                (d["ground.texture"] * len(sc.ground_textures)).long().clamp(max=len(sc.ground_textures) - 1)],
            texture_scale=v["ground.texture_scale"], texture_contrast=v["ground.texture_contrast"],
            texture_phase=d["ground.phase"], grain=v["ground.grain"],
            image=self._choose(d["ground.image"], self._num_texture_images),
            background=self._choose(d["background.image"], self._num_backgrounds))
        recorded = {n: v[n] for n in SCALAR_PARAMS}
        denom = objects.valid.sum(1).clamp_min(1)
        for n in OBJECT_PARAMS:
            recorded[n] = (v[n] * objects.valid).sum(1) / denom
        return SceneSpec(sample_index=p.sample_index, slice_id=p.slice_id, keys=p.keys,
                         camera=CameraSpec(K=K, world_to_cam=world_to_cam), light=light, objects=objects,
                         ground=ground, defects=self._defects(p), params=recorded, shapes=self.shapes,
                         surface=sc.surface)

    def _environment(self, p: SceneParams) -> Tensor:
        """[B, 3, 4, 4] world-frame irradiance forms: the drawn environment image turned about z by a drawn
        azimuth, or the flat ambient form without environment images."""
        B = p.keys.shape[0]
        if self._environments is None:
            return uniform_environment(B)
        M = self._environments[self._choose(p.draws["environment.image"], len(self._environments))]
        phi = 2 * math.pi * p.draws["environment.azimuth"]
        A = torch.zeros(B, 4, 4)
        A[:, :3, :3] = _rotation_z(-phi)  # E_world(n) = E_env(Rz(-phi) n)
        A[:, 3, 3] = 1.0
        return A.transpose(1, 2)[:, None] @ M @ A[:, None]

    @staticmethod
    def _choose(u: Tensor, n: int) -> Tensor:
        return (u * n).long().clamp(max=n - 1) if n else torch.full(u.shape, -1, dtype=torch.long)

    def _objects(self, p: SceneParams, world_to_cam: Tensor, target: Tensor) -> ObjectSpec:
        sc, v, d = self.scenario, p.values, p.draws
        B, S = p.keys.shape[0], self.max_slots
        n_obj, n_dis, n_occ = self.num_objects, self.num_distractors, self.num_occluders
        kind = torch.tensor([SlotKind.OBJECT] * n_obj + [SlotKind.DISTRACTOR] * n_dis + [SlotKind.OCCLUDER] * n_occ,
                            dtype=torch.long).expand(B, S)
        counts = {SlotKind.OBJECT: v["objects.count"], SlotKind.DISTRACTOR: v["objects.distractors"],
                  SlotKind.OCCLUDER: v["objects.occluders"]}
        rank = torch.cat([torch.arange(n) for n in (n_obj, n_dis, n_occ)]).expand(B, S)
        valid = torch.zeros(B, S, dtype=torch.bool)
        for k, c in counts.items():
            valid |= (kind == k) & (rank < c[:, None])

        # Shapes and labels: categories for objects, distractor shapes, boxes for occluders.
        u_cat = d["objects.category"]
        n_cat, n_dshape = max(len(sc.categories), 1), max(len(sc.distractor_shapes), 1)
        cat = (u_cat * n_cat).long().clamp(max=n_cat - 1)
        count = self._category_counts[cat]
        pick = ((d["objects.mesh"] * count).long().clamp(max=count - 1) if "objects.mesh" in d
                else torch.zeros_like(cat))
        cat_shape = self._category_shapes[cat, pick]  # one of the category's meshes per instance
        dis = (u_cat * n_dshape).long().clamp(max=n_dshape - 1)
        dis_shape = torch.tensor([self.shapes.index(k) for k in sc.distractor_keys()] or [0])
        box = self.shapes.index("box") if "box" in self.shapes else 0
        shape = torch.where(kind == SlotKind.OBJECT, cat_shape,
                            torch.where(kind == SlotKind.DISTRACTOR, dis_shape[dis], box))
        label = torch.where((kind == SlotKind.OBJECT) & valid, cat + 1, 0)

        # Sizes: the category's largest extent (or its scale times the mesh's own), scaled by objects.scale, one
        # axis stretched by the aspect.
        size = torch.full((B, S), 0.1)
        aspect = torch.ones(B, S)
        for i, c in enumerate(sc.categories):
            rows = (kind == SlotKind.OBJECT) & (cat == i)
            own = (c.scale.icdf(d["objects.size"]) * self._extents[shape] if c.scale is not None
                   else c.size.icdf(d["objects.size"]))
            size = torch.where(rows, own, size)
            aspect = torch.where(rows, c.aspect.icdf(d["objects.aspect"]), aspect)
        size = size * v["objects.scale"][:, None]
        spread = v["objects.spread"]
        grid = self.grid
        cell = 2 * spread / grid
        natural = self._proportions[shape] * torch.stack((torch.ones_like(aspect), torch.ones_like(aspect), aspect), -1)
        scale = size[..., None] * natural / natural.amax(-1, keepdim=True)

        yaw = 2 * math.pi * d["objects.yaw"]
        tilt = torch.deg2rad(v["objects.tilt_deg"])[:, None] * (2 * d["objects.tilt"] - 1)
        if sc.placement == "floating":
            rotation = _quaternion_rotation(d["objects.rotation"], d["objects.rotation/pair"])
        else:
            rotation = mat_mat(_rotation_z(yaw), _rotation_x(tilt))
        corners = torch.tensor([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)])
        # Footprint radius: half the horizontal diagonal (whole diagonal once tilted); objects whose footprint
        # exceeds 95% of their grid cell shrink, so neighbours never intersect.
        reach = 0.5 * torch.where((tilt == 0)[..., None], scale * torch.tensor([1.0, 1.0, 0.0]), scale).norm(dim=-1)
        shrink = (0.475 * cell[:, None] / reach.clamp_min(1e-9)).clamp(max=1.0)
        scale, reach = scale * shrink[..., None], reach * shrink
        world_corners = mat_vec(rotation[:, :, None], corners * scale[:, :, None])  # [B, S, 8, 3]
        lowest, highest = world_corners[..., 2].amin(-1), world_corners[..., 2].amax(-1)

        # Ground placement on a jittered grid: each slot gets its own cell, so objects never intersect.
        order = torch.argsort(d["objects.cells"], dim=1)
        slot_cell = torch.cat((order, order.new_zeros(B, max(0, S - grid * grid))), 1)[:, :S]
        cx = (slot_cell % grid).float() + 0.5
        cy = (slot_cell // grid).float() + 0.5
        margin = (cell[:, None] / 2 - reach).clamp_min(0)
        jx = (2 * d["objects.jitter_x"] - 1) * margin
        jy = (2 * d["objects.jitter_y"] - 1) * margin
        x = -spread[:, None] + cx * cell[:, None] + jx
        y = -spread[:, None] + cy * cell[:, None] + jy
        z = -lowest
        if sc.placement == "floating":
            z = spread[:, None] * (0.3 + 1.2 * d["objects.height"])
        elif sc.placement == "stacked":
            # Every second object sits on the one before it (same cell).
            below = (torch.arange(S) - 1).clamp(min=0)
            stack = (torch.arange(S) % 2 == 1) & (kind[0] == SlotKind.OBJECT) & (torch.arange(S) >= 1)
            stack_rows = stack[None].expand(B, S) & valid[:, below]
            x = torch.where(stack_rows, x[:, below], x)
            y = torch.where(stack_rows, y[:, below], y)
            z = torch.where(stack_rows, highest[:, below] - lowest[:, below] - lowest, z)
        translation = torch.stack((x, y, z), -1)

        if n_occ:  # planks floating between the camera and the scene centre
            occ = kind == SlotKind.OCCLUDER
            R_wc, t_wc = world_to_cam[:, :3, :3], world_to_cam[:, :3, 3]
            eye = -mat_vec(R_wc.transpose(1, 2), t_wc)
            right, up = R_wc[:, 0], -R_wc[:, 1]
            t = 0.35 + 0.25 * d["occluders.depth"]
            lateral = (2 * d["occluders.x"] - 1) * spread[:, None] * 0.6
            vertical = (2 * d["occluders.y"] - 1) * spread[:, None] * 0.4
            centre = (target[:, None] + t[..., None] * (eye - target)[:, None] + lateral[..., None] * right[:, None]
                      + vertical[..., None] * up[:, None])
            translation = torch.where(occ[..., None], centre, translation)
            plank = torch.stack((0.5 + 0.6 * d["occluders.length"], 0.04 + 0.04 * d["occluders.width"],
                                 0.04 + 0.04 * d["occluders.thickness"]), -1) * spread[:, None, None]
            scale = torch.where(occ[..., None], plank, scale)
            spin = mat_mat(_rotation_z(yaw), _rotation_x(2 * math.pi * d["occluders.spin"]))
            rotation = torch.where(occ[..., None, None], spin, rotation)

        # Materials, per object, under the slice's material distributions and the categories' own colours.
        hue, saturation, value = d["material.hue"], v["material.saturation"], v["material.value"]
        texture = torch.zeros(B, S, dtype=torch.long)
        specular = torch.ones(B, S)
        colored = self._has_colors[shape] & valid & (kind != SlotKind.OCCLUDER)
        for i, c in enumerate(sc.categories):
            rows = (kind == SlotKind.OBJECT) & (cat == i)
            allowed = torch.tensor([TEXTURES.index(t) for t in c.textures])
            tex_pick = allowed[(d["material.texture"] * len(allowed)).long().clamp(max=len(allowed) - 1)]
            texture = torch.where(rows, tex_pick, texture)
            if c.hue is not None:
                hue = torch.where(rows, torch.remainder(c.hue.icdf(d["material.hue"]) / 360.0, 1.0), hue)
            if c.saturation is not None:
                saturation = torch.where(rows, c.saturation.icdf(d["material.category_saturation"]), saturation)
            if c.value is not None:
                value = torch.where(rows, c.value.icdf(d["material.category_value"]), value)
            if c.specular is not None:
                specular = torch.where(rows, c.specular.icdf(d["material.specular"]), specular)
            if not c.mesh_colors:
                colored = colored & ~rows
        texture = torch.where(colored, TEXTURES.index("solid"), texture)  # the file's colours, unmodulated
        albedo = _hsv_to_rgb(hue, saturation, value)
        return ObjectSpec(valid=valid, kind=kind.clone(), shape=shape, label=label, scale=scale, rotation=rotation,
                          translation=translation, albedo=albedo, texture=texture,
                          texture_scale=v["material.texture_scale"], texture_contrast=v["material.texture_contrast"],
                          texture_phase=d["material.phase"], specular=specular, colored=colored)

    def _defects(self, p: SceneParams) -> DefectSpec:
        """Labeled defect slots first (``defects.count`` of them present), then decoy slots (``defects.decoys``);
        each slot draws its type by weight among the labeled (or decoy) types."""
        sc, v, d = self.scenario, p.values, p.draws
        B, D, DL = p.keys.shape[0], self.max_defects, sc.max_labeled_defects
        if D == 0:
            z = torch.zeros(B, 0)
            return DefectSpec(type=z.long(), label=z.long(), kind=z.long(), center=torch.zeros(B, 0, 2), size=z,
                              angle=z, contrast=z, seed=z)
        decoy_slot = torch.arange(D) >= DL
        kind_of_type = torch.tensor([DEFECT_KINDS.index(t.kind) for t in sc.defect_types])
        is_decoy = torch.tensor([t.decoy for t in sc.defect_types])
        weights = torch.tensor([t.weight for t in sc.defect_types], dtype=torch.float64)
        u = d["defects.type"].double()
        dtype = torch.zeros(B, D, dtype=torch.long)
        for decoys in (False, True):
            w = torch.where(is_decoy == decoys, weights, 0.0)
            if w.sum() > 0:
                pick = torch.searchsorted(torch.cumsum(w, 0) / w.sum(), u.contiguous(), right=True).clamp(max=len(w) - 1)
                dtype = torch.where(decoy_slot == decoys, pick, dtype)
        rank = torch.where(decoy_slot, torch.arange(D) - DL, torch.arange(D))
        present = rank < torch.where(decoy_slot, v["defects.decoys"][:, None], v["defects.count"][:, None])
        class_of_type = torch.cumsum(~is_decoy, 0) * ~is_decoy  # 1.. over labeled types, 0 for decoys
        label = torch.where(present, len(sc.categories) + class_of_type[dtype], 0)
        label = torch.where(is_decoy[dtype], 0, label)
        size = torch.zeros(B, D)
        for i, t in enumerate(sc.defect_types):
            size = torch.where(dtype == i, t.size.icdf(d["defects.type_size"]) * 2 * GROUND_HALF_SIZE["inspection"], size)
        size = size * v["defects.size"][:, None]
        type_contrast = torch.tensor([t.contrast for t in sc.defect_types])[dtype]
        contrast = (v["defects.contrast"][:, None] * (0.85 + 0.3 * d["defects.contrast_jitter"]) * type_contrast
                    ).clamp(-1, 1)
        # Half side of the visible surface (a near top-down view), within the tile.
        half = (v["camera.distance"] * v["camera.sensor_mm"] / (2 * v["camera.focal_mm"])).clamp(
            max=GROUND_HALF_SIZE["inspection"])[:, None]
        anywhere = (2 * d["defects.center"] - 1) * 0.85 * half[..., None]
        side = (d["defects.side"] * 4).long().clamp(max=3)  # 0/1: top/bottom border, 2/3: left/right
        along = (2 * d["defects.center"][..., 0] - 1) * 0.9 * half
        placement = [t.placement for t in sc.defect_types]
        at_edge = torch.tensor([p == "edge" for p in placement])[dtype]
        near_edge = torch.tensor([p == "near_edge" for p in placement])[dtype]
        inset = torch.where(near_edge, 0.2 * d["defects.center"][..., 1], 0.0)
        across = torch.where(side % 2 == 0, -1.0, 1.0) * half * (1 - inset)
        edge = torch.where((side < 2)[..., None], torch.stack((along, across), -1), torch.stack((across, along), -1))
        centre = torch.where((at_edge | near_edge)[..., None], edge, anywhere)
        angle = torch.where(at_edge, torch.where(side < 2, 0.0, math.pi / 2), math.pi * d["defects.angle"])
        return DefectSpec(type=torch.where(present, dtype, -1), label=label, kind=kind_of_type[dtype], center=centre,
                          size=size, angle=angle, contrast=contrast, seed=d["defects.seed"])
