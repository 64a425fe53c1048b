"""Train on an export: its WebDataset shards stream into training, its scenario's live suites validate."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from synth_torch.data.batch import Batch
from synth_torch.export.base import ExportError
from synth_torch.export.manifest import manifest_digest, read_manifest
from synth_torch.export.shards import ShardStream, shard_urls
from synth_torch.loop.datamodule import SynthDataModule, collate_batch
from synth_torch.scenario.config import ConfigError, Scenario

__all__ = ["ExportDataModule"]


class ExportDataModule(SynthDataModule):
    """A :class:`~synth_torch.loop.datamodule.SynthDataModule` whose training batches come from an export's
    WebDataset shards (``export_dir``) instead of the live stream.

    The scenario, resolution, seed and sensor setting come from the export's manifest; validation renders the
    scenario's fixed per-slice suites live, as the stream module does (sample indices from 10**9 on, so an export
    of indices below that never overlaps them). Training repeats the shards forever, reshuffled each pass
    (``shuffle`` buffer; 0 keeps the export's order); each rank and DataLoader worker reads its own shards, so the
    export needs at least ranks x workers shards (``--chunk-size`` sets how many). The checkpointed position is
    the number of batches this rank consumed; a resumed run skips those without decoding them (exactly with
    ``num_workers=0``; rounded up to a whole round of workers otherwise, see :class:`ShardStream`).

    The lineage (:mod:`synth_torch.export.lineage`) records ``export_dir``'s manifest digest. A SliceMiner has
    nothing to steer here (the data is fixed); use it with the live stream.
    """

    def __init__(self, export_dir, batch_size: int = 8, shuffle: int = 256, num_workers: int = 0, device: str = "cpu",
                 backend: str = "auto", val_samples_per_slice: int = 16, val_batch_size: int | None = None):
        self.export_dir = Path(export_dir).expanduser().resolve()
        manifest = read_manifest(self.export_dir)
        if "webdataset" not in manifest["formats"]:
            raise ExportError(f"{self.export_dir} has no WebDataset shards (formats: {list(manifest['formats'])}); "
                              f"export with --format webdataset to train on it")
        sc = manifest["scenario"]
        scenario = Scenario.from_dict(sc["normalised"], root=None if sc["root"] is None else Path(sc["root"]))
        if "sha256:" + scenario.fingerprint() != sc["digest"]:
            raise ExportError(f"the scenario of {self.export_dir} no longer matches its digest {sc['digest']} (an asset "
                              f"file changed since the export); the validation suites would differ from the data")
        gen = manifest["generation"]
        super().__init__(scenario=scenario, batch_size=batch_size, resolution=tuple(gen["resolution"]), seed=gen["seed"],
                         num_workers=num_workers, device=device, backend=backend, sensor=gen["sensor"],
                         val_samples_per_slice=val_samples_per_slice, val_batch_size=val_batch_size)
        if int(shuffle) < 0:
            raise ConfigError(f"data.shuffle must be >= 0, got {shuffle}")
        self.manifest, self.manifest_digest, self.shuffle = manifest, manifest_digest(self.export_dir), int(shuffle)
        self._export_start = 0  # batches consumed before this run resumed
        self._export_consumed = 0

    def train_dataloader(self) -> DataLoader:
        urls = shard_urls(self.export_dir)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        workers = self._workers()
        if len(urls) < world * max(workers, 1):
            raise ConfigError(f"{self.export_dir} has {len(urls)} shard(s); {world} rank(s) x {max(workers, 1)} "
                              f"worker(s) need one each: re-export with a smaller --chunk-size or use fewer workers")
        stream = ShardStream(urls, self.batch_size, self.scenario.slice_names, shuffle=self.shuffle, seed=self.seed,
                             epochs=None, skip=self._export_start, partial=False)
        return DataLoader(stream, batch_size=None, collate_fn=collate_batch, num_workers=workers,
                          persistent_workers=workers > 0)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, Batch):
            self._export_consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"export": {"manifest_digest": self.manifest_digest,
                           "consumed": self._export_start + self._export_consumed}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("export")
        if saved is None:
            return
        if saved["manifest_digest"] != self.manifest_digest:
            raise ValueError(f"checkpoint was trained on export {saved['manifest_digest']}, this run reads "
                             f"{self.manifest_digest} ({self.export_dir}); refusing to resume on other data")
        self._export_start, self._export_consumed = int(saved["consumed"]), 0