"""Train on the live synthetic stream with the closed data loop (Hydra + Lightning).

    python train/train.py                                   # small U-Net on `defects`, CPU, SliceMiner, wandb offline
    python train/train.py experiment=tabletop_det           # a preset from configs/experiment/
    python train/train.py scenario=my_scenario.yaml scenario.camera.distance=[0.8,1.2]
    python train/train.py trainer=ddp_sim logger=csv        # 2 CPU processes (gloo)
    python train/train.py ckpt_path=<run>/checkpoints/last.ckpt   # resume (same config)
    python train/train.py debug=fdr                         # fast_dev_run

The same program as ``synth-torch train`` (:mod:`synth_torch.app.train`); run from a checkout, its outputs go to
``<checkout>/logs``. See docs/training.md.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from synth_torch.app.train import TrainConfigError, main, summary_line, train  # noqa: E402,F401

if __name__ == "__main__":
    main()
