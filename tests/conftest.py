"""Shared pytest fixtures and markers: devices, dtypes, GPU skips.

* ``device`` runs a test on CPU, and on CUDA when one is present (skipped otherwise, so the test ids
  stay the same on every machine); ``dtype`` runs it in float32 and float64.
* ``@pytest.mark.gpu`` skips a test without CUDA; ``@pytest.mark.nvdiffrast`` also skips it when
  nvdiffrast does not import (``pip install "synth-torch[nvdiffrast]"``). Both skip cleanly, with the reason.
"""

from __future__ import annotations

import functools

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
