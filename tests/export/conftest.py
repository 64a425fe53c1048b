"""Exports shared by the export tests (written once per session) and the batches they must describe, rendered
independently of the writers."""

from __future__ import annotations

import filecmp
import os
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from synth_torch import SynthDataset
from synth_torch.export import ExportOptions, export

RES = 64


def render(scenario: str, n: int, batch_size: int, res: int = RES, seed: int = 0):
    """Samples 0..n-1 rendered in batches of ``batch_size`` (as an export with ``chunk_size == batch_size`` does:
    the sensor's compiled path currently depends on the batch's other samples), concatenated."""
    ds = SynthDataset(scenario, batch_size=batch_size, resolution=res, seed=seed)
    parts = [ds.render_batch(torch.arange(lo, min(lo + batch_size, n))) for lo in range(0, n, batch_size)]

    def cat(values):
        if torch.is_tensor(values[0]):
            return torch.cat(values)
        if isinstance(values[0], dict):
            return {k: cat([v[k] for v in values]) for k in values[0]}
        return values[0]

    return replace(parts[0], **{f.name: cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])})


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb), sorted(set(ta) ^ set(tb))
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, differ
    assert not filecmp.dircmp(a, b).diff_files


@pytest.fixture(scope="session")
def tabletop_export(tmp_path_factory):
    """12 tabletop samples at 64 px in every format, 3 chunks of 4, with YOLO polygons."""
    out = tmp_path_factory.mktemp("exports") / "tabletop"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        result = export("tabletop", n=12, resolution=RES, out=out, chunk_size=4, batch_size=4, shard=(0, 1),
                        options=ExportOptions(yolo_polygons=True))
    assert result.complete and result.written == [0, 1, 2]
    return out, render("tabletop", 12, 4)


@pytest.fixture(scope="session")
def defects_export(tmp_path_factory):
    """6 defect-inspection samples (defect classes, one keypoint per instance), with hidden instances listed."""
    out = tmp_path_factory.mktemp("exports") / "defects"
    result = export("defects", n=6, resolution=RES, out=out, chunk_size=6, batch_size=6, shard=(0, 1),
                    options=ExportOptions(include_hidden=True), formats="coco,kitti,yolo")
    assert result.complete
    return out, render("defects", 6, 6)


@pytest.fixture
def source_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return os.environ["SOURCE_DATE_EPOCH"]
