"""Output buffers of the compiled CPU kernels, recycled between calls.

A batch of rendered images is tens of MB. Fresh memory costs a page fault per page on first write (the
kernel zeroes it first), which for the ``cpu`` backend used to take as long as rasterizing. Like
PyTorch's CUDA caching allocator, :func:`empty` keeps the memory of outputs that are no longer referenced
and hands it out again: a returned tensor wraps a numpy view of a pooled block, and when the last
reference to that view dies (``weakref.finalize``) the block goes back to the pool. Blocks are plain
numpy allocations (numpy asks Linux for 2 MB pages), at most :data:`MAX_POOLED_BYTES` are kept, and the
kernels overwrite every value, so recycled contents never leak into results.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict

import numpy as np
import torch

MIN_POOLED_BYTES = 1 << 20  # smaller outputs are allocated normally
MAX_POOLED_BYTES = 1 << 30  # upper bound on idle memory kept for reuse

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_lock = threading.Lock()
_free: dict[int, list[np.ndarray]] = defaultdict(list)
_pooled_bytes = 0


def _release(block: np.ndarray) -> None:
    global _pooled_bytes
    with _lock:
        if _pooled_bytes + block.nbytes <= MAX_POOLED_BYTES:
            _free[block.nbytes].append(block)
            _pooled_bytes += block.nbytes


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised contiguous CPU tensor of ``shape`` and ``dtype`` (float32/float64) for a kernel to fill."""
    global _pooled_bytes
    np_dtype = _NUMPY_DTYPES[dtype]
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
    if nbytes < MIN_POOLED_BYTES:
        return torch.empty(shape, dtype=dtype)
    block = None
    with _lock:
        if _free[nbytes]:
            block = _free[nbytes].pop()
            _pooled_bytes -= nbytes
    if block is None:
        block = np.empty(nbytes, dtype=np.uint8)
    view = block.view(np_dtype).reshape(shape)
    weakref.finalize(view, _release, block)
    return torch.from_numpy(view)


def clear() -> None:
    """Drop every idle block (their memory returns to the system)."""
    global _pooled_bytes
    with _lock:
        _free.clear()
        _pooled_bytes = 0
