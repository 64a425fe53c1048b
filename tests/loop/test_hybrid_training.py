"""Hybrid schedules through the Lightning data module: every schedule trains, resumes exactly, never touches the
real test split, records K and the real budget, and re-warms the learning rate. Real images come from the
generated ``fake_tiles`` folder (40 images); one test also uses ``../shared/real`` when present."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import synth_torch.loop.datamodule as datamodule
from synth_torch.data.hybrid import HybridBatch
from synth_torch.data.real import MagneticTile, RealBatch, split_of
from synth_torch.loop.datamodule import SynthDataModule
from synth_torch.loop.models import TinyUNet
from synth_torch.loop.tasks import SegmentationTask
from synth_torch.scenario.config import ConfigError

SCHEDULES = {
    "synthetic_only": {},
    "real_only": {},
    "mixed": {"real_fraction": 0.5},
    "mixed_by_step": {"schedule": "mixed", "real_fraction": 0.5, "mix_by": "step"},
    "pretrain_finetune": {"switch_step": 2, "rewarm_steps": 2},
    "anneal": {"switch_step": 1, "anneal_steps": 3, "real_fraction": 1.0, "anneal_shape": "linear"},
}


def _dm(root, name="real_only", **kw) -> SynthDataModule:
    args = dict(scenario="defects", batch_size=4, resolution=16, val_samples_per_slice=2, val_batch_size=4,
                real_root=str(root), real_split=(0.6, 0.2, 0.2), schedule=name, real_flips=True)
    args.update(SCHEDULES.get(name, {}))
    args.update(kw)
    return SynthDataModule(**args)


class Recorder(Callback):
    """What each training step consumed: batch index, kind, synthetic sample ids, real keys, an image checksum;
    the devices of the model's parameters during the steps (Lightning moves the model back to the CPU after fit)."""

    def __init__(self):
        self.steps = []
        self.devices = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        real = batch if isinstance(batch, RealBatch) else batch.real if isinstance(batch, HybridBatch) else None
        synth = None if isinstance(batch, RealBatch) else batch.synthetic if isinstance(batch, HybridBatch) else batch
        self.steps.append({"batch_index": batch.batch_index, "kind": type(batch).__name__,
                           "sample_id": [] if synth is None else synth.sample_id.tolist(),
                           "keys": list(real.keys) if real is not None else [],
                           "checksum": float(batch.image.double().sum())})
        self.devices.add(next(pl_module.parameters()).device.type)


def _fit(tmp_path, dm, max_steps, ckpt_path=None, callbacks=(), optimizer=None, scheduler=None):
    pl.seed_everything(0)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground",
                            optimizer=optimizer, scheduler=scheduler)
    recorder = Recorder()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1,
                                        filename="{step}")
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[recorder, ckpt, *callbacks], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path), accelerator="cpu", devices=1)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, task, recorder


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_resume_is_exact_under_every_schedule(name, fake_tiles, tmp_path):
    _, task_a, rec_a = _fit(tmp_path / "a", _dm(fake_tiles, name), max_steps=6)
    dm_b = _dm(fake_tiles, name)
    _, task_b, rec_b = _fit(tmp_path / "b", dm_b, max_steps=6, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=3.ckpt"))
    assert rec_b.steps == rec_a.steps[3:]  # the same batches: sample ids, real draws (with flips), images
    for a, b in zip(task_a.parameters(), task_b.parameters()):
        assert torch.equal(a, b)  # and the same weights, the learning-rate re-warm included
    kinds = {s["kind"] for s in rec_a.steps}
    expected = {"synthetic_only": {"Batch"}, "real_only": {"RealBatch"}, "mixed": {"HybridBatch"},
                "mixed_by_step": {"Batch", "RealBatch"}, "pretrain_finetune": {"Batch", "RealBatch"},
                "anneal": {"Batch", "HybridBatch", "RealBatch"}}[name]
    assert kinds == expected
    real = sum(len(s["keys"]) for s in rec_a.steps)
    assert dm_b.images_seen == {"real": real, "synthetic": 6 * 4 - real}  # restored from the checkpoint and counted
    assert real == int(dm_b.schedule.real_images(6, 4))  # the budget the schedule promises


def test_no_run_trains_on_the_real_test_split(fake_tiles, tmp_path, monkeypatch):
    opened = []
    real_open = datamodule.open_real
    monkeypatch.setattr(datamodule, "open_real", lambda *a, **k: opened.append(a[4]) or real_open(*a, **k))
    seen = set()
    for name in SCHEDULES:
        if name == "synthetic_only":
            continue
        dm = _dm(fake_tiles, name)
        trainer, task, rec = _fit(tmp_path / name, dm, max_steps=12)
        seen |= {k for s in rec.steps for k in s["keys"]}
        assert "test" not in opened  # training and validation never open the test split
    test = {k for k in MagneticTile(fake_tiles, dm.class_names, 16, "all", dm.real_split).keys
            if split_of(k, dm.real_split) == "test"}
    assert test and seen == set(dm.real_train_keys)  # not vacuous: every training image was drawn ...
    assert not seen & test  # ... and no test image
    trainer.test(task, datamodule=dm, verbose=False)
    assert opened[-1] == "test" and "test/fg_iou/real" in trainer.callback_metrics
    assert "test/fg_ap/real" in trainer.callback_metrics


def test_test_split_is_scored_per_group_against_a_direct_count(fake_tiles, tmp_path):
    dm = _dm(fake_tiles, "real_only")
    trainer, task, _ = _fit(tmp_path, dm, max_steps=6)
    trainer.test(task, datamodule=dm, verbose=False)
    logged = trainer.callback_metrics
    task.eval()
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(dm.real_test.groups):
        by_group.setdefault(g, []).append(i)
    assert "Free" in by_group and len(by_group) >= 2  # not vacuous: a defect class and the defect-free one
    for group, idx in by_group.items():
        items = [dm.real_test[i] for i in idx]
        with torch.no_grad():
            pred = torch.cat([task(it["image"][None].as_subclass(torch.Tensor)).argmax(1) for it in items]) > 0
        gt = torch.stack([it["semantic"].as_subclass(torch.Tensor) for it in items]) > 0
        background = float((~pred & ~gt).sum() / (~(pred & gt)).sum())
        assert float(logged[f"test/class_iou/background/real/{group}"]) == pytest.approx(background, abs=1e-5)
        if gt.any():
            iou = float((pred & gt).sum() / (pred | gt).sum())
            assert float(logged[f"test/fg_iou/real/{group}"]) == pytest.approx(iou, abs=1e-5)
        else:  # a defect-free group has no foreground score, only its false alarms (background IoU)
            assert f"test/fg_iou/real/{group}" not in logged


def test_real_train_images_is_a_nested_subset(fake_tiles):
    sets = []
    for k in (2, 5, 9):
        dm = _dm(fake_tiles, real_train_images=k)
        dm.setup("fit")
        sets.append(set(dm.real_train_keys))
        assert len(sets[-1]) == k
        keys = {key for b, _ in zip(dm.train_dataloader(), range(8)) for key in b.keys}
        assert keys == sets[-1]  # training draws exactly the K images
    assert sets[0] <= sets[1] <= sets[2]
    with pytest.raises(ConfigError, match="data.real_train_images"):
        _dm(fake_tiles, real_train_images=1000).setup("fit")


def test_real_balance_trains_every_class_equally_often(fake_tiles):
    dm = _dm(fake_tiles, real_balance=True)
    dm.setup("fit")
    group = dict(zip(dm.real_train.keys, dm.real_train.groups))
    drawn = [group[k] for b, _ in zip(dm.train_dataloader(), range(6)) for k in b.keys]
    assert {g: drawn.count(g) for g in set(drawn)} == {"Blowhole": 8, "Crack": 8, "Free": 8}
    plain = _dm(fake_tiles)
    plain.setup("fit")
    assert dm.state_dict()["real_train"] != plain.state_dict()["real_train"]  # a resume may not switch the order
    with pytest.raises(ConfigError, match="data.real_balance"):
        _dm(fake_tiles, real_balance="maybe")


def test_a_checkpoint_with_real_images_refuses_another_real_set(fake_tiles, tmp_path):
    _fit(tmp_path / "a", _dm(fake_tiles, "pretrain_finetune", switch_step=3, real_train_images=5), max_steps=6)
    with pytest.raises(ValueError, match="different real training set"):
        _fit(tmp_path / "b", _dm(fake_tiles, "pretrain_finetune", switch_step=3, real_train_images=9),
             max_steps=9, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=6.ckpt"))
    # the synthetic pretraining (no real image yet) may be fine-tuned with any K: it is the same run up to there
    _, _, rec = _fit(tmp_path / "c", _dm(fake_tiles, "pretrain_finetune", switch_step=3, real_train_images=9),
                     max_steps=6, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=3.ckpt"))
    assert [s["kind"] for s in rec.steps] == ["RealBatch"] * 3


class _RecordingSGD(torch.optim.SGD):
    lrs: list = []

    def step(self, closure=None):
        out = super().step(closure)
        self.lrs.append(self.param_groups[0]["lr"])
        return out


def test_lr_rewarm_after_the_switch_composes_with_the_scheduler(fake_tiles, tmp_path):
    _RecordingSGD.lrs = []
    dm = _dm(fake_tiles, "pretrain_finetune", switch_step=2, rewarm_steps=3)
    decay = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)  # noqa: E731
    trainer, task, _ = _fit(tmp_path, dm, max_steps=7, optimizer=lambda p: _RecordingSGD(p, lr=0.1), scheduler=decay)
    scale = [1, 1, 1 / 3, 2 / 3, 1, 1, 1]
    assert _RecordingSGD.lrs == pytest.approx([0.1 * 0.9**t * scale[t] for t in range(7)])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**7)  # the scheduler's own


def test_lr_decay_reaches_the_optimizer(fake_tiles, tmp_path):
    _RecordingSGD.lrs = []
    dm = _dm(fake_tiles, "real_only", decay_steps=4)
    _fit(tmp_path, dm, max_steps=6, optimizer=lambda p: _RecordingSGD(p, lr=0.1))
    quarter = 0.5 + 0.5 * math.cos(math.pi / 4)
    assert _RecordingSGD.lrs == pytest.approx([0.1, 0.1 * quarter, 0.05, 0.1 * (1 - quarter), 0.0, 0.0])


def test_schedule_errors_name_the_key(fake_tiles):
    with pytest.raises(ConfigError, match="data.real_root"):
        SynthDataModule("defects", schedule="real_only")
    with pytest.raises(ConfigError, match="data.schedule"):
        SynthDataModule("defects", schedule="curriculum")
    with pytest.raises(ConfigError, match="data.real_split"):
        SynthDataModule("defects", real_root=str(fake_tiles), real_split=[0.5, 0.5])
    with pytest.raises(ConfigError, match="data.real_train_images"):
        SynthDataModule("defects", real_root=str(fake_tiles), real_train_images=0)
    dm = SynthDataModule("defects")
    with pytest.raises(ConfigError, match="data.real_root"):
        dm.test_dataloader()


def test_magnetic_tile_hybrid_training_loaders(shared_real):
    dm = SynthDataModule("defects", batch_size=4, resolution=32, val_samples_per_slice=2,
                         real_root=str(shared_real / "magnetic_tile"), schedule="mixed", mix_by="step",
                         real_fraction=0.25, real_train_images=25)
    dm.setup("fit")
    assert len(dm.real_train_keys) == 25 and len(dm.real_val) == 64
    real = next(iter(dm.val_dataloader()[1]))
    assert isinstance(real, RealBatch) and real.semantic.shape[1:] == (32, 32)
    kinds = [type(b).__name__ for b, _ in zip(dm.train_dataloader(), range(4))]
    assert kinds == ["Batch", "Batch", "Batch", "RealBatch"]


@pytest.mark.gpu
def test_mixed_schedule_trains_on_gpu(fake_tiles, tmp_path):
    """Synthetic images rendered on the GPU and real images read on the CPU meet in one HybridBatch there."""
    dm = _dm(fake_tiles, "mixed", device="cuda")
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    recorder = Recorder()
    trainer = pl.Trainer(max_steps=3, callbacks=[recorder], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, val_check_interval=3,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path), accelerator="gpu", devices=1)
    trainer.fit(task, datamodule=dm)
    assert [s["kind"] for s in recorder.steps] == ["HybridBatch"] * 3
    assert dm.images_seen == {"synthetic": 6, "real": 6} and recorder.devices == {"cuda"}
    assert "val/fg_iou/real" in trainer.callback_metrics
