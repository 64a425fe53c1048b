"""Score a checkpoint: the per-slice validation suites, the real validation split and, on request, the real test
split (Hydra + Lightning).

    python train/eval.py ckpt_path=<run>/checkpoints/last.ckpt
    synth-torch eval experiment=tabletop_det ckpt_path=<run>/checkpoints/best.ckpt splits=[val,test]

Give the overrides the run was trained with (``experiment=...``, ``model=...``): the network and the data must be
the same. The checkpoint restores the weights and the data module state (mined slices get their suites). Prints
the metrics and writes ``<output_dir>/metrics.json``. See ``docs/training.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from synth_torch.app.configs import CONFIG_DIR
from synth_torch.app.train import TrainConfigError, build, logger_paths, run_job
from synth_torch.fileio import write_text_atomic

__all__ = ["evaluate", "main"]

SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation ``cfg`` describes; returns ``{"metrics": ..., "paths": ...}``."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not Path(str(ckpt)).is_file():
        raise TrainConfigError(f"ckpt_path must name a checkpoint file, got {ckpt!r}")
    splits = list(cfg.get("splits") or ())
    bad = sorted(set(splits) - set(SPLITS))
    if bad or not splits:
        raise TrainConfigError(f"splits must be a non-empty subset of {list(SPLITS)}, got {splits}")
    datamodule, model, trainer, _ = build(cfg, callbacks=False)
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    if "val" in splits:
        trainer.validate(model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if "test" in splits:
        if datamodule.real_root is None:
            raise TrainConfigError("splits contains 'test' but the data has no real test split (set data.real_root "
                                   "or data=synth_real / synth_fruits)")
        trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    seconds = time.perf_counter() - started
    output_dir = Path(cfg.paths.output_dir)
    paths = {"output_dir": str(output_dir), "checkpoint": str(ckpt)} | logger_paths(trainer)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        paths["metrics"] = str(write_text_atomic(output_dir / "metrics.json", json.dumps(
            {"checkpoint": str(ckpt), "splits": splits, "metrics": metrics}, indent=1, sort_keys=True)))
        print(f"\n{format_metrics(metrics)}\n\nOutputs:")
        for k, v in paths.items():
            print(f"  {k:12s} {v}")
        print(f"Evaluated {ckpt} in {seconds:.0f} s: {model.monitor} = {metrics.get(model.monitor, float('nan')):.3f}")
    return {"metrics": metrics, "paths": paths}


def format_metrics(metrics: dict[str, float]) -> str:
    """A table of ``metrics`` grouped as a person reads them: overall, per slice, per class, real."""
    groups: dict[str, list[tuple[str, float]]] = {"overall": [], "per slice": [], "per class": [], "real": []}
    for key in sorted(metrics):
        parts = key.split("/")
        if key.endswith("/real"):
            group = "real"
        elif parts[1].startswith("class_"):
            group = "per class"
        elif len(parts) == 2:
            group = "overall"
        else:
            group = "per slice"
        groups[group].append((key, metrics[key]))
    lines = []
    for name, rows in groups.items():
        if rows:
            lines.append(f"{name}:")
            lines += [f"  {k:44s} {v:8.4f}" for k, v in rows]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval.yaml")
def _main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


def main() -> None:
    """``python train/eval.py`` / ``synth-torch eval`` / ``python -m synth_torch.app.evaluate``."""
    _main()


if __name__ == "__main__":
    main()
