"""Lineage into training: a run on an export records the scenario and export digests in its checkpoints and logger
config, resumes exactly where its stream stopped, and the export can be a wandb Artifact offline."""

from __future__ import annotations

import os
import runpy
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.utils.data import DataLoader

from synth_torch.export import manifest_digest, read_manifest, shard_urls
from synth_torch.export.datamodule import ExportDataModule
from synth_torch.export.lineage import CHECKPOINT_KEY, lineage_of, log_export_artifact
from synth_torch.export.shards import ShardStream
from synth_torch.loop.datamodule import SynthDataModule
from synth_torch.scenario.config import load_scenario

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def _compose(overrides, out):
    import synth_torch.app.configs  # noqa: F401  (registers the scenario config group)

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def test_training_on_an_export_records_lineage(tabletop_export, tmp_path):
    root, _ = tabletop_export
    cfg = _compose(["data=export", f"data.export_dir={root}", "data.batch_size=2", "data.val_samples_per_slice=1",
                    "data.val_batch_size=2", "callbacks=model_checkpoint", "callbacks.model_checkpoint.every_n_train_steps=2",
                    "logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=2", "print_config=false",
                    "model.net.depth=2", "model.net.width=4", "trainer.enable_progress_bar=false"], tmp_path)
    runpy.run_path(str(ROOT / "train" / "train.py"), run_name="synth_train_export")["train"](cfg)
    scenario = "sha256:" + load_scenario("tabletop").fingerprint()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    lineage = ckpt[CHECKPOINT_KEY]
    assert lineage["scenario"]["digest"] == scenario
    assert lineage["export"]["manifest_digest"] == manifest_digest(root)
    assert lineage["export"]["content_digest"] == read_manifest(root)["files"]["content_digest"]
    assert ckpt["ExportDataModule"]["export"]["consumed"] == 2  # the stream position, for exact resume
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["lineage"] == lineage


def test_synthetic_stream_lineage_has_no_export():
    dm = SynthDataModule("defects", resolution=32)
    lineage = lineage_of(dm)
    assert lineage["export"] is None
    assert lineage["scenario"] == {"name": "defects", "digest": "sha256:" + dm.scenario.fingerprint(),
                                   "key_digest": dm.scenario.digest()}


def test_export_stream_resumes_exactly(tabletop_export):
    root, _ = tabletop_export
    urls = shard_urls(root)

    def ids(stream, workers=0, take=6):
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        out = []
        for batch in loader:
            out.append(batch.sample_id.tolist())
            if len(out) == take:
                break
        return out

    full = ids(ShardStream(urls, 2, shuffle=4, seed=3, epochs=None, partial=False), take=9)
    assert len(set(sum(full[:6], []))) == 12  # the first pass holds every sample once; then a reshuffled pass
    assert full[6:] != full[:3]
    assert ids(ShardStream(urls, 2, shuffle=4, seed=3, epochs=None, skip=4, partial=False), take=5) == full[4:]
    # two DataLoader workers take turns; a resumed loader starts at worker 0, so 3 consumed round up to 4
    full2 = ids(ShardStream(urls, 2, shuffle=0, epochs=None, partial=False), workers=2, take=8)
    assert ids(ShardStream(urls, 2, shuffle=0, epochs=None, skip=3, partial=False), workers=2, take=4) == full2[4:]


def test_export_data_module_refuses_another_export(tabletop_export, defects_export):
    root, _ = tabletop_export
    dm = ExportDataModule(root, batch_size=2)
    assert dm.scenario.fingerprint() == load_scenario("tabletop").fingerprint() and dm.resolution == (64, 64)
    state = dm.state_dict()
    other = ExportDataModule.__new__(ExportDataModule)
    other.manifest_digest = "sha256:" + "0" * 64
    other.export_dir = Path("elsewhere")
    with pytest.raises(ValueError, match="refusing to resume on other data"):
        other.load_state_dict(state)
    with pytest.raises(Exception, match="no WebDataset shards"):
        ExportDataModule(defects_export[0])


def test_export_as_offline_wandb_artifact(tabletop_export, tmp_path, monkeypatch):
    import wandb

    if wandb.run is not None:
        wandb.finish()
    root, _ = tabletop_export
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    name = log_export_artifact(root)
    digest = manifest_digest(root)
    assert name == f"synth-tabletop:manifest-{digest[7:23]}"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    deadline = time.time() + 60  # the service writes the transaction log asynchronously
    data = b""
    while time.time() < deadline:
        logs = list(runs[0].glob("run-*.wandb"))
        data = logs[0].read_bytes() if logs else b""
        if b"synth-tabletop" in data and digest.encode() in data:
            break
        time.sleep(0.5)
    assert b"synth-tabletop" in data and digest.encode() in data  # the artifact and its manifest digest
