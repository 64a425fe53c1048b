"""Hard examples by gradient (issue 11): a fixed toy segmenter with a known weakness, searched through the
differentiable renderer, projected into the scenario's ranges, re-rendered with exact labels, and random search
at the same budget."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from synth_torch.data.dataset import SynthDataset
from synth_torch.data.mixture import SliceMixture
from synth_torch.loop.hard_examples import (check_region, gradient_search, hard_region, mine_hard_region,
                                            random_search, region_losses, search_bounds, searchable_params, task_loss)
from synth_torch.loop.mining import Predicate
from synth_torch.loop.tasks import SegmentationTask

B = 4
INDEX = torch.arange(B)


class Threshold(nn.Module):
    """A fixed 'segmenter' that calls a pixel a defect when its gray level is below (``dark=True``) or above
    ``threshold``: it fails (false alarms everywhere) under low light, or under bright light."""

    def __init__(self, threshold: float, dark: bool, sharpness: float = 10.0):
        super().__init__()
        self.threshold, self.sign, self.sharpness = threshold, 1.0 if dark else -1.0, sharpness
        self.bias = nn.Parameter(torch.zeros(()))  # something for a trainer's optimizer to hold

    def forward(self, image):
        fg = self.sign * self.sharpness * (self.threshold - image.mean(1, keepdim=True)) + self.bias
        return torch.cat((torch.zeros_like(fg), fg), 1)


def toy_task(fails_under: str) -> SegmentationTask:
    net = Threshold(0.3, dark=True) if fails_under == "low_light" else Threshold(0.45, dark=False)
    return SegmentationTask(net, num_classes=2, target="foreground", miner_loss="ce")


@pytest.fixture(scope="module")
def ds():
    return SynthDataset("defects", batch_size=B, resolution=32)


@pytest.mark.parametrize("fails_under,direction", [("low_light", -1), ("bright_light", 1)])
def test_search_moves_light_intensity_toward_the_weakness(ds, fails_under, direction):
    result = gradient_search(ds, task_loss(toy_task(fails_under)), ["light.intensity"], INDEX, steps=6, lr=0.1)
    start, end = result.values["light.intensity"][0], result.values["light.intensity"][-1]
    assert (direction * (end - start) > 0).all(), (start, end)
    assert (result.best_loss > result.loss[0]).all()
    assert result.loss.shape == (6, B) and result.renders == 6 * B and result.method == "gradient"


def test_projection_keeps_every_step_in_the_declared_ranges(ds):
    names = ["light.intensity", "light.elevation_deg", "defects.contrast", "defects.size", "camera.distance"]
    result = gradient_search(ds, task_loss(toy_task("low_light")), names, INDEX, steps=5, lr=0.5)
    for name in names:
        lo, hi = ds.scenario.support(name)
        assert result.bounds[name] == (lo, hi)
        v = result.values[name]
        assert (v >= torch.tensor(lo)).all() and (v <= torch.tensor(hi)).all(), name
    # steps of half the range drive the light to its lower bound, where the projection holds it
    assert (result.values["light.intensity"][-1] == torch.tensor(ds.scenario.support("light.intensity")[0])).all()


def test_found_params_rerender_with_the_searched_image_and_exact_labels(ds):
    task = toy_task("low_light")
    seen = []

    def recording(batch):
        seen.append(batch)
        return task_loss(task)(batch)

    names = ["light.intensity", "defects.contrast", "camera.distance"]
    result = gradient_search(ds, recording, names, INDEX, steps=4, lr=0.2)
    best = result.best_step
    assert len(seen) == 4 and (best > 0).any()
    fresh = ds.render_params(result.params)  # no gradient: the compiled CPU paths
    searched = [seen[int(s)] for s in best]
    torch.testing.assert_close(fresh.image, torch.stack([b.image[i].detach() for i, b in enumerate(searched)]),
                               atol=1e-4, rtol=0)
    for key in ("semantic", "instance"):
        assert torch.equal(getattr(fresh, key), torch.stack([getattr(b, key)[i] for i, b in enumerate(searched)])), key
    assert torch.equal(fresh.semantic, ds.render_params(result.params).semantic)
    torch.testing.assert_close(task.per_sample_loss(fresh), result.best_loss, atol=1e-4, rtol=0)
    for name in names:
        assert torch.equal(result.params.values[name], result.values[name][best, torch.arange(B)])


def test_random_search_spends_the_same_budget(ds):
    task = toy_task("low_light")
    grad = gradient_search(ds, task_loss(task), ["light.intensity"], INDEX, steps=5, lr=0.1)
    rand = random_search(ds, task.per_sample_loss, ["light.intensity"], INDEX, steps=5, seed=3)
    assert rand.renders == grad.renders and rand.method == "random"
    v = rand.values["light.intensity"]
    lo, hi = ds.scenario.support("light.intensity")
    assert torch.equal(v[0], grad.values["light.intensity"][0])  # the same starting samples
    assert (v >= lo).all() and (v <= hi).all() and v[1:].unique().numel() == 4 * B
    torch.testing.assert_close(rand.loss[0], grad.loss[0].detach(), atol=1e-5, rtol=0)
    assert (rand.best_so_far().diff(dim=0) >= 0).all()
    again = random_search(ds, task.per_sample_loss, ["light.intensity"], INDEX, steps=5, seed=3)
    assert torch.equal(again.values["light.intensity"], v)


def test_hard_region_is_renderable_and_harder_on_fresh_samples(ds):
    """The one-sided region is ``light.intensity < b`` with b well inside the range, narrower than the span of the
    hard values and harder than it on the same fresh samples."""
    task = toy_task("low_light")
    result = gradient_search(ds, task_loss(task), ["light.intensity", "defects.contrast"], INDEX, steps=6, lr=0.1)
    pred, contrast = hard_region(result, ds.scenario)  # Adam moves the contrast too, but the loss barely feels it
    assert contrast.param == "defects.contrast" and hard_region(result, ds.scenario, max_predicates=1) == [pred]
    (span,) = hard_region(result, ds.scenario, shape="span")  # the contrast's span covers its whole range
    lo, hi = ds.scenario.support("light.intensity")
    hard = result.params.values["light.intensity"]
    assert pred.param == span.param == "light.intensity" and pred.lo == span.lo == -math.inf
    assert pred.hi == pytest.approx(float(hard.quantile(0.5)) + 0.05 * (hi - lo))
    assert lo < pred.hi < (lo + hi) / 2 and pred.hi < span.hi < hi, (pred, span, (lo, hi))
    SliceMixture(ds.scenario).add("hard", [pred], 0.2)
    (inside, spanned), base = region_losses(ds, task.per_sample_loss, [[pred], [span]], torch.arange(100, 116))
    assert inside.shape == base.shape == (16,) and inside.mean() > spanned.mean() > base.mean()
    with pytest.raises(ValueError, match="regions must be a non-empty list of regions"):
        region_losses(ds, task.per_sample_loss, [pred], torch.arange(2))
    with pytest.raises(ValueError, match="shape must be 'one_sided' or 'span'"):
        hard_region(result, ds.scenario, shape="box")
    # hard contrasts below the base distribution's (the search spans every slice's range): its edge's margin band
    c_lo, c_hi = ds.scenario.support("defects.contrast")
    b_lo = ds.scenario.parameters["defects.contrast"].support[0]
    moved = result.values["defects.contrast"].clone()
    moved[0], moved[1:] = c_hi, c_lo
    low = replace(result, values={**result.values, "defects.contrast": moved})
    edge = Predicate("defects.contrast", hi=b_lo + 0.05 * (c_hi - c_lo))
    assert c_lo < b_lo and edge in hard_region(low, ds.scenario)


def test_one_sided_region_opens_toward_the_weakness(ds):
    """For the toy that fails under bright light the region is ``light.intensity >= b``, again from the hard
    values' median."""
    result = gradient_search(ds, task_loss(toy_task("bright_light")), ["light.intensity"], INDEX, steps=6, lr=0.1)
    (pred,) = hard_region(result, ds.scenario)
    lo, hi = ds.scenario.support("light.intensity")
    assert pred.hi == math.inf and lo + 0.3 * (hi - lo) < pred.lo < hi, (pred, (lo, hi))
    assert pred.lo == pytest.approx(float(result.params.values["light.intensity"].quantile(0.5)) - 0.05 * (hi - lo))


def test_sensitivity_ranks_the_parameter_the_loss_depends_on(ds):
    """Adam moves every coordinate with a consistent gradient sign about as far, whatever its effect; the
    sensitivity (|d loss / d value| x range) tells the light (the toy's weakness) from the camera (a side effect)."""
    task = toy_task("low_light")
    names = ["light.intensity", "camera.distance"]
    result = gradient_search(ds, task_loss(task), names, INDEX, steps=6, lr=0.1)
    sens = {n: float(result.sensitivity[n].mean()) for n in names}
    assert sens["light.intensity"] > 3 * sens["camera.distance"], sens
    assert hard_region(result, ds.scenario, min_shift=0.0)[0].param == "light.intensity"
    rand = random_search(ds, task.per_sample_loss, names, INDEX, steps=3)
    assert rand.sensitivity is None
    with pytest.raises(ValueError, match="rank its region by 'shift'"):
        hard_region(rand, ds.scenario)
    assert all(p.param in names for p in hard_region(rand, ds.scenario, rank_by="shift", min_shift=0.0))


def test_check_region_keeps_the_predicate_that_is_harder(ds):
    """Of the box 'dark & low contrast' only the light matters to the toy: the check keeps a harder candidate,
    Bonferroni-corrected over the three, and rejects a box where the model does well."""
    task = toy_task("low_light")
    check = torch.arange(200, 216)
    dark, contrast = Predicate("light.intensity", hi=0.5), Predicate("defects.contrast", hi=0.6)
    item = check_region(ds, task.per_sample_loss, [dark, contrast], check)
    assert item is not None and ("light.intensity", -math.inf, 0.5) in item["predicates"]
    assert item["candidates"] == 3 and item["renders"] == 4 * 16 and item["support"] == 16
    assert item["mean_loss"] > item["rest_loss"] and item["p_value"] < 0.05
    assert check_region(ds, task.per_sample_loss, [Predicate("light.intensity", lo=0.8)], check) is None
    assert check_region(ds, task.per_sample_loss, [], check) is None


def test_mine_hard_region_gives_a_miner_item(ds):
    item = mine_hard_region(toy_task("low_light"), ds, ["light.intensity"], INDEX, torch.arange(100, 108), steps=4,
                            lr=0.2, slice_id=torch.zeros(B, dtype=torch.int64))
    assert item["name"].startswith("light.intensity<") and item["predicates"][0][0] == "light.intensity"
    assert item["support"] == 8 and item["mean_loss"] > item["rest_loss"] and item["p_value"] < 0.05
    assert item["renders"] == 4 * B + 16 and item["method"] == "gradient"


def test_bad_requests_fail_naming_the_parameter(ds):
    weight = torch.ones(1, requires_grad=True)  # a loss with a gradient, though not through the image
    with pytest.raises(ValueError, match="objects.count is an integer"):
        search_bounds(ds.scenario, ["objects.count"])
    with pytest.raises(ValueError, match="light.temperature_k is constant"):
        search_bounds(ds.scenario, ["light.temperature_k"])
    with pytest.raises(ValueError, match="unknown parameter 'light.power'"):
        search_bounds(ds.scenario, ["light.power"])
    with pytest.raises(ValueError, match="depends on none of"):
        gradient_search(ds, lambda batch: weight.expand(B), ["light.intensity"], INDEX, steps=2)
    assert "light.intensity" in searchable_params(ds.scenario) and "objects.count" not in searchable_params(
        ds.scenario) and "light.temperature_k" not in searchable_params(ds.scenario)
    with pytest.raises(ValueError, match="task_loss"):
        gradient_search(ds, toy_task("low_light").per_sample_loss, ["light.intensity"], INDEX, steps=2)
    with pytest.raises(ValueError, match="shape"):
        gradient_search(ds, lambda batch: batch.image.mean(), ["light.intensity"], INDEX, steps=2)


def test_task_loss_is_per_sample_loss_with_gradients(ds):
    task = toy_task("low_light")
    batch = ds.render_params(ds.sample_params(INDEX))
    image = batch.image.clone().requires_grad_(True)
    batch.image = image
    loss = task_loss(task)(batch)
    torch.testing.assert_close(loss.detach(), task.per_sample_loss(batch))
    assert loss.requires_grad and task.training


def test_slice_miner_gradient_mode_adds_the_weakness_as_a_slice(tmp_path):
    """A training round with ``mine_by="gradient"``: the search (on rank 0) moves the light toward the toy's
    weakness, and the checked region becomes a slice capped by max_change, rendered inside its region, with a
    suite the next round evaluates."""
    import lightning.pytorch as pl

    from synth_torch.loop.callback import SliceMiner
    from synth_torch.loop.datamodule import SynthDataModule

    dm = SynthDataModule("defects", batch_size=2, resolution=24, val_samples_per_slice=4, val_batch_size=16)
    miner = SliceMiner(every_n_train_steps=1, reweight=False, mine_by="gradient", max_mined=1, verbose=False,
                       log_images=False, params=["light.intensity", "defects.contrast", "objects.count"],
                       gradient={"samples": 4, "steps": 4, "lr": 0.2, "check_samples": 16})
    trainer = pl.Trainer(max_steps=1, callbacks=[miner], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), accelerator="cpu", devices=1)
    trainer.fit(toy_task("low_light"), datamodule=dm)
    (item,) = miner.mined
    assert item["method"] == "gradient" and item["p_value"] < 0.05 and item["mean_loss"] > item["rest_loss"]
    param, lo, hi = next(p for p in item["predicates"] if p[0] == "light.intensity")
    assert lo == -math.inf and hi < dm.scenario.support("light.intensity")[1]
    mixture = dm.train_dataset.mixture
    assert mixture.names[-1] == item["name"] and item["share"] == pytest.approx(0.1)
    assert mixture[item["name"]] == pytest.approx(0.1)
    (suite,) = dm.suite(item["name"])
    assert (suite.params["light.intensity"] < hi).all() and (suite.slice_id == len(mixture) - 1).all()
    miner.run_round(trainer, trainer.lightning_module)
    assert len(miner.mined) == 1 and miner.history[-1]["loss"][-1] is not None


@pytest.mark.parametrize("gradient,message", [
    ({"step": 4}, r"gradient: unknown key\(s\) \['step'\]"),
    ({"steps": 1}, "gradient.steps: must be >= 2"),
    ({"lr": 0.0}, r"gradient.lr must lie in \(0, inf\)"),
    ({"alpha": 1.0}, r"gradient.alpha must lie in \(0, 1\)"),
    ({"margin": -0.1}, r"gradient.margin must lie in \[0, 1\]"),
    ({"samples": 2.5}, "gradient.samples: expected an integer"),
])
def test_gradient_mode_options_are_checked_at_construction(gradient, message):
    from synth_torch.loop.callback import SliceMiner
    from synth_torch.scenario.config import ConfigError

    with pytest.raises(ConfigError, match=f"callbacks.slice_miner.{message}"):
        SliceMiner(mine_by="gradient", gradient=gradient)
    with pytest.raises(ConfigError, match="callbacks.slice_miner.mine_by must be one of"):
        SliceMiner(mine_by="grad")
