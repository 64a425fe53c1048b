"""The model zoo the tasks train: a U-Net sized by ``width`` and ``depth`` (from a few thousand parameters for CPU
tests to several million for studies) and torchvision segmentation and detection models built from scratch.

Nothing here downloads weights: every torchvision model is built with ``weights=None, weights_backbone=None``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synth_torch.scenario.config import ConfigError

__all__ = ["TinyUNet", "detection_model", "segmentation_model"]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """A U-Net with ``width * 2**d`` channels at depth ``d``: width 4, depth 2 for CPU tests (8 k parameters),
    the default width 16, depth 3 (0.5 M) for CPU runs, width 32, depth 4 (7.8 M) for studies.

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
                    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128), trainable_layers: int = 5,
                    options: dict | None = None) -> nn.Module:
    """A torchvision detector built from scratch (no downloads) for small images.

    Args:
        num_classes: including background.
        arch: ``fasterrcnn``, ``retinanet`` or ``fcos``; backbone: ``resnet18`` (FPN, any arch) or
            ``mobilenet_v3_large`` (FPN, fasterrcnn only).
        image_size: the model's internal resize (``min_size = max_size``): keep it at the data resolution,
            torchvision's default of 800 px would upsample small renders.
        anchor_sizes: one size per FPN level (5 levels).
        options: further keyword arguments of the torchvision detector (``FasterRCNN``, ``RetinaNet``,
            ``FCOS``), e.g. ``box_batch_size_per_image`` and ``rpn_post_nms_top_n_train``: Faster R-CNN's
            defaults (512 sampled RoIs through a 12.8 M-parameter box head per image) dominate a CPU step.
    """
    from torchvision.models import detection as det
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    size = {"min_size": int(image_size), "max_size": int(image_size), **dict(options or {})}
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
