"""trainer=ddp_sim: two CPU processes (gloo) run train/train.py; every rank writes the sample ids it trained on
and the slice weights after each step (callbacks/stream_recorder), and the test compares the ranks' files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_sim_ranks_agree_on_weights_and_mined_slices_and_sample_ids_are_disjoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train" / "train.py"), "trainer=ddp_sim", "logger=csv",
           "callbacks=[slice_miner,stream_recorder]", "print_config=false", f"hydra.run.dir={out}",
           "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.enable_progress_bar=false",
           "data.resolution=16", "data.batch_size=2", "data.val_samples_per_slice=4", "data.val_batch_size=2",
           "model.net.width=4", "model.net.depth=2", "model.target=foreground",
           "callbacks.slice_miner.every_n_train_steps=2", "callbacks.slice_miner.mine_every=1",
           "callbacks.slice_miner.mine_samples=32", "callbacks.slice_miner.max_mined=1",
           "callbacks.slice_miner.reweighter.min_samples=1", "callbacks.slice_miner.log_images=false",
           # loose thresholds so that mining adds a slice, which every rank must then agree on
           "callbacks.slice_miner.mining.min_support=6", "callbacks.slice_miner.mining.min_effect=0.0",
           "callbacks.slice_miner.mining.alpha=0.999", "callbacks.slice_miner.mining.max_order=1"]
    env = dict(os.environ, PROJECT_ROOT=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"stream_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    s0, s1 = ranks[0]["steps"], ranks[1]["steps"]
    assert len(s0) == len(s1) == 4
    # identical mixtures (and mined slice names) on both ranks after every step, including the update steps
    assert [s["weights"] for s in s0] == [s["weights"] for s in s1]
    assert [s["names"] for s in s0] == [s["names"] for s in s1]
    assert s0[1]["weights"] != s0[0]["weights"]  # an update happened at step 2
    assert len(s0[-1]["names"]) == len(s0[0]["names"]) + 1, "the loose thresholds should mine one slice"
    # disjoint samples: rank r trains on batches r, r + 2, ...
    ids0 = {i for s in s0 for i in s["sample_id"]}
    ids1 = {i for s in s1 for i in s["sample_id"]}
    assert not ids0 & ids1 and len(ids0) == len(ids1) == 8
    assert [s["batch_index"] for s in s0] == [0, 2, 4, 6] and [s["batch_index"] for s in s1] == [1, 3, 5, 7]
    history = json.loads((out / "slice_miner.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4]
    # the per-slice stats were all-reduced: counts cover both ranks' halves of every suite
    assert history[0]["count"] == [4.0] * len(s0[0]["names"])
