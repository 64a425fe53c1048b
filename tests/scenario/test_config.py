"""Scenario loading and validation: built-ins load, and every invalid input names its key."""

from __future__ import annotations

import math

import pytest
import yaml

from synth_torch.scenario.config import (
    PARAM_NAMES,
    BUILTIN_DIR,
    PARAMETERS,
    ConfigError,
    Scenario,
    builtin_scenarios,
    load_scenario,
)
from synth_torch.scenario.distributions import Dist, parse_dist


def minimal(**extra) -> dict:
    return {"name": "t", "categories": [{"name": "cube", "shape": "box"}], **extra}


def test_builtins_are_listed_and_load():
    assert {"tabletop", "defects"} <= set(builtin_scenarios())
    for name in builtin_scenarios():
        sc = load_scenario(name)
        assert sc.name == name
        assert set(sc.parameters) == set(PARAM_NAMES)
        assert sc.class_names and len(set(sc.class_names)) == len(sc.class_names)
        assert all(s.weight > 0 for s in sc.slices.values())


def _expected_dist(value) -> Dist:
    """The distribution a YAML value denotes, written independently of parse_dist."""
    if isinstance(value, (int, float)):
        return Dist("constant", float(value))
    if isinstance(value, list):
        return Dist("uniform", float(value[0]), float(value[1]))
    (kind, (lo, hi)), = value.items()
    return Dist(kind, float(lo), float(hi))


def test_tabletop_matches_its_yaml():
    raw = yaml.safe_load((BUILTIN_DIR / "tabletop.yaml").read_text())
    sc = load_scenario("tabletop")
    assert sc.class_names == tuple(c["name"] for c in raw["categories"])
    assert sc.slice_names == tuple(raw["slices"])
    assert sc.surface == raw["surface"] and sc.placement == raw["placement"]
    for section in PARAMETERS:
        for name, value in (raw.get(section) or {}).items():
            assert sc.parameters[f"{section}.{name}"] == _expected_dist(value), f"{section}.{name}"
    for sname, spec in raw["slices"].items():
        assert sc.slices[sname].weight == pytest.approx(spec["weight"])
        expected = {f"{sec}.{n}": _expected_dist(v) for sec, vals in spec.items() if sec != "weight"
                    for n, v in vals.items()}
        assert sc.slices[sname].overrides == expected, sname
    # Slot counts take the largest value over the base and every slice.
    assert sc.max_objects == int(_expected_dist(raw["objects"]["count"]).support[1])
    occluders = [_expected_dist(s.get("objects", {}).get("occluders", 0)).support[1] for s in raw["slices"].values()]
    assert sc.max_occluders == int(max(occluders + [_expected_dist(raw["objects"]["occluders"]).support[1]]))


def test_defects_contents():
    sc = load_scenario("defects")
    assert sc.surface == "inspection"
    assert sc.categories == () and sc.max_objects == 0
    assert sc.class_names == ("blowhole", "crack", "break", "fray", "uneven")
    assert sc.max_defects == 3


def test_defaults_fill_every_parameter():
    sc = load_scenario(minimal())
    assert set(sc.parameters) == set(PARAM_NAMES)
    assert sc.slice_names == ("base",)
    for section, specs in PARAMETERS.items():
        for name, (default, _) in specs.items():
            assert sc.parameters[f"{section}.{name}"] == parse_dist(default, name)


def test_load_from_yaml_file_resolves_relative_paths(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    (tmp_path / "assets").mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "assets" / "rock.obj")
    (tmp_path / "backgrounds").mkdir()
    data = minimal(categories=[{"name": "rock", "shape": "assets/rock.obj"}], background_images="backgrounds")
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(data))
    sc = load_scenario(path)
    assert sc.categories[0].shape == str(tmp_path / "assets" / "rock.obj")
    assert sc.background_images == str(tmp_path / "backgrounds")
    assert load_scenario(str(path)).digest() == sc.digest()


def test_overrides_merge_recursively():
    sc = load_scenario("tabletop", {"camera": {"distance": [1.0, 2.0]}})
    assert sc.parameters["camera.distance"] == Dist("uniform", 1.0, 2.0)
    assert sc.parameters["camera.focal_mm"] == Dist("uniform", 35.0, 55.0)  # sibling kept
    assert sc.digest() != load_scenario("tabletop").digest()
    again = load_scenario(sc, {"light": {"ambient": 0.5}})
    assert again.parameters["camera.distance"] == Dist("uniform", 1.0, 2.0)
    assert again.parameters["light.ambient"] == Dist("constant", 0.5)
    assert load_scenario(sc) is sc


def test_omegaconf_node():
    omegaconf = pytest.importorskip("omegaconf")
    node = omegaconf.OmegaConf.create(minimal(camera={"distance": [1.0, 1.5]}))
    assert load_scenario(node).parameters["camera.distance"] == Dist("uniform", 1.0, 1.5)


def test_digest_is_stable_and_content_based():
    a, b = load_scenario(minimal()), load_scenario(minimal())
    assert a.digest() == b.digest()
    assert a.digest() != load_scenario(minimal(light={"ambient": 0.31})).digest()


@pytest.mark.parametrize("value,expected", [
    (0.5, Dist("constant", 0.5)),
    ([0.1, 0.4], Dist("uniform", 0.1, 0.4)),
    ({"uniform": [0.1, 0.4]}, Dist("uniform", 0.1, 0.4)),
    ({"loguniform": [0.1, 0.4]}, Dist("loguniform", 0.1, 0.4)),
    ({"normal": [0.3, 0.1], "clip": [0.0, 1.0]}, Dist("normal", 0.3, 0.1, 0.0, 1.0)),
    ({"choice": [0.1, 0.9], "p": [1, 3]}, Dist("choice", values=(0.1, 0.9), probs=(1.0, 3.0))),
])
def test_distribution_forms(value, expected):
    assert parse_dist(value, "x") == expected


def _bad_cases(tmp_path):
    """(scenario dict, text the error must contain)."""
    return [
        (minimal(colour="red"), "scenario: unknown key(s) ['colour']"),
        (minimal(camera={"focus": 1.0}), "camera: unknown key(s) ['focus']"),
        (minimal(camera={"distance": [2.0, 1.0]}), "camera.distance: min 2.0 > max 1.0"),
        (minimal(camera={"distance": {"uniform": [2.0, 1.0]}}), "camera.distance: min 2.0 > max 1.0"),
        (minimal(camera={"elevation_deg": 95.0}), "camera.elevation_deg: values must lie in [-89.0, 89.0]"),
        (minimal(light={"ambient": -0.1}), "light.ambient: values must lie in"),
        (minimal(light={"intensity": {"gaussian": [1, 0.1]}}), "light.intensity: unknown distribution"),
        (minimal(light={"intensity": [1.0]}), "light.intensity: expected [lo, hi]"),
        (minimal(light={"intensity": "bright"}), "light.intensity: expected a number"),
        (minimal(light={"intensity": {"normal": [1.0, -0.1]}}), "light.intensity: normal std must be > 0"),
        (minimal(light={"shininess": {"loguniform": [0.0, 8.0]}}), "light.shininess: loguniform needs lo > 0"),
        (minimal(sensor={"gamma": {"choice": [1.0, 2.0], "p": [1.0]}}), "sensor.gamma: choice needs"),
        (minimal(objects={"count": [1.0, float("nan")]}), "objects.count: expected a finite number"),
        (minimal(categories=[{"name": "rock", "shape": str(tmp_path / "missing.obj")}]),
         "categories[0].shape: mesh file not found"),
        (minimal(categories=[{"name": "rock", "shape": "pyramid"}]), "categories[0].shape: 'pyramid' is neither"),
        (minimal(categories=[{"name": "rock"}]), "categories[0]: needs 'name' and 'shape'"),
        (minimal(categories=[{"name": "a", "shape": "box", "colour": 1}]), "categories[0]: unknown key(s) ['colour']"),
        (minimal(categories=[{"name": "a", "shape": "box", "textures": ["plaid"]}]), "categories[0].textures"),
        (minimal(categories=[{"name": "a", "shape": "box", "size": [0.2, 0.1]}]), "categories[0].size: min"),
        (minimal(categories=[]), "categories: a scenario needs at least one object category or defect type"),
        (minimal(categories=[{"name": "a", "shape": "box"}, {"name": "a", "shape": "sphere"}]),
         "class names must be unique"),
        (minimal(defect_types=[{"name": "d", "kind": "dent"}]), "defect_types[0].kind"),
        (minimal(defect_types=[{"kind": "crack", "weight": 0}]), "defect_types[0].weight"),
        (minimal(background_images=str(tmp_path / "nowhere")), "background_images: folder not found"),
        (minimal(texture_images=str(tmp_path / "nowhere")), "texture_images: folder not found"),
        (minimal(placement="hanging"), "placement: expected one of"),
        (minimal(surface="water"), "surface: expected 'tabletop' or 'inspection'"),
        (minimal(ground_textures=[]), "ground_textures: unknown or empty"),
        (minimal(distractor_shapes=["blob.obj"]), "distractor_shapes: mesh file not found"),
        (minimal(slices={"dark": {"lite": {"intensity": 0.1}}}), "slices.dark: unknown key(s) ['lite']"),
        (minimal(slices={"dark": {"light": {"intensty": 0.1}}}), "slices.dark.light: unknown key(s) ['intensty']"),
        (minimal(slices={"dark": {"light": {"intensity": [0.5, 0.1]}}}),
         "slices.dark.light.intensity: min 0.5 > max 0.1"),
        (minimal(slices={"dark": {"light": {"intensity": 50.0}}}), "slices.dark.light.intensity: values must lie in"),
        (minimal(slices={"dark": {"weight": 0}}), "slices.dark.weight: must be > 0"),
        (minimal(slices={"dark": 0.5}), "slices.dark: expected a mapping"),
    ]


def test_invalid_scenarios_name_the_offending_key(tmp_path):
    for data, message in _bad_cases(tmp_path):
        with pytest.raises(ConfigError) as info:
            load_scenario(data)
        assert message in str(info.value), (data, str(info.value))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_scenario("no_such_scenario")
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_scenario(listing)
    with pytest.raises(ConfigError, match="cannot load a scenario from int"):
        load_scenario(3)


def test_restrict_and_support():
    d = Dist("uniform", 0.0, 10.0)
    assert d.restrict(2.0, 4.0) == Dist("uniform", 2.0, 4.0)
    assert d.support == (0.0, 10.0)
    with pytest.raises(ConfigError, match="does not meet"):
        d.restrict(11.0, 12.0)
    n = Dist("normal", 0.0, 1.0, -math.inf, math.inf)
    assert n.restrict(-1.0, 1.0).support == (-1.0, 1.0)


def test_scenario_is_frozen():
    sc = load_scenario(minimal())
    assert isinstance(sc, Scenario)
    with pytest.raises(Exception):
        sc.name = "other"  # type: ignore[misc]
