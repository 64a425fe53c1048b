"""Hybrid synthetic/real training: a schedule of the real share per step, and the stream that follows it.

:class:`HybridSchedule` says how many of a step's ``B`` images are real. It is a pure function of the step
(no state), so a resumed run, every DataLoader worker and every rank agree on it:

============================  =========================================================================
``synthetic_only``            no real image (the plain synthetic stream)
``real_only``                 every image real
``mixed``                     a fixed real fraction ``real_fraction``, per batch (``mix_by: batch``: each
                              batch holds that share) or per step (``mix_by: step``: that share of the
                              steps are whole real batches, evenly spaced; 0.25 = every 4th step)
``pretrain_finetune``         synthetic for ``switch_step`` steps, then real; optional learning-rate
                              re-warm over ``rewarm_steps`` steps after the switch (see ``lr_scale``)
``anneal``                    the real fraction rises from 0 at ``switch_step`` to ``real_fraction`` at
                              ``switch_step + anneal_steps`` (``linear`` or ``cosine``), i.e. the synthetic
                              share decays, and stays there
============================  =========================================================================

Counts are exact, not sampled: the real images of steps ``[0, s)`` are ``floor(B * F(s))`` (per batch) or
``B * floor(F(s))`` (per step), where ``F(s)`` is the sum of the fraction over those steps (an integer sum in
fixed point, 2**-32, so it does not depend on summation order), so the real budget of any run is known in
advance (:meth:`HybridSchedule.real_images`).

:class:`HybridStream` renders step ``s``'s synthetic images as the first ``B - n`` samples of the synthetic
stream's batch (the sample indices :class:`~synth_torch.data.dataset.SynthDataset` gives that batch) and draws
its ``n`` real images from the real *training* split: draw ``d`` is image ``perm_e[d mod N]`` of an epoch
permutation ``perm_e`` (``e = d // N``, seeded by ``(seed, e)``), with optional flips drawn from ``(seed, d)``.
Under DDP, rank ``r`` takes draws ``world * C(s) + r * n + [0, n)`` with ``C(s)`` the real images before step
``s``, so ranks never share a draw.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
from torch.utils.data import IterableDataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from synth_torch.data.batch import Batch, refuse_default_collate
from synth_torch.data.dataset import SynthDataset
from synth_torch.data.real import RealBatch, RealDataset, collate_real
from synth_torch.scenario.config import ConfigError
from synth_torch.scenario.distributions import parse_int, parse_number
from synth_torch.spec.random import stable_hash

__all__ = ["SCHEDULES", "HybridSchedule", "HybridBatch", "HybridStream", "images_in"]

SCHEDULES = ("synthetic_only", "real_only", "mixed", "pretrain_finetune", "anneal")
_ONE = 1 << 32  # fixed-point unit of the real fraction: integer prefix sums are exact and order-free
_TOLERANCE = 2.0**-12  # of an image: a sum like 3 * (1/3) lands on 1, not just below it


@dataclass(frozen=True)
class HybridSchedule:
    """How many real images each training step holds (see the module docstring for the kinds). Each kind
    reads only its own arguments, so one config can switch kinds with ``data.schedule=...``.

    Args:
        kind: one of :data:`SCHEDULES`.
        real_fraction: ``mixed``: the constant real fraction; ``anneal``: the final real fraction.
        mix_by: ``"batch"`` (real images inside every batch) or ``"step"`` (whole real batches).
        switch_step: ``pretrain_finetune``: synthetic steps before real; ``anneal``: where the decay starts.
        anneal_steps: ``anneal``: length of the decay; anneal_shape: ``"linear"`` or ``"cosine"``.
        rewarm_steps: ``pretrain_finetune``: linear learning-rate warm-up after the switch (0: none).
        decay_steps: cosine learning-rate decay to zero over this many steps from the start of the real phase
            (``pretrain_finetune``: the switch; every other kind: step 0), then zero (0: none). Gives every arm of a
            comparison a settled end point instead of a constant-rate snapshot.

    Example:
        >>> s = HybridSchedule("mixed", real_fraction=0.25, mix_by="step")
        >>> [s.real_count(step, 8) for step in range(8)]
        [0, 0, 0, 8, 0, 0, 0, 8]
        >>> int(HybridSchedule("pretrain_finetune", switch_step=100).real_images(150, 8))
        400
    """

    kind: str = "synthetic_only"
    real_fraction: float = 0.5
    mix_by: str = "batch"
    switch_step: int = 0
    anneal_steps: int = 1000
    anneal_shape: str = "cosine"
    rewarm_steps: int = 0
    decay_steps: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ConfigError(f"data.schedule must be one of {SCHEDULES}, got {self.kind!r}")
        fraction = parse_number(self.real_fraction, "data.real_fraction")
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"data.real_fraction must lie in [0, 1], got {self.real_fraction}")
        if self.mix_by not in ("batch", "step"):
            raise ConfigError(f"data.mix_by must be 'batch' or 'step', got {self.mix_by!r}")
        if self.anneal_shape not in ("linear", "cosine"):
            raise ConfigError(f"data.anneal_shape must be 'linear' or 'cosine', got {self.anneal_shape!r}")
        steps = {"switch_step": 0, "anneal_steps": 1, "rewarm_steps": 0, "decay_steps": 0}
        for name, lo in steps.items():
            object.__setattr__(self, name, parse_int(getattr(self, name), f"data.{name}", lo=lo))
        object.__setattr__(self, "real_fraction", fraction)

    @property
    def uses_real(self) -> bool:
        return self.kind != "synthetic_only"

    def fraction(self, step: torch.Tensor) -> torch.Tensor:
        """The real fraction at each of ``step`` [N] (float64 in [0, 1])."""
        s = torch.as_tensor(step, dtype=torch.float64)
        if self.kind == "synthetic_only":
            return torch.zeros_like(s)
        if self.kind == "real_only":
            return torch.ones_like(s)
        if self.kind == "mixed":
            return torch.full_like(s, float(self.real_fraction))
        if self.kind == "pretrain_finetune":
            return (s >= self.switch_step).double()
        t = ((s - self.switch_step) / self.anneal_steps).clamp(0.0, 1.0)
        ramp = t if self.anneal_shape == "linear" else 0.5 - 0.5 * torch.cos(math.pi * t)
        return float(self.real_fraction) * ramp

    def real_images(self, steps, batch_size: int) -> torch.Tensor:
        """Real images in steps ``[0, steps)`` for batches of ``batch_size`` (int64, same shape as ``steps``)."""
        steps = torch.as_tensor(steps, dtype=torch.int64)
        top = int(steps.max()) if steps.numel() else 0
        total = _fixed_point_sums(self, 1 << max(10, top.bit_length()))[steps].double() / _ONE  # F(s)
        if self.mix_by == "batch":
            return (total * batch_size + _TOLERANCE).floor().long()
        return (total + _TOLERANCE).floor().long() * batch_size

    def real_count(self, step: int, batch_size: int) -> int:
        """Real images in step ``step``."""
        both = self.real_images(torch.tensor([step, step + 1]), batch_size)
        return int(both[1] - both[0])

    def lr_scale(self, step: int) -> float:
        """Learning-rate factor at optimizer step ``step``, with ``t`` the steps since the real phase started
        (``pretrain_finetune``'s switch ``S``, else 0): a linear re-warm ``(t + 1) / W`` for the
        ``W = rewarm_steps`` steps after ``S`` (``pretrain_finetune`` only), times a cosine decay
        ``(1 + cos(pi * min(t, D) / D)) / 2`` with ``D = decay_steps``; 1 where neither applies."""
        since = int(step) - (int(self.switch_step) if self.kind == "pretrain_finetune" else 0)
        if since < 0:
            return 1.0
        scale = 1.0
        if self.kind == "pretrain_finetune" and self.rewarm_steps and since < self.rewarm_steps:
            scale = (since + 1) / self.rewarm_steps
        if self.decay_steps:
            scale *= 0.5 * (1.0 + math.cos(math.pi * min(since, self.decay_steps) / self.decay_steps))
        return scale


@functools.lru_cache(maxsize=16)
def _fixed_point_sums(schedule: HybridSchedule, size: int) -> torch.Tensor:
    """``F(s) * 2**32`` for ``s = 0 .. size`` (int64; exact integer prefix sums of the rounded fraction)."""
    per_step = torch.round(schedule.fraction(torch.arange(size)) * _ONE).to(torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), per_step.cumsum(0)])


@refuse_default_collate
@dataclass
class HybridBatch:
    """A training step holding both synthetic and real images (synthetic first).

    Shape:
        - image: :math:`(B, 3, H, W)`; semantic: :math:`(B, H, W)` (both concatenated on access)
        - synthetic: a :class:`Batch` of the first ``B - n`` images; real: a :class:`RealBatch` of the last ``n``
    """

    synthetic: Batch
    real: RealBatch
    batch_index: int = -1

    def __len__(self) -> int:
        return len(self.synthetic) + len(self.real)

    @property
    def image(self) -> torch.Tensor:
        return torch.cat([self.synthetic.image, self.real.image])

    @property
    def semantic(self) -> torch.Tensor:
        return torch.cat([self.synthetic.semantic, self.real.semantic])

    @property
    def sample_id(self) -> torch.Tensor:
        """Sample ids of the synthetic images."""
        return self.synthetic.sample_id

    @property
    def keys(self) -> tuple[str, ...]:
        """File keys of the real images."""
        return self.real.keys

    def to(self, device, non_blocking: bool = False) -> HybridBatch:
        return replace(self, synthetic=self.synthetic.to(device, non_blocking),
                       real=self.real.to(device, non_blocking))

    def to_torchvision(self, min_visible_pixels: int = 1) -> tuple[list[torch.Tensor], list[dict]]:
        images, targets = self.synthetic.to_torchvision(min_visible_pixels)
        real_images, real_targets = self.real.to_torchvision(min_visible_pixels)
        return images + real_images, targets + real_targets


class HybridStream(IterableDataset):
    """The training stream of a hybrid schedule: per step a :class:`Batch` (no real image), a
    :class:`RealBatch` (all real) or a :class:`HybridBatch`, each with the step's global ``batch_index``.

    Iteration follows :class:`SynthDataset`'s batch assignment (rank ``r`` of ``world`` takes global batches
    ``cursor.next_batch + r + world * j``, worker ``w`` of ``workers`` the ``j`` with ``j % workers == w``);
    batch ``k`` is step ``(k - r) // world`` of the schedule. With ``synthetic_only`` it yields exactly what iterating the
    synthetic dataset yields.

    Args:
        synth: the synthetic stream (its ``batch_size``, ``cursor`` and ``length`` apply).
        real: the real *training* split (``split == "train"``; anything else raises), or None for
            ``synthetic_only``.
        schedule: the :class:`HybridSchedule`; seed: seeds the real draw order and flips.
        flips: flip each real draw horizontally and/or vertically (a pure function of ``(seed, draw)``).
        balance: draw the real images round robin over their groups (``real.groups``: the defect classes of
            magnetic_tile), each group in its own epoch-wise permutation, so every group is drawn equally often
            whatever its share of the split. Without it each epoch is one permutation of the whole split.
    """

    def __init__(self, synth: SynthDataset, real: RealDataset | None, schedule: HybridSchedule, seed: int = 0,
                 flips: bool = False, balance: bool = False):
        super().__init__()
        if schedule.uses_real and real is None:
            raise ConfigError(f"data.schedule={schedule.kind} trains on real images: set data.real_root")
        if real is not None and real.split != "train":
            raise ValueError(f"hybrid training draws from the real train split only, got split {real.split!r}")
        self.synth, self.real, self.schedule, self.seed, self.flips = synth, real, schedule, int(seed), bool(flips)
        self.balance = bool(balance)
        pools: dict[str, list[int]] = {}
        if real is not None:
            for i, group in enumerate(real.groups if self.balance else [""] * len(real)):
                pools.setdefault(group, []).append(i)
        if self.balance and len(pools) < 2:
            raise ConfigError(f"data.real_balance=true draws round robin over the real images' groups, but the real "
                              f"training set has one group ({sorted(pools)}); COCO sets have no groups")
        self._pools = [(name, pools[name]) for name in sorted(pools)]
        self._perms: dict[str, tuple[int, list[int]]] = {}  # per pool: (epoch, permutation) last drawn from

    def __iter__(self):
        rank, world, indices = self.synth.shard()
        for k in indices:
            yield self.batch(k, rank, world)

    def batch(self, k: int, rank: int = 0, world: int = 1):
        """The training batch of global batch index ``k`` on ``rank`` of ``world`` (a pure function)."""
        B = self.synth.batch_size
        step = (k - rank) // world
        n = self.schedule.real_count(step, B)
        synthetic = real = None
        if n < B:
            synthetic = self.synth.render_batch(torch.arange(k * B, k * B + B - n), batch_index=k)
        if n > 0:
            first = world * int(self.schedule.real_images(step, B)) + rank * n
            real = replace(collate_real([self.draw(d) for d in range(first, first + n)]), batch_index=k)
        if real is None:
            return synthetic
        if synthetic is None:
            return real
        return HybridBatch(synthetic, real, batch_index=k)

    def position(self, d: int) -> int:
        """Index into the real training split of real draw ``d`` (a pure function of ``seed``, ``d``)."""
        name, members = self._pools[d % len(self._pools)]
        i, N = d // len(self._pools), len(members)
        epoch = i // N
        if self._perms.get(name, (None,))[0] != epoch:
            key = f"real-order:{self.seed}:{name}:{epoch}" if self.balance else f"real-order:{self.seed}:{epoch}"
            g = torch.Generator().manual_seed(stable_hash(key))
            self._perms[name] = (epoch, torch.randperm(N, generator=g).tolist())
        return members[self._perms[name][1][i % N]]

    def draw(self, d: int) -> dict:
        """Real draw ``d``: the item at :meth:`position` of the real training split (flipped if ``flips``)."""
        item = self.real[self.position(d)]
        if self.flips:
            bits = stable_hash(f"real-flip:{self.seed}:{d}")
            for bit, flip in ((1, TF.horizontal_flip), (2, TF.vertical_flip)):
                if bits & bit:  # every tv_tensor leaf (image, mask, boxes) moves together
                    item = {k: flip(v) if isinstance(v, tv_tensors.TVTensor) else v for k, v in item.items()}
        return item


def images_in(batch) -> dict[str, int]:
    """Synthetic and real image counts of a training batch of any kind."""
    if isinstance(batch, HybridBatch):
        return {"synthetic": len(batch.synthetic), "real": len(batch.real)}
    if isinstance(batch, RealBatch):
        return {"synthetic": 0, "real": len(batch)}
    return {"synthetic": len(batch), "real": 0}
