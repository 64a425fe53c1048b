"""Exports shared by the export tests, written once per session, with the batches they must describe."""

from __future__ import annotations

import os

import pytest
from export_helpers import RES, render

from synth_torch.export import ExportOptions, export


@pytest.fixture(scope="session")
def tabletop_export(tmp_path_factory):
    """12 tabletop samples at 64 px in every format, 3 chunks of 5, 5 and 2 rendered in batches of 3, with YOLO
    polygons."""
    out = tmp_path_factory.mktemp("exports") / "tabletop"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        result = export("tabletop", n=12, resolution=RES, out=out, chunk_size=5, batch_size=3, shard=(0, 1),
                        options=ExportOptions(yolo_polygons=True))
    assert result.complete and result.written == [0, 1, 2]
    return out, render("tabletop", 12)


@pytest.fixture(scope="session")
def defects_export(tmp_path_factory):
    """6 defect-inspection samples (defect classes, one keypoint per instance), with hidden instances listed."""
    out = tmp_path_factory.mktemp("exports") / "defects"
    result = export("defects", n=6, resolution=RES, out=out, chunk_size=6, batch_size=4, shard=(0, 1),
                    options=ExportOptions(include_hidden=True), formats="coco,kitti,yolo")
    assert result.complete
    return out, render("defects", 6)


@pytest.fixture
def source_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return os.environ["SOURCE_DATE_EPOCH"]
