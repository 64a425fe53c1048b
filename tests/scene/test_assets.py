"""Assets of a scenario: the example built from its own meshes (docs/examples/kitchen), folders of meshes sampled per
instance, up axes and units, per-category colours and materials, the files' textures and vertex colours,
environment lighting from equirectangular images, and errors that name the file."""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from synth_torch import SynthDataset
from synth_torch.scenario.config import ConfigError, load_scenario
from synth_torch.scene.assets import environment_irradiance
from synth_torch.scene.gbuffer import build_gbuffer
from synth_torch.scene.geometry import assemble
from synth_torch.shading.shaders import albedo_map
from synth_torch.spec.constants import SlotKind

KITCHEN = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kitchen" / "kitchen.yaml"
N = 24


@pytest.fixture(scope="module")
def kitchen():
    ds = SynthDataset(KITCHEN, batch_size=N, resolution=64, seed=0, sensor=False)
    index = torch.arange(N)
    slices = torch.zeros(N, dtype=torch.long)
    params = ds.sampler.sample_params(index, slices, ds.mixture.overrides())
    spec = ds.sampler.build(params, ds.resolution)
    return ds, spec, ds.render_params(params)


def _slots(ds, spec, category: str, shape_name: str | None = None) -> torch.Tensor:
    """[B, S] bool: valid object slots of ``category`` (and of the mesh file ``shape_name``)."""
    cat = ds.scenario.class_names.index(category) + 1
    rows = spec.objects.valid & (spec.objects.kind == SlotKind.OBJECT) & (spec.objects.label == cat)
    if shape_name is not None:
        shapes = torch.tensor([shape_name in s for s in spec.shapes])
        rows &= shapes[spec.objects.shape]
    return rows


def _pixels(batch, rows: torch.Tensor) -> torch.Tensor:
    """[n, 3] image values of the visible pixels of the slots ``rows`` [B, S]."""
    B, S = rows.shape
    slot = batch.instance - 1
    chosen = (slot >= 0) & rows.gather(1, slot.clamp(min=0, max=S - 1).view(B, -1)).view_as(slot)
    return batch.image.permute(0, 2, 3, 1)[chosen]


def test_example_scenario_uses_its_meshes_per_instance_upright_and_to_scale(kitchen):
    ds, spec, _ = kitchen
    bottles = [s for s in spec.shapes if "bottles" in s]
    assert len(bottles) == 2 and all(s.endswith("|up=y") for s in bottles)  # glTF: Y-up by default
    used = {spec.shapes[i] for i in spec.objects.shape[_slots(ds, spec, "bottle")].tolist()}
    assert used == set(bottles), "each instance draws one mesh of the folder"
    scale = spec.objects.scale
    bottle = _slots(ds, spec, "bottle")
    assert (scale[bottle].argmax(-1) == 2).all(), "bottles stand: their tall axis is world z"
    mug = _slots(ds, spec, "mug")
    assert mug.any()
    # 9 cm tall, 8.4 cm wide in the file (centimetres, scale 0.01): 0.09 m tall unless its grid cell is smaller
    height = scale[mug][:, 2]
    assert (height <= 0.09 + 1e-6).all() and (height > 0.0899).any()
    torch.testing.assert_close(scale[mug][:, 0] / height, torch.full_like(height, 8.4 / 9.0))


def test_category_colour_and_material(kitchen):
    ds, spec, _ = kitchen
    crate = _slots(ds, spec, "crate")
    assert crate.any()
    for r, g, b in spec.objects.albedo[crate].tolist():
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        assert 20 - 1e-3 <= h * 360 <= 40 + 1e-3 and 0.5 - 1e-4 <= s <= 0.7 + 1e-4 and 0.45 - 1e-4 <= v <= 0.7 + 1e-4
    assert torch.allclose(spec.objects.specular[crate], torch.tensor(0.1))
    assert (spec.objects.specular[_slots(ds, spec, "apple")] == 1).all()
    assert not spec.objects.colored[crate].any() and spec.objects.colored[_slots(ds, spec, "apple")].all()


def test_mesh_textures_and_vertex_colours_show(kitchen):
    ds, spec, batch = kitchen
    apple = _pixels(batch, _slots(ds, spec, "apple")).mean(0)
    assert apple[0] > apple[1] + 0.1 and apple[0] > apple[2] + 0.1, apple  # red vertex colours
    green = _pixels(batch, _slots(ds, spec, "bottle", "green_bottle")).mean(0)
    assert green[1] > green[0] + 0.1 and green[1] > green[2] + 0.05, green  # the glTF base colour
    # the files' colours themselves, before lighting: the albedo map the shaders read at those pixels
    geom = assemble(spec)
    gbuffer = build_gbuffer(spec, geom, ds.context, ds.resolution, uv=True)
    albedo = albedo_map(spec, gbuffer).permute(0, 3, 1, 2)
    on = lambda category, shape=None: _pixels(replace(batch, image=albedo), _slots(ds, spec, category, shape))  # noqa: E731
    green = on("bottle", "green_bottle")
    torch.testing.assert_close(green, (torch.tensor([40.0, 140.0, 60.0]) / 255).expand_as(green), atol=1e-5, rtol=0)
    label = on("bottle", "label_bottle")  # brown glass with a pale paper band (the texture), filtered
    paper = ((label - torch.tensor([235, 225, 200]) / 255).abs().max(-1).values < 0.08).float().mean()
    glass = ((label - torch.tensor([150, 60, 30]) / 255).abs().max(-1).values < 0.08).float().mean()
    assert paper > 0.1 and glass > 0.3, (float(paper), float(glass))
    red = on("apple")
    assert (red[:, 0] > red[:, 1]).float().mean() > 0.9
    # without the files' colours the same objects take the scenario's sampled colours instead
    plain = load_scenario(KITCHEN, {"categories": [dict(c, mesh_colors=False) for c in
                                                   load_scenario(KITCHEN).to_dict()["categories"]]})
    other = SynthDataset(plain, batch_size=N, resolution=64, seed=0, sensor=False)
    params = other.sampler.sample_params(torch.arange(N), torch.zeros(N, dtype=torch.long),
                                         other.mixture.overrides())
    assert not other.sampler.build(params, other.resolution).objects.colored.any()


def _env(tmp_path, name, top, bottom):
    folder = tmp_path / name
    folder.mkdir()
    image = np.zeros((32, 64, 3), np.uint8)
    image[:16], image[16:] = top, bottom
    Image.fromarray(image).save(folder / "env.png")
    return folder


@pytest.mark.parametrize("shader", ["numba", "torch"])
def test_environment_light_comes_from_above_in_its_colours(tmp_path, shader):
    """Only ambient light (no direct light): the ground, facing up, takes the upper hemisphere's colour; the flat
    ambient term would leave it grey."""
    base = {"categories": [{"name": "cube", "shape": "box"}], "shadows": False,
            "light": {"intensity": 0.0, "ambient": 1.0}, "ground": {"saturation": 0.0, "value": 0.8, "texture_contrast": 0},
            "ground_textures": ["solid"], "camera": {"elevation_deg": 60}}
    lit = {}
    for name, top, bottom in (("redsky", (255, 0, 0), (0, 255, 0)), ("flat", (255, 255, 255), (255, 255, 255))):
        sc = load_scenario({**base, "environment_images": str(_env(tmp_path, name, top, bottom))})
        batch = SynthDataset(sc, batch_size=2, resolution=32, sensor=False, shader=shader).render_batch(torch.arange(2))
        ground = (batch.instance == 0) & (batch.depth[:, 0] > 0)
        lit[name] = batch.image.permute(0, 2, 3, 1)[ground].mean(0)
    r, g, b = lit["redsky"].tolist()
    assert r > 0.6 and g < 0.05 and b < 0.01, lit["redsky"]  # E(up) of a red upper and green lower half: red
    flat = lit["flat"]
    assert torch.allclose(flat, flat.mean().expand(3), atol=1e-3) and abs(float(flat.mean()) - 0.8) < 0.02


def test_environment_irradiance_matches_closed_forms(tmp_path):
    folder = _env(tmp_path, "half", (255, 255, 255), (0, 0, 0))
    M = environment_irradiance(str(folder / "env.png"))[0]

    def E(n):
        v = torch.tensor([*n, 1.0], dtype=torch.float64)
        return float(v @ M @ v)

    # a bright upper hemisphere: E/pi is 1 facing up, 0 facing down, 1/2 sideways (order-2 harmonics: ~3 %)
    assert abs(E((0, 0, 1)) - 1) < 0.03 and abs(E((0, 0, -1))) < 0.03 and abs(E((1, 0, 0)) - 0.5) < 0.01


def test_shaders_agree_on_the_example_and_each_is_batch_independent():
    kw = dict(resolution=48, seed=2, sensor=False)
    fast = SynthDataset(KITCHEN, batch_size=6, shader="numba", **kw).render_batch(torch.arange(6))
    ref = SynthDataset(KITCHEN, batch_size=6, shader="torch", **kw).render_batch(torch.arange(6))
    diff = (fast.image - ref.image).abs()
    assert float(diff.max()) <= 0.05 / 255 and float(diff.mean()) <= 0.005 / 255, float(diff.max()) * 255
    assert torch.equal(fast.instance, ref.instance) and torch.equal(fast.boxes, ref.boxes)
    for shader, full in (("numba", fast), ("torch", ref)):
        sub = SynthDataset(KITCHEN, batch_size=2, shader=shader, **kw).render_batch(torch.tensor([4, 1]))
        assert torch.equal(full.image[[4, 1]], sub.image), shader


def _bottle_glb(path: Path, tall_axis: int = 1) -> None:
    mesh = trimesh.creation.cylinder(radius=0.5, height=3.0)  # tall along z
    if tall_axis == 1:
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))  # z -> y
    mesh.export(path)


def test_up_axis_default_and_override(tmp_path):
    _bottle_glb(tmp_path / "y_up.glb")
    for up, axis in ((None, 2), ("z", 1)):
        category = {"name": "bottle", "shape": "y_up.glb", **({"up": up} if up else {})}
        (tmp_path / "s.yaml").write_text(__import__("yaml").safe_dump({"categories": [category]}))
        ds = SynthDataset(tmp_path / "s.yaml", batch_size=2, resolution=16)
        spec = ds.sampler.sample(torch.arange(2), torch.zeros(2, dtype=torch.long), ds.mixture.overrides(),
                                 ds.resolution)
        assert (spec.objects.scale[spec.objects.valid].argmax(-1) == axis).all(), up


@pytest.mark.parametrize("make,key,message", [
    (lambda d: (d / "broken.obj").write_text("v 0 0\nf 1 2 9\nnonsense"), "broken.obj", "broken.obj"),
    (lambda d: (d / "meshes").mkdir(), "meshes", "holds no mesh file"),
    (lambda d: (d / "flat.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                           "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                           "end_header\n0 0 0\n1 1 1\n2 2 2\n3 0 1 2\n"), "flat.ply", "flat.ply"),
])
def test_bad_meshes_fail_at_load_naming_the_file(tmp_path, make, key, message):
    make(tmp_path)
    (tmp_path / "s.yaml").write_text(f"categories: [{{name: thing, shape: {key}}}]\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_scenario(tmp_path / "s.yaml")
    assert "categories[0].shape" in str(info.value)


def test_bad_category_and_environment_settings_name_the_key_or_file(tmp_path):
    _bottle_glb(tmp_path / "b.glb")
    for category, message in (({"up": "w"}, "categories\\[0\\].up"), ({"size": 0.1, "scale": 0.01}, "not both"),
                              ({"hue": "red"}, "categories\\[0\\].hue"), ({"mesh_colors": "yes"}, "mesh_colors")):
        with pytest.raises(ConfigError, match=message):
            load_scenario({"categories": [{"name": "b", "shape": str(tmp_path / "b.glb"), **category}]})
    with pytest.raises(ConfigError, match="primitives have no units"):
        load_scenario({"categories": [{"name": "b", "shape": "box", "scale": 0.01}]})
    env = tmp_path / "env"
    env.mkdir()
    (env / "sky.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="sky.png"):
        load_scenario({"categories": [{"name": "b", "shape": "box"}], "environment_images": str(env)})


def test_fingerprint_follows_every_mesh_of_a_folder(tmp_path):
    folder = tmp_path / "meshes"
    folder.mkdir()
    _bottle_glb(folder / "a.glb")
    _bottle_glb(folder / "b.glb", tall_axis=2)
    data = {"categories": [{"name": "b", "shape": str(folder)}]}
    before = load_scenario(data)
    assert len(before.categories[0].meshes) == 2 and len(before.asset_files()) == 2
    fingerprint = before.fingerprint()
    _bottle_glb(folder / "b.glb")  # edit one file of the folder
    stat = (folder / "b.glb").stat()
    __import__("os").utime(folder / "b.glb", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit
    assert load_scenario(data).fingerprint() != fingerprint
