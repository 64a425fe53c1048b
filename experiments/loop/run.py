"""The rare-slice loop study (issue 11, docs/results.md): arms x seeds, one training run each, every run's raw
result written to ``experiments/loop/results/<study>/<arm>/seed<s>.json`` the moment it finishes. A finished run
is skipped, so an interrupted study resumes where it stopped. Runs go seed by seed, so a partial study still
holds complete, paired sets of arms.

    python experiments/loop/run.py --study main --seeds 0 1 2 3 4            # every arm
    python experiments/loop/run.py --study main --arms fixed group_dro --seeds 5 6 --set trainer.max_steps=3000
    python experiments/loop/run.py --dry-run                                  # print the commands

Every run is ``python train/train.py experiment=<experiment> <overrides> seed=<s>`` in a subprocess (the JSON
holds the exact command). The arms share one configuration, ``configs/experiment/rare_slice_miner.yaml``, and
differ only in the SliceMiner settings listed in :data:`ARMS`. The runs' own outputs (checkpoints, CSV logs,
``slice_miner.json``) go to ``logs/loop/<study>/<arm>/seed<s>/`` (not committed).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
from synth_torch.export.manifest import code_version  # noqa: E402
from synth_torch.fileio import writable_folder, write_text_atomic  # noqa: E402

RESULTS = ROOT / "experiments" / "loop" / "results"
LOGS = ROOT / "logs" / "loop"

ARMS: dict[str, list[str]] = {
    "uniform": ["experiment=rare_slice_uniform"],
    "fixed": ["experiment=rare_slice_fixed"],
    "group_dro": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=group_dro"],
    "plr": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=plr"],
    "exp3": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=exp3"],
    "group_dro_mining": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=group_dro",
                         "callbacks.slice_miner.mine=true", "callbacks.slice_miner.mine_every=4",
                         "callbacks.slice_miner.mine_samples=256", "callbacks.slice_miner.max_mined=2"],
    # second versions, after the first: the rules starved the easy slices (base fell to ~0.05), so every slice now
    # keeps at least floor / K = 5 % of the stream
    "group_dro_floor": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=group_dro",
                        "callbacks.slice_miner.reweighter.floor=0.3"],
    "plr_floor": ["experiment=rare_slice_miner", "callbacks.slice_miner.rule=plr",
                  "callbacks.slice_miner.reweighter.floor=0.3"],
}


def command(arm: str, seed: int, study: str, extra: list[str]) -> list[str]:
    out = LOGS / study / arm / f"seed{seed}"
    return [sys.executable, "train/train.py", *ARMS[arm], f"seed={seed}", "print_config=false",
            f"hydra.run.dir={out.relative_to(ROOT)}", *extra]


def result_path(study: str, arm: str, seed: int) -> Path:
    return RESULTS / study / arm / f"seed{seed}.json"


def _curve(out_dir: Path) -> list[dict]:
    """Validation rows of the run's CSV log: step and every ``val/`` metric."""
    files = sorted(out_dir.glob("csv/**/metrics.csv"))
    rows = []
    for row in csv.DictReader(files[-1].open()) if files else []:
        vals = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
        if vals:
            rows.append({"step": int(float(row["step"])), **vals})
    return rows


def _provenance() -> dict:
    return {**code_version(), "machine": platform.node(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_one(arm: str, seed: int, study: str, extra: list[str]) -> dict:
    """Train one run and write its result atomically (a half-written result file never exists)."""
    cmd = command(arm, seed, study, extra)
    out_dir = ROOT / cmd[-1 - len(extra)].split("=", 1)[1]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    miner = json.loads((out_dir / "slice_miner.json").read_text())
    result = {"study": study, "arm": arm, "seed": seed, "command": " ".join(["python", *cmd[1:]]),
              "wall_s": round(wall, 1), "curve": _curve(out_dir),
              "rounds": [{k: h[k] for k in ("step", "warmup", "names", "weights", "loss")} for h in miner["history"]],
              "mined": miner["mined"], **_provenance()}
    path = result_path(study, arm, seed)
    writable_folder(path.parent)
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="main", help="results go to experiments/loop/results/<study>/")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides for every run")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    for seed in args.seeds:
        for arm in args.arms:
            done = result_path(args.study, arm, seed).is_file()
            cmd = " ".join(["python", *command(arm, seed, args.study, args.set)[1:]])
            print(f"[{'done' if done else 'run '}] {arm} seed {seed}: {cmd}", flush=True)
            if done or args.dry_run:
                continue
            r = run_one(arm, seed, args.study, args.set)
            print(f"       finished in {r['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
