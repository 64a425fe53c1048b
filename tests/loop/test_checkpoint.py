"""Checkpoints and the other files a run writes: atomic (old or new, never half), written beside their
destination, and unwritable output folders fail at setup, naming the folder (also as root)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch

from synth_torch.fileio import atomic_open, writable_folder
from synth_torch.loop.callback import SliceMiner, StreamRecorder
from synth_torch.loop.checkpoint import AtomicCheckpointIO
from synth_torch.loop.datamodule import SynthDataModule
from synth_torch.scenario.config import ConfigError


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: moves.append((src, dst)) or real_replace(src, dst))
    io.save_checkpoint({"step": 2, "w": torch.arange(4.0) * 2}, path)
    assert [os.path.dirname(src) for src, _ in moves] == [str(path.parent)]  # the temporary file lies beside it
    assert io.load_checkpoint(path)["step"] == 2

    def killed_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 3}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 2  # untouched
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind


def test_storage_options_are_refused_like_lightning_does(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_checkpoints_go_through_the_atomic_writer(tmp_path, monkeypatch):
    written = []
    real = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, ckpt, path, storage_options=None: written.append(str(path)) or real(self, ckpt,
                                                                                                          path))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_last=True,
                                        save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(max_steps=2, callbacks=[ckpt], plugins=[AtomicCheckpointIO()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         accelerator="cpu", devices=1)
    data = torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=2)
    trainer.fit(_Tiny(), train_dataloaders=data)
    assert sorted(os.path.basename(p) for p in written) == ["last.ckpt", "last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not [p for p in os.listdir(tmp_path / "ckpt") if p.endswith(".tmp")]


def test_atomic_open_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write(b"new, half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_writable_folder_names_what_is_in_the_way_even_as_root(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"{blocker} is a file, not a folder"):
        writable_folder(blocker / "sub" / "deeper")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        writable_folder(tmp_path / "missing", create=False)
    assert writable_folder(tmp_path / "new" / "deeper").is_dir()


@pytest.mark.parametrize("callback", ["slice_miner", "stream_recorder"])
def test_unwritable_run_folders_fail_at_setup(tmp_path, callback):
    """The run's output folder lies under a regular file (which stops root too): setup fails before any step."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    dm = SynthDataModule("defects", batch_size=2, resolution=16, val_samples_per_slice=2, val_batch_size=2)
    cb = SliceMiner(every_n_train_steps=1, mine=False, verbose=False) if callback == "slice_miner" else \
        StreamRecorder(out_dir=str(blocker / "records"))

    class Task(_Tiny):
        def per_sample_loss(self, batch):
            return torch.zeros(len(batch))

    trainer = pl.Trainer(max_steps=1, callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(blocker / "run"), accelerator="cpu",
                         devices=1, limit_val_batches=0, num_sanity_val_steps=0)
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a folder"):
        trainer.fit(Task(), datamodule=dm)
    assert trainer.global_step == 0 and blocker.read_text() == "x"
