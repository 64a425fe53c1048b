"""Hard examples found by gradient: continuous scene parameters on which a model's loss is high.

:func:`gradient_search` ascends a per-sample loss with respect to chosen continuous values of
:class:`~synth_torch.scenario.sampler.SceneParams`: light direction and intensity, camera pose, material albedo,
defect contrast and size, ... (``Batch.params`` names). Every step renders the batch with
:meth:`SynthDataset.render_params`; values that require a gradient send it down the differentiable torch paths
(geometry, G-buffer, shader, sensor), so the gradient flows from the image back to the values, while the labels,
piecewise constant in the values, come out exact. ``torch.optim.Adam`` (``maximize=True``; one parameter group
per parameter, its learning rate ``lr`` times the parameter's range) takes the step, and the values are projected
(clamped) back into the scenario's declared range, :meth:`Scenario.support`. Structural draws (object yaw and
placement, defect positions, categories) and integer parameters (counts) are never searched.

:func:`random_search` is the baseline at the same number of renders: uniform draws within the same ranges.
Both keep, per sample, the values of the highest loss seen: ``dataset.render_params(result.params)`` re-renders
those samples with exact labels. :func:`hard_region` turns a result into a box of at most
``MAX_PREDICATES`` predicates that the scenario can render (``SliceMixture.add(name, predicates, weight)``),
ranking the parameters by the loss's sensitivity to them (gradient search) or by how far they moved, each bounded
on the side where the loss rose;
:func:`region_losses` measures boxes on fresh samples, paired with the base distribution; :func:`check_region`
keeps the box (or one of its predicates alone) that is significantly harder there; :func:`mine_hard_region` does
it all for a task and returns an item shaped like the ``SliceMiner``'s mined slices (``mine_by="gradient"``).

Example:
    >>> ds = SynthDataset("defects", batch_size=4, resolution=32)
    >>> def dark(batch):  # a "model" whose loss is high on dark images
    ...     return 1.0 - batch.image.mean((1, 2, 3))
    >>> found = gradient_search(ds, dark, ["light.intensity"], torch.arange(4), steps=4, lr=0.2)
    >>> bool((found.values["light.intensity"][-1] < found.values["light.intensity"][0]).all())
    True
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from scipy import stats
from torch import Tensor

from synth_torch.data.batch import Batch
from synth_torch.data.dataset import SynthDataset
from synth_torch.data.mixture import MAX_PREDICATES
from synth_torch.loop.mining import Predicate
from synth_torch.scenario.config import Scenario
from synth_torch.scenario.distributions import ConfigError
from synth_torch.scenario.sampler import SceneParams
from synth_torch.spec import params as registry

__all__ = ["HardExamples", "LossFn", "check_region", "gradient_search", "hard_region", "mine_hard_region",
           "random_search", "region_losses", "search_bounds", "searchable_params", "task_loss"]

LossFn = Callable[[Batch], Tensor]
"""A per-sample loss: ``loss_fn(batch)`` -> [B], higher is worse; differentiable in ``batch.image`` for
:func:`gradient_search`."""


@dataclass(frozen=True)
class HardExamples:
    """The outcome of a search over ``names`` for B samples: R renders of the batch, ``R * B`` images.

    Attributes:
        params: per sample, the values of the render with the highest loss (every other value as drawn);
            ``dataset.render_params(params)`` re-renders those samples with exact labels.
        names: the searched parameters.
        bounds: name -> (lo, hi), the declared range the values were kept in.
        values: name -> the values of every render, [R, B] (per-object parameters [R, B, S]); ``[0]`` holds the
            starting values, as the dataset draws them.
        loss: [R, B] the loss of every render.
        method: ``"gradient"`` or ``"random"``.
        seconds: wall time of the search.
        sensitivity: gradient search only (else None): name -> [B] (per-object [B, S]) the mean over its steps of
            ``|d loss / d value| * (hi - lo)``, the loss change a move across the whole range would make.
    """

    params: SceneParams
    names: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]
    values: dict[str, Tensor]
    loss: Tensor
    method: str
    seconds: float
    sensitivity: dict[str, Tensor] | None = None

    @property
    def renders(self) -> int:
        """Images rendered, ``R * B``."""
        return self.loss.numel()

    @property
    def best_step(self) -> Tensor:
        """[B] the render (0..R-1) whose values :attr:`params` holds."""
        return self.loss.argmax(0)

    @property
    def best_loss(self) -> Tensor:
        """[B] the highest loss seen per sample."""
        return self.loss.amax(0)

    def best_so_far(self) -> Tensor:
        """[R, B] the highest loss seen per sample up to each render."""
        return self.loss.cummax(0).values


def search_bounds(scenario: Scenario, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The declared range (:meth:`Scenario.support`) of each parameter in ``names``; raises ``ValueError`` naming a
    parameter that is unknown, repeated, an integer (a count) or constant in the scenario."""
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty sequence of parameter names, got {names!r}")
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        try:
            param = registry.get(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if name in out:
            raise ValueError(f"parameter {name!r} is listed twice")
        if param.integer:
            raise ValueError(f"{name} is an integer parameter (a count); only continuous parameters are searched")
        lo, hi = scenario.support(name)
        if not lo < hi:
            raise ValueError(f"{name} is constant ({lo:g}) in scenario {scenario.name!r}; there is nothing to search")
        out[name] = (lo, hi)
    return out


def searchable_params(scenario: Scenario) -> list[str]:
    """The per-image continuous parameters that vary in ``scenario`` (a default for what to search)."""
    out = []
    for param in registry.PARAMS:
        if param.integer or param.per_object:
            continue
        lo, hi = scenario.support(param.name)
        if lo < hi:
            out.append(param.name)
    return out


def _start(dataset: SynthDataset, sample_index: Tensor, slice_id: Tensor | None) -> SceneParams:
    index = torch.as_tensor(sample_index, dtype=torch.int64).cpu()
    if index.ndim != 1 or index.numel() == 0:
        raise ValueError(f"sample_index must have shape [B] with B >= 1, got {tuple(index.shape)}")
    return dataset.sample_params(index, slice_id)


def task_loss(task) -> LossFn:
    """A task's :meth:`~synth_torch.loop.tasks.SliceTask.per_sample_loss` with gradients: the same definition
    (eval mode, the miner's loss) without its ``torch.no_grad`` wrapper, for :func:`gradient_search`."""
    return partial(inspect.unwrap(type(task).per_sample_loss), task)


def _evaluate(loss_fn: LossFn, batch: Batch, grad: bool) -> Tensor:
    loss = loss_fn(batch)
    B = batch.image.shape[0]
    if not isinstance(loss, Tensor) or loss.shape != (B,):
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a per-sample loss of shape ({B},), got {got}")
    if not torch.isfinite(loss.detach()).all():
        raise ValueError(f"loss_fn returned non-finite losses {loss.detach().cpu().tolist()}")
    if grad and not loss.requires_grad:
        raise ValueError("loss_fn returned a loss without a gradient; SliceTask.per_sample_loss runs under "
                         "torch.no_grad: pass task_loss(task)")
    return loss


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (renders of the batch), got {steps!r}")
    return steps


def _result(start: SceneParams, bounds: dict, values: dict[str, list[Tensor]], losses: list[Tensor], method: str,
            seconds: float, sensitivity: dict[str, Tensor] | None = None) -> HardExamples:
    loss = torch.stack(losses)
    stacked = {n: torch.stack(v) for n, v in values.items()}
    best, rows = loss.argmax(0), torch.arange(loss.shape[1])
    params = replace(start, values={**start.values, **{n: v[best, rows] for n, v in stacked.items()}})
    return HardExamples(params=params, names=tuple(bounds), bounds=bounds, values=stacked, loss=loss,
                        method=method, seconds=seconds, sensitivity=sensitivity)


def gradient_search(dataset: SynthDataset, loss_fn: LossFn, names: Sequence[str], sample_index: Tensor,
                    steps: int = 16, lr: float = 0.1, slice_id: Tensor | None = None) -> HardExamples:
    """Ascend ``loss_fn`` with respect to the parameters ``names`` of samples ``sample_index``.

    Args:
        dataset: renders the samples (its scenario declares the ranges).
        loss_fn: per-sample loss, differentiable in ``batch.image`` (for a task: :func:`task_loss`).
        names: continuous parameters to search (see :func:`search_bounds`).
        sample_index: the starting samples, as the dataset draws them (:meth:`SynthDataset.sample_params`).
        steps: renders of the batch, the first at the starting values (so ``steps - 1`` Adam steps).
        lr: Adam's learning rate in fractions of each parameter's range.
        slice_id: the starting samples' slices (None: drawn from the dataset's mixture).

    Returns:
        :class:`HardExamples` with ``method="gradient"``.

    Shape:
        - sample_index: :math:`(B)`
        - result.loss: :math:`(steps, B)`
    """
    bounds = search_bounds(dataset.scenario, names)
    steps = _check_steps(steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive number (a fraction of each range), got {lr!r}")
    began = time.perf_counter()
    start = _start(dataset, sample_index, slice_id)
    leaves = {n: start.values[n].detach().clone().requires_grad_(True) for n in bounds}
    opt = torch.optim.Adam([{"params": [leaves[n]], "lr": lr * (hi - lo)} for n, (lo, hi) in bounds.items()],
                           maximize=True)
    values: dict[str, list[Tensor]] = {n: [] for n in bounds}
    sensitivity = {n: torch.zeros_like(leaf, dtype=torch.float64) for n, leaf in leaves.items()}
    losses: list[Tensor] = []
    for step in range(steps):
        with torch.enable_grad():
            batch = dataset.render_params(replace(start, values={**start.values, **leaves}))
            loss = _evaluate(loss_fn, batch, grad=True)
        losses.append(loss.detach().float().cpu())
        for n, leaf in leaves.items():
            values[n].append(leaf.detach().clone())
        if step == steps - 1:
            break
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)  # the model keeps no .grad
        if all(g is None for g in grads):
            raise ValueError(f"the loss depends on none of {list(leaves)} in scenario {dataset.scenario.name!r}")
        for (n, leaf), g in zip(leaves.items(), grads):
            leaf.grad = torch.zeros_like(leaf) if g is None else g  # a value the scene does not use stays put
            lo, hi = bounds[n]
            sensitivity[n] += leaf.grad.detach().double().abs() * (hi - lo) / (steps - 1)
        opt.step()
        with torch.no_grad():
            for n, leaf in leaves.items():
                leaf.clamp_(*bounds[n])
    return _result(start, bounds, values, losses, "gradient", time.perf_counter() - began,
                   sensitivity if steps > 1 else None)


@torch.no_grad()
def random_search(dataset: SynthDataset, loss_fn: LossFn, names: Sequence[str], sample_index: Tensor,
                  steps: int = 16, seed: int = 0, slice_id: Tensor | None = None) -> HardExamples:
    """Random search at the budget of :func:`gradient_search`: render 0 at the starting values, then ``steps - 1``
    renders at values drawn uniformly within the declared ranges (every sample and object slot independently,
    from a generator seeded with ``seed``). Arguments as :func:`gradient_search`; ``method="random"``."""
    bounds = search_bounds(dataset.scenario, names)
    steps = _check_steps(steps)
    began = time.perf_counter()
    start = _start(dataset, sample_index, slice_id)
    gen = torch.Generator().manual_seed(int(seed))
    values: dict[str, list[Tensor]] = {n: [] for n in bounds}
    losses: list[Tensor] = []
    for step in range(steps):
        draw = {n: start.values[n] if step == 0 else
                (lo + (hi - lo) * torch.rand(start.values[n].shape, generator=gen, dtype=torch.float64)).float()
                .clamp_(lo, hi) for n, (lo, hi) in bounds.items()}
        batch = dataset.render_params(replace(start, values={**start.values, **draw}))
        losses.append(_evaluate(loss_fn, batch, grad=False).float().cpu())
        for n, v in draw.items():
            values[n].append(v.clone())
    return _result(start, bounds, values, losses, "random", time.perf_counter() - began)


def hard_region(result: HardExamples, scenario: Scenario, max_predicates: int = MAX_PREDICATES,
                min_shift: float = 0.1, margin: float = 0.05, rank_by: str = "sensitivity",
                shape: str = "one_sided") -> list[Predicate]:
    """A box in parameter space around the hard samples of a search, renderable as a mined slice.

    Only samples whose loss rose above their starting loss count. A per-image parameter qualifies when the median
    shift of those samples' values, from the start to their hardest render, is at least ``min_shift`` of its range.
    The qualifying parameters are ranked by ``rank_by``: ``"sensitivity"`` (gradient search: the mean of
    :attr:`HardExamples.sensitivity` over those samples) or ``"shift"`` (the median shift, for any search; under
    Adam, which normalises each coordinate's step, a poor measure of importance). The ``shape`` of each side:

    - ``"one_sided"``: the side the hard values moved to, from their median on (``light.intensity<0.31`` when
      the median shift is downward): where the loss rises, whatever the spread of the hard values. A median
      beyond the base distribution's support (the search covers every slice's range) is moved to its edge, so
      the box is that edge's ``margin`` band (``defects.contrast<0.33`` when the base draws 0.3..0.7).
    - ``"span"``: the hard values' lowest to highest (the first version; wide when a few hard values stay put).

    The bound is padded by ``margin`` of the range and the box is cut to the base distribution's support (a mined
    slice restricts it): a side that reaches the support's edge is left open, and a parameter whose box misses
    that support or covers all of it is dropped. Per-object parameters (``material.*``) are searched but never
    form a region.

    Returns:
        Up to ``max_predicates`` predicates, the highest ranked first, for ``SliceMixture.add(name, predicates,
        weight)``; empty when the search found no region.
    """
    if isinstance(max_predicates, bool) or not isinstance(max_predicates, int) or \
            not 1 <= max_predicates <= MAX_PREDICATES:
        raise ValueError(f"max_predicates must be an int in 1..{MAX_PREDICATES}, got {max_predicates!r}")
    if not 0 <= min_shift <= 1 or not 0 <= margin <= 1:
        raise ValueError(f"min_shift and margin are fractions of a range in [0, 1], got {min_shift}, {margin}")
    if rank_by not in ("sensitivity", "shift"):
        raise ValueError(f"rank_by must be 'sensitivity' or 'shift', got {rank_by!r}")
    if shape not in ("one_sided", "span"):
        raise ValueError(f"shape must be 'one_sided' or 'span', got {shape!r}")
    if rank_by == "sensitivity" and result.sensitivity is None:
        raise ValueError(f"a {result.method} search measures no sensitivity; rank its region by 'shift'")
    rose = result.best_loss > result.loss[0]
    if not rose.any():
        return []
    best, rows = result.best_step[rose], rose.nonzero().flatten()
    candidates = []
    for name in result.names:
        v = result.values[name].double()
        if v.ndim != 2:
            continue
        lo, hi = result.bounds[name]
        hard = v[best, rows]
        shift = float((hard - v[0, rows]).median()) / (hi - lo)
        if abs(shift) >= min_shift:
            rank = abs(shift) if rank_by == "shift" else float(result.sensitivity[name][rows].mean())
            if shape == "span":
                side = (float(hard.min()), float(hard.max()))
            else:
                s_lo, s_hi = scenario.parameters[name].support
                mid = min(max(float(hard.quantile(0.5)), s_lo), s_hi)
                side = (-math.inf, mid) if shift < 0 else (mid, math.inf)
            candidates.append((rank, name, *side, hi - lo))
    out = []
    for _, name, h_lo, h_hi, width in sorted(candidates, reverse=True):
        s_lo, s_hi = scenario.parameters[name].support
        lo, hi = h_lo - margin * width, h_hi + margin * width
        lo, hi = -math.inf if lo <= s_lo else lo, math.inf if hi >= s_hi else hi
        if lo == -math.inf and hi == math.inf:
            continue
        try:
            scenario.parameters[name].restrict(lo, hi)
        except ConfigError:
            continue
        out.append(Predicate(name, lo, hi))
        if len(out) == max_predicates:
            break
    return out


@torch.no_grad()
def region_losses(dataset: SynthDataset, loss_fn: LossFn, regions: Sequence[Sequence[Predicate]],
                  sample_index: Tensor) -> tuple[Tensor, Tensor]:
    """Losses of fresh samples inside each region and of the same samples outside them, paired: every sample is
    drawn from the scenario's base distribution (no slice), once per region with its parameters restricted to it.

    Returns:
        (inside [C, N], base [N]) for C ``regions`` and ``sample_index`` [N], rendered in batches of
        ``dataset.batch_size``.
    """
    if isinstance(regions, Predicate) or not regions or any(isinstance(r, Predicate) or not r for r in regions):
        raise ValueError(f"regions must be a non-empty list of regions, each a non-empty list of predicates, got "
                         f"{regions!r}")
    scenario = dataset.scenario
    restricted = [{p.param: scenario.parameters[p.param].restrict(p.lo, p.hi) for p in r} for r in regions]
    index = torch.as_tensor(sample_index, dtype=torch.int64).cpu()
    inside: list[list[Tensor]] = [[] for _ in restricted]
    base = []
    for chunk in index.split(dataset.batch_size):
        zeros = torch.zeros_like(chunk)
        for overrides, out in [({}, base)] + list(zip(restricted, inside)):
            batch = dataset.render_params(dataset.sampler.sample_params(chunk, zeros, [overrides]))
            out.append(_evaluate(loss_fn, batch, grad=False).double().cpu())
    return torch.stack([torch.cat(x) for x in inside]), torch.cat(base)


def _paired(inside: Tensor, base: Tensor) -> tuple[float, float]:
    """(effect size, one-sided paired t-test p-value that ``inside`` is greater)."""
    diff = inside - base
    mean, sd = float(diff.mean()), float(diff.std()) if diff.numel() > 1 else 0.0
    if sd > 0:
        return mean / sd, float(stats.ttest_rel(inside.numpy(), base.numpy(), alternative="greater").pvalue)
    return (math.copysign(math.inf, mean) if mean else 0.0), (0.0 if mean > 0 else 1.0)  # every pair differs alike


def check_region(dataset: SynthDataset, loss_fn: LossFn, predicates: Sequence[Predicate], sample_index: Tensor,
                 alpha: float = 0.05) -> dict | None:
    """Check a box from :func:`hard_region` on fresh samples before it becomes a slice.

    The candidates are the box and, for a box of two predicates, each predicate alone. Each is measured on the
    samples ``sample_index``, paired with the same samples from the base distribution (:func:`region_losses`),
    and tested one-sided (inside harder); the p-values are Bonferroni-corrected for the number of candidates.

    Returns:
        None when no candidate is harder at level ``alpha``, else the one with the largest mean paired difference,
        as a mined-slice item: ``name``, ``predicates`` as ``(param, lo, hi)`` tuples, ``support`` (samples
        checked), ``mean_loss`` (their loss inside the region), ``rest_loss`` (the same samples from the base
        distribution), ``effect_size`` (mean paired difference over its standard deviation), ``p_value``
        (corrected), ``candidates`` (how many were checked) and ``renders`` (images rendered).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    predicates = list(predicates)
    if not predicates:
        return None
    candidates = [predicates] + ([[p] for p in predicates] if len(predicates) > 1 else [])
    inside, base = region_losses(dataset, loss_fn, candidates, sample_index)
    best = None
    for preds, losses in zip(candidates, inside):
        effect, p_value = _paired(losses, base)
        p_value = min(1.0, p_value * len(candidates))
        gain = float((losses - base).mean())
        if p_value < alpha and (best is None or gain > best[0]):
            best = (gain, preds, losses, effect, p_value)
    if best is None:
        return None
    _, preds, losses, effect, p_value = best
    return {"name": " & ".join(str(p) for p in preds), "predicates": [(p.param, p.lo, p.hi) for p in preds],
            "support": int(losses.numel()), "mean_loss": float(losses.mean()), "rest_loss": float(base.mean()),
            "effect_size": effect, "p_value": p_value, "candidates": len(candidates),
            "renders": (len(candidates) + 1) * int(losses.numel())}


def mine_hard_region(task, dataset: SynthDataset, names: Sequence[str], sample_index: Tensor, check_index: Tensor,
                     steps: int = 16, lr: float = 0.1, slice_id: Tensor | None = None, alpha: float = 0.05,
                     **region) -> dict | None:
    """Gradient search from ``sample_index`` (slices ``slice_id``), :func:`hard_region` ranked by sensitivity
    (keyword options ``region``) and :func:`check_region` on the fresh samples ``check_index``, for the
    ``SliceMiner``. Batches go to the task's device for the loss.

    Returns:
        None when the search found no region or none passed the check, else :func:`check_region`'s item with
        ``renders`` counting the search too and ``method="gradient"``.
    """
    def loss(fn: LossFn) -> LossFn:
        return lambda batch: fn(batch.to(task.device)).cpu()

    result = gradient_search(dataset, loss(task_loss(task)), names, sample_index, steps=steps, lr=lr,
                             slice_id=slice_id)
    item = check_region(dataset, loss(task.per_sample_loss), hard_region(result, dataset.scenario, **region),
                        check_index, alpha)
    if item is None:
        return None
    return item | {"renders": item["renders"] + result.renders, "method": "gradient"}
