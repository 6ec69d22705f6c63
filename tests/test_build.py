"""The build switches: CUDA forced on without a compiler fails loudly; OFF configures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gswfast as gsw

ROOT = Path(__file__).resolve().parents[1]


def _configure(tmp_path: Path, cuda: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DGSWFAST_CUDA={cuda}",
           f"-DPython_EXECUTABLE={sys.executable}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")


@needs_cmake
def test_forced_cuda_without_compiler_fails_loudly(tmp_path):
    result = _configure(tmp_path, "ON", {"CUDACXX": str(tmp_path / "no-such-nvcc")})
    assert result.returncode != 0
    assert "GSWFAST_CUDA=ON but" in result.stdout + result.stderr


@needs_cmake
def test_cuda_off_configures_without_cuda(tmp_path):
    result = _configure(tmp_path, "OFF", {"CUDACXX": str(tmp_path / "no-such-nvcc")})
    assert result.returncode == 0, result.stdout + result.stderr
    info = (tmp_path / "build" / "_build_info.py").read_text()
    assert "CUDA_BUILT = False" in info


def test_build_info_describes_this_build():
    info = gsw.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(gsw.cuda_available(), bool)
    assert gsw.cuda_available() == (gsw.built_with_cuda() and torch.cuda.is_available())
    if os.environ.get("GSWFAST_CUDA", "").upper() == "ON":
        assert gsw.built_with_cuda(), "GSWFAST_CUDA=ON was requested but the CUDA kernels are missing"



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP is required on Linux builds only")
def test_cpu_kernels_are_built_with_openmp():
    # at::parallel_for is inline: built without -fopenmp, every CPU kernel silently runs on
    # one thread (it did, until issue 4 found it).
    assert gsw.build_info()["openmp"] is True
