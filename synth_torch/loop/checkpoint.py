"""Checkpoints written atomically, in their own folder.

Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction whose temporary
file lies in the system temporary folder: when that folder is on another file system than the checkpoint
(a tmpfs ``/tmp``, a network drive), committing it is a copy, so a run killed at that moment leaves a truncated
``last.ckpt`` that a resume then fails to read, and a crash leaves the whole checkpoint behind in ``/tmp``.
:class:`AtomicCheckpointIO` streams the checkpoint into a temporary file beside its destination, flushes it to the
disk and renames it into place (:func:`synth_torch.fileio.atomic_open`): a reader sees the previous checkpoint or
the new one, never half of one. Remote paths (``s3://...``) keep Lightning's own upload.

The training configs use it (``configs/trainer/default.yaml``: ``plugins``); elsewhere pass
``pl.Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from synth_torch.fileio import atomic_open

try:
    from typing_extensions import override
except ImportError:  # pragma: no cover
    def override(f):
        return f

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (module docstring)."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote: Lightning's transactional upload
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, fsync=True) as f:
            torch.save(checkpoint, f)
