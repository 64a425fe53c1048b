"""CenterNet (``detection_model(arch="centernet")``): torchvision's detector interface, its target encoding
against its decoding on boxes placed by hand, its Gaussian radius against box IoU, and that it learns.
DetectionTask with it: tests/loop/test_datamodule.py."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from synth_torch.loop.models import CenterNet, detection_model
from synth_torch.scenario.config import ConfigError

BOXES = [  # (image, label, xyxy in input pixels): pixel edges and fractional, overlapping, touching the border
    (0, 1, (3.0, 4.0, 19.0, 14.0)),
    (0, 2, (10.5, 8.25, 30.0, 29.5)),
    (0, 1, (40.0, 40.0, 64.0, 52.0)),
    (1, 3, (0.0, 0.0, 9.0, 7.0)),
    (1, 3, (12.0, 2.0, 20.0, 10.0)),
]


def _targets(n_images: int = 3) -> list[dict]:
    out = []
    for i in range(n_images):  # image 2 has no boxes
        rows = [(label, box) for image, label, box in BOXES if image == i]
        out.append({"boxes": torch.tensor([box for _, box in rows], dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor([label for label, _ in rows], dtype=torch.int64)})
    return out


def _model(**kw) -> CenterNet:
    torch.manual_seed(0)
    return detection_model(4, arch="centernet", options={"width": 4, "depth": 2, "stride": 2, **kw})


def test_train_mode_returns_finite_losses_also_for_images_without_boxes():
    model = _model().train()
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    losses = model(images, _targets())
    assert set(losses) == {"heatmap", "size", "offset"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    empty = {k: float(v.detach()) for k, v in model(images[2:], _targets()[2:]).items()}
    assert empty["heatmap"] > 0 and empty["size"] == empty["offset"] == 0


def test_eval_mode_returns_sorted_detections_in_the_image():
    model = _model(max_detections=7, score_threshold=0.0).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 32, 48) for _ in range(2)])
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (7, 4) and det["scores"].shape == det["labels"].shape == (7,)
        assert det["boxes"].dtype == det["scores"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 48).all() and (b[:, 3] <= 32).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("rule", ["iou", "box"])
def test_decoding_the_encoded_targets_gives_the_boxes_back(stride, rule):
    """The targets as a perfect network output (heatmap logits from the target heatmap, size and offset at the
    centres) decode to the boxes placed by hand, with their labels, and nothing else above the threshold."""
    model = _model(stride=stride, radius_rule=rule).eval()
    targets = _targets()
    t = model.encode(targets, (64 // stride, 64 // stride))
    assert t.heatmap.shape == (3, 3, 64 // stride, 64 // stride) and t.label.tolist() == [0, 1, 0, 2, 2]
    out = torch.zeros(3, 3 + 4, 64 // stride, 64 // stride)
    out[:, :3] = torch.logit(t.heatmap, eps=1e-6)
    out[t.image, 3:5, t.y, t.x] = t.size
    out[t.image, 5:, t.y, t.x] = t.offset
    for i, (det, target) in enumerate(zip(model.decode(out), targets)):
        confident = det["scores"] > 0.5
        assert int(confident.sum()) == len(target["labels"]), i
        if len(target["labels"]):
            iou = box_iou(target["boxes"], det["boxes"][confident])
            best = iou.argmax(1)
            assert (iou.max(1).values > 0.9).all(), (i, iou)
            assert torch.equal(det["labels"][confident][best], target["labels"]), i


def test_heatmap_peaks_at_the_centre_cell():
    model = _model(stride=4)
    t = model.encode(_targets(), (16, 16))
    # box 1 of image 0: centre (20.25, 18.875) px -> cell (x 5, y 4), offset (0.0625, 0.71875), size (4.875, 5.3125)
    assert (t.x[1], t.y[1]) == (5, 4) and float(t.heatmap[0, 1, 4, 5]) == 1.0
    torch.testing.assert_close(t.offset[1], torch.tensor([0.0625, 0.71875]))
    torch.testing.assert_close(t.size[1], torch.tensor([4.875, 5.3125]))
    assert int((t.heatmap == 1).sum()) == len(BOXES) and float(t.heatmap[2].sum()) == 0


def test_box_rule_spreads_over_0_27_of_the_box_each_way():
    """TTFNet's elliptical Gaussian: radii 0.54 * (w, h) / 2 cells, standard deviation (2 r + 1) / 6."""
    model = _model(stride=1, radius_rule="box")
    t = model.encode([{"boxes": torch.tensor([[10.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([2])}], (64, 64))
    heat = t.heatmap[0, 1]
    assert (t.x.item(), t.y.item()) == (20, 25)
    assert int((heat[25] > 0).sum()) == 2 * 5 + 1 and int((heat[:, 20] > 0).sum()) == 2 * 2 + 1  # r 5.4, 2.7
    sigma = (2 * 5.4 + 1) / 6
    torch.testing.assert_close(heat[25, 21], torch.tensor(-1 / (2 * sigma**2)).exp())


@pytest.mark.parametrize("min_overlap", [0.5, 0.7, 0.9])
def test_iou_radius_keeps_min_overlap_for_a_diagonal_shift(min_overlap):
    """A box shifted by the radius in x and y has IoU ``min_overlap`` with the original (torchvision's box_iou)."""
    model = _model(min_overlap=min_overlap)
    size = torch.tensor([[10.0, 10.0], [4.0, 20.0], [33.0, 7.5]])
    r = model._radii(size)[:, 0]
    boxes = torch.cat([torch.zeros_like(size), size], 1)
    shifted = boxes + torch.stack([r, r, r, r], 1)
    torch.testing.assert_close(box_iou(boxes, shifted).diagonal(), torch.full((3,), min_overlap))


def test_bad_inputs_and_options_raise_naming_them():
    model = _model()
    with pytest.raises(ValueError, match="one size"):
        model([torch.rand(3, 32, 32), torch.rand(3, 32, 64)], _targets(2))
    with pytest.raises(ValueError, match="one target per image"):
        model.train()([torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        model([torch.rand(3, 32, 32)], [{"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([4])}])
    for options, key in [({"widht": 8}, "widht"), ({"radius_rule": "disk"}, "options.radius_rule"),
                         ({"stride": 3}, "options.stride"), ({"min_overlap": 1.5}, "options.min_overlap"),
                         ({"max_detections": 0}, "options.max_detections")]:
        with pytest.raises(ConfigError, match=key):
            detection_model(4, arch="centernet", options=options)


def _squares(n: int = 6, size: int = 32) -> tuple[list[torch.Tensor], list[dict]]:
    """Red (label 1) and green (label 2) squares of 6-12 px on grey noise."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        im = 0.4 + 0.1 * torch.rand(3, size, size, generator=g)
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            s = int(torch.randint(6, 13, (1,), generator=g))
            x, y = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
            label = int(torch.randint(1, 3, (1,), generator=g))
            im[:, y:y + s, x:x + s] = torch.tensor([0.9, 0.1, 0.1] if label == 1 else [0.1, 0.9, 0.1])[:, None, None]
            boxes.append([x, y, x + s, y + s])
            labels.append(label)
        images.append(im)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def test_it_learns_to_find_squares():
    """It overfits six images within 150 steps: mAP@0.5 from ~0 to well above it (one thread, a few seconds)."""
    from torchmetrics.detection import MeanAveragePrecision

    images, targets = _squares()
    torch.manual_seed(0)
    model = detection_model(3, arch="centernet", options={"width": 8, "depth": 2, "stride": 2})

    def map_50() -> float:
        model.eval()
        metric = MeanAveragePrecision(backend="pycocotools")
        with torch.no_grad():
            metric.update(model(images), targets)
        return float(metric.compute()["map_50"])

    before = map_50()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        sum(model(images, targets).values()).backward()
        opt.step()
    after = map_50()
    assert before < 0.1 and after > 0.7, (before, after)
