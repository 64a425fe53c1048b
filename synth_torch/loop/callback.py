"""``SliceMiner``: the Lightning callback that closes the data loop.

Every round (each ``every_n_train_steps`` training steps, and/or at the end of each validation):

1. **Evaluate** the model per slice on the data module's fixed validation suites with the task's
   ``per_sample_loss`` (eval mode, no gradients). Each rank evaluates its share of every suite; the per-slice
   loss *sums and counts* are all-reduced (every rank calls the same collective), so every rank builds the
   same :class:`~synth_torch.loop.rules.SliceStats`.
2. **Re-weight**: :meth:`SliceReweighter.update` (rule ``group_dro``, ``plr`` or ``exp3`` with its floor,
   ``max_change``, ``min_samples`` and stall safeguards) computes new probabilities from the stats and the
   training dataset's :class:`~synth_torch.data.mixture.SliceMixture` (the one source of slice names,
   definitions and probabilities), and they are written back into it from the data module's
   ``mixture_from_batch()`` on, the first batch no loader has rendered yet. With ``reweight=False`` (or before
   ``warmup_steps``) the round only measures and logs (a fixed-mixture baseline).
3. **Mine** (every ``mine_every`` rounds): render a fresh pool from the scenario's base distribution
   (disjoint sample indices, see :mod:`synth_torch.loop.datamodule`), compute per-sample losses, all-gather
   losses and parameters, run :func:`~synth_torch.loop.mining.find_slices` on rank 0 (excluding the current
   slice names) and broadcast the result, so all ranks add the same slices to the mixture (the slices mined in
   one round share at most the rule's ``max_change``); their validation suites are created on first use. With
   ``mine_by="gradient"`` rank 0 instead runs :func:`~synth_torch.loop.hard_examples.mine_hard_region`: a
   gradient search through the renderer from a few base samples, and the hard region it finds, checked on fresh
   samples, is broadcast and added the same way.
4. **Log** per-slice losses and weights as scalars and an image grid of the currently worst slice's suite
   (``slices/worst_slice``, every logger: :func:`~synth_torch.loop.visuals.log_image`), the mined slices and a
   weights chart (wandb), and the whole history as ``slice_miner.json`` in ``trainer.default_root_dir`` (the run's
   output folder).

The callback's ``state_dict`` holds the rule's own statistics and the round history (the miner keeps history,
nothing else); the data module's holds the stream cursor and the mixture (with the mined slices and pending
changes), so a resumed run continues the same weights and stream.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from synth_torch.fileio import writable_folder, write_text_atomic
from synth_torch.loop.datamodule import MINE_START, SUITE_STRIDE
from synth_torch.loop.hard_examples import mine_hard_region, searchable_params
from synth_torch.loop.mining import MinedSlice, Predicate, check_options, find_slices
from synth_torch.loop.rules import RULES, SliceReweighter, SliceStats
from synth_torch.loop.tasks import slice_key
from synth_torch.loop.visuals import log_image
from synth_torch.scenario.config import ConfigError
from synth_torch.scenario.distributions import parse_flag, parse_int, parse_number
from synth_torch.spec.params import PARAM_NAMES

try:
    from typing_extensions import override
except ImportError:  # pragma: no cover
    def override(f):
        return f

__all__ = ["SliceMiner", "StreamRecorder"]

_MINING_KEYS = {"n_bins", "max_order", "min_support", "min_effect", "alpha", "top_k"}
GRADIENT_DEFAULTS = {"samples": 16, "steps": 16, "lr": 0.05, "check_samples": 64, "alpha": 0.05, "min_shift": 0.1,
                     "margin": 0.05}
MINE_BY = ("stats", "gradient")


class SliceMiner(Callback):
    """Re-weights the live stream's slices toward the model's failures and mines new slices.

    Args:
        rule: ``"group_dro"``, ``"plr"`` or ``"exp3"`` (see :class:`~synth_torch.loop.rules.SliceReweighter`).
        every_n_train_steps: run a round every N optimizer steps (None: only on validation).
        on_validation: also run a round at the end of every validation (not during the sanity check).
        reweight: apply the rule; False keeps the mixture fixed (rounds still measure and log).
        warmup_steps: rounds before this optimizer step only measure and log: no re-weighting, no mining (the
            model first learns the task on the scenario's own mixture).
        reweighter: keyword arguments of :class:`SliceReweighter` (``eta``, ``floor``, ``max_change``,
            ``min_samples``, ``patience``, ``min_delta``, ...).
        prior: ``"scenario"`` (the scenario's slice weights: starting point and stall cap) or ``"uniform"``.
        mine: run slice mining; mine_every: every N rounds; mine_samples: pool size per mining round (split
            over ranks); mine_from: ``"base"`` (a slice without overrides, i.e. the scenario's base
            distribution) or ``"mixture"`` (the scenario's own mixture); max_mined: stop mining after N slices;
            mined_share: initial share of a mined slice (default ``1 / K``); params: parameter names to mine
            on (default: every scenario parameter; with ``mine_by="gradient"`` every continuous per-image
            parameter that varies); mining: keyword arguments of ``find_slices``.
        mine_by: ``"stats"`` (a pool of ``mine_samples`` scored and split by ``find_slices``) or ``"gradient"``
            (:func:`~synth_torch.loop.hard_examples.mine_hard_region`, on rank 0, at most one slice per round).
        gradient: options of ``mine_by="gradient"`` (defaults :data:`GRADIENT_DEFAULTS`): ``samples`` (starting
            samples, from ``mine_from``), ``steps`` (renders of each, with a backward pass through model and
            renderer), ``lr`` (Adam, fraction of each range), ``check_samples`` (fresh samples the region is
            checked on, paired with the base distribution), ``alpha`` (its corrected one-sided level),
            ``min_shift`` and ``margin`` (of :func:`~synth_torch.loop.hard_examples.hard_region`).
        log_images: log an image grid of the worst slice (every logger); verbose: print one line per round.

    Example (see ``configs/callbacks/slice_miner.yaml``)::

        trainer = pl.Trainer(max_steps=200, callbacks=[SliceMiner("group_dro", every_n_train_steps=25)])
        trainer.fit(task, datamodule=SynthDataModule("defects"))
    """

    def __init__(self, rule: str = "group_dro", every_n_train_steps: int | None = 50, on_validation: bool = False,
                 reweight: bool = True, warmup_steps: int = 0, reweighter: dict | None = None,
                 prior: str = "scenario", mine: bool = True,
                 mine_every: int = 1, mine_samples: int = 128, mine_from: str = "base", max_mined: int = 4,
                 mined_share: float | None = None, params: list[str] | None = None, mining: dict | None = None,
                 mine_by: str = "stats", gradient: dict | None = None,
                 log_images: bool = True, image_count: int = 16, verbose: bool = True):
        key = "callbacks.slice_miner"
        if rule not in RULES:
            raise ConfigError(f"{key}.rule must be one of {RULES}, got {rule!r}")
        self.rule = rule
        self.every_n_train_steps = parse_int(every_n_train_steps, f"{key}.every_n_train_steps", lo=1, none_ok=True)
        self.on_validation, self.reweight = parse_flag(on_validation, f"{key}.on_validation"), parse_flag(
            reweight, f"{key}.reweight")
        self.mine, self.log_images = parse_flag(mine, f"{key}.mine"), parse_flag(log_images, f"{key}.log_images")
        self.verbose = parse_flag(verbose, f"{key}.verbose")
        if self.every_n_train_steps is None and not self.on_validation:
            raise ConfigError(f"{key}: set every_n_train_steps or on_validation, or nothing ever runs")
        if prior not in ("scenario", "uniform"):
            raise ConfigError(f"{key}.prior must be 'scenario' or 'uniform', got {prior!r}")
        if mine_from not in ("base", "mixture"):
            raise ConfigError(f"{key}.mine_from must be 'base' or 'mixture', got {mine_from!r}")
        self.mine_every = parse_int(mine_every, f"{key}.mine_every", lo=1)
        self.warmup_steps = parse_int(warmup_steps, f"{key}.warmup_steps", lo=0)
        self.mine_samples = parse_int(mine_samples, f"{key}.mine_samples", lo=1)
        self.max_mined = parse_int(max_mined, f"{key}.max_mined", lo=0)
        self.image_count = parse_int(image_count, f"{key}.image_count", lo=1)
        if mined_share is not None and not 0.0 < parse_number(mined_share, f"{key}.mined_share") < 1.0:
            raise ConfigError(f"{key}.mined_share must be null or lie in (0, 1), got {mined_share}")
        self.prior, self.mine_from, self.mined_share = prior, mine_from, mined_share
        self.reweighter_kwargs = dict(reweighter or {})
        try:  # fail now, not at the first round after hours of training
            SliceReweighter(2, rule, **self.reweighter_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}.reweighter: {exc}") from None
        mining = dict(mining or {})
        unknown = sorted(set(mining) - _MINING_KEYS)
        if unknown:
            raise ConfigError(f"{key}.mining: unknown key(s) {unknown}; allowed: {sorted(_MINING_KEYS)}")
        self.mining = {"min_support": 16} | mining
        try:
            check_options(**self.mining)
        except ValueError as exc:
            raise ConfigError(f"{key}.mining: {exc}") from None
        if mine_by not in MINE_BY:
            raise ConfigError(f"{key}.mine_by must be one of {MINE_BY}, got {mine_by!r}")
        self.mine_by = mine_by
        self.gradient = _gradient_options(gradient, f"{key}.gradient")
        if self.mine and mine_by == "stats" and self.mine_samples < 2 * self.mining["min_support"]:
            raise ConfigError(f"{key}.mine_samples ({self.mine_samples}) must be at least twice "
                              f"mining.min_support ({self.mining['min_support']}), or no slice can ever be mined")
        if params is not None:
            bad = sorted(set(params) - set(PARAM_NAMES))
            if bad:
                raise ConfigError(f"{key}.params: unknown parameter(s) {bad}")
        self.params = None if params is None else list(params)
        self.reweighter: SliceReweighter | None = None
        self.history: list[dict] = []  # one entry per round (and per mining event)
        self.mined: list[dict] = []
        self.rounds = 0
        self._pending: dict | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule, every=self.every_n_train_steps, reweight=self.reweight,
                                        mine=self.mine)

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_dataset"):
            raise ConfigError("SliceMiner needs a SynthDataModule passed as trainer.fit(..., datamodule=...)")
        if not hasattr(pl_module, "per_sample_loss"):
            raise ConfigError(f"SliceMiner needs a task with per_sample_loss(batch); {type(pl_module).__name__} has none")
        if dm.train_dataset is None:
            dm.setup(stage)
        if trainer.is_global_zero:  # fail now, not when the first round writes slice_miner.json
            _output_folder(trainer.default_root_dir, "SliceMiner (slice_miner.json)")
        if self.reweighter is None:
            mixture = dm.train_dataset.mixture
            prior = mixture.get().double() if self.prior == "scenario" else None
            self.reweighter = SliceReweighter(len(mixture), self.rule, prior=prior, **self.reweighter_kwargs)
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.run_round(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.on_validation and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.run_round(trainer, pl_module)

    # ------------------------------------------------------------------ one round
    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> SliceStats:
        """Per-slice mean loss on the validation suites, all-reduced over ranks (every rank must call this)."""
        dm = trainer.datamodule
        names = list(dm.slice_names)
        k = len(names)
        sums = torch.zeros(k, dtype=torch.float64)
        counts = torch.zeros(k, dtype=torch.float64)
        for s, name in enumerate(names):
            for batch in dm.suite(name):
                loss = pl_module.per_sample_loss(batch.to(pl_module.device)).double().cpu()
                sums[s] += loss.sum()
                counts[s] += loss.numel()
        both = trainer.strategy.reduce(torch.stack([sums, counts]).to(pl_module.device), reduce_op="sum").cpu()
        sums, counts = both[0], both[1]
        loss = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))
        return SliceStats(loss=loss, count=counts)

    def run_round(self, trainer, pl_module) -> None:
        """Evaluate, re-weight, mine and log (collective: every rank must call it at the same point)."""
        if self.reweighter is None:
            self.setup(trainer, pl_module, "fit")
        dm = trainer.datamodule
        mixture = dm.train_dataset.mixture
        stats = self.evaluate(trainer, pl_module)
        before = mixture.get()
        warm = trainer.global_step < self.warmup_steps
        if self.reweight and not warm:
            mixture.set(self.reweighter.update(stats, before).float(), from_batch=dm.mixture_from_batch())
        self.rounds += 1
        record = {"step": int(trainer.global_step), "round": self.rounds, "warmup": warm,
                  "names": list(mixture.names), "from_batch": dm.mixture_from_batch(),
                  "weights_before": before.tolist(), "weights": mixture.get().tolist(),
                  "loss": [None if math.isnan(v) else v for v in stats.loss.tolist()],
                  "count": stats.count.tolist(), "stalled": self.reweighter.stalled.tolist(), "mined": []}
        if self.mine and not warm and self.rounds % self.mine_every == 0 and len(self.mined) < self.max_mined:
            record["mined"] = self._mine(trainer, pl_module)
        self.history.append(record)
        self._log(trainer, pl_module, stats, record)

    # ------------------------------------------------------------------ mining
    def _pool_slice_ids(self, dm, n: int) -> torch.Tensor:
        scenario = dm.scenario
        if self.mine_from == "base":
            free = [i for i, s in enumerate(scenario.slices.values()) if not s.overrides]
            if free:
                return torch.full((n,), free[0], dtype=torch.int64)
        prior = torch.tensor([s.weight for s in scenario.slices.values()], dtype=torch.float64)
        g = torch.Generator().manual_seed(dm.seed * 1_000_003 + self.rounds)
        return torch.multinomial(prior / prior.sum(), n, replacement=True, generator=g)

    def _mine(self, trainer, pl_module) -> list[dict]:
        dm = trainer.datamodule
        ds = dm.train_dataset
        found = self._find_by_gradient(trainer, pl_module) if self.mine_by == "gradient" else \
            self._find_by_stats(trainer, pl_module)
        found = trainer.strategy.broadcast(found, src=0)
        cap = self.reweighter.max_change
        for item in found:
            preds = [Predicate(*p) for p in item["predicates"]]
            share = self.mined_share if self.mined_share is not None else 1.0 / (len(ds.mixture) + 1)
            if cap is not None:  # the round's mined slices together move the mixture by at most max_change
                share = min(share, cap / len(found))
            ds.mixture.add(item["name"], preds, share, from_batch=dm.mixture_from_batch())
            item["step"], item["share"] = int(trainer.global_step), share
            self.mined.append(item)
        return found

    def _find_by_gradient(self, trainer, pl_module) -> list[dict]:
        """Rank 0 searches (no collective inside); the other ranks wait for the broadcast."""
        if trainer.global_rank != 0:
            return []
        dm = trainer.datamodule
        ds = dm.train_dataset
        opts = self.gradient
        start = MINE_START + self.rounds * SUITE_STRIDE
        index = torch.arange(start, start + opts["samples"])
        check = torch.arange(start + SUITE_STRIDE // 2, start + SUITE_STRIDE // 2 + opts["check_samples"])
        names = searchable_params(dm.scenario)
        if self.params is not None:
            names = [n for n in names if n in self.params]
        if not names:
            rank_zero_info(f"SliceMiner: no continuous parameter among {self.params} varies; nothing to search")
            return []
        item = mine_hard_region(pl_module, ds, names, index, check, steps=opts["steps"], lr=opts["lr"],
                                slice_id=self._pool_slice_ids(dm, len(index)), alpha=opts["alpha"],
                                min_shift=opts["min_shift"], margin=opts["margin"])
        if item is None or item["name"] in ds.mixture.names:
            return []
        return [item]

    def _find_by_stats(self, trainer, pl_module) -> list[dict]:
        dm = trainer.datamodule
        ds = dm.train_dataset
        world, rank = trainer.world_size, trainer.global_rank
        per_rank = math.ceil(self.mine_samples / world)
        start = MINE_START + self.rounds * SUITE_STRIDE + rank * per_rank
        index = torch.arange(start, start + per_rank)
        slice_ids = self._pool_slice_ids(dm, per_rank)
        losses, params = [], {}
        for batch in dm.render_pool(index, slice_ids):
            losses.append(pl_module.per_sample_loss(batch.to(pl_module.device)).double().cpu())
            for key, value in batch.params.items():
                params.setdefault(key, []).append(value.double().cpu())
        names = sorted(k for k in params if k in PARAM_NAMES and (self.params is None or k in self.params))
        table = torch.stack([torch.cat(losses)] + [torch.cat(params[k]) for k in names])  # [1 + P, n]
        if world > 1:  # every rank gathers (same collective), rank 0 mines, its result is broadcast
            table = trainer.strategy.all_gather(table.to(pl_module.device)).cpu()  # [world, 1 + P, n]
            table = table.permute(1, 0, 2).reshape(table.shape[1], -1)
        if trainer.global_rank != 0:
            return []
        return self._select(dm, table[0], dict(zip(names, table[1:])), ds.mixture.names)

    def _select(self, dm, losses: torch.Tensor, params: dict, current: list[str]) -> list[dict]:
        """Mined slices that can be rendered (every predicate meets the base distribution's support)."""
        room = self.max_mined - len(self.mined)
        found: list[MinedSlice] = find_slices(params, losses, exclude=current, **self.mining)
        out = []
        for s in found:
            if len(out) >= room:
                break
            try:
                for p in s.predicates:
                    dm.scenario.parameters[p.param].restrict(p.lo, p.hi)
            except ConfigError as exc:
                rank_zero_info(f"SliceMiner: skipping mined slice {s.name!r}: {exc}")
                continue
            out.append({"name": s.name, "predicates": [(p.param, p.lo, p.hi) for p in s.predicates],
                        "support": s.support, "mean_loss": s.mean_loss, "rest_loss": s.rest_loss,
                        "effect_size": s.effect_size, "p_value": s.p_value})
        return out

    # ------------------------------------------------------------------ logging
    def _log(self, trainer, pl_module, stats: SliceStats, record: dict) -> None:
        if not trainer.is_global_zero:
            return
        names, step = record["names"], record["step"]
        metrics: dict[str, float] = {"slices/num_slices": float(len(names)), "slices/num_mined": float(len(self.mined))}
        # stats cover the slices before this round's mining
        for i, name in enumerate(names):
            metrics[f"slices/weight/{slice_key(name)}"] = record["weights"][i]
            if i < stats.num_slices and record["loss"][i] is not None:
                metrics[f"slices/loss/{slice_key(name)}"] = record["loss"][i]
        finite = [v for v in record["loss"] if v is not None]
        if finite:
            metrics["slices/worst_loss"] = max(finite)
            metrics["slices/mean_loss"] = sum(finite) / len(finite)
        worst = self._worst_slice_grid(trainer, names, stats) if self.log_images else None
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            self._log_wandb(trainer, logger, record, stats)
            if worst is not None:
                log_image(logger, "slices/worst_slice", worst[0], step, worst[1])
        if self.verbose:
            w = ", ".join(f"{n}={v:.3f}" for n, v in zip(names, record["weights"]))
            lo = ", ".join(f"{n}={v:.3f}" for n, v in zip(names, record["loss"]) if v is not None)
            mined = f"; mined {[m['name'] for m in record['mined']]}" if record["mined"] else ""
            rank_zero_info(f"SliceMiner step {step}: loss [{lo}] -> weights [{w}]{mined}")
        out_dir = _output_folder(trainer.default_root_dir, "SliceMiner (slice_miner.json)")
        write_text_atomic(out_dir / "slice_miner.json", json.dumps({"rule": self.rule, "reweight": self.reweight,
                                                                    "history": self.history, "mined": self.mined},
                                                                   indent=1))

    def _log_wandb(self, trainer, logger, record: dict, stats: SliceStats) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(logger, WandbLogger):
            return
        import wandb

        run = logger.experiment
        names = record["names"]
        rows = [[h["step"], n, h["weights"][i]] for h in self.history for i, n in enumerate(h["names"])]
        payload = {
            "slices/weights_table": wandb.Table(columns=["step", "slice", "weight"], data=rows),
            "slices/weights_chart": wandb.plot.line_series(
                xs=[h["step"] for h in self.history],
                ys=[[h["weights"][i] if i < len(h["weights"]) else 0.0 for h in self.history]
                    for i in range(len(names))],
                keys=names, title="slice weights", xname="step"),
            "trainer/global_step": record["step"],
        }
        if self.mined:
            cols = ["step", "name", "support", "mean_loss", "rest_loss", "effect_size", "p_value"]
            payload["slices/mined"] = wandb.Table(columns=cols, data=[[m[c] for c in cols] for m in self.mined])
        run.log(payload)

    def _worst_slice_grid(self, trainer, names: list[str], stats: SliceStats) -> tuple[torch.Tensor, str] | None:
        """(uint8 [3, H, W] grid of the worst slice's suite images, caption), or None without a finite loss."""
        import torchvision

        if not finite_any(stats.loss):
            return None
        worst = int(torch.nan_to_num(stats.loss, nan=-math.inf).argmax())
        images = torch.cat([b.image for b in trainer.datamodule.suite(names[worst])])[: self.image_count]
        grid = torchvision.utils.make_grid((images.clamp(0, 1) * 255).round().to(torch.uint8), nrow=8)
        return grid, f"{names[worst]} loss={float(stats.loss[worst]):.3f}"

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict:
        return {"version": 1, "reweighter": None if self.reweighter is None else self.reweighter.state_dict(),
                "history": self.history, "mined": self.mined, "rounds": self.rounds}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        if self.reweighter is None:
            self._pending = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict) -> None:
        if state.get("reweighter") is not None:
            self.reweighter.load_state_dict(state["reweighter"])
        self.history = list(state.get("history", []))
        self.mined = list(state.get("mined", []))
        self.rounds = int(state.get("rounds", len(self.history)))


def _gradient_options(options: dict | None, key: str) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(GRADIENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(GRADIENT_DEFAULTS)}")
    out = GRADIENT_DEFAULTS | options
    for name in ("samples", "check_samples"):
        out[name] = parse_int(out[name], f"{key}.{name}", lo=2)
    out["steps"] = parse_int(out["steps"], f"{key}.steps", lo=2)
    for name, lo, hi in (("lr", 0.0, math.inf), ("alpha", 0.0, 1.0)):
        out[name] = parse_number(out[name], f"{key}.{name}")
        if not lo < out[name] < hi:
            raise ConfigError(f"{key}.{name} must lie in ({lo:g}, {hi:g}), got {out[name]}")
    for name in ("min_shift", "margin"):
        out[name] = parse_number(out[name], f"{key}.{name}")
        if not 0.0 <= out[name] <= 1.0:
            raise ConfigError(f"{key}.{name} must lie in [0, 1] (a fraction of a range), got {out[name]}")
    return out


def _output_folder(folder, what: str) -> Path:
    try:
        return writable_folder(folder)
    except OSError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def finite_any(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).any())


class StreamRecorder(Callback):
    """Records, on every rank, the sample ids each training step consumed, the slice mixture they were drawn
    with (probabilities, names, version) and a digest of the model's parameters (not buffers) after the step, in
    ``<out_dir>/stream_rank<r>.json`` (written at the end of training). A debugging aid for determinism, resume
    and DDP checks; it runs no collective.
    """

    def __init__(self, out_dir: str | None = None):
        self.out_dir = out_dir
        self.steps: list[dict] = []

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        _output_folder(self.out_dir or trainer.default_root_dir, "StreamRecorder.out_dir")

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.steps.append({"batch_index": int(getattr(batch, "batch_index", -1)),
                           "sample_id": [int(x) for x in getattr(batch, "sample_id", torch.zeros(0)).tolist()]})

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        snap = trainer.datamodule.train_dataset.mixture.snapshot(self.steps[-1]["batch_index"])
        digest = hashlib.sha1()
        for value in pl_module.parameters():  # not buffers: BatchNorm statistics are per rank under DDP
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.steps[-1].update(step=int(trainer.global_step), weights=snap.probs.tolist(), names=list(snap.names),
                              mixture_version=snap.version, model_sha1=digest.hexdigest())

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        out = _output_folder(self.out_dir or trainer.default_root_dir, "StreamRecorder.out_dir")
        write_text_atomic(out / f"stream_rank{trainer.global_rank}.json", json.dumps(
            {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": self.steps}))
