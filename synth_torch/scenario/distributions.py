"""Parameter distributions of a scenario, applied by inverse CDF to counter-based uniforms.

YAML forms: ``0.5`` (constant), ``[lo, hi]`` (uniform), ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
``{normal: [mean, std], clip: [lo, hi]}``, ``{choice: [v1, v2, ...], p: [p1, p2, ...]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Normal


class ConfigError(ValueError):
    """A scenario or config value is invalid; the message names the offending key."""


@dataclass(frozen=True)
class Dist:
    """A 1-D distribution: ``kind`` in {constant, uniform, loguniform, normal, choice}.

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

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """Map uniforms in [0, 1) to samples (same shape)."""
        if self.kind == "constant":
            return torch.full_like(u, self.a)
        if self.kind == "uniform":
            return self.a + (self.b - self.a) * u
        if self.kind == "loguniform":
            return torch.exp(math.log(self.a) + (math.log(self.b) - math.log(self.a)) * u)
        if self.kind == "normal":
            n = Normal(torch.tensor(self.a, dtype=u.dtype), torch.tensor(self.b, dtype=u.dtype))
            lo = n.cdf(torch.tensor(self.lo, dtype=u.dtype)) if math.isfinite(self.lo) else torch.tensor(0.0)
            hi = n.cdf(torch.tensor(self.hi, dtype=u.dtype)) if math.isfinite(self.hi) else torch.tensor(1.0)
            p = (lo + (hi - lo) * u).clamp(1e-7, 1 - 1e-7)
            return n.icdf(p).clamp(self.lo, self.hi)
        cdf = torch.cumsum(torch.tensor(self.probs, dtype=u.dtype, device=u.device), 0)
        idx = torch.searchsorted(cdf, u.contiguous() * cdf[-1], right=True).clamp(max=len(self.values) - 1)
        return torch.tensor(self.values, dtype=u.dtype, device=u.device)[idx]

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


def parse_number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _pair(value, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key}: expected [lo, hi], got {value!r}")
    return parse_number(value[0], key), parse_number(value[1], key)


def parse_dist(value, key: str, bounds: tuple[float, float] | None = None) -> Dist:
    """Parse a YAML distribution; ``bounds`` is the valid range of values (checked on the support)."""
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
            lo, hi = _pair(value["clip"], f"{key}.clip") if "clip" in value else (-math.inf, math.inf)
            if lo >= hi:
                raise ConfigError(f"{key}: clip min {lo} >= max {hi}")
            dist = Dist("normal", mean, std, lo, hi)
        elif "choice" in keys:
            if not keys <= {"choice", "p"}:
                raise ConfigError(f"{key}: unknown keys {sorted(keys - {'choice', 'p'})} in choice distribution")
            values = tuple(parse_number(v, f"{key}.choice") for v in value["choice"])
            probs = tuple(parse_number(p, f"{key}.p") for p in value.get("p", [1.0] * len(values)))
            if not values or len(probs) != len(values) or min(probs) < 0 or sum(probs) <= 0:
                raise ConfigError(f"{key}: choice needs values and as many non-negative probabilities")
            dist = Dist("choice", values=values, probs=probs)
        else:
            raise ConfigError(f"{key}: unknown distribution {value!r}; use a number, [lo, hi], {{uniform: ..}}, "
                              "{loguniform: ..}, {normal: .., clip: ..} or {choice: .., p: ..}")
    else:
        raise ConfigError(f"{key}: expected a number, [lo, hi] or a distribution mapping, got {value!r}")
    if bounds is not None:
        lo, hi = dist.support
        if lo < bounds[0] or hi > bounds[1]:
            raise ConfigError(f"{key}: values must lie in [{bounds[0]}, {bounds[1]}], got {dist.describe()}")
    return dist
