"""Label validity and manifest integrity: the files say what the manifest says, and every label is geometrically
valid, checked with each format's own reader (pycocotools for COCO, ``webdataset`` for the shards).

``labels`` checks, per annotation:

* the COCO file loads in pycocotools; its categories are the label schema's classes, and every class id is in
  the schema (COCO, YOLO, KITTI, WebDataset);
* every box lies inside the image and has a positive area;
* the tight box equals the mask's extents (pycocotools ``toBbox`` of the RLE; in WebDataset the instance map's);
* ``area`` equals the mask's area (pycocotools ``area``), and the mask equals the instance map's pixels of that
  instance (the 16-bit side file);
* no annotation has zero visible pixels unless the export flags hidden instances (``include_hidden``);
* the formats agree: YOLO lists the same boxes as COCO, KITTI the same number of objects.

``manifest`` checks the manifest against its JSON Schema, every file hash in ``SHA256SUMS`` against the file,
that no file is missing or unlisted, the per-format file counts and bytes, and the image, slice and class
counts against the annotation files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from synth_torch.export import coco, kitti, yolo
from synth_torch.export._io import decode_png
from synth_torch.export.manifest import CHECKSUMS, MANIFEST, schema
from synth_torch.export.shards import shard_urls
from synth_torch.governance.exports import ExportView, _iter_shard
from synth_torch.governance.gates import FAIL, PASS, Findings, Gate, GateContext, GateResult


def mask_extents(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """xyxy pixel-edge extents of a bool [H, W] mask (None when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _fmt(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


class LabelValidityGate(Gate):
    name = "labels"
    title = "Label validity"
    defaults = {"box_tolerance_px": 0.001, "area_tolerance_px": 0.0, "yolo_tolerance": 2e-6,
                "kitti_tolerance_px": 0.006, "max_violations": 0}

    def check(self, ctx: GateContext) -> GateResult:
        view, found = ctx.export, Findings()
        checked: dict[str, dict] = {}
        coco_boxes = None
        if "coco" in view.formats:
            checked["coco"], coco_boxes = self._coco(view, found)
        if "yolo" in view.formats:
            checked["yolo"] = self._yolo(view, found, coco_boxes)
        if "kitti" in view.formats:
            checked["kitti"] = self._kitti(view, found, coco_boxes)
        if "webdataset" in view.formats:
            checked["webdataset"] = self._webdataset(view, found)
        annotations = sum(c.get("annotations", 0) for c in checked.values())
        figures = {"formats": checked, "annotations_checked": annotations, "violations": found.total,
                   "violations_by_check": dict(found.counts)}
        ok = found.total <= self.settings["max_violations"]
        images = max((c.get("images", 0) for c in checked.values()), default=0)
        summary = (f"{annotations} labels in {images} images x {len(checked)} formats; "
                   f"{found.total} violations" + ("" if not found.total else f" ({found.describe()})"))
        return self.result(PASS if ok else FAIL, summary, figures, found.messages)

    # ------------------------------------------------------------------ COCO
    def _coco(self, view: ExportView, found: Findings):
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO

        s = self.settings
        path = view.coco_path()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                api = COCO(str(path))
        except Exception as exc:  # any failure to load is the finding
            found.add("pycocotools", f"{path}: pycocotools cannot load it: {type(exc).__name__}: {exc}")
            return {"images": 0, "annotations": 0}, None
        schema_classes = {c["id"]: c["name"] for c in view.manifest["label_schema"]["classes"]}
        cats = {c["id"]: c["name"] for c in api.dataset.get("categories", [])}
        if cats != schema_classes:
            found.add("class_id", f"COCO categories {cats} differ from the label schema {schema_classes}")
        include_hidden = view.manifest["label_schema"]["annotated"]["include_hidden"]
        H, W = view.size
        boxes: dict[str, list] = {}
        n_ann = 0
        for image_id in sorted(api.imgs):
            im = api.imgs[image_id]
            stem = Path(im["file_name"]).stem
            where = f"coco image {im['file_name']}"
            try:
                with Image.open(view.root / coco.IMAGES / im["file_name"]) as f:
                    size = f.size
            except OSError as exc:
                found.add("image_file", f"{where}: cannot open the image: {exc}")
                size = None
            if size is not None and size != (im["width"], im["height"]) or (im["width"], im["height"]) != (W, H):
                found.add("image_size", f"{where}: file {size}, entry {(im['width'], im['height'])}, manifest {(W, H)}")
            try:
                instance = decode_png((view.root / "coco" / im["instance_file"]).read_bytes())
            except (OSError, KeyError) as exc:
                found.add("instance_map", f"{where}: cannot read its instance map: {exc}")
                instance = None
            boxes[stem] = []
            for ann in api.imgToAnns.get(image_id, []):
                n_ann += 1
                at = f"coco annotation {ann['id']} ({im['file_name']}, class {ann.get('category_id')})"
                if ann.get("category_id") not in schema_classes:
                    found.add("class_id", f"{at}: category_id {ann.get('category_id')} is not in the label schema")
                x, y, w, h = (float(v) for v in ann["bbox"])
                tol = s["box_tolerance_px"]
                if x < -tol or y < -tol or x + w > im["width"] + tol or y + h > im["height"] + tol:
                    found.add("box_outside", f"{at}: bbox {_fmt(ann['bbox'])} leaves the {im['width']}x{im['height']} image")
                rle = api.annToRLE(ann)
                mask_area = float(mask_utils.area(rle))
                hidden = include_hidden and float(ann["area"]) == 0.0 and mask_area == 0.0
                if hidden:
                    continue  # a flagged hidden instance: the clipped amodal box, area 0, an empty mask
                boxes[stem].append((x, y, w, h))
                if w <= 0 or h <= 0:
                    found.add("box_area", f"{at}: bbox {_fmt(ann['bbox'])} has no area")
                if mask_area == 0:
                    found.add("zero_visible", f"{at}: no visible pixel, and the export does not flag hidden instances")
                    continue
                tight = [float(v) for v in mask_utils.toBbox(rle)]
                if max(abs(a - b) for a, b in zip((x, y, w, h), tight)) > tol:
                    found.add("tight_box", f"{at}: bbox {_fmt(ann['bbox'])} != mask extents {_fmt(tight)}")
                if abs(float(ann["area"]) - mask_area) > s["area_tolerance_px"]:
                    found.add("area", f"{at}: area {ann['area']:g} != mask area {mask_area:g}")
                if instance is not None:
                    mask = api.annToMask(ann).astype(bool)
                    own = instance == int(ann["instance_id"])
                    if mask.shape != own.shape or not np.array_equal(mask, own):
                        diff = int((mask != own).sum()) if mask.shape == own.shape else -1
                        found.add("instance_map", f"{at}: mask differs from instance {ann['instance_id']} of "
                                                  f"{im['instance_file']} in {diff} pixels")
        return {"images": len(api.imgs), "annotations": n_ann}, boxes

    # ------------------------------------------------------------------ YOLO
    def _yolo(self, view: ExportView, found: Findings, coco_boxes) -> dict:
        s = self.settings
        names = view.class_names
        try:
            data = yaml.safe_load((view.root / yolo.DATA_YAML).read_text())
            yolo_names = [data["names"][i] for i in range(data["nc"])]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            found.add("yolo_data", f"{yolo.DATA_YAML}: unreadable or incomplete: {exc}")
            yolo_names = list(names)
        if yolo_names != list(names):
            found.add("class_id", f"{yolo.DATA_YAML} names {yolo_names} differ from the label schema {list(names)}")
        images = {p.stem for p in (view.root / yolo.IMAGES).glob("*.png")}
        labels = {p.stem: p for p in (view.root / yolo.LABELS).glob("*.txt")}
        for stem in sorted(images ^ set(labels)):
            found.add("yolo_files", f"{stem}: an image without a label file or a label file without an image")
        H, W = view.size
        tol = s["yolo_tolerance"]
        n = 0
        for stem in sorted(labels):
            rows = []
            for k, line in enumerate(labels[stem].read_text().splitlines()):
                at = f"yolo {yolo.LABELS}/{stem}.txt line {k + 1}"
                n += 1
                parts = line.split()
                try:
                    cls, vals = int(parts[0]), [float(v) for v in parts[1:]]
                except (ValueError, IndexError):
                    found.add("yolo_syntax", f"{at}: not 'cls x y ...': {line!r}")
                    continue
                if not 0 <= cls < len(names):
                    found.add("class_id", f"{at}: class {cls} outside 0..{len(names) - 1}")
                if any(v < -tol or v > 1 + tol for v in vals):
                    found.add("box_outside", f"{at}: coordinates outside [0, 1]: {line!r}")
                if len(vals) == 4:
                    cx, cy, w, h = vals
                    if w <= 0 or h <= 0:
                        found.add("box_area", f"{at}: box has no area: {line!r}")
                    if cx - w / 2 < -tol or cy - h / 2 < -tol or cx + w / 2 > 1 + tol or cy + h / 2 > 1 + tol:
                        found.add("box_outside", f"{at}: box leaves the image: {line!r}")
                    rows.append(((cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H))
                elif len(vals) < 6 or len(vals) % 2:
                    found.add("yolo_syntax", f"{at}: {len(vals)} coordinates: neither a box nor a polygon")
                else:
                    rows.append(None)
            if coco_boxes is not None and stem in coco_boxes:
                self._agree("yolo", stem, rows, coco_boxes[stem], tol * max(H, W), found)
        return {"images": len(images), "annotations": n}

    @staticmethod
    def _agree(fmt: str, stem: str, rows: list, reference: list, tol: float, found: Findings) -> None:
        """The rows of ``fmt`` for image ``stem`` list the COCO boxes in the same order (None: count only)."""
        if len(rows) != len(reference):
            found.add("formats_agree", f"{fmt} {stem}: {len(rows)} objects, COCO {len(reference)}")
            return
        for k, (row, ref) in enumerate(zip(rows, reference)):
            if row is not None and max(abs(a - b) for a, b in zip(row, ref)) > tol:
                found.add("formats_agree", f"{fmt} {stem} object {k + 1}: box {_fmt(row)} != COCO bbox {_fmt(ref)}")

    # ------------------------------------------------------------------ KITTI
    def _kitti(self, view: ExportView, found: Findings, coco_boxes) -> dict:
        names = set(view.class_names)
        H, W = view.size
        tol = self.settings["kitti_tolerance_px"]
        include_hidden = view.manifest["label_schema"]["annotated"]["include_hidden"]
        images = {p.stem for p in (view.root / kitti.IMAGES).glob("*.png")}
        labels = {p.stem: p for p in (view.root / kitti.LABELS).glob("*.txt")}
        for stem in sorted(images ^ set(labels)):
            found.add("kitti_files", f"{stem}: an image without a label file or a label file without an image")
        n = 0
        for stem in sorted(labels):
            calib = view.root / kitti.CALIB / f"{stem}.txt"
            p2 = [ln for ln in calib.read_text().splitlines() if ln.startswith("P2:")] if calib.is_file() else []
            if len(p2) != 1 or len(p2[0].split()) != 13:
                found.add("kitti_calib", f"{kitti.CALIB}/{stem}.txt: no P2 line with 12 numbers")
            lines = labels[stem].read_text().splitlines()
            for k, line in enumerate(lines):
                at = f"kitti {kitti.LABELS}/{stem}.txt line {k + 1}"
                n += 1
                parts = line.split()
                if len(parts) != 15:
                    found.add("kitti_syntax", f"{at}: {len(parts)} fields, KITTI has 15")
                    continue
                try:
                    truncated, occluded = float(parts[1]), int(parts[2])
                    x0, y0, x1, y1, h, w, l = (float(v) for v in parts[4:11])
                except ValueError:
                    found.add("kitti_syntax", f"{at}: non-numeric field: {line!r}")
                    continue
                if parts[0] not in names:
                    found.add("class_id", f"{at}: type {parts[0]!r} is not a class of the label schema")
                if not 0 <= truncated <= 1 or occluded not in (0, 1, 2):
                    found.add("kitti_syntax", f"{at}: truncated {truncated} / occluded {occluded} out of range")
                if x0 < -tol or y0 < -tol or x1 > W - 1 + tol or y1 > H - 1 + tol:
                    found.add("box_outside", f"{at}: box {_fmt((x0, y0, x1, y1))} leaves [0, {W - 1}] x [0, {H - 1}]")
                flagged = include_hidden and occluded == 2
                if (x1 <= x0 or y1 <= y0) and not flagged or x1 < x0 or y1 < y0:
                    found.add("box_area", f"{at}: box {_fmt((x0, y0, x1, y1))} has no area")
                if min(h, w, l) < 0:  # flat defects have zero height
                    found.add("kitti_syntax", f"{at}: negative 3D size {h} {w} {l}")
            if coco_boxes is not None and stem in coco_boxes and not include_hidden:
                self._agree("kitti", stem, [None] * len(lines), coco_boxes[stem], 0.0, found)
        return {"images": len(images), "annotations": n}

    # ------------------------------------------------------------------ WebDataset
    def _webdataset(self, view: ExportView, found: Findings) -> dict:
        C = len(view.class_names)
        slices = set(view.manifest["counts"]["slices"])
        tol = self.settings["box_tolerance_px"]
        images = n = 0
        for url in shard_urls(view.root):
            for sample in _iter_shard(url, ("json", "instance.png")):
                images += 1
                meta = json.loads(sample["json"])
                at = f"webdataset {Path(url).name} sample {sample['__key__']}"
                if meta.get("slice") not in slices:
                    found.add("slice", f"{at}: slice {meta.get('slice')!r} is not in the manifest")
                instance = decode_png(sample["instance.png"])
                for slot, valid in enumerate(meta["valid"]):
                    own = instance == slot + 1
                    pixels = int(own.sum())
                    if not valid:
                        if pixels:
                            found.add("instance_map", f"{at} slot {slot}: invalid slot owns {pixels} pixels")
                        continue
                    n += 1
                    if not 1 <= meta["labels"][slot] <= C:
                        found.add("class_id", f"{at} slot {slot}: label {meta['labels'][slot]} outside 1..{C}")
                    if meta["visible_pixels"][slot] != pixels:
                        found.add("area", f"{at} slot {slot}: visible_pixels {meta['visible_pixels'][slot]} != "
                                          f"{pixels} instance-map pixels")
                    ext = mask_extents(own)
                    if ext is not None and max(abs(a - b) for a, b in zip(meta["boxes"][slot], ext)) > tol:
                        found.add("tight_box", f"{at} slot {slot}: box {_fmt(meta['boxes'][slot])} != mask extents "
                                               f"{_fmt(ext)}")
        return {"images": images, "annotations": n}


class ManifestGate(Gate):
    name = "manifest"
    title = "Manifest integrity"
    defaults = {"max_mismatches": 0}

    def check(self, ctx: GateContext) -> GateResult:
        import jsonschema

        view, found = ctx.export, Findings()
        m = view.manifest
        validator = jsonschema.Draft202012Validator(schema())
        for err in sorted(validator.iter_errors(m), key=lambda e: list(e.absolute_path)):
            found.add("schema", f"manifest.json at {'/'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}")
        listed, hashed = self._hashes(view, found)
        self._counts(view, listed, found)
        figures = {"files_listed": len(listed), "bytes_hashed": hashed, "mismatches": found.total,
                   "mismatches_by_check": dict(found.counts)}
        ok = found.total <= self.settings["max_mismatches"]
        summary = (f"{len(listed)} files ({hashed / 1e6:.1f} MB) hashed; {found.total} mismatches"
                   + ("" if not found.total else f" ({found.describe()})"))
        return self.result(PASS if ok else FAIL, summary, figures, found.messages)

    @staticmethod
    def _hashes(view: ExportView, found: Findings) -> tuple[dict[str, str], int]:
        m, root = view.manifest, view.root
        path = root / CHECKSUMS
        if not path.is_file():
            found.add("missing", f"{CHECKSUMS} is missing")
            return {}, 0
        data = path.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != m["files"]["content_digest"]:
            found.add("content_digest", f"sha256 of {CHECKSUMS} != files.content_digest {m['files']['content_digest']}")
        listed = {}
        for line in data.decode().splitlines():
            sha, _, rel = line.partition("  ")
            listed[rel] = sha
        if len(listed) != m["files"]["count"]:
            found.add("count", f"{CHECKSUMS} lists {len(listed)} files, files.count says {m['files']['count']}")
        hashed = 0
        for rel, sha in listed.items():
            f = root / rel
            if not f.is_file():
                found.add("missing", f"{rel} is listed but missing")
                continue
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
                    hashed += len(block)
            if h.hexdigest() != sha:
                found.add("hash", f"{rel}: sha256 {h.hexdigest()[:16]}... != listed {sha[:16]}...")
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        on_disk -= {MANIFEST, CHECKSUMS}
        for rel in sorted(r for r in on_disk - set(listed) if not r.startswith(".export/")):
            found.add("unlisted", f"{rel} is not listed in {CHECKSUMS}")
        if hashed != m["files"]["bytes"] and not found.counts["missing"]:
            found.add("bytes", f"{hashed} bytes hashed, files.bytes says {m['files']['bytes']}")
        for name, fmt in m["formats"].items():
            mine = [r for r in listed if r.startswith(name + "/")]
            size = sum((root / r).stat().st_size for r in mine if (root / r).is_file())
            if (len(mine), size) != (fmt["files"], fmt["bytes"]):
                found.add("count", f"formats.{name}: {len(mine)} files / {size} bytes on disk, manifest says "
                                   f"{fmt['files']} / {fmt['bytes']}")
        return listed, hashed

    @staticmethod
    def _counts(view: ExportView, listed: dict, found: Findings) -> None:
        m = view.manifest
        n = m["counts"]["images"]
        gen = m["generation"]
        if n != gen["count"] or gen["sample_index_stop"] - gen["sample_index_start"] != n:
            found.add("count", f"counts.images {n}, generation count {gen['count']} over indices "
                               f"{gen['sample_index_start']}..{gen['sample_index_stop'] - 1}")
        if sum(m["counts"]["slices"].values()) != n:
            found.add("count", f"counts.slices sum to {sum(m['counts']['slices'].values())}, not {n} images")
        per_format = {}
        for name, folder in (("coco", coco.IMAGES), ("yolo", yolo.IMAGES), ("kitti", kitti.IMAGES)):
            if name in m["formats"]:
                per_format[name] = sum(1 for r in listed if r.startswith(folder + "/") and r.endswith(".png"))
        if "webdataset" in m["formats"]:
            keys = 0
            for url in shard_urls(view.root):
                with tarfile.open(url) as tar:
                    keys += len({Path(name).name.split(".", 1)[0] for name in tar.getnames()})
            per_format["webdataset"] = keys
        for name, k in per_format.items():
            if k != n:
                found.add("count", f"{name} holds {k} images, counts.images says {n}")
        doc = view.coco_doc if "coco" in m["formats"] else None
        if doc is None:
            return
        if len(doc["images"]) != n:
            found.add("count", f"COCO lists {len(doc['images'])} images, counts.images says {n}")
        slices = Counter(im.get("slice") for im in doc["images"])
        if dict(slices) != {k: v for k, v in m["counts"]["slices"].items() if v}:
            found.add("count", f"COCO images per slice {dict(slices)} != counts.slices {m['counts']['slices']}")
        names = {c["id"]: c["name"] for c in m["label_schema"]["classes"]}
        instances, images = Counter(), {}
        for a in doc["annotations"]:
            name = names.get(a["category_id"], str(a["category_id"]))
            instances[name] += 1
            images.setdefault(name, set()).add(a["image_id"])
        for name, c in m["counts"]["classes"].items():
            got = (instances.get(name, 0), len(images.get(name, ())))
            if got != (c["instances"], c["images"]):
                found.add("count", f"class {name}: COCO has {got[0]} instances in {got[1]} images, counts.classes "
                                   f"says {c['instances']} in {c['images']}")
