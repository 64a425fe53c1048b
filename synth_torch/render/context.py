"""Rasterization contexts: the one stateful object of :mod:`synth_torch.render` (docs/rendering.md).

A context names the device and the backend that the four ops run on:

``"nvdiffrast"``
    NVIDIA's CUDA rasterizer (``pip install "synth-torch[nvdiffrast]"``); a thin adapter, CUDA only.
``"cpu"``
    Compiled (numba) triangle set-up, visibility and fill, parallel over images (or row bands when
    there are few images); same ids and values as the reference, bit for bit. CPU tensors only.
``"torch"``
    Pure torch on any device: every (triangle, candidate pixel) pair tested, then a deterministic
    ``scatter_reduce`` over packed (depth, triangle) keys. The executable specification the other two
    are tested against.
``"auto"``
    nvdiffrast on CUDA when it imports, ``"cpu"`` on CPU, ``"torch"`` otherwise.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("auto", "nvdiffrast", "cpu", "torch")

_NVDIFFRAST_HINT = (
    'install it with `pip install "synth-torch[nvdiffrast]"` (PyPI package diffrp-nvdiffrast, '
    "JIT-built on first use on a CUDA machine) or upstream nvdiffrast 0.4 with "
    "`pip install --no-build-isolation git+https://github.com/NVlabs/nvdiffrast` "
    "(note: nvdiffrast's licence is non-commercial)"
)


@functools.lru_cache(maxsize=None)
def _nvdiffrast_importable() -> bool:
    try:
        importlib.import_module("nvdiffrast.torch")
    except Exception:  # an install without a working toolchain fails at import, not only with ImportError
        return False
    return True


@functools.lru_cache(maxsize=None)
def nvdiffrast_ops():
    """``nvdiffrast.torch`` with its CUDA plugin built (first use) and loaded. nvdiffrast imports the plugin by module name after
    ``torch.utils.cpp_extension.load``; torch >= 2.11 no longer puts the build directory on ``sys.path``, so the
    import fails right after a successful build. The directory goes on the path and the load is retried."""
    import sys

    from nvdiffrast.torch import ops
    from torch.utils import cpp_extension

    try:
        ops._get_plugin()
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("nvdiffrast_plugin"):
            raise
        sys.path.append(cpp_extension._get_build_directory(exc.name, False))
        ops._get_plugin()
    return importlib.import_module("nvdiffrast.torch")


def nvdiffrast_available() -> bool:
    """True when CUDA is available and ``nvdiffrast.torch`` imports."""
    return torch.cuda.is_available() and _nvdiffrast_importable()


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and nvdiffrast_available():
            return "nvdiffrast"
        return "cpu" if device.type == "cpu" else "torch"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            hint = "" if _nvdiffrast_importable() else f"; nvdiffrast is not installed either: {_NVDIFFRAST_HINT}"
            raise ValueError(f"backend 'nvdiffrast' runs on CUDA devices only, got device {device}; use "
                             f"backend='cpu' or 'auto' on CPU{hint}")
        if not nvdiffrast_available():
            raise RuntimeError(f"backend 'nvdiffrast' was requested but nvdiffrast is not importable: "
                               f"{_NVDIFFRAST_HINT}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' runs on CPU tensors only, got device {device}; use backend='torch' or 'auto'")
    return backend


@dataclass
class RasterizeContext:
    """Chooses the device and backend for :func:`rasterize` and the other ops.

    Args:
        device: device the inputs live on (default: current CUDA device if available, else CPU).
        backend: ``"auto"``, ``"nvdiffrast"``, ``"cpu"`` or ``"torch"`` (see module docstring).

    Example:
        >>> import synth_torch.render as dr
        >>> ctx = dr.RasterizeContext(device="cpu")
        >>> ctx.backend
        'cpu'
    """

    device: torch.device | str | None = None
    backend: str = "auto"
    _native: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.backend = _resolve_backend(self.backend, self.device)
        if self.backend == "nvdiffrast":
            self._native = nvdiffrast_ops().RasterizeCudaContext(device=self.device)

    def check_device(self, *tensors: torch.Tensor) -> None:
        """Raise a clear error when a tensor is not on the context's device."""
        for t in tensors:
            if t.device.type != self.device.type:
                raise ValueError(
                    f"tensor on {t.device} passed to a {self.backend!r} context on {self.device}; "
                    "move the inputs or create the context with device=..."
                )


def RasterizeCudaContext(device: torch.device | str | None = None, backend: str = "auto") -> RasterizeContext:
    """nvdiffrast-compatible alias of :class:`RasterizeContext` (any backend, CPU included)."""
    return RasterizeContext(device=device, backend=backend)


def RasterizeGLContext(output_db: bool = True, mode: str = "automatic", device: torch.device | str | None = None,
                       backend: str = "auto") -> RasterizeContext:
    """nvdiffrast-compatible alias of :class:`RasterizeContext`; ``output_db`` and ``mode`` are accepted and ignored."""
    del output_db, mode
    return RasterizeContext(device=device, backend=backend)
