"""The Hydra project: every group option composes and instantiates (scenario files, loggers, launchers and the
eval config included), every experiment runs a couple of steps with fast_dev_run on CPU at a tiny resolution, and
bad configurations fail with a clear message."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

import synth_torch.app.train as app_train
from synth_torch.app.configs import CONFIG_DIR
from synth_torch.scenario.config import load_scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = CONFIG_DIR
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def _train_module():
    return app_train


TINY = ["data.resolution=32", "data.batch_size=2", "data.val_samples_per_slice=2", "data.val_batch_size=2",
        "data.real_val_max_images=2", "callbacks.slice_miner.mine_samples=16",
        "callbacks.slice_miner.mining.min_support=8", "callbacks.slice_miner.mine_every=1",
        "callbacks.slice_miner.every_n_train_steps=1", "trainer.fast_dev_run=1", "logger=none",
        "print_config=false", "model.net.depth=2", "model.net.width=4"]


def _compose(overrides, tmp_path, config="train.yaml"):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_every_experiment_is_listed():
    assert {"rare_slice_miner", "rare_slice_fixed", "rare_slice_uniform", "tabletop_det", "defects_seg"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("group,options", [
    ("model", ["seg_unet", "seg_lraspp", "seg_deeplab", "det_fasterrcnn", "det_retinanet", "det_fcos",
               "det_centernet"]),
    ("logger", ["wandb", "tensorboard", "mlflow", "csv", "many", "none"]),
    ("callbacks", ["default", "slice_miner", "model_checkpoint", "stream_recorder", "ema", "none"]),
    ("scenario", ["defects", "tabletop"]),
    ("data", ["synth", "synth_real", "synth_fruits"]),
])
def test_every_group_option_composes_and_instantiates(group, options, tmp_path, monkeypatch):
    """Each option builds the object its ``_target_`` names, with the configured values."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as train.py does for the local store
    for option in options:
        cfg = _compose([f"{group}={option}"], tmp_path)
        dm = instantiate(cfg.data)
        assert type(dm).__name__ == cfg.data._target_.rsplit(".", 1)[1]
        assert dm.batch_size == cfg.data.batch_size and dm.scenario.name == cfg.scenario.name
        if group == "model":
            model = instantiate(cfg.model, num_classes=dm.num_classes)
            assert type(model).__name__ == cfg.model._target_.rsplit(".", 1)[1]
            foreground = cfg.model.get("target") == "foreground"
            assert model.num_classes == (2 if foreground else dm.num_classes) and dm.num_classes >= 2
        elif group in ("callbacks", "logger"):
            nodes = {k: v for k, v in (cfg.get(group) or {}).items() if v and "_target_" in v}
            assert bool(nodes) == (option != "none"), nodes
            for name, node in nodes.items():
                obj = instantiate(node)
                assert type(obj).__name__ == node._target_.rsplit(".", 1)[1], name
                if name == "model_checkpoint":
                    assert obj.dirpath == str(tmp_path / "checkpoints") and obj._every_n_train_steps == (node.every_n_train_steps or 0)
                elif name == "slice_miner":
                    assert obj.rule == node.rule and obj.every_n_train_steps == node.every_n_train_steps
                elif name in ("csv", "wandb"):
                    assert str(tmp_path) in str(obj.save_dir)


@pytest.mark.parametrize("option,strategy,devices", [("cpu", "SingleDeviceStrategy", 1), ("gpu", "SingleDeviceStrategy", 1),
                                                     ("ddp", "DDPStrategy", 2), ("ddp_sim", "DDPStrategy", 2)])
def test_every_trainer_option_instantiates(option, strategy, devices, tmp_path):
    """Every trainer config builds a Trainer with its strategy and device count. The GPU options run on their GPUs
    where there are enough, and otherwise on as many CPU processes (same strategy, same count): a typo in
    gpu.yaml or ddp.yaml fails here, not on the cluster."""
    import torch

    cfg = _compose([f"trainer={option}", "logger=none"], tmp_path)
    on_gpu = cfg.trainer.accelerator == "gpu" and torch.cuda.device_count() >= cfg.trainer.devices
    trainer = instantiate(cfg.trainer, **({} if on_gpu or cfg.trainer.accelerator != "gpu" else {"accelerator": "cpu"}))
    assert type(trainer.strategy).__name__ == strategy and trainer.num_devices == devices == cfg.trainer.devices
    assert trainer.max_steps == cfg.trainer.max_steps > 0 and trainer.default_root_dir == str(tmp_path)
    assert trainer.strategy.root_device.type == ("cuda" if on_gpu else "cpu")
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"  # checkpoints written atomically
    if option == "ddp":
        assert trainer.strategy._process_group_backend in (None, "nccl", "gloo") and cfg.trainer.sync_batchnorm
    if option == "ddp_sim":
        assert trainer.strategy._process_group_backend == "gloo"


def test_configs_ship_inside_the_package():
    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()
    assert (CONFIG_DIR / "train.yaml").is_file() and (CONFIG_DIR / "eval.yaml").is_file()


def test_scenario_group_takes_builtins_and_yaml_paths_and_section_overrides(tmp_path):
    """scenario=<builtin>, scenario=<path.yaml> (relative to the working directory) and scenario.<section>.<param>
    overrides without '+': the node is the full normalised scenario, so every key exists."""
    cfg = _compose(["scenario=tabletop", "scenario.camera.distance=[0.8,1.2]", "scenario.light.ambient=0.25"],
                   tmp_path)
    expected = load_scenario("tabletop", {"camera": {"distance": [0.8, 1.2]}, "light": {"ambient": 0.25}})
    assert instantiate(cfg.data).scenario.fingerprint() == expected.fingerprint()
    assert cfg.scenario.camera.distance == [0.8, 1.2]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "categories": [{"name": "cube", "shape": "box"}],
                                    "camera": {"distance": [2.0, 3.0]}}))
    for option in (str(path), os.path.relpath(path)):
        cfg = _compose([f"scenario={option}", "scenario.objects.count=[1,2]"], tmp_path)
        sc = instantiate(cfg.data).scenario
        assert sc.name == "mine" and sc.parameters["objects.count"].support == (1.0, 2.0)
        assert sc.fingerprint() == load_scenario(path, {"objects": {"count": [1, 2]}}).fingerprint()
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="tabletop"):
        _compose(["scenario=nope"], tmp_path)


def test_new_groups_compose(tmp_path):
    """The eval config, the TensorBoard and MLflow loggers (local by default) and the SLURM launcher."""
    cfg = _compose(["ckpt_path=x.ckpt", "experiment=tabletop_det"], tmp_path, config="eval.yaml")
    assert cfg.splits == ["val"] and cfg.model._target_.endswith("DetectionTask") and cfg.model.monitor == "val/map"
    cfg = _compose(["logger=mlflow"], tmp_path)
    assert cfg.logger.mlflow.tracking_uri.startswith("file:")
    cfg = _compose(["callbacks=model_checkpoint"], tmp_path)
    ckpt = instantiate(cfg.callbacks.model_checkpoint)
    assert ckpt.monitor == "val/fg_iou" and ckpt.mode == "max" and ckpt.save_top_k >= 1 and ckpt.save_last
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_with_fast_dev_run(experiment, tmp_path):
    train = _train_module()
    base = _compose([f"experiment={experiment}"], tmp_path)
    detection = "DetectionTask" in base.model._target_
    miner = "slice_miner" in (base.get("callbacks") or {})
    if base.data.schedule != "synthetic_only" and not Path(base.data.real_root).is_dir():
        pytest.skip(f"{experiment} trains on {base.data.real_root}, which is not present")
    overrides = [f"experiment={experiment}", *TINY]
    if base.model.net.get("arch") == "centernet":  # a TinyUNet, sized through its options
        overrides = [o.replace("model.net.", "model.net.options.") for o in overrides]
    elif detection:  # the torchvision detectors have no width/depth
        overrides = [o for o in overrides if not o.startswith(("model.net.depth", "model.net.width"))]
        overrides.append("model.net.image_size=32")
    if not miner:
        overrides = [o for o in overrides if not o.startswith("callbacks.slice_miner")]
    out = train.train(_compose(overrides, tmp_path))
    assert "val/" + ("map" if detection else "fg_iou") in out["metrics"], out["metrics"]
    assert not list(tmp_path.rglob("*.ckpt")), "fast_dev_run writes no checkpoint"
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
    assert cfg.scenario.name == "defects" and cfg.trainer.max_steps == 400  # the README's first run


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=0", "max_steps"),
    ("callbacks.slice_miner.rule=nope", "rule"),
    ("scenario.objects.count=[3,1]", "count"),
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


def test_monitored_checkpoints_keep_top_k_and_last_and_eval_scores_them(tmp_path):
    """callbacks=model_checkpoint keeps the best save_top_k by the model's monitor (val/fg_iou) plus last.ckpt;
    train/eval.py scores a checkpoint per slice, per class and overall, and writes metrics.json."""
    import json

    import torch

    from synth_torch.app.evaluate import evaluate

    tiny = [o for o in TINY if not o.startswith(("trainer.fast_dev_run", "callbacks.slice_miner"))]
    cfg = _compose([*tiny, "callbacks=model_checkpoint", "callbacks.model_checkpoint.save_top_k=1",
                    "trainer.max_steps=3", "trainer.val_check_interval=1", "trainer.enable_progress_bar=false",
                    "model.scheduler=null"], tmp_path)
    out = app_train.train(cfg)
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in files and len(files) == 2, files
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (ckpt_state,) = [v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert ckpt_state["monitor"] == "val/fg_iou" and len(ckpt_state["best_k_models"]) == 1
    assert "best_ckpt" in out["paths"] and "val/fg_iou" in out["paths"]["best_ckpt"]
    eval_dir = tmp_path / "eval"
    ecfg = _compose([o for o in tiny if not o.startswith("callbacks")] +
                    [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"], eval_dir, config="eval.yaml")
    result = evaluate(ecfg)
    saved = json.loads((eval_dir / "metrics.json").read_text())
    assert saved["metrics"] == result["metrics"]
    metrics = result["metrics"]
    assert "val/fg_iou" in metrics and "val/fg_iou/base" in metrics and "val/class_iou/foreground" in metrics
    assert metrics["val/fg_iou"] == pytest.approx(out["metrics"]["val/fg_iou"], abs=1e-6)


def test_summary_line_names_the_headline_worst_slice_and_real_metrics():
    line = app_train.summary_line({"val/map": 0.5, "val/map_worst": 0.2, "val/map/real": 0.3, "test/map/real": 0.25,
                                   "val/fg_iou": 0.9}, 10, 12.0, "p.png", monitor="val/map")
    assert line.startswith("Summary: val/map = 0.500 (worst slice 0.200, real val 0.300, real test 0.250) after 10")
    assert line.endswith("; predictions vs labels: p.png")


def test_debug_fdr_prints_each_line_once_and_writes_no_checkpoint(tmp_path):
    """python train/train.py debug=fdr: Lightning's fast_dev_run suppresses checkpoints (Lightning itself still
    wrote last.ckpt at the end), and under Hydra every log line appears once (not once from Lightning's own
    handler and once from Hydra's)."""
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "train" / "train.py"), "debug=fdr", "data.resolution=32",
           "data.val_samples_per_slice=2", "data.val_batch_size=2", "callbacks.slice_miner.mine_samples=24",
           "model.net.depth=2", "model.net.width=4", "logger=csv", "print_config=false",
           f"hydra.run.dir={tmp_path}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt")), sorted(map(str, tmp_path.rglob("*.ckpt")))
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "SliceMiner step" in line or
             "fast_dev_run" in line]
    messages = [line.split("] - ")[-1].removeprefix("INFO: ") for line in lines]
    assert messages and len(messages) == len(set(messages)), lines
    assert "Summary: val/fg_iou" in run.stdout


def _selection_run(tmp_path, fake_tiles, *extra):
    return _compose(["experiment=sim2real_tile", "data.resolution=32", "data.batch_size=2",
                     "data.val_samples_per_slice=2", "data.val_batch_size=2", "model.net.depth=2",
                     "model.net.width=4", f"data.real_root={fake_tiles}", "data.schedule=real_only",
                     "data.real_train_images=10", "trainer.max_steps=6", "trainer.val_check_interval=2",
                     "logger=csv", *extra], tmp_path)


def test_test_best_scores_the_checkpoint_chosen_on_real_validation(tmp_path, fake_tiles):
    cfg = _selection_run(tmp_path, fake_tiles, "callbacks=model_checkpoint", "trainer.enable_checkpointing=true",
                         "callbacks.model_checkpoint.monitor=val/fg_iou/real",
                         "callbacks.model_checkpoint.save_top_k=1", "test=true", "test_best=true")
    out = app_train.train(cfg)
    rows = [r for r in csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()) if r.get("val/fg_iou/real")]
    logged = {int(r["step"]) + 1: float(r["val/fg_iou/real"]) for r in rows}
    assert sorted(logged) == [2, 4, 6]
    chosen = out["selected"]
    assert chosen["monitor"] == "val/fg_iou/real" and chosen["step"] in logged
    assert chosen["score"] == pytest.approx(max(logged.values()))
    assert chosen["score"] == pytest.approx(logged[chosen["step"]])
    assert set(chosen["test"]) == {k for k in out["metrics"] if k.startswith("test/")}


@pytest.mark.parametrize("extra", [["test=true"], ["test=false", "callbacks=model_checkpoint",
                                                   "trainer.enable_checkpointing=true"]])
def test_test_best_without_test_or_a_monitored_checkpoint_fails_before_training(extra, tmp_path, fake_tiles):
    with pytest.raises(app_train.TrainConfigError, match="test_best=true needs test=true and a monitored"):
        app_train.train(_selection_run(tmp_path, fake_tiles, "test_best=true", *extra))


def test_test_best_refuses_weight_averaging(tmp_path, fake_tiles):
    cfg = _selection_run(tmp_path, fake_tiles, "callbacks=[model_checkpoint,ema]", "test=true", "test_best=true")
    with pytest.raises(app_train.TrainConfigError, match="cannot be combined with callbacks.ema"):
        app_train.train(cfg)


def test_ema_callback_tests_the_averaged_weights(tmp_path, fake_tiles):
    """``callbacks=ema``: with decay 0 the average is the last weights (the same test figures as without it);
    with decay 0.5 the final test scores other weights."""
    scores = {}
    for name, extra in {"plain": [], "decay0": ["callbacks=ema", "callbacks.ema.decay=0.0"],
                        "decay05": ["callbacks=ema", "callbacks.ema.decay=0.5"]}.items():
        (tmp_path / name).mkdir()
        cfg = _selection_run(tmp_path / name, fake_tiles, "trainer.max_steps=8", "trainer.val_check_interval=8",
                             "test=true", "logger=none", *extra)
        scores[name] = app_train.train(cfg)["metrics"]["test/fg_ap/real"]
    assert scores["decay0"] == scores["plain"]
    assert scores["decay05"] != scores["plain"]
