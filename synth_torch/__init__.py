"""synth-torch: PyTorch-native online synthetic data for computer vision.

Layers (each depends only on those above it): ``render`` (rasterizer ops) -> ``camera``, ``scene``,
``scenario`` -> ``labels``, ``sensor`` -> ``data`` -> ``loop``.
"""

from synth_torch.data import Batch, SynthDataset
from synth_torch.scenario.config import Scenario, load_scenario

__all__ = ["Batch", "Scenario", "SynthDataset", "load_scenario"]
__version__ = "0.1.0"
