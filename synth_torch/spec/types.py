"""The scene specification: everything the renderer and the label passes need for a batch, as typed tensors.

A :class:`SceneSpec` is *applied* state: :class:`synth_torch.scenario.ScenarioSampler` samples parameters and
builds it; :mod:`synth_torch.scene` turns it into geometry and a G-buffer; shaders and label passes read it.
Its tensors may require gradients (the torch shader is differentiable in light, materials, poses, camera and
defects), and every field is a tensor or a static Python value, so :meth:`SceneSpec.to` and
:meth:`SceneSpec.detach` see everything.

Frames and units: world frame z-up, metres, the ground at z = 0; camera frame OpenCV (x right, y down,
z forward); ``K`` in pixels with integer coordinates at pixel corners (``docs/labels.md``). B images, S object
slots, D defect slots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from synth_torch.camera import check_finite_camera

__all__ = ["CameraSpec", "DefectSpec", "GroundSpec", "LightSpec", "ObjectSpec", "SceneSpec", "tree_map"]


def tree_map(obj, fn: Callable[[Tensor], Tensor]):
    """Apply ``fn`` to every tensor of a (nested) dataclass, dict, list or tuple; other values are kept."""
    if torch.is_tensor(obj):
        return fn(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: tree_map(getattr(obj, f.name), fn) for f in fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: tree_map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(v, fn) for v in obj)
    return obj


@dataclass(frozen=True)
class CameraSpec:
    """K [B, 3, 3] intrinsics (pixels); world_to_cam [B, 4, 4] rigid world -> OpenCV camera transforms."""

    K: Tensor
    world_to_cam: Tensor

    def __post_init__(self) -> None:
        check_finite_camera(self.K, self.world_to_cam, "spec.camera")


@dataclass(frozen=True)
class LightSpec:
    """One directional light and an ambient term per image.

    direction [B, 3]: unit vector from the scene towards the light (world frame); color [B, 3]: linear RGB of
    the light's colour temperature, max channel 1; intensity, ambient, specular, shininess, shadow_softness [B]
    (see ``docs/parameters.md``); environment [B, 3, 4, 4]: the surroundings' light per colour channel as the
    quadratic form of its diffuse irradiance in the world frame, ``E(n) = [n, 1]^T M [n, 1]``
    (:func:`~synth_torch.scene.assets.environment_irradiance`); the ambient term is ``ambient * E(n)``. Without
    environment images M is ``e_4 e_4^T`` (E = 1 for every normal: a flat ambient term).
    """

    direction: Tensor
    color: Tensor
    intensity: Tensor
    ambient: Tensor
    specular: Tensor
    shininess: Tensor
    shadow_softness: Tensor
    environment: Tensor


@dataclass(frozen=True)
class ObjectSpec:
    """Object slots: S per image; ``valid`` marks the filled ones.

    valid [B, S] bool; kind [B, S] long (:class:`~synth_torch.spec.constants.SlotKind`); shape [B, S] long
    (index into ``SceneSpec.shapes``); label [B, S] long (class id 1..C of labeled objects, else 0);
    scale [B, S, 3] metres along the template's axes (templates span [-0.5, 0.5]^3); rotation [B, S, 3, 3]
    object-to-world; translation [B, S, 3] world position of the template centre; albedo [B, S, 3] linear RGB;
    texture [B, S] long (index into ``TEXTURES``); texture_scale (periods per object size),
    texture_contrast, texture_phase [B, S]; specular [B, S] factor on the light's highlight; colored [B, S] bool:
    the slot's albedo comes from its mesh file (texture or vertex colours) instead of ``albedo``.
    """

    valid: Tensor
    kind: Tensor
    shape: Tensor
    label: Tensor
    scale: Tensor
    rotation: Tensor
    translation: Tensor
    albedo: Tensor
    texture: Tensor
    texture_scale: Tensor
    texture_contrast: Tensor
    texture_phase: Tensor
    specular: Tensor
    colored: Tensor


@dataclass(frozen=True)
class GroundSpec:
    """The ground plane (tabletop) or the inspected tile, one per image.

    albedo [B, 3]; texture [B] long (index into ``TEXTURES``); texture_scale (periods per metre),
    texture_contrast, texture_phase, grain [B]; image [B] long: index of the ground image of the scenario's
    ``texture_images`` folder (-1: procedural); background [B] long: index into ``background_images``
    (-1: the surface's flat background colour).
    """

    albedo: Tensor
    texture: Tensor
    texture_scale: Tensor
    texture_contrast: Tensor
    texture_phase: Tensor
    grain: Tensor
    image: Tensor
    background: Tensor


@dataclass(frozen=True)
class DefectSpec:
    """Surface defects painted on the ground or tile (decals), D slots per image.

    type [B, D] long: index into the scenario's defect types, -1 for an empty slot; label [B, D] long: class id
    (1..C) of a labeled defect, 0 for empty slots and decoys (near-miss look-alikes that are drawn but never
    labeled); kind [B, D] long: index into ``DEFECT_KINDS``; center [B, D, 2] ground-plane xy (metres);
    size [B, D] metres; angle [B, D] radians; contrast [B, D] in [-1, 1]: how much the defect darkens (lightens,
    for ``BRIGHT_DEFECT_KINDS``; negative values swap the two) the surface at its core; seed [B, D] in [0, 1):
    shape variation.
    """

    type: Tensor
    label: Tensor
    kind: Tensor
    center: Tensor
    size: Tensor
    angle: Tensor
    contrast: Tensor
    seed: Tensor


@dataclass(frozen=True)
class SceneSpec:
    """A batch of B scenes.

    sample_index, slice_id, keys [B] int64 (keys: the counter-based random key of each sample);
    params: every sampled scalar parameter, ``name -> [B]`` float32 (per-object parameters as the mean over
    valid slots), recorded for logging and slice mining; the renderer never reads it.
    shapes: template names indexed by ``objects.shape``; surface: ``"tabletop"`` or ``"inspection"``.
    """

    sample_index: Tensor
    slice_id: Tensor
    keys: Tensor
    camera: CameraSpec
    light: LightSpec
    objects: ObjectSpec
    ground: GroundSpec
    defects: DefectSpec
    params: dict[str, Tensor]
    shapes: tuple[str, ...]
    surface: str

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    @property
    def num_slots(self) -> int:
        return self.objects.valid.shape[1]

    @property
    def num_defects(self) -> int:
        return self.defects.type.shape[1]

    @property
    def device(self) -> torch.device:
        return self.camera.K.device

    def to(self, device) -> SceneSpec:
        return tree_map(self, lambda t: t.to(device))

    def detach(self) -> SceneSpec:
        return tree_map(self, Tensor.detach)
