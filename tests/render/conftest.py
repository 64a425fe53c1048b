"""Render-test fixtures: ``backend`` runs a test on the ``cpu`` (numba) and ``torch`` (reference) backends."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["cpu", "torch"])
def backend(request) -> str:
    return request.param
