"""SynthDataModule (synthetic stream and suites), the model zoo and the tasks' per-sample losses (tiny
resolutions, CPU). Hybrid schedules through the data module: tests/loop/test_hybrid_training.py."""

from __future__ import annotations

import functools

import pytest
import torch

from synth_torch.data.batch import Batch, decode_sample_id
from synth_torch.loop.datamodule import VAL_START, SynthDataModule, collate_batch
from synth_torch.loop.models import TinyUNet, detection_model, segmentation_model
from synth_torch.loop.tasks import DetectionTask, SegmentationTask, slice_key
from synth_torch.scenario.config import ConfigError


def _dm(**kw) -> SynthDataModule:
    args = dict(scenario="defects", batch_size=2, resolution=16, val_samples_per_slice=2, val_batch_size=2)
    args.update(kw)
    dm = SynthDataModule(**args)
    dm.setup("fit")
    return dm


def test_train_loader_yields_batch_dataclass():
    dm = _dm()
    loader = dm.train_dataloader()
    assert loader.batch_size is None
    batch = next(iter(loader))
    assert isinstance(batch, Batch)
    assert batch.image.shape == (2, 3, 16, 16) and batch.semantic.shape == (2, 16, 16)
    assert batch.batch_index == 0
    assert dm.num_classes == len(dm.scenario.class_names) + 1


def test_collate_keeps_batches_and_rejects_other_types():
    dm = _dm()
    b = dm.train_dataset.render_batch(torch.arange(2))
    assert collate_batch(b) is b
    with pytest.raises(TypeError, match="Batch"):
        collate_batch({"image": torch.zeros(1)})


def test_validation_suites_are_fixed_per_slice_and_disjoint_from_training():
    dm1, dm2 = _dm(), _dm()
    for sid, name in enumerate(dm1.slice_names):
        (b1,), (b2,) = dm1.suite(name), dm2.suite(name)
        assert torch.equal(b1.image, b2.image) and torch.equal(b1.sample_id, b2.sample_id)
        index, slice_id = decode_sample_id(b1.sample_id)
        assert (slice_id == sid).all()
        assert (index >= VAL_START).all()  # training uses indices < 10**9
    # the loader iterates every suite, one slice per batch
    seen = [b.slice_names[int(b.slice_id[0])] for b in dm1.val_dataloader()]
    assert seen == list(dm1.slice_names)


def test_stream_follows_shared_weights():
    dm = _dm(batch_size=8)
    probs = torch.zeros(len(dm.train_dataset.mixture))
    probs[2] = 1.0
    dm.train_dataset.mixture.set(probs)
    batch = next(iter(dm.train_dataloader()))
    assert (batch.slice_id == 2).all()


def test_resume_position_is_the_stream_cursor():
    dm = _dm()
    dm.train_dataset.cursor.consume(2)
    state = dm.state_dict()
    assert state["dataset"]["next_batch"] == 3
    other = _dm()
    other.load_state_dict(state)
    assert other.train_dataset.cursor.next_batch == 3
    assert next(iter(other.train_dataloader())).batch_index == 3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ConfigError, match="val_samples_per_slice"):
        SynthDataModule("defects", val_samples_per_slice=0)
    with pytest.raises(ConfigError, match="no_such_scenario"):
        SynthDataModule("no_such_scenario")
    with pytest.raises(ConfigError, match="device"):
        SynthDataModule("defects", device="tpu")


@pytest.mark.parametrize("kwargs,message", [
    ({"num_workers": -1}, "data.num_workers: must be >= 0, got -1"),
    ({"num_workers": "2"}, "data.num_workers: expected an integer, got '2'"),
    ({"num_workers": 1.5}, "data.num_workers: expected an integer, got 1.5"),
    ({"worker_timeout": 0}, "data.worker_timeout: must be > 0 seconds"),
    ({"sensor": "yes"}, "data.sensor: expected true or false, got 'yes'"),
    ({"real_flips": 1}, "data.real_flips: expected true or false, got 1"),
    ({"real_required": "false"}, "data.real_required: expected true or false"),
    ({"val_batch_size": 0}, "data.val_batch_size: must be >= 1"),
    ({"batch_size": True}, "data.batch_size: expected an integer, got True"),
    ({"real_val_max_images": 0}, "data.real_val_max_images: must be >= 1 or null"),
    ({"switch_step": 2.5, "schedule": "pretrain_finetune", "real_root": "x"}, "data.switch_step: expected an integer"),
    ({"real_fraction": "0.5", "schedule": "mixed", "real_root": "x"}, "data.real_fraction: expected a number"),
])
def test_options_of_the_wrong_type_name_their_key(kwargs, message):
    """Flags are true or false (not "false", which is truthy), counts are integers (not 1.5, which int() would
    quietly truncate): each is refused when the data module is built, naming its config key."""
    with pytest.raises(ConfigError, match=message):
        SynthDataModule("defects", **kwargs)


def test_missing_real_root_is_skipped_or_raises(tmp_path):
    with pytest.warns(UserWarning, match="not found"):
        dm = _dm(real_root=str(tmp_path / "absent"))
    assert dm.real_val is None and not isinstance(dm.val_dataloader(), list)
    with pytest.raises(FileNotFoundError, match="absent"):
        _dm(real_root=str(tmp_path / "absent"), real_required=True)
    with pytest.raises(FileNotFoundError, match="absent"):  # training on real data always needs the folder
        _dm(real_root=str(tmp_path / "absent"), schedule="mixed")


def test_segmentation_per_sample_loss_is_per_image_and_side_effect_free():
    dm = _dm(batch_size=4)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    task.train()
    batch = dm.train_dataset.render_batch(torch.arange(4))
    before = [b.clone() for b in task.buffers()]
    loss = task.per_sample_loss(batch)
    assert loss.shape == (4,) and not loss.requires_grad and task.training
    assert ((loss >= 0) & (loss <= 1)).all()
    after = list(task.buffers())
    assert len(after) == len(before) > 0 and all(torch.equal(a, b) for a, b in zip(before, after))
    ce = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, miner_loss="ce")
    assert ce.per_sample_loss(batch).shape == (4,)


def test_segmentation_miner_loss_of_an_empty_image_is_its_worst_false_alarm():
    """1 - Dice on images with foreground; on images without, the largest foreground probability: a model that is
    sure nothing is there scores ~0 on a defect-free image however many pixels carry a faint probability."""
    dm = _dm(batch_size=2)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    batch = dm.train_dataset.render_batch(torch.arange(2))
    batch.semantic[0] = 0
    batch.semantic[1, :4, :4] = 1
    logits = torch.zeros(2, 2, *batch.semantic.shape[-2:])
    logits[:, 0] = 3.0  # P(foreground) = 1 / (1 + e^3) ~ 0.047 everywhere
    logits[0, 1, 5, 5] = 6.0  # one confident false alarm: P ~ 0.95
    task.forward = lambda image: logits
    loss = task.per_sample_loss(batch)
    torch.testing.assert_close(loss[0], torch.sigmoid(torch.tensor(3.0)), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss[1], 1 - task._soft_dice(logits[1:], batch.semantic[1:])[0])
    logits[0, 1, 5, 5] = 0.0
    assert float(task.per_sample_loss(batch)[0]) < 0.05


@pytest.mark.parametrize("arch", ["tiny_unet", "lraspp_mobilenet_v3_large"])
def test_segmentation_models_build_without_downloads(arch):
    net = segmentation_model(6, arch=arch, width=4, depth=2)
    task = SegmentationTask(net, 6)
    assert task(torch.rand(1, 3, 32, 32)).shape == (1, 6, 32, 32)


DETECTORS = {"fasterrcnn": {"backbone": "resnet18", "image_size": 32}, "retinanet": {"image_size": 32},
             "fcos": {"image_size": 32}, "centernet": {"options": {"width": 4, "depth": 2}}}


@pytest.mark.parametrize("arch", ["fasterrcnn", "centernet"])
def test_detection_per_sample_loss_is_deterministic_and_side_effect_free(arch):
    dm = _dm(scenario="tabletop", batch_size=2, resolution=32)
    net = functools.partial(detection_model, arch=arch, **DETECTORS[arch])
    task = DetectionTask(net, dm.num_classes)
    task.train()
    batch = dm.train_dataset.render_batch(torch.arange(2))
    rng = torch.get_rng_state()
    bn = [b.clone() for b in task.buffers()]
    a, b = task.per_sample_loss(batch), task.per_sample_loss(batch)
    assert a.shape == (2,) and torch.equal(a, b) and torch.isfinite(a).all()
    assert torch.equal(rng, torch.get_rng_state()) and task.training
    after = list(task.buffers())
    assert len(after) == len(bn) > 0 and all(torch.equal(x, y) for x, y in zip(bn, after))
    task.miner_loss = "f1"
    f1 = task.per_sample_loss(batch)
    assert f1.shape == (2,) and ((f1 >= 0) & (f1 <= 1)).all()


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "centernet"])
def test_other_detectors_train_one_step(arch):
    dm = _dm(scenario="tabletop", batch_size=2, resolution=32)
    task = DetectionTask(detection_model(dm.num_classes, arch=arch, **DETECTORS[arch]), dm.num_classes)
    loss = task.training_step(dm.train_dataset.render_batch(torch.arange(2)), 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_centernet_task_trains_validates_and_scores_end_to_end(tmp_path):
    """DetectionTask with centernet through Lightning: two steps on the tabletop stream, validation per slice."""
    import lightning.pytorch as pl

    pl.seed_everything(0)
    dm = SynthDataModule("tabletop", batch_size=2, resolution=32, val_samples_per_slice=2, val_batch_size=2)
    task = DetectionTask(functools.partial(detection_model, arch="centernet", options={"width": 4, "depth": 2}),
                         dm.num_classes)
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    metrics = task.last_val_metrics
    assert trainer.global_step == 2 and 0 <= metrics["val/map"] <= 1 and "val/map_50" in metrics
    assert {f"val/map/{slice_key(name)}" for name in dm.slice_names} <= set(metrics)


def test_foreground_metrics_skip_a_suite_without_foreground():
    """A defect-free suite has no fg_iou, dice or fg_ap (torchmetrics would say 0 for one false-alarm pixel), so
    the worst slice is the worst slice that has defects; iou still covers it."""
    from torchmetrics import MetricCollection

    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), 2, target="foreground")
    empty = MetricCollection(task._make_metrics(per_class=False))
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    empty["iou"].update(labels, labels)
    for name in ("dice", "fg_iou"):
        empty[name].update(torch.ones(2, 8, 8, dtype=torch.long), labels)  # every pixel a false alarm
    empty["fg_ap"].update(torch.full((2, 8, 8), 0.9), labels)
    empty["fg_pixels"].update(labels.sum())
    assert set(task._compute_metrics(empty)) == {"iou"}
    defects = MetricCollection(task._make_metrics(per_class=False))
    labels[0, :2] = 1
    for name in ("dice", "fg_iou"):
        defects[name].update(labels, labels)
    defects["iou"].update(labels, labels)
    defects["fg_ap"].update(labels.float(), labels)
    defects["fg_pixels"].update(labels.sum())
    out = task._compute_metrics(defects)
    assert set(out) == {"iou", "dice", "fg_iou", "fg_ap"} and float(out["fg_iou"]) == 1.0
