"""Lightning data wiring for the closed loop: the live synthetic stream, fixed per-slice validation suites
and optional real datasets for hybrid training and evaluation.

Sample-index ranges (all disjoint, so validation and mining never see a training sample):

* training: ``0 .. 10**9 - 1`` (the stream itself, batch ``k`` holds ``k * batch_size ...``);
* validation suite of slice ``s``: ``VAL_START + s * SUITE_STRIDE + [0, n)`` with slice id ``s``;
* mining pools: ``MINE_START + round * SUITE_STRIDE + ...`` (see :mod:`synth_torch.loop.callback`).

A suite is a pure function of (scenario, seed, slice definition, resolution), so every run, rank and resume
sees the same suite images. Under DDP each rank evaluates the samples ``rank::world_size`` of every suite.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from synth_torch.data.batch import Batch
from synth_torch.data.dataset import SynthDataset
from synth_torch.scenario.config import ConfigError, Scenario, load_scenario

__all__ = ["RealBatch", "MagneticTileSegmentation", "CocoDetectionReal", "SynthDataModule", "collate_batch",
           "VAL_START", "SUITE_STRIDE", "MINE_START"]

VAL_START = 10**9
MINE_START = 2 * 10**9
SUITE_STRIDE = 10**6


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class RealBatch:
    """A batch of real photographs in the shape the tasks take (``Batch`` has the synthetic extras).

    Shape:
        - image: :math:`(B, 3, H, W)` float in [0, 1]
        - semantic: :math:`(B, H, W)` int64 class ids (0 background), or None for detection data
        - boxes: B tensors :math:`(n_i, 4)` XYXY pixels; labels: B tensors :math:`(n_i,)` class ids 1..C
    """

    image: torch.Tensor
    semantic: torch.Tensor | None
    boxes: list
    labels: list
    source: str = "real"

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device, non_blocking: bool = False) -> RealBatch:
        def move(v):
            if torch.is_tensor(v):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, list):
                return [move(x) for x in v]
            return v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def to_torchvision(self, min_visible_pixels: int = 1) -> tuple[list[torch.Tensor], list[dict]]:
        return list(self.image), [{"boxes": b, "labels": lab} for b, lab in zip(self.boxes, self.labels)]


def collate_batch(item):
    """Collate for ``DataLoader(batch_size=None)``: the dataset already yields whole batches, so keep the
    :class:`Batch` / :class:`RealBatch` dataclass as it is (the default collate would not know it)."""
    if isinstance(item, (Batch, RealBatch)):
        return item
    raise TypeError(f"expected a synth_torch Batch or RealBatch from the dataset, got {type(item).__name__}")


def _collate_real(items: list[dict]) -> RealBatch:
    semantic = [it["semantic"] for it in items]
    return RealBatch(image=torch.stack([it["image"] for it in items]),
                     semantic=None if semantic[0] is None else torch.stack(semantic),
                     boxes=[it["boxes"] for it in items], labels=[it["labels"] for it in items],
                     source=items[0]["source"])


def _split_of(name: str, val_fraction: float) -> str:
    """Deterministic train/val split by file name (stable across machines and runs)."""
    return "val" if (zlib.crc32(name.encode()) % 10_000) < val_fraction * 10_000 else "train"


def _resize_image(img: torch.Tensor, res: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(img[None], size=res, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


class MagneticTileSegmentation(Dataset):
    """Magnetic-tile surface-defect photos (Huang et al.) as semantic segmentation in the synthetic class ids.

    Layout: ``root/MT_<Class>/Imgs/<name>.jpg`` with a ``<name>.png`` mask beside it (thresholded at > 127).
    ``MT_Blowhole`` pixels get the id of the class named ``blowhole`` in ``class_names`` (ids ``1..C``), and so
    on; ``MT_Free`` images have no defect. Images are resized (squashed) to ``resolution``; grayscale is
    repeated to 3 channels. The data are read where they lie (never copied).

    Args:
        root: the ``magnetic_tile`` folder; a missing folder raises ``FileNotFoundError``.
        class_names: the scenario's semantic classes 1..C (``Scenario.class_names``).
        split: ``"train"``, ``"val"`` or ``"all"`` (a stable split by file name, ``val_fraction`` in val).
        include_free: keep defect-free images; max_images: keep the first N (sorted) after the split.
    """

    def __init__(self, root, class_names, resolution=128, split: str = "val", val_fraction: float = 0.2,
                 include_free: bool = True, max_images: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"magnetic tile folder not found: {root}")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        lower = [c.lower() for c in class_names]
        self.items: list[tuple[Path, Path, int]] = []
        for folder in sorted(root.glob("MT_*")):
            cls = folder.name[3:].lower()
            if cls == "free":
                if not include_free:
                    continue
                label = 0
            elif cls in lower:
                label = lower.index(cls) + 1
            else:
                continue
            for jpg in sorted((folder / "Imgs").glob("*.jpg")):
                png = jpg.with_suffix(".png")
                if png.is_file() and (split == "all" or _split_of(jpg.name, val_fraction) == split):
                    self.items.append((jpg, png, label))
        if max_images is not None:
            self.items = self.items[: int(max_images)]
        if not self.items:
            raise FileNotFoundError(f"no MT_<Class>/Imgs/<name>.jpg + .png pairs for split {split!r} under {root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from torchvision.io import ImageReadMode, read_image

        jpg, png, label = self.items[i]
        img = read_image(str(jpg), ImageReadMode.RGB).float() / 255.0
        mask = read_image(str(png), ImageReadMode.GRAY).float()
        img = _resize_image(img, self.resolution)
        mask = F.interpolate(mask[None], size=self.resolution, mode="bilinear", align_corners=False)[0, 0] > 127
        return {"image": img, "semantic": mask.long() * label, "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.int64), "source": "real/magnetic_tile"}


class CocoDetectionReal(Dataset):
    """A COCO detection set (e.g. ``fruits_nuts``: ``images/*.jpg`` + ``trainval.json``) read with
    ``torchvision.datasets.CocoDetection``, boxes rescaled to ``resolution``.

    ``label_map`` maps COCO category names to class ids 1..C of the model (unmapped categories are dropped);
    the default keeps the COCO category ids. Mind that a synthetic scenario's classes must match the real
    ones for a detection metric to mean anything.
    """

    def __init__(self, root, resolution=128, annotation: str = "trainval.json", images: str = "images",
                 label_map: dict | None = None, split: str = "all", val_fraction: float = 0.3):
        from torchvision.datasets import CocoDetection

        root = Path(root)
        if not (root / annotation).is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {root / annotation}")
        self.coco = CocoDetection(str(root / images), str(root / annotation))
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        cats = {c["id"]: c["name"] for c in self.coco.coco.loadCats(self.coco.coco.getCatIds())}
        self.cat_to_label = {cid: (cid if label_map is None else label_map.get(name)) for cid, name in cats.items()}
        self.index = [i for i, img_id in enumerate(self.coco.ids)
                      if split == "all" or _split_of(str(img_id), val_fraction) == split]
        if not self.index:
            raise FileNotFoundError(f"no images for split {split!r} in {root}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        from torchvision.transforms.functional import pil_to_tensor

        pil, anns = self.coco[self.index[i]]
        img = pil_to_tensor(pil.convert("RGB")).float() / 255.0
        H, W = img.shape[-2:]
        sy, sx = self.resolution[0] / H, self.resolution[1] / W
        boxes, labels = [], []
        for a in anns:
            label = self.cat_to_label.get(a["category_id"])
            x, y, w, h = a["bbox"]
            if label is None or w <= 0 or h <= 0:
                continue
            boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
            labels.append(int(label))
        return {"image": _resize_image(img, self.resolution), "semantic": None,
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64), "source": "real/coco"}


class _HybridStream(IterableDataset):
    """The synthetic stream with one real batch every ``real_every`` steps (deterministic schedule)."""

    def __init__(self, synth: SynthDataset, real: Dataset, real_every: int, batch_size: int, seed: int):
        super().__init__()
        self.synth, self.real, self.real_every, self.batch_size, self.seed = synth, real, real_every, batch_size, seed

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world()
        g = torch.Generator().manual_seed(self.seed * 7919 + rank * 131 + worker)
        order = torch.randperm(len(self.real), generator=g).tolist()
        pos = 0
        for step, batch in enumerate(self.synth):
            if step % self.real_every == self.real_every - 1:
                items = []
                for _ in range(self.batch_size):
                    items.append(self.real[order[pos % len(order)]])
                    pos += 1
                yield _collate_real(items)
            yield batch


class _TrackedStream(IterableDataset):
    """The training stream without workers: the dataset's own iteration, recording the slice weights each batch
    was rendered with.

    Lightning fetches one batch ahead, so a SliceMiner round at the end of step ``s`` changes the weights after
    batch ``s`` was already rendered: that batch follows the old weights. A checkpoint written at step ``s``
    therefore stores the weights batch ``s`` was rendered with (``render_weights``), and the resumed run renders
    its first batch with them, then continues with the current ones, exactly as the uninterrupted run did.
    """

    def __init__(self, dm: SynthDataModule):
        super().__init__()
        self.dm = dm

    def __iter__(self):
        dm = self.dm
        weights = dm.train_dataset.weights
        it = iter(dm.train_dataset)
        pending, dm._pending_render = dm._pending_render, None
        while True:
            current = None
            if pending is not None:  # render the first batch with the weights it had before the interruption
                current = weights.state_dict()
                weights.load_state_dict(pending)
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                used = weights.state_dict()
                if current is not None:
                    weights.load_state_dict(current)
                pending = None
            dm._rendered = (batch.batch_index, used)
            yield batch


class _SuiteStream(IterableDataset):
    """Iterates the data module's cached validation suites (this rank's share), one slice per batch."""

    def __init__(self, dm: SynthDataModule):
        super().__init__()
        self.dm = dm

    def __iter__(self):
        for name in self.dm.slice_names:
            yield from self.dm.suite(name)


def _real_dataset(kind: str, root, class_names, resolution, split: str):
    if kind == "magnetic_tile":
        return MagneticTileSegmentation(root, class_names, resolution, split=split)
    if kind == "coco":
        return CocoDetectionReal(root, resolution, split=split)
    raise ConfigError(f"real_kind must be 'magnetic_tile' or 'coco', got {kind!r}")


class SynthDataModule(pl.LightningDataModule):
    """The live synthetic stream as a LightningDataModule.

    Training iterates a :class:`SynthDataset` (``batch_size`` inside the dataset, ``DataLoader(batch_size=None)``,
    :func:`collate_batch`). Validation iterates fixed per-slice suites of ``val_samples_per_slice`` samples per
    slice (rendered once and cached; suites of mined slices are created when the slice is added). A real
    dataset (``real_root``) may be added for evaluation (a second validation loader, logged as
    ``val/.../real``) and for hybrid training (``real_every``: one real batch every N steps).

    Args:
        scenario: built-in name, YAML path, dict or :class:`Scenario`; overrides: merged on top
            (``load_scenario(scenario, overrides)``).
        batch_size, resolution, seed, backend, sensor: passed to :class:`SynthDataset`.
        num_workers: DataLoader workers for the training stream. Forced to 0 when rendering on a GPU.
        device: where rendering happens: ``"cpu"``, ``"cuda"`` or ``"auto"`` (the trainer's root device).
        val_samples_per_slice: suite size per slice (>= world size); val_batch_size: suite batch size.
        real_root: a real dataset folder or None; real_kind: ``"magnetic_tile"`` or ``"coco"``;
        real_required: raise if ``real_root`` is missing (default: skip with a warning).
        real_every: hybrid training, 0 disables.

    Stream position: the module counts the synthetic training batches the trainer actually consumed (not the
    one Lightning prefetched), and its ``state_dict`` stores the dataset state with ``next_batch`` set to the
    first batch not consumed yet, plus the weights that prefetched batch was rendered with. With
    ``num_workers=0`` a resumed run trains on exactly the batches an uninterrupted run trains on; with workers
    the position is rounded up to a whole round of workers, and batches the workers prefetched before a weight
    change follow the old weights in the uninterrupted run only (see ``docs/training.md``).
    """

    def __init__(self, scenario="defects", overrides: dict | None = None, batch_size: int = 8, resolution=64,
                 seed: int = 0, num_workers: int = 0, device: str = "cpu", backend: str = "auto",
                 sensor: bool = True, val_samples_per_slice: int = 16, val_batch_size: int | None = None,
                 real_root: str | None = None, real_kind: str = "magnetic_tile", real_required: bool = False,
                 real_every: int = 0, real_val_max_images: int | None = 64):
        super().__init__()
        overrides = _plain(overrides) or {}
        self.scenario: Scenario = load_scenario(_plain(scenario), overrides)
        if int(val_samples_per_slice) < 1:
            raise ConfigError(f"data.val_samples_per_slice must be >= 1, got {val_samples_per_slice}")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        if device not in ("cpu", "cuda", "auto") and not str(device).startswith("cuda:"):
            raise ConfigError(f"data.device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        if real_every < 0:
            raise ConfigError(f"data.real_every must be >= 0, got {real_every}")
        self.batch_size, self.resolution, self.seed = int(batch_size), resolution, int(seed)
        self.num_workers, self.device, self.backend, self.sensor = int(num_workers), device, backend, sensor
        self.val_samples_per_slice = int(val_samples_per_slice)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.real_root, self.real_kind, self.real_required = real_root, real_kind, bool(real_required)
        self.real_every, self.real_val_max_images = int(real_every), real_val_max_images
        self.train_dataset: SynthDataset | None = None
        self.real_val = None
        self.real_train = None
        self._suites: dict[str, list[Batch]] = {}
        self._consumed = 0  # synthetic training batches consumed by this rank since _start_batch
        self._start_batch = 0
        self._rendered = None  # (batch index, weights state it was rendered with) of the last rendered batch
        self._pending_render = None  # weights state for the first batch after a resume

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
        return tuple(self.train_dataset.weights.names)

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
            self._start_batch = self.train_dataset.next_batch
        rank, world = _rank_world()
        if self.val_samples_per_slice < world:
            raise ConfigError(f"data.val_samples_per_slice ({self.val_samples_per_slice}) must be >= the number of "
                              f"processes ({world}) so every rank evaluates every slice")
        if self.real_root is not None and self.real_val is None:
            root = Path(self.real_root).expanduser()
            if not root.exists():
                if self.real_required:
                    raise FileNotFoundError(f"data.real_root not found: {root}")
                pl.utilities.rank_zero_warn(f"data.real_root {root} not found; training without real data")
                self.real_root = None
                return
            res = self.train_dataset.resolution
            self.real_val = _real_dataset(self.real_kind, root, self.class_names, res, "val")
            if self.real_val_max_images is not None and len(self.real_val) > self.real_val_max_images:
                self.real_val = torch.utils.data.Subset(self.real_val, range(self.real_val_max_images))
            if self.real_every:
                self.real_train = _real_dataset(self.real_kind, root, self.class_names, res, "train")

    def train_dataloader(self) -> DataLoader:
        workers = self._workers()
        ds = self.train_dataset if workers else _TrackedStream(self)
        if self.real_train is not None:
            ds = _HybridStream(ds, self.real_train, self.real_every, self.batch_size, self.seed)
        return DataLoader(ds, batch_size=None, collate_fn=collate_batch, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=False)

    def val_dataloader(self):
        suites = DataLoader(_SuiteStream(self), batch_size=None, collate_fn=collate_batch, num_workers=0)
        if self.real_val is None:
            return suites
        real = DataLoader(self.real_val, batch_size=self.val_batch_size, collate_fn=_collate_real, num_workers=0)
        return [suites, real]

    def _workers(self) -> int:
        return 0 if self._render_device().type == "cuda" else self.num_workers

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, Batch) and batch.batch_index >= 0:
            self._consumed += 1
        return batch

    # ------------------------------------------------------------------ suites
    def suite_indices(self, slice_id: int) -> torch.Tensor:
        """Sample indices of slice ``slice_id``'s suite evaluated by this rank."""
        rank, world = _rank_world()
        start = VAL_START + int(slice_id) * SUITE_STRIDE
        return torch.arange(start, start + self.val_samples_per_slice)[rank::world]

    def suite(self, name: str) -> list[Batch]:
        """This rank's share of the validation suite of slice ``name`` (rendered once, cached on the CPU)."""
        if name not in self._suites:
            if self.train_dataset is None:
                self.setup("validate")
            sid = list(self.train_dataset.weights.names).index(name)
            idx = self.suite_indices(sid)
            batches = []
            for chunk in idx.split(self.val_batch_size):
                b = self.train_dataset.render_batch(chunk, torch.full_like(chunk, sid)).to("cpu")
                batches.append(replace(b, slice_names=self.slice_names))
            self._suites[name] = batches
        return self._suites[name]

    def render_pool(self, indices: torch.Tensor, slice_ids: torch.Tensor) -> list[Batch]:
        """Render samples ``indices`` with ``slice_ids`` in chunks of ``val_batch_size`` (for mining)."""
        return [self.train_dataset.render_batch(i, s).to("cpu")
                for i, s in zip(indices.split(self.val_batch_size), slice_ids.split(self.val_batch_size))]

    # ------------------------------------------------------------------ checkpointing
    def resume_position(self) -> int:
        """First batch index not consumed yet (identical on every rank)."""
        _, world = _rank_world()
        workers = max(1, self._workers())
        rounds = math.ceil(self._consumed / workers)
        return self._start_batch + rounds * world * workers

    def state_dict(self) -> dict:
        if self.train_dataset is None:
            return {}
        state = self.train_dataset.state_dict()
        state["next_batch"] = self.resume_position()
        rank, _ = _rank_world()
        # the batch Lightning prefetched but did not train on yet (rank r's is next_batch + r; every rank rendered
        # its own at the same step with identical weights, so rank 0's record holds for all)
        render = None
        if self._rendered is not None and self._rendered[0] == state["next_batch"] + rank:
            render = self._rendered[1]
        return {"dataset": state, "render_weights": render, "version": 2}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.train_dataset is None:
            self.setup("fit")
        self.train_dataset.load_state_dict(state["dataset"])
        self._start_batch, self._consumed = self.train_dataset.next_batch, 0
        self._pending_render = state.get("render_weights")
        self._suites = {}


def _plain(value):
    """OmegaConf containers to plain Python (Hydra passes DictConfig to ``_target_`` constructors)."""
    if type(value).__name__ in ("DictConfig", "ListConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value
