"""Reducing a pixel attribution over its channels."""

from __future__ import annotations

from torch import Tensor

CHANNEL_REDUCTIONS: tuple[str, ...] = ("sum", "abs_sum", "l2", "max")


def reduce_channels(attribution: Tensor, how: str) -> Tensor:
    """``[B, C, (T), H, W]`` -> ``[B, (T), H, W]``.

    - ``sum``: signed sum, keeps completeness (integrated gradients, input x gradient);
    - ``abs_sum``: sum of magnitudes;
    - ``l2``: Euclidean norm over channels;
    - ``max``: largest magnitude over channels (Simonyan et al.'s saliency map).
    """
    if how == "sum":
        return attribution.sum(1)
    if how == "abs_sum":
        return attribution.abs().sum(1)
    if how == "l2":
        norm: Tensor = attribution.norm(dim=1)  # Tensor.norm returns Any in torch's annotations
        return norm
    if how == "max":
        return attribution.abs().amax(1)
    raise ValueError(f"channel_reduce: expected one of {CHANNEL_REDUCTIONS}, got {how!r}")
