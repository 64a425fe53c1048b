"""Resume beyond one process without workers: a run with DataLoader workers resumes onto the uninterrupted
run's stream and weights, and ``train/train.py`` killed with SIGKILL resumes from its last (atomically written)
checkpoint onto the same samples."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from synth_torch.loop.callback import SliceMiner, StreamRecorder
from synth_torch.loop.checkpoint import AtomicCheckpointIO
from synth_torch.loop.datamodule import SynthDataModule
from synth_torch.loop.models import TinyUNet
from synth_torch.loop.tasks import SegmentationTask

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, name, max_steps, workers, ckpt_path=None):
    pl.seed_everything(0)
    dm = SynthDataModule("defects", batch_size=2, resolution=16, num_workers=workers, val_samples_per_slice=4,
                         val_batch_size=4)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    miner = SliceMiner("group_dro", every_n_train_steps=1, mine=True, mine_every=3, mine_samples=48, max_mined=1,
                       verbose=False, log_images=False, reweighter={"eta": 3.0, "min_samples": 1},
                       mining={"min_support": 8, "min_effect": 0.0, "alpha": 0.999, "max_order": 1})
    recorder = StreamRecorder(str(tmp_path / name))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1,
                                        filename="{step}")
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[miner, recorder, ckpt], plugins=[AtomicCheckpointIO()],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path / name), accelerator="cpu", devices=1)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    return recorder, task


@pytest.mark.slow
def test_resume_with_workers_continues_the_stream_and_the_weights(tmp_path):
    """Two workers render ahead while a SliceMiner re-weights every step and mines at step 3 (each change applies
    from the first batch no worker can have rendered: 6 batches on): the checkpoint at step 5 (an odd step, mid-round
    of workers, with changes pending) resumes onto exactly the batches, mixtures and model of the uninterrupted
    run."""
    full, full_task = _run(tmp_path, "full", max_steps=12, workers=2)
    assert [s["batch_index"] for s in full.steps] == list(range(12))
    versions = [s["mixture_version"] for s in full.steps]
    assert versions[:7] == [0] * 7 and versions == sorted(versions) and versions[-1] > versions[7] > 0, versions
    assert len(full.steps[-1]["names"]) == len(full.steps[0]["names"]) + 1, "the loose thresholds should mine"
    resumed, resumed_task = _run(tmp_path, "resumed", max_steps=12, workers=2,
                                 ckpt_path=str(tmp_path / "ckpt" / "step=5.ckpt"))
    assert [s["batch_index"] for s in resumed.steps] == list(range(5, 12))
    for key in ("sample_id", "weights", "names", "mixture_version", "model_sha1"):
        assert [s[key] for s in resumed.steps] == [s[key] for s in full.steps[5:]], key
    for (name, a), b in zip(full_task.state_dict().items(), resumed_task.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train" / "train.py"), "logger=none", "print_config=false",
            "callbacks=[model_checkpoint,stream_recorder]", "callbacks.model_checkpoint.every_n_train_steps=2",
            "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.save_top_k=1",  # saves at step 2
            "trainer.max_steps=60", "trainer.val_check_interval=1000", "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false", "data.resolution=16", "data.batch_size=2", "data.num_workers=2",
            "model.net.width=4", "model.net.depth=2", f"hydra.run.dir={out}", *extra]


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    env = dict(os.environ, PROJECT_ROOT=str(ROOT), OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "stream_rank0.json").exists(), "the run finished before it could be killed"
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]  # a whole checkpoint
    assert 2 <= step < 60 and not list((killed / "checkpoints").glob(".*.tmp"))
    proc = subprocess.run(_train_cmd(killed, f"ckpt_path={last}"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = json.loads((full / "stream_rank0.json").read_text())["steps"]
    again = json.loads((killed / "stream_rank0.json").read_text())["steps"]
    assert [s["sample_id"] for s in again] == [s["sample_id"] for s in ran[step:]]
