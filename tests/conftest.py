"""Shared pytest fixtures and markers: devices, dtypes, GPU skips, and the summary of what was skipped.

* ``device`` runs a test on CPU, and on CUDA when one is present (skipped otherwise, so the test ids
  stay the same on every machine); ``dtype`` runs it in float32 and float64.
* ``@pytest.mark.gpu`` skips a test without CUDA; ``@pytest.mark.nvdiffrast`` also skips it when
  nvdiffrast does not import (``pip install "synth-torch[nvdiffrast]"``). Both skip cleanly, with the reason.
* On a machine that must test the GPU, these skips become failures: ``SYNTH_TORCH_REQUIRE_GPU=1`` fails every GPU
  test when CUDA is absent, and ``SYNTH_TORCH_REQUIRE_NVDIFFRAST=1`` (which implies it) also fails the nvdiffrast
  tests when nvdiffrast does not import, with the import error (``benchmarks/gpu_check.sh`` sets both).
* ``shared_real`` is ``../shared/real`` (skipped cleanly when absent); ``fake_tiles`` is a tiny generated
  magnetic-tile folder for the real-data code paths that need no real photograph.
* Every run ends with the skipped tests grouped by reason, so a skip is never silent.
"""

from __future__ import annotations

import collections
import functools
import os
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
REQUIRE_NVDIFFRAST = os.environ.get("SYNTH_TORCH_REQUIRE_NVDIFFRAST") == "1"
REQUIRE_GPU = REQUIRE_NVDIFFRAST or os.environ.get("SYNTH_TORCH_REQUIRE_GPU") == "1"


@functools.lru_cache(maxsize=None)
def nvdiffrast_status() -> str | None:
    """None when CUDA is present, ``nvdiffrast.torch`` imports and its CUDA plugin builds (it is JIT-compiled when
    the first context is made, so a broken build shows here), else why not."""
    if not CUDA:
        return "needs a CUDA device"
    try:
        import nvdiffrast.torch as nvdr
    except Exception as exc:
        return f'needs nvdiffrast (pip install "synth-torch[nvdiffrast]"); importing it failed: {exc!r}'
    from synth_torch.render import RasterizeContext

    try:
        RasterizeContext(device="cuda", backend="nvdiffrast")
        nvdr.RasterizeCudaContext()
    except Exception as exc:
        return f"nvdiffrast imports but its CUDA plugin does not build or load: {exc!r}"
    return None


def nvdiffrast_ok() -> bool:
    return nvdiffrast_status() is None


def pytest_configure(config):
    config.addinivalue_line("markers", "nvdiffrast: needs nvdiffrast on a CUDA device (skipped otherwise)")


def pytest_runtest_setup(item):
    if (item.get_closest_marker("gpu") or item.get_closest_marker("nvdiffrast")) and not CUDA:
        if REQUIRE_GPU:
            pytest.fail("SYNTH_TORCH_REQUIRE_GPU/NVDIFFRAST=1 but torch sees no CUDA device", pytrace=False)
        pytest.skip("needs a CUDA device")
    if item.get_closest_marker("nvdiffrast") and not nvdiffrast_ok():
        if REQUIRE_NVDIFFRAST:
            pytest.fail(f"SYNTH_TORCH_REQUIRE_NVDIFFRAST=1: {nvdiffrast_status()}", pytrace=False)
        pytest.skip(nvdiffrast_status())


def pytest_terminal_summary(terminalreporter):
    """List what was skipped and why (``-q`` shows only a count otherwise)."""
    reasons = collections.Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("skipped tests, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:4d}  {reason}")


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
