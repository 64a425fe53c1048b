"""Datasets out: COCO, YOLO, KITTI and WebDataset exports with manifests, sharded and resumable.

The layer above :mod:`synth_torch.data` and :mod:`synth_torch.loop`. :func:`export` renders a sample range of a
scenario and writes it in every requested format (``docs/export.md``); ``manifest.json`` records what it
holds and where it came from (:mod:`synth_torch.export.manifest`); :func:`shard_dataset` streams the
WebDataset shards back as :class:`~synth_torch.data.Batch` objects, and
:class:`~synth_torch.export.datamodule.ExportDataModule` trains on them; :mod:`synth_torch.export.lineage`
records scenario and dataset digests in training runs.

Example:
    >>> from synth_torch.export import export
    >>> result = export("tabletop", n=8, resolution=64, out="data/tt", formats="coco,yolo")  # doctest: +SKIP
    >>> result.manifest["counts"]["images"]  # doctest: +SKIP
    8
"""

from synth_torch.export.base import ExportError
from synth_torch.export.manifest import describe, manifest_digest, read_manifest
from synth_torch.export.runner import FORMATS, ExportResult, export, parse_formats, parse_shard, shard_from_env
from synth_torch.export.sample import ExportOptions
from synth_torch.export.shards import shard_dataset, shard_urls

__all__ = ["FORMATS", "ExportError", "ExportOptions", "ExportResult", "describe", "export", "manifest_digest",
           "parse_formats", "parse_shard", "read_manifest", "shard_dataset", "shard_from_env", "shard_urls"]
