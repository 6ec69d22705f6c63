"""Reference inputs for input x gradient and integrated gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gswfast import ops
from gswfast.attribution._model import accumulation_dtype

BASELINES: tuple[str, ...] = ("zeros", "blur", "segment_mean")
Baseline = str | Tensor


def needs_segmentation(baseline: Baseline) -> bool:
    return isinstance(baseline, str) and baseline == "segment_mean"


def check_baseline(baseline: object) -> None:
    if isinstance(baseline, Tensor):
        return
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise ValueError(f"baseline: expected one of {BASELINES} or a tensor, got {baseline!r}")


def make_baseline(
    baseline: Baseline,
    x: Tensor,
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
    blur_sigma: float | None = None,
) -> Tensor:
    """The baseline for ``x [B, C, (T), H, W]``, same shape, dtype and device.

    - ``"zeros"``: all zeros (black, before any ``preprocess``).
    - ``"blur"``: ``x`` blurred by a Gaussian over H and W (sigma ``blur_sigma`` pixels,
      default ``max(H, W) / 25``), each frame on its own.
    - ``"segment_mean"``: every segment of ``labels [B, (T), H, W]`` filled with its mean
      colour, the image LIME compares against by default (``hide_color=None``).
    - a tensor broadcastable to ``x``.
    """
    check_baseline(baseline)
    if isinstance(baseline, Tensor):
        return _given_baseline(baseline, x)
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma if blur_sigma is not None else max(x.shape[-2:]) / 25)
    if labels is None:
        raise ValueError("baseline: 'segment_mean' needs a segmentation")
    return segment_mean_image(x, labels, num_segments)


def stand_in_image(
    choice: str | Tensor,
    x: Tensor,
    name: str,
    names: dict[str, str],
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
) -> Tensor:
    """The image that replaces parts of ``x`` (LIME's hidden segments, the deletion and
    insertion curves' other end): a tensor of exactly ``x``'s shape on its device, or one of
    ``names``, the caller's words for ``make_baseline``'s (``{"zero": "zeros", ...}``)."""
    if isinstance(choice, Tensor):
        if choice.shape != x.shape or choice.device != x.device:
            raise ValueError(
                f"{name}: expected a tensor of shape {tuple(x.shape)} on {x.device}, "
                f"got {tuple(choice.shape)} on {choice.device}"
            )
        return choice.to(x.dtype)
    if not isinstance(choice, str) or choice not in names:
        raise ValueError(f"{name}: expected one of {tuple(names)} or a tensor, got {choice!r}")
    return make_baseline(names[choice], x, labels, num_segments)


def segment_mean_image(x: Tensor, labels: Tensor, num_segments: Tensor | None = None) -> Tensor:
    """``x [B, C, *S]`` with every segment of ``labels [B, *S]`` replaced by its mean."""
    means = ops.segment_pool(
        x.to(accumulation_dtype(x.dtype)), labels, num_segments, "mean", validate=False
    )  # [B, C, K]
    return ops.paint(means, labels, validate=False).to(x.dtype)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x [B, C, (T), H, W]`` over its last two dims."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"blur_sigma: expected a positive number of pixels, got {sigma}")
    shape = x.shape
    planes = x.reshape(-1, 1, shape[-2], shape[-1]).to(accumulation_dtype(x.dtype))
    for dim, size in ((-1, shape[-1]), (-2, shape[-2])):
        radius = min(math.ceil(3 * sigma), size - 1)
        if radius < 1:
            continue
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=planes.dtype)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (
            (kernel / kernel.sum()).view(1, 1, 1, -1)
            if dim == -1
            else (kernel / kernel.sum()).view(1, 1, -1, 1)
        )
        pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        planes = F.conv2d(F.pad(planes, pad, mode="reflect"), kernel)
    return planes.reshape(shape).to(x.dtype)


def _given_baseline(baseline: Tensor, x: Tensor) -> Tensor:
    if baseline.device != x.device:
        raise ValueError(f"baseline: expected a tensor on {x.device}, got {baseline.device}")
    if not baseline.is_floating_point():
        raise TypeError(f"baseline: expected a floating-point tensor, got {baseline.dtype}")
    try:
        return torch.broadcast_to(baseline, x.shape).to(x.dtype)
    except RuntimeError:
        raise ValueError(
            f"baseline: shape {tuple(baseline.shape)} does not broadcast to the inputs' {tuple(x.shape)}"
        ) from None
