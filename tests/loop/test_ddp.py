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


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train" / "train.py"), "trainer=ddp_sim", "logger=csv",
            "callbacks=[slice_miner,stream_recorder,model_checkpoint]", "print_config=false", f"hydra.run.dir={out}",
            "trainer.max_steps=8", "trainer.val_check_interval=8", "trainer.enable_progress_bar=false",
            "data.resolution=16", "data.batch_size=2", "data.val_samples_per_slice=4", "data.val_batch_size=2",
            "model.net.width=4", "model.net.depth=2", "model.target=foreground",
            "callbacks.model_checkpoint.every_n_train_steps=4", "callbacks.model_checkpoint.monitor=null",
            "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.slice_miner.every_n_train_steps=2", "callbacks.slice_miner.mine_every=1",
            "callbacks.slice_miner.mine_samples=32", "callbacks.slice_miner.max_mined=1",
            "callbacks.slice_miner.reweighter.min_samples=1", "callbacks.slice_miner.log_images=false",
            # loose thresholds so that mining adds a slice, which every rank must then agree on
            "callbacks.slice_miner.mining.min_support=6", "callbacks.slice_miner.mining.min_effect=0.0",
            "callbacks.slice_miner.mining.alpha=0.999", "callbacks.slice_miner.mining.max_order=1", *extra]


def _run(out: Path, *extra: str) -> list[list[dict]]:
    env = dict(os.environ, PROJECT_ROOT=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(_cmd(out, *extra), cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"stream_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return [r["steps"] for r in ranks]


@pytest.mark.slow
def test_ddp_sim_ranks_agree_and_a_resumed_run_continues_the_identical_stream(tmp_path):
    s0, s1 = _run(tmp_path / "run")
    assert len(s0) == len(s1) == 8
    # identical mixtures (and mined slice names) and identical models on both ranks after every step
    for key in ("weights", "names", "mixture_version", "model_sha1"):
        assert [s[key] for s in s0] == [s[key] for s in s1], key
    # the step-2 round (re-weighting and a mined slice) applies from batch 4 + 2 * 2 = 8, i.e. step 5
    versions = [s["mixture_version"] for s in s0]
    assert versions[:4] == [0] * 4 and versions[4] > 0, versions
    assert s0[4]["weights"] != s0[3]["weights"]
    assert len(s0[-1]["names"]) == len(s0[0]["names"]) + 1, "the loose thresholds should mine one slice"
    # disjoint samples: rank r trains on batches r, r + 2, ...
    ids0 = {i for s in s0 for i in s["sample_id"]}
    ids1 = {i for s in s1 for i in s["sample_id"]}
    assert not ids0 & ids1 and len(ids0) == len(ids1) == 16
    assert [s["batch_index"] for s in s0] == list(range(0, 16, 2))
    assert [s["batch_index"] for s in s1] == list(range(1, 16, 2))
    history = json.loads((tmp_path / "run" / "slice_miner.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    # the per-slice stats were all-reduced: counts cover both ranks' halves of every suite
    assert history[0]["count"] == [4.0] * len(s0[0]["names"])

    # resumed from step 4 (a re-weighting and a mined slice are pending then): the same batches, mixtures and
    # models on both ranks as the uninterrupted run's steps 5-8
    ckpt = tmp_path / "run" / "checkpoints" / "step_000004.ckpt"
    r0, r1 = _run(tmp_path / "resumed", f"ckpt_path={ckpt}")
    for full, resumed in ((s0, r0), (s1, r1)):
        assert len(resumed) == 4
        for key in ("batch_index", "sample_id", "weights", "names", "mixture_version", "model_sha1"):
            assert [s[key] for s in resumed] == [s[key] for s in full[4:]], key
