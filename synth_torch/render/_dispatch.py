"""Which implementation a context-free op (interpolate, texture, antialias) runs on."""

from __future__ import annotations

import os

import torch

from synth_torch.render.context import nvdiffrast_available


def use_nvdiffrast(*tensors: torch.Tensor) -> bool:
    """nvdiffrast's kernels for CUDA inputs when it imports, unless ``SYNTH_TORCH_RENDER_BACKEND=torch``.

    These ops take no context (as in nvdiffrast), so the choice follows the inputs' device.
    """
    if os.environ.get("SYNTH_TORCH_RENDER_BACKEND", "auto") == "torch":
        return False
    return all(t.is_cuda for t in tensors) and nvdiffrast_available()
