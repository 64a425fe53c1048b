"""WebDataset tar shards: writing (``webdataset.ShardWriter``) and reading back as a stream of :class:`Batch`.

``webdataset/shard-KKKKKK.tar`` holds chunk ``K`` of the export. Each sample (``__key__`` = the file stem)
has:

* ``png``: the image (8-bit RGB);
* ``instance.png``: 16-bit instance map (0 background, ``slot + 1``);
* ``depth.png``: 16-bit z-depth in units of ``depth_scale`` metres (0: no surface);
* ``normals.png``: 8-bit camera-frame normals, ``round((n + 1) * 127) + 1`` per channel, 0 on background;
* ``json``: every other field of the :class:`~synth_torch.data.Batch` row at full float32 precision (all
  ``N`` instance slots with ``valid``, so the batch is rebuilt exactly), ``K``, ``world_to_cam``, ``params``,
  ``sample_index``, ``sample_id``, ``slice_id``, ``slice``, ``class_names`` and ``depth_scale``.

Members carry mtime 0 and fixed owner names, so a shard's bytes depend only on its samples.
:class:`ShardStream` (and :func:`shard_dataset`, one pass) reads shards back with ``webdataset.WebDataset``
(split across ranks and DataLoader workers by webdataset's splitters) and yields :class:`Batch` objects whose
``semantic`` map is rebuilt from the instance map and labels; depth and normals carry their PNG quantisation.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from synth_torch.data.batch import Batch
from synth_torch.export._io import decode_png, dumps
from synth_torch.export.base import FormatWriter, Sink
from synth_torch.export.sample import PER_INSTANCE_FIELDS, Sample, decode_normals

SHARD_PATTERN = "shard-%06d.tar"
_FLOAT_FIELDS = ("boxes", "amodal_boxes", "boxes3d_center", "boxes3d_size", "boxes3d_rotation", "boxes3d_corners",
                 "keypoints", "visible_fraction")


class WebDatasetWriter(FormatWriter):
    name = "webdataset"

    def begin_chunk(self, chunk: int, sink: Sink) -> None:
        self._stack = ExitStack()

        def opener(fname: str):
            return self._stack.enter_context(sink.stream(f"webdataset/{Path(fname).name}"))

        self._writer = wds.ShardWriter(str(sink.root / "webdataset" / SHARD_PATTERN), maxcount=1 << 62,
                                       maxsize=float("inf"), start_shard=chunk, opener=opener, verbose=0,
                                       encoder=False, mtime=0.0, user="synth-torch", group="synth-torch")

    def write(self, sample: Sample, sink: Sink) -> None:
        lay = self.layout
        meta = {"sample_index": sample.index, "sample_id": sample.sample_id, "slice_id": sample.slice_id,
                "slice": sample.slice, "width": lay.width, "height": lay.height, "depth_scale": lay.options.depth_scale,
                "class_names": list(lay.class_names), "K": sample.K.tolist(),
                "world_to_cam": sample.world_to_cam.tolist(), "params": sample.params}
        for name in PER_INSTANCE_FIELDS:
            meta[name] = getattr(sample, name).tolist()
        self._writer.write({"__key__": sample.stem, "png": sample.image_png, "instance.png": sample.instance_png,
                            "depth.png": sample.depth_png, "normals.png": sample.normals_png, "json": dumps(meta)})

    def end_chunk(self, sink: Sink) -> dict:
        self._writer.close()  # writes the tar end blocks into the stream
        self._stack.close()  # renames the finished shard into place
        return {}

    def abort(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            try:
                self._writer.close()  # finish the tar stream into the temporary file, so nothing writes later
            except Exception:
                pass
            err = RuntimeError("export chunk aborted")
            stack.__exit__(type(err), err, None)  # the sink removes the partial shard
            self._stack = None

    def finalize(self, chunks: list[dict], sink: Sink) -> dict:
        return {"shards": len(chunks), "urls": f"webdataset/shard-{{{0:06d}..{len(chunks) - 1:06d}}}.tar"}


def decode_sample(sample: dict) -> dict:
    """A raw webdataset sample (``__key__`` and bytes per extension) as tensors of one image (no batch dim)."""
    meta = json.loads(sample["json"])
    out = {"image": torch.from_numpy(decode_png(sample["png"]).copy()).permute(2, 0, 1).float() / 255.0}
    instance = torch.from_numpy(decode_png(sample["instance.png"]).astype(np.int64))
    labels = torch.tensor(meta["labels"], dtype=torch.int64)
    out["instance"] = instance
    out["semantic"] = torch.cat((torch.zeros(1, dtype=torch.int64), labels))[instance]
    out["depth"] = torch.from_numpy(decode_png(sample["depth.png"]).astype(np.float32))[None] * meta["depth_scale"]
    out["normals"] = torch.from_numpy(decode_normals(decode_png(sample["normals.png"])))
    out["valid"] = torch.tensor(meta["valid"], dtype=torch.bool)
    out["labels"] = labels
    out["visible_pixels"] = torch.tensor(meta["visible_pixels"], dtype=torch.int64)
    for name in _FLOAT_FIELDS:
        out[name] = torch.tensor(meta[name], dtype=torch.float32)
    out["K"] = torch.tensor(meta["K"], dtype=torch.float32)
    out["world_to_cam"] = torch.tensor(meta["world_to_cam"], dtype=torch.float32)
    out["params"] = {k: torch.tensor(v, dtype=torch.float32) for k, v in meta["params"].items()}
    out["slice_id"] = torch.tensor(meta["slice_id"], dtype=torch.int64)
    out["sample_id"] = torch.tensor(meta["sample_id"], dtype=torch.int64)
    out["class_names"] = tuple(meta["class_names"])
    return out


def collate_samples(samples: list[dict], slice_names: tuple[str, ...] = ()) -> Batch:
    """Stack decoded samples into a :class:`Batch`."""
    first = samples[0]
    fields = {k: torch.stack([s[k] for s in samples]) for k, v in first.items() if torch.is_tensor(v)}
    fields["params"] = {k: torch.stack([s["params"][k] for s in samples]) for k in first["params"]}
    return Batch(**fields, class_names=first["class_names"], slice_names=tuple(slice_names))


def shard_urls(root) -> list[str]:
    """The shard files of an export folder (or of its ``webdataset/`` folder), in order."""
    root = Path(root)
    folder = root / "webdataset" if (root / "webdataset").is_dir() else root
    urls = sorted(str(p) for p in folder.glob("shard-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no WebDataset shards (shard-*.tar) in {folder}")
    return urls


class ShardStream(IterableDataset):
    """:class:`Batch` objects of ``batch_size`` images read from WebDataset shards with ``webdataset.WebDataset``.

    Shards are split across ``torch.distributed`` ranks and DataLoader workers by webdataset's
    ``split_by_node`` / ``split_by_worker`` (so there must be at least ranks x workers shards). ``shuffle`` > 0
    shuffles the shard order and the samples (in a buffer of that size), seeded by ``seed + epoch``, so every
    pass is a different but reproducible order. ``epochs=None`` repeats forever (training). ``skip`` batches of
    this rank's stream are passed over without decoding (resume): exactly without workers; with ``W`` workers
    each skips ``ceil(skip / W)``, because a new DataLoader starts its round-robin at worker 0, so the position
    is rounded up to a whole round. ``partial``: yield a last, smaller batch of each pass.
    """

    def __init__(self, urls, batch_size: int, slice_names: tuple[str, ...] = (), shuffle: int = 0, seed: int = 0,
                 epochs: int | None = 1, skip: int = 0, partial: bool = True):
        super().__init__()
        self.urls = shard_urls(urls) if isinstance(urls, (str, Path)) else list(urls)
        self.batch_size, self.slice_names, self.shuffle, self.seed = int(batch_size), tuple(slice_names), shuffle, seed
        self.epochs, self.skip, self.partial = epochs, int(skip), partial

    def _raw(self, epoch: int):
        ds = wds.WebDataset(self.urls, shardshuffle=len(self.urls) if self.shuffle else False, seed=self.seed + epoch,
                            nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
        return ds.shuffle(self.shuffle, seed=self.seed + epoch) if self.shuffle else ds

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = -(-self.skip // workers)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            group = []
            for sample in self._raw(epoch):
                group.append(sample)
                if len(group) == self.batch_size:
                    if skip:
                        skip -= 1
                    else:
                        yield collate_samples([decode_sample(s) for s in group], self.slice_names)
                    group = []
            if group and self.partial and not skip:
                yield collate_samples([decode_sample(s) for s in group], self.slice_names)
            epoch += 1


def shard_dataset(urls, batch_size: int, slice_names: tuple[str, ...] = (), shuffle: int = 0, seed: int = 0) -> ShardStream:
    """One pass over an export's shards (a folder or shard paths) as :class:`Batch` objects; see
    :class:`ShardStream`."""
    return ShardStream(urls, batch_size, slice_names, shuffle=shuffle, seed=seed)
