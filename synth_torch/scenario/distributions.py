"""Parameter distributions of a scenario, applied by inverse CDF to counter-based uniforms.

YAML forms: ``0.5`` (constant), ``[lo, hi]`` (uniform), ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
``{normal: [mean, std], clip: [lo, hi]}``, ``{choice: [v1, v2, ...], p: [p1, p2, ...]}``.
:meth:`Dist.to_yaml` gives one canonical form per distribution, so ``[a, b]`` and ``{uniform: [a, b]}`` (or a
uniform with ``a == b`` and the constant ``a``) normalise to the same value.

Integer parameters (counts) are sampled as integers: a uniform ``[a, b]`` is uniform over ``a, a + 1, ..., b``,
the other kinds are rounded to the nearest integer.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("constant", "uniform", "loguniform", "normal", "choice")


class ConfigError(ValueError):
    """A scenario or config value is invalid; the message names the offending key."""


def _normal_cdf(x: float, mean: float, std: float) -> float:
    if not math.isfinite(x):
        return 0.0 if x < 0 else 1.0
    return 0.5 * math.erfc(-(x - mean) / (std * math.sqrt(2.0)))


@dataclass(frozen=True)
class Dist:
    """A 1-D distribution: ``kind`` in :data:`KINDS`.

    ``a, b`` are (value, value), (lo, hi), (lo, hi), (mean, std) or unused; ``lo, hi`` bound the support
    (clip for normal); ``values``/``probs`` for choice.
    """

    kind: str
    a: float = 0.0
    b: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf
    values: tuple[float, ...] = ()
    probs: tuple[float, ...] = ()

    def icdf(self, u: torch.Tensor, integer: bool = False) -> torch.Tensor:
        """Map uniforms in [0, 1) to samples (same shape and dtype)."""
        table = _single_tables(self, integer)
        return table.icdf(u.reshape(-1, 1), torch.zeros(u.numel(), dtype=torch.long)).reshape(u.shape).to(u.dtype)

    @property
    def support(self) -> tuple[float, float]:
        if self.kind == "constant":
            return (self.a, self.a)
        if self.kind in ("uniform", "loguniform"):
            return (self.a, self.b)
        if self.kind == "normal":
            return (self.lo, self.hi)
        return (min(self.values), max(self.values))

    def restrict(self, lo: float, hi: float) -> Dist:
        """The distribution conditioned on ``lo <= x < hi`` (used for mined slices); raises if empty."""
        s_lo, s_hi = self.support
        if hi <= s_lo or lo > s_hi:
            raise ConfigError(f"restriction [{lo}, {hi}) does not meet the support [{s_lo}, {s_hi}]")
        if self.kind == "constant":
            return self
        if self.kind in ("uniform", "loguniform"):
            return Dist(self.kind, max(self.a, lo), min(self.b, hi))
        if self.kind == "normal":
            return Dist("normal", self.a, self.b, max(self.lo, lo), min(self.hi, hi))
        keep = [(v, p) for v, p in zip(self.values, self.probs) if lo <= v < hi]
        return Dist("choice", values=tuple(v for v, _ in keep), probs=tuple(p for _, p in keep))

    def describe(self) -> str:
        if self.kind == "constant":
            return f"{self.a:g}"
        if self.kind in ("uniform", "loguniform"):
            return f"{self.kind}[{self.a:g}, {self.b:g}]"
        if self.kind == "normal":
            return f"normal({self.a:g}, {self.b:g}) in [{self.lo:g}, {self.hi:g}]"
        return f"choice{list(self.values)}"

    def to_yaml(self):
        """The canonical YAML/JSON form (a number, or a one-kind mapping); parsing it gives an equal Dist."""
        if self.kind == "constant" or (self.kind in ("uniform", "loguniform") and self.a == self.b):
            return self.a
        if self.kind in ("uniform", "loguniform"):
            return {self.kind: [self.a, self.b]}
        if self.kind == "normal":
            out = {"normal": [self.a, self.b]}
            if math.isfinite(self.lo) or math.isfinite(self.hi):
                out["clip"] = [self.lo, self.hi]
            return out
        total = sum(self.probs)
        return {"choice": list(self.values), "p": [p / total for p in self.probs]}


@functools.lru_cache(maxsize=1024)
def _single_tables(dist: Dist, integer: bool) -> ParamTable:
    return ParamTable([[dist]], [integer])


def parse_number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def parse_int(value, key: str, lo: int | None = None, none_ok: bool = False) -> int | None:
    """An integer option (Python or NumPy int; not a bool, float or string), at least ``lo``; ``None`` passes
    through when ``none_ok``. Raises :class:`ConfigError` naming ``key``."""
    if value is None and none_ok:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{key}: expected an integer{' or null' if none_ok else ''}, got {value!r}") from None
    if lo is not None and number < lo:
        raise ConfigError(f"{key}: must be >= {lo}{' or null' if none_ok else ''}, got {number}")
    return number


def parse_flag(value, key: str) -> bool:
    """A boolean option: ``True`` or ``False`` only (``"false"`` or ``0`` would silently mean something else)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return bool(value)


def _pair(value, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key}: expected [lo, hi], got {value!r}")
    return parse_number(value[0], key), parse_number(value[1], key)


def _parse_clip(value, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key}: expected [lo, hi], got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        out.append(float(v))
    return out[0], out[1]


def parse_dist(value, key: str, bounds: tuple[float, float] | None = None, integer: bool = False) -> Dist:
    """Parse a YAML distribution; ``bounds`` is the valid range of values (checked on the support).

    ``integer`` parameters need integer bounds and choice values.
    """
    if isinstance(value, Dist):
        dist = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        dist = Dist("constant", parse_number(value, key))
    elif isinstance(value, (list, tuple)):
        lo, hi = _pair(value, key)
        if lo > hi:
            raise ConfigError(f"{key}: min {lo} > max {hi}")
        dist = Dist("uniform", lo, hi)
    elif isinstance(value, dict):
        keys = set(value)
        if "uniform" in keys or "loguniform" in keys:
            kind = "uniform" if "uniform" in keys else "loguniform"
            if keys != {kind}:
                raise ConfigError(f"{key}: unknown keys {sorted(keys - {kind})} in {kind} distribution")
            lo, hi = _pair(value[kind], f"{key}.{kind}")
            if lo > hi:
                raise ConfigError(f"{key}: min {lo} > max {hi}")
            if kind == "loguniform" and lo <= 0:
                raise ConfigError(f"{key}: loguniform needs lo > 0, got {lo}")
            dist = Dist(kind, lo, hi)
        elif "normal" in keys:
            if not keys <= {"normal", "clip"}:
                raise ConfigError(f"{key}: unknown keys {sorted(keys - {'normal', 'clip'})} in normal distribution")
            mean, std = _pair(value["normal"], f"{key}.normal")
            if std <= 0:
                raise ConfigError(f"{key}: normal std must be > 0, got {std}")
            lo, hi = _parse_clip(value["clip"], f"{key}.clip") if "clip" in value else (-math.inf, math.inf)
            if lo >= hi:
                raise ConfigError(f"{key}: clip min {lo} >= max {hi}")
            if _normal_cdf(hi, mean, std) - _normal_cdf(lo, mean, std) < 1e-6:
                raise ConfigError(f"{key}: clip [{lo}, {hi}] holds (almost) no mass of normal({mean}, {std})")
            dist = Dist("normal", mean, std, lo, hi)
        elif "choice" in keys:
            if not keys <= {"choice", "p"}:
                raise ConfigError(f"{key}: unknown keys {sorted(keys - {'choice', 'p'})} in choice distribution")
            if not isinstance(value["choice"], (list, tuple)):
                raise ConfigError(f"{key}.choice: expected a list of values, got {value['choice']!r}")
            values = tuple(parse_number(v, f"{key}.choice") for v in value["choice"])
            raw_p = value.get("p", [1.0] * len(values))
            if not isinstance(raw_p, (list, tuple)):
                raise ConfigError(f"{key}.p: expected a list of probabilities, got {raw_p!r}")
            probs = tuple(parse_number(p, f"{key}.p") for p in raw_p)
            if not values or len(probs) != len(values) or min(probs) < 0 or sum(probs) <= 0:
                raise ConfigError(f"{key}: choice needs values and as many non-negative probabilities")
            dist = Dist("choice", values=values, probs=probs)
        else:
            raise ConfigError(f"{key}: unknown distribution {value!r}; use a number, [lo, hi], {{uniform: ..}}, "
                              "{loguniform: ..}, {normal: .., clip: ..} or {choice: .., p: ..}")
    else:
        raise ConfigError(f"{key}: expected a number, [lo, hi] or a distribution mapping, got {value!r}")
    if dist.kind in ("uniform", "loguniform") and dist.a == dist.b:
        dist = Dist("constant", dist.a)
    lo, hi = dist.support
    if bounds is not None and (lo < bounds[0] or hi > bounds[1]):
        raise ConfigError(f"{key}: values must lie in [{bounds[0]}, {bounds[1]}], got {dist.describe()}")
    if integer:
        points = (dist.a, dist.b) if dist.kind in ("constant", "uniform", "loguniform") else (
            dist.values if dist.kind == "choice" else (lo, hi))
        if any(math.isfinite(p) and p != math.floor(p) for p in points):
            raise ConfigError(f"{key}: an integer parameter needs integer values and bounds, got {dist.describe()}")
    return dist


class ParamTable:
    """Inverse CDFs of P parameters under K slices, vectorised over samples and parameters.

    ``dists[k][p]`` is the distribution of parameter ``p`` in slice ``k`` (the slice's override or the base).
    :meth:`icdf` maps uniforms ``u`` [B, P, ...] drawn for samples of slices ``slice_id`` [B] to values, in
    float64 arithmetic rounded to float32, so a value never depends on the batch it was drawn in.

    Example:
        >>> t = ParamTable([[Dist("uniform", 0.0, 2.0)], [Dist("constant", 5.0)]], [False])
        >>> t.icdf(torch.tensor([[0.25], [0.25]]), torch.tensor([0, 1]))
        tensor([[0.5000],
                [5.0000]])
    """

    def __init__(self, dists: Sequence[Sequence[Dist]], integer: Sequence[bool]):
        K, P = len(dists), len(integer)
        C = max([len(d.values) for row in dists for d in row] + [1])
        kind = torch.zeros(K, P, dtype=torch.long)
        a, b, lo, hi, c_lo, c_hi = (torch.zeros(K, P, dtype=torch.float64) for _ in range(6))
        values = torch.zeros(K, P, C, dtype=torch.float64)
        cdf = torch.full((K, P, C), 2.0, dtype=torch.float64)
        for k, row in enumerate(dists):
            if len(row) != P:
                raise ValueError(f"slice {k} has {len(row)} distributions, expected {P}")
            for p, d in enumerate(row):
                kind[k, p] = KINDS.index(d.kind)
                a[k, p], b[k, p], lo[k, p], hi[k, p] = d.a, d.b, d.lo, d.hi
                if d.kind == "loguniform":
                    a[k, p], b[k, p] = math.log(d.a), math.log(d.b)
                elif d.kind == "normal":
                    c_lo[k, p], c_hi[k, p] = _normal_cdf(d.lo, d.a, d.b), _normal_cdf(d.hi, d.a, d.b)
                elif d.kind == "choice":
                    total = sum(d.probs)
                    values[k, p, : len(d.values)] = torch.tensor(d.values, dtype=torch.float64)
                    cdf[k, p, : len(d.values)] = torch.cumsum(torch.tensor(d.probs, dtype=torch.float64), 0) / total
                    cdf[k, p, len(d.values) - 1] = 2.0  # u < 1 always lands on the last value at most
        self.kind, self.a, self.b, self.lo, self.hi, self.c_lo, self.c_hi = kind, a, b, lo, hi, c_lo, c_hi
        self.values, self.cdf = values, cdf
        self.integer = torch.tensor(list(integer), dtype=torch.bool)

    def icdf(self, u: torch.Tensor, slice_id: torch.Tensor) -> torch.Tensor:
        """Values [B, P, ...] float32 for uniforms ``u`` [B, P, ...] in [0, 1)."""
        extra = u.ndim - 2
        sid = slice_id.to(torch.long)

        def take(t: torch.Tensor) -> torch.Tensor:
            v = t[sid]
            return v.reshape(*v.shape, *([1] * extra))

        uu = u.to(torch.float64)
        kind, a, b = take(self.kind), take(self.a), take(self.b)
        integer = self.integer.reshape(1, -1, *([1] * extra))
        width = torch.where(integer & (kind == 1), b - a + 1.0, b - a)
        linear = a + width * uu
        out = torch.where(kind == 1, linear, a)
        out = torch.where(kind == 2, torch.exp(linear), out)
        c_lo, c_hi = take(self.c_lo), take(self.c_hi)
        p = (c_lo + (c_hi - c_lo) * uu).clamp(1e-12, 1 - 1e-12)
        normal = (a + b * torch.special.ndtri(p)).clamp(take(self.lo), take(self.hi))
        out = torch.where(kind == 3, normal, out)
        cdf, vals = (t[sid].reshape(*t[sid].shape[:2], *([1] * extra), t.shape[-1]) for t in (self.cdf, self.values))
        idx = (uu[..., None] >= cdf).sum(-1, keepdim=True)
        choice = vals.expand(*uu.shape, vals.shape[-1]).gather(-1, idx).squeeze(-1)
        out = torch.where(kind == 4, choice, out)
        out = torch.where(integer, torch.where(kind == 1, torch.minimum(torch.floor(out), b), torch.round(out)), out)
        return out.to(torch.float32)
