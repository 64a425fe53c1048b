"""Realism of the `defects` stream at the tile study's settings (96 px, 512 samples, seed 0) against 512
magnetic_tile photographs, for whichever synth_torch is imported: any checkout of the study's era, including
those before the configs moved into the package (which ``realism.py`` needs). Used for the scenario versions
compared in docs/results.md:

    PYTHONPATH=<checkout of the scenario version> python experiments/sim2real/realism_at_commit.py OUT.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import synth_torch
from synth_torch.data import SynthDataset
from synth_torch.quality.realism import load_real_images, realism_report

REAL = Path(__file__).resolve().parents[3] / "shared" / "real" / "magnetic_tile"


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ds = SynthDataset("defects", resolution=96, batch_size=64, seed=0)
    synthetic = torch.cat([ds.render_batch(torch.arange(i, i + 64)).image for i in range(0, 512, 64)])
    real = load_real_images(REAL, (96, 96), limit=512)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(synth_torch.__file__).parent,
                            capture_output=True, text=True).stdout.strip()
    report = {"scenario": "defects", "resolution": 96, "synthetic_samples": 512, "real_images": int(real.shape[0]),
              "seed": 0, "code_commit": commit, **realism_report(synthetic, real)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print({k: report[k] for k in ("frechet", "real_split_frechet", "code_commit")})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
