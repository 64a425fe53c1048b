"""The parameter registry: every scenario and sensor parameter, declared once.

Each :class:`Param` gives the dotted name (``section.name``), the default distribution a scenario gets when it
does not set the parameter (YAML form, see ``docs/scenarios.md``), the closed range of valid values, the
neutral value (the value at which a sensor effect leaves the image unchanged; for scene parameters a typical
value), the unit and a one-line description. Scenario validation (:mod:`synth_torch.scenario.config`), the
sensor defaults and ranges (:mod:`synth_torch.sensor`) and the parameter table in ``docs/parameters.md``
(:func:`markdown_table`) are all derived from :data:`PARAMS`.

``integer`` parameters are counts: they are sampled as integers (a uniform ``[a, b]`` is uniform over the
integers ``a..b``) and recorded as integer-valued floats. ``per_object`` parameters are drawn once per object
slot; ``Batch.params`` records their mean over the image's valid slots.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PARAMS", "PARAM_NAMES", "SECTIONS", "Param", "document", "get", "markdown_table", "section"]


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    lo: float
    hi: float
    neutral: float
    unit: str
    doc: str
    integer: bool = False
    per_object: bool = False

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]


def _p(name, default, lo, hi, unit, doc, neutral=None, integer=False, per_object=False) -> Param:
    if neutral is None:
        neutral = default if isinstance(default, (int, float)) else lo
    return Param(name, default, float(lo), float(hi), float(neutral), unit, doc, integer, per_object)


PARAMS: tuple[Param, ...] = (
    _p("camera.focal_mm", 35.0, 1, 1000, "mm", "focal length; fx = focal_mm * W / sensor_mm pixels"),
    _p("camera.sensor_mm", 36.0, 1, 100, "mm", "sensor width"),
    _p("camera.principal_jitter", 0.0, -0.25, 0.25, "image sides",
       "principal point offset from the image centre (x and y drawn independently)"),
    _p("camera.distance", 1.2, 0.05, 100, "m", "distance from the camera to the point it orbits"),
    _p("camera.elevation_deg", 45.0, -89, 89, "deg", "camera elevation above the ground plane"),
    _p("camera.azimuth_deg", [0.0, 360.0], -720, 720, "deg", "camera azimuth about the world z axis", neutral=0.0),
    _p("camera.roll_deg", 0.0, -180, 180, "deg", "camera rotation about its optical axis"),
    _p("light.ambient", 0.3, 0, 4, "x albedo", "ambient light (light bounced from the surroundings)"),
    _p("light.intensity", 1.0, 0, 20, "", "directional light intensity"),
    _p("light.temperature_k", 6500.0, 1000, 40000, "K", "colour temperature of the light (black body)"),
    _p("light.elevation_deg", 50.0, 1, 90, "deg", "light elevation above the ground plane"),
    _p("light.azimuth_deg", [0.0, 360.0], -720, 720, "deg", "light azimuth about the world z axis", neutral=0.0),
    _p("light.specular", 0.3, 0, 10, "", "specular (Blinn-Phong) strength"),
    _p("light.shininess", 32.0, 1, 2048, "", "Blinn-Phong exponent"),
    _p("light.shadow_softness", 1.0, 0, 4, "",
       "lightens shadows: a shadowed pixel keeps 1 - 0.85 / (1 + 0.15 s) of the direct light"),
    _p("objects.count", [3.0, 8.0], 0, 64, "objects", "labeled objects per image", neutral=0.0, integer=True),
    _p("objects.scale", 1.0, 0.05, 20, "x", "multiplies every category's size"),
    _p("objects.spread", 0.35, 0.01, 50, "m", "half side of the square the objects are placed in"),
    _p("objects.distractors", 0.0, 0, 32, "objects", "unlabeled distractor objects per image", integer=True),
    _p("objects.occluders", 0.0, 0, 8, "objects", "planks floating between the camera and the scene",
       integer=True),
    _p("objects.tilt_deg", 0.0, 0, 90, "deg", "largest tilt of an object away from upright"),
    _p("material.saturation", [0.3, 0.9], 0, 1, "", "object colour saturation (HSV)", neutral=0.5,
       per_object=True),
    _p("material.value", [0.35, 0.95], 0, 1, "", "object colour value (HSV)", neutral=0.5, per_object=True),
    _p("material.texture_scale", [3.0, 12.0], 0.01, 1000, "periods/object", "object texture frequency",
       neutral=6.0, per_object=True),
    _p("material.texture_contrast", [0.1, 0.5], 0, 1, "", "object texture contrast", neutral=0.0,
       per_object=True),
    _p("ground.value", [0.3, 0.8], 0, 1, "", "ground colour value (HSV)", neutral=0.5),
    _p("ground.saturation", [0.0, 0.4], 0, 1, "", "ground colour saturation (HSV)", neutral=0.0),
    _p("ground.texture_scale", [2.0, 8.0], 0.01, 1000, "periods/m", "ground texture frequency", neutral=4.0),
    _p("ground.texture_contrast", [0.05, 0.35], 0, 1, "", "ground texture contrast", neutral=0.0),
    _p("ground.grain", 0.0, 0, 1, "", "fine multiplicative grain of the ground (sintered look)"),
    _p("defects.count", 0.0, 0, 16, "defects", "labeled surface defects per image", integer=True),
    _p("defects.decoys", 0.0, 0, 16, "decoys", "near-miss decoys per image (defect types marked decoy: stains, dust, "
       "tool marks), drawn but never labeled", integer=True),
    _p("defects.contrast", [0.2, 0.5], 0, 1, "", "how much a defect darkens the surface at its core", neutral=0.0),
    _p("defects.size", 1.0, 0.05, 20, "x", "multiplies every defect type's size"),
    _p("sensor.exposure_ev", 0.0, -6, 6, "EV", "exposure: the image is multiplied by 2**ev"),
    _p("sensor.wb_red", 1.0, 0.2, 5, "x", "white-balance gain of the red channel"),
    _p("sensor.wb_blue", 1.0, 0.2, 5, "x", "white-balance gain of the blue channel"),
    _p("sensor.motion_blur_px", 0.0, 0, 64, "px", "length of a linear motion blur"),
    _p("sensor.motion_blur_angle_deg", [0.0, 180.0], -360, 360, "deg",
       "motion direction, counter-clockwise as displayed from +x", neutral=0.0),
    _p("sensor.defocus_px", 0.0, 0, 16, "px", "Gaussian defocus blur sigma"),
    _p("sensor.vignetting", 0.0, 0, 1, "", "darkening of the image corners (cos^4 falloff)"),
    _p("sensor.noise_sigma", 0.0, 0, 0.5, "", "read noise standard deviation (linear intensity)"),
    _p("sensor.shot_noise", 0.0, 0, 0.5, "", "shot noise: variance grows by this times the intensity"),
    _p("sensor.gamma", 1.0, 0.1, 10, "", "display encoding: out = in ** (1 / gamma)"),
    _p("sensor.saturation", 1.0, 0, 4, "x", "colour saturation (blend with Rec.601 luma)"),
    _p("sensor.hue_shift_deg", 0.0, -180, 180, "deg", "hue rotation"),
    _p("sensor.grayscale", 0.0, 0, 1, "", "blend towards Rec.601 luma (1: fully gray)"),
    _p("sensor.jpeg_quality", 100.0, 1, 100, "", "JPEG quality; 100 turns the codec off"),
)

PARAM_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(p.section for p in PARAMS))
_BY_NAME = {p.name: p for p in PARAMS}


def get(name: str) -> Param:
    """The parameter called ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}") from None


def section(name: str) -> tuple[Param, ...]:
    """The parameters of one section (``"camera"``, ``"sensor"``, ...), in declaration order."""
    return tuple(p for p in PARAMS if p.section == name)


def _yaml(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"{value:g}"


def markdown_table() -> str:
    """The parameter table of ``docs/parameters.md``."""
    lines = ["| parameter | default | valid range | neutral | unit | meaning |", "|---|---|---|---|---|---|"]
    for p in PARAMS:
        flags = " (integer)" if p.integer else ""
        flags += " (per object)" if p.per_object else ""
        lines.append(f"| `{p.name}`{flags} | {_yaml(p.default)} | [{p.lo:g}, {p.hi:g}] | {p.neutral:g} | {p.unit} "
                     f"| {p.doc} |")
    return "\n".join(lines) + "\n"


def document() -> str:
    """``docs/parameters.md``, regenerated with ``python -m synth_torch.spec > docs/parameters.md``."""
    return (
        "# Scenario and sensor parameters\n\n"
        "Generated from `synth_torch.spec.params.PARAMS`, the one declaration of every parameter (regenerate with\n"
        "`python -m synth_torch.spec > docs/parameters.md`; a test fails when this page is stale). A scenario\n"
        "sets a parameter as `section: {name: distribution}` (forms in [scenarios.md](scenarios.md)); the default\n"
        "applies when it does not. Values outside the valid range are rejected at load time, naming the key.\n"
        "Integer parameters are sampled as integers (a uniform `[a, b]` is uniform over `a..b`); per-object\n"
        "parameters are drawn for every object slot and recorded in `Batch.params` as the mean over the image's\n"
        "objects. Sensor parameters at their neutral value leave the image unchanged.\n\n"
        + markdown_table()
    )

