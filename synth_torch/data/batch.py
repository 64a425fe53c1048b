"""The labeled batch that :class:`synth_torch.SynthDataset` yields. Conventions: ``docs/labels.md``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map
from torchvision import tv_tensors

from synth_torch.labels.passes import Labels

SLICE_BITS = 10  # sample_id = sample_index * 2**SLICE_BITS + slice_id


def encode_sample_id(sample_index: torch.Tensor, slice_id: torch.Tensor) -> torch.Tensor:
    return sample_index.to(torch.int64) * (1 << SLICE_BITS) + slice_id.to(torch.int64)


def decode_sample_id(sample_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample_index, slice_id) of sample ids [B]."""
    sample_id = torch.as_tensor(sample_id, dtype=torch.int64)
    return sample_id >> SLICE_BITS, sample_id & ((1 << SLICE_BITS) - 1)


@dataclass
class Batch(Labels):
    """A labeled batch: every field of :class:`synth_torch.labels.passes.Labels` (masks, depth, normals,
    boxes, amodal and 3D boxes, keypoints, visibility; shapes documented there), plus:

    Image:
        image [B, 3, H, W] float in [0, 1], row 0 at the top.
    Camera and provenance:
        K [B, 3, 3]; world_to_cam [B, 4, 4]; params name -> [B]; slice_id [B]; sample_id [B]
        (``sample_index * 1024 + slice_id``: pass it to ``SynthDataset.regenerate``); batch_index (global);
        mixture_version (the version of the slice mixture the slices were drawn with, -1 when not from a stream).
    """

    image: torch.Tensor
    K: torch.Tensor
    world_to_cam: torch.Tensor
    params: dict[str, torch.Tensor]
    slice_id: torch.Tensor
    sample_id: torch.Tensor
    class_names: tuple[str, ...] = ()
    slice_names: tuple[str, ...] = ()
    batch_index: int = -1
    mixture_version: int = -1
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getstate__(self) -> dict:
        """Pickled (e.g. from a DataLoader worker) with every CPU tensor packed into one byte buffer: tensors cross
        the process boundary one shared-memory segment each, and ~70 of them cost more than rendering a small
        batch. In a DataLoader worker the buffer is allocated in shared memory, so it is written once."""
        state = dict(self.__dict__)
        items = [(("field", k), v) for k, v in state.items() if torch.is_tensor(v)]
        items += [(("param", k), v) for k, v in state["params"].items()]
        if not items or any(v.device.type != "cpu" or v.requires_grad for _, v in items):
            return state
        meta, offset = [], 0
        for key, v in items:
            meta.append((key, v.dtype, tuple(v.shape), offset))
            offset += -(-v.numel() * v.element_size() // 8) * 8  # 8-byte aligned
        buffer = torch.empty(offset, dtype=torch.uint8)
        if get_worker_info() is not None:
            buffer.share_memory_()
        for (_, dtype, shape, start), (_, v) in zip(meta, items):
            buffer[start:start + v.numel() * v.element_size()].view(dtype).view(shape).copy_(v)
        for (kind, name), _ in items:
            if kind == "field":
                del state[name]
        state["params"] = {}
        state["_packed"] = (buffer, meta)
        return state

    def __setstate__(self, state: dict) -> None:
        packed = state.pop("_packed", None)
        if packed is not None:
            buffer, meta = packed
            for (kind, name), dtype, shape, start in meta:
                size = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
                value = buffer[start:start + size].view(dtype).view(shape)
                if kind == "field":
                    state[name] = value
                else:
                    state["params"][name] = value
        self.__dict__.update(state)

    @property
    def device(self) -> torch.device:
        return self.image.device

    def to(self, device, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        def move(v):
            if torch.is_tensor(v):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, dict):
                return {k: move(x) for k, x in v.items()}
            return v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def select(self, index) -> Batch:
        """Sub-batch of the images at ``index`` (a slice, list or bool/long tensor)."""
        B = len(self)
        def take(v):
            if torch.is_tensor(v) and v.ndim and v.shape[0] == B:
                return v[index]
            if isinstance(v, dict):
                return {k: take(x) for k, x in v.items()}
            return v
        return replace(self, **{f.name: take(getattr(self, f.name)) for f in fields(self)})

    def drop_hidden(self, min_visible_pixels: int = 1, min_visible_fraction: float = 0.0) -> Batch:
        """Mark instances with too few visible pixels or too small a visible fraction as invalid (fully
        occluded or out-of-frame objects then carry no box). Pixel masks are unchanged."""
        keep = self.valid & (self.visible_pixels >= min_visible_pixels) & (self.visible_fraction >= min_visible_fraction)
        return replace(self, valid=keep)

    def to_torchvision(self, min_visible_pixels: int = 1) -> tuple[list[torch.Tensor], list[dict]]:
        """Images and targets as torchvision detection models take them.

        Each target has ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, canvas (H, W)), ``labels`` [n],
        ``masks`` (``tv_tensors.Mask`` [n, H, W] bool), ``keypoints`` (``tv_tensors.KeyPoints`` [n, K, 2]),
        ``keypoints_visibility`` [n, K] (0 outside the image, 1 hidden, 2 visible), ``sample_id`` and
        ``slice_id``; instances with fewer than ``min_visible_pixels`` visible pixels are dropped. torchvision v2
        transforms move boxes, masks and keypoints together.

        torchvision places keypoint ``(0, 0)`` at the centre of the top-left pixel (a horizontal flip maps x to
        ``W - 1 - x``), while ``Batch.keypoints`` puts pixel corners at integers (``docs/labels.md``), so the
        ``KeyPoints`` are ``Batch.keypoints[..., :2] - 0.5``.
        """
        H, W = self.image.shape[-2:]
        batch = self.drop_hidden(min_visible_pixels)
        images, targets = [], []
        for i in range(len(self)):
            idx = batch.valid[i].nonzero().squeeze(1)
            masks = self.instance[i][None] == (idx + 1)[:, None, None]
            images.append(self.image[i])
            targets.append({
                "boxes": tv_tensors.BoundingBoxes(batch.boxes[i, idx], format="XYXY", canvas_size=(H, W)),
                "labels": batch.labels[i, idx].to(torch.int64),
                "masks": tv_tensors.Mask(masks),
                "keypoints": tv_tensors.KeyPoints(batch.keypoints[i, idx, :, :2] - 0.5, canvas_size=(H, W)),
                "keypoints_visibility": batch.keypoints[i, idx, :, 2].to(torch.int64),
                "sample_id": self.sample_id[i],
                "slice_id": self.slice_id[i],
            })
        return images, targets


def refuse_default_collate(cls: type) -> type:
    """Make torch's ``default_collate`` fail on ``cls`` with the fix in the message: the streams yield whole
    batches, and a plain ``DataLoader(ds)`` (``batch_size=1``) would try to stack lists of them. Extends torch's
    ``default_collate_fn_map`` in place, as the ``torch.utils.data`` collate documentation describes."""
    def refuse(batch, *, collate_fn_map=None):
        raise TypeError(f"the synth_torch stream yields whole {cls.__name__} objects, which the DataLoader must "
                        f"not batch again: use DataLoader(dataset, batch_size=None) (the Lightning "
                        f"SynthDataModule does), optionally with collate_fn=synth_torch.loop.collate_batch")

    default_collate_fn_map[cls] = refuse
    return cls


refuse_default_collate(Batch)
