"""Tiny exports shared by the governance tests (32 px, a handful of images), and helpers to plant defects."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from synth_torch.export import export

RES = 32


def make_export(out, scenario="tabletop", n=8, formats="coco,yolo,kitti,webdataset", overrides=None, seed=0):
    result = export(scenario, n=n, resolution=RES, out=out, formats=formats, chunk_size=n, batch_size=n,
                    overrides=overrides, seed=seed, shard=(0, 1))
    assert result.complete
    return out


def photo(seed: int, size=(96, 80)) -> Image.Image:
    """A smooth random "photograph" (low-frequency colour field plus texture), distinct for each seed."""
    g = np.random.default_rng(seed)
    coarse = g.uniform(0, 255, (6, 5, 3)).astype(np.uint8)
    im = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC)).astype(np.float64)
    im += g.normal(0, 8, im.shape)
    return Image.fromarray(np.clip(im, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def clean_export(tmp_path_factory):
    """8 tabletop images at 32 px in all four formats."""
    return make_export(tmp_path_factory.mktemp("gov") / "clean")


@pytest.fixture(scope="session")
def protected(tmp_path_factory):
    """A protected "real" set: 12 distinct smooth photographs (JPEG)."""
    folder = tmp_path_factory.mktemp("protected")
    for k in range(12):
        photo(k).save(folder / f"real_{k:02d}.jpg", quality=92)
    return folder


@pytest.fixture
def copy_of(tmp_path):
    def copy(root):
        dst = tmp_path / root.name
        shutil.copytree(root, dst)
        return dst

    return copy
