"""synth-torch: PyTorch-native online synthetic data for computer vision.

Layers (each depends only on those below it; ``docs/architecture.md``): ``render`` -> ``spec`` -> ``scene`` ->
``scenario`` -> ``shading`` / ``labels`` / ``sensor`` -> ``data`` -> ``loop`` -> ``export`` / ``quality``.
The names below are imported on first use, so ``import synth_torch.render`` stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["Batch", "Scenario", "SynthDataset", "load_scenario"]
__version__ = "0.1.0"

_EXPORTS = {"Batch": "synth_torch.data", "SynthDataset": "synth_torch.data", "Scenario": "synth_torch.scenario.config",
            "load_scenario": "synth_torch.scenario.config"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synth_torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
