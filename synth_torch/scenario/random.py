"""Counter-based random numbers: every draw is a pure function of (sample key, stream, counter).

A sample's key is derived from (scenario hash, seed, sample index). Each parameter owns a stream
(a hash of its name), so adding a parameter never shifts the draws of another, and a sample's values
never depend on which batch, worker or rank produced it. All functions are vectorised over samples
and work on any device. The mixer is Wellons' 32-bit "lowbias32" hash, applied in int64 arithmetic
(only the low 32 bits are kept after each step).
"""

from __future__ import annotations

import hashlib
import math

import torch

_MASK32 = 0xFFFFFFFF


def stable_hash(text: str) -> int:
    """A 31-bit hash of a string that is the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & 0x7FFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def sample_keys(base: int, sample_index: torch.Tensor) -> torch.Tensor:
    """Per-sample keys [B] (int64 in [0, 2^32)) from a 31-bit base (scenario hash and seed) and indices [B]."""
    idx = sample_index.to(torch.int64)
    return _mix32(_mix32(idx & _MASK32) ^ _mix32((idx >> 32) + base) ^ base)


def random_bits(keys: torch.Tensor, stream: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform 32-bit integers [B, *shape] for stream ``stream`` (an int or a string's stable hash)."""
    n = math.prod(shape)
    counter = torch.arange(n, device=keys.device, dtype=torch.int64)
    x = _mix32(keys[:, None] ^ _mix32(torch.tensor(stream & _MASK32, device=keys.device)))
    out = _mix32(x + _mix32(counter + 0x9E3779B9)[None, :])
    return out.reshape(keys.shape[0], *shape)


def uniform(keys: torch.Tensor, stream: int | str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform floats in [0, 1) with 24 random bits, [B, *shape] float32."""
    if isinstance(stream, str):
        stream = stable_hash(stream)
    return (random_bits(keys, stream, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def normal(keys: torch.Tensor, stream: int | str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Standard normal floats [B, *shape] (Box-Muller on two uniform streams)."""
    if isinstance(stream, str):
        stream = stable_hash(stream)
    u1 = uniform(keys, stream, shape).clamp_min(1.0 / (1 << 24))
    u2 = uniform(keys, stream ^ 0x5BD1E995, shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
