"""Train on the live synthetic stream with the closed data loop (Hydra + Lightning).

    python train/train.py                                   # small U-Net on `defects`, CPU, SliceMiner, wandb offline
    python train/train.py experiment=tabletop_det           # a preset from configs/experiment/
    python train/train.py trainer=ddp_sim logger=csv        # 2 CPU processes (gloo)
    python train/train.py ckpt_path=<run>/checkpoints/last.ckpt   # resume (same config)
    python train/train.py debug=fdr                         # fast_dev_run

See docs/training.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

CONFIG_DIR = str(ROOT / "configs")


class TrainConfigError(ValueError):
    """A configuration that cannot run, with the offending key named."""


def _check(cfg: DictConfig) -> None:
    for group in ("data", "model", "trainer"):
        node = cfg.get(group)
        if node is None or "_target_" not in node:
            raise TrainConfigError(f"config group '{group}' is missing or has no _target_ (pick one, e.g. {group}=...)")
    if "scenario" not in cfg or cfg.scenario.get("name") is None:
        raise TrainConfigError("scenario.name is not set (pick scenario=defects or scenario=tabletop)")
    steps = cfg.trainer.get("max_steps", -1)
    if not cfg.trainer.get("fast_dev_run") and (steps is None or steps <= 0):
        raise TrainConfigError(f"trainer.max_steps must be > 0 for the infinite synthetic stream, got {steps}")
    vci = cfg.trainer.get("val_check_interval")
    if vci is not None and not isinstance(vci, int):
        raise TrainConfigError(f"trainer.val_check_interval must be an int number of steps (the stream has no "
                               f"epochs), got {vci!r}")
    if cfg.trainer.get("check_val_every_n_epoch", None) is not None:
        raise TrainConfigError("trainer.check_val_every_n_epoch must be null (the stream has no epochs)")


def _instantiate_group(node) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    if not node:
        return []
    if not isinstance(node, DictConfig):
        raise TrainConfigError(f"expected a mapping of name -> config, got {type(node).__name__}")
    return [hydra.utils.instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def train(cfg: DictConfig) -> dict:
    """Build everything from ``cfg`` and fit; returns the final metrics and output paths."""
    import lightning.pytorch as pl
    from hydra.errors import InstantiationException
    from lightning.pytorch.loggers import WandbLogger

    from synth_torch.export.lineage import Lineage, lineage_of, use_export_artifact

    _check(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)
    if any("WandbLogger" in str(v.get("_target_", "")) for v in (cfg.get("logger") or {}).values()):
        wandb_cfg = next(v for v in cfg.logger.values() if "WandbLogger" in str(v.get("_target_", "")))
        if wandb_cfg.get("offline", False):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", str(output_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes)
        lineage = lineage_of(datamodule)  # scenario (and export) digests: into every checkpoint and the logger config
        callbacks = _instantiate_group(cfg.get("callbacks")) + [Lineage(lineage)]
        loggers = _instantiate_group(cfg.get("logger"))
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise TrainConfigError(f"{exc}".split("\n")[0] + (f" ({type(cause).__name__}: {cause})" if cause is not exc
                                                           else "")) from exc
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)
    hparams["lineage"] = lineage
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            use_export_artifact(logger.experiment, lineage)
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
    ckpt = next((c for c in trainer.checkpoint_callbacks), None)
    if ckpt is not None and ckpt.dirpath:
        paths["checkpoints"] = str(ckpt.dirpath)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            paths["wandb_run"] = str(Path(logger.experiment.dir).parent)
        elif logger.log_dir:
            paths[f"{type(logger).__name__}"] = str(logger.log_dir)
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
        tested = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}
        if tested:
            print(f"  test  {tested}")
        if data["images_seen"].get("real"):
            print(f"  trained on {data['images_seen']} images; {data['real_train_images']} distinct real")
        print(summary_line(metrics, trainer.global_step, seconds, paths.get("predictions")))
    return {"metrics": metrics, "paths": paths, "data": data}


def summary_line(metrics: dict[str, float], steps: int, seconds: float, predictions: str | None) -> str:
    """One line a person reads first: the headline validation metric, its worst slice, the budget, the picture."""
    key = next((k for k in ("val/fg_iou", "val/map", "val/iou") if k in metrics), None)
    if key is None:
        head = "no validation metric yet"
    else:
        worst = metrics.get(f"{key}_worst")
        head = f"{key} = {metrics[key]:.3f}" + (f" (worst slice {worst:.3f})" if worst is not None else "")
    tail = f"; predictions vs labels: {predictions}" if predictions else ""
    return f"Summary: {head} after {steps} steps in {seconds:.0f} s{tail}"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train.yaml")
def main(cfg: DictConfig) -> None:
    from synth_torch.scenario.config import ConfigError

    if cfg.get("print_config"):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        train(cfg)
    except (TrainConfigError, ConfigError) as exc:
        print(f"\nconfiguration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
