"""Definitions shared by sampling and rendering: constants, the parameter registry, the counter-based random
numbers and the typed scene specification."""

from synth_torch.spec.constants import DEFECT_KINDS, PLACEMENTS, SURFACES, TEXTURES, SlotKind
from synth_torch.spec.params import PARAM_NAMES, PARAMS, Param
from synth_torch.spec.types import CameraSpec, DefectSpec, GroundSpec, LightSpec, ObjectSpec, SceneSpec

__all__ = ["DEFECT_KINDS", "PARAMS", "PARAM_NAMES", "PLACEMENTS", "SURFACES", "TEXTURES", "CameraSpec", "DefectSpec",
           "GroundSpec", "LightSpec", "ObjectSpec", "Param", "SceneSpec", "SlotKind"]
