"""Shared pytest fixtures and markers: devices, dtypes, GPU skips.

* ``device`` runs a test on CPU, and on CUDA when one is present (skipped otherwise, so the test ids
  stay the same on every machine); ``dtype`` runs it in float32 and float64.
* ``@pytest.mark.gpu`` skips a test without CUDA; ``@pytest.mark.nvdiffrast`` also skips it when
  nvdiffrast does not import (``pip install "synth-torch[nvdiffrast]"``). Both skip cleanly, with the reason.
* ``shared_real`` is ``../shared/real`` (skipped cleanly when absent); ``fake_tiles`` is a tiny generated
  magnetic-tile folder for the real-data code paths that need no real photograph.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def nvdiffrast_ok() -> bool:
    """CUDA is present and ``nvdiffrast.torch`` imports (a failed JIT build surfaces at import)."""
    if not CUDA:
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return True


def pytest_configure(config):
    config.addinivalue_line("markers", "nvdiffrast: needs nvdiffrast on a CUDA device (skipped otherwise)")


def pytest_runtest_setup(item):
    if (item.get_closest_marker("gpu") or item.get_closest_marker("nvdiffrast")) and not CUDA:
        pytest.skip("needs a CUDA device")
    if item.get_closest_marker("nvdiffrast") and not nvdiffrast_ok():
        pytest.skip('needs nvdiffrast (pip install "synth-torch[nvdiffrast]")')


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    """Every device the test should pass on (CUDA skipped cleanly without one)."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    """An explicit, seeded generator (tests never draw from the global RNG)."""
    return torch.Generator().manual_seed(0)


SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "real"  # ../shared/real beside the repository


@pytest.fixture
def shared_real() -> Path:
    """``../shared/real`` (the real datasets beside the repository); the test is skipped cleanly without it."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"{SHARED_REAL} (the shared real datasets) is not present")
    return SHARED_REAL


FAKE_TILE_CLASSES = {"Blowhole": 12, "Crack": 8, "Free": 20}


def write_fake_tiles(root: Path, size: tuple[int, int] = (30, 40)) -> Path:
    """A tiny magnetic-tile layout: ``MT_<Class>/Imgs/<name>.jpg`` + ``<name>.png``. Image ``i`` of a defect
    class is grey 200 with a dark (40) defect rectangle at rows ``[5, 15)``, columns ``[10 + i % 10, 30)``; the
    mask is 255 there (0 elsewhere); ``MT_Free`` images have an empty mask."""
    from torchvision.io import write_jpeg, write_png

    H, W = size
    for cls, n in FAKE_TILE_CLASSES.items():
        folder = root / f"MT_{cls}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = torch.full((1, H, W), 200, dtype=torch.uint8)
            mask = torch.zeros((1, H, W), dtype=torch.uint8)
            if cls != "Free":
                img[:, 5:15, 10 + i % 10:30] = 40
                mask[:, 5:15, 10 + i % 10:30] = 255
            write_jpeg(img.expand(3, H, W).contiguous(), str(folder / f"exp{i % 3}_num_{i}.jpg"), quality=95)
            write_png(mask, str(folder / f"exp{i % 3}_num_{i}.png"))
    return root


@pytest.fixture(scope="session")
def fake_tiles(tmp_path_factory) -> Path:
    """A tiny fake magnetic-tile dataset (40 images, see :func:`write_fake_tiles`), written once per session."""
    return write_fake_tiles(tmp_path_factory.mktemp("fake_magnetic_tile"))
