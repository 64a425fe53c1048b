"""The sim-to-real study runner (experiments/sim2real/run.py): its plan of runs and the check of the pretraining
checkpoints a study borrows from another (``--pretrained-study``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("sim2real_run", ROOT / "experiments" / "sim2real" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_plan_pretrains_each_seed_first_with_equal_real_budgets(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune"], ["10", "all"], [0, 1], 20, 10, [], "s", pool=30,
                      logs=tmp_path)
    assert [r.name for r in runs[:5]] == ["synthetic_only_K0_seed0", "real_only_K10_seed0", "real_only_K30_seed0",
                                          "pretrain_finetune_K10_seed0", "pretrain_finetune_K30_seed0"]
    assert {r.budget["real_images"] for r in runs if r.arm != "synthetic_only"} == {10 * runs[1].budget["batch_size"]}
    assert runs[3].pretrain == str(tmp_path / "s" / "tile" / "synthetic_only" / "K0" / "seed0")


def test_a_borrowed_pretraining_must_exist_and_stop_at_S(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune"], ["all"], [0], 20, 10, ["data.real_balance=true"],
                      "balanced", pool=30, logs=tmp_path, pretrained="main")
    assert [r.arm for r in runs] == ["real_only", "pretrain_finetune"]  # no pretraining of its own
    assert runs[1].pretrain == str(tmp_path / "main" / "tile" / "synthetic_only" / "K0" / "seed0")
    assert "data.real_balance=true" in runs[1].overrides
    with pytest.raises(FileNotFoundError, match="pretraining checkpoint not found"):
        study.check_pretraining(runs, 20)
    ckpt = Path(runs[1].pretrain) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 19}, ckpt)
    with pytest.raises(ValueError, match="stopped at step 19, not --synthetic-steps 20"):
        study.check_pretraining(runs, 20)
    torch.save({"global_step": 20}, ckpt)
    study.check_pretraining(runs, 20)
