"""Loads the compiled extension gswfast._C, which registers the torch.ops.gswfast.* ops."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def missing_extension_message(package: Path, search_path: list[str], error: str) -> str:
    """Says why ``gswfast._C`` did not load from ``package`` (the imported gswfast folder).

    The usual cause is not a missing build: Python was started in the repository root, whose
    ``gswfast/`` source folder (no compiled extension) comes first on ``sys.path`` and
    shadows the copy that ``pip install`` put in site-packages.
    """
    installed = [str(other) for other in _other_builds(package, search_path)]
    if _is_source_tree(package) and installed:
        return (
            f"gswfast is being imported from its source tree {package}, which has no compiled "
            f"extension: the current directory (or PYTHONPATH) comes first on sys.path and shadows "
            f"the installed gswfast at {installed[0]}. Run Python from another directory, or "
            "install in place with `pip install --no-build-isolation -e .` (what `make install` "
            f"does). Original error: {error}"
        )
    if _is_source_tree(package):
        return (
            f"gswfast's compiled extension (gswfast._C) is not built in the source tree {package}. "
            "Build it in place with `make install` or `pip install --no-build-isolation -e .`, or "
            "install the package and run Python from another directory. Original error: " + error
        )
    return (
        "gswfast's compiled extension (gswfast._C) could not be loaded. Build and install the "
        "package against the torch you run with: `pip install --no-build-isolation .` (see "
        "docs/guide/troubleshooting.md). Original error: " + error
    )


def _is_source_tree(package: Path) -> bool:
    root = package.parent
    return (root / "pyproject.toml").is_file() and (root / "csrc").is_dir()


def _other_builds(package: Path, search_path: list[str]) -> list[Path]:
    """gswfast folders with a compiled extension elsewhere on the search path (a compiled
    ``_C``, not the ``_C.pyi`` type stub that every copy has)."""
    found = []
    for entry in search_path:
        candidate = (Path(entry or ".") / "gswfast").resolve()
        if candidate != package and _compiled_names(candidate):
            found.append(candidate)
    return found


def _compiled_names(folder: Path) -> list[str]:
    """The compiled ``_C`` files in ``folder`` (``_C.cpython-311-x86_64-linux-gnu.so``)."""
    return [p.name for p in folder.glob("_C.*") if p.suffix in (".so", ".pyd")]


try:
    from gswfast import (
        _C,  # noqa: F401  (importing it registers the ops)
        _build_info,
    )
except ImportError as exc:
    raise ImportError(
        missing_extension_message(Path(__file__).resolve().parent, sys.path, str(exc))
    ) from exc


def _release(version: str) -> str:
    return version.split("+")[0]


if _release(torch.__version__) != _release(_build_info.TORCH_VERSION):
    raise ImportError(
        f"gswfast._C was built against torch {_build_info.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed; rebuild gswfast "
        "(`pip install --no-build-isolation --force-reinstall --no-deps .`)."
    )


def built_with_cuda() -> bool:
    """True when this build of gswfast contains the CUDA kernels."""
    return bool(_build_info.CUDA_BUILT)


def cuda_available() -> bool:
    """True when the CUDA kernels are built in and torch sees a CUDA device."""
    return built_with_cuda() and torch.cuda.is_available()


def build_info() -> dict[str, object]:
    """Facts about the compiled extension: torch and CUDA versions, GPU architectures, and
    whether its CPU kernels run in parallel (OpenMP)."""
    return {
        "torch_version": _build_info.TORCH_VERSION,
        "cuda_built": built_with_cuda(),
        "cuda_version": _build_info.CUDA_VERSION,
        "cuda_architectures": _build_info.CUDA_ARCHITECTURES,
        "openmp": _build_info.OPENMP,
    }
