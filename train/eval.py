"""Score a checkpoint on the per-slice validation suites and the real splits (Hydra + Lightning).

    python train/eval.py ckpt_path=<run>/checkpoints/last.ckpt
    python train/eval.py experiment=sim2real_tile ckpt_path=<run>/checkpoints/last.ckpt splits=[val,test]

The same program as ``synth-torch eval`` (:mod:`synth_torch.app.evaluate`). See docs/training.md.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from synth_torch.app.evaluate import evaluate, main  # noqa: E402,F401

if __name__ == "__main__":
    main()
