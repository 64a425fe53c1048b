"""Lightning data wiring for the closed loop: the live synthetic stream (mixed with real photographs by a
hybrid schedule), fixed per-slice validation suites, and real validation and test splits.

The data layer does the work: :class:`~synth_torch.data.dataset.SynthDataset` renders,
:mod:`synth_torch.data.real` reads and splits the real datasets, and
:class:`~synth_torch.data.hybrid.HybridStream` follows the :class:`~synth_torch.data.hybrid.HybridSchedule`.
This module wires them into loaders, counts what training consumed, and checkpoints the position.

Sample-index ranges (all disjoint, so validation and mining never see a training sample):

* training: ``0 .. 10**9 - 1`` (the stream itself, batch ``k`` holds ``k * batch_size ...``);
* validation suite of slice ``s``: ``VAL_START + s * SUITE_STRIDE + [0, n)`` with slice id ``s``;
* mining pools: ``MINE_START + round * SUITE_STRIDE + ...`` (see :mod:`synth_torch.loop.callback`).

A suite is a pure function of (scenario, seed, slice definition, resolution), so every run, rank and resume
sees the same suite images. Under DDP each rank evaluates the samples ``rank::world_size`` of every suite.

Real images: training draws only from the real ``train`` split (its first ``real_train_images``, the nested
subset), validation uses the ``val`` split and ``trainer.test`` the ``test`` split; nothing else opens the
test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from synth_torch.data.batch import Batch
from synth_torch.data.dataset import SynthDataset, _rank_and_world
from synth_torch.data.hybrid import HybridBatch, HybridSchedule, HybridStream, images_in
from synth_torch.data.real import RealBatch, RealDataset, check_fractions, collate_real, open_real
from synth_torch.scenario.config import ConfigError, Scenario, load_scenario
from synth_torch.scenario.distributions import parse_flag, parse_int, parse_number
from synth_torch.spec.random import stable_hash

__all__ = ["SynthDataModule", "collate_batch", "VAL_START", "SUITE_STRIDE", "MINE_START"]

VAL_START = 10**9
MINE_START = 2 * 10**9
SUITE_STRIDE = 10**6
PREFETCH = 2  # batches each DataLoader worker renders ahead


def collate_batch(item):
    """Collate for ``DataLoader(batch_size=None)``: the dataset already yields whole batches, so keep the
    :class:`Batch` / :class:`RealBatch` / :class:`HybridBatch` dataclass as it is (the default collate would
    not know it)."""
    if isinstance(item, (Batch, RealBatch, HybridBatch)):
        return item
    raise TypeError(f"expected a synth_torch Batch, RealBatch or HybridBatch from the dataset, got "
                    f"{type(item).__name__}")


class _SuiteStream(IterableDataset):
    """Iterates the data module's cached validation suites (this rank's share), one slice per batch."""

    def __init__(self, dm: SynthDataModule):
        super().__init__()
        self.dm = dm

    def __iter__(self):
        for name in self.dm.slice_names:
            yield from self.dm.suite(name)


class SynthDataModule(pl.LightningDataModule):
    """The live synthetic stream, optionally mixed with real photographs, as a LightningDataModule.

    Training iterates a :class:`~synth_torch.data.hybrid.HybridStream` (``DataLoader(batch_size=None)``,
    :func:`collate_batch`): per step a synthetic ``Batch``, a ``RealBatch`` or a ``HybridBatch``, as the schedule
    says. Validation iterates fixed per-slice suites of ``val_samples_per_slice`` samples per slice (rendered
    once and cached; suites of mined slices are created when the slice is added) and, with real data, the real
    ``val`` split as a second loader (logged as ``val/<metric>/real``). ``trainer.test`` scores the real
    ``test`` split (``test/<metric>/real``).

    Args:
        scenario: built-in name, YAML path, dict or :class:`Scenario`; overrides: merged on top
            (``load_scenario(scenario, overrides)``).
        batch_size, resolution, seed, backend, sensor: passed to :class:`SynthDataset`.
        num_workers: DataLoader workers for the training stream. Forced to 0 when rendering on a GPU.
        worker_timeout: seconds the training loader waits for a worker's batch before it raises (a hung worker
            becomes an error, not a stalled run; a crashed worker is reported at once by the DataLoader).
        device: where rendering happens: ``"cpu"``, ``"cuda"`` or ``"auto"`` (the trainer's root device).
        val_samples_per_slice: suite size per slice (>= world size); val_batch_size: suite batch size.
        real_root: a real dataset folder or None; real_kind: ``"magnetic_tile"`` or ``"coco"``
            (:data:`synth_torch.data.real.READERS`).
        real_required: a missing ``real_root`` is an error even when real data only evaluates (a schedule that
            trains on real data always requires it); otherwise evaluation-only real data is skipped with a
            warning.
        real_split: (train, val, test) fractions of the file-name hash split.
        real_train_images: K, the number of labelled real training images (the first K of the train split's
            nested order: the 10-image set is inside the 25-image set); None: the whole train split.
        real_val_max_images: cap on the real validation images (nested order); None: all.
        real_flips: random horizontal/vertical flips of real training images (a function of seed and draw).
        real_balance: draw real training images round robin over their groups (magnetic_tile: the defect
            classes), so a class-imbalanced real split trains every class equally often.
        schedule, real_fraction, mix_by, switch_step, anneal_steps, anneal_shape, rewarm_steps, decay_steps:
            the :class:`~synth_torch.data.hybrid.HybridSchedule`.
        progress: show a progress bar while the validation suites render (rank 0).

    Stream state: the training dataset's :class:`~synth_torch.data.mixture.StreamCursor` advances for every batch
    the trainer consumes (not for the ones Lightning or the workers render ahead), and changes to its
    :class:`~synth_torch.data.mixture.SliceMixture` made during training take effect from
    :meth:`mixture_from_batch`, a batch no loader has rendered yet. So every batch is rendered with a mixture
    that depends only on its index, and a resumed run trains on exactly the batches an uninterrupted run trains
    on, under every schedule, with or without workers and under DDP. ``state_dict`` holds the cursor, the
    mixture (with its pending changes), ``images_seen`` (the synthetic and real training images this rank
    consumed) and a digest of the real training set: a checkpoint that trained on real images refuses to resume
    with a different one.
    """

    def __init__(self, scenario="defects", overrides: dict | None = None, batch_size: int = 8, resolution=64,
                 seed: int = 0, num_workers: int = 0, device: str = "cpu", backend: str = "auto",
                 sensor: bool = True, val_samples_per_slice: int = 16, val_batch_size: int | None = None,
                 real_root: str | None = None, real_kind: str = "magnetic_tile", real_required: bool = False,
                 real_split=(0.7, 0.1, 0.2), real_train_images: int | None = None,
                 real_val_max_images: int | None = 64, real_flips: bool = False, real_balance: bool = False,
                 schedule: str = "synthetic_only",
                 real_fraction: float = 0.5, mix_by: str = "batch", switch_step: int = 0, anneal_steps: int = 1000,
                 anneal_shape: str = "cosine", rewarm_steps: int = 0, decay_steps: int = 0,
                 worker_timeout: float = 600.0,
                 progress: bool = True):
        super().__init__()
        overrides = _plain(overrides) or {}
        self.scenario: Scenario = load_scenario(_plain(scenario), overrides)
        self.val_samples_per_slice = parse_int(val_samples_per_slice, "data.val_samples_per_slice", lo=1)
        self.num_workers = parse_int(num_workers, "data.num_workers", lo=0)
        if parse_number(worker_timeout, "data.worker_timeout") <= 0:
            raise ConfigError(f"data.worker_timeout: must be > 0 seconds, got {worker_timeout}")
        if device not in ("cpu", "cuda", "auto") and not str(device).startswith("cuda:"):
            raise ConfigError(f"data.device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        self.schedule = HybridSchedule(schedule, real_fraction, mix_by, switch_step, anneal_steps, anneal_shape,
                                       rewarm_steps, decay_steps)
        if self.schedule.uses_real and real_root is None:
            raise ConfigError(f"data.schedule={schedule} trains on real images: set data.real_root")
        self.real_train_images = parse_int(real_train_images, "data.real_train_images", lo=1, none_ok=True)
        try:
            self.real_split = check_fractions(_plain(real_split))
        except ValueError as exc:
            raise ConfigError(f"data.real_split: {exc}") from None
        self.batch_size = parse_int(batch_size, "data.batch_size", lo=1)
        self.resolution, self.seed = resolution, parse_int(seed, "data.seed")
        self.device, self.backend, self.sensor = device, backend, parse_flag(sensor, "data.sensor")
        self.worker_timeout = float(worker_timeout)
        self.val_batch_size = parse_int(val_batch_size if val_batch_size is not None else batch_size,
                                        "data.val_batch_size", lo=1)
        self.real_root, self.real_kind = real_root, real_kind
        self.real_required = parse_flag(real_required, "data.real_required")
        self.real_val_max_images = parse_int(real_val_max_images, "data.real_val_max_images", lo=1, none_ok=True)
        self.real_flips = parse_flag(real_flips, "data.real_flips")
        self.real_balance = parse_flag(real_balance, "data.real_balance")
        self.progress = parse_flag(progress, "data.progress")
        self.train_dataset: SynthDataset | None = None
        self.real_train: RealDataset | None = None
        self.real_val: RealDataset | None = None
        self.real_test: RealDataset | None = None
        self._suites: dict[str, list[Batch]] = {}
        self.images_seen = {"synthetic": 0, "real": 0}  # training images consumed by this rank

    # ------------------------------------------------------------------ facts the task needs
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.scenario.class_names

    @property
    def num_classes(self) -> int:
        """Semantic classes including background (0)."""
        return len(self.scenario.class_names) + 1

    @property
    def slice_names(self) -> tuple[str, ...]:
        if self.train_dataset is None:
            return self.scenario.slice_names
        return self.train_dataset.mixture.names

    def lr_scale(self, step: int) -> float:
        """The schedule's learning-rate factor at optimizer step ``step`` (the tasks apply it)."""
        return self.schedule.lr_scale(step)

    def _render_device(self) -> torch.device:
        if self.device == "auto":
            trainer = getattr(self, "trainer", None)
            return trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return torch.device(self.device)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = SynthDataset(self.scenario, batch_size=self.batch_size, resolution=self.resolution,
                                              device=self._render_device(), seed=self.seed, backend=self.backend,
                                              sensor=self.sensor)
        rank, world = _rank_and_world()
        if self.val_samples_per_slice < world:
            raise ConfigError(f"data.val_samples_per_slice ({self.val_samples_per_slice}) must be >= the number of "
                              f"processes ({world}) so every rank evaluates every slice")
        if self.real_root is None or self.real_val is not None or self.real_train is not None:
            return
        root = Path(self.real_root).expanduser()
        if not root.exists():
            if self.real_required or self.schedule.uses_real:
                raise FileNotFoundError(f"data.real_root not found: {root} (data.schedule={self.schedule.kind})")
            pl.utilities.rank_zero_warn(f"data.real_root {root} not found; evaluating without real data")
            self.real_root = None
            return
        if self.real_split[1] > 0:
            val = self._open_real("val")
            cap = self.real_val_max_images
            self.real_val = val.take(min(int(cap), len(val))) if cap is not None else val
        if self.schedule.uses_real:
            try:
                self.real_train = self._open_real("train").take(self.real_train_images)
            except ValueError as exc:
                raise ConfigError(f"data.real_train_images: {exc}") from None

    def _open_real(self, split: str) -> RealDataset:
        return open_real(self.real_kind, Path(self.real_root).expanduser(), self.class_names,
                         self.train_dataset.resolution, split, self.real_split)

    @property
    def real_train_keys(self) -> tuple[str, ...]:
        """File keys of the real training images (empty without real training)."""
        return () if self.real_train is None else self.real_train.keys

    def train_dataloader(self) -> DataLoader:
        workers = self._workers()
        stream = HybridStream(self.train_dataset, self.real_train, self.schedule, self.seed, flips=self.real_flips,
                              balance=self.real_balance)
        return DataLoader(stream, batch_size=None, collate_fn=collate_batch, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=False,
                          prefetch_factor=PREFETCH if workers else None, timeout=self.worker_timeout if workers else 0)

    def val_dataloader(self):
        suites = DataLoader(_SuiteStream(self), batch_size=None, collate_fn=collate_batch, num_workers=0)
        if self.real_val is None:
            return suites
        return [suites, self._real_loader(self.real_val)]

    def test_dataloader(self) -> DataLoader:
        """The real test split (never used in training)."""
        if self.real_root is None:
            raise ConfigError("testing scores the real test split: set data.real_root")
        if self.real_split[2] == 0:
            raise ConfigError(f"data.real_split {list(self.real_split)} has no test share")
        if self.real_test is None:
            self.real_test = self._open_real("test")
        return self._real_loader(self.real_test)

    def _real_loader(self, dataset: RealDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.val_batch_size, collate_fn=collate_real, num_workers=0)

    def _workers(self) -> int:
        return 0 if self._render_device().type == "cuda" else self.num_workers

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and getattr(batch, "batch_index", -1) >= 0:
            rank, world = _rank_and_world()
            self.train_dataset.cursor.consume(batch.batch_index, rank, world)
            for kind, n in images_in(batch).items():
                self.images_seen[kind] += n
        return batch

    # ------------------------------------------------------------------ suites
    def suite_indices(self, slice_id: int) -> torch.Tensor:
        """Sample indices of slice ``slice_id``'s suite evaluated by this rank."""
        rank, world = _rank_and_world()
        start = VAL_START + int(slice_id) * SUITE_STRIDE
        return torch.arange(start, start + self.val_samples_per_slice)[rank::world]

    def suite(self, name: str) -> list[Batch]:
        """This rank's share of the validation suite of slice ``name`` (rendered once, cached on the CPU; the first
        request renders every missing suite, see :meth:`render_suites`)."""
        if name not in self._suites:
            self.render_suites()
        return self._suites[name]

    def render_suites(self) -> None:
        """Render the validation suites of every slice that has none yet, with a progress bar on rank 0 (unless
        ``progress=False``): at the first validation this takes a while, and the bar says what is happening."""
        if self.train_dataset is None:
            self.setup("validate")
        names = [n for n in self.slice_names if n not in self._suites]
        if not names:
            return
        rank, _ = _rank_and_world()
        work = [(name, self.slice_names.index(name), self.suite_indices(self.slice_names.index(name))) for name in names]
        with tqdm(total=sum(len(idx) for _, _, idx in work), desc=f"rendering validation suites ({len(names)} slices)",
                  unit="img", disable=rank != 0 or not self.progress, leave=False, dynamic_ncols=True) as bar:
            for name, sid, idx in work:
                batches = []
                for chunk in idx.split(self.val_batch_size):
                    b = self.train_dataset.render_batch(chunk, torch.full_like(chunk, sid)).to("cpu")
                    batches.append(replace(b, slice_names=self.slice_names))
                    bar.update(len(chunk))
                self._suites[name] = batches

    def render_pool(self, indices: torch.Tensor, slice_ids: torch.Tensor) -> list[Batch]:
        """Render samples ``indices`` with ``slice_ids`` in chunks of ``val_batch_size`` (for mining)."""
        return [self.train_dataset.render_batch(i, s).to("cpu")
                for i, s in zip(indices.split(self.val_batch_size), slice_ids.split(self.val_batch_size))]

    # ------------------------------------------------------------------ checkpointing
    def mixture_from_batch(self) -> int:
        """The first global batch a mixture change made now can apply to: past every batch the trainer consumed
        and every batch Lightning (one ahead) and the DataLoader workers (``PREFETCH`` each) may have rendered.
        The same on every rank."""
        _, world = _rank_and_world()
        workers = self._workers()
        return self.train_dataset.cursor.next_batch + world * (PREFETCH * workers + 2)

    def _real_digest(self) -> int | None:
        if self.real_train is None:
            return None
        return stable_hash("\n".join([*self.real_train.keys, *(["balanced"] if self.real_balance else [])]))

    def state_dict(self) -> dict:
        if self.train_dataset is None:
            return {}
        return {"dataset": self.train_dataset.state_dict(), "images_seen": dict(self.images_seen),
                "real_train": self._real_digest(), "version": 4}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.train_dataset is None:
            self.setup("fit")
        seen = state.get("images_seen", {"synthetic": 0, "real": 0})
        if seen.get("real", 0) and state.get("real_train") != self._real_digest():
            raise ValueError(f"the checkpoint trained on {seen['real']} images of a different real training set "
                             f"or draw order (data.real_root, data.real_split, data.real_train_images or "
                             f"data.real_balance changed); refusing to resume")
        self.train_dataset.load_state_dict(state["dataset"])
        self.images_seen = {"synthetic": int(seen.get("synthetic", 0)), "real": int(seen.get("real", 0))}
        self._suites = {}


def _plain(value):
    """OmegaConf containers to plain Python (Hydra passes DictConfig to ``_target_`` constructors)."""
    if type(value).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value
