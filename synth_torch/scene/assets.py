"""Image folders used as ground textures or backgrounds."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image

# what torchvision's decode_image reads (PIL format name -> file suffixes)
IMAGE_FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",)}
IMAGE_SUFFIXES = tuple(s for suffixes in IMAGE_FORMATS.values() for s in suffixes)
FOLDER_EXTRAS = ("PROVENANCE",)  # the optional provenance file an image folder may hold (docs/export.md)


def _check_image(path: Path) -> None:
    """Open the file's header and verify its structure (PNG chunk checksums, JPEG/WebP headers) without decoding
    the pixels; raises ``ValueError`` naming the file when it is not a readable image of its suffix's format."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            fmt = image.format
            image.verify()
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    if path.suffix.lower() not in IMAGE_FORMATS.get(fmt, ()):
        raise ValueError(f"image {path} holds {fmt} data, which its suffix {path.suffix!r} does not name; "
                         f"readable formats: {', '.join(IMAGE_SUFFIXES)}")


@lru_cache(maxsize=16)
def list_images(folder: str) -> tuple[str, ...]:
    """Sorted image files of ``folder``, each checked to be a readable PNG, JPEG or WebP.

    Raises ``FileNotFoundError`` when the folder is missing and ``ValueError`` naming the file when the folder is
    empty, holds anything but images (hidden files and a ``PROVENANCE`` file excepted), or holds an image that
    cannot be read.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name not in FOLDER_EXTRAS)
    others = [p.name for p in entries if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise ValueError(f"image folder {path} holds {len(others)} entr{'y' if len(others) == 1 else 'ies'} that "
                         f"{'is' if len(others) == 1 else 'are'} not a {'/'.join(IMAGE_SUFFIXES)} image: "
                         f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}")
    if not entries:
        raise ValueError(f"image folder {path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    for p in entries:
        _check_image(p)
    return tuple(str(p) for p in entries)


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
