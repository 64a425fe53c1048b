"""YOLO in the Ultralytics layout: ``yolo/images/train/``, ``yolo/labels/train/`` and ``yolo/data.yaml``.

One ``.txt`` per image (empty when nothing is annotated), one line per annotated instance with at least one
visible pixel: ``cls cx cy w h`` normalised by the image size (the tight box, pixel edges), with
``cls = class id - 1``. With ``yolo_polygons`` the lines are Ultralytics segmentation lines
``cls x1 y1 ... xn yn``: the outer contour of the instance mask through the centres of its boundary pixels
(OpenCV ``findContours``); an instance split into several pieces by occlusion becomes one polygon whose pieces
are joined by zero-width bridges between their closest points, and an instance too thin for a polygon
gets its box's corners. ``data.yaml`` lists the single split as both ``train`` and ``val`` (export a second
dataset with ``--start`` for validation and point ``val`` at it).
"""

from __future__ import annotations

import cv2
import numpy as np
import yaml

from synth_torch.export.base import FormatWriter, Sink
from synth_torch.export.sample import Sample

IMAGES = "yolo/images/train"
LABELS = "yolo/labels/train"
DATA_YAML = "yolo/data.yaml"


def _join_pieces(pieces: list[np.ndarray]) -> np.ndarray:
    """One polygon through several closed contours: each piece is entered and left at its point closest to the
    polygon so far (a zero-width bridge), largest pieces first."""
    pieces = sorted(pieces, key=lambda p: -len(p))
    poly = pieces[0]
    for piece in pieces[1:]:
        d = ((poly[:, None, :] - piece[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        piece = np.roll(piece, -int(j), axis=0)
        poly = np.concatenate((poly[: i + 1], piece, piece[:1], poly[i:]))
    return poly


def mask_polygon(mask: np.ndarray, box) -> np.ndarray:
    """[P, 2] polygon (x, y) in continuous pixel coordinates (pixel edges at integers) around a bool mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pieces = [c.reshape(-1, 2).astype(np.float64) + 0.5 for c in contours]  # OpenCV: integers at pixel centres
    poly = _join_pieces(pieces) if pieces else np.zeros((0, 2))
    if len(np.unique(poly, axis=0)) < 3:  # a pixel or a line of pixels: no polygon, use the box's corners
        x0, y0, x1, y1 = (float(v) for v in box)
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return poly


class YoloWriter(FormatWriter):
    name = "yolo"

    def write(self, sample: Sample, sink: Sink) -> None:
        lay = self.layout
        W, H = lay.width, lay.height
        lines = []
        for slot in sample.annotated.tolist():
            if sample.is_hidden(slot):
                continue
            cls = int(sample.labels[slot]) - 1
            x0, y0, x1, y1 = (float(v) for v in sample.boxes[slot])
            if lay.options.yolo_polygons:
                poly = mask_polygon(sample.mask(slot), sample.boxes[slot]) / np.array([W, H])
                lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in poly.reshape(-1).tolist()))
            else:
                lines.append(f"{cls} {(x0 + x1) / 2 / W:.6f} {(y0 + y1) / 2 / H:.6f} {(x1 - x0) / W:.6f} "
                             f"{(y1 - y0) / H:.6f}")
        sink.write(f"{IMAGES}/{sample.stem}.png", sample.image_png)
        sink.write(f"{LABELS}/{sample.stem}.txt", "".join(line + "\n" for line in lines).encode())

    def finalize(self, chunks: list[dict], sink: Sink) -> dict:
        lay = self.layout
        header = (f"# synth-torch export of scenario {lay.scenario!r} ({lay.scenario_digest}); see ../manifest.json\n"
                  f"# class ids are synth-torch class ids - 1\n")
        body = {"train": "images/train", "val": "images/train", "nc": len(lay.class_names),
                "names": {i: name for i, name in enumerate(lay.class_names)}}
        sink.write(DATA_YAML, (header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)).encode())
        return {"task": "segment" if lay.options.yolo_polygons else "detect"}
