"""Scenario suites as regression tests: deterministic per-slice scores of a checkpoint, a baseline with per-slice
tolerances, and a degraded checkpoint detected as a regression (non-zero exit)."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
import yaml

from synth_torch.cli import main
from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.suites import SUITE_START, make_suite, run_suite
from synth_torch.loop.datamodule import SynthDataModule

MODEL = {"_target_": "synth_torch.loop.tasks.SegmentationTask", "num_classes": "???", "target": "foreground",
         "net": {"_target_": "synth_torch.loop.tasks.segmentation_model", "_partial_": True, "arch": "tiny_unet",
                 "width": 8, "depth": 2},
         "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}}
SUITE = ["--scenario", "tabletop", "--resolution", "32", "--samples-per-slice", "6",
         "--slices", "base,heavy_occlusion,small_objects"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A Hydra-style run folder with a briefly trained foreground segmenter, and a degraded copy (its convolution
    weights perturbed)."""
    import hydra
    from omegaconf import OmegaConf

    run = tmp_path_factory.mktemp("run")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": MODEL, "seed": 0}))
    pl.seed_everything(0)
    dm = SynthDataModule("tabletop", batch_size=8, resolution=32, val_samples_per_slice=1)
    task = hydra.utils.instantiate(OmegaConf.create(MODEL), num_classes=dm.num_classes)
    trainer = pl.Trainer(max_steps=25, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    good = run / "checkpoints" / "good.ckpt"
    trainer.save_checkpoint(good)
    ckpt = torch.load(good, weights_only=False)
    g = torch.Generator().manual_seed(0)
    for v in ckpt["state_dict"].values():
        if v.is_floating_point() and v.ndim == 4:
            v.add_(torch.randn(v.shape, generator=g) * v.std())
    degraded = run / "checkpoints" / "degraded.ckpt"
    torch.save(ckpt, degraded)
    return good, degraded


def test_suite_indices_are_fixed_and_disjoint_from_training():
    suite = make_suite("tabletop", samples_per_slice=4)
    spec = suite.to_dict()
    assert spec["slices"]["base"]["sample_indices"] == [SUITE_START, SUITE_START + 3]
    ids = {name: s["slice_id"] for name, s in spec["slices"].items()}
    assert spec["slices"]["heavy_occlusion"]["sample_indices"][0] == SUITE_START + ids["heavy_occlusion"] * 10**6
    with pytest.raises(GovernanceError, match="unknown slice"):
        make_suite("tabletop", slices=["night"])


def test_degraded_checkpoint_is_a_regression(checkpoints, tmp_path, capsys):
    good, degraded = checkpoints
    baseline = tmp_path / "baseline.json"
    assert main(["suite", "run", str(good), *SUITE, "--baseline", str(baseline), "--update-baseline",
                 "--slice-tolerance", "small_objects=0.05", "--out", str(tmp_path / "a")]) == 0
    recorded = json.loads(baseline.read_text())
    assert recorded["tolerances"] == {"default": 0.02, "slices": {"small_objects": 0.05}}
    assert recorded["gated_metrics"] == [m for m in recorded["metrics"]["base"] if m != "loss"]
    assert {"iou", "fg_iou", "dice"} <= set(recorded["gated_metrics"])  # the task's own validation metrics
    assert set(recorded["metrics"]) == {"base", "heavy_occlusion", "small_objects"}
    capsys.readouterr()
    # the same checkpoint scores exactly the same: no regression, exit 0
    assert main(["suite", "run", str(good), *SUITE, "--baseline", str(baseline), "--out", str(tmp_path / "b")]) == 0
    same = json.loads((tmp_path / "b" / "tabletop.json").read_text())
    assert same["metrics"] == recorded["metrics"] and same["regressions"] == 0
    assert "**no regression**" in (tmp_path / "b" / "tabletop.md").read_text()
    capsys.readouterr()
    # the degraded checkpoint regresses: exit 1, and the report names the slices and metrics
    assert main(["suite", "run", str(degraded), *SUITE, "--baseline", str(baseline), "--out", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "c" / "tabletop.json").read_text())
    bad = {(c["slice"], c["metric"]) for c in report["comparison"] if c["status"] == "REGRESSION"}
    assert ("base", "iou") in bad and report["regressions"] == len(bad)
    assert "**REGRESSION**" in out and "| `base` | iou |" in out
    assert all(c["tolerance"] == (0.05 if c["slice"] == "small_objects" else 0.02) for c in report["comparison"])


def test_python_api_as_a_pytest_regression_test(checkpoints, tmp_path):
    """The pattern docs/governance.md shows for running a suite inside pytest."""
    good, degraded = checkpoints
    baseline = tmp_path / "baseline.json"
    kwargs = dict(scenario="tabletop", resolution=32, samples_per_slice=6, slices=["base"], baseline=baseline)
    run_suite(good, update_baseline=True, **kwargs)
    result = run_suite(good, **kwargs)
    assert not result.regressions, result.markdown()
    worse = run_suite(degraded, **kwargs)
    assert worse.regressions and "REGRESSION" in worse.markdown()
    assert run_suite(degraded, tolerance=1.0, **kwargs).regressions == []  # a loose tolerance lets it pass


def test_suite_errors_name_the_problem(checkpoints, tmp_path, capsys):
    good, _ = checkpoints
    baseline = tmp_path / "baseline.json"
    run_suite(good, "tabletop", resolution=32, samples_per_slice=2, slices=["base"], baseline=baseline,
              update_baseline=True)
    with pytest.raises(GovernanceError, match="another suite .*samples_per_slice"):
        run_suite(good, "tabletop", resolution=32, samples_per_slice=3, slices=["base"], baseline=baseline)
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(good.read_bytes())
    with pytest.raises(SystemExit) as exc:
        main(["suite", "run", str(lonely), "--scenario", "tabletop"])
    assert exc.value.code == 2 and "--model-config" in capsys.readouterr().err
    other = tmp_path / "model.yaml"
    other.write_text(yaml.safe_dump({**MODEL, "net": {**MODEL["net"], "width": 16}}))
    with pytest.raises(GovernanceError, match="does not fit the model"):
        run_suite(good, "tabletop", model_config=other, resolution=32, samples_per_slice=2, slices=["base"])
    with pytest.raises(GovernanceError, match="baseline not found"):
        run_suite(good, "tabletop", resolution=32, samples_per_slice=2, slices=["base"], baseline=tmp_path / "no.json")
