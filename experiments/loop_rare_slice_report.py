"""Summarise the rare-slice proof runs (experiments/loop_rare_slice.sh): per-arm mean and worst-slice metrics
over seeds as a Markdown table, and a plot of the slice weights over time (docs/img/rare_slice_weights.png).

    python experiments/loop_rare_slice_report.py logs/rare_slice [--plot docs/img/rare_slice_weights.png]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from pathlib import Path

from synth_torch.fileio import write_bytes_atomic

SLICES = ("base", "low_contrast_defect", "small_defect", "blurry")
METRIC = "fg_iou"


def last_val_row(metrics_csv: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(f"val/{METRIC}")]
    if not rows:
        raise ValueError(f"no validation row in {metrics_csv}")
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}


def trained_samples(history: list[dict], slice_index: int, steps: int, batch_size: int = 8) -> float:
    """Expected number of training samples of one slice: the weight in force between rounds x images per step."""
    total, prev_step, weight = 0.0, 0, history[0]["weights_before"][slice_index]
    for h in history:
        total += (h["step"] - prev_step) * batch_size * weight
        prev_step, weight = h["step"], h["weights"][slice_index]
    return total + (steps - prev_step) * batch_size * weight


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--plot", type=Path, default=Path("docs/img/rare_slice_weights.png"))
    args = ap.parse_args()
    arms = sorted(p.name for p in args.out.iterdir() if p.is_dir())
    results: dict[str, list[dict]] = {}
    for arm in arms:
        for run in sorted((args.out / arm).glob("seed*")):
            m = run / "csv" / "metrics.csv"
            if not m.is_file():
                continue
            row = last_val_row(m)
            per = {s: row[f"val/{METRIC}/{s}"] for s in SLICES}
            miner = json.loads((run / "slice_miner.json").read_text())
            results.setdefault(arm, []).append({
                "seed": run.name, "per": per, "mean": sum(per.values()) / len(per), "worst": min(per.values()),
                "worst_slice": min(per, key=per.get), "pooled": row[f"val/{METRIC}"],
                "final_weights": dict(zip(miner["history"][-1]["names"], miner["history"][-1]["weights"])),
                "seen_low": trained_samples(miner["history"], SLICES.index("low_contrast_defect"),
                                            int(row.get("step", 0)) or miner["history"][-1]["step"]),
                "history": miner["history"]})
    cols = ["arm", "seeds", f"slice-mean {METRIC}", f"worst-slice {METRIC}", *SLICES,
            "final weight of low_contrast_defect", "low_contrast_defect images trained on (expected)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for arm, runs in results.items():
        cells = [arm, str(len(runs)), mean_std([r["mean"] for r in runs]), mean_std([r["worst"] for r in runs])]
        cells += [mean_std([r["per"][s] for r in runs]) for s in SLICES]
        cells.append(mean_std([r["final_weights"]["low_contrast_defect"] for r in runs]))
        cells.append(f"{statistics.mean(r['seen_low'] for r in runs):.0f}")
        print("| " + " | ".join(cells) + " |")
    print()
    print("Per seed (slice-mean / worst / worst slice):")
    for arm, runs in results.items():
        print(f"  {arm}: " + "; ".join(f"{r['seed']} {r['mean']:.3f} / {r['worst']:.3f} / {r['worst_slice']}"
                                       for r in runs))
    reweighted = {arm: runs for arm, runs in results.items()
                  if any(h["weights"] != runs[0]["history"][0]["weights_before"] for h in runs[0]["history"][1:])}
    if reweighted:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        arm, runs = next(iter(reweighted.items()))
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        colors = dict(zip(SLICES, ("tab:gray", "tab:red", "tab:blue", "tab:green")))
        for r in runs:
            steps = [0] + [h["step"] for h in r["history"]]
            for i, s in enumerate(SLICES):
                w = [r["history"][0]["weights_before"][i]] + [h["weights"][i] for h in r["history"]]
                axes[0].plot(steps, w, color=colors[s], alpha=0.8, label=s if r is runs[0] else None)
                loss = [h["loss"][i] for h in r["history"]]
                axes[1].plot(steps[1:], loss, color=colors[s], alpha=0.8, label=s if r is runs[0] else None)
        axes[0].set(title=f"{arm}: slice weights ({len(runs)} seeds)", xlabel="training step", ylabel="weight")
        axes[1].set(title="per-slice suite loss (1 - soft Dice)", xlabel="training step", ylabel="loss")
        axes[0].legend(fontsize=8)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format="png")
        write_bytes_atomic(args.plot, buffer.getvalue())
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
