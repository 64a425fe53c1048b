"""LightningModules for training on the live stream: semantic segmentation and object detection.

Both report metrics overall (``val/<metric>``), per slice (``val/<metric>/<slice>``), their worst and mean
over slices (``val/<metric>_worst``, ``val/<metric>_slice_mean``), per class overall (``val/class_<metric>/<class>``)
and, with a real validation set, ``val/<metric>/real`` (and ``val/class_<metric>/<class>/real``); ``trainer.test``
scores the real test split as ``test/<metric>/real`` and, for a set with several groups (magnetic_tile: the
defect classes), each group as ``test/<metric>/real/<group>``. The metric objects are torchmetrics ``MetricCollection``s,
one per stage and key (overall, each slice, real) in an ``nn.ModuleDict`` (:attr:`SliceTask.metrics`), so
``.to()``, DDP and ``reset`` see every one of them. Both expose
:meth:`SliceTask.per_sample_loss`, the per-image loss the :class:`~synth_torch.loop.callback.SliceMiner`
aggregates per slice and mines on. The networks are built by :mod:`synth_torch.loop.models`.

Inputs are :class:`synth_torch.Batch` (synthetic), :class:`~synth_torch.data.real.RealBatch` (real) or, for a
step of a hybrid schedule that mixes both, :class:`~synth_torch.data.hybrid.HybridBatch`: all have ``image``
[B, 3, H, W], ``semantic`` [B, H, W] and ``to_torchvision(min_visible_pixels)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import contextlib
import math
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (BinaryAveragePrecision, BinaryF1Score, BinaryJaccardIndex,
                                         MulticlassJaccardIndex)

from synth_torch.data.batch import Batch
from synth_torch.loop.models import TinyUNet, detection_model, segmentation_model
from synth_torch.scenario.config import ConfigError

__all__ = ["SliceTask", "SegmentationTask", "DetectionTask", "TinyUNet", "detection_model", "segmentation_model",
           "slice_key"]

try:  # Lightning re-exports typing_extensions.override
    from typing_extensions import override
except ImportError:  # pragma: no cover
    def override(f):
        return f


def slice_key(name: str) -> str:
    """A slice name as a metric-key component (no spaces or slashes: ``a<1 & b>=2`` -> ``a<1&b>=2``)."""
    return name.replace(" & ", "&").replace(" ", "").replace("/", "_")


def _module_key(key: str) -> str:
    """A metric key (``all``, ``real``, ``slice:<name>``) as an ``nn.ModuleDict`` key (which may not hold dots)."""
    return key.replace(".", "\u00b7")


# ---------------------------------------------------------------------------------------------- base task
def _default_optimizer(params):
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class SliceTask(pl.LightningModule, ABC):
    """Common parts: the network, the optimizer, per-slice metric bookkeeping and logging.

    Args:
        net: an ``nn.Module`` or a callable ``net(num_classes=...)`` (Hydra ``_partial_: true``).
        num_classes: including background.
        optimizer: callable ``optimizer(params)`` (Hydra ``_partial_: true``); default AdamW(lr=1e-3).
        scheduler: optional callable ``scheduler(optimizer)``, stepped every training step.
        monitor: the headline validation metric (higher is better), for the run's summary and monitored
            checkpoints; default: the task's ``MONITOR``.

    Learning-rate re-warm: when the data module has ``lr_scale(step)`` (a hybrid schedule's re-warm after its
    switch to real data, see :class:`~synth_torch.data.hybrid.HybridSchedule`), every optimizer step runs at
    the scheduler's learning rate times that factor. The factor is a pure function of the step, so it composes
    with any scheduler and survives resume.
    """

    MONITOR = "val/loss"

    def __init__(self, net, num_classes: int, optimizer: Callable | None = None, scheduler: Callable | None = None,
                 monitor: str | None = None):
        super().__init__()
        if int(num_classes) < 2:
            raise ConfigError(f"model.num_classes must be >= 2 (background + classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.net = net if isinstance(net, nn.Module) else net(num_classes=self.num_classes)
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor or self.MONITOR
        # stage -> metric key -> MetricCollection; created lazily (mined slices appear during training)
        self.metrics = nn.ModuleDict({"val": nn.ModuleDict(), "test": nn.ModuleDict()})

    # --- implemented by each task (SegmentationTask, DetectionTask)
    @abstractmethod
    def _make_metrics(self, per_class: bool) -> dict:
        """Fresh torchmetrics objects, name -> Metric (with per-class variants when ``per_class``)."""

    @abstractmethod
    def _update_metrics(self, metrics: MetricCollection, batch) -> None:
        """Update ``metrics`` with the model's predictions on ``batch``."""

    def _compute_metrics(self, metrics: MetricCollection) -> dict[str, float | Tensor]:
        """Synchronised (under DDP) values, scalars or per-class vectors [C]; every rank must call this for the same
        keys in the same order."""
        return {name: m.compute() for name, m in metrics.items()}

    def class_names(self) -> list[str]:
        """Names of the task's classes 0..num_classes-1 (from the data module; indices without one)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = ["background", *getattr(dm, "class_names", ())]
        return names[: self.num_classes] + [str(i) for i in range(len(names), self.num_classes)]

    @abstractmethod
    def per_sample_loss(self, batch) -> Tensor:
        """Per-image loss :math:`(B,)` in eval mode, without gradients (higher is worse)."""

    # --- shared
    @override
    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    @override
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        scale = float(dm.lr_scale(self.trainer.global_step)) if hasattr(dm, "lr_scale") else 1.0
        if scale == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * scale
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:  # the scheduler keeps stepping its own learning rate
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr

    @staticmethod
    def _updated(metrics: MetricCollection) -> bool:
        return any(m.update_count > 0 for m in metrics.values())

    def _metrics_for(self, stage: str, key: str) -> MetricCollection:
        name = _module_key(key)
        if name not in self.metrics[stage]:
            metrics = self._make_metrics(per_class=not key.startswith("slice:"))
            self.metrics[stage][name] = MetricCollection(metrics, compute_groups=False).to(self.device)
        return self.metrics[stage][name]

    def _expected_keys(self, stage: str) -> list[str]:
        """Metric keys every rank computes, in one order (collectives inside ``compute`` must match)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "test":
            return ["real", *(f"real:{g}" for g in self._real_groups(dm))]
        if dm is None or not hasattr(dm, "slice_names"):
            return sorted(k.replace("\u00b7", ".") for k in self.metrics[stage])
        keys = ["all", *(f"slice:{n}" for n in dm.slice_names)]
        if getattr(dm, "real_val", None) is not None:
            keys.append("real")
        return keys

    def _real_groups(self, dm=None) -> list[str]:
        """The groups of the real test split (magnetic_tile: its classes), scored one by one at test time; none
        for a set with one group."""
        if dm is None and self._trainer is not None:
            dm = getattr(self.trainer, "datamodule", None)
        groups = sorted(set(getattr(getattr(dm, "real_test", None), "groups", ())))
        return groups if len(groups) > 1 else []

    def _eval_step(self, stage: str, batch) -> None:
        if isinstance(batch, Batch):
            self._update_metrics(self._metrics_for(stage, "all"), batch)
            for sid in batch.slice_id.unique().tolist():
                sub = batch if (batch.slice_id == sid).all() else batch.select(batch.slice_id == sid)
                self._update_metrics(self._metrics_for(stage, f"slice:{batch.slice_names[sid]}"), sub)
        else:
            self._update_metrics(self._metrics_for(stage, "real"), batch)
            if stage == "test" and len(set(self._real_groups())) > 1:
                for group in sorted(set(batch.groups)):
                    keep = torch.tensor([g == group for g in batch.groups])
                    self._update_metrics(self._metrics_for(stage, f"real:{group}"), batch.select(keep))

    def _log_stage(self, stage: str) -> dict[str, float]:
        values: dict[str, float] = {}
        per_slice: dict[str, dict[str, float]] = {}
        keys = self._expected_keys(stage)
        computed = self.metrics[stage]
        # A key no rank has seen (e.g. limit_val_batches cut the suites) is skipped; the flags are summed over
        # ranks first so every rank computes (and synchronises) the same keys.
        seen = torch.tensor([float(_module_key(k) in computed and self._updated(computed[_module_key(k)]))
                             for k in keys], device=self.device)
        if self._trainer is not None:
            seen = self.trainer.strategy.reduce(seen, reduce_op="sum")
        for key, flag in zip(keys, seen.tolist()):
            if flag == 0:
                continue
            metrics = self._metrics_for(stage, key)
            with warnings.catch_warnings():  # a rank may hold no sample of a slice; compute still syncs
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                out = self._compute_metrics(metrics)
            metrics.reset()
            for name, v in out.items():
                if torch.is_tensor(v) and v.numel() > 1:  # per class
                    suffix = ("" if key == "all" else "/real" if key == "real"
                              else f"/real/{key[len('real:'):]}" if key.startswith("real:") else None)
                    if suffix is not None:
                        for cname, cv in zip(self.class_names(), v.tolist()):
                            if math.isfinite(cv) and cv >= 0:  # -1: a class with no ground truth or prediction
                                values[f"{stage}/{name}/{cname}{suffix}"] = cv
                    continue
                v = float(v)
                if key == "all":
                    values[f"{stage}/{name}"] = v
                elif key == "real":
                    values[f"{stage}/{name}/real"] = v
                elif key.startswith("real:"):
                    values[f"{stage}/{name}/real/{key[len('real:'):]}"] = v
                else:
                    slice_name = key[len("slice:"):]
                    values[f"{stage}/{name}/{slice_key(slice_name)}"] = v
                    per_slice.setdefault(name, {})[slice_name] = v
        for name, by_slice in per_slice.items():
            finite = [v for v in by_slice.values() if math.isfinite(v) and v >= 0]
            if finite:
                values[f"{stage}/{name}_worst"] = min(finite)
                values[f"{stage}/{name}_slice_mean"] = sum(finite) / len(finite)
        self.log_dict(values, sync_dist=False, batch_size=1)
        return values

    @override
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self.last_val_metrics = self._log_stage("val")

    @override
    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch)

    @override
    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_stage("test")


# ---------------------------------------------------------------------------------------------- segmentation
class SegmentationTask(SliceTask):
    """Semantic segmentation of ``batch.semantic`` (e.g. defect segmentation on the ``defects`` scenario).

    Args:
        target: ``"semantic"`` (classes 0..C) or ``"foreground"`` (0 background / 1 anything, num_classes 2).
        ce_weight, dice_weight: training loss ``ce_weight * CE + dice_weight * (1 - soft foreground Dice)``.
        class_weights: optional CE class weights [num_classes] (background is usually > 95 % of pixels).
        miner_loss: per-image loss for the miner, in [0, 1] for ``"dice"``: 1 - soft foreground Dice on an image
            with foreground, and on an image without any (a defect-free tile) the largest foreground probability,
            i.e. how confident the image's worst false alarm is (Dice is no measure there: a faint foreground
            probability spread over the image scores ~1); ``"ce"``: mean CE.

    Metrics (torchmetrics, accumulated over the whole suite): ``iou`` (``MulticlassJaccardIndex``, macro over
    the classes present), ``dice`` (Dice of the foreground mask, i.e. ``BinaryF1Score`` of defect/object vs
    background pixels), ``fg_iou`` (``BinaryJaccardIndex`` of the foreground mask) and ``fg_ap`` (pixel average
    precision of the foreground probability ``1 - P(background)``, ``BinaryAveragePrecision`` over 200
    thresholds: threshold-free, unlike the other three, which score the argmax). Per class (overall and real only):
    ``class_iou`` (``MulticlassJaccardIndex(average="none")``; with ``target="foreground"`` the classes are
    background and foreground).
    """

    MONITOR = "val/fg_iou"

    def __init__(self, net, num_classes: int, target: str = "semantic", ce_weight: float = 1.0,
                 dice_weight: float = 1.0, class_weights=None, miner_loss: str = "dice",
                 optimizer: Callable | None = None, scheduler: Callable | None = None, monitor: str | None = None):
        if target not in ("semantic", "foreground"):
            raise ConfigError(f"model.target must be 'semantic' or 'foreground', got {target!r}")
        if miner_loss not in ("dice", "ce"):
            raise ConfigError(f"model.miner_loss must be 'dice' or 'ce', got {miner_loss!r}")
        num_classes = 2 if target == "foreground" else num_classes
        super().__init__(net, num_classes, optimizer, scheduler, monitor)
        self.target, self.ce_weight, self.dice_weight, self.miner_loss = target, ce_weight, dice_weight, miner_loss
        cw = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        if cw is not None and cw.shape != (self.num_classes,):
            raise ConfigError(f"model.class_weights: need {self.num_classes} values, got {cw.tolist()}")
        self.register_buffer("class_weights", cw if cw is not None else torch.ones(self.num_classes), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        out = self.net(image)
        return out["out"] if isinstance(out, dict) else out

    def _labels(self, batch) -> Tensor:
        sem = batch.semantic.long()
        return (sem > 0).long() if self.target == "foreground" else sem.clamp(max=self.num_classes - 1)

    @staticmethod
    def _soft_dice(logits: Tensor, labels: Tensor) -> Tensor:
        """Per-image soft Dice of the foreground (1 - P(background)) against ``labels > 0``. Shape [B]."""
        fg = 1.0 - logits.softmax(1)[:, 0]
        gt = (labels > 0).float()
        inter = (fg * gt).flatten(1).sum(1)
        return (2 * inter + 1.0) / (fg.flatten(1).sum(1) + gt.flatten(1).sum(1) + 1.0)

    @override
    def training_step(self, batch, batch_idx: int) -> Tensor:
        labels = self._labels(batch)
        logits = self(batch.image)
        ce = F.cross_entropy(logits, labels, weight=self.class_weights)
        dice = 1.0 - self._soft_dice(logits, labels).mean()
        loss = self.ce_weight * ce + self.dice_weight * dice
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/dice_loss": dice}, prog_bar=False,
                      batch_size=len(batch))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(batch))
        return loss

    def class_names(self) -> list[str]:
        return ["background", "foreground"] if self.target == "foreground" else super().class_names()

    def _make_metrics(self, per_class: bool) -> dict:
        metrics = {
            "iou": MulticlassJaccardIndex(self.num_classes, average="macro", validate_args=False),
            "dice": BinaryF1Score(validate_args=False),
            "fg_iou": BinaryJaccardIndex(validate_args=False),
            "fg_ap": BinaryAveragePrecision(thresholds=200, validate_args=False),
        }
        if per_class:
            metrics["class_iou"] = MulticlassJaccardIndex(self.num_classes, average="none", validate_args=False)
        return metrics

    def _update_metrics(self, metrics: MetricCollection, batch) -> None:
        labels = self._labels(batch)
        logits = self(batch.image)
        pred = logits.argmax(1)
        metrics["iou"].update(pred, labels)
        if "class_iou" in metrics:
            metrics["class_iou"].update(pred, labels)
        metrics["dice"].update((pred > 0).long(), (labels > 0).long())
        metrics["fg_iou"].update((pred > 0).long(), (labels > 0).long())
        metrics["fg_ap"].update(1.0 - logits.softmax(1)[:, 0], (labels > 0).long())

    @torch.no_grad()
    def per_sample_loss(self, batch) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            labels = self._labels(batch)
            logits = self(batch.image.to(self.device))
            labels = labels.to(self.device)
            if self.miner_loss == "dice":
                empty = ~(labels > 0).flatten(1).any(1)
                false_alarm = (1.0 - logits.softmax(1)[:, 0]).flatten(1).amax(1)
                return torch.where(empty, false_alarm, 1.0 - self._soft_dice(logits, labels))
            return F.cross_entropy(logits, labels, reduction="none").flatten(1).mean(1)
        finally:
            self.train(was_training)


# ---------------------------------------------------------------------------------------------- detection
@contextlib.contextmanager
def _loss_mode(model: nn.Module, seed: int):
    """Train mode (so torchvision detectors return losses) with BatchNorm frozen and a private RNG stream,
    so that computing losses for the miner changes neither the model nor the training randomness."""
    was = model.training
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was)


class DetectionTask(SliceTask):
    """Object detection with a torchvision detector on ``batch.to_torchvision()`` targets.

    Args:
        min_visible_pixels: instances with fewer visible pixels are not targets.
        miner_loss: ``"loss"``: the detector's training loss per image (computed one image at a time, with
            BatchNorm frozen and a fixed private RNG seed, so it is deterministic and has no side effects), or
            ``"f1"``: 1 - F1 at IoU 0.5 of the detections scoring at least ``score_threshold``.

    Metrics: torchmetrics ``MeanAveragePrecision(backend="pycocotools")`` ``map`` and ``map_50`` (boxes); per class
    (overall and real only) ``class_map``.
    """

    MONITOR = "val/map"

    def __init__(self, net, num_classes: int, min_visible_pixels: int = 4, miner_loss: str = "loss",
                 score_threshold: float = 0.3, optimizer: Callable | None = None, scheduler: Callable | None = None,
                 monitor: str | None = None):
        if miner_loss not in ("loss", "f1"):
            raise ConfigError(f"model.miner_loss must be 'loss' or 'f1', got {miner_loss!r}")
        super().__init__(net, num_classes, optimizer, scheduler, monitor)
        self.min_visible_pixels, self.miner_loss, self.score_threshold = min_visible_pixels, miner_loss, score_threshold

    def _inputs(self, batch) -> tuple[list[Tensor], list[dict]]:
        images, targets = batch.to_torchvision(self.min_visible_pixels)
        out = []
        for t in targets:
            boxes = t["boxes"].as_subclass(Tensor).float()
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append({"boxes": boxes[keep], "labels": t["labels"][keep].long()})
        return images, out

    def forward(self, images: list[Tensor]):
        return self.net(images)

    @override
    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = self._inputs(batch)
        losses = self.net(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()} | {"train/loss": loss}, batch_size=len(images))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(images))
        return loss

    def _make_metrics(self, per_class: bool) -> dict:
        from torchmetrics.detection import MeanAveragePrecision

        return {"map": MeanAveragePrecision(backend="pycocotools", iou_type="bbox", class_metrics=per_class)}

    def _update_metrics(self, metrics: MetricCollection, batch) -> None:
        images, targets = self._inputs(batch)
        preds = self.net(images)
        metrics["map"].update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], targets)

    def _compute_metrics(self, metrics: MetricCollection) -> dict[str, float | Tensor]:
        m = metrics["map"]
        out = m.compute()
        values: dict[str, float | Tensor] = {"map": float(out["map"]), "map_50": float(out["map_50"])}
        if m.class_metrics:  # AP of every class id 0..C-1 (-1: no ground truth or prediction of that class)
            per_class = torch.full((self.num_classes,), -1.0)
            classes = out["classes"].flatten().long().cpu()
            per_class[classes.clamp(0, self.num_classes - 1)] = out["map_per_class"].flatten().float().cpu()
            values["class_map"] = per_class
        return values

    @torch.no_grad()
    def per_sample_loss(self, batch) -> Tensor:
        images, targets = self._inputs(batch)
        images = [im.to(self.device) for im in images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        if self.miner_loss == "loss":
            out = []
            with _loss_mode(self.net, seed=12345):
                for im, t in zip(images, targets):
                    out.append(sum(self.net([im], [t]).values()))
            return torch.stack(out).float()
        was = self.net.training
        self.net.eval()
        try:
            preds = self.net(images)
        finally:
            self.net.train(was)
        return torch.stack([1.0 - _f1_at_50(p, t, self.score_threshold) for p, t in zip(preds, targets)])


def _f1_at_50(pred: dict, target: dict, score_threshold: float) -> Tensor:
    """F1 at IoU 0.5 (greedy matching by score, same class) of one image's detections."""
    from torchvision.ops import box_iou

    keep = pred["scores"] >= score_threshold
    boxes, labels = pred["boxes"][keep], pred["labels"][keep]
    n_pred, n_gt = boxes.shape[0], target["boxes"].shape[0]
    if n_pred == 0 and n_gt == 0:
        return torch.tensor(1.0, device=boxes.device)
    if n_pred == 0 or n_gt == 0:
        return torch.tensor(0.0, device=boxes.device)
    iou = box_iou(boxes, target["boxes"]) * (labels[:, None] == target["labels"][None, :])
    matched = torch.zeros(n_gt, dtype=torch.bool, device=boxes.device)
    tp = 0
    for i in range(n_pred):  # predictions are sorted by score (torchvision)
        cand = (iou[i] >= 0.5) & ~matched
        if cand.any():
            j = int(torch.where(cand, iou[i], torch.full_like(iou[i], -1)).argmax())
            matched[j] = True
            tp += 1
    return torch.tensor(2.0 * tp / (n_pred + n_gt), device=boxes.device)
