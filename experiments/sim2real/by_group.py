"""Which real defect types transfer: one study's test scores per group of the real test split (magnetic_tile:
each defect class, and false alarms on the defect-free tiles), pretrain -> finetune against real only, paired by
seed at each K; or against an arm of another study (``--base-study``, ``--base``), e.g. one scenario's
pretrain -> finetune against another's.

    python experiments/sim2real/by_group.py experiments/sim2real/results/groups --out experiments/sim2real/results/groups/by_group
    python experiments/sim2real/by_group.py experiments/sim2real/results/matched --base-study experiments/sim2real/results/groups \
        --base pretrain_finetune --out experiments/sim2real/results/matched/by_group_vs_main

Needs runs that scored the test split per group (``test/<metric>/real/<group>``, commit f7a081d and later). A
defect class is scored by foreground IoU (``fg_iou``); the defect-free group, which has no foreground, by its
false-alarm share (the share of its pixels flagged as defect, ``1 - test/class_iou/background/real/Free``; lower
is better). Writes ``<out>.csv`` and ``<out>.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import paired, table_files  # noqa: E402
from report import load, write_files  # noqa: E402

DEFECT_FREE = "Free"
PREFIX = "test/fg_iou/real/"


def score(test: dict, group: str) -> float:
    """A run's score of one group: foreground IoU, or for the defect-free group its false-alarm share."""
    if group == DEFECT_FREE:
        return 1.0 - test[f"test/class_iou/background/real/{group}"]
    return test[PREFIX + group]


def _index(runs: list[dict], arm: str) -> dict:
    return {(r["k"], r["seed"]): r["test"] for r in runs
            if r["arm"] == arm and any(k.startswith(PREFIX) for k in r["test"])}


def by_group(runs: list[dict], arm: str = "pretrain_finetune", base: str = "real_only",
             base_runs: list[dict] | None = None, base_label: str | None = None) -> list[dict]:
    """One row per K x group: ``arm`` of ``runs`` and ``base`` of ``base_runs`` (default: ``runs``) mean ± std
    over their common seeds, and the paired difference. ``base_label`` names the base's columns (default
    ``base``)."""
    ours, theirs = _index(runs, arm), _index(runs if base_runs is None else base_runs, base)
    label = base_label or base
    rows = []
    for k in sorted({key[0] for key in ours}):
        seeds = sorted(s for (kk, s) in ours if kk == k and (k, s) in theirs)
        if not seeds:
            continue
        groups = sorted({key[len(PREFIX):] for s in seeds for key in ours[(k, s)] if key.startswith(PREFIX)}
                        | {DEFECT_FREE}, key=lambda g: (g == DEFECT_FREE, g))
        for group in groups:
            a = [score(ours[(k, s)], group) for s in seeds]
            b = [score(theirs[(k, s)], group) for s in seeds]
            mean, lo, hi, diff = paired(a, b)
            rows.append({"k": k, "group": group, "metric": "false_alarm" if group == DEFECT_FREE else "fg_iou",
                         "seeds": " ".join(map(str, seeds)), arm: statistics.mean(a),
                         f"{arm} std": statistics.stdev(a) if len(a) > 1 else 0.0, label: statistics.mean(b),
                         f"{label} std": statistics.stdev(b) if len(b) > 1 else 0.0, "diff": mean, "diff lo": lo,
                         "diff hi": hi, "diffs": " ".join(f"{d:+.3f}" for d in diff)})
    return rows


def markdown(rows: list[dict], arm: str = "pretrain_finetune", base: str = "real_only") -> str:
    lines = [f"| K | group | score | {arm} | {base} | difference [95 % CI] | per seed |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "(one seed)" if math.isnan(r["diff lo"]) else f"[{r['diff lo']:+.3f}, {r['diff hi']:+.3f}]"
        lines.append(f"| {r['k']} | {r['group']} | {r['metric']} | {r[arm]:.3f} ± {r[f'{arm} std']:.3f} "
                     f"| {r[base]:.3f} ± {r[f'{base} std']:.3f} | {r['diff']:+.3f} {ci} | {r['diffs']} |")
    return "\n".join(lines)


def by_group_files(study: Path, out: Path, arm: str = "pretrain_finetune", base: str = "real_only",
                   base_study: Path | None = None) -> dict[Path, str]:
    """:func:`by_group` of the runs under ``study`` (base arm from ``base_study``, default ``study``) as
    ``<out>.csv`` and ``<out>.md`` texts; empty if no run was scored per group against a base of the same K
    and seed."""
    label = base if base_study is None else f"{base} ({base_study.name})"
    rows = by_group(load(study), arm, base, None if base_study is None else load(base_study), label)
    return table_files(out, rows, markdown(rows, arm, label)) if rows else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="a study's results folder, e.g. experiments/sim2real/results/groups")
    ap.add_argument("--out", type=Path, required=True, help="writes <out>.csv and <out>.md")
    ap.add_argument("--arm", default="pretrain_finetune")
    ap.add_argument("--base", default="real_only", help="the arm compared against")
    ap.add_argument("--base-study", type=Path, default=None, help="the base arm's study folder (default: study)")
    args = ap.parse_args(argv)
    files = by_group_files(args.study, args.out, args.arm, args.base, args.base_study)
    if not files:
        print(f"no {args.arm} runs in {args.study} with {args.base} runs of the same K and seed in "
              f"{args.base_study or args.study} were scored per group", file=sys.stderr)
        return 1
    write_files(files)
    print(files[args.out.with_suffix(".md")], end="")
    return 0

if __name__ == "__main__":
    sys.exit(main())
