"""Validation curves of a study's real-data runs: the real validation metric against the real training step
(``pretrain_finetune``'s steps counted from its switch to real data), one line per arm and seed. They show how
much a run's figure depends on the step it stops at.

    python experiments/sim2real/curves.py experiments/sim2real/results/val_selected --k 25 --out docs/img/x.png
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import ARM_LABELS, load  # noqa: E402

from synth_torch.fileio import write_bytes_atomic  # noqa: E402


def curves(runs: list[dict], k: int, metric: str) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """(arm, seed) -> [(real step, ``metric``)] of the runs at ``k`` real images that validated on it."""
    out = {}
    for r in runs:
        if r["k"] != k:
            continue
        first = r["steps"] - r["budget"]["real_steps"] if r["arm"] == "pretrain_finetune" else 0
        points = [(c["step"] + 1 - first, c[metric]) for c in r.get("curve", []) if metric in c and c["step"] >= first]
        if points:
            out[(r["arm"], r["seed"])] = points
    return out


def plot_curves(runs: list[dict], k: int, path: Path, metric: str = "val/fg_iou/real") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = {}
    for (arm, seed), points in sorted(curves(runs, k, metric).items()):
        colour = colours.setdefault(arm, f"C{len(colours)}")
        ax.plot(*zip(*points), marker="osD^"[seed // 4 % 4], color=colour, alpha=0.8,
                linestyle=("-", "--", ":", "-.")[seed % 4],
                label=f"{ARM_LABELS[arm]}, seed {seed}")
    ax.set(xlabel="real training step", ylabel=metric, title=f"K = {k}: {metric} during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="experiments/sim2real/results/<study>")
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--metric", default="val/fg_iou/real")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    plot_curves(load(args.study), args.k, args.out, args.metric)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
