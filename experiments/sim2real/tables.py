"""Every table of the sim-to-real study, regenerated from the raw results in one command.

    python experiments/sim2real/tables.py            # rewrite the tables that changed
    python experiments/sim2real/tables.py --check    # exit 1 naming the tables that are not up to date
    python experiments/sim2real/tables.py --plots docs/img   # also redraw the curves docs/results.md shows

The tables are those ``report.py``, ``compare.py`` and ``by_group.py`` write (``summary.csv`` / ``report.md``
beside a study, ``compare*.{csv,md}``, ``by_group*.{csv,md}``; ``<study>@selected``: a study's runs scored at
the checkpoint chosen on validation, see ``report.load``); the lists below say which study is reported or
compared against which, as ``docs/results.md`` quotes them. A study added there is added here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from by_group import by_group_files  # noqa: E402
from compare import compare_files  # noqa: E402
from curves import plot_curves  # noqa: E402
from report import load, plot, report_files, summarise, write_files  # noqa: E402

RESULTS = HERE / "results"
#: studies with their own ``report.md`` (mean ± std per arm and K)
REPORTS = ("main", "val_selected", "val_selected@selected", "ema", "real_long", "cosine", "cosine@selected",
           "cosine_long", "hires", "fruits_cn", "fruits_cn_r3000", "pilot", "pilot2", "pilot_r400")
#: (study, task) of the curves ``docs/results.md`` shows, drawn by ``--plots``
PLOTS = (("main", "tile"), ("fruits_cn", "fruits"))
#: (study, K) of the validation curves ``docs/results.md`` shows, drawn by ``--plots``
CURVES = (("val_selected", 25), ("val_selected", 100), ("real_long", 100), ("cosine", 100),
          ("cosine_long", 100))
#: ``<out>``: (base study, compared studies, base arm), paired by seed with the base's same arm (base arm None)
#: or with its base arm at the same K
COMPARES = {
    "compare": ("main", ("ablate_sensor", "ablate_texture", "ablate_lighting", "balanced", "s100k", "real_texture",
                         "matched", "matched2", "matched3", "val_selected"), None),
    "compare_vs_real_only": ("main", ("real_texture", "matched", "matched2", "matched3"), "real_only"),
    "compare_vs_matched2": ("matched2", ("matched3",), None),
    "compare_selected": ("val_selected", ("val_selected@selected",), None),
    "compare_selected_vs_real_only": ("val_selected@selected", ("val_selected@selected",), "real_only"),
    "compare_ema": ("val_selected", ("ema",), None),
    "compare_real_long": ("val_selected", ("real_long", "real_long@selected"), None),
    "compare_real_long_vs_pretrain": ("val_selected", ("real_long",), "pretrain_finetune"),
    "compare_ema_vs_real_only": ("ema", ("ema",), "real_only"),
    "compare_real_long_ema_vs_pretrain": ("ema", ("real_long_ema",), "pretrain_finetune"),
    "compare_cosine": ("val_selected", ("cosine",), None),
    "compare_cosine_vs_ema": ("ema", ("cosine",), None),
    "compare_cosine_vs_real_only": ("cosine", ("cosine",), "real_only"),
    "compare_cosine_selected_vs_real_only": ("cosine@selected", ("cosine@selected",), "real_only"),
    "compare_cosine_long_vs_pretrain": ("cosine", ("cosine_long",), "pretrain_finetune"),
    "compare_hires": ("hires", ("hires_matched", "hires_matched2"), None),
    "compare_hires_vs_real_only": ("hires", ("hires_matched", "hires_matched2"), "real_only"),
}
#: ``<out>``: (study, arm, base arm, base study or None for the same study), per class of the real test split
BY_GROUP = {
    "groups/by_group": ("groups", "pretrain_finetune", "real_only", None),
    "hires/by_group": ("hires", "pretrain_finetune", "real_only", None),
    "matched/by_group_vs_main": ("matched", "pretrain_finetune", "pretrain_finetune", "groups"),
    "matched/by_group_vs_real_only": ("matched", "pretrain_finetune", "real_only", "groups"),
    "matched2/by_group_vs_main": ("matched2", "pretrain_finetune", "pretrain_finetune", "groups"),
    "matched2/by_group_vs_real_only": ("matched2", "pretrain_finetune", "real_only", "groups"),
    "matched3/by_group_vs_main": ("matched3", "pretrain_finetune", "pretrain_finetune", "groups"),
    "matched3/by_group_vs_real_only": ("matched3", "pretrain_finetune", "real_only", "groups"),
    "matched3/by_group_vs_matched2": ("matched3", "pretrain_finetune", "pretrain_finetune", "matched2"),
    "val_selected/by_group_selected": ("val_selected@selected", "pretrain_finetune", "real_only", None),
    "ema/by_group": ("ema", "pretrain_finetune", "real_only", None),
    "cosine/by_group": ("cosine", "pretrain_finetune", "real_only", None),
    "hires_matched/by_group_vs_hires": ("hires_matched", "pretrain_finetune", "pretrain_finetune", "hires"),
    "hires_matched/by_group_vs_real_only": ("hires_matched", "pretrain_finetune", "real_only", "hires"),
    "hires_matched2/by_group_vs_hires": ("hires_matched2", "pretrain_finetune", "pretrain_finetune", "hires"),
    "hires_matched2/by_group_vs_real_only": ("hires_matched2", "pretrain_finetune", "real_only", "hires"),
}


def tables(results: Path = RESULTS) -> dict[Path, str]:
    """Path -> text of every table that the raw results under ``results`` support (a listed study without runs
    yet contributes nothing)."""
    files: dict[Path, str] = {}
    for study in REPORTS:
        runs = load(results / study)
        if runs:
            files.update(report_files(results / study, summarise(runs)))
    for out, (base, studies, base_arm) in COMPARES.items():
        files.update(compare_files(results, base, list(studies), results / out, base_arm))
    for out, (study, arm, base, base_study) in BY_GROUP.items():
        files.update(by_group_files(results / study, results / out, arm, base,
                                    None if base_study is None else results / base_study))
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    """The paths whose text on disk differs from ``files`` (or that do not exist)."""
    return [path for path, text in files.items() if not path.is_file() or path.read_text() != text]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is not up to date")
    ap.add_argument("--plots", type=Path, default=None, help="also draw PLOTS as <plots>/sim2real_<study>_<task>.png")
    args = ap.parse_args(argv)
    files = tables(args.results)
    changed = stale(files)
    for path in changed:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    print(f"{len(files)} tables, {len(changed)} {'stale' if args.check else 'rewritten'}")
    if args.check:
        return 1 if changed else 0
    write_files({path: files[path] for path in changed})
    if args.plots is not None:
        for study, task in PLOTS:
            plot(summarise(load(args.results / study)), task, args.plots / f"sim2real_{study}_{task}.png")
        for study, k in CURVES:
            plot_curves(load(args.results / study), k, args.plots / f"sim2real_{study}_curves_K{k}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
