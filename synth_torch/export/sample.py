"""One exported image: a :class:`~synth_torch.data.Batch` row as NumPy arrays, with its encoded side files.

Every writer reads the same :class:`Sample`, so an image rendered once is encoded once (PNG bytes are cached
per sample) and all formats describe identical pixels. Conventions are those of ``docs/labels.md``; format
specific conversions (COCO's and KITTI's pixel-centre coordinates, KITTI's level camera) live in the writers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from synth_torch.data.batch import Batch
from synth_torch.export._io import encode_png

UINT16_MAX = 65535
PER_INSTANCE_FIELDS = ("valid", "labels", "boxes", "amodal_boxes", "boxes3d_center", "boxes3d_size", "boxes3d_rotation",
                       "boxes3d_corners", "keypoints", "visible_pixels", "visible_fraction")


@dataclass(frozen=True)
class ExportOptions:
    """What gets annotated and how dense maps are stored.

    Args:
        min_visible_pixels: an instance is annotated when it is valid and shows at least this many pixels.
        include_hidden: also annotate valid instances with fewer visible pixels in COCO and KITTI; those with
            none at all (fully occluded or out of frame) get the amodal box clipped to the image as ``bbox``,
            ``area`` 0 and an empty mask in COCO, occlusion level 2 in KITTI.
            YOLO never lists them (it has no visibility field); WebDataset keeps every slot regardless.
        yolo_polygons: YOLO label lines are segmentation polygons (Ultralytics ``cls x1 y1 x2 y2 ...``)
            instead of boxes.
        depth_scale: metres per unit of the 16-bit depth PNGs (0.001: millimetres, up to 65.535 m).
    """

    min_visible_pixels: int = 1
    include_hidden: bool = False
    yolo_polygons: bool = False
    depth_scale: float = 0.001

    def to_dict(self) -> dict:
        return {"min_visible_pixels": self.min_visible_pixels, "include_hidden": self.include_hidden,
                "yolo_polygons": self.yolo_polygons, "depth_scale": self.depth_scale}


@dataclass(frozen=True)
class Layout:
    """Facts every writer needs: class names (ids ``1..C``), how many of them are object categories (the rest
    are defect types), image size, the zero-padded width of file stems, the slice names, the options, and the
    dataset's identity (scenario name and digest) for format headers."""

    scenario: str
    scenario_digest: str
    class_names: tuple[str, ...]
    num_categories: int
    height: int
    width: int
    stem_width: int
    slice_names: tuple[str, ...]
    options: ExportOptions

    def stem(self, sample_index: int) -> str:
        return f"{sample_index:0{self.stem_width}d}"


class Sample:
    """Image ``i`` of a batch, as arrays (``image`` uint8 [H, W, 3], ``instance`` int64 [H, W], ``depth`` float32
    [H, W] metres, ``normals`` float32 [3, H, W], per-instance fields [N, ...] as in the batch), plus
    ``index`` (sample index), ``sample_id``, ``slice_id``, ``slice``, ``stem``, ``K`` [3, 3], ``world_to_cam``
    [4, 4], ``params`` (name -> float) and ``annotated`` (instance slots the formats list, ascending)."""

    def __init__(self, arrays: dict, i: int, layout: Layout):
        self.layout = layout
        self.image = arrays["image"][i]
        self.instance = arrays["instance"][i]
        self.depth = arrays["depth"][i, 0]
        self.normals = arrays["normals"][i]
        for name in PER_INSTANCE_FIELDS:
            setattr(self, name, arrays[name][i])
        self.K = arrays["K"][i]
        self.world_to_cam = arrays["world_to_cam"][i]
        self.params = {k: float(v[i]) for k, v in arrays["params"].items()}
        self.index = int(arrays["sample_index"][i])
        self.sample_id = int(arrays["sample_id"][i])
        self.slice_id = int(arrays["slice_id"][i])
        self.slice = layout.slice_names[self.slice_id]
        self.stem = layout.stem(self.index)
        opts = layout.options
        keep = self.valid if opts.include_hidden else self.valid & (self.visible_pixels >= opts.min_visible_pixels)
        self.annotated = np.flatnonzero(keep)

    def is_hidden(self, slot: int) -> bool:
        """No pixel shows the instance (only annotated with ``include_hidden``)."""
        return int(self.visible_pixels[slot]) == 0

    def mask(self, slot: int) -> np.ndarray:
        """bool [H, W]: the pixels that show instance slot ``slot``."""
        return self.instance == slot + 1

    @functools.cached_property
    def image_png(self) -> bytes:
        return encode_png(self.image)

    @functools.cached_property
    def instance_png(self) -> bytes:
        """16-bit PNG of the instance map (0 background, ``slot + 1`` for instance slot ``slot``)."""
        return encode_png(self.instance.astype(np.uint16))

    @functools.cached_property
    def depth_png(self) -> bytes:
        """16-bit PNG of the z-depth in units of ``depth_scale`` metres (0: no surface; clamped at 65535)."""
        units = np.rint(self.depth / self.layout.options.depth_scale)
        return encode_png(np.clip(units, 0, UINT16_MAX).astype(np.uint16))

    @functools.cached_property
    def normals_png(self) -> bytes:
        """8-bit RGB normal map: ``round((n + 1) * 127) + 1`` per channel, and 0 where there is no surface,
        so that background decodes to the zero vector exactly."""
        n = self.normals.transpose(1, 2, 0)
        code = np.rint((n + 1.0) * 127.0).astype(np.int64) + 1
        code = np.where((np.abs(n).sum(-1) > 0)[..., None], code, 0)
        return encode_png(code.clip(0, 255).astype(np.uint8))


def batch_arrays(batch: Batch, sample_index: np.ndarray) -> dict:
    """Every tensor of ``batch`` that the writers use, on the CPU as NumPy (converted once per batch)."""
    image = (batch.image.clamp(0, 1) * 255).round().to("cpu", dtype=torch.uint8)
    arrays = {"image": image.permute(0, 2, 3, 1).numpy(), "sample_index": sample_index}
    for name in ("instance", "depth", "normals", *PER_INSTANCE_FIELDS, "K", "world_to_cam", "sample_id", "slice_id"):
        arrays[name] = getattr(batch, name).detach().cpu().numpy()
    arrays["params"] = {k: v.detach().cpu().numpy() for k, v in batch.params.items()}
    return arrays


def samples_of(batch: Batch, sample_index: np.ndarray, layout: Layout) -> list[Sample]:
    arrays = batch_arrays(batch, sample_index)
    return [Sample(arrays, i, layout) for i in range(len(batch))]


def decode_normals(code: np.ndarray) -> np.ndarray:
    """float32 [3, H, W] unit normals from the uint8 [H, W, 3] map of :attr:`Sample.normals_png`."""
    n = (code.astype(np.float32) - 1.0) / 127.0 - 1.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where((code.max(-1, keepdims=True) > 0), n / np.maximum(norm, 1e-6), 0.0)
    return n.transpose(2, 0, 1).astype(np.float32)
