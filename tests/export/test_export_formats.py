"""Every export format read back with its own ecosystem's reader (or, for YOLO and KITTI, a parser written here
from the formats' specifications) and compared with the batch the same samples render to."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synth_torch.export import read_manifest, shard_dataset, shard_urls

RES = 64


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def png_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def image_u8(batch, i) -> np.ndarray:
    return (batch.image[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def annotated(batch, i, include_hidden=False) -> list[int]:
    keep = batch.valid[i] if include_hidden else batch.valid[i] & (batch.visible_pixels[i] > 0)
    return keep.nonzero().flatten().tolist()


def mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# ---------------------------------------------------------------------------------------------------- COCO
def test_coco_reads_back_with_pycocotools(tabletop_export):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    root, batch = tabletop_export
    coco = COCO(str(root / "coco/annotations/instances.json"))
    assert sorted(coco.getImgIds()) == list(range(1, 13))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(batch.class_names)
    assert len(coco.loadCats(1)[0]["keypoints"]) == 8 and len(coco.loadCats(1)[0]["skeleton"]) == 12
    total = 0
    for i in range(12):
        img = coco.loadImgs(i + 1)[0]
        assert img["sample_id"] == int(batch.sample_id[i]) and (img["height"], img["width"]) == (RES, RES)
        assert np.array_equal(png(root / "coco/images" / img["file_name"]), image_u8(batch, i))
        instance = png(root / "coco" / img["instance_file"])
        assert instance.dtype == np.uint16 and np.array_equal(instance, batch.instance[i].numpy())
        depth = png(root / "coco" / img["depth_file"]).astype(np.float64) * img["depth_scale"]
        assert np.abs(depth - batch.depth[i, 0].numpy()).max() <= 0.5e-3 + 1e-6
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert [a["instance_id"] - 1 for a in anns] == annotated(batch, i)
        for a in anns:
            slot = a["instance_id"] - 1
            truth = (batch.instance[i] == slot + 1).numpy()
            assert np.array_equal(coco.annToMask(a).astype(bool), truth)
            assert isinstance(a["area"], float) and a["area"] == float(truth.sum()) and a["iscrowd"] == 0
            x0, y0, x1, y1 = mask_box(truth)
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert a["bbox"] == mask_utils.toBbox(coco.annToRLE(a)).tolist()
            assert a["category_id"] == int(batch.labels[i, slot])
            kp = np.array(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            ref = batch.keypoints[i, slot].double().numpy()
            assert np.array_equal(kp[:, 2], ref[:, 2]) and a["num_keypoints"] == int((ref[:, 2] > 0).sum())
            seen = ref[:, 2] > 0
            assert np.abs(kp[seen, :2] + 0.5 - ref[seen, :2]).max(initial=0) <= 1e-3  # COCO: pixel-index coords
            assert (kp[~seen, :2] == 0).all()
            total += 1
    assert total == len(coco.getAnnIds()) > 20


def _coco_ap(gt, dets, iou_type: str) -> float:
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, gt.loadRes(dets), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_cocoeval_scores_ground_truth_as_predictions_ap_1(tabletop_export):
    from pycocotools.coco import COCO

    root, _ = tabletop_export
    gt = COCO(str(root / "coco/annotations/instances.json"))
    anns = gt.dataset["annotations"]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in anns]
    assert _coco_ap(gt, dets, "bbox") == 1.0
    segs = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 1.0} for a in anns]
    assert _coco_ap(gt, segs, "segm") == 1.0
    # the check can fail: boxes moved by 3 px no longer score perfectly
    moved = [dict(d, bbox=[d["bbox"][0] + 3, *d["bbox"][1:]]) for d in dets]
    assert _coco_ap(gt, moved, "bbox") < 0.9


def test_torchvision_coco_detection_with_transforms_v2(tabletop_export):
    from torchvision import tv_tensors
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    root, batch = tabletop_export
    ds = wrap_dataset_for_transforms_v2(CocoDetection(str(root / "coco/images"), str(root / "coco/annotations/instances.json")),
                                        target_keys=("image_id", "boxes", "labels", "masks"))
    assert len(ds) == 12
    for i in range(len(ds)):
        image, target = ds[i]
        slots = annotated(batch, i)
        assert target["image_id"] == i + 1
        assert np.array_equal(np.asarray(image), image_u8(batch, i))
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (RES, RES)
        assert torch.equal(target["boxes"], batch.boxes[i, slots])
        assert torch.equal(target["labels"], batch.labels[i, slots])
        assert torch.equal(target["masks"].bool(), batch.instance[i][None] == torch.tensor(slots)[:, None, None] + 1)


def test_coco_hidden_instances_and_defect_keypoints(defects_export):
    from pycocotools.coco import COCO

    root, batch = defects_export
    coco = COCO(str(root / "coco/annotations/instances.json"))
    cats = {c["id"]: c for c in coco.loadCats(coco.getCatIds())}
    assert all(c["supercategory"] == "defect" and c["keypoints"] == ["center"] for c in cats.values())
    hidden = 0
    for i in range(len(batch)):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=i + 1))
        assert [a["instance_id"] - 1 for a in anns] == annotated(batch, i, include_hidden=True)
        for a in anns:
            slot = a["instance_id"] - 1
            assert len(a["keypoints"]) == 3
            if int(batch.visible_pixels[i, slot]) == 0:
                hidden += 1
                assert a["area"] == 0.0 and coco.annToMask(a).sum() == 0
    assert hidden == int((batch.valid & (batch.visible_pixels == 0)).sum())


# ---------------------------------------------------------------------------------------------------- YOLO
def parse_yolo(path) -> list[tuple[int, list[float]]]:
    """Ultralytics label lines: ``cls`` then normalised numbers (4 for boxes, an even count >= 6 for polygons)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        cls, values = int(parts[0]), [float(v) for v in parts[1:]]
        assert len(values) == 4 or (len(values) >= 6 and len(values) % 2 == 0), line
        assert all(0.0 <= v <= 1.0 for v in values), line
        out.append((cls, values))
    return out


def test_yolo_boxes_are_normalised_batch_boxes(defects_export):
    root, batch = defects_export
    data = yaml.safe_load((root / "yolo/data.yaml").read_text())
    assert data["names"] == dict(enumerate(batch.class_names)) and data["nc"] == len(batch.class_names)
    assert (root / "yolo" / data["train"]).is_dir() and (root / "yolo" / data["val"]).is_dir()
    for i in range(len(batch)):
        stem = f"{i:06d}"
        assert np.array_equal(png(root / f"yolo/images/train/{stem}.png"), image_u8(batch, i))
        lines = parse_yolo(root / f"yolo/labels/train/{stem}.txt")
        slots = annotated(batch, i)  # YOLO never lists hidden instances
        assert [c for c, _ in lines] == [int(batch.labels[i, s]) - 1 for s in slots]
        for (cls, (cx, cy, w, h)), slot in zip(lines, slots):
            x0, y0, x1, y1 = batch.boxes[i, slot].tolist()
            assert math.isclose(cx * RES, (x0 + x1) / 2, abs_tol=1e-4) and math.isclose(w * RES, x1 - x0, abs_tol=1e-4)
            assert math.isclose(cy * RES, (y0 + y1) / 2, abs_tol=1e-4) and math.isclose(h * RES, y1 - y0, abs_tol=1e-4)


def test_yolo_polygons_follow_the_masks(tabletop_export):
    root, batch = tabletop_export
    assert yaml.safe_load((root / "yolo/data.yaml").read_text())["train"] == "images/train"
    checked = 0
    for i in range(len(batch)):
        lines = parse_yolo(root / f"yolo/labels/train/{i:06d}.txt")
        slots = annotated(batch, i)
        assert len(lines) == len(slots)
        for (cls, values), slot in zip(lines, slots):
            assert cls == int(batch.labels[i, slot]) - 1
            pts = np.array(values).reshape(-1, 2) * RES
            x0, y0, x1, y1 = batch.boxes[i, slot].tolist()
            mask = (batch.instance[i] == slot + 1).numpy()
            if len(pts) == 4 and np.allclose(sorted(pts[:, 0]), [x0, x0, x1, x1], atol=1e-4):
                continue  # too thin for a contour: the box's corners
            # every vertex is the centre of a pixel of the instance; the polygon spans the tight box
            px = np.floor(pts).astype(int)
            assert np.allclose(pts - px, 0.5, atol=1e-4) and mask[px[:, 1], px[:, 0]].all()
            assert np.allclose([pts[:, 0].min(), pts[:, 1].min()], [x0 + 0.5, y0 + 0.5], atol=1e-4)
            assert np.allclose([pts[:, 0].max(), pts[:, 1].max()], [x1 - 0.5, y1 - 0.5], atol=1e-4)
            checked += 1
    assert checked > 20


# ---------------------------------------------------------------------------------------------------- KITTI
def parse_calib(path) -> dict[str, np.ndarray]:
    out = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        out[key] = np.array([float(v) for v in values.split()])
    return out


def kitti_corners(h, w, l, x, y, z, ry) -> np.ndarray:
    """[8, 3] box corners as the KITTI devkit builds them (bottom face at y, top at y - h)."""
    xc = np.array([l, l, -l, -l, l, l, -l, -l]) / 2
    yc = np.array([0, 0, 0, 0, -h, -h, -h, -h])
    zc = np.array([w, -w, -w, w, w, -w, -w, w]) / 2
    R = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    return (R @ np.stack((xc, yc, zc))).T + np.array([x, y, z])


@pytest.mark.parametrize("which", ["tabletop_export", "defects_export"])
def test_kitti_3d_boxes_reproject_with_p2(which, request):
    root, batch = request.getfixturevalue(which)
    include_hidden = which == "defects_export"
    stems = (root / "kitti/ImageSets/train.txt").read_text().split()
    assert stems == [f"{i:06d}" for i in range(len(batch))]
    boxes_checked = 0
    for i in range(len(batch)):
        stem = stems[i]
        assert np.array_equal(png(root / f"kitti/training/image_2/{stem}.png"), image_u8(batch, i))
        calib = parse_calib(root / f"kitti/training/calib/{stem}.txt")
        assert set(calib) == {"P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"}
        P2 = calib["P2"].reshape(3, 4)
        lines = [ln.split() for ln in (root / f"kitti/training/label_2/{stem}.txt").read_text().splitlines()]
        slots = annotated(batch, i, include_hidden)
        assert len(lines) == len(slots)
        # the camera's height above the ground/tile: every object rests on it, every defect lies on it
        T = batch.world_to_cam[i].double()
        height = float(-(T[:3, :3].T @ T[:3, 3])[2])
        for f, slot in zip(lines, slots):
            assert len(f) == 15
            name, trunc, occ, alpha = f[0], float(f[1]), int(f[2]), float(f[3])
            x0, y0, x1, y1, h, w, l, x, y, z, ry = (float(v) for v in f[4:])
            assert name == batch.class_names[int(batch.labels[i, slot]) - 1]
            corners = kitti_corners(h, w, l, x, y, z, ry)
            uvw = P2 @ np.concatenate((corners, np.ones((8, 1))), 1).T
            uv = (uvw[:2] / uvw[2]).T + 0.5  # KITTI pixel-index coordinates -> ours (pixel edges at integers)
            ref = batch.boxes3d_corners[i, slot].double().numpy()
            # the same 8 projected corners (KITTI numbers them differently)
            dist = np.linalg.norm(uv[:, None] - ref[None], axis=-1).min(1)
            assert dist.max() < 0.05, (name, dist)  # labels carry 4 decimals (0.1 mm, 1e-4 rad)
            assert abs(y - height) < 2e-4, (y, height)  # bottom face on the ground
            tol = 1e-4 + 1e-4 / math.hypot(x, z)  # 4-decimal rounding of alpha, ry, x and z
            assert abs(math.remainder(alpha - (ry - math.atan2(x, z)), 2 * math.pi)) <= tol
            hidden = int(batch.visible_pixels[i, slot]) == 0
            vf = float(batch.visible_fraction[i, slot])
            assert occ == (2 if hidden else 0 if vf >= 0.95 else 1 if vf >= 0.5 else 2)
            # 2D box: the amodal box clipped to the image. For objects it lies inside the projected 3D box and
            # equals it for box shapes; a defect's amodal box is its tight box (the painted mark, which need not
            # stay inside the defect's characteristic square).
            lo = np.clip(uv.min(0) - 0.5, 0, RES - 1)
            hi = np.clip(uv.max(0) - 0.5, 0, RES - 1)
            if batch.boxes3d_size[i, slot, 2] > 0:
                assert lo[0] - 0.02 <= x0 <= x1 <= hi[0] + 0.02 and lo[1] - 0.02 <= y0 <= y1 <= hi[1] + 0.02
            else:
                tight = np.clip(batch.boxes[i, slot].numpy() - 0.5, 0, RES - 1)
                assert np.allclose([x0, y0, x1, y1], tight, atol=0.006)
            if name == "box":
                assert np.allclose([x0, y0, x1, y1], [*lo, *hi], atol=0.02), (name, [x0, y0, x1, y1], lo, hi)
                boxes_checked += 1
            amodal = batch.amodal_boxes[i, slot].tolist()
            inside = amodal[0] >= 0 and amodal[1] >= 0 and amodal[2] <= RES and amodal[3] <= RES
            assert (trunc == 0.0) if inside else (0.0 <= trunc <= 1.0)
    assert boxes_checked > 3 or which == "defects_export"


# ---------------------------------------------------------------------------------------------------- WebDataset
def test_webdataset_reads_back_with_webdataset(tabletop_export):
    import webdataset as wds

    root, batch = tabletop_export
    urls = shard_urls(root)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(12)]
    for i, s in enumerate(samples):
        assert {"png", "instance.png", "depth.png", "normals.png", "json"} <= set(s)
        meta = json.loads(s["json"])
        assert meta["sample_id"] == int(batch.sample_id[i]) and meta["slice"] == batch.slice_names[meta["slice_id"]]
        assert np.array_equal(png_bytes(s["png"]), image_u8(batch, i))
        assert np.array_equal(png_bytes(s["instance.png"]), batch.instance[i].numpy())
        for name in ("boxes", "amodal_boxes", "boxes3d_center", "boxes3d_size", "boxes3d_rotation", "boxes3d_corners",
                     "keypoints", "visible_fraction"):  # exact float32 values
            assert torch.equal(torch.tensor(meta[name], dtype=torch.float32), getattr(batch, name)[i]), name
        assert meta["labels"] == batch.labels[i].tolist() and meta["valid"] == batch.valid[i].tolist()
        assert meta["visible_pixels"] == batch.visible_pixels[i].tolist()
        assert torch.equal(torch.tensor(meta["K"], dtype=torch.float32), batch.K[i])
        assert meta["params"] == {k: float(v[i]) for k, v in batch.params.items()}


def test_shard_dataset_streams_batches(tabletop_export):
    root, batch = tabletop_export
    manifest = read_manifest(root)
    batches = list(shard_dataset(root, batch_size=5, slice_names=tuple(manifest["counts"]["slices"])))
    assert [len(b) for b in batches] == [5, 5, 2]
    got = batches[1]
    ref = batch.select(slice(5, 10))
    assert torch.equal(got.sample_id, ref.sample_id) and got.slice_names == ref.slice_names
    assert torch.equal(got.instance, ref.instance) and torch.equal(got.semantic, ref.semantic)
    assert torch.equal(got.boxes, ref.boxes) and torch.equal(got.valid, ref.valid)
    assert (got.image - ref.image.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert (got.depth - ref.depth).abs().max() <= 0.5e-3 + 1e-6
    assert (got.normals - ref.normals).abs().max() < 0.02  # 8-bit normal map
    assert torch.equal(got.normals.abs().sum(1) == 0, ref.normals.abs().sum(1) == 0)  # no surface: exactly zero
    images, targets = got.to_torchvision()  # what the detection task consumes
    assert torch.equal(targets[0]["boxes"], ref.to_torchvision()[1][0]["boxes"])
    shuffled = [int(s) for b in shard_dataset(root, batch_size=4, shuffle=8, seed=1) for s in b.sample_id]
    assert sorted(shuffled) == sorted(batch.sample_id.tolist()) and shuffled != batch.sample_id.tolist()
