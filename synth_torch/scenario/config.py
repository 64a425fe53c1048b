"""Scenario descriptions: validated dataclasses loaded from YAML, dicts or Hydra configs.

A scenario has structural fields (categories, shapes, textures, placement, folders) and numeric *parameters*
grouped in sections (``camera``, ``light``, ``objects``, ``material``, ``ground``, ``defects``, ``sensor``),
declared once in :mod:`synth_torch.spec.params`. Every parameter is a distribution (see
:mod:`synth_torch.scenario.distributions`), sampled once per image (per object slot for ``material``) and
recorded in ``Batch.params`` under its dotted name (``light.intensity``). A *slice* overrides some parameter
distributions and has a mixture weight. Unknown keys, impossible ranges, missing files or folders and empty
category lists raise :class:`ConfigError` naming the key.

:meth:`Scenario.to_dict` is the normalised form (every parameter, canonical distributions, paths as written);
:meth:`Scenario.fingerprint` hashes it together with the *contents* of every asset file, so equivalent YAML
spellings give the same fingerprint and an edited mesh or image a different one.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from synth_torch.scenario.distributions import ConfigError, Dist, parse_dist, parse_number
from synth_torch.scene.assets import environment_irradiance, list_images
from synth_torch.scene.library import UP_AXES, shape_key, template
from synth_torch.scene.meshes import MESH_SUFFIXES, PRIMITIVES
from synth_torch.spec import params as registry
from synth_torch.spec.constants import DEFECT_KINDS, DEFECT_PLACEMENTS, PLACEMENTS, SURFACES, TEXTURES

BUILTIN_DIR = Path(__file__).with_name("builtin")
STRUCTURE_KEYS = ("name", "categories", "defect_types", "distractor_shapes", "placement", "surface",
                  "ground_textures", "background_images", "texture_images", "environment_images", "shadows",
                  "antialias", "slices")
CATEGORY_KEYS = ("name", "shape", "size", "scale", "aspect", "up", "textures", "hue", "saturation", "value",
                 "specular", "mesh_colors")
IMAGE_FOLDERS = ("background_images", "texture_images", "environment_images")


def _check_keys(data, allowed, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def parse_parameters(data: dict, where: str, with_defaults: bool) -> dict[str, Dist]:
    """Nested ``{section: {name: dist}}`` to ``{'section.name': Dist}``, validated against the registry."""
    _check_keys(data, registry.SECTIONS, where or "scenario")
    out: dict[str, Dist] = {}
    for section in registry.SECTIONS:
        given = data.get(section) or {}
        params = registry.section(section)
        _check_keys(given, [p.key for p in params], f"{where}.{section}" if where else section)
        for p in params:
            key = f"{where}.{p.name}" if where else p.name
            if p.key in given:
                out[p.name] = parse_dist(given[p.key], key, (p.lo, p.hi), p.integer)
            elif with_defaults:
                out[p.name] = parse_dist(p.default, key, (p.lo, p.hi), p.integer)
    return out


def _resolve(value: str, root: Path | None) -> Path:
    return Path(value) if Path(value).is_absolute() or root is None else root / value


def _shape_source(value, key: str, root: Path | None) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a primitive name or a mesh file path, got {value!r}")
    if value in PRIMITIVES:
        return value
    path = _resolve(value, root)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ConfigError(f"{key}: {value!r} is neither a primitive {sorted(PRIMITIVES)} nor a mesh file "
                          f"{MESH_SUFFIXES}")
    if not path.is_file():
        raise ConfigError(f"{key}: mesh file not found: {path}")
    return value


def _category_meshes(value, key: str, root: Path | None) -> tuple[str, ...]:
    """A category's shapes as written: a primitive, a mesh file, or every mesh file of a folder (sorted)."""
    if isinstance(value, str) and value not in PRIMITIVES and _resolve(value, root).is_dir():
        folder = _resolve(value, root)
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
        if not files:
            raise ConfigError(f"{key}: folder {folder} holds no mesh file {MESH_SUFFIXES}")
        return tuple(f"{value.rstrip('/')}/{f}" for f in files)
    return (_shape_source(value, key, root),)


def default_up(path: str) -> str:
    """The up axis a mesh file is read with unless its category says: ``y`` for glTF (Y-up by specification),
    else ``z``."""
    return "y" if path.lower().endswith((".glb", ".gltf")) else "z"


def _check_mesh(path: Path, key: str) -> None:
    """Load a mesh once at scenario load, so that a bad file fails here, named (the template is cached)."""
    try:
        template(str(path))
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's bytes (cached while its size and modification time stay the same)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Category:
    """A labeled object class (``docs/scenarios.md``, "Categories and assets").

    ``shape`` is a primitive name, a mesh file or a folder of mesh files (as written, relative to the scenario's
    folder); ``meshes`` the shapes it stands for (the folder's files, sorted), one drawn per instance. ``up`` is the
    files' up axis (None: :func:`default_up`). Size: ``size``, the largest extent in metres, or ``scale``, metres per
    file unit (the mesh's own size times it). ``aspect`` stretches the vertical axis. Colour and material:
    ``hue`` (degrees), ``saturation``, ``value`` replace the scenario's ``material`` draws for this class when set;
    ``specular`` scales the light's highlight on it; ``mesh_colors``: use the file's texture or vertex colours
    when it has them (then no procedural texture); ``textures`` restricts the procedural textures.
    """

    name: str
    shape: str
    size: Dist
    aspect: Dist
    textures: tuple[str, ...]
    meshes: tuple[str, ...] = ()
    up: str | None = None
    scale: Dist | None = None
    hue: Dist | None = None
    saturation: Dist | None = None
    value: Dist | None = None
    specular: Dist | None = None
    mesh_colors: bool = True

    def up_axis(self, mesh: str) -> str:
        return self.up or default_up(mesh)

    def to_dict(self, path=lambda p: p) -> dict:
        """The normalised form; optional keys appear only when set (so older scenarios keep their fingerprint)."""
        out = {"name": self.name, "shape": path(self.shape), "aspect": self.aspect.to_yaml(),
               "textures": list(self.textures)}
        if self.scale is None:
            out["size"] = self.size.to_yaml()
        for key in ("scale", "hue", "saturation", "value", "specular"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_yaml()
        if self.up is not None:
            out["up"] = self.up
        if not self.mesh_colors:
            out["mesh_colors"] = False
        return out


@dataclass(frozen=True)
class DefectType:
    """A surface defect type painted on the inspected surface.

    ``size`` is the characteristic size as a fraction of the surface side; ``weight`` the relative frequency;
    ``placement`` puts centres ``anywhere`` on the visible surface, on the ``edge`` of the view (along it), or
    ``near_edge``: within a fifth of the half side from the border, at any angle; ``contrast`` multiplies the
    sampled ``defects.contrast`` for this type (negative values lighten a darkening kind); a ``decoy`` is a
    near-miss look-alike (a stain, dust, a tool mark): drawn, never labeled, not a class.
    """

    name: str
    kind: str
    size: Dist
    weight: float
    placement: str = "anywhere"
    decoy: bool = False
    contrast: float = 1.0


@dataclass(frozen=True)
class Slice:
    weight: float
    overrides: dict[str, Dist]


@dataclass(frozen=True)
class AssetFile:
    """A file a scenario reads: ``role`` (``mesh``, ``texture_images``, ``background_images``,
    ``environment_images``), ``path``
    (resolved), ``sha256`` and ``size`` in bytes."""

    role: str
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; build it with :func:`load_scenario` or :meth:`from_dict`.

    ``root`` is the folder that relative mesh and image-folder paths resolve against (the YAML file's folder),
    kept so that re-loading with overrides resolves them the same way.
    """

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
    root: Path | None = None
    source: dict = field(repr=False, compare=False, default_factory=dict)
    environment_images: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Semantic classes 1..C (0 is background): object categories, then defect types."""
        return tuple(c.name for c in self.categories) + tuple(d.name for d in self.defect_types if not d.decoy)

    @property
    def slice_names(self) -> tuple[str, ...]:
        return tuple(self.slices)

    def support(self, name: str) -> tuple[float, float]:
        """The values parameter ``name`` can take: the union of its supports over the base and every slice."""
        dists = [self.parameters[name]] + [s.overrides[name] for s in self.slices.values() if name in s.overrides]
        return min(d.support[0] for d in dists), max(d.support[1] for d in dists)

    def _sup(self, name: str) -> int:
        return int(math.floor(self.support(name)[1]))

    @property
    def max_objects(self) -> int:
        return self._sup("objects.count") if self.categories else 0

    @property
    def max_distractors(self) -> int:
        return self._sup("objects.distractors") if self.distractor_shapes else 0

    @property
    def max_occluders(self) -> int:
        return self._sup("objects.occluders")

    @property
    def max_labeled_defects(self) -> int:
        return self._sup("defects.count") if any(not d.decoy for d in self.defect_types) else 0

    @property
    def max_decoys(self) -> int:
        return self._sup("defects.decoys") if any(d.decoy for d in self.defect_types) else 0

    @property
    def max_defects(self) -> int:
        """Defect slots per image: labeled ones first, then decoys."""
        return self.max_labeled_defects + self.max_decoys

    def resolve(self, path: str) -> str:
        """A mesh or folder path as written in the scenario, resolved against :attr:`root`."""
        return path if path in PRIMITIVES else str(_resolve(path, self.root))

    def shape_keys(self, category: Category) -> tuple[str, ...]:
        """Template keys (:func:`~synth_torch.scene.library.shape_key`) of a category's meshes."""
        return tuple(shape_key(self.resolve(m), category.up_axis(m)) for m in category.meshes)

    def distractor_keys(self) -> tuple[str, ...]:
        return tuple(shape_key(self.resolve(d), default_up(d)) for d in self.distractor_shapes)

    def asset_files(self) -> tuple[AssetFile, ...]:
        """Every file the scenario reads (meshes, then image folders), with content hashes."""
        out = []
        meshes = dict.fromkeys([m for c in self.categories for m in c.meshes] + list(self.distractor_shapes))
        for shape in meshes:
            if shape not in PRIMITIVES:
                path = self.resolve(shape)
                out.append(AssetFile("mesh", path, file_sha256(path), os.path.getsize(path)))
        for role in IMAGE_FOLDERS:
            folder = getattr(self, role)
            if folder is not None:
                for path in list_images(self.resolve(folder)):
                    out.append(AssetFile(role, path, file_sha256(path), os.path.getsize(path)))
        return tuple(out)

    def to_dict(self, absolute: bool = False) -> dict:
        """The normalised scenario: every field and parameter, distributions in canonical form, paths as
        written (``absolute=True``: resolved against :attr:`root`). ``Scenario.from_dict(s.to_dict(), s.root) == s``
        and ``Scenario.from_dict(s.to_dict(absolute=True))`` has the same fingerprint."""
        path = self.resolve if absolute else (lambda p: p)
        sections: dict[str, dict] = {}
        for name, dist in self.parameters.items():
            sec, key = name.split(".", 1)
            sections.setdefault(sec, {})[key] = dist.to_yaml()

        def overrides(ov: dict[str, Dist]) -> dict:
            out: dict[str, dict] = {}
            for name, dist in ov.items():
                sec, key = name.split(".", 1)
                out.setdefault(sec, {})[key] = dist.to_yaml()
            return out

        return {
            "name": self.name, "surface": self.surface, "placement": self.placement,
            "shadows": self.shadows, "antialias": self.antialias,
            "categories": [c.to_dict(path) for c in self.categories],
            "defect_types": [{"name": d.name, "kind": d.kind, "size": d.size.to_yaml(), "weight": d.weight,
                              "placement": d.placement, "decoy": d.decoy,
                              # omitted at its default, so that older scenarios keep their fingerprints
                              **({"contrast": d.contrast} if d.contrast != 1.0 else {})}
                             for d in self.defect_types],
            "distractor_shapes": [path(d) for d in self.distractor_shapes],
            "ground_textures": list(self.ground_textures),
            "background_images": self.background_images and path(self.background_images),
            "texture_images": self.texture_images and path(self.texture_images),
            **({"environment_images": path(self.environment_images)} if self.environment_images else {}),
            **sections,
            "slices": {k: {"weight": s.weight, **overrides(s.overrides)} for k, s in self.slices.items()},
        }

    def fingerprint(self) -> str:
        """sha256 (hex) of the normalised scenario with every asset path replaced by its file's content hash."""
        data = self.to_dict()
        hashes = {a.path: a.sha256 for a in self.asset_files()}

        def content(shape: str) -> str:
            return shape if shape in PRIMITIVES else "sha256:" + hashes[self.resolve(shape)]

        for c, category in zip(data["categories"], self.categories):
            if len(category.meshes) == 1 and category.meshes[0] == category.shape:
                c["shape"] = content(c["shape"])
            else:  # a folder: the contents of its files, in order
                c["shape"] = [content(m) for m in category.meshes]
        data["distractor_shapes"] = [content(s) for s in data["distractor_shapes"]]
        for role in IMAGE_FOLDERS:
            if data.get(role) is not None:
                data[role] = [hashes[p] for p in list_images(self.resolve(data[role]))]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @functools.cached_property
    def _digest(self) -> int:
        return int(self.fingerprint()[:8], 16) & 0x7FFFFFFF

    def digest(self) -> int:
        """A 31-bit hash of :meth:`fingerprint`: part of every sample's random key."""
        return self._digest

    @classmethod
    def from_dict(cls, data: dict, root: Path | None = None) -> Scenario:
        data = copy.deepcopy(dict(data))
        _check_keys(data, (*STRUCTURE_KEYS, *registry.SECTIONS), "scenario")
        name = data.get("name", "custom")
        categories = []
        for i, c in enumerate(data.get("categories") or []):
            where = f"categories[{i}]"
            categories.append(_category(c, where, root))
        defect_types = []
        for i, d in enumerate(data.get("defect_types") or []):
            where = f"defect_types[{i}]"
            _check_keys(d, {"name", "kind", "size", "weight", "placement", "decoy", "contrast"}, where)
            if d.get("kind") not in DEFECT_KINDS:
                raise ConfigError(f"{where}.kind: expected one of {DEFECT_KINDS}, got {d.get('kind')!r}")
            weight = parse_number(d.get("weight", 1.0), f"{where}.weight")
            if weight <= 0:
                raise ConfigError(f"{where}.weight: must be > 0, got {weight}")
            placement = d.get("placement", "anywhere")
            if placement not in DEFECT_PLACEMENTS:
                raise ConfigError(f"{where}.placement: expected one of {DEFECT_PLACEMENTS}, got {placement!r}")
            decoy = d.get("decoy", False)
            if not isinstance(decoy, bool):
                raise ConfigError(f"{where}.decoy: expected true or false, got {decoy!r}")
            contrast = parse_number(d.get("contrast", 1.0), f"{where}.contrast")
            if not -1.0 <= contrast <= 4.0:
                raise ConfigError(f"{where}.contrast: must be in [-1, 4], got {contrast}")
            defect_types.append(DefectType(str(d.get("name", d["kind"])), d["kind"],
                                           parse_dist(d.get("size", [0.03, 0.08]), f"{where}.size", (1e-4, 1.0)),
                                           weight, placement, decoy, contrast))
        if defect_types and all(d.decoy for d in defect_types) and not categories:
            raise ConfigError("defect_types: every defect type is a decoy; a scenario needs at least one labeled class")
        if not categories and not defect_types:
            raise ConfigError("categories: a scenario needs at least one object category or defect type")
        names = [c.name for c in categories] + [d.name for d in defect_types]  # decoys too: names identify types
        if len(set(names)) != len(names):
            raise ConfigError(f"categories/defect_types: class names must be unique, got {names}")
        distractors = tuple(_shape_source(s, "distractor_shapes", root) for s in data.get("distractor_shapes", ()))
        for d in distractors:
            if d not in PRIMITIVES:
                _check_mesh(_resolve(d, root), "distractor_shapes")
        placement = data.get("placement", "ground")
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        surface = data.get("surface", "tabletop")
        if surface not in SURFACES:
            raise ConfigError(f"surface: expected 'tabletop' or 'inspection', got {surface!r}")
        ground_textures = tuple(data.get("ground_textures", ("checker", "noise", "wood", "marble", "solid")))
        bad = sorted(set(ground_textures) - set(TEXTURES))
        if bad or not ground_textures:
            raise ConfigError(f"ground_textures: unknown or empty {bad}; allowed: {TEXTURES}")
        folders = {}
        for key in IMAGE_FOLDERS:
            value = data.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise ConfigError(f"{key}: expected a folder path, got {value!r}")
                path = _resolve(value, root)
                if not path.is_dir():
                    raise ConfigError(f"{key}: folder not found: {path}")
                try:
                    list_images(str(path))
                except (FileNotFoundError, ValueError) as exc:
                    raise ConfigError(f"{key}: {exc}") from None
                folders[key] = value
        if "environment_images" in folders:
            for file in list_images(str(_resolve(folders["environment_images"], root))):
                try:
                    environment_irradiance(file)
                except ValueError as exc:
                    raise ConfigError(f"environment_images: {exc}") from None
        flags = {}
        for key in ("shadows", "antialias"):
            flags[key] = data.get(key, True)
            if not isinstance(flags[key], bool):
                raise ConfigError(f"{key}: expected true or false, got {flags[key]!r}")
        parameters = parse_parameters({k: data[k] for k in registry.SECTIONS if k in data}, "", True)
        slices = {}
        for sname, spec in (data.get("slices") or {}).items():
            where = f"slices.{sname}"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: expected a mapping with 'weight' and parameter sections")
            _check_keys(spec, {"weight", *registry.SECTIONS}, where)
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
                   texture_images=folders.get("texture_images"), environment_images=folders.get("environment_images"),
                   shadows=flags["shadows"],
                   antialias=flags["antialias"], parameters=parameters, slices=slices, root=root, source=data)


def _category(c, where: str, root: Path | None) -> Category:
    _check_keys(c, CATEGORY_KEYS, where)
    if "name" not in c or "shape" not in c:
        raise ConfigError(f"{where}: needs 'name' and 'shape'")
    meshes = _category_meshes(c["shape"], f"{where}.shape", root)
    up = c.get("up")
    if up is not None and up not in UP_AXES:
        raise ConfigError(f"{where}.up: expected one of {UP_AXES}, got {up!r}")
    for m in meshes:
        if m not in PRIMITIVES:
            _check_mesh(_resolve(m, root), f"{where}.shape")
    if "size" in c and "scale" in c:
        raise ConfigError(f"{where}: give either 'size' (largest extent in metres) or 'scale' (metres per mesh "
                          f"unit), not both")
    if "scale" in c and all(m in PRIMITIVES for m in meshes):
        raise ConfigError(f"{where}.scale: primitives have no units of their own; use 'size'")
    mesh_colors = c.get("mesh_colors", True)
    if not isinstance(mesh_colors, bool):
        raise ConfigError(f"{where}.mesh_colors: expected true or false, got {mesh_colors!r}")
    textures = tuple(c.get("textures", TEXTURES))
    bad = sorted(set(textures) - set(TEXTURES))
    if bad or not textures:
        raise ConfigError(f"{where}.textures: unknown or empty {bad}; allowed: {TEXTURES}")
    optional = {key: parse_dist(c[key], f"{where}.{key}", bounds) if key in c else None
                for key, bounds in (("scale", (1e-6, 1e6)), ("hue", (-360.0, 720.0)), ("saturation", (0.0, 1.0)),
                                    ("value", (0.0, 1.0)), ("specular", (0.0, 10.0)))}
    return Category(str(c["name"]), c["shape"],
                    parse_dist(c.get("size", [0.08, 0.16]), f"{where}.size", (1e-3, 100.0)),
                    parse_dist(c.get("aspect", 1.0), f"{where}.aspect", (0.1, 10.0)), textures, meshes=meshes, up=up,
                    mesh_colors=mesh_colors, **optional)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_scenarios() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))


def load_scenario(source, overrides: dict | None = None) -> Scenario:
    """Load a built-in name (``'tabletop'``, ``'defects'``), a YAML path, a dict, an OmegaConf node or a
    :class:`Scenario`.

    ``overrides`` is merged recursively on top (e.g. ``{'camera': {'distance': [1, 2]}}``). Relative file
    and folder paths resolve against the YAML file's folder (or the working directory); a :class:`Scenario`
    keeps its folder when re-loaded with overrides.
    """
    if isinstance(source, Scenario):
        return source if not overrides else Scenario.from_dict(_merge(source.source, overrides), root=source.root)
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
        root = path.parent.resolve() if path.parent.resolve() != BUILTIN_DIR.resolve() else None
    elif isinstance(source, dict):
        data = source
    else:
        raise ConfigError(f"cannot load a scenario from {type(source).__name__}")
    if not isinstance(data, dict):
        raise ConfigError("scenario: the YAML document must be a mapping")
    return Scenario.from_dict(_merge(data, overrides or {}), root=root)
