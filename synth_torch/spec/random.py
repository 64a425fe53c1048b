"""Counter-based random numbers: every draw is a pure function of (sample key, stream, counter).

A sample's key is derived from (scenario digest, seed, sample index). Each parameter owns a stream
(a hash of its name), so adding a parameter never shifts the draws of another, and a sample's values
never depend on which batch, worker or rank produced it. All functions are vectorised over samples
and work on any device. The mixer is Wellons' 32-bit "lowbias32" hash, applied in int64 arithmetic
(only the low 32 bits are kept after each step).

:class:`Streams` draws many named streams in one vectorised pass; its values equal those of
:func:`uniform` stream by stream.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF
_COUNTER_SALT = 0x9E3779B9
_UNIFORM_SCALE = 1.0 / (1 << 24)


@functools.lru_cache(maxsize=4096)
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
    """Per-sample keys [B] (int64 in [0, 2^32)) from a 31-bit base (scenario digest and seed) and indices [B]."""
    idx = sample_index.to(torch.int64)
    return _mix32(_mix32(idx & _MASK32) ^ _mix32((idx >> 32) + base) ^ base)


def _stream_id(stream: int | str) -> int:
    return stable_hash(stream) if isinstance(stream, str) else int(stream)


def _bits(keys: torch.Tensor, stream_mix: torch.Tensor, counter_mix: torch.Tensor) -> torch.Tensor:
    """[B, N] bits from keys [B], mixed stream ids [N] and mixed counters [N]."""
    return _mix32(_mix32(keys[:, None] ^ stream_mix[None, :]) + counter_mix[None, :])


def random_bits(keys: torch.Tensor, stream: int | str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform 32-bit integers [B, *shape] for ``stream`` (an int or a string's stable hash)."""
    n = math.prod(shape)
    counter = torch.arange(n, device=keys.device, dtype=torch.int64)
    stream_mix = _mix32(torch.full((n,), _stream_id(stream) & _MASK32, device=keys.device, dtype=torch.int64))
    return _bits(keys, stream_mix, _mix32(counter + _COUNTER_SALT)).reshape(keys.shape[0], *shape)


def uniform(keys: torch.Tensor, stream: int | str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform floats in [0, 1) with 24 random bits, [B, *shape] float32."""
    return (random_bits(keys, stream, shape) >> 8).to(torch.float32) * _UNIFORM_SCALE


def normal(keys: torch.Tensor, stream: int | str, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Standard normal floats [B, *shape] (Box-Muller on two uniform streams)."""
    stream = _stream_id(stream)
    u1 = uniform(keys, stream, shape).clamp_min(_UNIFORM_SCALE)
    u2 = uniform(keys, stream ^ 0x5BD1E995, shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


class Streams:
    """A fixed set of named uniform streams, drawn together.

    ``Streams([("light.intensity", ()), ("objects.yaw", (S,))]).draw(keys)`` returns
    ``{"light.intensity": [B], "objects.yaw": [B, S]}`` with exactly the values of :func:`uniform` for each
    stream, computed in one pass (a few tensor operations instead of a few per stream).

    Example:
        >>> keys = sample_keys(7, torch.arange(3))
        >>> d = Streams([("a", ()), ("b", (2,))]).draw(keys)
        >>> torch.equal(d["b"], uniform(keys, "b", (2,)))
        True
    """

    def __init__(self, streams: Sequence[tuple[str | int, tuple[int, ...]]]):
        self.names = tuple(name for name, _ in streams)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"stream names must be unique, got {self.names}")
        self.shapes = tuple(tuple(shape) for _, shape in streams)
        sizes = [math.prod(s) for s in self.shapes]
        ids = torch.tensor([_stream_id(n) & _MASK32 for n in self.names], dtype=torch.int64)
        self._sizes = sizes
        self._stream_mix = _mix32(ids.repeat_interleave(torch.tensor(sizes, dtype=torch.int64)))
        self._counter_mix = _mix32(torch.cat([torch.arange(n, dtype=torch.int64) for n in sizes]
                                             or [torch.zeros(0, dtype=torch.int64)]) + _COUNTER_SALT)

    def draw(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Uniforms in [0, 1), float32, ``name -> [B, *shape]``."""
        stream_mix, counter_mix = self._stream_mix.to(keys.device), self._counter_mix.to(keys.device)
        u = (_bits(keys, stream_mix, counter_mix) >> 8).to(torch.float32) * _UNIFORM_SCALE
        parts = u.split(self._sizes, dim=1)
        return {n: p.reshape(keys.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}
