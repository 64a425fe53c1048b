"""Support for the compiled (numba) CPU kernels of every layer: the threading set-up and pooled output buffers.

Threads: :func:`use_torch_threads` runs kernels on as many threads as torch's intra-op pool. DataLoader workers
fork the process, and numba's OpenMP layer aborts in a forked child once the parent has run a parallel kernel;
its work-queue layer is fork-safe, so it is selected here (a user's ``NUMBA_THREADING_LAYER`` still wins).
Every module with parallel kernels imports this one first.

Math: :func:`sin2pi`, a fast ``sin(2 pi x)`` for kernels (the torch references use ``torch.sin``).

Buffers: a batch of rendered images is tens of MB. Fresh memory costs a page fault per page on first write (the
kernel zeroes it first), which for the ``cpu`` backend used to take as long as rasterizing. Like
PyTorch's CUDA caching allocator, :func:`empty` keeps the memory of outputs that are no longer referenced
and hands it out again: a returned tensor wraps a numpy view of a pooled block, and when the last
reference to that view dies (``weakref.finalize``) the block goes back to the pool. Blocks are plain
numpy allocations (numpy asks Linux for 2 MB pages), at most :data:`MAX_POOLED_BYTES` are kept, and the
kernels overwrite every value, so recycled contents never leak into results.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import defaultdict

import numba
import numpy as np
import torch

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

MIN_POOLED_BYTES = 1 << 20  # smaller outputs are allocated normally
MAX_POOLED_BYTES = 1 << 30  # upper bound on idle memory kept for reuse

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32, torch.int64: np.int64,
                 torch.uint8: np.uint8, torch.bool: np.bool_}
_lock = threading.Lock()
_free: dict[int, list[np.ndarray]] = defaultdict(list)
_pooled_bytes = 0


def use_torch_threads() -> None:
    """Run numba kernels on as many threads as torch's intra-op pool (``torch.set_num_threads``; DataLoader
    workers use 1), at most ``NUMBA_NUM_THREADS``. Starting numba's thread pool can reset the thread count
    that torch reads from the same runtime; the user's setting is put back."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _release(block: np.ndarray) -> None:
    global _pooled_bytes
    with _lock:
        if _pooled_bytes + block.nbytes <= MAX_POOLED_BYTES:
            _free[block.nbytes].append(block)
            _pooled_bytes += block.nbytes


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised contiguous CPU tensor of ``shape`` and ``dtype`` (float, int32/64, uint8, bool) for a kernel
    to fill."""
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


@numba.njit(inline="always")
def sin2pi(x):
    """``sin(2 pi x)`` to about 1e-9, without branches (a mispredicted branch costs more than the whole
    polynomial, and libm's ``sin`` ~15 ns): reduces x to r in [-1/4, 1/4] with the same sine and evaluates the
    Taylor series to r^15."""
    r = x - math.floor(x + 0.5)  # [-1/2, 1/2)
    a = abs(r)
    r = math.copysign(min(a, 0.5 - a), r)  # sin(2 pi (1/2 - a)) = sin(2 pi a)
    t = 6.283185307179586 * r
    t2 = t * t
    return t * (1.0 + t2 * (-1.0 / 6 + t2 * (1.0 / 120 + t2 * (-1.0 / 5040 + t2 * (1.0 / 362880 + t2 * (
        -1.0 / 39916800 + t2 * (1.0 / 6227020800 - t2 / 1307674368000)))))))
