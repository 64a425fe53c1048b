"""Helpers of the export tests: reference batches rendered independently of the writers, and file trees."""

from __future__ import annotations

import filecmp
from dataclasses import fields, replace
from pathlib import Path

import torch

from synth_torch import SynthDataset

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
