"""Mining of high-loss regions of scenario-parameter space (SliceFinder / SliceLine style).

Given the scenario parameters each training sample was drawn with and its loss, :func:`find_slices`
returns conjunctions of interval predicates (e.g. ``x<0.25 & y>=0.75``) on which the model's loss is
significantly and substantially higher than on the rest of the data. The callback can turn a mined
slice into a new scenario slice (a restriction of the parameter distributions) and append it with
:meth:`synth_torch.loop.rules.SliceReweighter.add_slices`.

Conventions
-----------
* A :class:`Predicate` is the half-open interval ``lo <= x < hi``; ``lo`` may be ``-inf`` and ``hi``
  ``+inf``. NaN parameter values satisfy no predicate; NaN and infinite values fall in no bin.
* Bins: per parameter, the ``1/n_bins .. (n_bins-1)/n_bins`` quantiles (duplicates removed, so
  discrete parameters get their distinct values as edges); the first bin is open below and the last
  open above. Constant parameters are skipped.
* Statistics: ``effect_size`` is Cohen's d of the slice's losses against the rest (pooled standard
  deviation); ``p_value`` is the one-sided Welch t-test p-value (slice mean greater), uncorrected.
  A candidate is kept when ``effect_size >= min_effect`` and ``p_value < alpha / m``, with ``m`` the
  number of candidates tested (both sides hold ``min_support`` samples): Bonferroni.
* Ranking: ``score = effect_size * sqrt(support)``.
* Names: predicates sorted by parameter name, joined with ``" & "``, numbers with 3 significant
  digits. Two regions whose edges agree to 3 digits share a name, which is what ``exclude`` matches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor

__all__ = ["MinedSlice", "Predicate", "check_options", "find_slices"]

_F64 = torch.float64


def _fmt(x: float) -> str:
    """Compact number: 3 significant digits, no exponent between 1e-4 and 1e6."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e3 <= abs(x) < 1e6:
        digits = int(math.floor(math.log10(abs(x)))) - 2
        return str(int(round(x, -digits)))
    s = f"{x:.3g}"
    return "0" if s == "-0" else s


@dataclass(frozen=True)
class Predicate:
    """``lo <= values < hi`` on the scenario parameter ``param``.

    Example:
        >>> str(Predicate("light.intensity", hi=0.2)), str(Predicate("motion_blur", lo=3))
        ('light.intensity<0.2', 'motion_blur>=3')
        >>> p = Predicate("light.intensity", 0.2, 0.5)
        >>> str(p)
        '0.2<=light.intensity<0.5'
        >>> p.mask(torch.tensor([0.1, 0.2, 0.5, float("nan")]))
        tensor([False,  True, False, False])
    """

    param: str
    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self) -> None:
        if not isinstance(self.param, str) or not self.param:
            raise TypeError(f"Predicate.param must be a non-empty str, got {self.param!r}")
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))
        if math.isnan(self.lo) or math.isnan(self.hi) or not self.lo < self.hi:
            raise ValueError(f"Predicate on {self.param!r} needs lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.lo == -math.inf and self.hi == math.inf:
            raise ValueError(f"Predicate on {self.param!r} must bound at least one side, got (-inf, inf)")

    def mask(self, values: Tensor) -> Tensor:
        """Bool tensor of the shape of ``values``; compared in float64, so edges are exact."""
        if not isinstance(values, Tensor):
            raise TypeError(f"values of {self.param!r} must be a torch.Tensor, got {type(values).__name__}")
        v = values if values.dtype == _F64 else values.to(_F64)
        return (v >= self.lo) & (v < self.hi)

    def __str__(self) -> str:
        if self.lo == -math.inf:
            return f"{self.param}<{_fmt(self.hi)}"
        if self.hi == math.inf:
            return f"{self.param}>={_fmt(self.lo)}"
        return f"{_fmt(self.lo)}<={self.param}<{_fmt(self.hi)}"


@dataclass(frozen=True)
class MinedSlice:
    """A conjunction of predicates with the statistics it was mined with.

    Attributes:
        predicates: the conjunction, sorted by parameter name.
        support: number of samples in the slice.
        mean_loss: mean loss inside the slice.
        rest_loss: mean loss outside it.
        effect_size: Cohen's d, slice against rest.
        p_value: one-sided Welch t-test p-value, uncorrected.
    """

    predicates: tuple[Predicate, ...]
    support: int
    mean_loss: float
    rest_loss: float
    effect_size: float
    p_value: float

    def __post_init__(self) -> None:
        preds = tuple(self.predicates)
        if not preds or not all(isinstance(p, Predicate) for p in preds):
            raise TypeError(f"MinedSlice.predicates must be a non-empty tuple of Predicate, got {self.predicates!r}")
        object.__setattr__(self, "predicates", preds)

    @property
    def name(self) -> str:
        return " & ".join(str(p) for p in self.predicates)

    @property
    def score(self) -> float:
        """Ranking score ``effect_size * sqrt(support)``."""
        return self.effect_size * math.sqrt(self.support)

    def mask(self, params: Mapping[str, Tensor]) -> Tensor:
        """Bool tensor :math:`(N,)`: samples whose parameters satisfy every predicate."""
        out: Tensor | None = None
        for p in self.predicates:
            if p.param not in params:
                raise ValueError(f"params has no key {p.param!r} needed by slice {self.name!r}; keys: {sorted(params)}")
            m = p.mask(params[p.param])
            out = m if out is None else out & m
        assert out is not None  # predicates is non-empty (checked in __post_init__)
        return out

    def __str__(self) -> str:
        return self.name


def _welch(n1: np.ndarray, s1: np.ndarray, ss1: np.ndarray, n2: np.ndarray, s2: np.ndarray, ss2: np.ndarray):
    """Vectorised Cohen's d and one-sided Welch p-value (group 1 greater) from counts, sums, sums of squares."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m1, m2 = s1 / n1, s2 / n2
        v1 = np.maximum(ss1 - n1 * m1 * m1, 0.0) / (n1 - 1)
        v2 = np.maximum(ss2 - n2 * m2 * m2, 0.0) / (n2 - 1)
        diff = m1 - m2
        pooled = np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
        d = np.where(pooled > 0, diff / pooled, np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0)))
        a1, a2 = v1 / n1, v2 / n2
        se = np.sqrt(a1 + a2)
        t = diff / se
        df = (a1 + a2) ** 2 / (a1 * a1 / (n1 - 1) + a2 * a2 / (n2 - 1))
        p = sps.t.sf(t, df)
        p = np.where(se > 0, p, np.where(diff > 0, 0.0, 1.0))
    return m1, m2, d, np.nan_to_num(p, nan=1.0)


def check_options(n_bins: int = 4, max_order: int = 2, min_support: int = 30, min_effect: float = 0.5,
                  alpha: float = 0.01, top_k: int = 3) -> None:
    """Validate :func:`find_slices`' options (so a configuration can be checked before any data exists);
    raises ``ValueError`` naming the option."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    if max_order not in (1, 2) or isinstance(max_order, bool):
        raise ValueError(f"max_order must be 1 or 2, got {max_order!r}")
    if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 2:
        raise ValueError(f"min_support must be an int >= 2, got {min_support!r}")
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or not math.isfinite(min_effect):
        raise ValueError(f"min_effect must be a finite number, got {min_effect!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")


def find_slices(
    params: Mapping[str, Tensor],
    losses: Tensor,
    n_bins: int = 4,
    max_order: int = 2,
    min_support: int = 30,
    min_effect: float = 0.5,
    alpha: float = 0.01,
    top_k: int = 3,
    exclude: Iterable[str | MinedSlice] = (),
) -> list[MinedSlice]:
    """Find up to ``top_k`` high-loss regions of parameter space.

    Candidates are all single quantile bins and, with ``max_order=2``, all pairs of bins of two
    different parameters. A candidate is tested when it and its complement both hold at least
    ``min_support`` samples, and kept when ``effect_size >= min_effect`` and
    ``p_value < alpha / (number tested)`` (see the module docstring). Then:

    * a pair is dropped unless, inside each of its two single-bin parents, it is itself significantly
      (same thresholds) worse than the rest of that parent, i.e. unless the conjunction adds
      information over both predicates alone;
    * candidates whose name is in ``exclude`` are dropped;
    * the rest are taken greedily by score; a candidate is skipped when its samples not covered by the
      slices already taken are no longer significantly worse than the samples outside all of them
      (so a region is not reported again through an overlapping parent or sibling).

    Args:
        params: scenario parameters per sample, each a real tensor :math:`(N,)`.
        losses: per-sample loss :math:`(N,)`, finite.
        n_bins: quantile bins per parameter (>= 2).
        max_order: 1 (single predicates) or 2 (also pairs).
        min_support: minimum samples in a slice and in its complement (>= 2).
        min_effect: minimum Cohen's d.
        alpha: family-wise significance level in (0, 1).
        top_k: maximum number of slices returned.
        exclude: names (or slices) already in the mixture.

    Returns:
        Mined slices, best score first.

    Shape:
        - params[name]: :math:`(N,)`
        - losses: :math:`(N,)`

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(2000, generator=g), torch.rand(2000, generator=g)
        >>> loss = 0.3 * torch.randn(2000, generator=g) + (x < 0.25).float()
        >>> [s.name for s in find_slices({"x": x, "y": y}, loss)]
        ['x<0.246']
    """
    if not isinstance(losses, Tensor) or losses.ndim != 1:
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a tensor of shape (N,), got {got}")
    check_options(n_bins=n_bins, max_order=max_order, min_support=min_support, min_effect=min_effect, alpha=alpha,
                  top_k=top_k)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping from name to tensor, got {type(params).__name__}")
    n = losses.shape[0]
    loss = losses.detach().to(device="cpu", dtype=_F64)
    if not torch.isfinite(loss).all():
        raise ValueError(f"losses must be finite; {int((~torch.isfinite(loss)).sum())} of {n} are not")
    excluded = {e.name if isinstance(e, MinedSlice) else str(e) for e in exclude}
    if top_k == 0 or n < 2 * min_support:
        return []

    # --- bins: one column of the indicator matrix per (parameter, bin)
    columns: list[Tensor] = []
    bin_pred: list[Predicate] = []
    bin_param: list[int] = []
    quantile_levels = torch.arange(1, n_bins, dtype=_F64) / n_bins
    for j, key in enumerate(sorted(params)):
        value = params[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"params[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.shape != (n,):
            raise ValueError(f"params[{key!r}] must have shape ({n},) like losses, got {tuple(value.shape)}")
        if value.is_complex():
            raise TypeError(f"params[{key!r}] must be real, got {value.dtype}")
        v = value.detach().to(device="cpu", dtype=_F64)
        finite = torch.isfinite(v)
        vals = v[finite]
        if vals.numel() < 2:
            continue
        vmin, vmax = vals.min(), vals.max()
        if vmin == vmax:
            continue
        edges = torch.unique(torch.quantile(vals, quantile_levels))
        edges = edges[(edges > vmin) & (edges <= vmax)]
        if edges.numel() == 0:  # heavy ties at the minimum: split just above it
            edges = vals[vals > vmin].min().reshape(1)
        idx = torch.bucketize(v, edges, right=True)  # edges[i-1] <= v < edges[i] -> i
        idx = torch.where(finite, idx, torch.full_like(idx, -1))
        bounds = [-math.inf, *edges.tolist(), math.inf]
        for b in range(len(bounds) - 1):
            columns.append(idx == b)
            bin_pred.append(Predicate(key, bounds[b], bounds[b + 1]))
            bin_param.append(j)
    if not columns:
        return []
    member = torch.stack(columns, 1)  # (N, M) bool
    ind = member.to(_F64)
    centre = loss.mean()
    lc = loss - centre  # centred for numerically stable sums of squares
    tot_n, tot_s, tot_ss = float(n), float(lc.sum()), float((lc * lc).sum())

    n1 = ind.sum(0)
    s1 = ind.T @ lc
    ss1 = ind.T @ (lc * lc)
    cand_n, cand_s, cand_ss = [n1], [s1], [ss1]
    m = ind.shape[1]
    cand_bins = [torch.stack([torch.arange(m), torch.full((m,), -1)], 1)]
    if max_order == 2:
        param_of = torch.tensor(bin_param)
        ii, jj = torch.triu_indices(m, m, offset=1)
        keep = param_of[ii] != param_of[jj]
        ii, jj = ii[keep], jj[keep]
        n2 = (ind.T @ ind)[ii, jj]
        s2 = (ind.T @ (ind * lc[:, None]))[ii, jj]
        ss2 = (ind.T @ (ind * (lc * lc)[:, None]))[ii, jj]
        cand_n.append(n2)
        cand_s.append(s2)
        cand_ss.append(ss2)
        cand_bins.append(torch.stack([ii, jj], 1))
    cn = torch.cat(cand_n).numpy()
    cs = torch.cat(cand_s).numpy()
    css = torch.cat(cand_ss).numpy()
    bins = torch.cat(cand_bins).numpy()

    tested = (cn >= min_support) & (tot_n - cn >= min_support)
    n_tested = int(tested.sum())
    if n_tested == 0:
        return []
    threshold = alpha / n_tested
    m1, m2, d, p = _welch(cn, cs, css, tot_n - cn, tot_s - cs, tot_ss - css)
    keep = tested & (d >= min_effect) & (p < threshold)

    # --- a pair must beat each single-bin parent: pair vs (parent minus pair)
    is_pair = bins[:, 1] >= 0
    for side in (0, 1):
        rows = np.nonzero(keep & is_pair)[0]
        if rows.size == 0:
            break
        parent = bins[rows, side]
        rn, rs, rss = cn[parent] - cn[rows], cs[parent] - cs[rows], css[parent] - css[rows]
        _, _, d_in, p_in = _welch(cn[rows], cs[rows], css[rows], rn, rs, rss)
        ok = (rn >= min_support) & (d_in >= min_effect) & (p_in < threshold)
        keep[rows[~ok]] = False

    def predicates_of(row: int) -> tuple[Predicate, ...]:
        preds = [bin_pred[b] for b in bins[row] if b >= 0]
        return tuple(sorted(preds, key=lambda q: q.param))

    rows = np.nonzero(keep)[0]
    score = d[rows] * np.sqrt(cn[rows])
    order = rows[np.argsort(-score, kind="stable")]

    # --- greedy selection: each slice must still stand out once the slices already taken are removed
    chosen: list[MinedSlice] = []
    covered = torch.zeros(n, dtype=torch.bool)
    for row in order:
        if len(chosen) == top_k:
            break
        preds = predicates_of(int(row))
        name = " & ".join(str(q) for q in preds)
        if name in excluded:
            continue
        cols = [int(b) for b in bins[row] if b >= 0]
        inside = member[:, cols].all(1)
        if chosen:
            new = inside & ~covered
            ref = ~(inside | covered)
            nn_, nr = int(new.sum()), int(ref.sum())
            if nn_ < min_support or nr < min_support:
                continue
            a, b = lc[new], lc[ref]
            _, _, d_new, p_new = _welch(
                np.array([nn_], float), np.array([float(a.sum())]), np.array([float((a * a).sum())]),
                np.array([nr], float), np.array([float(b.sum())]), np.array([float((b * b).sum())]),
            )
            if not (d_new[0] >= min_effect and p_new[0] < threshold):
                continue
        chosen.append(
            MinedSlice(
                predicates=preds,
                support=int(cn[row]),
                mean_loss=float(m1[row] + centre),
                rest_loss=float(m2[row] + centre),
                effect_size=float(d[row]),
                p_value=float(p[row]),
            )
        )
        covered |= inside
    return chosen
