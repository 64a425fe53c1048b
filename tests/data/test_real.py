"""Real-data readers: hash splits, nested K subsets, v2 resizing of images, masks and boxes, class mapping.

Most tests use a generated magnetic-tile folder (``fake_tiles``); the ones on the shared real datasets skip
cleanly when ``../shared/real`` is absent.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from synth_torch.data.real import (CocoReal, MagneticTile, RealBatch, collate_real, nested_order, open_real,
                                   split_of)
from synth_torch.scenario.config import ConfigError

TILE_CLASSES = ("blowhole", "crack", "break", "fray", "uneven")
FRACTIONS = (0.6, 0.2, 0.2)


def _splits(root, fractions=FRACTIONS, resolution=16):
    return {s: MagneticTile(root, TILE_CLASSES, resolution, split=s, fractions=fractions) for s in ("train", "val",
                                                                                                     "test", "all")}


def test_split_of_is_a_stable_partition_by_file_name():
    keys = [f"MT_X/Imgs/img_{i}.jpg" for i in range(2000)]
    splits = [split_of(k, (0.7, 0.1, 0.2)) for k in keys]
    assert splits == [split_of(k, (0.7, 0.1, 0.2)) for k in keys]  # deterministic
    counts = Counter(splits)
    assert abs(counts["train"] / 2000 - 0.7) < 0.04 and abs(counts["test"] / 2000 - 0.2) < 0.04
    # a file keeps its split whatever other files exist, and growing val only moves files out of test
    moved = [split_of(k, (0.7, 0.2, 0.1)) for k in keys]
    assert all(a == b or (a, b) == ("test", "val") for a, b in zip(splits, moved))


def test_nested_order_prefixes_are_nested_and_balanced_over_groups():
    keys = [f"f{i}.jpg" for i in range(60)]
    groups = ["a"] * 40 + ["b"] * 15 + ["c"] * 5
    order = nested_order(keys, groups)
    assert sorted(order) == list(range(60))
    assert order == nested_order(keys, groups)
    # any prefix holds the groups as evenly as their sizes allow: c runs out after 5 rounds, b after 15
    for k in (3, 9, 15, 30):
        c = Counter(groups[i] for i in order[:k])
        assert max(c.values()) - min(c.values()) <= 1 or c["c"] == 5, (k, c)
    assert Counter(groups[i] for i in order[:15]) == {"a": 5, "b": 5, "c": 5}
    # independent of the input order (keys are ranked by hash, not position)
    perm = list(reversed(range(60)))
    assert [perm[i] for i in nested_order([keys[p] for p in perm], [groups[p] for p in perm])] == order


def test_splits_are_deterministic_disjoint_and_cover_the_dataset(fake_tiles):
    a, b = _splits(fake_tiles), _splits(fake_tiles)
    for s in ("train", "val", "test"):
        assert a[s].keys == b[s].keys and len(a[s]) > 0
    train, val, test = (set(a[s].keys) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(a["all"].keys) and len(a["all"]) == 40


def test_take_is_nested_and_stratified(fake_tiles):
    train = _splits(fake_tiles)["train"]
    sets = [set(train.take(k).keys) for k in (3, 6, 12, len(train))]
    assert all(small <= big for small, big in zip(sets, sets[1:]))
    assert {g for g in train.take(3).groups} == {"Blowhole", "Crack", "Free"}  # one of each class first
    assert train.take(None) is train
    with pytest.raises(ValueError, match=f"has {len(train)}"):
        train.take(len(train) + 1)


def test_magnetic_tile_masks_and_images_resize_together(fake_tiles):
    ds = MagneticTile(fake_tiles, TILE_CLASSES, resolution=(15, 20), split="all")
    i = next(j for j, k in enumerate(ds.keys) if k == "MT_Crack/Imgs/exp0_num_0.jpg")
    item = ds[i]
    assert item["image"].shape == (3, 15, 20) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    # the 30x40 mask rows [5, 15), cols [10, 30) -> rows [2.5, 7.5), cols [5, 15) at half size; crack is class 2
    sem = item["semantic"]
    assert set(sem.unique().tolist()) == {0, 2}
    ys, xs = torch.nonzero(sem, as_tuple=True)
    assert 2 <= int(ys.min()) <= 3 and 7 <= int(ys.max()) <= 8 and int(xs.min()) == 5 and int(xs.max()) == 14
    # the dark defect is where the mask is
    assert float(item["image"][0][sem > 0].mean()) < 0.3 < float(item["image"][0][sem == 0].mean())
    free = next(j for j, k in enumerate(ds.keys) if k.startswith("MT_Free"))
    assert ds[free]["semantic"].max() == 0
    # classes the model lacks are skipped: without "crack" no MT_Crack image is listed
    assert not any(k.startswith("MT_Crack") for k in MagneticTile(fake_tiles, ("blowhole",), 16, "all").keys)


def test_collate_and_errors(fake_tiles, tmp_path):
    ds = _splits(fake_tiles)["train"]
    batch = collate_real([ds[i] for i in range(4)])
    assert isinstance(batch, RealBatch) and batch.image.shape == (4, 3, 16, 16) and batch.semantic.shape == (4, 16, 16)
    assert batch.keys == ds.keys[:4] and batch.batch_index == -1
    images, targets = batch.to_torchvision(4)
    assert len(images) == 4 and targets[0]["boxes"].shape == (0, 4)
    with pytest.raises(FileNotFoundError, match="absent"):
        MagneticTile(tmp_path / "absent", TILE_CLASSES)
    with pytest.raises(ValueError, match="fractions"):
        MagneticTile(fake_tiles, TILE_CLASSES, split="train", fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="split"):
        MagneticTile(fake_tiles, TILE_CLASSES, split="holdout")
    with pytest.raises(ConfigError, match="real_kind"):
        open_real("voc", fake_tiles, TILE_CLASSES, 16)


def test_magnetic_tile_real_splits(shared_real):
    root = shared_real / "magnetic_tile"
    splits = {s: MagneticTile(root, TILE_CLASSES, 32, split=s) for s in ("train", "val", "test")}
    keys = [set(d.keys) for d in splits.values()]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert sum(map(len, keys)) == 1344
    train = splits["train"]
    k10, k25 = set(train.take(10).keys), set(train.take(25).keys)
    assert k10 <= k25 and {g for g in train.take(10).groups} == {"Blowhole", "Break", "Crack", "Fray", "Uneven",
                                                                 "Free"}
    blow = next(i for i, g in enumerate(train.groups) if g == "Blowhole")
    assert set(train[blow]["semantic"].unique().tolist()) <= {0, 1}  # blowhole is class 1


def test_coco_boxes_and_masks_follow_the_resize(shared_real):
    from pycocotools.coco import COCO

    root = shared_real / "fruits_nuts"
    ds = CocoReal(root, ("date", "fig", "hazelnut"), resolution=(60, 80), split="all")
    coco = COCO(str(root / "trainval.json"))  # the format's own reader, independent of torchvision
    by_name = {img["file_name"]: img for img in coco.imgs.values()}
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    item = ds[0]
    meta = by_name[item["key"]]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=meta["id"]))
    sx, sy = 80 / meta["width"], 60 / meta["height"]
    expected = torch.tensor([[a["bbox"][0] * sx, a["bbox"][1] * sy, (a["bbox"][0] + a["bbox"][2]) * sx,
                              (a["bbox"][1] + a["bbox"][3]) * sy] for a in anns])
    assert item["boxes"].shape == expected.shape
    assert torch.allclose(item["boxes"].as_subclass(torch.Tensor), expected, atol=1e-3)
    assert item["labels"].tolist() == [("date", "fig", "hazelnut").index(names[a["category_id"]]) + 1 for a in anns]
    # the semantic map (from the instance masks) is inside the boxes and holds only this image's classes
    sem = item["semantic"].as_subclass(torch.Tensor)
    assert set(sem.unique().tolist()) <= {0} | set(item["labels"].tolist()) and (sem > 0).any()
    inside = torch.zeros_like(sem, dtype=torch.bool)
    for x0, y0, x1, y1 in expected.tolist():
        inside[int(y0):int(y1) + 2, int(x0):int(x1) + 2] = True
    assert not ((sem > 0) & ~inside).any()
    # categories map by name: a model without these classes is refused
    with pytest.raises(ValueError, match="date"):
        CocoReal(root, ("box", "ball"), 32, split="all")
    # the split of 18 photos used by data=synth_fruits
    parts = {s: CocoReal(root, ("date", "fig", "hazelnut"), 32, s, (0.4, 0.1, 0.5)).keys for s in ("train", "val",
                                                                                                "test")}
    assert [len(v) for v in parts.values()] == [10, 2, 6]
