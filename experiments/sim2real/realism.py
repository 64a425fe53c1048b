"""Realism of a study's synthetic stream: image statistics of rendered samples against the real images
(``synth_torch.quality.realism``), written beside the study's results as ``<study>/realism_<task>.json``.

    python experiments/sim2real/realism.py --study main --task tile

It renders exactly what the study's synthetic arms trained on (the task's experiment config: scenario,
overrides, resolution; base slice mixture), with the code that is imported, so run it with the checkout (or
``PYTHONPATH``) of the study's commit; the commit is recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import RESULTS, TASKS, _compose  # noqa: E402

REAL_IMAGES = {"tile": ".", "fruits": "images"}  # under the task's data.real_root


def _code_commit() -> str | None:
    """The git commit of the imported ``synth_torch`` (the study's code, not necessarily this script's)."""
    import synth_torch

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(synth_torch.__file__).parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(task: str, samples: int, real_limit: int, seed: int, extra: list[str]) -> dict:
    from synth_torch.data import SynthDataset
    from synth_torch.quality.realism import load_real_images, realism_report
    from synth_torch.scenario.config import load_scenario

    cfg = _compose([f"experiment={TASKS[task]['experiment']}", *extra], HERE)
    overrides = cfg.data.get("overrides")  # as SynthDataModule(scenario, overrides) takes them
    scenario = load_scenario(OmegaConf.to_container(cfg.data.scenario, resolve=True),
                             None if overrides is None else OmegaConf.to_container(overrides, resolve=True))
    size = int(cfg.data.resolution)
    ds = SynthDataset(scenario, resolution=size, batch_size=64, seed=seed)
    synthetic = torch.cat([ds.render_batch(torch.arange(i, min(i + 64, samples))).image
                           for i in range(0, samples, 64)])
    real = load_real_images(Path(cfg.data.real_root) / REAL_IMAGES[task], (size, size), limit=real_limit)
    report = realism_report(synthetic, real)
    return {"task": task, "scenario": scenario.name, "resolution": size, "synthetic_samples": samples,
            "real_images": int(real.shape[0]), "seed": seed, "code_commit": _code_commit(), **report}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--real-limit", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides (as the study's)")
    args = ap.parse_args(argv)
    result = measure(args.task, args.samples, args.real_limit, args.seed, args.set)
    path = RESULTS / args.study / f"realism_{args.task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    print(json.dumps({k: result[k] for k in ("frechet", "real_split_frechet", "code_commit")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
