"""SliceMiner: re-weighting into the dataset, planted-slice mining, checkpoint/resume, wandb offline files."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from synth_torch.loop.callback import SliceMiner, StreamRecorder
from synth_torch.loop.datamodule import SynthDataModule
from synth_torch.loop.models import TinyUNet
from synth_torch.loop.tasks import SegmentationTask
from synth_torch.scenario.config import ConfigError

# The planted region: the base distribution of light.intensity covers [0.05, 1.0]; the fake task fails on
# images with light.intensity < 0.3 (about a quarter of them).
PLANTED = {"light": {"intensity": [0.05, 1.0]}}


class PlantedTask(pl.LightningModule):
    """A task whose per-image loss is high exactly where ``light.intensity < 0.3`` (plus a little noise)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def per_sample_loss(self, batch) -> torch.Tensor:
        x = batch.params["light.intensity"].float()
        noise = torch.sin(batch.sample_id.double() * 12.9898).float() * 0.05  # deterministic "noise"
        return (x < 0.3).float() + 0.1 + noise

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, callbacks, max_steps, logger=False, **kw) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path), accelerator="cpu", devices=1, **kw)


def test_round_writes_reweighter_output_into_dataset_weights(tmp_path):
    dm = SynthDataModule("tabletop", PLANTED, batch_size=2, resolution=16, val_samples_per_slice=8, val_batch_size=8)
    miner = SliceMiner("group_dro", every_n_train_steps=1, mine=False, verbose=False,
                       reweighter={"eta": 5.0, "min_samples": 1, "max_change": None})
    _trainer(tmp_path, [miner], max_steps=1).fit(PlantedTask(), datamodule=dm)
    probs = dm.train_dataset.mixture.get()
    assert torch.allclose(probs, miner.reweighter.probs.float(), atol=1e-6)
    # the two low_light slices (intensity 0.06-0.18 < 0.3) have the high loss: their weights grew
    names = list(dm.slice_names)
    low = [i for i, n in enumerate(names) if n.startswith("low_light")]
    rec = miner.history[-1]
    assert len(low) == 2 and all(rec["loss"][i] > 0.9 for i in low)
    assert all(rec["loss"][i] < 0.9 for i in range(len(names)) if i not in low)
    assert all(probs[i] > rec["weights_before"][i] for i in low)
    assert probs[names.index("base")] < rec["weights_before"][names.index("base")]
    assert (tmp_path / "slice_miner.json").is_file()


def test_planted_slice_is_mined_added_and_rendered(tmp_path):
    dm = SynthDataModule("tabletop", PLANTED, batch_size=2, resolution=16, val_samples_per_slice=4, val_batch_size=16)
    miner = SliceMiner("group_dro", every_n_train_steps=1, mine_samples=160, max_mined=1, verbose=False,
                       params=["light.intensity", "light.ambient", "camera.distance", "objects.count"],
                       mining={"min_support": 20, "max_order": 1})
    _trainer(tmp_path, [miner], max_steps=1).fit(PlantedTask(), datamodule=dm)
    assert len(miner.mined) == 1, miner.history
    mined = miner.mined[0]
    param, lo, hi = mined["predicates"][0]
    assert param == "light.intensity" and lo == float("-inf") and 0.2 <= hi <= 0.4
    assert mined["mean_loss"] > mined["rest_loss"] + 0.5
    weights = dm.train_dataset.mixture
    assert weights.names[-1] == mined["name"] and len(weights) == len(dm.scenario.slices) + 1
    # the mined slice obeys the rule's per-round cap (max_change 0.1), not its uniform share 1 / (K + 1)
    k = len(weights)
    assert 1 / k > 0.1 and mined["share"] == pytest.approx(0.1) and weights[mined["name"]] == pytest.approx(0.1)
    # the new slice renders inside its region and has a validation suite
    (suite,) = dm.suite(mined["name"])
    assert (suite.params["light.intensity"] < hi).all()
    # the next round excludes it (no duplicate) and evaluates it: its suite lies in the planted region, so its
    # loss is the planted one (1.1 +- 0.05), finite and above every scenario slice outside the region
    miner.run_round(dm.trainer, dm.trainer.lightning_module)
    assert [m["name"] for m in miner.mined].count(mined["name"]) == 1
    losses = miner.history[-1]["loss"]
    assert miner.reweighter.num_slices == len(weights)  # the rule follows the mixture it is given
    assert len(losses) == len(weights) and losses[-1] is not None and math.isfinite(losses[-1])
    assert 1.0 < losses[-1] < 1.2
    assert miner.history[-1]["count"][-1] == 4


def test_bad_miner_arguments_raise():
    with pytest.raises(ConfigError, match="rule"):
        SliceMiner("nope")
    with pytest.raises(ConfigError, match="mining"):
        SliceMiner(mining={"bins": 3})
    with pytest.raises(ConfigError, match="params"):
        SliceMiner(params=["light.nope"])
    with pytest.raises(ConfigError, match="every_n_train_steps"):
        SliceMiner(every_n_train_steps=None, on_validation=False)


@pytest.mark.parametrize("kwargs,message", [
    ({"every_n_train_steps": 2.5}, "every_n_train_steps: expected an integer or null, got 2.5"),
    ({"mine_every": 0}, "mine_every: must be >= 1"),
    ({"mine_samples": 20, "mining": {"min_support": 12}}, r"mine_samples \(20\) must be at least twice"),
    ({"max_mined": -1}, "max_mined: must be >= 0"),
    ({"mined_share": 1.5}, "mined_share must be null or lie in"),
    ({"image_count": 0}, "image_count: must be >= 1"),
    ({"verbose": "yes"}, "verbose: expected true or false, got 'yes'"),
    ({"reweight": 0}, "reweight: expected true or false, got 0"),
    ({"reweighter": {"etaa": 1.0}}, r"reweighter: .*unexpected keyword argument 'etaa'"),
    ({"reweighter": {"floor": 1.5}}, r"reweighter: floor \(eps\) must be in \[0, 1\)"),
    ({"mining": {"min_support": 1}}, "mining: min_support must be an int >= 2"),
    ({"mining": {"alpha": 2.0}}, r"mining: alpha must be in \(0, 1\)"),
    ({"mining": {"min_effect": float("nan")}}, "mining: min_effect must be a finite number"),
])
def test_miner_options_are_checked_at_construction(kwargs, message):
    """Every option, those handed to the reweighter and to find_slices included, fails when the callback is built
    (with the config key), not at the first round after hours of training."""
    with pytest.raises(ConfigError, match=f"callbacks.slice_miner.*{message}"):
        SliceMiner(**kwargs)


def _seg_run(tmp_path, name, max_steps, ckpt_path=None, logger=False):
    pl.seed_everything(0)
    dm = SynthDataModule("defects", batch_size=8, resolution=16, val_samples_per_slice=4, val_batch_size=4)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    # mining at round 2 = the checkpoint step: the batch Lightning prefetched before that round was rendered
    # with the old 4-slice weights, and the resumed run must render it the same way
    miner = SliceMiner("group_dro", every_n_train_steps=1, mine=True, mine_every=2, mine_samples=48, max_mined=1,
                       verbose=False,
                       reweighter={"eta": 3.0, "min_samples": 1},
                       mining={"min_support": 8, "min_effect": 0.0, "alpha": 0.999, "max_order": 1})
    recorder = StreamRecorder(str(tmp_path / name))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2, save_top_k=-1,
                                        filename="{step}")
    trainer = _trainer(tmp_path / name, [miner, recorder, ckpt], max_steps=max_steps, logger=logger)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    return dm, miner, recorder


def test_checkpoint_resume_continues_same_weights_and_stream(tmp_path):
    dm_a, miner_a, rec_a = _seg_run(tmp_path, "a", max_steps=4)
    assert miner_a.mined and miner_a.mined[0]["step"] == 2, "the loose thresholds should mine at step 2"
    dm_b, miner_b, rec_b = _seg_run(tmp_path, "b", max_steps=4, ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))
    # the resumed run trained on exactly the batches the uninterrupted run trained on after step 2
    assert [s["sample_id"] for s in rec_b.steps] == [s["sample_id"] for s in rec_a.steps[2:]]
    assert [s["weights"] for s in rec_b.steps] == [s["weights"] for s in rec_a.steps[2:]]
    assert dm_b.train_dataset.mixture.names == dm_a.train_dataset.mixture.names
    assert torch.equal(dm_b.train_dataset.mixture.get(), dm_a.train_dataset.mixture.get())
    sa, sb = miner_a.reweighter.state_dict(), miner_b.reweighter.state_dict()
    # SliceReweighter.load_state_dict renormalises q (t / t.sum()), which can move it by one ulp (~1e-16); the
    # dataset weights (float32) above are bit-identical
    for key in ("q", "prior", "cum_count", "last_loss", "log_w"):
        assert torch.allclose(torch.nan_to_num(sa[key]), torch.nan_to_num(sb[key]), rtol=0, atol=1e-12), key
    assert miner_b.rounds == miner_a.rounds and miner_b.mined == miner_a.mined


def test_wandb_and_tensorboard_hold_metrics_weights_and_pictures(tmp_path, monkeypatch):
    """One run logged to wandb (offline) and TensorBoard; both files are read back: the scalars, and the pictures
    as pixels (the worst-slice grid is exactly the suite's images, not the black image wandb makes of floats)."""
    import numpy as np
    import torchvision
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from synth_torch.loop.monitor import TrainingMonitor

    import wandb

    if wandb.run is not None:  # WandbLogger would reuse a run left open by another test
        wandb.finish()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="synth-torch-test")
    pl.seed_everything(0)
    dm = SynthDataModule("defects", batch_size=2, resolution=16, val_samples_per_slice=2, val_batch_size=2)
    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), dm.num_classes, target="foreground")
    miner = SliceMiner(every_n_train_steps=1, mine=False, verbose=False, image_count=2)
    monitor = TrainingMonitor(scalars_every_n_steps=1, images_every_n_steps=2, max_images=2)
    tb = TensorBoardLogger(str(tmp_path / "tb"), name=None, version="")
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[miner, monitor],
                         logger=[logger, tb], enable_progress_bar=False, num_sanity_val_steps=0, log_every_n_steps=1,
                         default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    worst = miner.history[-1]["loss"].index(max(v for v in miner.history[-1]["loss"] if v is not None))
    images = torch.cat([b.image for b in dm.suite(dm.slice_names[worst])])[:2]
    expected = torchvision.utils.make_grid((images * 255).round().to(torch.uint8), nrow=8).permute(1, 2, 0).numpy()
    assert expected.mean() > 20  # the suite is not black, so equality below means the logged grid is not either
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert run_dir.name.startswith("offline-run-")
    # wandb's service writes the transaction log asynchronously; give it time to land on disk under load
    deadline = time.monotonic() + 120
    while True:
        run_files = list(run_dir.glob("run-*.wandb"))
        history = _wandb_history(run_files[0]) if len(run_files) == 1 else []
        if any("slices/weight/base" in r and r.get("trainer/global_step") == 2 for r in history):
            break
        assert time.monotonic() < deadline, f"no complete history in {run_files} after 120 s"
        time.sleep(1)
    last = {}
    for row in history:
        last.update(row)
    for name in dm.slice_names:
        assert f"slices/weight/{name}" in last and f"slices/loss/{name}" in last
        assert (f"val/fg_iou/{name}" in last) == (name != "defect_free")  # no foreground there: not scored
        assert f"val/iou/{name}" in last
    assert last["slices/num_slices"] == len(dm.slice_names)
    assert abs(sum(last[f"slices/weight/{n}"] for n in dm.slice_names) - 1.0) < 1e-5
    rounds = [r for r in history if "slices/weight/base" in r]
    assert [r["trainer/global_step"] for r in rounds] == [1, 2]
    # the wandb-only extras: weights table and chart, and the image grid of the worst slice
    assert last["slices/weights_table/_type"] == "table-file"
    assert last["slices/worst_slice/_type"] == "images/separated"
    assert last["samples/train/_type"] == last["samples/predictions/_type"] == "images/separated"
    assert 0 <= last["perf/data_wait_fraction"] <= 1 and last["perf/images_per_s"] > 0
    (png,) = sorted((run_dir / "files" / "media" / "images").rglob("worst_slice_2_*.png"))
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), expected)
    # TensorBoard: the same scalars and pictures
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"perf/data_wait_fraction", "perf/images_per_s", "slices/weight/base"} <= set(events.Tags()["scalars"])
    assert {"samples/train", "samples/predictions", "slices/worst_slice"} <= set(events.Tags()["images"])
    shown = events.Images("slices/worst_slice")[-1]
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.encoded_image_string)).convert("RGB")), expected)
    train_pic = events.Images("samples/train")[-1]
    assert train_pic.width >= 256 and train_pic.height > 256  # two enlarged, titled tiles with labels


def _wandb_history(path: Path) -> list[dict]:
    """History rows of an offline ``run-*.wandb`` file (a LevelDB-style log of protobuf ``Record``s: a 7-byte
    header, then 32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST).
    wandb >= 0.2x has no Python reader for it, and offline runs write no wandb-summary.json."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, block, rows, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_per_slice_metrics_live_in_a_module_dict_that_to_and_reset_see():
    """Per-slice metrics are MetricCollections in the task's nn.ModuleDict (slice names with dots included), so
    moving the task moves their states, and a reset after logging empties them."""
    from torchmetrics import MetricCollection

    task = SegmentationTask(functools.partial(TinyUNet, width=4, depth=2), 3, target="foreground")
    collection = task._metrics_for("val", "slice:light.intensity<0.3")
    assert isinstance(collection, MetricCollection) and collection is task._metrics_for("val", "slice:light.intensity<0.3")
    assert any(m is collection for m in task.metrics["val"].values())
    assert "class_iou" in task._metrics_for("val", "all") and "class_iou" not in collection
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    collection["fg_iou"].update(labels, labels)
    task.to(torch.float64)
    state = collection["fg_iou"].confmat
    assert state.dtype == torch.long and int(state.sum()) > 0  # integer counts keep their dtype, values kept
    collection.reset()
    assert int(collection["fg_iou"].confmat.sum()) == 0 and collection["fg_iou"].update_count == 0
    collection["fg_iou"].update(labels, labels)
    task.to("meta")
    assert collection["fg_iou"].confmat.device.type == "meta"  # .to() on the task reaches the metrics
