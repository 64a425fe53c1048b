"""LightningModules for training on the live stream: semantic segmentation and object detection.

Both report metrics overall (``val/<metric>``), per slice (``val/<metric>/<slice>``), their worst and mean
over slices (``val/<metric>_worst``, ``val/<metric>_slice_mean``) and, with a real validation set,
``val/<metric>/real``. Both expose :meth:`SliceTask.per_sample_loss`, the per-image loss the
:class:`~synth_torch.loop.callback.SliceMiner` aggregates per slice and mines on.

Inputs are :class:`synth_torch.Batch` (synthetic) or :class:`~synth_torch.loop.datamodule.RealBatch` (real):
both have ``image`` [B, 3, H, W], ``semantic`` [B, H, W] and ``to_torchvision()``.
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
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, MulticlassJaccardIndex

from synth_torch.data.batch import Batch
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


# ---------------------------------------------------------------------------------------------- models
class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """A small U-Net for CPU experiments (``width * 2**d`` channels at depth ``d``).

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, H and W divisible by ``2**depth``
        - output: :math:`(B, num\\_classes, H, W)` logits
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3):
        super().__init__()
        chans = [width * 2**d for d in range(depth + 1)]
        self.down = nn.ModuleList([_Block(in_channels, chans[0])] + [_Block(chans[d], chans[d + 1])
                                                                      for d in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[d + 1], chans[d], 2, stride=2) for d in reversed(range(depth))])
        self.dec = nn.ModuleList([_Block(2 * chans[d], chans[d]) for d in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"TinyUNet of depth {self.depth} needs H and W divisible by {2**self.depth}, "
                             f"got {tuple(x.shape[-2:])}")
        skips = []
        for d, block in enumerate(self.down):
            x = block(x if d == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def segmentation_model(num_classes: int, arch: str = "tiny_unet", width: int = 16, depth: int = 3) -> nn.Module:
    """``tiny_unet``, or torchvision's ``lraspp_mobilenet_v3_large`` / ``deeplabv3_mobilenet_v3_large`` built
    from scratch (``weights=None, weights_backbone=None``: nothing is downloaded)."""
    if arch == "tiny_unet":
        return TinyUNet(num_classes, width=width, depth=depth)
    from torchvision.models import segmentation as seg

    if arch == "lraspp_mobilenet_v3_large":
        return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    if arch == "deeplabv3_mobilenet_v3_large":
        return seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes,
                                                aux_loss=False)
    raise ConfigError(f"model.net.arch: expected 'tiny_unet', 'lraspp_mobilenet_v3_large' or "
                      f"'deeplabv3_mobilenet_v3_large', got {arch!r}")


def detection_model(num_classes: int, arch: str = "fasterrcnn", backbone: str = "resnet18", image_size: int = 64,
                    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128), trainable_layers: int = 5) -> nn.Module:
    """A torchvision detector built from scratch (no downloads) for small images.

    Args:
        num_classes: including background.
        arch: ``fasterrcnn``, ``retinanet`` or ``fcos``; backbone: ``resnet18`` (FPN, any arch) or
            ``mobilenet_v3_large`` (FPN, fasterrcnn only).
        image_size: the model's internal resize (``min_size = max_size``): keep it at the data resolution,
            torchvision's default of 800 px would upsample small renders.
        anchor_sizes: one size per FPN level (5 levels).
    """
    from torchvision.models import detection as det
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    size = {"min_size": int(image_size), "max_size": int(image_size)}
    if arch not in ("fasterrcnn", "retinanet", "fcos"):
        raise ConfigError(f"model.net.arch: expected 'fasterrcnn', 'retinanet' or 'fcos', got {arch!r}")
    if backbone == "mobilenet_v3_large":
        if arch != "fasterrcnn":
            raise ConfigError("model.net.backbone 'mobilenet_v3_large' is only wired for arch 'fasterrcnn'")
        if len(anchor_sizes) != 5:
            raise ConfigError(f"model.net.anchor_sizes: need 5 sizes, got {list(anchor_sizes)}")
        model = det.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                                      **size)
        # same number of anchors per location (5 sizes x 3 ratios) as torchvision's, sized for small images
        model.rpn.anchor_generator = AnchorGenerator((tuple(anchor_sizes),) * 3, ((0.5, 1.0, 2.0),) * 3)
        return model
    if backbone != "resnet18":
        raise ConfigError(f"model.net.backbone: expected 'resnet18' or 'mobilenet_v3_large', got {backbone!r}")
    if len(anchor_sizes) != 5:
        raise ConfigError(f"model.net.anchor_sizes: need 5 sizes (one per FPN level), got {list(anchor_sizes)}")
    if arch == "fasterrcnn":
        bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=trainable_layers)
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        return det.FasterRCNN(bb, num_classes=num_classes, rpn_anchor_generator=anchors, **size)
    bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=trainable_layers,
                             returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    if arch == "retinanet":
        anchors = AnchorGenerator(tuple((s, int(s * 1.26), int(s * 1.59)) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        return det.RetinaNet(bb, num_classes=num_classes, anchor_generator=anchors, **size)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((1.0,),) * 5)
    return det.FCOS(bb, num_classes=num_classes, anchor_generator=anchors, **size)


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
    """

    def __init__(self, net, num_classes: int, optimizer: Callable | None = None, scheduler: Callable | None = None):
        super().__init__()
        if int(num_classes) < 2:
            raise ConfigError(f"model.num_classes must be >= 2 (background + classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.net = net if isinstance(net, nn.Module) else net(num_classes=self.num_classes)
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self._val_metrics: dict[str, dict] = {}  # key -> name -> Metric (created lazily, not submodules)

    # --- implemented by each task (SegmentationTask, DetectionTask)
    @abstractmethod
    def _make_metrics(self) -> dict:
        """Fresh torchmetrics objects, name -> Metric."""

    @abstractmethod
    def _update_metrics(self, metrics: dict, batch) -> None:
        """Update ``metrics`` with the model's predictions on ``batch``."""

    def _compute_metrics(self, metrics: dict) -> dict[str, float]:
        """Synchronised (under DDP) values; every rank must call this for the same keys in the same order."""
        return {name: float(m.compute()) for name, m in metrics.items()}

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

    @staticmethod
    def _updated(metrics: dict) -> bool:
        return any(m.update_count > 0 for m in metrics.values())

    def _metrics_for(self, key: str) -> dict:
        if key not in self._val_metrics:
            self._val_metrics[key] = {k: m.to(self.device) for k, m in self._make_metrics().items()}
        return self._val_metrics[key]

    def _expected_keys(self) -> list[str]:
        """Metric keys every rank computes, in one order (collectives inside ``compute`` must match)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "slice_names"):
            return sorted(self._val_metrics)
        keys = ["all", *(f"slice:{n}" for n in dm.slice_names)]
        if getattr(dm, "real_val", None) is not None:
            keys.append("real")
        return keys

    @override
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, Batch):
            self._update_metrics(self._metrics_for("all"), batch)
            for sid in batch.slice_id.unique().tolist():
                sub = batch if (batch.slice_id == sid).all() else batch.select(batch.slice_id == sid)
                self._update_metrics(self._metrics_for(f"slice:{batch.slice_names[sid]}"), sub)
        else:
            self._update_metrics(self._metrics_for("real"), batch)

    @override
    def on_validation_epoch_end(self) -> None:
        values: dict[str, float] = {}
        per_slice: dict[str, dict[str, float]] = {}
        keys = self._expected_keys()
        # A key no rank has seen (e.g. limit_val_batches cut the suites) is skipped; the flags are summed over
        # ranks first so every rank computes (and synchronises) the same keys.
        seen = torch.tensor([float(k in self._val_metrics and self._updated(self._val_metrics[k])) for k in keys],
                            device=self.device)
        if self._trainer is not None:
            seen = self.trainer.strategy.reduce(seen, reduce_op="sum")
        for key, flag in zip(keys, seen.tolist()):
            if flag == 0:
                continue
            metrics = self._metrics_for(key)
            with warnings.catch_warnings():  # a rank may hold no sample of a slice; compute still syncs
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                out = self._compute_metrics(metrics)
            for m in metrics.values():
                m.reset()
            for name, v in out.items():
                if key == "all":
                    values[f"val/{name}"] = v
                elif key == "real":
                    values[f"val/{name}/real"] = v
                else:
                    slice_name = key[len("slice:"):]
                    values[f"val/{name}/{slice_key(slice_name)}"] = v
                    per_slice.setdefault(name, {})[slice_name] = v
        for name, by_slice in per_slice.items():
            finite = [v for v in by_slice.values() if math.isfinite(v) and v >= 0]
            if finite:
                values[f"val/{name}_worst"] = min(finite)
                values[f"val/{name}_slice_mean"] = sum(finite) / len(finite)
        self.last_val_metrics = values
        self.log_dict(values, sync_dist=False, batch_size=1)


# ---------------------------------------------------------------------------------------------- segmentation
class SegmentationTask(SliceTask):
    """Semantic segmentation of ``batch.semantic`` (e.g. defect segmentation on the ``defects`` scenario).

    Args:
        target: ``"semantic"`` (classes 0..C) or ``"foreground"`` (0 background / 1 anything, num_classes 2).
        ce_weight, dice_weight: training loss ``ce_weight * CE + dice_weight * (1 - soft foreground Dice)``.
        class_weights: optional CE class weights [num_classes] (background is usually > 95 % of pixels).
        miner_loss: per-image loss for the miner, ``"dice"`` (1 - soft foreground Dice) or ``"ce"`` (mean CE).

    Metrics (torchmetrics, accumulated over the whole suite): ``iou`` (``MulticlassJaccardIndex``, macro over
    the classes present), ``dice`` (Dice of the foreground mask, i.e. ``BinaryF1Score`` of defect/object vs
    background pixels) and ``fg_iou`` (``BinaryJaccardIndex`` of the foreground mask).
    """

    def __init__(self, net, num_classes: int, target: str = "semantic", ce_weight: float = 1.0,
                 dice_weight: float = 1.0, class_weights=None, miner_loss: str = "dice",
                 optimizer: Callable | None = None, scheduler: Callable | None = None):
        if target not in ("semantic", "foreground"):
            raise ConfigError(f"model.target must be 'semantic' or 'foreground', got {target!r}")
        if miner_loss not in ("dice", "ce"):
            raise ConfigError(f"model.miner_loss must be 'dice' or 'ce', got {miner_loss!r}")
        num_classes = 2 if target == "foreground" else num_classes
        super().__init__(net, num_classes, optimizer, scheduler)
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

    def _make_metrics(self) -> dict:
        return {
            "iou": MulticlassJaccardIndex(self.num_classes, average="macro", validate_args=False),
            "dice": BinaryF1Score(validate_args=False),
            "fg_iou": BinaryJaccardIndex(validate_args=False),
        }

    def _update_metrics(self, metrics: dict, batch) -> None:
        labels = self._labels(batch)
        pred = self(batch.image).argmax(1)
        metrics["iou"].update(pred, labels)
        metrics["dice"].update((pred > 0).long(), (labels > 0).long())
        metrics["fg_iou"].update((pred > 0).long(), (labels > 0).long())

    @torch.no_grad()
    def per_sample_loss(self, batch) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            labels = self._labels(batch)
            logits = self(batch.image.to(self.device))
            labels = labels.to(self.device)
            if self.miner_loss == "dice":
                return 1.0 - self._soft_dice(logits, labels)
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

    Metrics: torchmetrics ``MeanAveragePrecision(backend="pycocotools")`` ``map`` and ``map_50`` (boxes).
    """

    def __init__(self, net, num_classes: int, min_visible_pixels: int = 4, miner_loss: str = "loss",
                 score_threshold: float = 0.3, optimizer: Callable | None = None, scheduler: Callable | None = None):
        if miner_loss not in ("loss", "f1"):
            raise ConfigError(f"model.miner_loss must be 'loss' or 'f1', got {miner_loss!r}")
        super().__init__(net, num_classes, optimizer, scheduler)
        self.min_visible_pixels, self.miner_loss, self.score_threshold = min_visible_pixels, miner_loss, score_threshold

    def _inputs(self, batch) -> tuple[list[Tensor], list[dict]]:
        images, targets = batch.to_torchvision(self.min_visible_pixels) if isinstance(batch, Batch) \
            else batch.to_torchvision()
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

    def _make_metrics(self) -> dict:
        from torchmetrics.detection import MeanAveragePrecision

        return {"map": MeanAveragePrecision(backend="pycocotools", iou_type="bbox")}

    def _update_metrics(self, metrics: dict, batch) -> None:
        images, targets = self._inputs(batch)
        preds = self.net(images)
        metrics["map"].update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], targets)

    def _compute_metrics(self, metrics: dict) -> dict[str, float]:
        out = metrics["map"].compute()
        return {"map": float(out["map"]), "map_50": float(out["map_50"])}

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
