"""Which implementation a context-free op (interpolate, texture, antialias) runs on, and the input checks the
three share."""

from __future__ import annotations

import os

import numpy as np
import torch

from synth_torch.render.context import nvdiffrast_available


def use_nvdiffrast(*tensors: torch.Tensor) -> bool:
    """nvdiffrast's kernels for CUDA inputs when it imports, unless ``SYNTH_TORCH_RENDER_BACKEND=torch``.

    These ops take no context (as in nvdiffrast), so the choice follows the inputs' device.
    """
    if os.environ.get("SYNTH_TORCH_RENDER_BACKEND", "auto") == "torch":
        return False
    return all(t.is_cuda for t in tensors) and nvdiffrast_available()


def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the arguments when the given tensors are not all on one device."""
    given = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(given.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in given.items())
        raise ValueError(f"{op}: inputs on different devices ({where}); move them to one device")


def check_finite(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the argument when a CPU tensor holds NaN or infinite values.

    CUDA tensors are not checked: the check would make the host wait for the device in the middle of a batch
    (docs/rendering.md, "Input checks").
    """
    for name, t in tensors.items():
        if t is None or t.device.type != "cpu" or not t.is_floating_point():
            continue
        if t.dtype in (torch.float32, torch.float64):  # numpy: no wake-up of torch's thread pool before numba
            finite = bool(np.isfinite(t.detach().numpy()).all())
        else:
            finite = bool(torch.isfinite(t).all())
        if not finite:
            raise ValueError(f"{op}: {name} contains NaN or infinite values")
