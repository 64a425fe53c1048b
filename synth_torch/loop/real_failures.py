"""Real failures mapped back to scenario parameters (issue 11).

A segmentation model is scored image by image on a labelled real set (:func:`per_image_scores`); its failures
are placed among synthetic samples of the scenario in the model's own feature space (:func:`synthetic_pool`,
:func:`map_failures`): the ``k`` nearest synthetic neighbours of every failing real image, whose sampled
parameters and defect types are known. Parameters whose neighbour distribution departs from the pool's
(two-sample Kolmogorov-Smirnov) give the region (:meth:`FailureMap.predicates`), which becomes a mined slice
(``SliceMixture.add(name, predicates, weight)``) or a scenario slice (:func:`slice_override`,
:func:`hydra_override`).

Nearest neighbours rather than a parameter regressor: they need no training, handle discrete parameters and
defect types as well as continuous ones, never leave the scenario's support (a regressor extrapolates on
out-of-domain real features), and return synthetic samples that re-render exactly (``pool.keys``).
:attr:`FailureMap.gap` says how far the failures lie from the synthetic samples, relative to the spacing of
the synthetic samples themselves: a large gap means the scenario does not cover them and the region is only
the closest the scenario gets.

Features are the spatial mean and max of one layer's activations (by default the deepest encoder block of a
:class:`~synth_torch.loop.models.TinyUNet`), captured by a forward hook during the same forward pass that
computes the per-image loss. Distances are Euclidean after standardising every feature channel by the pool.

Example:
    >>> stream = SynthDataset("defects", batch_size=32, resolution=96)  # doctest: +SKIP
    >>> scores = per_image_scores(task, DataLoader(real_val, batch_size=16, collate_fn=collate_real))  # doctest: +SKIP
    >>> pool = synthetic_pool(task, stream, 1024)  # doctest: +SKIP
    >>> found = map_failures(scores.features[scores.loss > 0.5], pool, k=8)  # doctest: +SKIP
    >>> hydra_override("real_failures", slice_override(found.predicates(), stream.scenario, 1.0))  # doctest: +SKIP
    '+scenario.slices.real_failures={weight:1,defects:{count:{uniform:[1,3]},contrast:{uniform:[0.334094,0.634013]}}}'
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import Tensor, nn

from synth_torch.data.dataset import SynthDataset
from synth_torch.loop.mining import Predicate
from synth_torch.loop.models import TinyUNet
from synth_torch.loop.tasks import SegmentationTask
from synth_torch.scenario.config import Scenario
from synth_torch.spec.params import SECTIONS

__all__ = ["FailureMap", "ImageScores", "ParameterShift", "SyntheticPool", "apparent_contrast", "hydra_override",
           "map_failures", "per_image_scores", "slice_override", "synthetic_pool"]


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores and features of a segmentation model on a labelled set (real photos or synthetic).

    Shape (``N`` images, ``D`` feature channels; every score from the argmax prediction unless said):
        - loss: :math:`(N,)` the task's per-image loss (:meth:`SegmentationTask.per_sample_loss`: with the default
          ``miner_loss="dice"``, 1 - soft foreground Dice on an image with foreground, the largest foreground
          probability on one without)
        - iou: :math:`(N,)` foreground IoU; NaN where neither label nor prediction has foreground
        - recall: :math:`(N,)` share of labelled foreground pixels predicted foreground; NaN without any
        - false_alarm: :math:`(N,)` share of background pixels predicted foreground
        - inter, union, positives: :math:`(N,)` foreground pixel counts (pool them for a set's IoU and recall)
        - features: :math:`(N, D)` float32, spatial mean then max of the hooked layer's channels
        - keys: ``N`` names (``RealBatch.keys``, or ``Batch.sample_id`` as strings)
    """

    loss: Tensor
    iou: Tensor
    recall: Tensor
    false_alarm: Tensor
    inter: Tensor
    union: Tensor
    positives: Tensor
    features: Tensor
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return self.loss.shape[0]

    @property
    def has_defect(self) -> Tensor:
        """Bool :math:`(N,)`: the image has labelled foreground."""
        return self.positives > 0


@dataclass(frozen=True)
class SyntheticPool:
    """Synthetic samples placed in the model's feature space, with what they were rendered from.

    Shape (``M`` samples, ``T`` labelled defect types):
        - scores: :class:`ImageScores` of the ``M`` samples (``keys`` are their ``Batch.sample_id``)
        - params: name -> :math:`(M,)` sampled scenario parameters (``Batch.params``)
        - types: :math:`(M, T)` bool, defect type ``t`` (class id ``t + 1``) is visible in the sample
        - type_names: the ``T`` class names (``Scenario.class_names``)
    """

    scores: ImageScores
    params: dict[str, Tensor]
    types: Tensor
    type_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class ParameterShift:
    """How the failures' synthetic neighbours differ from the pool in one parameter.

    Attributes:
        param: the scenario parameter (``defects.contrast``).
        lo, hi: the neighbours' central interval (their ``quantile`` and ``1 - quantile`` quantiles).
        median, pool_median: medians of the neighbours and of the pool.
        pool_lo, pool_hi: the pool's range.
        ks: two-sample Kolmogorov-Smirnov statistic, neighbours (with repeats) against the pool.
        p_value: its p-value, which treats the ``F * k`` neighbours as independent draws: a screening
            figure, optimistic when few pool samples are the neighbours of many failures.
    """

    param: str
    lo: float
    hi: float
    median: float
    pool_median: float
    pool_lo: float
    pool_hi: float
    ks: float
    p_value: float

    def predicate(self) -> Predicate | None:
        """``lo <= param < hi``, open on a side that reaches the pool's range; None when both sides do."""
        lo = -math.inf if self.lo <= self.pool_lo else self.lo
        hi = math.inf if self.hi >= self.pool_hi else self.hi
        return None if (lo == -math.inf and hi == math.inf) or not lo < hi else Predicate(self.param, lo, hi)


@dataclass(frozen=True)
class FailureMap:
    """Failing images mapped onto a :class:`SyntheticPool` by nearest neighbours.

    Shape (``F`` failures, ``k`` neighbours each):
        - neighbours: :math:`(F, k)` int64 pool indices, nearest first
        - distances: :math:`(F, k)` their standardised Euclidean distances
    Attributes:
        shifts: one :class:`ParameterShift` per non-constant pool parameter, largest ``ks`` first.
        type_share: defect type -> (share of neighbours showing it, share of the pool showing it).
        gap: median distance of a failure to its ``k``-th neighbour over the median distance of a pool sample to
            its ``k``-th other pool sample (about 1: the failures lie among the synthetic samples; >> 1: the
            scenario does not produce anything like them).
    """

    neighbours: Tensor
    distances: Tensor
    shifts: tuple[ParameterShift, ...]
    type_share: dict[str, tuple[float, float]]
    gap: float

    def predicates(self, max_predicates: int = 2, alpha: float = 0.01, min_ks: float = 0.2,
                   exclude: Sequence[str] = ()) -> tuple[Predicate, ...]:
        """The region: up to ``max_predicates`` of the largest shifts (``ks >= min_ks`` and ``p_value <
        alpha / len(shifts)``, Bonferroni) whose neighbour interval is narrower than the pool's range, as
        :class:`Predicate` objects on parameters not in ``exclude``; empty when nothing shifts."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        out = []
        for s in self.shifts:
            if len(out) == max_predicates:
                break
            pred = s.predicate()
            if pred is not None and s.param not in exclude and s.ks >= min_ks and s.p_value < alpha / len(self.shifts):
                out.append(pred)
        return tuple(out)


def _default_layer(net: nn.Module) -> nn.Module:
    if isinstance(net, TinyUNet):
        return net.down[-1]
    raise ValueError(f"no default feature layer for {type(net).__name__}; pass layer=<a name from "
                     f"task.net.named_modules()>")


@contextlib.contextmanager
def _hooked(task: SegmentationTask, layer: str | None) -> Iterator[dict[str, Tensor]]:
    """Captures ``features`` (the pooled output of ``layer``) and ``logits`` (the net's output) of each forward."""
    modules = dict(task.net.named_modules())
    if layer is not None and layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of {type(task.net).__name__}; "
                         f"modules: {[n for n in modules if n][:20]}...")
    target = modules[layer] if layer is not None else _default_layer(task.net)
    seen: dict[str, Tensor] = {}

    def features(_, __, out):
        seen["features"] = torch.cat([out.mean((2, 3)), out.amax((2, 3))], 1).float()

    def logits(_, __, out):
        seen["logits"] = out["out"] if isinstance(out, dict) else out

    handles = [target.register_forward_hook(features), task.net.register_forward_hook(logits)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def per_image_scores(task: SegmentationTask, batches: Iterable, layer: str | None = None) -> ImageScores:
    """Score every image of ``batches`` and capture its features, in one forward pass per batch.

    Args:
        task: a :class:`SegmentationTask` (evaluated in eval mode; its training flag is restored).
        batches: ``RealBatch`` or ``Batch`` objects (anything with ``image`` [B, 3, H, W] and ``semantic``
            [B, H, W]), e.g. ``DataLoader(real_dataset, batch_size=16, collate_fn=collate_real)``.
        layer: the module of ``task.net`` whose output is pooled into features (default: the deepest encoder
            block of a ``TinyUNet``).
    """
    if not isinstance(task, SegmentationTask):
        raise TypeError(f"task must be a SegmentationTask, got {type(task).__name__}")
    parts: dict[str, list[Tensor]] = {k: [] for k in ("loss", "inter", "union", "positives", "predicted",
                                                      "pixels", "features")}
    keys: list[str] = []
    with _hooked(task, layer) as seen:
        for batch in batches:
            seen.clear()
            parts["loss"].append(task.per_sample_loss(batch).float().cpu())
            if "features" not in seen or "logits" not in seen:
                raise RuntimeError("the feature layer did not run in the task's forward pass; pass another layer")
            fg_pred = (seen["logits"].argmax(1) > 0).flatten(1).cpu()
            fg_true = (batch.semantic > 0).flatten(1).cpu()
            parts["inter"].append((fg_pred & fg_true).sum(1))
            parts["union"].append((fg_pred | fg_true).sum(1))
            parts["positives"].append(fg_true.sum(1))
            parts["predicted"].append(fg_pred.sum(1))
            parts["pixels"].append(torch.full((len(fg_pred),), fg_pred.shape[1]))
            parts["features"].append(seen["features"].cpu())
            keys += list(getattr(batch, "keys", ()) or [str(int(s)) for s in batch.sample_id])
    if not keys:
        raise ValueError("batches is empty")
    c = {k: torch.cat(v) for k, v in parts.items()}
    inter, union, pos = c["inter"].double(), c["union"].double(), c["positives"].double()
    nan = torch.full_like(inter, math.nan)
    return ImageScores(loss=c["loss"], iou=torch.where(union > 0, inter / union.clamp(min=1), nan),
                       recall=torch.where(pos > 0, inter / pos.clamp(min=1), nan),
                       false_alarm=(c["predicted"] - c["inter"]).double() / (c["pixels"] - c["positives"]).clamp(min=1),
                       inter=c["inter"], union=c["union"], positives=c["positives"], features=c["features"],
                       keys=tuple(keys))


def synthetic_pool(task: SegmentationTask, dataset: SynthDataset, n: int, start: int = 2 * 10**9,
                   layer: str | None = None) -> SyntheticPool:
    """Render samples ``start .. start + n - 1`` of ``dataset`` (in batches of ``dataset.batch_size``; the
    default start is far from any training or validation index) and place them in ``task``'s feature space."""
    if n < 2:
        raise ValueError(f"a synthetic pool needs n >= 2 samples, got {n}")
    batches, B = [], dataset.batch_size
    for lo in range(start, start + n, B):
        batches.append(dataset.render_batch(torch.arange(lo, min(lo + B, start + n))))
    scores = per_image_scores(task, batches, layer)
    names = dataset.scenario.class_names
    semantic = torch.cat([b.semantic.flatten(1).cpu() for b in batches])
    types = torch.stack([(semantic == t + 1).any(1) for t in range(len(names))], 1)
    params = {k: torch.cat([b.params[k].cpu() for b in batches]).double() for k in batches[0].params}
    return SyntheticPool(scores, params, types, tuple(names))


def map_failures(features: Tensor, pool: SyntheticPool, k: int = 8, quantile: float = 0.1) -> FailureMap:
    """Map failing images (their features :math:`(F, D)`, from :func:`per_image_scores` with the same task and
    layer as ``pool``) to the scenario: their ``k`` nearest pool samples and how those differ from the pool.

    ``quantile`` sets each :class:`ParameterShift`'s interval (``quantile`` to ``1 - quantile`` of the
    neighbours' values).
    """
    ref = pool.scores.features.double()
    if features.ndim != 2 or features.shape[1] != ref.shape[1]:
        raise ValueError(f"features must be (F, {ref.shape[1]}) like the pool's, got {tuple(features.shape)}")
    if len(features) == 0:
        raise ValueError("no failures to map (features has 0 rows)")
    if not 1 <= k < len(pool):
        raise ValueError(f"k must be in [1, {len(pool) - 1}] for a pool of {len(pool)}, got {k}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    mean, std = ref.mean(0), ref.std(0).clamp(min=1e-8)
    z_ref, z = (ref - mean) / std, (features.double() - mean) / std
    distances, neighbours = torch.cdist(z, z_ref).topk(k, 1, largest=False)
    within = torch.cdist(z_ref, z_ref).fill_diagonal_(math.inf).topk(k, 1, largest=False).values[:, -1]
    gap = float(distances[:, -1].median() / within.median().clamp(min=1e-12))
    flat = neighbours.flatten()
    shifts = []
    for name, values in sorted(pool.params.items()):
        if values.min() == values.max():
            continue
        near = values[flat]
        q = torch.quantile(near, torch.tensor([quantile, 0.5, 1.0 - quantile], dtype=near.dtype))
        test = sps.ks_2samp(near.numpy(), values.numpy())
        shifts.append(ParameterShift(name, float(q[0]), float(q[2]), float(q[1]), float(values.median()),
                                     float(values.min()), float(values.max()), float(test.statistic),
                                     float(test.pvalue)))
    shifts.sort(key=lambda s: -s.ks)
    share_near, share_pool = pool.types[flat].double().mean(0), pool.types.double().mean(0)
    type_share = {t: (float(share_near[i]), float(share_pool[i])) for i, t in enumerate(pool.type_names)}
    return FailureMap(neighbours, distances.float(), tuple(shifts), type_share, gap)


def slice_override(predicates: Sequence[Predicate], scenario: Scenario, weight: float) -> dict:
    """A scenario slice (YAML form: ``{"weight": w, "<section>": {"<param>": <distribution>}}``) that draws
    each predicate's parameter from the scenario's distribution restricted to the predicate's interval.

    Raises ``ValueError`` naming the parameter when the scenario cannot produce the interval.
    """
    if not weight > 0:
        raise ValueError(f"slice weight must be > 0, got {weight}")
    out: dict = {"weight": float(weight)}
    for p in predicates:
        section, name = p.param.split(".", 1)
        if section not in SECTIONS or p.param not in scenario.parameters:
            raise ValueError(f"{p.param!r} is not a parameter of scenario {scenario.name!r}")
        try:
            restricted = scenario.parameters[p.param].restrict(p.lo, p.hi)
        except ValueError as exc:
            raise ValueError(f"scenario {scenario.name!r} cannot produce {p}: {exc}") from exc
        out.setdefault(section, {})[name] = restricted.to_yaml()
    return out


def _hydra_value(value) -> str:
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def hydra_override(name: str, override: Mapping) -> str:
    """The command-line override that adds ``override`` (from :func:`slice_override`) as scenario slice
    ``name``: ``+scenario.slices.<name>={weight:...,<section>:{...}}``."""
    if not name.isidentifier():
        raise ValueError(f"slice name must be an identifier for a Hydra override, got {name!r}")
    return f"+scenario.slices.{name}={_hydra_value(override)}"


def apparent_contrast(image: Tensor, mask: Tensor, ring: int = 3, quantile: float = 0.25) -> Tensor:
    """How much the labelled defects of each image darken their surroundings, measured on the pixels:
    ``1 - q(defect gray) / median(ring gray)``, with ``q`` the ``quantile`` of the gray values under the mask
    (the dark core) and the ring the background pixels within ``ring`` pixels of the mask. Real photos carry
    no parameters: this is their counterpart of ``defects.contrast`` (which scales the albedo to
    ``1 - contrast`` at a defect's core), up to lighting and sensor effects. Negative for bright defects.

    Shape:
        - image: :math:`(B, C, H, W)`; mask: :math:`(B, H, W)` bool
        - output: :math:`(B,)` float64, NaN for an image without defect or ring pixels
    """
    if image.ndim != 4 or mask.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(f"image must be (B, C, H, W) and mask (B, H, W), got {tuple(image.shape)} and "
                         f"{tuple(mask.shape)}")
    gray = image.double().mean(1)
    grown = F.max_pool2d(mask[:, None].double(), 2 * ring + 1, stride=1, padding=ring)[:, 0] > 0
    out = torch.full((len(image),), math.nan, dtype=torch.float64)
    for i in range(len(image)):
        inside, around = gray[i][mask[i]], gray[i][grown[i] & ~mask[i]]
        if inside.numel() and around.numel():
            out[i] = 1.0 - torch.quantile(inside, quantile) / around.median().clamp(min=1e-6)
    return out
