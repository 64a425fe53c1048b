"""Hard examples by gradient against random search at the same number of renders, on a trained model (issue 11).

A TinyUNet (width 12, depth 3) is trained briefly at 48 px on the rare-slice study's scenario
(``configs/experiment/rare_slice_miner.yaml``: the ``defects`` scenario with four visible defect types and a
hard ``low_contrast_defect`` slice). Then, per seed, the same B starting samples are searched by
:func:`~synth_torch.loop.hard_examples.gradient_search` and by
:func:`~synth_torch.loop.hard_examples.random_search`, R renders each (``R * B`` images), over the scene's
continuous parameters (light, camera pose, surface albedo, defect contrast and size). The loss is the
``SliceMiner``'s per-image loss (1 - soft Dice; the largest foreground probability on a defect-free tile).
Each method's hard region (:func:`~synth_torch.loop.hard_examples.hard_region`) is built in both shapes, the
``span`` of the hard values (the first version) and ``one_sided`` (from their median toward where the loss
rises); gradient search's parameters are ranked by sensitivity (and, for the span, also by shift), random
search's by shift; each ranked region is also checked on ``CHECK_SAMPLES`` fresh samples
(:func:`~synth_torch.loop.hard_examples.check_region`). Every region is then measured on ``EVAL_SAMPLES`` other
fresh samples, paired with the same samples from the base distribution.

    python experiments/loop/hard_examples.py run --seeds 0 1 2 3 4 5 6 7    # one JSON per seed, resumable
    python experiments/loop/hard_examples.py run --lr 0.15 --seeds 0 1 2 3  # learning-rate check, lr0.15/
    python experiments/loop/hard_examples.py report                         # table + docs/img/hard_examples.png

Raw results: ``experiments/loop/results/hard_examples/model.json`` (the model's training and validation) and
``seed<s>.json`` (written atomically when the seed finishes; finished seeds are skipped): every render's loss,
each sample's starting and hardest values, the mean sensitivities, and per region its paired summary; floats
rounded to 4 significant digits. The model checkpoint is
``logs/hard_examples/model.pt`` (not committed; retrained deterministically when missing).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synth_torch.data.dataset import SynthDataset  # noqa: E402
from synth_torch.fileio import write_bytes_atomic, write_text_atomic  # noqa: E402
from synth_torch.loop.hard_examples import (check_region, gradient_search, hard_region,  # noqa: E402
                                            random_search, region_losses, task_loss)
from synth_torch.loop.mining import Predicate  # noqa: E402
from synth_torch.loop.models import TinyUNet  # noqa: E402
from synth_torch.loop.tasks import SegmentationTask  # noqa: E402
from synth_torch.scenario.config import load_scenario  # noqa: E402

RESULTS = ROOT / "experiments" / "loop" / "results" / "hard_examples"
CHECKPOINT = ROOT / "logs" / "hard_examples" / "model.pt"
FIGURE = ROOT / "docs" / "img" / "hard_examples.png"
EXPERIMENT = ROOT / "synth_torch" / "configs" / "experiment" / "rare_slice_miner.yaml"
NAMES = ("light.intensity", "light.ambient", "light.elevation_deg", "light.azimuth_deg", "camera.distance",
         "camera.focal_mm", "camera.elevation_deg", "camera.roll_deg", "ground.value", "defects.contrast",
         "defects.size")
RESOLUTION, TRAIN_BATCH, TRAIN_STEPS, WIDTH = 48, 8, 600, 12
SEARCH_BATCH, RENDERS, LR, CHECK_SAMPLES, EVAL_SAMPLES = 16, 24, 0.05, 64, 64
SEARCH_START, CHECK_START, VAL_START, EVAL_START = 1_000_000, 2_000_000, 3_000_000, 4_000_000  # far from training
REGIONS = {"gradient/shift": "gradient, span, ranked by shift", "gradient/sensitivity": "gradient, span",
           "gradient/sensitivity/one_sided": "gradient, one-sided", "gradient/checked": "gradient, span + check",
           "gradient/checked/one_sided": "gradient, one-sided + check", "random/shift": "random, span",
           "random/shift/one_sided": "random, one-sided", "random/checked": "random, span + check",
           "random/checked/one_sided": "random, one-sided + check"}
"""Region key in the results -> label; the sensitivity ranks gradient search's regions unless said."""


def scenario_overrides() -> dict:
    return yaml.safe_load(EXPERIMENT.read_text())["scenario"]


def dataset(batch_size: int) -> SynthDataset:
    return SynthDataset(load_scenario("defects", scenario_overrides()), batch_size=batch_size,
                        resolution=RESOLUTION, seed=0)


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"git_commit": commit, "machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def make_task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(TinyUNet(2, width=WIDTH, depth=3), num_classes=2, target="foreground")


def train() -> SegmentationTask:
    """The model under attack: trained once (``TRAIN_STEPS`` steps of the live stream), then loaded."""
    task = make_task()
    if CHECKPOINT.is_file():
        task.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
        return task.eval()
    ds = dataset(TRAIN_BATCH)
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3, weight_decay=1e-4)
    began, losses = time.perf_counter(), []
    task.train()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: the task's logging is off
    for step in range(TRAIN_STEPS):
        batch = ds.render_batch(torch.arange(step * TRAIN_BATCH, (step + 1) * TRAIN_BATCH))
        loss = task.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    write_bytes_atomic(CHECKPOINT, buffer.getvalue())
    task.eval()
    val = validate(task)
    record = {"steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH, "resolution": RESOLUTION, "width": WIDTH,
              "seconds": time.perf_counter() - began, "train_loss_first_50": sum(losses[:50]) / 50,
              "train_loss_last_50": sum(losses[-50:]) / 50, "validation": val, "provenance": provenance()}
    write_text_atomic(RESULTS / "model.json", json.dumps(record, indent=1))
    return task


@torch.no_grad()
def validate(task: SegmentationTask, n: int = 64) -> dict:
    """Mean miner loss and foreground IoU of fresh samples per scenario slice."""
    ds = dataset(16)
    out = {}
    for k, name in enumerate(ds.scenario.slice_names):
        losses, inter, union = [], 0.0, 0.0
        for start in range(VAL_START, VAL_START + n, 16):
            index = torch.arange(start, start + 16)
            batch = ds.render_batch(index, torch.full((16,), k))
            losses.append(task.per_sample_loss(batch))
            pred, gt = task(batch.image).argmax(1) > 0, batch.semantic > 0
            inter, union = inter + float((pred & gt).sum()), union + float((pred | gt).sum())
        out[name] = {"loss": float(torch.cat(losses).mean()), "fg_iou": inter / union if union else None}
    return out


def results_folder(lr: float) -> Path:
    """The study's folder; a learning rate other than ``LR`` (the sensitivity check) gets its own sub-folder."""
    return RESULTS if lr == LR else RESULTS / f"lr{lr:g}"


def rounded(x, digits: int = 4):
    """``x`` (nested lists and dicts) with floats rounded to ``digits`` significant digits."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    return x


def run_seed(task: SegmentationTask, seed: int, lr: float) -> dict:
    ds = dataset(SEARCH_BATCH)
    index = torch.arange(SEARCH_START + seed * SEARCH_BATCH, SEARCH_START + (seed + 1) * SEARCH_BATCH)
    check = torch.arange(CHECK_START + seed * CHECK_SAMPLES, CHECK_START + (seed + 1) * CHECK_SAMPLES)
    fresh = torch.arange(EVAL_START + seed * EVAL_SAMPLES, EVAL_START + (seed + 1) * EVAL_SAMPLES)
    torch.manual_seed(seed)
    results = {"gradient": gradient_search(ds, task_loss(task), NAMES, index, steps=RENDERS, lr=lr),
               "random": random_search(ds, task.per_sample_loss, NAMES, index, steps=RENDERS, seed=seed)}
    out = {"seed": seed, "names": list(NAMES), "sample_index": index.tolist(), "renders_per_sample": RENDERS,
           "batch": SEARCH_BATCH, "lr": lr, "slice_id": results["gradient"].params.slice_id.tolist(),
           "slice_names": list(ds.slice_names), "bounds": {n: list(b) for n, b in results["gradient"].bounds.items()},
           "check_samples": CHECK_SAMPLES, "eval_samples": EVAL_SAMPLES}
    regions = {}
    for method, res in results.items():
        rank = "sensitivity" if method == "gradient" else "shift"
        if method == "gradient":
            regions["gradient/shift"] = hard_region(res, ds.scenario, rank_by="shift", shape="span")
        for shape, suffix in (("span", ""), ("one_sided", "/one_sided")):
            ranked = hard_region(res, ds.scenario, rank_by=rank, shape=shape)
            regions[f"{method}/{rank}{suffix}"] = ranked
            item = check_region(ds, task.per_sample_loss, ranked, check)
            regions[f"{method}/checked{suffix}"] = [] if item is None else [Predicate(*p) for p in item["predicates"]]
        rows = torch.arange(SEARCH_BATCH)
        out[method] = {"loss": res.loss.tolist(), "seconds": res.seconds, "renders": res.renders,
                       "start": {n: v[0].tolist() for n, v in res.values.items()},
                       "hardest": {n: v[res.best_step, rows].tolist() for n, v in res.values.items()},
                       "sensitivity": None if res.sensitivity is None else
                       {n: float(v.mean()) for n, v in res.sensitivity.items()}}
    found = [k for k in REGIONS if regions[k]]
    inside, base = region_losses(ds, task.per_sample_loss, [regions[k] for k in found], fresh) if found else ([], None)
    out["regions"] = {k: {"predicates": [(p.param, p.lo, p.hi) for p in regions[k]],
                          "name": " & ".join(map(str, regions[k]))} for k in REGIONS}
    for k, losses in zip(found, inside):
        d = losses - base
        out["regions"][k] |= {"inside": float(losses.mean()), "base": float(base.mean()), "diff": float(d.mean()),
                              "diff_sd": float(d.std()), "n": int(d.numel())}
    out["provenance"] = provenance()
    return rounded(out)


def run(seeds: list[int], lr: float) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task = train()
    for seed in seeds:
        path = results_folder(lr) / f"seed{seed}.json"
        if path.is_file():
            print(f"seed {seed}: done, skipped")
            continue
        result = run_seed(task, seed, lr)
        write_text_atomic(path, json.dumps(result, separators=(",", ":")))
        g, r = (torch.tensor(result[m]["loss"]) for m in ("gradient", "random"))
        regions = ", ".join(f"{k}: {v['name'] or 'none'} ({v.get('diff', float('nan')):+.3f})"
                            for k, v in result["regions"].items())
        print(f"seed {seed}: start {g[0].mean():.3f}  best gradient {g.amax(0).mean():.3f} "
              f"({result['gradient']['seconds']:.1f} s)  best random {r.amax(0).mean():.3f} "
              f"({result['random']['seconds']:.1f} s)  regions: {regions}", flush=True)


def _mean_sd(xs: list[float]) -> str:
    t = torch.tensor(xs, dtype=torch.float64)
    return f"{float(t.mean()):.3f} ± {float(t.std()) if len(xs) > 1 else 0.0:.3f}"


def _wins(run: dict, renders: int) -> float:
    """Share of samples whose best loss within ``renders`` is higher by gradient than by random search; ties
    (within 1e-4: the starting render differs only by the torch and compiled paths' rounding) count half."""
    g, r = (torch.tensor(run[m]["loss"])[:renders].amax(0) for m in ("gradient", "random"))
    return float(((g > r + 1e-4).float() + 0.5 * ((g - r).abs() <= 1e-4).float()).mean())


def _base_mass(predicates: list, support: dict[str, tuple[float, float]]) -> float:
    """The share of a uniform base distribution on ``support`` inside the box ``predicates``."""
    mass = 1.0
    for name, lo, hi in predicates:
        s_lo, s_hi = support[name]
        mass *= max(0.0, min(hi, s_hi) - max(lo, s_lo)) / (s_hi - s_lo)
    return mass


def report() -> None:
    """Print the tables (Markdown) and draw ``docs/img/hard_examples.png`` from the per-seed JSON files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("seed*.json"))]
    if not runs:
        raise SystemExit(f"no results in {RESULTS}; run `python experiments/loop/hard_examples.py run` first")
    model = json.loads((RESULTS / "model.json").read_text())
    print(f"model: {model['steps']} steps, train loss {model['train_loss_first_50']:.3f} -> "
          f"{model['train_loss_last_50']:.3f}; validation " + ", ".join(
              f"{k}: loss {v['loss']:.3f}, fg_iou {v['fg_iou'] if v['fg_iou'] is None else round(v['fg_iou'], 3)}"
              for k, v in model["validation"].items()))
    R, B = runs[0]["renders_per_sample"], runs[0]["batch"]
    curves = {m: torch.stack([torch.tensor(r[m]["loss"]).cummax(0).values.mean(1) for r in runs]) for m in
              ("gradient", "random")}  # [seeds, R] best-so-far, mean over samples
    means = {m: torch.stack([torch.tensor(r[m]["loss"]).mean(1) for r in runs]) for m in ("gradient", "random")}
    print(f"\n{len(runs)} seeds x {B} samples, {R} renders per sample ({R * B} images per method and seed)\n")
    print("| renders per sample | start | gradient best so far | random best so far | gradient wins (samples) |")
    print("|---|---|---|---|---|")
    for r_ in sorted({1, 2, 4, 8, 16, R}):
        wins = [_wins(x, r_) for x in runs]
        print(f"| {r_} ({r_ * B} images) | {_mean_sd(curves['gradient'][:, 0].tolist())} | "
              f"{_mean_sd(curves['gradient'][:, r_ - 1].tolist())} | {_mean_sd(curves['random'][:, r_ - 1].tolist())} "
              f"| {_mean_sd(wins)} |")
    sweep = sorted([(runs[0]["lr"], runs)] + [(float(f.name[2:]), [json.loads(p.read_text()) for p in
                                                                   sorted(f.glob("seed*.json"))])
                                           for f in RESULTS.glob("lr*") if f.is_dir()])
    print(f"\nlearning rate of the gradient search, best loss after {R} renders per sample:\n\n"
          "| lr | seeds | gradient | random | gradient wins (samples) |\n|---|---|---|---|---|")
    for lr, rs in sweep:
        best = {m: [float(torch.tensor(x[m]["loss"]).amax(0).mean()) for x in rs] for m in ("gradient", "random")}
        wins = [_wins(x, R) for x in rs]
        print(f"| {lr:g} | {len(rs)} | {_mean_sd(best['gradient'])} | {_mean_sd(best['random'])} | {_mean_sd(wins)} |")
    print("\n| method | mean loss over all renders | seconds per seed |\n|---|---|---|")
    for m in ("gradient", "random"):
        print(f"| {m} | {_mean_sd(means[m].mean(1).tolist())} | {_mean_sd([r[m]['seconds'] for r in runs])} |")
    print("\nparameter shift, start -> hardest render, median over samples, in fractions of the range (mean ± sd "
          "over seeds), and the gradient's sensitivity |d loss / d value| x range (mean over steps and samples):\n\n"
          "| parameter | range | gradient shift | random shift | gradient sensitivity |\n|---|---|---|---|---|")
    names = runs[0]["names"]
    shifts = {m: {} for m in ("gradient", "random")}
    for n in names:
        lo, hi = runs[0]["bounds"][n]
        row = []
        for m in ("gradient", "random"):
            per_seed = []
            for r in runs:
                start, hardest = torch.tensor(r[m]["start"][n]), torch.tensor(r[m]["hardest"][n])
                per_seed.append(float((hardest - start).median()) / (hi - lo))
            shifts[m][n] = per_seed
            row.append(_mean_sd(per_seed))
        sens = _mean_sd([r["gradient"]["sensitivity"][n] for r in runs])
        print(f"| `{n}` | [{lo:g}, {hi:g}] | {row[0]} | {row[1]} | {sens} |")
    support = {n: load_scenario("defects", scenario_overrides()).parameters[n].support for n in names}
    print(f"\nhard regions, measured on {EVAL_SAMPLES} fresh samples each (paired with the same samples from the "
          f"base distribution; 'checked' regions were chosen on {CHECK_SAMPLES} other fresh samples). Base mass: "
          "the share of the base distribution inside the region (its parameters are uniform and independent):\n\n"
          "| lr | region | seeds with a region | paired diff, mean over seeds with one | seeds with diff > 0 "
          "| base mass | diff per seed (none: no region) |\n|---|---|---|---|---|---|---|")
    for lr, rs in sweep:
        for k, label in REGIONS.items():
            if k not in rs[0]["regions"]:
                continue
            diffs = [r["regions"][k].get("diff") for r in rs]
            found = [d for d in diffs if d is not None]
            mean = _mean_sd(found) if found else "-"
            mass = [_base_mass(r["regions"][k]["predicates"], support) for r in rs if r["regions"][k]["predicates"]]
            print(f"| {lr:g} | {label} | {len(found)}/{len(rs)} | {mean} | {sum(d > 0 for d in found)}/{len(found)} "
                  f"| {_mean_sd(mass) if mass else '-'} | "
                  + ", ".join("none" if d is None else f"{d:+.3f}" for d in diffs) + " |")
    print("\n| seed | region | name | loss inside | loss base | paired diff |\n|---|---|---|---|---|---|")
    for r in runs:
        for k in REGIONS:
            reg = r["regions"].get(k, {})
            if "diff" in reg:
                print(f"| {r['seed']} | {REGIONS[k]} | `{reg['name']}` | {reg['inside']:.3f} | {reg['base']:.3f} | "
                      f"{reg['diff']:+.3f} ± {reg['diff_sd'] / math.sqrt(reg['n']):.3f} s.e. |")

    fig, axes = plt.subplots(2, 2, figsize=(14, 8.4))
    axes = axes.flatten()
    x = torch.arange(1, R + 1) * B
    for m, color in (("gradient", "C0"), ("random", "C1")):
        for ax, data, label in ((axes[0], curves[m], "best so far"), (axes[1], means[m], "loss of each render")):
            mu, sd = data.mean(0), data.std(0)
            ax.plot(x, mu, color=color, label=m)
            ax.fill_between(x, mu - sd, mu + sd, color=color, alpha=0.2)
            ax.set_xlabel("images rendered (per seed)")
            ax.set_ylabel(f"miner loss, {label} (mean over samples)")
    axes[0].set_title(f"best loss reached ({len(runs)} seeds, mean ± sd)")
    axes[1].set_title("loss of the images rendered at each step")
    axes[0].legend()
    pos = torch.arange(len(names))
    for k, (m, color) in enumerate((("gradient", "C0"), ("random", "C1"))):
        t = torch.tensor([shifts[m][n] for n in names])
        axes[2].barh(pos + 0.2 * (1 - 2 * k), t.mean(1), height=0.4, xerr=t.std(1), color=color, label=m)
    axes[2].set_yticks(pos, names)
    axes[2].axvline(0, color="k", lw=0.5)
    axes[2].set_xlabel("median shift start -> hardest (fraction of range)")
    axes[2].set_title("how the parameters moved")
    shown = [k for k in REGIONS if k != "gradient/shift"]
    for i, k in enumerate(shown):
        diffs = [r["regions"][k]["diff"] for r in runs if "diff" in r["regions"][k]]
        color = "C0" if k.startswith("gradient") else "C1"
        axes[3].scatter(diffs, [i] * len(diffs), color=color, alpha=0.6, s=14)
        if diffs:
            axes[3].plot([sum(diffs) / len(diffs)] * 2, [i - 0.3, i + 0.3], color="k")
    axes[3].set_yticks(range(len(shown)), [f"{REGIONS[k]} ({sum('diff' in r['regions'][k] for r in runs)}/{len(runs)})"
                                           for k in shown])
    axes[3].invert_yaxis()
    axes[3].axvline(0, color="k", lw=0.5)
    axes[3].set_xlabel(f"paired loss increase, {EVAL_SAMPLES} fresh samples (dot: seed, bar: mean)")
    axes[3].set_title(f"hard regions, lr {runs[0]['lr']:g} (seeds with a region)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(FIGURE, buffer.getvalue())
    print(f"\nwrote {FIGURE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    runner.add_argument("--lr", type=float, default=LR, help="gradient search learning rate (fraction of a range)")
    sub.add_parser("report")
    args = parser.parse_args()
    if args.command == "run":
        results_folder(args.lr).mkdir(parents=True, exist_ok=True)
        run(args.seeds, args.lr)
    else:
        report()


if __name__ == "__main__":
    main()
