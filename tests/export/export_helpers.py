"""Helpers of the export tests: reference batches rendered independently of the writers, and file trees."""

from __future__ import annotations

import filecmp
from pathlib import Path

import torch

from synth_torch import SynthDataset

RES = 64


def render(scenario: str, n: int, res: int = RES, seed: int = 0):
    """Samples 0..n-1 in one batch (the exports render them in other batches: a sample never depends on them)."""
    return SynthDataset(scenario, batch_size=n, resolution=res, seed=seed).render_batch(torch.arange(n))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb), sorted(set(ta) ^ set(tb))
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, differ
    assert not filecmp.dircmp(a, b).diff_files
