"""COCO instances: ``coco/annotations/instances.json``, ``coco/images/``, and 16-bit PNG side files.

* ``images[]``: ``id`` = sample index + 1, ``file_name`` relative to ``coco/images/`` (as in COCO),
  ``instance_file`` and ``depth_file`` relative to ``coco/`` (16-bit PNGs: instance ``slot + 1`` and 0 for
  background; depth in units of ``depth_scale`` metres, 0 where no surface), plus ``sample_index``,
  ``sample_id`` and ``slice``.
* ``annotations[]``: ``id`` = sample index x slots + slot + 1, ``bbox`` xywh (the tight box, pixel edges, as
  pycocotools derives it from the mask), ``area`` (visible pixels, a float), ``iscrowd`` 0, ``segmentation``
  compressed RLE (pycocotools), ``keypoints`` ``[x, y, v] * K`` in COCO's pixel-index coordinates (our
  continuous coordinates minus 0.5; v: 0 outside the image, 1 occluded, 2 visible; x = y = 0 when v = 0),
  ``num_keypoints``, and ``instance_id``, ``amodal_bbox`` (xywh, continuous, may leave the image),
  ``visible_fraction``.
* ``categories[]``: ``id`` = class id, ``supercategory`` ``object`` or ``defect``, ``keypoints`` (8 box
  corners for objects, one centre for defects) and ``skeleton`` (the 12 box edges, 1-based).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from synth_torch.export._io import dumps
from synth_torch.export.base import FormatWriter, Sink
from synth_torch.export.sample import Sample

CORNER_NAMES = tuple("".join(f"{'+' if (k >> bit) & 1 else '-'}{axis}" for bit, axis in enumerate("xyz"))
                     for k in range(8))
BOX_SKELETON = tuple([a + 1, b + 1] for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1)
ANNOTATIONS = "coco/annotations/instances.json"
IMAGES = "coco/images"


def _r(v: float, digits: int = 3) -> float:
    return round(float(v), digits)


def clipped_box(box, width: int, height: int) -> list[float]:
    """xyxy clipped to the image [0, W] x [0, H] (pixel edges)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return [x0, y0, max(x1, x0), max(y1, y0)]


def xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [_r(x0), _r(y0), _r(x1 - x0), _r(y1 - y0)]


class CocoWriter(FormatWriter):
    name = "coco"

    def write(self, sample: Sample, sink: Sink) -> dict:
        lay = self.layout
        sink.write(f"{IMAGES}/{sample.stem}.png", sample.image_png)
        sink.write(f"coco/instance/{sample.stem}.png", sample.instance_png)
        sink.write(f"coco/depth/{sample.stem}.png", sample.depth_png)
        image = {"id": sample.index + 1, "file_name": f"{sample.stem}.png", "width": lay.width, "height": lay.height,
                 "instance_file": f"instance/{sample.stem}.png", "depth_file": f"depth/{sample.stem}.png",
                 "depth_scale": lay.options.depth_scale, "sample_index": sample.index, "sample_id": sample.sample_id,
                 "slice": sample.slice}
        slots = len(sample.valid)
        annotations = []
        for slot in sample.annotated.tolist():
            label = int(sample.labels[slot])
            hidden = sample.is_hidden(slot)
            if hidden:
                bbox = clipped_box(sample.amodal_boxes[slot], lay.width, lay.height)
                mask = np.zeros((lay.height, lay.width), dtype=np.uint8)
            else:
                bbox = sample.boxes[slot]
                mask = sample.mask(slot).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(mask))
            kp = sample.keypoints[slot]
            if label > lay.num_categories:  # defects: one keypoint, the centre
                kp = kp[:1]
            keypoints = []
            for x, y, v in kp.tolist():
                keypoints += [_r(x - 0.5), _r(y - 0.5), int(v)] if v > 0 else [0, 0, 0]
            amodal = sample.amodal_boxes[slot]
            annotations.append({
                "id": sample.index * slots + slot + 1, "image_id": sample.index + 1, "category_id": label,
                "bbox": xywh(bbox), "area": 0.0 if hidden else float(sample.visible_pixels[slot]), "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "keypoints": keypoints, "num_keypoints": int((kp[:, 2] > 0).sum()), "instance_id": slot + 1,
                "amodal_bbox": xywh(amodal), "visible_fraction": _r(sample.visible_fraction[slot], 4)})
        return {"image": image, "annotations": annotations}

    def categories(self) -> list[dict]:
        lay = self.layout
        out = []
        for c, name in enumerate(lay.class_names, start=1):
            obj = c <= lay.num_categories
            out.append({"id": c, "name": name, "supercategory": "object" if obj else "defect",
                        "keypoints": list(CORNER_NAMES) if obj else ["center"],
                        "skeleton": [list(e) for e in BOX_SKELETON] if obj else []})
        return out

    def finalize(self, chunks: list[dict], sink: Sink) -> dict:
        lay = self.layout
        images, annotations = [], []
        for chunk in chunks:
            for item in chunk["items"]:
                images.append(item["image"])
                annotations += item["annotations"]
        doc = {
            # no creation date: every data file is a pure function of the settings, so the content digest
            # of two runs of one command agrees (the manifest records when it was made)
            "info": {"description": f"synth-torch export of scenario {lay.scenario!r} ({lay.scenario_digest}); "
                                    f"see ../../manifest.json", "version": lay.scenario_digest,
                     "contributor": "synth-torch", "url": ""},
            "licenses": [],
            "categories": self.categories(),
            "images": images,
            "annotations": annotations,
        }
        sink.write(ANNOTATIONS, dumps(doc))
        return {"images": len(images), "annotations": len(annotations)}
