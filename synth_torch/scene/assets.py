"""Image folders used as ground textures, backgrounds and environment lighting."""

from __future__ import annotations

import math
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


# Real spherical harmonics up to order 2 (x, y, z a unit direction) and Ramamoorthi & Hanrahan's (2001)
# irradiance constants: E(n) = [n, 1]^T M [n, 1] for the 4 x 4 matrix M of each colour channel.
_SH_C = (0.429043, 0.511664, 0.743125, 0.886227, 0.247708)


def _sh9(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """[..., 9] basis (L00, L1-1, L10, L11, L2-2, L2-1, L20, L21, L22) at unit directions (x, y, z)."""
    return torch.stack((torch.full_like(x, 0.282095), 0.488603 * y, 0.488603 * z, 0.488603 * x, 1.092548 * x * y,
                        1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z, 0.546274 * (x * x - y * y)), -1)


def irradiance_matrix(coeffs: torch.Tensor) -> torch.Tensor:
    """[3, 4, 4] matrices M with ``[n, 1]^T M [n, 1]`` the irradiance at normal n divided by pi (a uniform
    environment of radiance 1 gives 1), from SH coefficients ``coeffs`` [3, 9] of the radiance."""
    c1, c2, c3, c4, c5 = _SH_C
    L00, L1m1, L10, L11, L2m2, L2m1, L20, L21, L22 = coeffs.double().unbind(-1)
    rows = ((c1 * L22, c1 * L2m2, c1 * L21, c2 * L11), (c1 * L2m2, -c1 * L22, c1 * L2m1, c2 * L1m1),
            (c1 * L21, c1 * L2m1, c3 * L20, c2 * L10), (c2 * L11, c2 * L1m1, c2 * L10, c4 * L00 - c5 * L20))
    return torch.stack([torch.stack(r, -1) for r in rows], -2) / math.pi


@lru_cache(maxsize=64)
def environment_irradiance(file: str) -> torch.Tensor:
    """Diffuse lighting from an equirectangular (latitude-longitude) environment image, as [3, 4, 4] float64
    :func:`irradiance_matrix` matrices in the world frame (z up).

    Convention: row 0 looks straight up (+z) and the last row straight down; column ``i`` looks at azimuth
    ``2 pi (i + 0.5) / W`` from +x towards +y. Pixel values in [0, 1] are taken as radiance. The image is reduced
    to its order-2 spherical harmonics (a 9-coefficient projection weighted by each pixel's solid angle), which
    is exact for the irradiance up to 3 % (Ramamoorthi & Hanrahan 2001). Raises ``ValueError`` naming the file
    when it cannot be decoded.
    """
    image = _load(file, 64, 128).double()  # [3, H, W], enough for order-2 harmonics
    _, H, W = image.shape
    theta = (torch.arange(H, dtype=torch.float64) + 0.5) * math.pi / H
    phi = (torch.arange(W, dtype=torch.float64) + 0.5) * 2 * math.pi / W
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    basis = _sh9(st * torch.cos(phi)[None], st * torch.sin(phi)[None], ct.expand(H, W))  # [H, W, 9]
    weight = st * (math.pi / H) * (2 * math.pi / W)  # solid angle per pixel [H, 1]
    coeffs = torch.einsum("chw,hwk->ck", image * weight[None], basis)
    return irradiance_matrix(coeffs)


def uniform_environment(batch: int) -> torch.Tensor:
    """[B, 3, 4, 4] matrices of a uniform environment of radiance 1 (irradiance 1 for every normal): the flat
    ambient term of a scene without environment images."""
    m = torch.zeros(batch, 3, 4, 4)
    m[:, :, 3, 3] = 1.0
    return m
