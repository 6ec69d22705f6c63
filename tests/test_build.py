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
    cmd = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path / "build"),
        f"-DGSWFAST_CUDA={cuda}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
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
        assert gsw.built_with_cuda(), (
            "GSWFAST_CUDA=ON was requested but the CUDA kernels are missing"
        )


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="OpenMP is required on Linux builds only"
)
def test_cpu_kernels_are_built_with_openmp():
    # at::parallel_for is inline: built without -fopenmp, every CPU kernel silently runs on
    # one thread (it did, until issue 4 found it).
    assert gsw.build_info()["openmp"] is True


def _source_copy(tmp_path: Path) -> Path:
    """The repository's Python sources without the compiled extension, as a fresh clone has."""
    tree = tmp_path / "clone"
    shutil.copytree(
        ROOT / "gswfast",
        tree / "gswfast",
        ignore=shutil.ignore_patterns("_C.*", "_build_info.py", "__pycache__"),
    )
    (tree / "csrc").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    return tree


def test_a_source_tree_that_shadows_the_installed_package_is_named(tmp_path):
    # `pip install .` then `python -c "import gswfast.ops"` in the repository root: the source
    # folder comes first on sys.path. The message must say so, not "build and install".
    # (`import gswfast` alone loads no extension; the first use of an op does.)
    import gswfast._C

    tree = _source_copy(tmp_path)
    site = tmp_path / "site"  # what `pip install .` leaves in site-packages
    shutil.copytree(
        Path(gsw.__file__).parent, site / "gswfast", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(gswfast._C.__file__, site / "gswfast")
    script = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]\n"
        f"sys.path[:0] = ['', {str(site)!r}]\n"
        "import gswfast.ops\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "ImportError" in last
    assert f"imported from its source tree {tree / 'gswfast'}" in last
    assert f"shadows the installed gswfast at {site / 'gswfast'}" in last
    assert "Run Python from another directory" in last


def test_missing_extension_messages(tmp_path):
    from gswfast._extension import missing_extension_message

    tree = _source_copy(tmp_path)
    alone = missing_extension_message(tree / "gswfast", [str(tree)], "no _C")
    assert "not built in the source tree" in alone
    assert "make install" in alone
    site = tmp_path / "site" / "gswfast"
    site.mkdir(parents=True)
    (site / "_C.cpython-311-x86_64-linux-gnu.so").touch()
    shadowed = missing_extension_message(tree / "gswfast", [str(tree), str(site.parent)], "no _C")
    assert f"shadows the installed gswfast at {site}" in shadowed
    installed_only = missing_extension_message(site, [str(site.parent)], "undefined symbol")
    assert "could not be loaded" in installed_only
    assert "undefined symbol" in installed_only


def test_the_srgb_tables_are_the_generators_output():
    # csrc/slic/srgb_tables.h is generated (exact decimal arithmetic, rounded once to float32):
    # an edit by hand, or a change to the generator not written out, fails here.
    generator = ROOT / "csrc" / "slic" / "gen_srgb_tables.py"
    result = subprocess.run(
        [sys.executable, str(generator), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
