"""Scenario descriptions: validated dataclasses loaded from YAML, dicts or Hydra configs.

A scenario has structural fields (categories, shapes, textures, placement, folders) and numeric
*parameters* grouped in sections (``camera``, ``light``, ``objects``, ``material``, ``ground``, ``defects``,
``sensor``). Every parameter is a distribution (see :mod:`synth_torch.scenario.distributions`), sampled
once per image and recorded in ``Batch.params`` under its dotted name (``light.intensity``). A *slice*
overrides some parameter distributions and has a mixture weight. Unknown keys, impossible ranges,
missing folders and empty category lists raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from synth_torch.scenario.distributions import ConfigError, Dist, parse_dist, parse_number
from synth_torch.scenario.random import stable_hash
from synth_torch.scene.meshes import MESH_SUFFIXES, PRIMITIVES

BUILTIN_DIR = Path(__file__).with_name("builtin")
INF = math.inf

# section -> name -> (default distribution, allowed value range)
PARAMETERS: dict[str, dict[str, tuple[object, tuple[float, float]]]] = {
    "camera": {
        "focal_mm": (35.0, (1.0, 1000.0)),
        "sensor_mm": (36.0, (1.0, 100.0)),
        "principal_jitter": (0.0, (-0.25, 0.25)),
        "distance": (1.2, (0.05, 100.0)),
        "elevation_deg": (45.0, (-89.0, 89.0)),
        "azimuth_deg": ([0.0, 360.0], (-720.0, 720.0)),
        "roll_deg": (0.0, (-180.0, 180.0)),
    },
    "light": {
        "ambient": (0.3, (0.0, 4.0)),
        "intensity": (1.0, (0.0, 20.0)),
        "temperature_k": (6500.0, (1000.0, 40000.0)),
        "elevation_deg": (50.0, (1.0, 90.0)),
        "azimuth_deg": ([0.0, 360.0], (-720.0, 720.0)),
        "specular": (0.3, (0.0, 10.0)),
        "shininess": (32.0, (1.0, 2048.0)),
        "shadow_softness": (1.0, (0.0, 4.0)),
    },
    "objects": {
        "count": ([3.0, 8.0], (0.0, 64.0)),
        "scale": (1.0, (0.05, 20.0)),
        "spread": (0.35, (0.01, 50.0)),
        "distractors": (0.0, (0.0, 32.0)),
        "occluders": (0.0, (0.0, 8.0)),
        "tilt_deg": (0.0, (0.0, 90.0)),
    },
    "material": {
        "saturation": ([0.3, 0.9], (0.0, 1.0)),
        "value": ([0.35, 0.95], (0.0, 1.0)),
        "texture_scale": ([3.0, 12.0], (0.01, 1000.0)),
        "texture_contrast": ([0.1, 0.5], (0.0, 1.0)),
    },
    "ground": {
        "value": ([0.3, 0.8], (0.0, 1.0)),
        "saturation": ([0.0, 0.4], (0.0, 1.0)),
        "texture_scale": ([2.0, 8.0], (0.01, 1000.0)),
        "texture_contrast": ([0.05, 0.35], (0.0, 1.0)),
        "grain": (0.0, (0.0, 1.0)),
    },
    "defects": {
        "count": (0.0, (0.0, 16.0)),
        "contrast": ([0.2, 0.5], (0.0, 1.0)),
        "size": (1.0, (0.05, 20.0)),
    },
    "sensor": {
        "exposure_ev": (0.0, (-6.0, 6.0)),
        "wb_red": (1.0, (0.2, 5.0)),
        "wb_blue": (1.0, (0.2, 5.0)),
        "motion_blur_px": (0.0, (0.0, 64.0)),
        "motion_blur_angle_deg": ([0.0, 180.0], (-360.0, 360.0)),
        "defocus_px": (0.0, (0.0, 16.0)),
        "vignetting": (0.0, (0.0, 1.0)),
        "noise_sigma": (0.0, (0.0, 0.5)),
        "shot_noise": (0.0, (0.0, 0.5)),
        "gamma": (1.0, (0.1, 10.0)),
        "saturation": (1.0, (0.0, 4.0)),
        "hue_shift_deg": (0.0, (-180.0, 180.0)),
        "grayscale": (0.0, (0.0, 1.0)),
        "jpeg_quality": (100.0, (1.0, 100.0)),
    },
}
PARAM_NAMES = tuple(f"{s}.{k}" for s, ks in PARAMETERS.items() for k in ks)
TEXTURES = ("solid", "checker", "stripes", "noise", "marble", "wood", "brushed")
PLACEMENTS = ("ground", "floating", "stacked")
DEFECT_KINDS = ("blowhole", "crack", "spot", "fray", "break", "uneven")


def _check_keys(data: dict, allowed, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def parse_parameters(data: dict, where: str, with_defaults: bool) -> dict[str, Dist]:
    """Nested ``{section: {name: dist}}`` to ``{'section.name': Dist}`` with validation."""
    _check_keys(data, PARAMETERS, where)
    out: dict[str, Dist] = {}
    for section, specs in PARAMETERS.items():
        given = data.get(section) or {}
        _check_keys(given, specs, f"{where}.{section}" if where else section)
        for name, (default, bounds) in specs.items():
            key = f"{section}.{name}"
            if name in given:
                out[key] = parse_dist(given[name], f"{where}.{key}" if where else key, bounds)
            elif with_defaults:
                out[key] = parse_dist(default, key, bounds)
    return out


def _shape_source(value: str, key: str, root: Path | None) -> str:
    if value in PRIMITIVES:
        return value
    path = Path(value) if Path(value).is_absolute() or root is None else root / value
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ConfigError(f"{key}: {value!r} is neither a primitive {sorted(PRIMITIVES)} nor a mesh file "
                          f"{MESH_SUFFIXES}")
    if not path.is_file():
        raise ConfigError(f"{key}: mesh file not found: {path}")
    return str(path)


@dataclass(frozen=True)
class Category:
    """A labeled object class: ``shape`` is a primitive name or a mesh file; ``size`` the largest extent in
    metres; ``aspect`` stretches one random axis; ``textures`` restricts the material textures."""

    name: str
    shape: str
    size: Dist
    aspect: Dist
    textures: tuple[str, ...]


@dataclass(frozen=True)
class DefectType:
    """A surface defect class painted on the inspected surface."""

    name: str
    kind: str
    size: Dist  # characteristic size as a fraction of the surface side
    weight: float


@dataclass(frozen=True)
class Slice:
    weight: float
    overrides: dict[str, Dist]


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; build it with :func:`load_scenario` or :meth:`from_dict`."""

    name: str
    categories: tuple[Category, ...]
    defect_types: tuple[DefectType, ...]
    distractor_shapes: tuple[str, ...]
    placement: str
    surface: str  # "tabletop" (objects on a ground plane) or "inspection" (a textured tile filling the view)
    ground_textures: tuple[str, ...]
    background_images: str | None
    texture_images: str | None
    shadows: bool
    antialias: bool
    parameters: dict[str, Dist]
    slices: dict[str, Slice]
    source: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Semantic classes 1..C (0 is background): object categories, then defect types."""
        return tuple(c.name for c in self.categories) + tuple(d.name for d in self.defect_types)

    @property
    def slice_names(self) -> tuple[str, ...]:
        return tuple(self.slices)

    @property
    def max_objects(self) -> int:
        return int(math.floor(self.parameters["objects.count"].support[1])) if self.categories else 0

    @property
    def max_distractors(self) -> int:
        return int(math.floor(max(self._sup("objects.distractors")))) if self.distractor_shapes else 0

    @property
    def max_occluders(self) -> int:
        return int(math.floor(max(self._sup("objects.occluders"))))

    @property
    def max_defects(self) -> int:
        return int(math.floor(max(self._sup("defects.count")))) if self.defect_types else 0

    def _sup(self, name: str) -> list[float]:
        """Upper support of a parameter over the base and every slice."""
        dists = [self.parameters[name]] + [s.overrides[name] for s in self.slices.values() if name in s.overrides]
        return [d.support[1] for d in dists]

    def digest(self) -> int:
        """A stable 31-bit hash of the scenario content (part of every sample's random key)."""
        return stable_hash(json.dumps(self.source, sort_keys=True, default=str))

    @classmethod
    def from_dict(cls, data: dict, root: Path | None = None) -> Scenario:
        data = copy.deepcopy(dict(data))
        allowed = {"name", "categories", "defect_types", "distractor_shapes", "placement", "surface",
                   "ground_textures", "background_images", "texture_images", "shadows", "antialias", "slices",
                   *PARAMETERS}
        _check_keys(data, allowed, "scenario")
        name = data.get("name", "custom")
        categories = []
        for i, c in enumerate(data.get("categories") or []):
            where = f"categories[{i}]"
            _check_keys(c, {"name", "shape", "size", "aspect", "textures"}, where)
            if "name" not in c or "shape" not in c:
                raise ConfigError(f"{where}: needs 'name' and 'shape'")
            textures = tuple(c.get("textures", TEXTURES))
            bad = sorted(set(textures) - set(TEXTURES))
            if bad or not textures:
                raise ConfigError(f"{where}.textures: unknown or empty {bad}; allowed: {TEXTURES}")
            categories.append(Category(str(c["name"]), _shape_source(str(c["shape"]), f"{where}.shape", root),
                                       parse_dist(c.get("size", [0.08, 0.16]), f"{where}.size", (1e-3, 100.0)),
                                       parse_dist(c.get("aspect", 1.0), f"{where}.aspect", (0.1, 10.0)), textures))
        defect_types = []
        for i, d in enumerate(data.get("defect_types") or []):
            where = f"defect_types[{i}]"
            _check_keys(d, {"name", "kind", "size", "weight"}, where)
            if d.get("kind") not in DEFECT_KINDS:
                raise ConfigError(f"{where}.kind: expected one of {DEFECT_KINDS}, got {d.get('kind')!r}")
            weight = parse_number(d.get("weight", 1.0), f"{where}.weight")
            if weight <= 0:
                raise ConfigError(f"{where}.weight: must be > 0, got {weight}")
            defect_types.append(DefectType(str(d.get("name", d["kind"])), d["kind"],
                                           parse_dist(d.get("size", [0.03, 0.08]), f"{where}.size", (1e-4, 1.0)),
                                           weight))
        if not categories and not defect_types:
            raise ConfigError("categories: a scenario needs at least one object category or defect type")
        names = [c.name for c in categories] + [d.name for d in defect_types]
        if len(set(names)) != len(names):
            raise ConfigError(f"categories/defect_types: class names must be unique, got {names}")
        distractors = tuple(_shape_source(str(s), "distractor_shapes", root) for s in data.get("distractor_shapes", ()))
        placement = data.get("placement", "ground")
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        surface = data.get("surface", "tabletop")
        if surface not in ("tabletop", "inspection"):
            raise ConfigError(f"surface: expected 'tabletop' or 'inspection', got {surface!r}")
        ground_textures = tuple(data.get("ground_textures", ("checker", "noise", "wood", "marble", "solid")))
        bad = sorted(set(ground_textures) - set(TEXTURES))
        if bad or not ground_textures:
            raise ConfigError(f"ground_textures: unknown or empty {bad}; allowed: {TEXTURES}")
        folders = {}
        for key in ("background_images", "texture_images"):
            value = data.get(key)
            if value is not None:
                path = Path(value) if Path(value).is_absolute() or root is None else root / value
                if not path.is_dir():
                    raise ConfigError(f"{key}: folder not found: {path}")
                folders[key] = str(path)
        flags = {}
        for key in ("shadows", "antialias"):
            flags[key] = data.get(key, True)
            if not isinstance(flags[key], bool):
                raise ConfigError(f"{key}: expected true or false, got {flags[key]!r}")
        parameters = parse_parameters({k: data[k] for k in PARAMETERS if k in data}, "", True)
        slices = {}
        for sname, spec in (data.get("slices") or {}).items():
            where = f"slices.{sname}"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: expected a mapping with 'weight' and parameter sections")
            _check_keys(spec, {"weight", *PARAMETERS}, where)
            weight = parse_number(spec.get("weight", 1.0), f"{where}.weight")
            if not weight > 0:
                raise ConfigError(f"{where}.weight: must be > 0, got {weight}")
            overrides = parse_parameters({k: v for k, v in spec.items() if k != "weight"}, where, False)
            slices[str(sname)] = Slice(weight, overrides)
        if not slices:
            slices = {"base": Slice(1.0, {})}
        return cls(name=str(name), categories=tuple(categories), defect_types=tuple(defect_types),
                   distractor_shapes=distractors, placement=placement, surface=surface,
                   ground_textures=ground_textures, background_images=folders.get("background_images"),
                   texture_images=folders.get("texture_images"), shadows=flags["shadows"],
                   antialias=flags["antialias"], parameters=parameters, slices=slices, source=data)

    def describe(self) -> dict:
        """A JSON-friendly summary (parameters as readable strings)."""
        return {"name": self.name, "classes": list(self.class_names),
                "parameters": {k: d.describe() for k, d in self.parameters.items()},
                "slices": {k: {"weight": s.weight, **{p: d.describe() for p, d in s.overrides.items()}}
                           for k, s in self.slices.items()},
                "categories": [asdict(c) | {"size": c.size.describe(), "aspect": c.aspect.describe()}
                               for c in self.categories]}


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_scenarios() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))


def load_scenario(source, overrides: dict | None = None) -> Scenario:
    """Load a built-in name (``'tabletop'``, ``'defects'``), a YAML path, a dict or an OmegaConf node.

    ``overrides`` is merged recursively on top (e.g. ``{'camera': {'distance': [1, 2]}}``). Relative file
    and folder paths resolve against the YAML file's folder (or the working directory).
    """
    if isinstance(source, Scenario):
        return source if not overrides else Scenario.from_dict(_merge(source.source, overrides))
    root = None
    if not isinstance(source, dict) and type(source).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        source = OmegaConf.to_container(source, resolve=True)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if str(source) in builtin_scenarios():
            path = BUILTIN_DIR / f"{source}.yaml"
        elif not path.is_file():
            raise ConfigError(f"scenario {str(source)!r} is neither a built-in {builtin_scenarios()} nor a YAML file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"scenario file {path} is not valid YAML: {exc}") from exc
        root = path.parent if path.parent != BUILTIN_DIR else None
    elif isinstance(source, dict):
        data = source
    else:
        raise ConfigError(f"cannot load a scenario from {type(source).__name__}")
    if not isinstance(data, dict):
        raise ConfigError("scenario: the YAML document must be a mapping")
    return Scenario.from_dict(_merge(data, overrides or {}), root=root)
