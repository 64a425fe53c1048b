"""The closed data loop: slice re-weighting rules, slice mining, and the Lightning glue that trains on the live
stream (``SynthDataModule``, ``SegmentationTask`` / ``DetectionTask``, the ``SliceMiner`` callback).

The Lightning parts are imported lazily, so ``synth_torch.loop.rules`` and ``.mining`` stay light.
"""

from synth_torch.loop.mining import MinedSlice, Predicate, find_slices
from synth_torch.loop.rules import RULES, SliceReweighter, SliceStats

__all__ = ["RULES", "DetectionTask", "MinedSlice", "Predicate", "RealBatch", "SegmentationTask", "SliceMiner",
           "SliceReweighter", "SliceStats", "SliceTask", "SynthDataModule", "collate_batch", "find_slices"]

_LAZY = {
    "SynthDataModule": "synth_torch.loop.datamodule", "RealBatch": "synth_torch.data.real",
    "collate_batch": "synth_torch.loop.datamodule", "SliceTask": "synth_torch.loop.tasks",
    "SegmentationTask": "synth_torch.loop.tasks", "DetectionTask": "synth_torch.loop.tasks",
    "SliceMiner": "synth_torch.loop.callback",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synth_torch.loop' has no attribute {name!r}")
