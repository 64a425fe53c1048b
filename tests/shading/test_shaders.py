"""The compiled shader against the torch reference, and the determinism of each on its own.

Tolerances (stated in docs/rendering.md): images from the two shaders differ by at most 0.05/255 per value and
0.005/255 on average (the compiled shader skips highlights weaker than 1e-4 of their strength and uses a
polynomial sine); labels are identical because label passes never read the shader.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from torch.utils.data import DataLoader

from synth_torch import SynthDataset
from synth_torch.shading import get_shader
from synth_torch.shading.materials import grain, pattern
from synth_torch.spec.constants import TEXTURES

MAX_DIFF, MEAN_DIFF = 0.05 / 255, 0.005 / 255
LABELS = ("instance", "semantic", "depth", "normals", "valid", "labels", "boxes", "amodal_boxes", "boxes3d_center",
          "boxes3d_size", "boxes3d_rotation", "boxes3d_corners", "keypoints", "visible_pixels", "visible_fraction")


def _pair(scenario: str, sensor: bool, resolution=64, batch=12):
    kw = dict(batch_size=batch, resolution=resolution, seed=3, sensor=sensor)
    fast, ref = SynthDataset(scenario, shader="numba", **kw), SynthDataset(scenario, shader="torch", **kw)
    index = torch.arange(batch)
    slices = index % len(fast.slice_names)  # every slice of the scenario
    return fast.render_batch(index, slices), ref.render_batch(index, slices)


@pytest.mark.parametrize("scenario", ["tabletop", "defects"])
@pytest.mark.parametrize("sensor", [False, True])
def test_compiled_shader_matches_the_reference(scenario, sensor):
    fast, ref = _pair(scenario, sensor)
    diff = (fast.image - ref.image).abs()
    assert float(diff.max()) <= MAX_DIFF and float(diff.mean()) <= MEAN_DIFF, (float(diff.max()) * 255,
                                                                                 float(diff.mean()) * 255)
    assert ref.image.std() > 0.05  # not a blank image
    for name in LABELS:
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name


SHADER_DEVICES = [("numba", "cpu"), ("torch", "cpu"), pytest.param("torch", "cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("shader,device", SHADER_DEVICES)
def test_each_shader_is_bit_identical_across_batches(shader, device):
    """Sample i renders to the same bits alone, in another batch size, and among other samples (on each device)."""
    ds = SynthDataset("tabletop", batch_size=6, resolution=48, seed=1, shader=shader, device=device)
    full = ds.render_batch(torch.arange(6))
    sub = ds.render_batch(torch.tensor([4, 1]))
    other = ds.render_batch(torch.tensor([9, 4, 30]))
    for name in ("image",) + LABELS:
        a = getattr(full, name)
        assert torch.equal(a[[4, 1]], getattr(sub, name)), name
        assert torch.equal(a[4], getattr(other, name)[1]), name


@pytest.mark.parametrize("shader", ["numba", "torch"])
def test_each_shader_is_identical_with_workers(shader):
    ds = SynthDataset("defects", batch_size=4, resolution=32, seed=2, shader=shader, length=2)
    direct = [ds.render_batch(torch.arange(k * 4, k * 4 + 4)).image for k in range(2)]
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    got = {b.batch_index: b.image for b in loader}
    assert torch.equal(got[0], direct[0]) and torch.equal(got[1], direct[1])


def test_get_shader_choices():
    assert get_shader("auto", "cpu").name == "numba"
    assert get_shader("auto", "cpu", grad=True).name == "torch"
    with pytest.raises(ValueError, match="shader must be one of"):
        get_shader("phong", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        get_shader("numba", "cuda")


def test_reference_patterns_are_bounded_and_distinct():
    """Every texture's modulation stays in [1 - contrast, 1] and differs from the others."""
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.rand(4000, generator=g, dtype=torch.float64) * 8 - 4 for _ in range(3))
    contrast = torch.full_like(x, 0.5)
    phase = torch.rand(4000, generator=g, dtype=torch.float64)
    mods = [pattern(torch.full_like(x, k, dtype=torch.long), x, y, z, contrast, phase) for k in range(len(TEXTURES))]
    assert torch.equal(mods[TEXTURES.index("solid")], torch.ones_like(x))
    for k, m in enumerate(mods):
        assert m.min() >= 0.5 - 1e-9 and m.max() <= 1 + 1e-9, TEXTURES[k]
        for j in range(k):
            assert not torch.allclose(m, mods[j]), (TEXTURES[k], TEXTURES[j])
    assert torch.equal(grain(x, y, z, torch.zeros_like(x), phase), torch.ones_like(x))


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """A background folder (solid red, solid blue) and a ground-texture folder (solid green), written as PNG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("image_folders")
    for folder, name, color in (("bg", "red", (255, 0, 0)), ("bg", "blue", (0, 0, 255)), ("tex", "green", (0, 200, 0))):
        (root / folder).mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), color).save(root / folder / f"{name}.png")
    return root


@pytest.mark.parametrize("shader", ["numba", "torch"])
def test_image_folders_texture_the_ground_and_fill_the_background(image_folders, shader, device):
    """A low camera sees the horizon: every empty pixel shows one whole background image (both images occur),
    and the ground, textured by a pure green image under white light without highlights, has no red or blue."""
    if shader == "numba" and device.type != "cpu":
        pytest.skip("the compiled shader runs on the CPU only")
    scenario = {"name": "folders", "categories": [{"name": "cube", "shape": "box"}], "shadows": False,
                "antialias": False, "camera": {"elevation_deg": 3.0, "distance": 1.0},
                "light": {"specular": 0.0, "temperature_k": 6500.0},
                "background_images": str(image_folders / "bg"), "texture_images": str(image_folders / "tex")}
    batch = SynthDataset(scenario, batch_size=6, resolution=32, sensor=False, shader=shader,
                         device=device).render_batch(torch.arange(6)).to("cpu")
    image = batch.image.permute(0, 2, 3, 1)
    empty = batch.depth[:, 0] == 0
    assert (empty.flatten(1).float().mean(1) > 0.2).all()
    seen = set()
    for b in range(len(batch)):
        colors = image[b][empty[b]].unique(dim=0)
        assert colors.shape[0] == 1, colors  # one whole image, exactly its colour
        seen.add(tuple(colors[0].tolist()))
    assert seen == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    ground = ~empty & (batch.instance == 0)
    assert ground.sum() > 100
    assert image[ground][:, [0, 2]].abs().max() < 1e-6 and image[ground][:, 1].min() > 0.05
