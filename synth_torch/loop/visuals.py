"""Pictures of what a model sees and predicts, and the one way they reach every logger.

* :func:`label_tile`: one sample with its labels drawn (instance masks, tight boxes, class names that stay readable
  at small resolutions, keypoints), optionally beside depth, instance and normals panels, under a title bar (its
  slice). :func:`tile_grid` lays tiles out without empty cells. ``synth-torch preview`` and the
  :class:`~synth_torch.loop.monitor.TrainingMonitor` draw with these.
* :func:`prediction_grid`: images with the ground truth on the left and the prediction on the right
  (segmentation: the foreground mask in green and red; detection: boxes, ground truth in green, predictions above
  ``score_threshold`` in red).
* :func:`log_image`: a uint8 picture [3, H, W] to any Lightning logger: wandb (as bytes, so it is not cast to
  black), TensorBoard, MLflow (an artifact) or, for the others (CSV), a PNG under the logger's folder.

Every picture is a uint8 image [3, H, W] that PNG writers and loggers take as it is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks, make_grid

__all__ = ["PANELS", "label_tile", "log_image", "prediction_grid", "tile_grid"]

GT_COLOR, PRED_COLOR = (40, 220, 80), (235, 50, 50)
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
PANELS = ("labels", "image", "depth", "instance", "normals")
DISPLAY_SIZE = 256  # tiles are enlarged (nearest) to at least this many pixels so labels and titles are readable
TITLE_HEIGHT = 16


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def display_scale(height: int, width: int, target: int = DISPLAY_SIZE) -> int:
    """Integer enlargement that brings an image of this size to at least ``target`` pixels on its long side."""
    return max(1, math.ceil(target / max(height, width)))


def _enlarge(image: Tensor, scale: int) -> Tensor:
    return image.repeat_interleave(scale, -2).repeat_interleave(scale, -1) if scale > 1 else image


def layout_labels(boxes: list[tuple[float, float, float, float]], sizes: list[tuple[int, int]], height: int,
                  width: int) -> list[tuple[int, int, int, int] | None]:
    """Where to put label ``k`` of size ``sizes[k]`` (w, h) for box ``boxes[k]`` (x0, y0, x1, y1) in an image of
    ``height`` x ``width``: just above the box's top-left corner, else inside it, else just below it, whichever
    comes first without covering a label already placed (clamped to the image); None when none fits."""
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int, int, int] | None] = []
    for (x0, y0, x1, y1), (tw, th) in zip(boxes, sizes):
        spot = None
        for cx, cy in ((x0, y0 - th), (x0, y0), (x0, y1)):
            cx, cy = int(min(max(cx, 0), max(width - tw, 0))), int(min(max(cy, 0), max(height - th, 0)))
            rect = (cx, cy, cx + tw, cy + th)
            if not any(rect[0] < p[2] and p[0] < rect[2] and rect[1] < p[3] and p[1] < rect[3] for p in placed):
                spot = rect
                placed.append(rect)
                break
        out.append(spot)
    return out


def _draw_text(image: Tensor, items: list[tuple[tuple[float, float, float, float], str, tuple]]) -> Tensor:
    """Labels on filled boxes of their colour, placed by :func:`layout_labels` (so they never overlap)."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(pil)
    font = _font()
    bboxes = [draw.textbbox((0, 0), text, font=font) for _, text, _ in items]
    sizes = [(r - l + 4, b - t + 3) for l, t, r, b in bboxes]
    spots = layout_labels([box for box, _, _ in items], sizes, image.shape[1], image.shape[2])
    for (_, text, color), (left, top, _, _), spot in zip(items, bboxes, spots):
        if spot is None:
            continue
        draw.rectangle(spot, fill=color)
        light = sum(color) > 3 * 150
        draw.text((spot[0] + 2 - left, spot[1] + 1 - top), text, fill=(0, 0, 0) if light else (255, 255, 255),
                  font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def _colorize(values: Tensor, valid: Tensor) -> Tensor:
    """uint8 [3, H, W] of ``values`` [H, W] through matplotlib's viridis, black where not ``valid``."""
    from matplotlib import colormaps

    v = values.float()
    lo, hi = (v[valid].min(), v[valid].max()) if valid.any() else (v.new_tensor(0.0), v.new_tensor(1.0))
    t = ((v - lo) / (hi - lo).clamp_min(1e-9)).clamp(0, 1)
    rgb = torch.from_numpy(colormaps["viridis"](t.numpy())[..., :3]).float()
    rgb = torch.where(valid[..., None], rgb, torch.zeros(3))
    return (rgb * 255).round().to(torch.uint8).permute(2, 0, 1)


def _panel(batch, index: int, kind: str, scale: int) -> Tensor:
    """One panel of sample ``index`` of a :class:`~synth_torch.data.Batch`, enlarged by ``scale``."""
    image = _to_uint8(batch.image[index])
    if kind == "image":
        return _enlarge(image, scale)
    if kind == "depth":
        depth = batch.depth[index, 0].cpu()
        return _enlarge(_colorize(-depth, depth > 0), scale)  # near is bright
    if kind == "normals":
        n = batch.normals[index].cpu().float()
        covered = n.abs().sum(0) > 0
        return _enlarge(((n * 0.5 + 0.5) * 255 * covered).round().clamp(0, 255).to(torch.uint8), scale)
    instance = batch.instance[index].cpu().long()
    if kind == "instance":
        palette = torch.tensor([(0, 0, 0)] + PALETTE, dtype=torch.uint8)
        ids = torch.where(instance > 0, (instance - 1) % len(PALETTE) + 1, 0)
        return _enlarge(palette[ids].permute(2, 0, 1).contiguous(), scale)
    # labels: masks, boxes, keypoints at display size, then the names
    keep = (batch.valid[index] & (batch.visible_pixels[index] > 0)).nonzero().squeeze(1).cpu()
    image = _enlarge(image, scale)
    if keep.numel() == 0:
        return image
    colors = [PALETTE[int(k) % len(PALETTE)] for k in keep]
    masks = _enlarge(instance[None] == (keep + 1)[:, None, None], scale)
    image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colors)
    boxes = batch.boxes[index, keep].cpu().float() * scale
    image = draw_bounding_boxes(image, boxes, colors=colors, width=max(1, scale // 2))
    kp = batch.keypoints[index, keep].cpu().float()
    for k, color in enumerate(colors):  # one call per instance: each has its own colour
        image = draw_keypoints(image, kp[k:k + 1, :, :2] * scale, colors=color, radius=max(1, scale),
                               visibility=kp[k:k + 1, :, 2] == 2)
    names = [batch.class_names[int(c) - 1] if 0 < int(c) <= len(batch.class_names) else str(int(c))
             for c in batch.labels[index, keep]]
    return _draw_text(image, [(tuple(b.tolist()), n, c) for b, n, c in zip(boxes, names, colors)])


def title_bar(tile: Tensor, text: str) -> Tensor:
    """``tile`` [3, H, W] under a dark bar with ``text``."""
    bar = torch.full((3, TITLE_HEIGHT, tile.shape[-1]), 32, dtype=torch.uint8)
    bar = _draw_text(bar, [((0.0, 0.0, 0.0, 0.0), text, (32, 32, 32))])
    return torch.cat((bar, tile), 1)


def label_tile(batch, index: int, panels: tuple[str, ...] = ("labels",), title: str | None = None,
               scale: int | None = None) -> Tensor:
    """uint8 [3, H', W'] of sample ``index`` of a synthetic ``Batch``: ``panels`` (from :data:`PANELS`) side by
    side, enlarged by ``scale`` (default: to at least ``DISPLAY_SIZE`` px), under a title bar (default: the
    sample's slice; ``""`` for none)."""
    bad = [p for p in panels if p not in PANELS]
    if bad or not panels:
        raise ValueError(f"panels must be a non-empty list of {PANELS}, got {list(panels)}")
    H, W = batch.image.shape[-2:]
    scale = display_scale(H, W) if scale is None else scale
    gap = torch.full((3, H * scale, 2), 255, dtype=torch.uint8)
    parts = []
    for p in panels:
        parts += [_panel(batch, index, p, scale), gap]
    tile = torch.cat(parts[:-1], 2)
    if title is None:
        sid = int(batch.slice_id[index])
        title = batch.slice_names[sid] if sid < len(batch.slice_names) else f"slice {sid}"
    return title_bar(tile, title) if title else tile


def grid_columns(n: int, aspect: float = 1.0) -> int:
    """Columns of a grid of ``n`` tiles of width/height ``aspect`` with no empty cell: the divisor of ``n`` that
    makes the grid closest to square (ties: more columns)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d * aspect / (n // d))), -d))


def tile_grid(tiles: list[Tensor], columns: int | None = None, padding: int = 4) -> Tensor:
    """uint8 [3, H', W'] grid of equally sized tiles, ``columns`` per row (default: :func:`grid_columns`, so every
    cell holds a tile)."""
    if not tiles:
        raise ValueError("tile_grid needs at least one tile")
    columns = columns or grid_columns(len(tiles), tiles[0].shape[2] / tiles[0].shape[1])
    return make_grid(torch.stack(tiles), nrow=columns, padding=padding, pad_value=255)


def log_image(logger, key: str, image: Tensor, step: int, caption: str | None = None) -> None:
    """Send a uint8 picture [3, H, W] to one Lightning ``logger`` (see the module docstring)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    from synth_torch.fileio import save_png_atomic

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"log_image takes a uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    image = image.cpu()
    if isinstance(logger, WandbLogger):
        logger.log_image(key, images=[image.permute(1, 2, 0).numpy()], step=step,
                         **({"caption": [caption]} if caption else {}))
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, global_step=step, dataformats="CHW")
        if caption:
            logger.experiment.add_text(f"{key}/caption", caption, global_step=step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, image.permute(1, 2, 0).numpy(),
                                    artifact_file=f"{key}/step_{step:06d}.png")
    elif getattr(logger, "log_dir", None):
        folder = Path(logger.log_dir) / "images" / key
        folder.mkdir(parents=True, exist_ok=True)
        save_png_atomic(image, folder / f"step_{step:06d}.png")


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
