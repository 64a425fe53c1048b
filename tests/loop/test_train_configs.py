"""The Hydra project: every group option composes and instantiates, every experiment runs a couple of steps
with fast_dev_run on CPU at a tiny resolution, and bad configurations fail with a clear message."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def _train_module():
    spec = importlib.util.spec_from_file_location("synth_train", ROOT / "train" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["data.resolution=32", "data.batch_size=2", "data.val_samples_per_slice=2", "data.val_batch_size=2",
        "data.real_val_max_images=2", "callbacks.slice_miner.mine_samples=16", "callbacks.slice_miner.mine_every=1",
        "callbacks.slice_miner.every_n_train_steps=1", "trainer.fast_dev_run=1", "logger=none",
        "print_config=false", "model.net.depth=2", "model.net.width=4"]


def _compose(overrides, tmp_path):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_every_experiment_is_listed():
    assert {"rare_slice_miner", "rare_slice_fixed", "rare_slice_uniform", "tabletop_det", "defects_seg"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("group,options", [
    ("model", ["seg_unet", "seg_lraspp", "seg_deeplab", "det_fasterrcnn", "det_retinanet", "det_fcos"]),
    ("trainer", ["cpu", "gpu", "ddp", "ddp_sim"]),
    ("logger", ["wandb", "csv", "many", "none"]),
    ("callbacks", ["default", "slice_miner", "model_checkpoint", "stream_recorder", "none"]),
    ("scenario", ["defects", "tabletop"]),
    ("data", ["synth", "synth_real", "synth_fruits"]),
])
def test_every_group_option_composes_and_instantiates(group, options, tmp_path):
    for option in options:
        cfg = _compose([f"{group}={option}"], tmp_path)
        dm = instantiate(cfg.data)
        if group == "model":
            model = instantiate(cfg.model, num_classes=dm.num_classes)
            assert model.num_classes >= 2
        elif group in ("callbacks", "logger") and cfg.get(group):
            for node in cfg[group].values():
                if node and "_target_" in node:
                    assert instantiate(node) is not None
        elif group == "trainer":
            assert cfg.trainer._target_.endswith("Trainer") and cfg.trainer.max_steps > 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_with_fast_dev_run(experiment, tmp_path):
    train = _train_module()
    base = _compose([f"experiment={experiment}"], tmp_path)
    detection = "DetectionTask" in base.model._target_
    miner = "slice_miner" in (base.get("callbacks") or {})
    if base.data.schedule != "synthetic_only" and not Path(base.data.real_root).is_dir():
        pytest.skip(f"{experiment} trains on {base.data.real_root}, which is not present")
    overrides = [f"experiment={experiment}", *TINY]
    if detection:  # the detector nets have no width/depth
        overrides = [o for o in overrides if not o.startswith(("model.net.depth", "model.net.width"))]
        overrides.append("model.net.image_size=32")
    if not miner:
        overrides = [o for o in overrides if not o.startswith("callbacks.slice_miner")]
    out = train.train(_compose(overrides, tmp_path))
    assert "val/" + ("map" if detection else "fg_iou") in out["metrics"], out["metrics"]
    assert (tmp_path / "slice_miner.json").is_file() == miner
    if base.get("test"):  # the study's experiments score the real test split after fit
        assert "test/" + ("map" if detection else "fg_iou") + "/real" in out["metrics"], out["metrics"]
        assert out["data"]["real_train_images"] == base.data.real_train_images


def test_real_train_images_is_recorded_in_the_run_config(tmp_path, shared_real):
    train = _train_module()
    cfg = _compose(["experiment=sim2real_tile", *TINY[:5], "trainer.max_steps=1", "trainer.limit_val_batches=1",
                    "trainer.val_check_interval=1", "logger=csv", "model.net.depth=2", "model.net.width=4",
                    "data.real_train_images=10", "test=false"], tmp_path)
    out = train.train(cfg)
    hparams = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert hparams["data"]["real_train_images"] == 10 and hparams["data"]["schedule"] == "pretrain_finetune"
    assert out["data"]["real_train_images"] == 10


def test_default_config_is_cpu_wandb_offline_with_miner(tmp_path):
    cfg = _compose([], tmp_path)
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.wandb.offline is True
    assert cfg.callbacks.slice_miner._target_.endswith("SliceMiner")
    assert cfg.data.scenario == "defects" and cfg.trainer.max_steps <= 200


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=0", "max_steps"),
    ("callbacks.slice_miner.rule=nope", "rule"),
    ("scenario.name=nope", "nope"),
    ("trainer.val_check_interval=0.5", "val_check_interval"),
    ("model.target=boxes", "target"),
])
def test_bad_configs_raise_clear_errors(override, message, tmp_path):
    train = _train_module()
    cfg = _compose([override, "logger=none", "print_config=false"], tmp_path)
    with pytest.raises((train.TrainConfigError, ValueError), match=message):
        train.train(cfg)


def test_unknown_experiment_lists_the_choices():
    from hydra.errors import MissingConfigException

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="rare_slice_miner"):
            compose("train.yaml", overrides=["experiment=nope"])
