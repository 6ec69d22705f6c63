"""Drawing explanations on the device, tensors in and out: colour maps, segment
boundaries, top-k outlines, overlays, pictures. ``gswfast.viz`` writes them to files.

No matplotlib: the colour maps are a few control points interpolated in torch, so an
overlay of a video batch never leaves the GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from gswfast.explain import Explanation

TOP_K_COLOUR = (0, 255, 255)
BOUNDARY_COLOUR = (255, 255, 0)

# Diverging map for signed scores (blue < 0 < red), like matplotlib's "coolwarm".
_DIVERGING = ((59, 76, 192), (141, 176, 254), (221, 221, 221), (245, 156, 125), (180, 4, 38))
# Sequential map for non-negative scores, like matplotlib's "inferno".
_SEQUENTIAL = ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164))


def colormap(values: Tensor, points: tuple[tuple[int, int, int], ...]) -> Tensor:
    """float ``values`` in [0, 1], any shape ``S`` -> float RGB ``[*S, 3]`` in 0..255 (NaN
    gets the first colour, infinities the ends: never an index out of the table)."""
    table = torch.tensor(points, dtype=torch.float32, device=values.device)
    pos = values.float().nan_to_num(0.0, 1.0, 0.0).clamp(0, 1) * (len(points) - 1)
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
    signed = (flat.amin(1) < 0).view((*view, 1))
    diverging = colormap(heatmap / scale * 0.5 + 0.5, _DIVERGING)
    sequential = colormap(heatmap / scale, _SEQUENTIAL)
    return torch.where(signed, diverging, sequential)


def boundaries(labels: Tensor) -> Tensor:
    """bool ``[B, *S]``: pixels whose right or lower neighbour has another label."""
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    edge[..., :, :-1] |= labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., :-1, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return edge


def outline(mask: Tensor) -> Tensor:
    """bool ``[B, *S]``: the full outline of ``mask [B, *S]``, every pixel inside it with a
    4-neighbour (in its frame) outside it or off the image."""
    mask = mask.bool()
    inside = F.pad(mask, (1, 1, 1, 1), value=False)  # off the image counts as outside
    interior = (
        inside[..., :-2, 1:-1]
        & inside[..., 2:, 1:-1]
        & inside[..., 1:-1, :-2]
        & inside[..., 1:-1, 2:]
    )
    return mask & ~interior


def as_rgb_uint8(images: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """``images [B, C, *S]`` (uint8 or float 0..1, C = 1 or 3) -> uint8 ``[B, 3, *S]``."""
    if (
        not isinstance(images, Tensor)
        or images.dim() != len(spatial) + 2
        or tuple(images.shape[2:]) != spatial
    ):
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


def overlay(
    images: Tensor,
    heatmap: Tensor,
    labels: Tensor | None = None,
    alpha: float = 0.5,
    boundary_color: tuple[int, int, int] = (255, 255, 0),
) -> Tensor:
    """Blends the coloured ``heatmap [B, *S]`` over ``images [B, C, *S]`` and draws the
    boundaries of ``labels [B, *S]``. Returns uint8 ``[B, 3, *S]`` (``S`` = ``(T,) H, W``)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    rgb = as_rgb_uint8(images, tuple(heatmap.shape[1:])).float()
    colours = color_scores(heatmap).movedim(-1, 1)  # [B, 3, *S]
    out = rgb * (1 - alpha) + colours * alpha
    if labels is not None:
        edge = boundaries(labels).unsqueeze(1)
        colour = torch.tensor(boundary_color, dtype=out.dtype, device=out.device).view(
            1, 3, *([1] * (out.dim() - 2))
        )
        out = torch.where(edge, colour, out)
    return out.round().clamp(0, 255).to(torch.uint8)


def draw_picture(
    expl: Explanation,
    images: Tensor,
    k: int = 3,
    size: int | None = None,
    shape: tuple[int, int] | None = None,
    alpha: float = 0.5,
) -> Tensor:
    """uint8 ``[B, 3, (T), H', W']``: the heatmap over ``images [B, C, (T), H, W]`` (uint8 or
    float 0..1), segment boundaries half-transparent yellow, the full outline of the ``k``
    best segments cyan; lines one pixel wide at the output size.

    ``shape``: the output ``(H', W')`` (say, the input file's aspect ratio). Otherwise
    ``size`` enlarges by a whole factor so the longer side is about ``size`` pixels."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k: expected an int >= 0, got {k!r}")
    labels = expl.labels
    height, width = labels.shape[-2:]
    factor = max(1, (size or 0) // max(height, width))
    out_shape = (shape[0], shape[1]) if shape is not None else (height * factor, width * factor)
    rgb = as_rgb_uint8(images.to(labels.device), tuple(labels.shape[1:]))
    rgb = _grow(rgb, factor) if shape is None else resize_frames(rgb, out_shape)
    colours = color_scores(resize_nearest(expl.heatmap(), out_shape)).movedim(-1, 1)
    out = rgb.float() * (1 - alpha) + colours * alpha
    big_labels, top = resize_nearest(labels, out_shape), resize_nearest(expl.top_k(k), out_shape)
    yellow = _colour(BOUNDARY_COLOUR, out)
    out = torch.where(boundaries(big_labels).unsqueeze(1), 0.5 * out + 0.5 * yellow, out)
    out = torch.where(outline(top).unsqueeze(1), _colour(TOP_K_COLOUR, out), out)
    return out.round().clamp(0, 255).to(torch.uint8)


def picture_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    """``(H', W')`` with the aspect ratio of ``height x width`` and the longer side ``longest``."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frames(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """uint8 ``[N, C, (T), H, W]`` resized (antialiased bilinear) to ``size`` (a side, or
    ``(H', W')``), uint8."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == target:
        return images
    flat = images.reshape(-1, 1, *images.shape[-2:]).float()
    out = F.interpolate(flat, size=target, mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*images.shape[:-2], *target)


def resize_nearest(values: Tensor, shape: tuple[int, int]) -> Tensor:
    """``values [B, *S]`` (labels, masks, scores) resized by nearest neighbour to ``shape``
    in their last two dims, same dtype."""
    if tuple(values.shape[-2:]) == tuple(shape):
        return values
    flat = values.reshape(-1, 1, *values.shape[-2:])
    out = F.interpolate(
        flat.double() if flat.dtype == torch.int64 else flat.float(),
        size=tuple(shape),
        mode="nearest",
    )
    return out.to(values.dtype).reshape(*values.shape[:-2], *shape)


def _grow(t: Tensor, factor: int) -> Tensor:
    return t.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else t


def _colour(rgb: tuple[int, int, int], like: Tensor) -> Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(
        1, 3, *([1] * (like.dim() - 2))
    )
