"""A complete export read back from disk, by its file formats (``docs/export.md``), for the gates and notes.

Nothing here renders: the gates judge the files a user would hand over, through the same readers a user
would use (pycocotools, PIL, webdataset).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth_torch.export import coco, kitti, yolo
from synth_torch.export._io import decode_png
from synth_torch.export.base import ExportError
from synth_torch.export.manifest import manifest_digest, read_manifest
from synth_torch.export.shards import shard_urls


class GovernanceError(ValueError):
    """Bad input to a governance command (a gates file, a registry reference, a suite), with the key named."""


@dataclass(frozen=True)
class ImageRef:
    """One generated image: its file stem, sample index, slice (None when the format does not say) and where
    its pixels are (a PNG path, or a WebDataset shard and key)."""

    stem: str
    index: int
    slice: str | None
    path: Path | None = None
    shard: str | None = None


class ExportView:
    """A complete export folder: its manifest and lazy readers of its files."""

    def __init__(self, root):
        self.root = Path(root)
        try:
            self.manifest = read_manifest(self.root)
        except ExportError as exc:
            raise GovernanceError(str(exc)) from None

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.manifest["formats"])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        H, W = self.manifest["generation"]["resolution"]
        return int(H), int(W)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.manifest["label_schema"]["classes"])

    @property
    def content_digest(self) -> str:
        return self.manifest["files"]["content_digest"]

    def digest(self) -> str:
        return manifest_digest(self.root)

    def coco_path(self) -> Path | None:
        return self.root / coco.ANNOTATIONS if "coco" in self.formats else None

    @functools.cached_property
    def coco_doc(self) -> dict | None:
        """The COCO annotation file as plain JSON (None without the COCO format)."""
        path = self.coco_path()
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GovernanceError(f"{path}: cannot read the COCO annotations: {exc}") from None

    def image_refs(self) -> list[ImageRef]:
        """Every generated image once, from the first format that holds images with their slices: COCO, then
        WebDataset, then YOLO or KITTI (no slices)."""
        if "coco" in self.formats and self.coco_doc is not None:
            return [ImageRef(Path(im["file_name"]).stem, int(im["sample_index"]), im.get("slice"),
                             path=self.root / coco.IMAGES / im["file_name"]) for im in self.coco_doc["images"]]
        if "webdataset" in self.formats:
            refs = []
            for url in shard_urls(self.root):
                for meta in _iter_shard(url, ("json",)):
                    info = json.loads(meta["json"])
                    refs.append(ImageRef(meta["__key__"], int(info["sample_index"]), info["slice"], shard=url))
            return refs
        for name, folder in (("yolo", yolo.IMAGES), ("kitti", kitti.IMAGES)):
            if name in self.formats:
                paths = sorted((self.root / folder).glob("*.png"))
                return [ImageRef(p.stem, int(p.stem), None, path=p) for p in paths]
        return []

    def images(self, refs: list[ImageRef] | None = None) -> Iterator[tuple[ImageRef, np.ndarray]]:
        """(ref, uint8 [H, W, 3]) of ``refs`` (default: :meth:`image_refs`): PNG files in order, then WebDataset
        shards streamed one at a time."""
        refs = self.image_refs() if refs is None else refs
        by_shard: dict[str, dict[str, ImageRef]] = {}
        for r in refs:
            if r.shard is None:
                yield r, decode_png(r.path.read_bytes())
            else:
                by_shard.setdefault(r.shard, {})[r.stem] = r
        for url, wanted in by_shard.items():
            for sample in _iter_shard(url, ("png",)):
                if sample["__key__"] in wanted:
                    yield wanted[sample["__key__"]], decode_png(sample["png"])


def _iter_shard(url: str, extensions: tuple[str, ...]) -> Iterator[dict]:
    """Raw samples of one WebDataset shard (``__key__`` and the bytes of ``extensions``), via webdataset."""
    import webdataset as wds

    for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
        yield {"__key__": sample["__key__"], **{ext: sample[ext] for ext in extensions}}
