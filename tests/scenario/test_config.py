"""Scenario loading and validation: built-ins load, and every invalid input names its key."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from synth_torch.scenario.config import BUILTIN_DIR, ConfigError, Scenario, builtin_scenarios, load_scenario
from synth_torch.scenario.distributions import Dist, ParamTable, parse_dist
from synth_torch.spec import params as registry
from synth_torch.spec.params import PARAM_NAMES, SECTIONS


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
    for section in SECTIONS:
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
    assert (sc.max_labeled_defects, sc.max_decoys, sc.max_defects) == (3, 4, 7)
    assert [d.name for d in sc.defect_types if d.decoy] == ["stain", "dust", "scratch"]


def test_defaults_fill_every_parameter():
    sc = load_scenario(minimal())
    assert set(sc.parameters) == set(PARAM_NAMES)
    assert sc.slice_names == ("base",)
    for p in registry.PARAMS:
        assert sc.parameters[p.name] == parse_dist(p.default, p.name)


def _mesh_scenario(tmp_path):
    import trimesh
    from PIL import Image

    (tmp_path / "assets").mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "assets" / "rock.obj")
    (tmp_path / "backgrounds").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "backgrounds" / "red.png")
    data = minimal(categories=[{"name": "rock", "shape": "assets/rock.obj"}], background_images="backgrounds")
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_from_yaml_file_resolves_relative_paths(tmp_path):
    path = _mesh_scenario(tmp_path)
    sc = load_scenario(path)
    assert sc.categories[0].shape == "assets/rock.obj" and sc.root == tmp_path.resolve()
    assert sc.resolve(sc.categories[0].shape) == str(tmp_path.resolve() / "assets" / "rock.obj")
    assert sc.resolve(sc.background_images) == str(tmp_path.resolve() / "backgrounds")
    assert load_scenario(str(path)).digest() == sc.digest()
    assert [a.role for a in sc.asset_files()] == ["mesh", "background_images"]


def test_reloaded_scenario_keeps_its_folder(tmp_path, monkeypatch):
    sc = load_scenario(_mesh_scenario(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # relative paths would break if resolved against the working directory
    again = load_scenario(sc, {"camera": {"distance": [1.0, 2.0]}})
    assert again.root == sc.root
    assert again.resolve(again.categories[0].shape) == sc.resolve(sc.categories[0].shape)


def test_fingerprint_hashes_the_normalised_scenario_and_asset_contents(tmp_path):
    a = load_scenario(minimal(camera={"distance": [1.0, 1.5]}, light={"ambient": [0.2, 0.2]}))
    b = load_scenario(minimal(camera={"distance": {"uniform": [1.0, 1.5]}}, light={"ambient": 0.2}))
    assert a.fingerprint() == b.fingerprint() and a.digest() == b.digest()
    assert Scenario.from_dict(a.to_dict()) == a
    (tmp_path / "one").mkdir()
    path = _mesh_scenario(tmp_path / "one")
    at_one = load_scenario(path).fingerprint()
    moved = tmp_path / "two"
    path.parent.rename(moved)
    before = load_scenario(moved / "scene.yaml").fingerprint()
    assert before == at_one  # the folder's location does not matter, only the files' contents
    import trimesh

    trimesh.creation.icosphere(subdivisions=2).export(moved / "assets" / "rock.obj")  # an edited mesh
    assert load_scenario(moved / "scene.yaml").fingerprint() != before


def _png(color=(200, 10, 10)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("key", ["background_images", "texture_images"])
@pytest.mark.parametrize("case,files,match", [
    ("empty", {}, r"contains no images"),
    ("only text", {"notes.txt": b"no images here"}, r"1 entry that is not a .*image: notes.txt"),
    ("stray file", {"a.png": "png", "README.md": b"# backgrounds"}, r"not a .*image: README.md"),
    ("subfolder", {"a.png": "png", "more/b.png": "png"}, r"not a .*image: more"),
    ("unsupported format", {"a.png": "png", "b.bmp": b"BM" + bytes(60)}, r"not a .*image: b.bmp"),
    ("random bytes", {"a.png": "png", "b.png": b"\x00\x01 not a png at all"}, r"cannot read image .*b.png"),
    ("truncated", {"a.png": "png", "b.png": "truncated"}, r"cannot read image .*b.png"),
    ("wrong suffix", {"a.jpg": "png"}, r"image .*a.jpg holds PNG data"),
])
def test_empty_corrupt_or_mixed_image_folders_fail_at_load(tmp_path, key, case, files, match):
    """Every file of an image folder is checked when the scenario loads, and the error names the key and file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        data = {"png": _png(), "truncated": _png()[:-20]}.get(data, data)
        (folder / name).write_bytes(data)
    with pytest.raises(ConfigError, match=f"{key}: .*{match}"):
        load_scenario(minimal(**{key: str(folder)}))


def test_image_folders_ignore_hidden_files_and_provenance(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "b.png").write_bytes(_png())
    (folder / "a.jpeg").write_bytes(_png())  # PNG data under a JPEG name is refused ...
    with pytest.raises(ConfigError, match="a.jpeg holds PNG data"):
        load_scenario(minimal(texture_images=str(folder)))
    (folder / "a.jpeg").unlink()
    (folder / ".DS_Store").write_bytes(b"\x00\x00")
    (folder / "PROVENANCE").write_text("source: made by the test\nlicense: CC0-1.0\n")
    sc = load_scenario(minimal(texture_images=str(folder)))  # ... hidden files and PROVENANCE are not images
    assert [a.path for a in sc.asset_files()] == [str(folder / "b.png")]


def test_integer_parameters_need_integer_values():
    with pytest.raises(ConfigError, match="objects.count: an integer parameter needs integer values"):
        load_scenario(minimal(objects={"count": [1.5, 4]}))
    with pytest.raises(ConfigError, match="slices.busy.objects.count: an integer parameter"):
        load_scenario(minimal(slices={"busy": {"objects": {"count": 2.5}}}))


def test_param_table_matches_the_distributions():
    u = ((torch.arange(4000, dtype=torch.float64) + 0.5) / 4000).float()  # a quantile grid: exact expectations
    dists = [Dist("uniform", 2.0, 5.0), Dist("loguniform", 1.0, 100.0), Dist("normal", 0.0, 1.0, -1.0, 2.0),
             Dist("choice", values=(1.0, 4.0, 9.0), probs=(1.0, 1.0, 2.0)), Dist("constant", 3.0)]
    table = ParamTable([dists], [False] * len(dists))
    out = table.icdf(u[:, None].expand(-1, len(dists)).contiguous(), torch.zeros(len(u), dtype=torch.long))
    torch.testing.assert_close(out[:, 0], 2 + 3 * u)
    torch.testing.assert_close(out[:, 1], torch.exp(math.log(100) * u.double()).float())
    assert out[:, 2].min() >= -1 and out[:, 2].max() <= 2 and abs(float(out[:, 2].mean()) - 0.2297) < 0.002  # truncated N(0, 1) on [-1, 2]
    assert set(out[:, 3].tolist()) == {1.0, 4.0, 9.0} and float((out[:, 3] == 9).float().mean()) == 0.5
    assert (out[:, 4] == 3).all()


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
    import omegaconf
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


def test_parameter_reference_page_is_generated_from_the_registry():
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"
    assert page.read_text() == registry.document(), "regenerate: python -m synth_torch.spec > docs/parameters.md"
    for p in registry.PARAMS:
        assert f"`{p.name}`" in page.read_text()
