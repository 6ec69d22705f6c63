"""Pictures of explanations, drawn on the device: colour maps, segment boundaries, overlays.

No matplotlib: the colour maps are a few control points interpolated in torch, so an
overlay of a video batch never leaves the GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Diverging map for signed scores (blue < 0 < red), like matplotlib's "coolwarm".
_DIVERGING = ((59, 76, 192), (141, 176, 254), (221, 221, 221), (245, 156, 125), (180, 4, 38))
# Sequential map for non-negative scores, like matplotlib's "inferno".
_SEQUENTIAL = ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164))


def colormap(values: Tensor, points: tuple[tuple[int, int, int], ...]) -> Tensor:
    """float ``values`` in [0, 1], any shape ``S`` -> float RGB ``[*S, 3]`` in 0..255."""
    table = torch.tensor(points, dtype=torch.float32, device=values.device)
    pos = values.float().clamp(0, 1) * (len(points) - 1)
    low = pos.floor().long().clamp(max=len(points) - 2)
    frac = (pos - low).unsqueeze(-1)
    return table[low] * (1 - frac) + table[low + 1] * frac


def color_scores(heatmap: Tensor) -> Tensor:
    """Per-sample colours of ``heatmap [B, *S]`` -> float RGB ``[B, *S, 3]`` (0..255).

    A sample with a negative value uses the diverging map around zero (scaled by its largest
    magnitude); a non-negative one the sequential map from zero to its maximum.
    """
    flat = heatmap.float().flatten(1)
    view = (-1,) + (1,) * (heatmap.dim() - 1)
    scale = flat.abs().amax(1).clamp(min=1e-12).view(view)
    signed = (flat.amin(1) < 0).view(view + (1,))
    diverging = colormap(heatmap / scale * 0.5 + 0.5, _DIVERGING)
    sequential = colormap(heatmap / scale, _SEQUENTIAL)
    return torch.where(signed, diverging, sequential)


def boundaries(labels: Tensor) -> Tensor:
    """bool ``[B, *S]``: pixels whose right or lower neighbour has another label."""
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    edge[..., :, :-1] |= labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., :-1, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return edge


def as_rgb_uint8(images: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """``images [B, C, *S]`` (uint8 or float 0..1, C = 1 or 3) -> uint8 ``[B, 3, *S]``."""
    if not isinstance(images, Tensor) or images.dim() != len(spatial) + 2 or tuple(images.shape[2:]) != spatial:
        raise ValueError(
            f"images: expected [B, C, {', '.join(map(str, spatial))}] matching the explanation, "
            f"got {tuple(getattr(images, 'shape', ()))}"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got {images.shape[1]}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"images: expected uint8 or float (0..1), got {images.dtype}")
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.expand(-1, 3, *spatial)


def overlay(images: Tensor, heatmap: Tensor, labels: Tensor | None = None, alpha: float = 0.5,
            boundary_color: tuple[int, int, int] = (255, 255, 0)) -> Tensor:
    """Blends the coloured ``heatmap [B, *S]`` over ``images [B, C, *S]`` and draws the
    boundaries of ``labels [B, *S]``. Returns uint8 ``[B, 3, *S]`` (``S`` = ``(T,) H, W``)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    rgb = as_rgb_uint8(images, tuple(heatmap.shape[1:])).float()
    colours = color_scores(heatmap).movedim(-1, 1)  # [B, 3, *S]
    out = rgb * (1 - alpha) + colours * alpha
    if labels is not None:
        edge = boundaries(labels).unsqueeze(1)
        colour = torch.tensor(boundary_color, dtype=out.dtype, device=out.device).view(1, 3, *([1] * (out.dim() - 2)))
        out = torch.where(edge, colour, out)
    return out.round().clamp(0, 255).to(torch.uint8)
