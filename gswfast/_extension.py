"""Loads the compiled extension gswfast._C, which registers the torch.ops.gswfast.* ops."""

from __future__ import annotations

import torch

try:
    from gswfast import _C  # noqa: F401  (importing it registers the ops)
    from gswfast import _build_info
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "gswfast's compiled extension (gswfast._C) could not be loaded. Build and install "
        "the package against the torch you run with: "
        "`pip install --no-build-isolation .` (see README). Original error: " + str(exc)
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
