"""Pictures of what a model sees and predicts: a grid of images with ground truth and predictions drawn over them.

Each tile shows one image twice, side by side: on the left the ground truth, on the right the prediction
(segmentation: the foreground mask in green and red; detection: boxes, ground truth in green, predictions above
``score_threshold`` in red). :func:`prediction_grid` returns a uint8 image [3, H, W] that PNG writers and
loggers (wandb, TensorBoard) take as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

__all__ = ["prediction_grid"]

GT_COLOR, PRED_COLOR = (40, 220, 80), (235, 50, 50)


def _to_uint8(image: Tensor) -> Tensor:
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.no_grad()
def _predict(task, images: Tensor):
    was_training = task.training
    task.eval()
    try:
        if hasattr(task, "target"):  # segmentation: per-pixel classes
            return task(images).argmax(1)
        return task(list(images))  # detection: torchvision's list of dicts
    finally:
        task.train(was_training)


def prediction_grid(task, batch, max_images: int = 8, score_threshold: float = 0.5) -> Tensor:
    """uint8 [3, H', W'] grid of ``batch`` (a synthetic ``Batch`` or a real one) with ground truth and the
    predictions of ``task`` (a :class:`~synth_torch.loop.tasks.SegmentationTask` or ``DetectionTask``)."""
    n = min(max_images, len(batch))
    images = batch.image[:n].to(next(task.parameters()).device)
    pred = _predict(task, images)
    tiles = []
    for i in range(n):
        base = _to_uint8(batch.image[i])
        if hasattr(task, "target"):
            gt_mask = (batch.semantic[i] > 0).cpu()
            pr_mask = (pred[i] > 0).cpu()
            left = draw_segmentation_masks(base, gt_mask[None], alpha=0.5, colors=[GT_COLOR])
            right = draw_segmentation_masks(base, pr_mask[None], alpha=0.5, colors=[PRED_COLOR])
        else:
            _, targets = batch.to_torchvision()
            gt_boxes = targets[i]["boxes"].cpu()
            keep = pred[i]["scores"] >= score_threshold
            left = draw_bounding_boxes(base, gt_boxes, colors=[GT_COLOR] * len(gt_boxes), width=1)
            boxes = pred[i]["boxes"][keep].cpu()
            right = draw_bounding_boxes(base, boxes, colors=[PRED_COLOR] * len(boxes), width=1)
        tiles.append(torch.cat((left, torch.full((3, base.shape[1], 2), 255, dtype=torch.uint8), right), 2))
    grid = make_grid(torch.stack(tiles), nrow=max(1, math.ceil(math.sqrt(n / 2))), padding=4, pad_value=255)
    scale = max(1, 128 // base.shape[1])  # small renders are enlarged (nearest) so that a person can read them
    return grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
