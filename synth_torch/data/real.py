"""Real labelled photographs for hybrid training and evaluation, read where they lie (never copied).

A reader lists a dataset's images once, assigns each to ``train``, ``val`` or ``test`` by a hash of its file
name (:func:`split_of`: the same on every machine and run, and stable when other files are added), and orders
each split so that its first ``K`` images are the ``K``-image subset (:func:`nested_order`: the 10-image set is
inside the 25-image set, and so on). Samples are resized to the training resolution with torchvision's v2
transforms, which move boxes and masks with the image.

Readers:
    :class:`MagneticTile`: ``MT_<Class>/Imgs/<name>.jpg`` + ``<name>.png`` defect masks (Huang et al.).
    :class:`CocoReal`: a COCO detection/instance set read by ``torchvision.datasets.CocoDetection`` through
    ``wrap_dataset_for_transforms_v2``.

Example:
    >>> train = open_real("magnetic_tile", "../shared/real/magnetic_tile", ("blowhole", "crack"), 64)  # doctest: +SKIP
    >>> batch = collate_real([train.take(25)[i] for i in range(8)])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from synth_torch.scenario.config import ConfigError
from synth_torch.spec.random import stable_hash

__all__ = ["SPLITS", "RealBatch", "RealDataset", "MagneticTile", "CocoReal", "READERS", "open_real", "collate_real",
           "check_fractions", "split_of", "nested_order"]

SPLITS = ("train", "val", "test")


def _unit(*parts) -> float:
    """A uniform number in [0, 1) from a stable hash of ``parts``."""
    return stable_hash(":".join(str(p) for p in parts)) / 2**31


def check_fractions(fractions) -> tuple[float, float, float]:
    """(train, val, test) split fractions as floats; ``ValueError`` unless they are >= 0, sum to 1 and give
    train a share."""
    out = tuple(float(f) for f in fractions)
    if len(out) != 3 or min(out) < 0 or abs(sum(out) - 1.0) > 1e-6 or out[0] <= 0:
        raise ValueError(f"split fractions (train, val, test) must be >= 0, sum to 1 and give train a share, "
                         f"got {list(fractions)}")
    return out


def split_of(key: str, fractions: tuple[float, float, float]) -> str:
    """The split (``train``, ``val`` or ``test``) of the file ``key`` for split fractions (train, val, test)."""
    u = _unit("split", key)
    train, val, _ = fractions
    return "train" if u < train else "val" if u < train + val else "test"


def nested_order(keys: list[str], groups: list[str]) -> list[int]:
    """Positions of ``keys`` in the order whose first ``K`` form the ``K``-image subset, for every ``K``.

    Round robin over ``groups`` (for example defect classes), each group's keys taken in hash order: any
    prefix holds every group as evenly as the group sizes allow, and a smaller prefix is inside a larger one.
    """
    rank: dict[int, int] = {}
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for members in by_group.values():
        for r, i in enumerate(sorted(members, key=lambda i: (_unit("order", keys[i]), keys[i]))):
            rank[i] = r
    return sorted(range(len(keys)), key=lambda i: (rank[i], _unit("group", groups[i]), groups[i]))


@dataclass
class RealBatch:
    """A batch of real photographs in the shape the tasks take (``Batch`` has the synthetic extras).

    Shape:
        - image: :math:`(B, 3, H, W)` float in [0, 1]
        - semantic: :math:`(B, H, W)` int64 class ids (0 background; from instance masks for COCO sets)
        - boxes: B tensors :math:`(n_i, 4)` XYXY pixels; labels: B tensors :math:`(n_i,)` class ids 1..C
        - keys: the B file names (dataset-relative), for provenance and leakage checks
        - groups: the B images' stratification groups (magnetic_tile: the defect class), for per-group scores
    ``batch_index`` is the training stream's global batch index (-1 outside training).
    """

    image: torch.Tensor
    semantic: torch.Tensor
    boxes: list
    labels: list
    keys: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    source: str = "real"
    batch_index: int = -1

    def __len__(self) -> int:
        return self.image.shape[0]

    def select(self, keep: torch.Tensor) -> RealBatch:
        """The images where the boolean ``keep`` [B] is True, in order."""
        idx = torch.nonzero(keep.cpu(), as_tuple=True)[0].tolist()
        return replace(self, image=self.image[idx], semantic=self.semantic[idx],
                       boxes=[self.boxes[i] for i in idx], labels=[self.labels[i] for i in idx],
                       keys=tuple(self.keys[i] for i in idx),
                       groups=tuple(self.groups[i] for i in idx) if self.groups else ())

    def to(self, device, non_blocking: bool = False) -> RealBatch:
        def move(v):
            if torch.is_tensor(v):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, list):
                return [move(x) for x in v]
            return v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def to_torchvision(self, min_visible_pixels: int = 1) -> tuple[list[torch.Tensor], list[dict]]:
        """Images and ``{"boxes", "labels"}`` targets (``min_visible_pixels`` is accepted for symmetry with
        ``Batch.to_torchvision``; real boxes carry no visibility)."""
        H, W = self.image.shape[-2:]
        return list(self.image), [{"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(H, W)),
                                   "labels": lab} for b, lab in zip(self.boxes, self.labels)]


def collate_real(items: list[dict]) -> RealBatch:
    """Stack samples of a :class:`RealDataset` into a :class:`RealBatch`."""
    return RealBatch(image=torch.stack([it["image"].as_subclass(torch.Tensor) for it in items]),
                     semantic=torch.stack([it["semantic"].as_subclass(torch.Tensor) for it in items]),
                     boxes=[it["boxes"].as_subclass(torch.Tensor) for it in items],
                     labels=[it["labels"] for it in items], keys=tuple(it["key"] for it in items),
                     groups=tuple(it["group"] for it in items), source=items[0]["source"])


class RealDataset(Dataset, ABC):
    """One split of a real dataset, in nested order, resized to ``resolution``.

    Subclasses list the dataset (:meth:`_catalog`: file keys and groups) and read one raw sample
    (:meth:`_read`: a dict of tv_tensors ``image`` and ``semantic`` or instance ``masks``, ``boxes``,
    ``labels``).

    Args:
        root: the dataset folder; a missing folder raises ``FileNotFoundError`` naming it.
        class_names: the model's classes 1..C (``Scenario.class_names``); dataset classes map to them by name.
        resolution: int or (H, W); images are resized (squashed) to it.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        fractions: (train, val, test) shares of the file-name hash split.

    Items are dicts: ``image`` (``tv_tensors.Image`` [3, H, W] float in [0, 1]), ``semantic``
    (``tv_tensors.Mask`` [H, W] int64), ``boxes`` (``tv_tensors.BoundingBoxes`` XYXY [n, 4]), ``labels`` [n],
    ``key``, ``group`` and ``source``.
    """

    source = "real"

    def __init__(self, root, class_names, resolution=128, split: str = "train",
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"real dataset folder not found: {self.root}")
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        fractions = check_fractions(fractions)
        self.class_names = tuple(class_names)
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.split, self.fractions = split, fractions
        keys, groups = self._catalog()
        inside = [i for i, k in enumerate(keys) if split == "all" or split_of(k, fractions) == split]
        order = nested_order([keys[i] for i in inside], [groups[i] for i in inside])
        self.index = [inside[i] for i in order]  # catalog positions, in nested order
        self.keys = tuple(keys[i] for i in self.index)
        self.groups = tuple(groups[i] for i in self.index)
        if not self.index:
            raise FileNotFoundError(f"split {split!r} of {self.root} is empty (fractions {list(fractions)})")
        self._resize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                   v2.Resize(self.resolution, antialias=True)])
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def take(self, k: int | None) -> RealDataset:
        """The first ``k`` images of this split (the nested ``k``-image subset); None keeps all."""
        if k is None:
            return self
        if not 1 <= int(k) <= len(self):
            raise ValueError(f"cannot take {k} images: split {self.split!r} of {self.root} has {len(self)}")
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.index, out.keys, out.groups = self.index[: int(k)], self.keys[: int(k)], self.groups[: int(k)]
        return out

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        sample = self._resize(self._read(self.index[i]))
        if "masks" in sample:  # instance masks -> semantic class ids (the higher id wins where they overlap)
            masks = sample.pop("masks").as_subclass(torch.Tensor).bool()
            ids = sample["labels"].view(-1, 1, 1) * masks
            sample["semantic"] = tv_tensors.Mask(ids.amax(0) if len(masks) else torch.zeros(self.resolution,
                                                                                             dtype=torch.int64))
        # only boxes and labels: SanitizeBoundingBoxes would also index any Mask whose first dim has n entries
        sample.update(self._sanitize({"boxes": sample["boxes"], "labels": sample["labels"]}))
        return {**sample, "key": self.keys[i], "group": self.groups[i], "source": self.source}

    @abstractmethod
    def _catalog(self) -> tuple[list[str], list[str]]:
        """(keys, groups) of every image: the dataset-relative file name and a stratification group."""

    @abstractmethod
    def _read(self, position: int) -> dict:
        """The raw sample at catalog ``position`` (tv_tensors at the file's resolution)."""

    def _class_id(self, name: str) -> int | None:
        lower = [c.lower() for c in self.class_names]
        return lower.index(name.lower()) + 1 if name.lower() in lower else None


class MagneticTile(RealDataset):
    """Magnetic-tile surface-defect photos (Huang et al.) as semantic segmentation in the model's class ids.

    Layout: ``root/MT_<Class>/Imgs/<name>.jpg`` with a ``<name>.png`` mask beside it (anti-aliased: thresholded
    at > 127). ``MT_Blowhole`` pixels get the id of the class named ``blowhole`` in ``class_names``, and so on;
    ``MT_Free`` images have no defect; folders of classes the model lacks are skipped. Grayscale is repeated to
    3 channels. Groups (for the nested subsets) are the folders, so a 10-image subset holds every class.
    """

    source = "real/magnetic_tile"

    def _catalog(self) -> tuple[list[str], list[str]]:
        self._files: list[tuple[Path, Path, int]] = []
        keys, groups = [], []
        for folder in sorted(self.root.glob("MT_*")):
            cls = folder.name[3:]
            label = 0 if cls.lower() == "free" else self._class_id(cls)
            if label is None:
                continue
            for jpg in sorted((folder / "Imgs").glob("*.jpg")):
                png = jpg.with_suffix(".png")
                if png.is_file():
                    self._files.append((jpg, png, label))
                    keys.append(jpg.relative_to(self.root).as_posix())
                    groups.append(cls)
        if not keys:
            raise FileNotFoundError(f"no MT_<Class>/Imgs/<name>.jpg + .png pairs of the classes {self.class_names} "
                                    f"under {self.root}")
        return keys, groups

    def _read(self, position: int) -> dict:
        from torchvision.io import ImageReadMode, decode_image

        jpg, png, label = self._files[position]
        image = decode_image(str(jpg), ImageReadMode.RGB)
        mask = decode_image(str(png), ImageReadMode.GRAY)[0] > 127
        H, W = image.shape[-2:]
        return {"image": tv_tensors.Image(image), "semantic": tv_tensors.Mask(mask.long() * label),
                "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)),
                "labels": torch.zeros(0, dtype=torch.int64)}


class CocoReal(RealDataset):
    """A COCO detection / instance-segmentation set (e.g. ``fruits_nuts``: ``images/*.jpg`` + ``trainval.json``).

    Read with ``torchvision.datasets.CocoDetection`` wrapped by ``wrap_dataset_for_transforms_v2`` (boxes as
    XYXY ``BoundingBoxes``, polygons as instance ``Mask``), so the v2 resize moves boxes and masks with the
    image. COCO categories map to the model's classes by name (``date`` -> the class named ``date``); a set
    none of whose categories the model has raises ``ValueError`` listing both. ``semantic`` is built from the
    instance masks. Keys are the image file names; there is one group.
    """

    source = "real/coco"

    def __init__(self, root, class_names, resolution=128, split: str = "train",
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), annotation: str = "trainval.json",
                 images: str = "images"):
        self.annotation, self.images = annotation, images
        super().__init__(root, class_names, resolution, split, fractions)

    def _catalog(self) -> tuple[list[str], list[str]]:
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        ann = self.root / self.annotation
        if not ann.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = CocoDetection(str(self.root / self.images), str(ann))
        self._coco = wrap_dataset_for_transforms_v2(coco, target_keys=("boxes", "labels", "masks"))
        cats = {c["id"]: c["name"] for c in coco.coco.loadCats(coco.coco.getCatIds())}
        self._label_of = {cid: self._class_id(name) for cid, name in cats.items()}
        if not any(v is not None for v in self._label_of.values()):
            raise ValueError(f"no category of {ann} ({sorted(cats.values())}) is a class of the model "
                             f"({list(self.class_names)}); use a scenario whose classes are named like them")
        return [coco.coco.imgs[i]["file_name"] for i in coco.ids], ["all"] * len(coco.ids)

    def _read(self, position: int) -> dict:
        image, target = self._coco[position]
        H, W = image.height, image.width
        labels = target.get("labels", torch.zeros(0, dtype=torch.int64))
        mapped = torch.tensor([self._label_of.get(int(c)) or 0 for c in labels], dtype=torch.int64)
        keep = mapped > 0
        boxes = target.get("boxes", tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(H, W)))
        masks = target.get("masks", tv_tensors.Mask(torch.zeros(0, H, W, dtype=torch.uint8)))
        return {"image": image, "boxes": tv_tensors.wrap(boxes[keep], like=boxes),
                "masks": tv_tensors.wrap(masks[keep], like=masks), "labels": mapped[keep]}


READERS: dict[str, type[RealDataset]] = {"magnetic_tile": MagneticTile, "coco": CocoReal}


def open_real(kind: str, root, class_names, resolution, split: str = "train",
              fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> RealDataset:
    """The ``split`` of the real dataset of ``kind`` (a key of :data:`READERS`) at ``root``."""
    if kind not in READERS:
        raise ConfigError(f"data.real_kind must be one of {sorted(READERS)}, got {kind!r}")
    return READERS[kind](root, class_names, resolution, split=split, fractions=fractions)
