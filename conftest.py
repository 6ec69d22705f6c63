"""Shared pytest set-up for tests/ and benchmarks/: skip `cuda`-marked items without a GPU."""

import pytest
import torch

import gswfast


def pytest_collection_modifyitems(config, items):
    if gswfast.cuda_available():
        return
    reason = "needs a CUDA GPU and gswfast built with CUDA kernels"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
