"""Realism checks: compare synthetic images with a real image folder on interpretable image statistics.

The features are deliberately simple and model-free (no pretrained weights are downloaded): brightness,
contrast, colourfulness, edge density, gradient anisotropy and fine-texture energy. The Fréchet distance
between Gaussian fits of the two feature sets summarises the gap; compare it with the distance between
two halves of the real set (the noise floor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from synth_torch.scene.assets import IMAGE_SUFFIXES, _load

FEATURES = ("brightness", "contrast", "colourfulness", "edge_density", "gradient_anisotropy", "fine_texture")


def image_features(images: torch.Tensor) -> torch.Tensor:
    """Per-image statistics [B, len(FEATURES)] of images [B, 3, H, W] in [0, 1].

    ``gradient_anisotropy`` is log(E|d/dx| / E|d/dy|) (positive for vertical streaks);
    ``fine_texture`` is the std of a 3x3 Laplacian over the global std.
    """
    gray = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
    dx = (gray[..., :, 1:] - gray[..., :, :-1]).abs().mean((1, 2, 3))
    dy = (gray[..., 1:, :] - gray[..., :-1, :]).abs().mean((1, 2, 3))
    lap = F.conv2d(gray, torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]], dtype=gray.dtype, device=gray.device))
    std = gray.std((1, 2, 3))
    rg, yb = images[:, 0] - images[:, 1], 0.5 * (images[:, 0] + images[:, 1]) - images[:, 2]
    colourfulness = torch.sqrt(rg.std((1, 2)) ** 2 + yb.std((1, 2)) ** 2) + 0.3 * torch.sqrt(
        rg.mean((1, 2)) ** 2 + yb.mean((1, 2)) ** 2)
    return torch.stack((gray.mean((1, 2, 3)), std, colourfulness, dx + dy,
                        torch.log((dx + 1e-6) / (dy + 1e-6)), lap.std((1, 2, 3)) / (std + 1e-6)), 1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of feature sets a [N, F] and b [M, F] (N, M >= 2)."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least two samples per set")
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    eps = 1e-9 * np.eye(a.shape[1])  # constant features (e.g. colour of grayscale sets) make covariances singular
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)) + eps, np.atleast_2d(np.cov(b, rowvar=False)) + eps
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def load_real_images(root: str | Path, size: tuple[int, int], limit: int = 256, exclude_suffix: str = ".png",
                     seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` images [N, 3, H, W] found recursively under ``root`` (skipping files ending in
    ``exclude_suffix``, e.g. label masks), chosen with a fixed seed and resized to ``size``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real image folder not found: {root}")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and not (exclude_suffix and p.name.endswith(exclude_suffix)))
    if not files:
        raise ValueError(f"no images under {root}")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit]
    return torch.stack([_load(files[i], size[0], size[1]) for i in order.tolist()])


def realism_report(synthetic: torch.Tensor, real: torch.Tensor) -> dict:
    """Feature means of both sets, the synthetic-real Fréchet distance and the real split-half floor."""
    fs, fr = image_features(synthetic), image_features(real)
    half = fr.shape[0] // 2
    return {"features": FEATURES, "synthetic_mean": fs.mean(0).tolist(), "real_mean": fr.mean(0).tolist(),
            "frechet": frechet_distance(fs, fr), "real_split_frechet": frechet_distance(fr[:half], fr[half:])}
