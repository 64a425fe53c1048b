"""Tables and plots of the rare-slice loop study (experiments/loop/run.py) from its raw results.

    python experiments/loop/report.py experiments/loop/results/main [--plots docs/img] [--last 4]

Per run, the score of a slice is its foreground IoU averaged over the last ``--last`` validations (the end of a
one-cycle schedule, where the curves are flat); the *worst slice* is the minimum over the slices that have
foreground (``defect_free`` has none), the *slice mean* their mean. Every arm is compared with ``fixed`` on the
same seeds (paired: same initialisation, same suites), with a 95 % t-interval of the mean difference and a paired
t-test. Prints Markdown; with ``--plots`` writes ``loop_study_weights.png`` (the rules' slice weights over time)
and ``loop_study_curves.png`` (worst-slice IoU over training).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from pathlib import Path

from scipy import stats

from synth_torch.fileio import writable_folder, write_bytes_atomic

BASELINE = "fixed"
ORDER = ("uniform", "fixed", "group_dro", "plr", "exp3", "group_dro_mining", "group_dro_floor", "plr_floor")


def load(folder: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*/seed*.json")):
        r = json.loads(path.read_text())
        runs.setdefault(r["arm"], {})[int(r["seed"])] = r
    return runs


def fg_slices(run: dict) -> list[str]:
    """Slices scored by foreground IoU (a slice without foreground has no ``val/fg_iou/<slice>``)."""
    names = run["rounds"][0]["names"]
    return [n for n in names if any(f"val/fg_iou/{n}" in row for row in run["curve"])]


def scores(run: dict, last: int) -> dict[str, float]:
    """Per-slice fg IoU averaged over the last ``last`` validations, plus ``worst`` and ``mean``."""
    rows = run["curve"][-last:]
    per = {n: statistics.mean(row[f"val/fg_iou/{n}"] for row in rows) for n in fg_slices(run)}
    return per | {"worst": min(per.values()), "mean": statistics.mean(per.values())}


def interval(diffs: list[float]) -> tuple[float, float, float, float]:
    """(mean, lower, upper, p) of a paired difference: 95 % t-interval and two-sided t-test."""
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, float("nan"), float("nan"), float("nan")
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    half = stats.t.ppf(0.975, len(diffs) - 1) * se
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if se > 0 else float("nan")
    return m, m - half, m + half, p


def table(runs: dict[str, dict[int, dict]], last: int) -> str:
    arms = [a for a in ORDER if a in runs] + sorted(set(runs) - set(ORDER))
    base = {s: scores(r, last) for s, r in runs.get(BASELINE, {}).items()}
    uniform = {s: scores(r, last) for s, r in runs.get("uniform", {}).items()}
    some = next(iter(next(iter(runs.values())).values()))
    slices = fg_slices(some)
    out = [f"| arm | seeds | worst slice | slice mean | {' | '.join(slices)} | worst - fixed [95 % CI], p "
           f"| mean - fixed [95 % CI] | worst - uniform [95 % CI], p |", "|" + "---|" * (len(slices) + 7)]
    for arm in arms:
        sc = {s: scores(r, last) for s, r in runs[arm].items()}
        cells = [arm, str(len(sc))]
        for key in ("worst", "mean", *slices):
            xs = [v[key] for v in sc.values()]
            cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}")
        for ref_arm, ref, key in ((BASELINE, base, "worst"), (BASELINE, base, "mean"), ("uniform", uniform, "worst")):
            paired = sorted(set(sc) & set(ref))
            if arm == ref_arm or not paired:
                cells.append("")
                continue
            m, lo, hi, p = interval([sc[s][key] - ref[s][key] for s in paired])
            cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (f", p = {p:.2g}" if key == "worst" else ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_seed(runs: dict[str, dict[int, dict]], last: int) -> str:
    arms = [a for a in ORDER if a in runs]
    seeds = sorted({s for arm in arms for s in runs[arm]})
    out = ["| seed | " + " | ".join(arms) + " |", "|" + "---|" * (len(arms) + 1)]
    for s in seeds:
        cells = [f"{scores(runs[a][s], last)['worst']:.3f}" if s in runs[a] else "" for a in arms]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def final_weights(runs: dict[str, dict[int, dict]]) -> str:
    arms = [a for a in ORDER if a in runs]
    names = runs[arms[0]][next(iter(runs[arms[0]]))]["rounds"][0]["names"]
    out = ["| arm | " + " | ".join(names) + " | mined |", "|" + "---|" * (len(names) + 2)]
    for arm in arms:
        finals = [r["rounds"][-1]["weights"] for r in runs[arm].values()]
        cells = [f"{statistics.mean(w[i] for w in finals):.3f}" for i in range(len(names))]
        mined = sorted({m["name"] for r in runs[arm].values() for m in r["mined"]})
        out.append(f"| {arm} | " + " | ".join(cells) + f" | {', '.join(mined) or '-'} |")
    return "\n".join(out)


def plots(runs: dict[str, dict[int, dict]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = [a for a in ORDER[2:] if a in runs]
    cols = min(3, len(rules))
    rows = -(-len(rules) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(rules):]:
        ax.axis("off")
    for ax, arm in zip(axes.flat, rules):
        for seed, r in sorted(runs[arm].items()):
            names = r["rounds"][0]["names"]
            steps = [h["step"] for h in r["rounds"]]
            for i, name in enumerate(names):
                ax.plot(steps, [h["weights"][i] for h in r["rounds"]], color=f"C{i}", alpha=0.5, lw=1,
                        label=name if seed == min(runs[arm]) else None)
        ax.set_title(arm)
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("slice weight (a line per seed)")
    axes.flat[0].legend(fontsize=7)
    _save(fig, folder / "loop_study_weights.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for j, arm in enumerate([a for a in ORDER if a in runs]):
        curves = [[min(row[f"val/fg_iou/{n}"] for n in fg_slices(r)) for row in r["curve"]] for r in runs[arm].values()]
        steps = [row["step"] + 1 for row in next(iter(runs[arm].values()))["curve"]]
        mean = [statistics.mean(c[i] for c in curves) for i in range(len(steps))]
        ax.plot(steps, mean, marker="o", ms=3, color=f"C{j}", label=f"{arm} ({len(curves)} seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("worst-slice fg IoU (mean over seeds)")
    ax.legend(fontsize=7)
    _save(fig, folder / "loop_study_curves.png")


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    writable_folder(path.parent)
    write_bytes_atomic(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--last", type=int, default=4, help="validations averaged at the end of each run")
    ap.add_argument("--plots", type=Path, default=None)
    args = ap.parse_args()
    runs = load(args.results)
    if not runs:
        raise SystemExit(f"no results under {args.results}")
    print(table(runs, args.last), "\n\nWorst-slice fg IoU per seed:\n", per_seed(runs, args.last),
          "\n\nFinal slice weights (mean over seeds):\n", final_weights(runs), sep="\n")
    if args.plots:
        plots(runs, args.plots)


if __name__ == "__main__":
    main()
