"""Image folders used as ground textures or backgrounds."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@lru_cache(maxsize=16)
def list_images(folder: str) -> tuple[str, ...]:
    """Sorted image files of ``folder``; raises ``FileNotFoundError`` / ``ValueError`` when missing or empty."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    files = tuple(sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"image folder {path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@lru_cache(maxsize=256)
def _load(file: str, height: int, width: int) -> torch.Tensor:
    try:
        data = torch.frombuffer(bytearray(Path(file).read_bytes()), dtype=torch.uint8)
        img = decode_image(data, mode=ImageReadMode.RGB).float().div(255)
    except Exception as exc:
        raise ValueError(f"cannot decode image {file}: {exc}") from exc
    return F.interpolate(img[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def load_images(folder: str, index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1]: image ``index[b]`` of the folder's sorted list (see :func:`list_images`),
    resized to ``size`` (H, W); decoded images are cached."""
    files = list_images(folder)
    return torch.stack([_load(files[i], size[0], size[1]) for i in index.cpu().tolist()])
