"""The model zoo the tasks train: a U-Net sized by ``width`` and ``depth`` (from a few thousand parameters for CPU
tests to several million for studies) and torchvision segmentation and detection models built from scratch.

Nothing here downloads weights: every torchvision model is built with ``weights=None, weights_backbone=None``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synth_torch.scenario.config import ConfigError

__all__ = ["CenterNet", "CenterTargets", "TinyUNet", "detection_model", "segmentation_model"]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """A U-Net with ``width * 2**d`` channels at depth ``d``: width 4, depth 2 for CPU tests (8 k parameters),
    the default width 16, depth 3 (0.5 M) for CPU runs, width 32, depth 4 (7.8 M) for studies. ``stride`` > 1
    stops the decoder early, so the output has ``1 / stride`` of the input's resolution.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, H and W divisible by ``2**depth``
        - output: :math:`(B, num\\_classes, H / stride, W / stride)` logits
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3, stride: int = 1):
        super().__init__()
        if stride < 1 or stride > 2**depth or stride & (stride - 1):
            raise ValueError(f"TinyUNet stride must be a power of 2 in [1, {2**depth}] (depth {depth}), got {stride}")
        top = stride.bit_length() - 1
        chans = [width * 2**d for d in range(depth + 1)]
        self.down = nn.ModuleList([_Block(in_channels, chans[0])] + [_Block(chans[d], chans[d + 1])
                                                                      for d in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[d + 1], chans[d], 2, stride=2)
                                 for d in reversed(range(top, depth))])
        self.dec = nn.ModuleList([_Block(2 * chans[d], chans[d]) for d in reversed(range(top, depth))])
        self.head = nn.Conv2d(chans[top], num_classes, 1)
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


@dataclass(frozen=True)
class CenterTargets:
    """CenterNet training targets of a batch, on the output grid (``stride`` input pixels per cell; cell
    ``(y, x)`` covers input pixels ``[x * stride, (x + 1) * stride) x [y * stride, (y + 1) * stride)``).

    Attributes:
        heatmap: :math:`(B, C, h, w)` Gaussian-splatted centres, exactly 1 at each object's centre cell.
        image, label, y, x: :math:`(N,)` int64 per object over the batch: its image, class ``0..C-1``
            (torchvision label - 1) and centre cell.
        size: :math:`(N, 2)` box width and height in cells.
        offset: :math:`(N, 2)` the centre's position inside its cell (x, y) in ``[0, 1)``.
    """

    heatmap: Tensor
    image: Tensor
    label: Tensor
    y: Tensor
    x: Tensor
    size: Tensor
    offset: Tensor


class CenterNet(nn.Module):
    """CenterNet ("Objects as Points", Zhou et al. 2019) on a :class:`TinyUNet`, with torchvision's detector
    interface: ``model(images, targets)`` in train mode returns the (weighted) losses ``heatmap`` (penalty-reduced
    focal loss, alpha 2, beta 4), ``size`` and ``offset`` (L1 at the centres); ``model(images)`` in eval mode
    returns one ``{"boxes", "scores", "labels"}`` per image. Which one is decided by ``self.training`` alone, so
    BatchNorm may be frozen in train mode (as ``DetectionTask`` does for per-image losses).

    The network's output has ``C + 4`` channels at ``1 / stride`` resolution: ``C`` heatmap logits, box width
    and height in cells, and the centre's offset in its cell (x, y). Decoding keeps the local maxima of the
    heatmap (3x3 max-pool), the top ``max_detections`` of them over all classes, and those scoring at least
    ``score_threshold``.

    Args:
        num_classes: including background (torchvision's convention); labels are ``1..num_classes-1``.
        width, depth, stride: of the :class:`TinyUNet`.
        max_detections: per image.
        score_threshold: smallest score returned.
        radius_rule: the Gaussian around each centre. ``"iou"``: isotropic, radius r the largest diagonal shift
            of the centre at which a box of the same size keeps IoU >= ``min_overlap`` with the target
            (the rule CenterNet borrows from CornerNet, solved exactly); ``"box"``: elliptical, radii ``0.54 * (w, h) / 2`` (TTFNet). The
            standard deviation is ``(2 r + 1) / 6`` per axis and the Gaussian is cut off beyond r.
        min_overlap: for ``radius_rule="iou"``.
        size_weight, offset_weight: loss weights (the heatmap's is 1).

    Shape:
        - images: a list of :math:`(3, H, W)` of one size, H and W divisible by ``2**depth``
        - targets: a list of ``{"boxes": (N, 4) xyxy float in input pixels, "labels": (N,) int64}``
        - detections: ``boxes`` :math:`(K, 4)` xyxy in input pixels, ``scores`` :math:`(K,)` descending,
          ``labels`` :math:`(K,)` int64, with :math:`K \\le` ``max_detections``
    """

    RULES = ("iou", "box")

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3, stride: int = 2, max_detections: int = 100,
                 score_threshold: float = 0.05, radius_rule: str = "iou", min_overlap: float = 0.7,
                 size_weight: float = 0.1, offset_weight: float = 1.0):
        super().__init__()
        if radius_rule not in self.RULES:
            raise ConfigError(f"radius_rule: expected one of {self.RULES}, got {radius_rule!r}")
        if not 0 < min_overlap < 1:
            raise ConfigError(f"min_overlap: expected a value in (0, 1), got {min_overlap}")
        if int(max_detections) < 1:
            raise ConfigError(f"max_detections: expected >= 1, got {max_detections}")
        try:
            self.net = TinyUNet(num_classes - 1 + 4, width=width, depth=depth, stride=stride)
        except ValueError as e:
            raise ConfigError(f"stride: {e}") from None
        self.num_classes, self.stride = num_classes - 1, stride
        self.max_detections, self.score_threshold = int(max_detections), float(score_threshold)
        self.radius_rule, self.min_overlap = radius_rule, float(min_overlap)
        self.size_weight, self.offset_weight = float(size_weight), float(offset_weight)
        with torch.no_grad():  # heatmap prior 0.1, as in CenterNet (and RetinaNet), so the focal loss starts sane
            self.net.head.bias[: self.num_classes].fill_(-math.log(9.0))

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if not images:
            raise ValueError("CenterNet needs at least one image")
        if len({tuple(im.shape) for im in images}) > 1:
            raise ValueError(f"CenterNet needs images of one size, got {sorted({tuple(im.shape) for im in images})}")
        out = self.net(torch.stack(images))
        if not self.training:
            return self.decode(out)
        if targets is None or len(targets) != len(images):
            raise ValueError(f"CenterNet in train mode needs one target per image, got "
                             f"{None if targets is None else len(targets)} for {len(images)} images")
        return self.loss(out, self.encode(targets, tuple(out.shape[-2:])))

    def _radii(self, size: Tensor) -> Tensor:
        """Gaussian radii :math:`(N, 2)` (x, y) in cells for boxes of ``size`` :math:`(N, 2)` cells."""
        if self.radius_rule == "box":
            return 0.54 * size / 2
        # (w - r)(h - r) / (2 w h - (w - r)(h - r)) >= t  <=>  r^2 - (w + h) r + w h (1 - 2t / (1 + t)) >= 0
        w, h = size.unbind(1)
        k = 2 * self.min_overlap / (1 + self.min_overlap)
        r = ((w + h) - ((w + h) ** 2 - 4 * w * h * (1 - k)).clamp(min=0).sqrt()) / 2
        return r[:, None].expand(-1, 2)

    def encode(self, targets: list[dict[str, Tensor]], grid: tuple[int, int]) -> CenterTargets:
        """The training targets of ``targets`` (input pixels, labels ``1..C``) on an output grid ``(h, w)``."""
        h, w = grid
        device = self.net.head.weight.device
        boxes = torch.cat([t["boxes"].as_subclass(Tensor).reshape(-1, 4) for t in targets]).to(device).float()
        labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device).long() - 1
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"CenterNet labels must be in 1..{self.num_classes}, got {labels.unique().add(1).tolist()}")
        image = torch.repeat_interleave(torch.arange(len(targets), device=device),
                                        torch.tensor([len(t["labels"]) for t in targets], device=device))
        cells = boxes / self.stride
        size = cells[:, 2:] - cells[:, :2]
        centre = (cells[:, :2] + cells[:, 2:]) / 2
        x = centre[:, 0].floor().clamp(0, w - 1).long()
        y = centre[:, 1].floor().clamp(0, h - 1).long()
        radius = self._radii(size)
        dx = torch.arange(w, device=device)[None, None, :] - x[:, None, None]
        dy = torch.arange(h, device=device)[None, :, None] - y[:, None, None]
        rx, ry = radius[:, 0, None, None], radius[:, 1, None, None]
        sx, sy = (2 * rx + 1) / 6, (2 * ry + 1) / 6
        blobs = torch.exp(-(dx**2 / (2 * sx**2) + dy**2 / (2 * sy**2))) * ((dx.abs() <= rx) & (dy.abs() <= ry))
        heatmap = torch.zeros(len(targets) * self.num_classes, h, w, device=device)
        heatmap.scatter_reduce_(0, (image * self.num_classes + labels)[:, None, None].expand_as(blobs), blobs, "amax")
        offset = centre - torch.stack([x, y], 1)
        return CenterTargets(heatmap.view(len(targets), self.num_classes, h, w), image, labels, y, x, size, offset)

    def loss(self, out: Tensor, targets: CenterTargets) -> dict[str, Tensor]:
        """Weighted losses of the network output ``out`` :math:`(B, C + 4, h, w)`: focal loss summed over the
        heatmap, L1 summed over the centres' size and offset, each divided by the number of objects (at least 1)."""
        C = self.num_classes
        n = max(len(targets.label), 1)
        logits, gt = out[:, :C], targets.heatmap
        p = logits.sigmoid()
        focal = torch.where(gt == 1, (1 - p) ** 2 * F.logsigmoid(logits),
                            (1 - gt) ** 4 * p**2 * F.logsigmoid(-logits))
        at = out[targets.image, C:, targets.y, targets.x]
        return {"heatmap": -focal.sum() / n,
                "size": self.size_weight * F.l1_loss(at[:, :2], targets.size, reduction="sum") / n,
                "offset": self.offset_weight * F.l1_loss(at[:, 2:], targets.offset, reduction="sum") / n}

    def decode(self, out: Tensor) -> list[dict[str, Tensor]]:
        """Detections of the network output ``out`` :math:`(B, C + 4, h, w)` (see the class docstring)."""
        C, (B, _, h, w) = self.num_classes, out.shape
        heat = out[:, :C].sigmoid()
        heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        scores, idx = heat.flatten(1).topk(min(self.max_detections, C * h * w))
        cell = idx % (h * w)
        at = out[:, C:].flatten(2).gather(2, cell[:, None].expand(-1, 4, -1))  # (B, 4, K)
        cx = (cell % w + at[:, 2]) * self.stride
        cy = (cell // w + at[:, 3]) * self.stride
        half_w, half_h = at[:, 0].clamp(min=0) * self.stride / 2, at[:, 1].clamp(min=0) * self.stride / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]) * self.stride)
        labels = idx // (h * w) + 1
        keep = scores >= self.score_threshold
        return [{"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": labels[i][keep[i]]}
                for i in range(B)]


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
                    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128), trainable_layers: int = 5,
                    options: dict | None = None) -> nn.Module:
    """A detector built from scratch (no downloads) for small images: a torchvision one or :class:`CenterNet`.

    Args:
        num_classes: including background.
        arch: ``fasterrcnn``, ``retinanet``, ``fcos`` or ``centernet`` (a :class:`TinyUNet`, the one that
            learns within a few thousand CPU steps from scratch; it uses only ``options``); backbone:
            ``resnet18`` (FPN, any torchvision arch) or ``mobilenet_v3_large`` (FPN, fasterrcnn only).
        image_size: the model's internal resize (``min_size = max_size``): keep it at the data resolution,
            torchvision's default of 800 px would upsample small renders.
        anchor_sizes: one size per FPN level (5 levels).
        options: further keyword arguments of the detector (``FasterRCNN``, ``RetinaNet``, ``FCOS``,
            :class:`CenterNet`), e.g. ``box_batch_size_per_image`` and ``rpn_post_nms_top_n_train``: Faster
            R-CNN's defaults (512 sampled RoIs through a 12.8 M-parameter box head per image) dominate a CPU step;
            CenterNet's ``width``, ``depth``, ``stride``, ``max_detections``, ``radius_rule``, ...
    """
    if arch == "centernet":
        return _centernet(num_classes, dict(options or {}))
    from torchvision.models import detection as det
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    size = {"min_size": int(image_size), "max_size": int(image_size), **dict(options or {})}
    if arch not in ("fasterrcnn", "retinanet", "fcos"):
        raise ConfigError(f"model.net.arch: expected 'fasterrcnn', 'retinanet', 'fcos' or 'centernet', got {arch!r}")
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


def _centernet(num_classes: int, options: dict) -> CenterNet:
    known = set(inspect.signature(CenterNet).parameters) - {"num_classes"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"model.net.options: unknown key(s) {unknown} for arch 'centernet', expected {sorted(known)}")
    try:
        return CenterNet(num_classes, **options)
    except ConfigError as e:
        raise ConfigError(f"model.net.options.{e}") from None
