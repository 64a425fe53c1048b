"""Render-test fixtures.

* ``backend`` runs a rasterizer test on the ``cpu`` (numba) and ``torch`` (reference) backends, and on ``cuda``:
  the torch reference on the GPU (skipped without CUDA). ``render_helpers.render`` moves the inputs to the
  backend's device and the outputs back to the CPU, so one test body checks every device.
* ``reference_device`` runs a test of ``interpolate``, ``texture`` or ``antialias`` on every device with the torch
  reference; nvdiffrast's kernels are compared with it in ``test_render_gpu.py``.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["cpu", "torch", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request, monkeypatch) -> str:
    if request.param == "cuda":
        monkeypatch.setenv("SYNTH_TORCH_RENDER_BACKEND", "torch")  # interpolate/antialias on CUDA: the reference
    return request.param


@pytest.fixture
def reference_device(device, monkeypatch):
    if device.type == "cuda":
        monkeypatch.setenv("SYNTH_TORCH_RENDER_BACKEND", "torch")
    return device
