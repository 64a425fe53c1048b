"""Real failures mapped back to scenario regions (``synth_torch.loop.real_failures``).

The stand-in for a real set is rendered from a known region of ``defects.contrast`` that a toy model with a
known weakness fails on: the mapping must recover that region. The magnetic-tile test skips cleanly without
``../shared/real``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from scipy import stats as sps
from torch import nn
from torch.utils.data import DataLoader

from synth_torch.data.dataset import SynthDataset
from synth_torch.data.real import collate_real, open_real
from synth_torch.loop.mining import Predicate
from synth_torch.loop.models import TinyUNet
from synth_torch.loop.real_failures import (ImageScores, SyntheticPool, apparent_contrast, hydra_override,
                                            map_failures, per_image_scores, slice_override, synthetic_pool)
from synth_torch.loop.tasks import SegmentationTask
from synth_torch.scenario.config import load_scenario


class DarkSpotNet(nn.Module):
    """A toy segmenter with a known weakness: a pixel is a defect when it is at least ``threshold`` darker
    than its 9x9 neighbourhood, so faint (low-contrast) defects are missed. ``darkness`` is its feature layer."""

    def __init__(self, threshold: float = 0.08):
        super().__init__()
        self.darkness = nn.Conv2d(3, 1, 9, padding=4, padding_mode="replicate", bias=False)
        kernel = torch.full((1, 3, 9, 9), -1.0 / (3 * 81))
        kernel[0, :, 4, 4] += 1.0 / 3
        self.darkness.weight.data = -kernel  # neighbourhood mean minus the pixel
        self.threshold = threshold

    def forward(self, x):
        d = self.darkness(x)
        return torch.cat([torch.zeros_like(d), 200.0 * (d - self.threshold)], 1)


def _toy_scenario(contrast) -> dict:
    """Few, large, plain defects on a uniform tile at 32 px, contrast drawn from ``contrast``."""
    base = load_scenario("defects").to_dict()
    base["defect_types"] = [{"name": "blowhole", "kind": "blowhole", "size": [0.12, 0.16], "weight": 1.0}]
    base["defects"] = {**base["defects"], "count": 1, "decoys": 0, "contrast": contrast, "size": 1.0}
    base["ground"] = {**base["ground"], "texture_contrast": 0.0, "grain": 0.0}
    base["sensor"] = {**base["sensor"], "noise_sigma": 0.0, "vignetting": 0.0}
    base["slices"] = {"base": {"weight": 1.0}}
    return base


@pytest.fixture(scope="module")
def toy():
    task = SegmentationTask(DarkSpotNet(), 2, target="foreground").eval()
    pool_ds = SynthDataset(_toy_scenario([0.05, 0.8]), batch_size=32, resolution=32)
    real_ds = SynthDataset(_toy_scenario([0.05, 0.15]), batch_size=32, resolution=32, seed=7)
    pool = synthetic_pool(task, pool_ds, 256, layer="darkness")
    real = per_image_scores(task, [real_ds.render_batch(torch.arange(64))], layer="darkness")
    return task, pool_ds, pool, real


def test_toy_model_fails_where_built_to(toy):
    _, _, pool, real = toy
    contrast = pool.params["defects.contrast"]
    faint, strong = pool.scores.loss[contrast < 0.15], pool.scores.loss[contrast > 0.5]
    assert faint.mean() > 0.8 and strong.mean() < 0.5
    assert (real.loss > 0.5).float().mean() > 0.8


def test_mapping_recovers_the_failing_contrast_region(toy):
    task, pool_ds, pool, real = toy
    found = map_failures(real.features[real.loss > 0.5], pool, k=5)
    assert found.shifts[0].param == "defects.contrast"
    assert found.shifts[0].median < 0.2 < found.shifts[0].pool_median
    (pred,) = found.predicates(max_predicates=1)
    assert pred.param == "defects.contrast" and pred.lo < 0.1 and 0.12 < pred.hi < 0.3
    assert found.gap < 3.0
    override = slice_override([pred], pool_ds.scenario, weight=0.5)
    region = [pytest.approx(max(0.05, pred.lo)), pytest.approx(pred.hi)]
    assert override == {"weight": 0.5, "defects": {"contrast": {"uniform": region}}}
    # generating the region gives samples the toy model fails on
    sid = pool_ds.mixture.add("real_failures", [pred], 0.5)
    drawn = pool_ds.render_batch(torch.arange(32), torch.full((32,), sid))
    assert float(drawn.params["defects.contrast"].max()) < pred.hi
    assert float(drawn.params["defects.contrast"].min()) >= pred.lo
    assert float(task.per_sample_loss(drawn).mean()) > 0.8


def test_map_failures_on_constructed_features():
    g = torch.Generator().manual_seed(0)
    M = 600
    params = {"defects.contrast": torch.rand(M, generator=g, dtype=torch.float64),
              "light.intensity": torch.rand(M, generator=g, dtype=torch.float64),
              "camera.sensor_mm": torch.full((M,), 36.0, dtype=torch.float64)}

    def feats(contrast, intensity):
        noise = 0.05 * torch.randn(len(contrast), 2, generator=g)
        return torch.stack([4 * contrast, intensity], 1).float() + noise

    scores = ImageScores(*(torch.zeros(M),) * 7, feats(params["defects.contrast"], params["light.intensity"]),
                         tuple(map(str, range(M))))
    types = torch.stack([params["defects.contrast"] < 0.5, params["defects.contrast"] >= 0.5], 1)
    pool = SyntheticPool(scores, params, types, ("faint", "strong"))
    failing = feats(0.6 + 0.1 * torch.rand(40, generator=g), torch.rand(40, generator=g))
    found = map_failures(failing, pool, k=4)
    assert [s.param for s in found.shifts] == ["defects.contrast", "light.intensity"]  # constants skipped
    assert found.type_share["strong"][0] == 1.0 and found.type_share["faint"][0] == 0.0
    (pred,) = found.predicates()
    assert pred.param == "defects.contrast" and 0.58 < pred.lo < 0.63 and 0.66 < pred.hi < 0.72
    assert found.neighbours.shape == found.distances.shape == (40, 4)
    assert (found.distances[:, 1:] >= found.distances[:, :-1]).all()
    far = map_failures(failing + torch.tensor([50.0, 0.0]), pool, k=4)
    assert far.gap > 10 * found.gap
    assert found.predicates(exclude=["defects.contrast"]) == ()
    with pytest.raises(ValueError, match="features must be"):
        map_failures(failing[:, :1], pool)
    with pytest.raises(ValueError, match="k must be"):
        map_failures(failing, pool, k=M)
    with pytest.raises(ValueError, match="no failures"):
        map_failures(failing[:0], pool)


def test_per_image_scores_match_a_direct_count():
    task = SegmentationTask(DarkSpotNet(), 2, target="foreground").eval()
    batch = SynthDataset(_toy_scenario([0.05, 0.8]), batch_size=8, resolution=32).render_batch(torch.arange(8))
    image = batch.image.clone()
    scores = per_image_scores(task, [batch.select(slice(0, 5)), batch.select(slice(5, 8))], layer="darkness")
    assert torch.equal(batch.image, image)
    pred = task(batch.image).argmax(1) > 0
    true = batch.semantic > 0
    for i in range(8):
        inter, union = int((pred[i] & true[i]).sum()), int((pred[i] | true[i]).sum())
        assert scores.iou[i].item() == pytest.approx(inter / union if union else math.nan, nan_ok=True)
        assert scores.recall[i].item() == pytest.approx(inter / int(true[i].sum()), nan_ok=True)
        assert scores.false_alarm[i].item() == pytest.approx(int((pred[i] & ~true[i]).sum()) / int((~true[i]).sum()))
    assert torch.allclose(scores.loss, task.per_sample_loss(batch))
    d = task.net.darkness(batch.image)
    assert torch.allclose(scores.features, torch.cat([d.mean((2, 3)), d.amax((2, 3))], 1))
    assert scores.keys == tuple(str(int(s)) for s in batch.sample_id)
    with pytest.raises(TypeError, match="SegmentationTask"):
        per_image_scores(object(), [batch])
    with pytest.raises(ValueError, match="'nope' is not a module"):
        per_image_scores(task, [batch], layer="nope")
    with pytest.raises(ValueError, match="no default feature layer"):
        per_image_scores(task, [batch])


def test_apparent_contrast_follows_the_rendered_contrast():
    ds = SynthDataset(_toy_scenario([0.1, 0.8]), batch_size=48, resolution=48)
    batch = ds.render_batch(torch.arange(48))
    measured = apparent_contrast(batch.image, batch.semantic > 0)
    ok = torch.isfinite(measured)
    assert ok.sum() > 40
    rho = sps.spearmanr(measured[ok].numpy(), batch.params["defects.contrast"][ok].double().numpy()).statistic
    assert rho > 0.8
    assert torch.isnan(apparent_contrast(batch.image[:1], torch.zeros(1, 48, 48, dtype=torch.bool))).all()
    flat = torch.full((1, 3, 16, 16), 0.5)
    flat[..., 6:10, 6:10] = 0.2
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 6:10, 6:10] = True
    assert apparent_contrast(flat, mask).item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="mask"):
        apparent_contrast(flat, mask[0])


def test_slice_override_reaches_the_scenario_and_hydra():
    scenario = load_scenario("defects")
    preds = [Predicate("defects.contrast", hi=0.4), Predicate("sensor.vignetting", 0.4, 0.6)]
    assert slice_override(preds, scenario, 0.3) == {"weight": 0.3, "defects": {"contrast": {"uniform": [0.3, 0.4]}},
                                                    "sensor": {"vignetting": {"uniform": [0.4, 0.6]}}}
    with pytest.raises(ValueError, match="cannot produce"):
        slice_override([Predicate("defects.contrast", lo=0.9)], scenario, 0.3)
    with pytest.raises(ValueError, match="not a parameter"):
        slice_override([Predicate("nope.x", lo=0.9)], scenario, 0.3)
    ok = slice_override([Predicate("defects.contrast", 0.35, 0.45)], scenario, 0.3)
    text = hydra_override("real_failures", ok)
    assert text == "+scenario.slices.real_failures={weight:0.3,defects:{contrast:{uniform:[0.35,0.45]}}}"
    (parsed,) = OverridesParser.create().parse_overrides([text])
    value = parsed.value()
    grown = load_scenario(scenario, {"slices": {"real_failures": value}})
    assert grown.slices["real_failures"].overrides["defects.contrast"].support == (0.35, 0.45)
    with pytest.raises(ValueError, match="identifier"):
        hydra_override("real failures", ok)


def test_magnetic_tile_scores(shared_real):
    names = load_scenario("defects").class_names
    val = open_real("magnetic_tile", shared_real / "magnetic_tile", names, 32, "val").take(12)
    task = SegmentationTask(TinyUNet(2, width=4, depth=2), 2, target="foreground")
    scores = per_image_scores(task, DataLoader(val, batch_size=5, collate_fn=collate_real))
    assert scores.keys == val.keys
    assert scores.features.shape == (12, 2 * 16)
    differ = [k for k, h in zip(val.keys, scores.has_defect.tolist()) if h != (not k.startswith("MT_Free/"))]
    assert all(k.startswith("MT_Uneven/") for k in differ)  # the only defect folder with empty masks
    assert torch.isnan(scores.recall[~scores.has_defect]).all()
