"""Tables and plots of the sim-to-real study from its raw results (``experiments/sim2real/run.py``).

    python experiments/sim2real/report.py experiments/sim2real/results/main [--plots docs/img]

Writes, beside the results, ``summary.csv`` (one row per task x arm x K: mean, std and number of seeds of each
test metric, and the budgets) and ``report.md`` (the Markdown tables for docs/results.md), prints the Markdown,
and draws ``<plots>/sim2real_<study>_<task>.png`` (metric against K, one line per arm, mean +- std over seeds;
synthetic-only as a band).

The headline, the data-efficiency ratio: for each K, the number of real images ``K'`` with which real-only
training matches pretrain->finetune with K (real-only's mean metric, interpolated linearly in log K between the
measured K), divided by K. Where pretrain->finetune beats real-only at every measured K the ratio is censored
(``> K_max / K``); where it is below real-only at the smallest K, it is ``< K_min / K``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import ARMS, TASKS  # noqa: E402

from synth_torch.fileio import write_bytes_atomic, write_text_atomic  # noqa: E402

ARM_LABELS = {"synthetic_only": "synthetic only", "real_only": "real only", "pretrain_finetune": "pretrain -> finetune",
              "mixed": "mixed", "anneal": "anneal"}


#: ``<study>@selected`` names a study's runs scored at their checkpoint chosen on validation (run.py
#: ``--select-by-val``): their ``selected`` test metrics stand as ``test``
SELECTED = "@selected"


def load(results: Path) -> list[dict]:
    """Every run result under ``results`` (``<task>/<arm>_K<k>_seed<s>.json``). For ``<study>@selected``, those
    of ``<study>`` that train on real images, with the test metrics of their selected checkpoint."""
    selected = results.name.endswith(SELECTED)
    folder = results.with_name(results.name.removesuffix(SELECTED)) if selected else results
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]
    if not selected:
        return runs
    missing = [f"{r['arm']}_K{r['k']}_seed{r['seed']}" for r in runs
               if r["arm"] != "synthetic_only" and "selected" not in r]
    if missing:
        raise ValueError(f"{folder}: no selected checkpoint in {missing} (run without --select-by-val)")
    return [r | {"test": r["selected"]["test"]} for r in runs if r["arm"] != "synthetic_only"]


def summarise(runs: list[dict]) -> list[dict]:
    """Mean, std (0 for one seed) and seed count per task x arm x K, for each task's test metrics."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["arm"], r["k"])].append(r)
    rows = []
    for (task, arm, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]), kv[0][2])):
        row = {"task": task, "arm": arm, "k": k, "seeds": len(rs), "steps": rs[0]["budget"]["steps"],
               "real_images": rs[0]["budget"]["real_images"], "synthetic_images": rs[0]["budget"]["synthetic_images"],
               "wall_s": round(statistics.mean(r["wall_s"] for r in rs), 1)}
        for metric in TASKS[task]["metrics"]:
            values = [r["test"][metric] for r in rs if metric in r["test"]]
            row[metric] = statistics.mean(values) if values else math.nan
            row[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def efficiency(rows: list[dict], task: str, metric: str) -> list[tuple[int, float, str]]:
    """(K, pretrain->finetune mean, real images real-only needs to match it, as text) for each K."""
    real = sorted((r["k"], r[metric]) for r in rows if r["task"] == task and r["arm"] == "real_only")
    ours = sorted((r["k"], r[metric]) for r in rows if r["task"] == task and r["arm"] == "pretrain_finetune")
    if len(real) < 2:
        return []
    out = []
    for k, m in ours:
        if m <= real[0][1]:
            out.append((k, m, f"< {real[0][0] / k:.2g}x (real-only with {real[0][0]} is already better)"))
            continue
        match = None
        for (k0, m0), (k1, m1) in zip(real, real[1:]):
            if m0 < m <= m1:  # the first crossing, linear in log K
                t = (m - m0) / (m1 - m0)
                match = math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
                break
        if match is None:
            out.append((k, m, f"> {real[-1][0] / k:.2g}x (beats real-only with {real[-1][0]})"))
        else:
            out.append((k, m, f"{match / k:.2g}x (real-only needs ~{match:.0f})"))
    return out


def markdown(rows: list[dict], study: str) -> str:
    lines = [f"### Study `{study}`", ""]
    for task in sorted({r["task"] for r in rows}):
        metrics = TASKS[task]["metrics"]
        ks = sorted({r["k"] for r in rows if r["task"] == task and r["k"]})
        lines += [f"#### {task}: {', '.join(metrics)} on the real test split (mean ± std over seeds)", ""]
        for metric in metrics:
            lines += [f"*{metric}*", ""]
            lines.append(f"| arm | {' | '.join(f'K={k}' for k in ks)} | seeds | steps | real / synthetic images |")
            lines.append("|---" * (len(ks) + 4) + "|")
            for arm in ARMS:
                mine = {r["k"]: r for r in rows if r["task"] == task and r["arm"] == arm}
                if not mine:
                    continue
                cells = []
                for k in ks:
                    r = mine.get(k, mine.get(0))  # synthetic-only has no K: the same value in every column
                    cells.append("" if r is None else f"{r[metric]:.3f} ± {r[f'{metric} std']:.3f}")
                any_row = next(iter(mine.values()))
                lines.append(f"| {ARM_LABELS[arm]} | {' | '.join(cells)} | {any_row['seeds']} | {any_row['steps']} "
                             f"| {any_row['real_images']} / {any_row['synthetic_images']} |")
            lines.append("")
        eff = efficiency(rows, task, metrics[0])
        if eff:
            lines += [f"Data-efficiency ratio ({metrics[0]}): real images real-only training needs to match "
                      f"pretrain -> finetune with K, divided by K.", "",
                      "| K | pretrain -> finetune | ratio |", "|---|---|---|"]
            lines += [f"| {k} | {m:.3f} | {text} |" for k, m, text in eff]
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = TASKS[task]["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4))
    ks = sorted({r["k"] for r in rows if r["task"] == task and r["k"]})
    for ax, metric in zip(axes, metrics):
        for arm in ARMS:
            mine = sorted((r for r in rows if r["task"] == task and r["arm"] == arm), key=lambda r: r["k"])
            if not mine:
                continue
            if arm == "synthetic_only":
                m, s = mine[0][metric], mine[0][f"{metric} std"]
                ax.axhspan(m - s, m + s, color="0.85", label=f"{ARM_LABELS[arm]} ({m:.3f})")
                continue
            ax.errorbar([r["k"] for r in mine], [r[metric] for r in mine], yerr=[r[f"{metric} std"] for r in mine],
                        marker="o", capsize=3, label=ARM_LABELS[arm])
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set(xlabel="real training images K", ylabel=metric, title=f"{task}: {metric}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    write_bytes_atomic(path, buffer.getvalue())
    plt.close(fig)


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV, one column per key in order of first appearance."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def write_files(files: dict[Path, str]) -> None:
    """Writes each path's text atomically (making its folder)."""
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, content)


def report_files(results: Path, rows: list[dict]) -> dict[Path, str]:
    """The texts of ``<results>/summary.csv`` and ``<results>/report.md`` for :func:`summarise`'s ``rows``
    (for ``<study>@selected``, in ``<study>/selected/``)."""
    study = results.name
    if study.endswith(SELECTED):
        results = results.with_name(study.removesuffix(SELECTED)) / "selected"
    return {results / "summary.csv": csv_text(rows), results / "report.md": markdown(rows, study) + "\n"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="experiments/sim2real/results/<study>")
    ap.add_argument("--plots", type=Path, default=HERE.parents[1] / "docs" / "img")
    args = ap.parse_args(argv)
    runs = load(args.results)
    if not runs:
        print(f"no results under {args.results}", file=sys.stderr)
        return 1
    rows = summarise(runs)
    files = report_files(args.results, rows)
    write_files(files)
    print(files[args.results / "report.md"], end="")
    for task in sorted({r["task"] for r in rows}):
        path = args.plots / f"sim2real_{args.results.name}_{task}.png"
        plot(rows, task, path)
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
