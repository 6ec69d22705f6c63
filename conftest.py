"""Shared pytest set-up for tests/ and benchmarks/: skip `cuda`-marked items without a GPU;
under `make sanitize` and `make fma-check`, load the extension of their own build folder
(GSWFAST_TEST_EXTENSION) instead of the installed one."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import gswfast


def _load_extension_from(build: Path) -> None:
    """Puts ``gswfast._C`` and ``gswfast._build_info`` from ``build`` (a CMake build folder,
    such as `make sanitize`'s) into ``sys.modules`` before anything imports them, so that
    every op the tests call in this process runs that build (child processes the tests
    start load the installed one)."""
    compiled = sorted(build.glob("_C.*.so"))
    if not compiled:
        raise pytest.UsageError(f"GSWFAST_TEST_EXTENSION: no _C.*.so in {build}")
    for name, path in (
        ("gswfast._build_info", build / "_build_info.py"),
        ("gswfast._C", compiled[0]),
    ):
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


if os.environ.get("GSWFAST_TEST_EXTENSION"):
    if "gswfast._C" in sys.modules:
        raise pytest.UsageError("GSWFAST_TEST_EXTENSION: gswfast._C was loaded before conftest")
    _load_extension_from(Path(os.environ["GSWFAST_TEST_EXTENSION"]).resolve())


def pytest_report_header(config):
    if "gswfast._C" in sys.modules:
        return f"gswfast extension: {sys.modules['gswfast._C'].__file__}"
    return None


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
