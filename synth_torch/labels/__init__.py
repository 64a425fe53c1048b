"""Label passes: ground truth read from the G-buffer and the scene spec (``docs/labels.md``)."""

from synth_torch.labels.passes import Labels, label_passes

__all__ = ["Labels", "label_passes"]
