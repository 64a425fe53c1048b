"""The sim-to-real study (issue 10, docs/results.md): arms x K real training images x seeds, one training run
each, every run's raw result written to ``experiments/sim2real/results/<study>/<task>/<arm>_K<k>_seed<s>.json``
the moment it finishes. A finished run is skipped, so an interrupted study resumes where it stopped.

    python experiments/sim2real/run.py --task tile --study main --ks 10 25 50 100 all --seeds 0 1 2 \\
        --synthetic-steps 2000 --real-steps 1000 --set data.resolution=128 model.net.width=32 model.net.depth=4
    python experiments/sim2real/run.py ... --dry-run          # print the plan: runs, budgets, commands

Every run is ``python train/train.py experiment=sim2real_<task> <overrides>`` (the JSON holds the exact
command), executed in this process through the same ``train()``. Arms and budgets, for ``S`` synthetic and ``R``
real steps of ``B`` images (``S`` and ``R`` are the same for every K, so every arm sees the same number of real
images, ``R * B``, whatever K):

==================  ===========================================================================================
``synthetic_only``  ``S`` synthetic steps; no real image (one run per seed, reported at K = 0). Its final
                    checkpoint is the pretraining of ``pretrain_finetune``.
``real_only``       ``R`` real steps
``pretrain_finetune`` ``S`` synthetic steps, then ``R`` real steps (resumed from the ``synthetic_only``
                    checkpoint of the same seed: exactly the first ``S`` steps of this arm), LR re-warm
``mixed``           ``S + R`` steps, real fraction ``R / (S + R)`` in every batch
``anneal``          ``S + R`` steps, the real fraction rising 0 -> 1 (cosine) over ``L = min(S, 2R)`` steps from
                    ``S - L / 2``: the same ``R * B`` real and ``S * B`` synthetic images
==================  ===========================================================================================

The runs' own outputs (checkpoints, CSV logs) go to ``logs/sim2real/<study>/`` (not committed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from synth_torch.data.hybrid import HybridSchedule  # noqa: E402

SCHEDULE_KEYS = ("real_fraction", "mix_by", "switch_step", "anneal_steps", "anneal_shape", "rewarm_steps",
                 "decay_steps")
RESULTS = ROOT / "experiments" / "sim2real" / "results"
LOGS = ROOT / "logs" / "sim2real"
ARMS = ("synthetic_only", "real_only", "pretrain_finetune", "mixed", "anneal")
TASKS = {
    "tile": {"experiment": "sim2real_tile", "metrics": ("test/fg_iou/real", "test/fg_ap/real")},
    "fruits": {"experiment": "sim2real_fruits", "metrics": ("test/map/real", "test/map_50/real")},
}


@dataclass
class Run:
    """One training run of the study."""

    task: str
    arm: str
    k: int  # distinct real training images (0 for synthetic_only)
    seed: int
    steps: int
    overrides: list[str]
    budget: dict = field(default_factory=dict)
    pretrain: str | None = None  # the synthetic_only run whose checkpoint this run resumes

    @property
    def name(self) -> str:
        return f"{self.arm}_K{self.k}_seed{self.seed}"

    def command(self) -> str:
        return " ".join(["python train/train.py", *self.overrides])


def arm_settings(arm: str, synthetic_steps: int, real_steps: int) -> tuple[int, dict]:
    """(total steps, data.* schedule settings) of ``arm`` for ``S`` synthetic and ``R`` real steps."""
    S, R = synthetic_steps, real_steps
    if arm == "synthetic_only":
        return S, {"schedule": "synthetic_only"}
    if arm == "real_only":
        return R, {"schedule": "real_only"}
    if arm == "pretrain_finetune":
        return S + R, {"schedule": "pretrain_finetune", "switch_step": S}
    if arm == "mixed":
        return S + R, {"schedule": "mixed", "mix_by": "batch", "real_fraction": R / (S + R)}
    if arm == "anneal":
        length = min(S, 2 * R)
        return S + R, {"schedule": "anneal", "real_fraction": 1.0, "anneal_shape": "cosine",
                       "switch_step": S - length // 2, "anneal_steps": max(1, length)}
    raise ValueError(f"unknown arm {arm!r}; arms: {ARMS}")


def _compose(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir

    import synth_torch.app.configs  # noqa: F401  (registers the scenario config group)
    from omegaconf import open_dict

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def real_pool_size(task: str, extra: list[str]) -> int:
    """Images in the real train split of ``task`` (what ``K = all`` means)."""
    from omegaconf import OmegaConf

    from synth_torch.data.real import open_real
    from synth_torch.scenario.config import load_scenario

    cfg = _compose([f"experiment={TASKS[task]['experiment']}", *extra], LOGS)
    names = load_scenario(OmegaConf.to_container(cfg.data.scenario, resolve=True)).class_names
    return len(open_real(cfg.data.real_kind, cfg.data.real_root, names, 32, "train", tuple(cfg.data.real_split)))


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when inside it (results stay machine-independent)."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _schedule(base, data: dict) -> HybridSchedule:
    """The schedule a run will follow: the experiment's data.* settings updated with ``data``."""
    merged = {key: base[key] for key in ("schedule", *SCHEDULE_KEYS)} | data
    return HybridSchedule(merged["schedule"], **{key: merged[key] for key in SCHEDULE_KEYS})


def plan(task: str, arms, ks, seeds, synthetic_steps: int, real_steps: int, extra: list[str], study: str,
         pool: int, rewarm_steps: int = 0, logs: Path = LOGS, val_checks: int = 2,
         pretrained: str | None = None, select_by: str | None = None, decay: bool = False) -> list[Run]:
    """The runs of a study, pretraining first (``pretrain_finetune`` resumes ``synthetic_only``, or with
    ``pretrained`` the ``synthetic_only`` checkpoints of that study: for studies that change only the real data).
    ``extra`` overrides win over the planned ones; run outputs go to ``logs/<study>/<task>/<arm>/K<k>/seed<s>``;
    each run validates ``val_checks`` times (evenly spaced; detection validation is slow on CPU). With
    ``select_by`` (a validation metric, e.g. ``val/fg_iou/real``) every arm that trains on real images keeps its
    best checkpoint by that metric and also tests it (the result's ``selected``: model selection on the real
    validation split, the same for every arm). With ``decay`` every arm that trains on real images decays its
    learning rate to zero (cosine) over its training after the pretraining: the ``R`` real steps of
    ``pretrain_finetune`` and ``real_only``, all ``S + R`` steps of ``mixed`` and ``anneal``; the pretraining
    itself (``synthetic_only``, which ``pretrain_finetune`` resumes) keeps the constant rate."""
    given = {o.split("=", 1)[0] for o in extra}
    base = _compose([f"experiment={TASKS[task]['experiment']}", *extra], LOGS)
    B = int(base.data.batch_size)
    resolved = sorted({pool if k == "all" else int(k) for k in ks if k == "all" or int(k) <= pool})
    arms = list(arms)
    if "pretrain_finetune" in arms and "synthetic_only" not in arms and pretrained is None:
        arms.insert(0, "synthetic_only")
    runs = []
    for seed in seeds:
        for arm in sorted(arms, key=lambda a: a != "synthetic_only"):
            for k in [0] if arm == "synthetic_only" else resolved:
                steps, data = arm_settings(arm, synthetic_steps, real_steps)
                if arm == "pretrain_finetune":
                    data["rewarm_steps"] = rewarm_steps
                if decay and arm != "synthetic_only":
                    data["decay_steps"] = steps - synthetic_steps if arm == "pretrain_finetune" else steps
                planned = [f"seed={seed}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // max(1, val_checks))}",
                           *(f"data.{key}={value}" for key, value in data.items())]
                if k:
                    planned.append(f"data.real_train_images={k}")
                overrides = [f"experiment={TASKS[task]['experiment']}",
                             *(o for o in planned if o.split("=", 1)[0] not in given), *extra]
                overrides.append(f"hydra.run.dir={_shown(logs / study / task / arm / f'K{k}' / f'seed{seed}')}")
                run = Run(task, arm, k, seed, steps, overrides)
                if arm == "synthetic_only":
                    run.overrides[1:1] = ["callbacks=model_checkpoint", "trainer.enable_checkpointing=true",
                                          f"callbacks.model_checkpoint.every_n_train_steps={steps}"]
                elif select_by:
                    run.overrides[1:1] = ["callbacks=model_checkpoint", "trainer.enable_checkpointing=true",
                                          f"callbacks.model_checkpoint.monitor={select_by}",
                                          "callbacks.model_checkpoint.save_top_k=1", "test_best=true"]
                if arm == "pretrain_finetune":
                    run.pretrain = _shown(logs / (pretrained or study) / task / "synthetic_only" / "K0" / f"seed{seed}")
                real = int(_schedule(base.data, data).real_images(steps, B))
                run.budget = {"steps": steps, "batch_size": B, "real_images": real, "synthetic_images": steps * B - real,
                              "real_epochs": round(real / k, 2) if k else 0.0, "synthetic_steps": synthetic_steps,
                              "real_steps": real_steps}
                runs.append(run)
    return runs


def check_pretraining(runs: list[Run], synthetic_steps: int) -> None:
    """Every pretraining checkpoint the runs resume exists and stopped at step ``S`` (else the switch to real
    data would not be where the schedule puts it); raises naming the file."""
    import torch

    for run in runs:
        if run.pretrain is None:
            continue
        ckpt = ROOT / run.pretrain / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{run.name}: pretraining checkpoint not found: {ckpt}")
        step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
        if step != synthetic_steps:
            raise ValueError(f"{run.name}: {ckpt} stopped at step {step}, not --synthetic-steps {synthetic_steps}")


def result_path(study: str, run: Run, results: Path = RESULTS) -> Path:
    return results / study / run.task / f"{run.name}.json"


def _train_module():
    spec = importlib.util.spec_from_file_location("synth_train", ROOT / "train" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _curve(output_dir: Path) -> list[dict]:
    """Validation rows of the run's CSV log (step and the ``val/`` metrics)."""
    import csv

    files = sorted(output_dir.glob("csv/**/metrics.csv"))
    if not files:
        return []
    rows = []
    for row in csv.DictReader(files[-1].open()):
        vals = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
        if vals:
            rows.append({"step": int(float(row["step"])), **vals})
    return rows


def _provenance() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "synth_torch", "configs", "train"],
                                    cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty, "machine": platform.node(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_one(run: Run, study: str, train_module=None, results: Path = RESULTS) -> dict:
    """Train and test ``run``; write its result to :func:`result_path` (atomically: a half-written file never
    exists) and return it."""
    train = train_module or _train_module()
    out_dir = ROOT / [o for o in run.overrides if o.startswith("hydra.run.dir=")][0].split("=", 1)[1]
    overrides = [o for o in run.overrides if not o.startswith("hydra.run.dir=")]
    resumed = None
    if run.pretrain is not None:
        ckpt = ROOT / run.pretrain / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            resumed = _shown(ckpt)
            overrides.append(f"ckpt_path={ckpt}")
    cfg = _compose(overrides, out_dir)
    start = time.perf_counter()
    out = train.train(cfg)
    wall = time.perf_counter() - start
    metrics = out["metrics"]
    result = {"study": study, **asdict(run), "command": run.command() + (f" ckpt_path={resumed}" if resumed else ""),
              "resumed_from": resumed, "wall_s": round(wall, 1), "images_seen": out["data"]["images_seen"],
              "real_train_images": out["data"]["real_train_images"],
              "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
              "val": {k: v for k, v in metrics.items() if k.startswith("val/")},
              "curve": _curve(out_dir), **_provenance()}
    if "selected" in out:
        result["selected"] = {**out["selected"], "ckpt": _shown(Path(out["selected"]["ckpt"]))}
    path = result_path(study, run, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--study", default="main", help="results go to experiments/sim2real/results/<study>/<task>/")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--ks", nargs="+", default=["10", "25", "50", "100", "all"],
                    help="real training images per run; 'all' = the whole train split; larger K are skipped")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--synthetic-steps", type=int, required=True, help="S: synthetic steps of every hybrid arm")
    ap.add_argument("--real-steps", type=int, required=True, help="R: real steps (equal real budget, every arm)")
    ap.add_argument("--rewarm-steps", type=int, default=None, help="pretrain_finetune LR re-warm (default R // 10)")
    ap.add_argument("--val-checks", type=int, default=2, help="validations per run (evenly spaced)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides for every run")
    ap.add_argument("--pretrained-study", default=None, metavar="STUDY",
                    help="pretrain_finetune resumes STUDY's synthetic_only checkpoints (S steps each) instead of "
                         "pretraining again: for studies that change only the real data")
    ap.add_argument("--select-by-val", default=None, metavar="METRIC",
                    help="also test each real-data run's best checkpoint by this validation metric "
                         "(e.g. val/fg_iou/real; early stopping by model selection, recorded as 'selected')")
    ap.add_argument("--decay", action="store_true",
                    help="cosine learning-rate decay to zero over each real-data arm's training after the pretraining "
                         "(a settled end point for every arm instead of a constant-rate snapshot)")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (run in parts)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 keeps small models fast when other jobs share the cores)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    if args.pretrained_study and "synthetic_only" in args.arms:
        ap.error("--pretrained-study reuses another study's synthetic_only runs: leave synthetic_only out of --arms")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    pool = real_pool_size(args.task, args.set)
    rewarm = args.real_steps // 10 if args.rewarm_steps is None else args.rewarm_steps
    runs = plan(args.task, args.arms, args.ks, args.seeds, args.synthetic_steps, args.real_steps, args.set,
                args.study, pool, rewarm, val_checks=args.val_checks, pretrained=args.pretrained_study,
                select_by=args.select_by_val, decay=args.decay)
    if args.pretrained_study:
        check_pretraining(runs, args.synthetic_steps)
    todo = [r for r in runs if not result_path(args.study, r).is_file()]
    print(f"{args.task}: {len(runs)} runs ({len(runs) - len(todo)} done), real train split of {pool} images")
    if args.dry_run:
        for r in runs:
            done = "done" if result_path(args.study, r).is_file() else "todo"
            print(f"  [{done}] {r.name}: {r.budget}\n      {r.command()}")
        return 0
    train = _train_module()
    failed = 0
    for i, run in enumerate(todo[: args.max_runs]):
        print(f"[{i + 1}/{len(todo)}] {run.task} {run.name} ({run.steps} steps)", flush=True)
        try:
            result = run_one(run, args.study, train)
        except Exception:  # record nothing, so the next invocation retries it; keep going with the others
            failed += 1
            traceback.print_exc()
            continue
        shown = {k: round(result["test"].get(k, float("nan")), 4) for k in TASKS[run.task]["metrics"]}
        print(f"    {shown}  {result['wall_s']} s  seen {result['images_seen']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
