"""Train on the live synthetic stream with the closed data loop (Hydra + Lightning).

    python train/train.py                                   # small U-Net on `defects`, CPU, SliceMiner, wandb offline
    synth-torch train experiment=tabletop_det               # the same entry point from a pip install
    python train/train.py scenario=my_scenario.yaml scenario.camera.distance=[0.8,1.2]
    python train/train.py -m experiment=rare_slice_miner seed=0,1,2                  # a Hydra multirun
    python train/train.py ckpt_path=<run>/checkpoints/last.ckpt                     # resume (same config)

See ``docs/training.md``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from synth_torch.app.configs import CONFIG_DIR
from synth_torch.scenario.config import ConfigError

__all__ = ["TrainConfigError", "build", "logger_paths", "main", "run_job", "summary_line", "train"]


class TrainConfigError(ValueError):
    """A configuration that cannot run, with the offending key named."""


def _check(cfg: DictConfig) -> None:
    for group in ("data", "model", "trainer"):
        node = cfg.get(group)
        if node is None or "_target_" not in node:
            raise TrainConfigError(f"config group '{group}' is missing or has no _target_ (pick one, e.g. {group}=...)")
    if not cfg.get("scenario"):
        raise TrainConfigError("scenario is not set (pick scenario=defects, scenario=tabletop or scenario=<file.yaml>)")
    steps = cfg.trainer.get("max_steps", -1)
    if not cfg.trainer.get("fast_dev_run") and (steps is None or steps <= 0):
        raise TrainConfigError(f"trainer.max_steps must be > 0 for the infinite synthetic stream, got {steps}")
    vci = cfg.trainer.get("val_check_interval")
    if vci is not None and not isinstance(vci, int):
        raise TrainConfigError(f"trainer.val_check_interval must be an int number of steps (the stream has no "
                               f"epochs), got {vci!r}")
    if cfg.trainer.get("check_val_every_n_epoch", None) is not None:
        raise TrainConfigError("trainer.check_val_every_n_epoch must be null (the stream has no epochs)")
    if cfg.get("test_best"):
        kept = (cfg.get("callbacks") or {}).get("model_checkpoint")
        if not cfg.get("test") or kept is None or kept.get("monitor") is None:
            raise TrainConfigError("test_best=true needs test=true and a monitored checkpoint "
                                   "(callbacks=model_checkpoint trainer.enable_checkpointing=true)")
        averaging = [name for name, node in (cfg.get("callbacks") or {}).items()
                     if node and str(node.get("_target_", "")).endswith("WeightAveraging")]
        if averaging:
            raise TrainConfigError(f"test_best=true cannot be combined with callbacks.{averaging[0]}: loading a "
                                   "weight-averaged checkpoint restores the raw weights, not the average")


def _instantiate_group(node) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    if not node:
        return []
    if not isinstance(node, DictConfig):
        raise TrainConfigError(f"expected a mapping of name -> config, got {type(node).__name__}")
    return [hydra.utils.instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def _single_log_lines() -> None:
    """Under Hydra (which gives the root logger a console handler), Lightning's own console handlers print
    every INFO line a second time: drop them and let Lightning's records reach Hydra's handlers."""
    import lightning.pytorch  # noqa: F401  (adds Lightning's handlers, which are removed here)

    if not logging.getLogger().handlers:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def build(cfg: DictConfig, callbacks: bool = True):
    """(datamodule, model, trainer, lineage) from a composed config; ``callbacks=False`` leaves out the
    callbacks group (evaluation). Configuration errors raise :class:`TrainConfigError` naming the key."""
    import lightning.pytorch as pl
    from hydra.errors import InstantiationException
    from lightning.pytorch.callbacks import ModelCheckpoint

    from synth_torch.export.lineage import Lineage, lineage_of

    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)
    if any("WandbLogger" in str(v.get("_target_", "")) for v in (cfg.get("logger") or {}).values()):
        wandb_cfg = next(v for v in cfg.logger.values() if "WandbLogger" in str(v.get("_target_", "")))
        if wandb_cfg.get("offline", False):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", str(output_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
    for node in (cfg.get("logger") or {}).values():
        if "MLFlowLogger" in str(node.get("_target_", "")) and str(node.get("tracking_uri", "")).startswith("file:"):
            # MLflow 3 keeps its local file store only on request (a database store needs the full mlflow package)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes)
        lineage = lineage_of(datamodule)  # scenario (and export) digests: into every checkpoint and the logger config
        extra = _instantiate_group(cfg.get("callbacks")) if callbacks else []
        if cfg.trainer.get("fast_dev_run"):  # "no checkpoints": Lightning itself still writes last.ckpt at the end
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        loggers = _instantiate_group(cfg.get("logger"))
        trainer_kw = {"enable_checkpointing": False} if not any(isinstance(c, ModelCheckpoint) for c in extra) else {}
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=extra + [Lineage(lineage)], logger=loggers or False,
                                          **trainer_kw)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise TrainConfigError(f"{exc}".split("\n")[0] + (f" ({type(cause).__name__}: {cause})" if cause is not exc
                                                           else "")) from exc
    return datamodule, model, trainer, lineage


def _log_hyperparams(cfg: DictConfig, trainer, lineage: dict) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from synth_torch.export.lineage import use_export_artifact

    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)
    hparams["lineage"] = lineage
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            use_export_artifact(logger.experiment, lineage)


def logger_paths(trainer) -> dict[str, str]:
    """Where each logger of ``trainer`` writes (and how to look at it)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    paths = {}
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            paths["wandb_run"] = str(Path(logger.experiment.dir).parent)
        elif isinstance(logger, TensorBoardLogger):
            paths["tensorboard"] = str(logger.log_dir)
        elif isinstance(logger, MLFlowLogger):
            paths["mlflow"] = f"{logger._tracking_uri} (experiment {logger.name}, run {logger.run_id})"
        elif logger.log_dir:
            paths[f"{type(logger).__name__}"] = str(logger.log_dir)
    return paths


def train(cfg: DictConfig) -> dict:
    """Build everything from ``cfg`` and fit; returns the final metrics and output paths."""
    _check(cfg)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, model, trainer, lineage = build(cfg)
    _log_hyperparams(cfg, trainer, lineage)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}

    data = {"images_seen": dict(getattr(datamodule, "images_seen", {})),
            "real_train_images": len(getattr(datamodule, "real_train_keys", ()))}
    paths = {"output_dir": str(output_dir)}
    if trainer.is_global_zero and datamodule.slice_names:
        from synth_torch.fileio import save_png_atomic
        from synth_torch.loop.visuals import prediction_grid

        suite = datamodule.suite(datamodule.slice_names[0])
        paths["predictions"] = str(save_png_atomic(prediction_grid(model, suite[0]), output_dir / "predictions.png"))
    selected = _test_best(trainer, model, datamodule) if cfg.get("test_best") else None
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.dirpath and Path(ckpt.dirpath).is_dir():
        paths["checkpoints"] = str(ckpt.dirpath)
        if ckpt.best_model_path and ckpt.best_model_score is not None:
            paths["best_ckpt"] = f"{ckpt.best_model_path} ({ckpt.monitor} = {float(ckpt.best_model_score):.4f})"
    paths |= logger_paths(trainer)
    miner_json = Path(trainer.default_root_dir) / "slice_miner.json"
    if miner_json.is_file():
        paths["slice_miner"] = str(miner_json)
    if trainer.is_global_zero:
        print("\nOutputs:")
        for k, v in paths.items():
            print(f"  {k:12s} {v}")
        if "wandb_run" in paths:
            print(f"  (offline wandb run; upload with: wandb sync {paths['wandb_run']})")
        shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/") and k.count("/") == 1}
        if shown:
            print(f"  final {shown}")
        real = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/") and k.endswith("/real")
                and k.count("/") == 2}
        if real:
            print(f"  real  {real}")
        tested = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}
        if tested:
            print(f"  test  {tested}")
        if selected:
            print(f"  test of the best by {selected['monitor']} (step {selected['step']}): "
                  f"{ {k: round(v, 4) for k, v in selected['test'].items()} }")
        if data["images_seen"].get("real"):
            print(f"  trained on {data['images_seen']} images; {data['real_train_images']} distinct real")
        print(summary_line(metrics, trainer.global_step, seconds, paths.get("predictions"), model.monitor))
    return {"metrics": metrics, "paths": paths, "data": data} | ({"selected": selected} if selected else {})


def _test_best(trainer, model, datamodule) -> dict:
    """Test the best checkpoint the monitored ``ModelCheckpoint`` kept (model selection on validation): its
    path, ``monitor``, score, global step and ``test/`` metrics. Loads those weights into ``model``."""
    import torch

    ckpt = trainer.checkpoint_callback
    if ckpt is None or not ckpt.best_model_path:
        raise TrainConfigError(f"test_best: no checkpoint was kept by {ckpt.monitor if ckpt else 'any monitor'} "
                               "(no validation ran before the end? set trainer.val_check_interval)")
    path = ckpt.best_model_path
    step = int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    trainer.test(model, datamodule=datamodule, ckpt_path=path, verbose=False)
    return {"ckpt": path, "monitor": ckpt.monitor, "score": float(ckpt.best_model_score), "step": step,
            "test": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}}


def summary_line(metrics: dict[str, float], steps: int, seconds: float, predictions: str | None,
                 monitor: str | None = None) -> str:
    """One line a person reads first: the headline validation metric, its worst slice and its value on the real
    validation and test splits, the budget, the picture."""
    candidates = ([monitor] if monitor else []) + ["val/fg_iou", "val/map", "val/iou"]
    key = next((k for k in candidates if k in metrics), None)
    if key is None:
        head = "no validation metric yet"
    else:
        extras = []
        name = key.split("/", 1)[1]
        for label, k in (("worst slice", f"{key}_worst"), ("real val", f"{key}/real"), ("real test", f"test/{name}/real")):
            if k in metrics:
                extras.append(f"{label} {metrics[k]:.3f}")
        head = f"{key} = {metrics[key]:.3f}" + (f" ({', '.join(extras)})" if extras else "")
    tail = f"; predictions vs labels: {predictions}" if predictions else ""
    return f"Summary: {head} after {steps} steps in {seconds:.0f} s{tail}"


def run_job(job, cfg: DictConfig):
    """Run ``job(cfg)`` as a Hydra job: one console line per log record, the config printed on request, and a
    configuration error as one line naming the key (exit status 2)."""
    _single_log_lines()
    if cfg.get("print_config"):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        return job(cfg)
    except (TrainConfigError, ConfigError) as exc:
        print(f"\nconfiguration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train.yaml")
def _main(cfg: DictConfig) -> None:
    run_job(train, cfg)


def main() -> None:
    """``python train/train.py`` / ``synth-torch train`` / ``python -m synth_torch.app.train``."""
    _main()


if __name__ == "__main__":
    main()
