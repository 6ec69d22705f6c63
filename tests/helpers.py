"""Shared test helpers: device parametrisation and tolerances."""

from __future__ import annotations

import pytest
import torch

from gswfast.testing import grid_labels, reference_pool  # noqa: F401  (re-exported for tests)


def cpu_and_cuda():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


TOLERANCES = {
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}
