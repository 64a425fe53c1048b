"""The Hydra applications: ``train`` (fit on the live stream) and ``evaluate`` (score a checkpoint), with the
configuration shipped inside the package (:mod:`synth_torch.app.configs`). ``train/train.py``, ``train/eval.py``,
``synth-torch train`` and ``synth-torch eval`` all run these."""
