"""Real failures mapped back to scenarios on magnetic_tile (issue 11, deliverable 4).

Starts from the synthetic-only checkpoints of the sim-to-real study (``experiment=sim2real_tile``, TinyUNet
width 16, depth 3, 96 px, 2000 synthetic steps; ``--checkpoints``). Two parts, each writing one JSON per seed
(and arm) to ``experiments/loop/results/real_failures/`` the moment it finishes; finished files are skipped.

``diagnose`` (per seed): scores every image of the real *val* split (:func:`per_image_scores`); per defect type:
pooled foreground IoU and recall, false-alarm share, and the apparent contrast of the real defects
(:func:`apparent_contrast`); recall per apparent-contrast tercile. Then maps the failing defect images
(per-image loss > ``--fail-loss``) and, separately, the false alarms on defect-free tiles onto a pool of
synthetic samples in the model's feature space (:func:`map_failures`), checks whether the neighbours' defect
types agree with the real folders, and turns the region into a scenario slice. Seed 0 also writes
``docs/img/real_failures_examples.png`` (the worst val photos: label left, prediction right).

``retrain`` (per seed and arm): continues the synthetic-only checkpoint for ``--extra-steps`` synthetic steps, same
seed, same budget, on

- ``unchanged``: the scenario as it is;
- ``region``: with the seed's mapped region added as a slice of weight ``--weight``;
- ``contrast``: with a slice of the same weight drawing ``defects.contrast`` from ``--contrast`` (the low-contrast
  tail measured on the real val defects, a direct-measurement alternative to the mapping);
- ``dilution``: with a slice of the same weight and no override (more base samples: the control for the other
  slices diluting the scenario's defect-free and near-miss slices);

scores the real *test* split; then fine-tunes each on the same ``--k`` real training images for
``--finetune-steps`` and scores the test split again. The real test split is never used to choose anything.

    python experiments/loop/real_failures.py diagnose --seeds 0 1 2
    python experiments/loop/real_failures.py retrain --arms unchanged region contrast dilution --seeds 0 1 2 \\
        --extra-steps 500 --finetune-steps 300 --k 100
    python experiments/loop/real_failures.py report        # the Markdown tables of every result file

Runs' own outputs go to ``logs/real_failures/`` (not committed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from synth_torch.data.dataset import SynthDataset  # noqa: E402
from synth_torch.data.real import collate_real, open_real  # noqa: E402
from synth_torch.fileio import save_png_atomic, write_text_atomic  # noqa: E402
from synth_torch.loop.models import TinyUNet  # noqa: E402
from synth_torch.loop.real_failures import (apparent_contrast, hydra_override, map_failures,  # noqa: E402
                                            per_image_scores, slice_override, synthetic_pool)
from synth_torch.loop.tasks import SegmentationTask  # noqa: E402
from synth_torch.loop.visuals import prediction_grid  # noqa: E402

RESULTS = ROOT / "experiments" / "loop" / "results" / "real_failures"
LOGS = ROOT / "logs" / "real_failures"
CHECKPOINTS = "/work/wt-study-main/logs/sim2real/main/tile/synthetic_only/K0/seed{seed}/checkpoints/last.ckpt"
REAL = ROOT.parent / "shared" / "real" / "magnetic_tile"
RESOLUTION, WIDTH, DEPTH = 96, 16, 3  # experiment=sim2real_tile
SLICE = "real_failures"
ARMS = ("unchanged", "region", "contrast", "dilution")


def _provenance() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"git_commit": commit, "machine": platform.node(), "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv])}


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=1))
    print(f"wrote {path.relative_to(ROOT)}", flush=True)


def _task(state_dict: dict) -> SegmentationTask:
    task = SegmentationTask(TinyUNet(2, width=WIDTH, depth=DEPTH), 2, target="foreground")
    task.load_state_dict(state_dict)
    return task.eval()


def _checkpoint(pattern: str, seed: int) -> dict:
    path = Path(pattern.format(seed=seed))
    if not path.is_file():
        raise FileNotFoundError(f"synthetic-only checkpoint not found: {path} (--checkpoints)")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _real(split: str, names):
    return open_real("magnetic_tile", REAL, names, RESOLUTION, split)


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 4)


def per_type(scores, dataset, contrast: torch.Tensor | None = None) -> dict:
    """Per real defect folder: images, pooled IoU and recall, mean false-alarm share and loss, and the median
    apparent contrast when ``contrast`` [N] is given."""
    groups = [g.lower() for g in dataset.groups]
    out = {}
    for g in sorted(set(groups)):
        m = torch.tensor([x == g for x in groups])
        positives = scores.positives[m].sum()
        out[g] = {"images": int(m.sum()), "iou": _f(scores.inter[m].sum() / scores.union[m].sum().clamp(min=1)),
                  "recall": _f(scores.inter[m].sum() / positives) if positives else None,
                  "false_alarm": _f(scores.false_alarm[m].mean()), "loss": _f(scores.loss[m].mean())}
        if contrast is not None and torch.isfinite(contrast[m]).any():
            out[g]["apparent_contrast"] = _f(contrast[m][torch.isfinite(contrast[m])].median())
    return out


def _summary(found, top: int = 8) -> dict:
    return {"gap": round(found.gap, 3), "type_share": {t: [round(a, 3), round(b, 3)] for t, (a, b)
                                                       in found.type_share.items()},
            "unique_neighbours": int(found.neighbours.unique().numel()),
            "shifts": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(s).items()}
                       for s in found.shifts[:top]],
            "predicates": [str(p) for p in found.predicates()]}


def diagnose(seed: int, args) -> dict:
    task = _task(_checkpoint(args.checkpoints, seed))
    stream = SynthDataset("defects", batch_size=32, resolution=RESOLUTION, seed=seed)
    val = _real("val", stream.scenario.class_names)
    batches = list(DataLoader(val, batch_size=16, collate_fn=collate_real))
    scores = per_image_scores(task, batches)
    contrast = torch.cat([apparent_contrast(b.image, b.semantic > 0) for b in batches])
    defect = scores.has_defect
    terciles = torch.quantile(contrast[defect], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    by_contrast = []
    for lo, hi in zip([-math.inf, *terciles.tolist()], [*terciles.tolist(), math.inf]):
        m = defect & (contrast >= lo) & (contrast < hi)
        by_contrast.append({"apparent_contrast": [_f(lo), _f(hi)], "images": int(m.sum()),
                            "iou": _f(scores.inter[m].sum() / scores.union[m].sum()),
                            "recall": _f(scores.inter[m].sum() / scores.positives[m].sum())})
    pool = synthetic_pool(task, stream, args.pool)
    pool_contrast = torch.cat([apparent_contrast(b.image, b.semantic > 0) for b in (
        stream.render_batch(torch.arange(i, i + 32) + 2 * 10**9) for i in range(0, 256, 32))])
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    missed = defect & (scores.loss > args.fail_loss)
    alarms = ~defect & (scores.loss > args.fail_loss)
    found = map_failures(scores.features[missed], pool, k=args.neighbours)
    preds = found.predicates()
    override = slice_override(preds, stream.scenario, args.weight) if preds else None
    # do the neighbours of a real defect photo show its defect type? (majority vote of k neighbours)
    idx = torch.nonzero(missed).squeeze(1)
    votes = pool.types[found.neighbours].double().mean(1)  # [F, T]
    folder = [val.groups[int(i)].lower() for i in idx]
    known = [j for j, g in enumerate(folder) if g in pool.type_names]
    hits = sum(pool.type_names[int(votes[j].argmax())] == folder[j] for j in known)
    chance = max(float(pool.types[:, pool.type_names.index(g)].double().mean()) for g in set(folder[j] for j in known))
    result = {
        "part": "diagnose", "seed": seed, "split": "val", "val_images": len(val),
        "checkpoint": args.checkpoints.format(seed=seed), "fail_loss": args.fail_loss, "pool": args.pool,
        "neighbours": args.neighbours,
        "real_val": {"fg_iou": _f(scores.inter.sum() / scores.union.sum()),
                     "recall": _f(scores.inter.sum() / scores.positives.sum()),
                     "false_alarm_defect_free": _f(scores.false_alarm[~defect].mean())},
        "per_type": per_type(scores, val, contrast), "by_apparent_contrast": by_contrast,
        "apparent_contrast_quantiles": {"levels": levels.tolist(),
                                        "real_val_defects": [_f(q) for q in
                                                             torch.nanquantile(contrast[defect], levels)],
                                        "synthetic_256": [_f(q) for q in torch.nanquantile(pool_contrast, levels)]},
        "synthetic_pool": {"fg_iou": _f(pool.scores.inter.sum() / pool.scores.union.sum()),
                           "false_alarm_defect_free": _f(pool.scores.false_alarm[~pool.scores.has_defect].mean())},
        "failures": {"defect_images": int(defect.sum()), "missed": int(missed.sum()),
                     "defect_free": int((~defect).sum()), "false_alarms": int(alarms.sum())},
        "mapped_missed": _summary(found), "type_agreement": {"images": len(known), "majority_hits": hits,
                                                             "chance_majority_class": round(chance, 3)},
        "slice": override, "hydra_override": hydra_override(SLICE, override) if override else None,
        "worst": [scores.keys[int(i)] for i in scores.loss.argsort(descending=True)[:8]],
    }
    if alarms.any():
        result["mapped_false_alarms"] = _summary(map_failures(scores.features[alarms], pool, k=args.neighbours))
    if seed == 0:
        worst = torch.nonzero(defect).squeeze(1)[scores.iou[defect].nan_to_num(0).argsort()[:8]]
        batch = collate_real([val[int(i)] for i in worst])
        save_png_atomic(prediction_grid(task, batch), ROOT / "docs" / "img" / "real_failures_examples.png")
    return result


def _compose(overrides: list[str], output_dir: Path):
    """The sim-to-real study's composition (``experiments/sim2real/run.py``): same configs, same root."""
    spec = importlib.util.spec_from_file_location("sim2real_run", ROOT / "experiments" / "sim2real" / "run.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module._compose(overrides, output_dir)


def _fit(overrides: list[str], state_dict: dict, out: Path) -> tuple[dict, dict, dict]:
    """Train from ``state_dict`` (weights only: a fresh optimizer and stream) under ``overrides``, then score
    the real test split; returns (test metrics, final weights, facts: seconds and the stream's slice shares)."""
    from synth_torch.app.train import build

    cfg = _compose(overrides, out)
    datamodule, model, trainer, _ = build(cfg)
    model.load_state_dict(state_dict)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    stream = datamodule.train_dataset
    shares = {} if stream is None else {name: round(p, 4) for name, p in stream.mixture.as_dict().items()}
    facts = {"seconds": round(seconds, 1), "slice_shares": shares}
    return metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}, facts


def retrain(seed: int, arm: str, args) -> dict:
    diag = json.loads((RESULTS / f"diagnose_seed{seed}.json").read_text())
    if arm == "region" and not diag["hydra_override"]:
        raise RuntimeError(f"diagnose_seed{seed}.json found no region to add")
    lo, hi = args.contrast
    base = ["experiment=sim2real_tile", "callbacks=none", "logger=csv", "test=true", "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0", f"seed={args.stream_seed + seed}"]
    region = {"unchanged": [], "region": [diag["hydra_override"]],
              "contrast": [f"+scenario.slices.real_contrast={{weight:{args.weight:g},"
                           f"defects:{{contrast:[{lo},{hi}]}}}}"],
              "dilution": [f"+scenario.slices.dilution={{weight:{args.weight:g}}}"]}[arm]
    synthetic = [*base, "data.schedule=synthetic_only", f"trainer.max_steps={args.extra_steps}", *region]
    out = LOGS / arm / f"seed{seed}"
    test_synth, weights, synth_facts = _fit(synthetic, _checkpoint(args.checkpoints, seed), out / "synthetic")
    finetune = [*base, "data.schedule=real_only", f"data.real_train_images={args.k}",
                f"trainer.max_steps={args.finetune_steps}"]
    test_ft, weights, ft_facts = _fit(finetune, weights, out / "finetune")
    task = _task(weights)
    test = _real("test", SynthDataset("defects", batch_size=8, resolution=RESOLUTION).scenario.class_names)
    scores = per_image_scores(task, DataLoader(test, batch_size=16, collate_fn=collate_real))
    return {"part": "retrain", "seed": seed, "arm": arm, "extra_synthetic_steps": args.extra_steps,
            "finetune_steps": args.finetune_steps, "k": args.k, "weight": args.weight if region else None,
            "synthetic_overrides": synthetic, "finetune_overrides": finetune,
            "checkpoint": args.checkpoints.format(seed=seed), "test_after_synthetic": test_synth,
            "test_after_finetune": test_ft, "per_type_after_finetune": per_type(scores, test),
            "synthetic_run": synth_facts, "finetune_seconds": ft_facts["seconds"]}


def _ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{float(t.mean()):.3f} ± {float(t.std()):.3f}" if len(t) > 1 else f"{float(t[0]):.3f}"


def report() -> str:
    """Markdown tables (mean ± std over seeds) of every result file in :data:`RESULTS`."""
    diag = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("diagnose_seed*.json"))]
    lines = [f"Diagnosis on the real val split, {len(diag)} seeds (seeds {[d['seed'] for d in diag]}):", "",
             "| real folder | images | fg IoU | recall | false-alarm share | apparent contrast (median) |",
             "|---|---|---|---|---|---|"]
    for g in diag[0]["per_type"] if diag else []:
        rows = [d["per_type"][g] for d in diag]
        lines.append(f"| {g} | {rows[0]['images']} | {_ms([r['iou'] for r in rows])} | "
                     f"{_ms([r['recall'] for r in rows])} | {_ms([r['false_alarm'] for r in rows])} | "
                     f"{rows[0].get('apparent_contrast', '-')} |")
    lines += ["", "| apparent-contrast tercile | images | fg IoU | recall |", "|---|---|---|---|"]
    for i in range(3 if diag else 0):
        rows = [d["by_apparent_contrast"][i] for d in diag]
        lo, hi = rows[0]["apparent_contrast"]
        lines.append(f"| [{lo}, {hi}) | {rows[0]['images']} | {_ms([r['iou'] for r in rows])} | "
                     f"{_ms([r['recall'] for r in rows])} |")
    lines += ["", "| seed | missed / defect images | false alarms / defect-free | gap | neighbours showing uneven "
              "(pool) | type agreement (chance) | region |", "|---|---|---|---|---|---|---|"]
    for d in diag:
        m, f, a = d["mapped_missed"], d["failures"], d["type_agreement"]
        un = m["type_share"].get("uneven", [math.nan, math.nan])
        lines.append(f"| {d['seed']} | {f['missed']} / {f['defect_images']} | {f['false_alarms']} / "
                     f"{f['defect_free']} | {m['gap']:.2f} | {un[0]:.2f} ({un[1]:.2f}) | {a['majority_hits']}/"
                     f"{a['images']} ({a['chance_majority_class']:.2f}) | `{' & '.join(m['predicates'])}` |")
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("retrain_*_seed*.json"))]
    if runs:
        lines += ["", "Real test split (mean ± std over seeds; paired by seed):", "",
                  "| arm | seeds | fg IoU after synthetic | fg AP after synthetic | fg IoU after fine-tune | "
                  "fg AP after fine-tune |", "|---|---|---|---|---|---|"]
        for arm in ARMS:
            rs = [r for r in runs if r["arm"] == arm]
            if rs:
                cols = [_ms([r[when][f"test/{m}/real"] for r in rs]) for when in ("test_after_synthetic",
                        "test_after_finetune") for m in ("fg_iou", "fg_ap")]
                lines.append(f"| {arm} | {[r['seed'] for r in rs]} | " + " | ".join(cols) + " |")
        lines += ["", "| seed | arm | IoU / AP after synthetic | IoU / AP after fine-tune | per type IoU after "
                  "fine-tune |", "|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))):
            s, t = r["test_after_synthetic"], r["test_after_finetune"]
            types = ", ".join(f"{g} {v['iou']:.3f}" for g, v in r["per_type_after_finetune"].items() if g != "free")
            lines.append(f"| {r['seed']} | {r['arm']} | {s['test/fg_iou/real']:.3f} / {s['test/fg_ap/real']:.3f} | "
                         f"{t['test/fg_iou/real']:.3f} / {t['test/fg_ap/real']:.3f} | {types} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("diagnose", "retrain", "report"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--checkpoints", default=CHECKPOINTS, help="synthetic-only checkpoint path with {seed}")
    ap.add_argument("--pool", type=int, default=1024, help="synthetic samples in the neighbour pool")
    ap.add_argument("--neighbours", type=int, default=8)
    ap.add_argument("--fail-loss", type=float, default=0.5, help="a val image fails when its loss is above this")
    ap.add_argument("--weight", type=float, default=1.0,
                    help="weight of the added slice (the defects scenario's slice weights sum to 1)")
    ap.add_argument("--arms", nargs="+", default=["unchanged", "region"], choices=ARMS)
    ap.add_argument("--contrast", nargs=2, type=float, default=[0.05, 0.3], metavar=("LO", "HI"),
                    help="arm contrast: a slice drawing defects.contrast from [LO, HI] (the low-contrast tail that the "
                         "real val defects' apparent contrast has and the scenario lacks)")
    ap.add_argument("--extra-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=100, help="real training images of the fine-tune")
    ap.add_argument("--stream-seed", type=int, default=1000, help="retrain runs use seed=<this + seed>")
    args = ap.parse_args(argv)
    if args.part == "report":
        print(report())
        return 0
    torch.set_num_threads(1)
    if not REAL.is_dir():
        raise FileNotFoundError(f"real magnetic_tile folder not found: {REAL}")
    for seed in args.seeds:
        for arm in args.arms if args.part == "retrain" else [None]:
            name = f"diagnose_seed{seed}.json" if arm is None else f"retrain_{arm}_seed{seed}.json"
            if (RESULTS / name).is_file():
                print(f"skip {name} (done)")
                continue
            start = time.perf_counter()
            result = diagnose(seed, args) if arm is None else retrain(seed, arm, args)
            _write(RESULTS / name, {**result, "wall_s": round(time.perf_counter() - start, 1), **_provenance()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
