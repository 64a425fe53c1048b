"""Studies that change one thing, against the study they change: the ablations of the `defects` stream
(sensor effects, texture, lighting) and class-balanced real sampling, each paired by seed with the same arm
and K of the base study.

    python experiments/sim2real/compare.py experiments/sim2real/results --base main \\
        --studies ablate_sensor ablate_texture ablate_lighting balanced --out experiments/sim2real/results/compare
    python experiments/sim2real/compare.py experiments/sim2real/results --base main --base-arm real_only \\
        --studies matched --out experiments/sim2real/results/compare_vs_real_only

For every task x arm x K that a compared study ran, the row holds the study's and the base's mean ± std over
the seeds both ran (the base's same arm, or its ``--base-arm``, e.g. real only as the targets' baseline), the paired difference per seed (study minus base), its mean and 95 % t-interval, and, where
``<study>/realism_<task>.json`` exists (``realism.py``), the Fréchet distance of the study's stream to the real
images beside the base's. Writes ``<out>.csv`` and ``<out>.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import ARM_LABELS, csv_text, load, write_files  # noqa: E402
from run import TASKS  # noqa: E402


def _realism(results: Path, study: str, task: str) -> float | None:
    path = results / study / f"realism_{task}.json"
    return json.loads(path.read_text())["frechet"] if path.is_file() else None


def paired(a: list[float], b: list[float]) -> tuple[float, float, float, list[float]]:
    """Mean of the paired differences ``a - b``, its 95 % t-interval (NaN bounds for one pair) and the
    differences."""
    diff = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(diff)
    half = stats.t.ppf(0.975, len(diff) - 1) * statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else math.nan
    return mean, mean - half, mean + half, diff


def compare(results: Path, base: str, study: str, base_arm: str | None = None) -> list[dict]:
    """One row per task x arm x K of ``study``: paired by seed against ``base``'s same arm and K (or its
    ``base_arm`` at that K) on each test metric."""
    ours = {(r["task"], r["arm"], r["k"], r["seed"]): r for r in load(results / study)}
    theirs = {(r["task"], r["arm"], r["k"], r["seed"]): r for r in load(results / base)}
    rows = []
    for task, arm, k in sorted({key[:3] for key in ours}):
        other = base_arm or arm
        if (base, other) == (study, arm):
            continue
        seeds = sorted(s for (t, a, kk, s) in ours if (t, a, kk) == (task, arm, k) and (t, other, kk, s) in theirs)
        if not seeds:
            continue
        row = {"study": study, "base": base, "base_arm": other, "task": task, "arm": arm, "k": k,
               "seeds": " ".join(map(str, seeds)),
               "frechet": _realism(results, study, task),
               "base_frechet": None if base_arm else _realism(results, base, task)}
        for metric in TASKS[task]["metrics"]:
            a = [ours[(task, arm, k, s)]["test"][metric] for s in seeds]
            b = [theirs[(task, other, k, s)]["test"][metric] for s in seeds]
            mean, lo, hi, diff = paired(a, b)
            row.update({metric: statistics.mean(a), f"{metric} std": statistics.stdev(a) if len(a) > 1 else 0.0,
                        f"base {metric}": statistics.mean(b),
                        f"base {metric} std": statistics.stdev(b) if len(b) > 1 else 0.0,
                        f"{metric} diff": mean, f"{metric} diff lo": lo, f"{metric} diff hi": hi,
                        f"{metric} diffs": " ".join(f"{d:+.3f}" for d in diff)})
        rows.append(row)
    return rows


def _interval(row: dict, metric: str) -> str:
    lo, hi = row[f"{metric} diff lo"], row[f"{metric} diff hi"]
    return "(one seed)" if math.isnan(lo) else f"[{lo:+.3f}, {hi:+.3f}]"


def markdown(rows: list[dict], base_arm: str | None = None) -> str:
    against = "base" if base_arm is None else f"the base's {ARM_LABELS[base_arm]}"
    lines = []
    for task in sorted({r["task"] for r in rows}):
        metric, second = TASKS[task]["metrics"][:2]
        lines += [f"{task}, `{metric}` on the real test split; difference = study minus {against} at the same K, "
                  f"paired by seed, with its 95 % t-interval; `{second}` difference beside it:", "",
                  f"| study | arm | K | seeds | study | base | difference | per seed | {second} difference "
                  f"| Fréchet (base) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["task"] != task:
                continue
            realism = ("-" if r["frechet"] is None else
                       f"{r['frechet']:.3f} ({r['base_frechet']:.3f})" if r["base_frechet"] is not None
                       else f"{r['frechet']:.3f}")
            lines.append(f"| {r['study']} | {ARM_LABELS[r['arm']]} | {r['k']} | {r['seeds']} "
                         f"| {r[metric]:.3f} ± {r[f'{metric} std']:.3f} "
                         f"| {r[f'base {metric}']:.3f} ± {r[f'base {metric} std']:.3f} "
                         f"| {r[f'{metric} diff']:+.3f} {_interval(r, metric)} "
                         f"| {r[f'{metric} diffs']} | {r[f'{second} diff']:+.3f} | {realism} |")
        lines.append("")
    return "\n".join(lines)


def table_files(out: Path, rows: list[dict], text: str) -> dict[Path, str]:
    """``rows`` as the CSV text of ``<out>.csv`` and the Markdown ``text`` as ``<out>.md``."""
    return {out.with_suffix(".csv"): csv_text(rows), out.with_suffix(".md"): text + "\n"}


def compare_files(results: Path, base: str, studies: list[str], out: Path,
                  base_arm: str | None = None) -> dict[Path, str]:
    """The comparison tables of ``studies`` against ``base`` (``<out>.csv``, ``<out>.md``); empty if no run of
    them shares a seed with ``base``."""
    rows = [row for study in studies for row in compare(results, base, study, base_arm)]
    return table_files(out, rows, markdown(rows, base_arm)) if rows else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="experiments/sim2real/results")
    ap.add_argument("--base", default="main")
    ap.add_argument("--base-arm", choices=list(ARM_LABELS), default=None,
                    help="pair with this arm of the base instead of the same arm")
    ap.add_argument("--studies", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True, help="writes <out>.csv and <out>.md")
    args = ap.parse_args(argv)
    files = compare_files(args.results, args.base, args.studies, args.out, args.base_arm)
    if not files:
        print(f"no run of {args.studies} has a seed in common with {args.base}", file=sys.stderr)
        return 1
    write_files(files)
    print(files[args.out.with_suffix(".md")], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
