"""Slice-mixture weight update rules for the closed data loop.

A scenario has ``K`` named slices, sampled with mixture probabilities ``probs``. After each
evaluation round the caller summarises the model's per-slice loss in a :class:`SliceStats` and calls
:meth:`SliceReweighter.update`, which returns the probabilities to sample with until the next round.
Sampling stays with the caller (e.g. ``torch.multinomial(probs, n, generator=g)``); this module only
computes the parameters of that draw, deterministically.

Conventions
-----------
* Slices are indexed ``0..K-1`` in the order the caller keeps its slice names; :meth:`add_slices`
  appends at the end.
* Loss: higher is worse. A NaN loss, or a zero count, means "no information" for that slice this round.
* ``probs`` (the sampling distribution) is ``(1 - floor) * q + floor / K``, where ``q`` is the
  distribution the rule and the safeguards work on. Every slice therefore keeps at least ``floor / K``.
* All state lives in CPU tensors (``float64``, ``int64``, ``bool``), returned by :meth:`state_dict`.
  ``update`` is a pure function of that state and its input, so ranks that feed it identical
  (all-reduced) statistics agree on ``probs`` without further communication.

One update, in order
--------------------
1. Bookkeeping: cumulative counts, the "impossible slice" (stall) detector.
2. The rule proposes a distribution (``"group_dro"``, ``"plr"`` or ``"exp3"``, see
   :class:`SliceReweighter`).
3. Caps: a slice with fewer than ``min_samples`` evaluated samples (or no information) may not exceed
   its previous ``q``; a stalled slice may not exceed its prior share. The mass the caps remove goes to
   the uncapped slices in proportion to the proposal (water-filling). If the caps cannot be met
   together, the ``min_samples`` caps are dropped and only the stall caps are kept.
4. ``max_change``: the total-variation distance ``0.5 * sum(|probs_new - probs_old|)`` is at most
   ``max_change``; a larger step is shrunk along the segment from the old to the new distribution
   (so the caps of step 3 keep holding, except that a stall freeze is itself rate-limited).
5. ``floor`` mixing gives ``probs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["RULES", "SliceReweighter", "SliceStats"]

RULES = ("group_dro", "plr", "exp3")

_STATE_VERSION = 1
_F64 = torch.float64
_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class SliceStats:
    """Per-slice evaluation summary of one round.

    Attributes:
        loss: mean loss of each slice (higher is worse); NaN where the slice had no samples.
        count: number of samples evaluated for each slice (non-negative, may be fractional).

    Shape:
        - loss: :math:`(K,)`, floating point.
        - count: :math:`(K,)`, any real dtype.

    A NaN loss or a zero count is "no information": the slice's weight is left to the safeguards.
    An infinite loss raises (a diverged loss should be seen, not silently averaged away).

    Example:
        >>> s = SliceStats.from_samples(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 2]), 3)
        >>> s.loss
        tensor([2., nan, 2.])
        >>> s.count
        tensor([2, 0, 1])
    """

    loss: Tensor
    count: Tensor

    def __post_init__(self) -> None:
        for key in ("loss", "count"):
            value = getattr(self, key)
            if not isinstance(value, Tensor):
                raise TypeError(f"SliceStats.{key} must be a torch.Tensor, got {type(value).__name__}")
        if self.loss.ndim != 1:
            raise ValueError(f"SliceStats.loss must have shape (K,), got {tuple(self.loss.shape)}")
        if not self.loss.is_floating_point():
            raise TypeError(f"SliceStats.loss must be floating point, got {self.loss.dtype}")
        if self.count.shape != self.loss.shape:
            raise ValueError(
                f"SliceStats.count must have the shape of loss {tuple(self.loss.shape)}, got {tuple(self.count.shape)}"
            )
        if self.count.dtype == torch.bool or self.count.is_complex():
            raise TypeError(f"SliceStats.count must be a real number tensor, got {self.count.dtype}")
        inf = torch.isinf(self.loss)
        if inf.any():
            raise ValueError(
                "SliceStats.loss must be finite or NaN (no information); "
                f"slices {inf.nonzero().flatten().tolist()} are infinite"
            )
        count = self.count.double()
        bad = ~torch.isfinite(count) | (count < 0)
        if bad.any():
            raise ValueError(
                f"SliceStats.count must be finite and >= 0; slices {bad.nonzero().flatten().tolist()} are not"
            )

    @property
    def num_slices(self) -> int:
        return self.loss.shape[0]

    def informative(self) -> Tensor:
        """Bool mask :math:`(K,)` of slices that carry information (finite loss and count > 0)."""
        return torch.isfinite(self.loss) & (self.count > 0)

    @classmethod
    def from_samples(cls, losses: Tensor, slice_index: Tensor, num_slices: int) -> SliceStats:
        """Mean loss and count per slice from per-sample losses.

        For data-parallel evaluation, all-reduce the per-slice sums and counts (not the means) before
        forming the statistics, so every rank passes identical stats to ``update``.

        Shape:
            - losses: :math:`(N,)` floating point.
            - slice_index: :math:`(N,)` integer in ``[0, num_slices)``.
        """
        if losses.ndim != 1 or slice_index.shape != losses.shape:
            raise ValueError(
                "losses and slice_index must both have shape (N,), "
                f"got {tuple(losses.shape)} and {tuple(slice_index.shape)}"
            )
        if slice_index.is_floating_point() or slice_index.dtype == torch.bool:
            raise TypeError(f"slice_index must be an integer tensor, got {slice_index.dtype}")
        if slice_index.numel() and (slice_index.min() < 0 or slice_index.max() >= num_slices):
            raise ValueError(f"slice_index must lie in [0, {num_slices}), got values in "
                             f"[{int(slice_index.min())}, {int(slice_index.max())}]")
        if not losses.is_floating_point():
            raise TypeError(f"losses must be floating point, got {losses.dtype}")
        values = losses.detach().double()
        idx = slice_index.to(values.device).long()
        count = torch.zeros(num_slices, dtype=torch.int64, device=values.device)
        count.index_add_(0, idx, torch.ones_like(idx))
        total = torch.zeros(num_slices, dtype=_F64, device=values.device).index_add_(0, idx, values)
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))
        return cls(loss=mean.to(losses.dtype), count=count)


class SliceReweighter:
    """Re-weights a slice mixture toward the slices the model fails on.

    Args:
        num_slices: number of slices ``K`` (at least 1).
        rule: one of ``"group_dro"``, ``"plr"``, ``"exp3"``:

            ``"group_dro"``
                Exponentiated-gradient group DRO (Sagawa et al. 2020):
                ``q_s <- probs_s * exp(eta * (loss_s + C / sqrt(n_s)))``, normalised, with ``n_s`` the
                cumulative number of samples evaluated for slice ``s``. The update multiplies the
                sampling probabilities ``probs``; with ``floor == 0`` this is exactly Sagawa et al.'s
                update, with ``floor > 0`` it is its fixed-share variant, so a slice whose weight
                decayed recovers quickly once it becomes hard. Only the mass of the informed slices is
                redistributed; slices without information keep theirs.
            ``"plr"``
                Rank prioritisation with staleness, as in Prioritized Level Replay (Jiang et al. 2021):
                ``q = (1 - rho) * h / sum(h) + rho * c / sum(c)`` with ``h_s = rank_s ** (-1 / beta)``
                (rank 1 = highest last-seen loss, ties share the average rank, never-evaluated slices
                rank first) and ``c_s`` the number of updates since the slice's evaluation *before* this
                round (or since it was added). Counting before the refresh matters: a slice that was not
                evaluated may not gain (``min_samples``), so its staleness bonus is paid in the round its
                fresh score arrives. Slices evaluated every round share the staleness term equally.
            ``"exp3"``
                Learning-progress bandit (EXP3, as in Graves et al. 2017): reward
                ``r_s = |loss_s - previous loss_s|`` divided by the largest reward seen so far (so
                ``r in [0, 1]``), importance-weighted ``x_s = r_s / probs_s`` and
                ``log w_s += eta * x_s``; ``q = (1 - gamma) * softmax(log w) + gamma / K``.
                Slices below ``min_samples`` earn no reward that round.

        eta: step size. Default 0.1 for ``"group_dro"`` and ``gamma / K`` (classic EXP3) for
            ``"exp3"``; unused by ``"plr"``.
        generalization_adjustment: ``C`` of group DRO (>= 0); unused by the other rules.
        beta: PLR temperature (> 0). The paper's 0.1 suits thousands of levels; with tens of slices it
            puts nearly all mass on one, hence the default 0.5 (``h = 1 / rank**2``).
        rho: PLR staleness coefficient in ``[0, 1]``.
        gamma: EXP3 exploration in ``(0, 1]``.
        floor: ``eps`` in ``[0, 1)``; ``probs = (1 - eps) * q + eps / K``.
        max_change: cap on the total-variation distance between consecutive ``probs``, in ``(0, 1]``;
            ``None`` disables it.
        min_samples: a slice with fewer evaluated samples this round (or no information) may not gain
            weight this round.
        patience: the impossible-slice guard. A slice whose loss fails to improve on its best value by
            more than ``min_delta`` for ``patience`` consecutive informed updates while holding more
            than its prior share is marked stalled and capped at its prior share (approached at the
            ``max_change`` rate). An improvement of more than ``min_delta`` clears the mark.
            ``None`` disables the guard.
        min_delta: absolute loss decrease that counts as progress (>= 0); set it near the noise level
            of the per-slice evaluation loss.
        prior: reference distribution :math:`(K,)` (default uniform): the starting ``q``, the share a
            stalled slice is capped at, and the fallback of PLR's staleness term.
        keep_history: keep a copy of ``probs`` after construction, each update and each
            :meth:`add_slices` in :attr:`history` (also checkpointed).

    Example:
        >>> rw = SliceReweighter(3, "group_dro", eta=1.0, floor=0.1, max_change=None, min_samples=1)
        >>> stats = SliceStats(loss=torch.tensor([0.2, 0.9, float("nan")]), count=torch.tensor([50, 50, 0]))
        >>> probs = rw.update(stats)
        >>> bool(probs[1] > probs[0]), bool(torch.isclose(probs[2], torch.tensor(1 / 3, dtype=probs.dtype)))
        (True, True)
        >>> rw.add_slices(1).shape
        torch.Size([4])
    """

    def __init__(
        self,
        num_slices: int,
        rule: str = "group_dro",
        *,
        eta: float | None = None,
        generalization_adjustment: float = 0.0,
        beta: float = 0.5,
        rho: float = 0.1,
        gamma: float = 0.1,
        floor: float = 0.05,
        max_change: float | None = 0.1,
        min_samples: int = 10,
        patience: int | None = 5,
        min_delta: float = 1e-3,
        prior: Tensor | None = None,
        keep_history: bool = True,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
            raise ValueError(f"num_slices must be an int >= 1, got {num_slices!r}")
        if eta is not None and not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
        if not (math.isfinite(generalization_adjustment) and generalization_adjustment >= 0):
            raise ValueError(f"generalization_adjustment must be >= 0, got {generalization_adjustment!r}")
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta!r}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {rho!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor (eps) must be in [0, 1), got {floor!r}")
        if max_change is not None and not 0.0 < max_change <= 1.0:
            raise ValueError(f"max_change must be None or in (0, 1], got {max_change!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
            raise ValueError(f"min_samples must be an int >= 0, got {min_samples!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be None or an int >= 1, got {patience!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")

        self.rule = rule
        self.eta = None if eta is None else float(eta)
        self.generalization_adjustment = float(generalization_adjustment)
        self.beta = float(beta)
        self.rho = float(rho)
        self.gamma = float(gamma)
        self.floor = float(floor)
        self.max_change = None if max_change is None else float(max_change)
        self.min_samples = min_samples
        self.patience = patience
        self.min_delta = float(min_delta)
        self.keep_history = keep_history

        k = num_slices
        if prior is None:
            prior_t = torch.full((k,), 1.0 / k, dtype=_F64)
        else:
            prior_t = _check_distribution("prior", prior, k)
        self._prior = prior_t
        self._q = prior_t.clone()
        self._step = torch.zeros((), dtype=torch.int64)
        self._cum_count = torch.zeros(k, dtype=_F64)
        self._last_loss = torch.full((k,), math.nan, dtype=_F64)
        self._best_loss = torch.full((k,), math.inf, dtype=_F64)
        self._wait = torch.zeros(k, dtype=torch.int64)
        self._stalled = torch.zeros(k, dtype=torch.bool)
        self._last_eval = torch.zeros(k, dtype=torch.int64)
        self._log_w = prior_t.log()
        self._reward_max = torch.zeros((), dtype=_F64)
        self._history: list[Tensor] = []
        self._record()

    # ------------------------------------------------------------------ read-only views
    @property
    def num_slices(self) -> int:
        return self._q.shape[0]

    @property
    def probs(self) -> Tensor:
        """Sampling probabilities :math:`(K,)`, float64, ``(1 - floor) * q + floor / K``."""
        k = self.num_slices
        return (1.0 - self.floor) * self._q + self.floor / k

    @property
    def prior(self) -> Tensor:
        return self._prior.clone()

    @property
    def stalled(self) -> Tensor:
        """Bool :math:`(K,)`: slices currently held at their prior share by the impossible-slice guard."""
        return self._stalled.clone()

    @property
    def step(self) -> int:
        """Number of updates applied so far."""
        return int(self._step)

    @property
    def history(self) -> list[Tensor]:
        """Copies of ``probs``: one at construction, one per update and one per ``add_slices``."""
        return [h.clone() for h in self._history]

    @property
    def state_key(self) -> str:
        """Key derived from the configuration, so that several instances can be checkpointed side by side."""
        cfg = {
            "rule": self.rule,
            "eta": self.eta,
            "C": self.generalization_adjustment,
            "beta": self.beta,
            "rho": self.rho,
            "gamma": self.gamma,
            "floor": self.floor,
            "max_change": self.max_change,
            "min_samples": self.min_samples,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }
        return f"{type(self).__name__}{cfg}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_slices={self.num_slices}, rule={self.rule!r}, step={self.step})"

    # ------------------------------------------------------------------ update
    def update(self, stats: SliceStats, probs: Tensor | None = None) -> Tensor:
        """Apply one evaluation round and return the new ``probs`` :math:`(K,)` (float64, CPU).

        ``stats`` must describe the model trained on data drawn from the current ``probs``. Pass ``probs``, the
        sampling probabilities actually in use, when they live elsewhere (e.g. a
        :class:`~synth_torch.data.mixture.SliceMixture` that gained mined slices): the rule continues from them,
        and slices beyond :attr:`num_slices` are appended first, never evaluated. The inputs are not modified.
        """
        if not isinstance(stats, SliceStats):
            raise TypeError(f"stats must be a SliceStats, got {type(stats).__name__}")
        if probs is not None:
            self._follow(probs)
        k = self.num_slices
        if stats.num_slices != k:
            raise ValueError(f"stats has {stats.num_slices} slices, expected {k} (call add_slices first?)")
        loss = stats.loss.detach().to(device="cpu", dtype=_F64)
        count = stats.count.detach().to(device="cpu", dtype=_F64)
        info = torch.isfinite(loss) & (count > 0)
        loss = torch.where(info, loss, torch.full_like(loss, math.nan))
        enough = info & (count >= self.min_samples)

        p_old = self.probs
        q_old = self._q
        step = self._step + 1

        self._cum_count = self._cum_count + torch.where(info, count, torch.zeros_like(count))
        self._update_stall(loss, info, q_old)

        prev_loss = self._last_loss
        staleness = (step - self._last_eval).to(_F64)  # before this round's refresh, see class docstring
        self._last_loss = torch.where(info, loss, prev_loss)
        self._last_eval = torch.where(info, step, self._last_eval)

        if self.rule == "group_dro":
            proposal = self._propose_group_dro(loss, info, p_old)
        elif self.rule == "plr":
            proposal = self._propose_plr(staleness)
        else:
            proposal = self._propose_exp3(loss, prev_loss, enough, p_old)

        q_new = self._apply_caps(proposal, q_old, blocked=~enough)
        q_new = self._limit_change(q_new, q_old)
        self._q = q_new / q_new.sum()
        self._step = step
        self._record()
        return self.probs

    def _update_stall(self, loss: Tensor, info: Tensor, q_old: Tensor) -> None:
        if self.patience is None:
            return
        improved = info & (loss < self._best_loss - self.min_delta)
        self._best_loss = torch.where(improved, loss, self._best_loss)
        elevated = q_old > self._prior * (1.0 + 1e-9)
        counting = info & ~improved & (elevated | self._stalled)
        reset = improved | (info & ~improved & ~elevated & ~self._stalled)
        self._wait = torch.where(counting, self._wait + 1, torch.where(reset, torch.zeros_like(self._wait), self._wait))
        self._stalled = (self._stalled & ~improved) | (self._wait >= self.patience)

    def _propose_group_dro(self, loss: Tensor, info: Tensor, p_old: Tensor) -> Tensor:
        if not info.any():
            return p_old.clone()
        eta = 0.1 if self.eta is None else self.eta
        adjusted = loss + self.generalization_adjustment / self._cum_count.clamp_min(1.0).sqrt()
        logits = p_old.clamp_min(_TINY).log() + eta * torch.where(info, adjusted, torch.zeros_like(adjusted))
        logits = torch.where(info, logits, torch.full_like(logits, -math.inf))
        informed_mass = p_old[info].sum()
        return torch.where(info, informed_mass * torch.softmax(logits, 0), p_old)

    def _propose_plr(self, staleness: Tensor) -> Tensor:
        score = torch.nan_to_num(self._last_loss, nan=math.inf)
        higher = (score[None, :] > score[:, None]).sum(1).to(_F64)
        ties = (score[None, :] == score[:, None]).sum(1).to(_F64) - 1.0
        rank = 1.0 + higher + 0.5 * ties
        h = rank.pow(-1.0 / self.beta)
        total = staleness.sum()
        p_stale = staleness / total if total > 0 else self._prior
        return (1.0 - self.rho) * h / h.sum() + self.rho * p_stale

    def _propose_exp3(self, loss: Tensor, prev_loss: Tensor, enough: Tensor, p_old: Tensor) -> Tensor:
        measured = enough & torch.isfinite(prev_loss)
        reward = torch.where(measured, (loss - prev_loss).abs(), torch.zeros_like(loss))
        self._reward_max = torch.maximum(self._reward_max, reward.max())
        if self._reward_max > 0:
            eta = self.gamma / self.num_slices if self.eta is None else self.eta
            estimate = (reward / self._reward_max) / p_old.clamp_min(_TINY)
            log_w = self._log_w + eta * estimate
            self._log_w = log_w - log_w.max()
        k = self.num_slices
        return (1.0 - self.gamma) * torch.softmax(self._log_w, 0) + self.gamma / k

    def _apply_caps(self, proposal: Tensor, q_old: Tensor, blocked: Tensor) -> Tensor:
        proposal = proposal.clamp_min(_TINY)
        proposal = proposal / proposal.sum()
        inf = torch.full_like(proposal, math.inf)
        stall_cap = torch.where(self._stalled, self._prior, inf)
        caps = torch.minimum(stall_cap, torch.where(blocked, q_old, inf))
        q = _water_fill(proposal, caps)
        if q is None:  # min_samples and stall caps cannot hold together: keep only the stall caps
            q = _water_fill(proposal, stall_cap)
        if q is None:  # unreachable (all-stalled caps sum to one), kept as a guard against rounding
            q = proposal
        return q

    def _limit_change(self, q_new: Tensor, q_old: Tensor) -> Tensor:
        if self.max_change is None:
            return q_new
        # TV(probs) = (1 - floor) * TV(q), so the cap on q is max_change / (1 - floor).
        limit = self.max_change / (1.0 - self.floor)
        tv = 0.5 * (q_new - q_old).abs().sum()
        if tv <= limit:
            return q_new
        return q_old + (limit / tv) * (q_new - q_old)

    def _record(self) -> None:
        if self.keep_history:
            self._history.append(self.probs)

    # ------------------------------------------------------------------ growth
    def add_slices(self, n: int, initial_share: float | None = None) -> Tensor:
        """Append ``n`` slices (e.g. newly mined ones) and return the new ``probs`` :math:`(K + n,)`.

        Each new slice gets ``q = initial_share`` (default ``1 / (K + n)``, i.e. the uniform share, which
        is also its ``probs`` share); the old slices' ``q`` is scaled by ``1 - n * initial_share``. The prior
        grows the same way with uniform shares ``1 / (K + n)``. The floor then holds for the new ``K``;
        ``max_change`` does not apply to this structural change. New slices have no history: they
        count as never evaluated.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        share = 1.0 / (self.num_slices + n) if initial_share is None else float(initial_share)
        if not (share > 0 and n * share < 1):
            raise ValueError(f"initial_share must be in (0, 1/n) = (0, {1 / n:.4g}) for n={n}, got {initial_share!r}")
        self._grow(torch.full((n,), share, dtype=_F64))
        self._record()
        return self.probs

    def _follow(self, probs: Tensor) -> None:
        """Continue from externally held sampling probabilities (inverting the floor mix; see :meth:`update`)."""
        p = _check_distribution("probs", probs, None)
        n = p.shape[0] - self.num_slices
        if n < 0:
            raise ValueError(f"probs has {p.shape[0]} slices, fewer than the rule's {self.num_slices}")
        k = p.shape[0]
        q = ((p - self.floor / k) / (1.0 - self.floor)).clamp_min(0.0)
        q = q / q.sum() if q.sum() > 0 else p
        if n:
            self._grow(q[-n:].clamp_min(_TINY))
        self._q = q

    def _grow(self, shares: Tensor) -> None:
        """Append ``len(shares)`` never-evaluated slices whose ``q`` is ``shares`` (the old ``q`` scaled down)."""
        n, k_old = shares.shape[0], self.num_slices
        k = k_old + n

        def grow(t: Tensor, value) -> Tensor:
            tail = value if torch.is_tensor(value) else torch.full((n,), value, dtype=t.dtype)
            return torch.cat([t, tail.to(t.dtype)])

        total = float(shares.sum())
        self._q = grow(self._q * (1.0 - total), shares)
        self._prior = grow(self._prior * (k_old / k), 1.0 / k)
        self._cum_count = grow(self._cum_count, 0.0)
        self._last_loss = grow(self._last_loss, math.nan)
        self._best_loss = grow(self._best_loss, math.inf)
        self._wait = grow(self._wait, 0)
        self._stalled = grow(self._stalled, False)
        self._last_eval = grow(self._last_eval, int(self._step))
        # New EXP3 weights such that softmax(log_w) gives each new slice its share.
        self._log_w = grow(self._log_w, torch.logsumexp(self._log_w, 0) + (shares / (1.0 - total)).log())

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """All mutable state (tensors, plus the rule name and a format version). Hyper-parameters
        come from the constructor, as for Lightning callbacks."""
        return {
            "version": _STATE_VERSION,
            "rule": self.rule,
            "step": self._step.clone(),
            "q": self._q.clone(),
            "prior": self._prior.clone(),
            "cum_count": self._cum_count.clone(),
            "last_loss": self._last_loss.clone(),
            "best_loss": self._best_loss.clone(),
            "wait": self._wait.clone(),
            "stalled": self._stalled.clone(),
            "last_eval": self._last_eval.clone(),
            "log_w": self._log_w.clone(),
            "reward_max": self._reward_max.clone(),
            "history": [h.clone() for h in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output. ``K`` is taken from the checkpoint; fields missing from
        an older checkpoint fall back to fresh-state defaults."""
        rule = state.get("rule", self.rule)
        if rule != self.rule:
            raise ValueError(f"checkpoint was written by rule {rule!r}, this instance uses {self.rule!r}")
        if "q" not in state:
            raise ValueError(f"state has no 'q' entry; keys: {sorted(state)}")
        q = _check_distribution("state['q']", state["q"], None)
        k = q.shape[0]

        def get(key: str, default: Tensor, dtype: torch.dtype) -> Tensor:
            value = state.get(key)
            if value is None:
                return default
            value = torch.as_tensor(value).detach().to(device="cpu", dtype=dtype).clone()
            if value.shape != default.shape:
                raise ValueError(f"state[{key!r}] must have shape {tuple(default.shape)}, got {tuple(value.shape)}")
            return value

        self._q = q
        self._prior = get("prior", torch.full((k,), 1.0 / k, dtype=_F64), _F64)
        self._step = get("step", torch.zeros((), dtype=torch.int64), torch.int64)
        self._cum_count = get("cum_count", torch.zeros(k, dtype=_F64), _F64)
        self._last_loss = get("last_loss", torch.full((k,), math.nan, dtype=_F64), _F64)
        self._best_loss = get("best_loss", torch.full((k,), math.inf, dtype=_F64), _F64)
        self._wait = get("wait", torch.zeros(k, dtype=torch.int64), torch.int64)
        self._stalled = get("stalled", torch.zeros(k, dtype=torch.bool), torch.bool)
        self._last_eval = get("last_eval", torch.full((k,), int(self._step), dtype=torch.int64), torch.int64)
        self._log_w = get("log_w", self._prior.log(), _F64)
        self._reward_max = get("reward_max", torch.zeros((), dtype=_F64), _F64)
        self._history = [torch.as_tensor(h).to(device="cpu", dtype=_F64).clone() for h in state.get("history", [])]


def _check_distribution(name: str, value: Any, k: int | None) -> Tensor:
    t = torch.as_tensor(value).detach().to(device="cpu", dtype=_F64).clone()
    if t.ndim != 1 or (k is not None and t.shape[0] != k) or t.shape[0] < 1:
        expected = "(K,)" if k is None else f"({k},)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or t.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and have a positive sum, got {t.tolist()}")
    return t / t.sum()


def _water_fill(proposal: Tensor, caps: Tensor) -> Tensor | None:
    """``q = min(caps, t * proposal)`` with ``t`` such that ``q`` sums to one; None when ``sum(caps) < 1``.

    ``proposal`` must be strictly positive and sum to one, so ``t >= 1``: uncapped slices never get less
    than proposed.
    """
    fixed = proposal >= caps  # caps binding already at t = 1
    for _ in range(proposal.shape[0] + 1):
        free = ~fixed
        remaining = 1.0 - caps[fixed].sum()
        if not free.any():
            return caps / caps.sum() if remaining <= 1e-12 else None
        t = remaining / proposal[free].sum()
        newly = free & (t * proposal > caps)
        if not newly.any():
            return torch.where(fixed, caps, t * proposal)
        fixed = fixed | newly
    return None  # pragma: no cover - the loop fixes at least one slice per pass
