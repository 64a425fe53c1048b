"""Names and constants shared by sampling (``scenario``), rendering (``scene``, ``shading``) and labels.

Index tensors in a :class:`~synth_torch.spec.types.SceneSpec` index these tuples, so their order is part of the
sample format: append, never reorder.
"""

from __future__ import annotations

import functools
from enum import IntEnum

import torch

TEXTURES: tuple[str, ...] = ("solid", "checker", "stripes", "noise", "marble", "wood", "brushed")
PLACEMENTS: tuple[str, ...] = ("ground", "floating", "stacked")
SURFACES: tuple[str, ...] = ("tabletop", "inspection")
DEFECT_KINDS: tuple[str, ...] = ("blowhole", "crack", "spot", "fray", "break", "uneven", "stain", "dust", "scratch")
#: Defect kinds that lighten the surface (the others darken it).
BRIGHT_DEFECT_KINDS: tuple[str, ...] = ("dust", "scratch")
#: Where a defect type's centre is placed: anywhere on the visible surface, on the border of the view, or within a
#: fifth of the half side inside it.
DEFECT_PLACEMENTS: tuple[str, ...] = ("anywhere", "edge", "near_edge")


class SlotKind(IntEnum):
    """What an object slot holds: labeled objects get instance ids; distractors and occluders are background."""

    OBJECT = 0
    DISTRACTOR = 1
    OCCLUDER = 2


#: Half the side of the ground quad (tabletop) or of the inspected tile (inspection), metres.
GROUND_HALF_SIZE: dict[str, float] = {"tabletop": 3.0, "inspection": 0.16}
#: The camera orbits a point this high above the ground on a tabletop (metres).
TARGET_HEIGHT = 0.03
#: Keypoints per object: the template surface points furthest along the eight box-corner directions.
NUM_KEYPOINTS = 8


def on_device(values, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A constant table (nested tuples/lists of numbers) as a tensor on ``device``, made once per (values, device,
    dtype) and cached: later calls copy nothing from the host, so a CUDA batch never waits for a transfer.
    Treat the result as read-only."""
    return _on_device(_frozen(values), torch.device(device), dtype)


def _frozen(values):
    return tuple(_frozen(v) for v in values) if isinstance(values, (list, tuple)) else values


@functools.lru_cache(maxsize=256)
def _on_device(values, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device)
