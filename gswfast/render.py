"""Drawing explanations on the device, tensors in and out: colour maps, segment
boundaries, top-k outlines, overlays, pictures. ``gswfast.viz`` writes them to files.

No matplotlib: the colour maps are a few control points interpolated in torch, so an
overlay of a video batch never leaves the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from gswfast.checks import segment_mask

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
    view = (-1,) + (1,) * (heatmap.dim() - 1)
    largest, negative = colour_scale(heatmap)
    scale = largest.clamp(min=1e-12).view(view)
    signed = negative.view((*view, 1))
    diverging = colormap(heatmap / scale * 0.5 + 0.5, _DIVERGING)
    sequential = colormap(heatmap / scale, _SEQUENTIAL)
    return torch.where(signed, diverging, sequential)


def colour_scale(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample of ``values [B, *S]`` (non-empty): its largest magnitude ``[B]``, which
    ends the colour scale, and whether it has a negative value ``[B]`` (the diverging map
    around zero; otherwise the sequential one from zero)."""
    flat = values.float().flatten(1)
    return flat.abs().amax(1), flat.amin(1) < 0


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
    last: int | None = None,
    grey: bool = True,
) -> Tensor:
    """uint8 ``[B, 3, (T), H', W']``: the heatmap over ``images [B, C, (T), H, W]`` (uint8 or
    float 0..1; with ``grey``, their grey copy, so that the heat stays readable on coloured
    objects), segment boundaries half-transparent yellow, the full outline of the ``k``
    best segments cyan; lines one pixel wide at the output size.

    ``shape``: the output ``(H', W')`` (say, the input file's aspect ratio). Otherwise
    ``size`` enlarges by a whole factor so the longer side is about ``size`` pixels.
    ``last``: for clips, draw only their last ``last`` frames (a stream's fresh frames).

    Colours are mapped once per segment (``segment_colours``) and looked up by label at the
    output size: the same colours as mapping the painted heatmap pixel by pixel, at the
    cost of one gather."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k: expected an int >= 0, got {k!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 1):
        raise ValueError(f"last: expected an int >= 1 or None, got {last!r}")
    labels, top = expl.labels, expl.top_k(k)
    height, width = labels.shape[-2:]
    rgb = as_rgb_uint8(images.to(labels.device), tuple(labels.shape[1:]))
    if last is not None and labels.dim() == 4:
        labels, top, rgb = labels[:, -last:], top[:, -last:], rgb[:, :, -last:]
    if grey:
        rgb = luma(rgb)  # [B, 1, ...]: blended against every heat channel alike
    factor = max(1, (size or 0) // max(height, width))
    out_shape = (shape[0], shape[1]) if shape is not None else (height * factor, width * factor)
    rgb = _grow(rgb, factor) if shape is None else resize_frames(rgb, out_shape)
    big_labels, top = resize_nearest(labels, out_shape), resize_nearest(top, out_shape)
    colours = segment_colours(expl.segment_scores, expl.num_segments).round().to(torch.uint8)
    edge, ring = boundaries(big_labels), outline(top)
    if grey:
        return _blend_grey(rgb[:, 0], big_labels, edge, ring, colours, alpha)
    flat = big_labels.reshape(big_labels.shape[0], -1, 1).long().expand(-1, -1, 3)
    heat = colours.gather(1, flat).reshape(*big_labels.shape, 3).movedim(-1, 1)
    out = _blend(rgb.to(torch.int16), heat.to(torch.int16), alpha)
    out = torch.where(edge.unsqueeze(1), (out + _colour(BOUNDARY_COLOUR, out) + 1) >> 1, out)
    out = torch.where(ring.unsqueeze(1), _colour(TOP_K_COLOUR, out), out)
    return out.to(torch.uint8)


def _blend(base: Tensor, heat: Tensor, alpha: float) -> Tensor:
    """int16 ``base * (1 - alpha) + heat * alpha`` of uint8 values held in int16, the weights
    in 1/128ths (within 1 of float32): they sum to 128, so the sum stays under
    255 * 128 + 64 < 2**15."""
    weight = round(alpha * 128)
    return (base * (128 - weight) + heat * weight + 64) >> 7


def _blend_grey(
    grey: Tensor, labels: Tensor, edge: Tensor, ring: Tensor, colours: Tensor, alpha: float
) -> Tensor:
    """uint8 ``[B, 3, *S]``: the heat of ``colours [B, K, 3]`` blended over ``grey [B, *S]``
    as ``_blend`` does, boundaries and outlines drawn, by one lookup per pixel: a sample's
    table holds every (segment, on a boundary, grey level) colour and the outline colour,
    so no per-pixel arithmetic runs on three channels. Equal to blending pixel by pixel."""
    levels = torch.arange(256, dtype=torch.int16, device=grey.device).view(1, 256, 1)
    out = torch.empty(grey.shape[0], 3, *grey.shape[1:], dtype=torch.uint8, device=grey.device)
    for b in range(grey.shape[0]):
        plain = _blend(levels, colours[b].to(torch.int16).unsqueeze(1), alpha)  # [K, 256, 3]
        yellow = torch.tensor(BOUNDARY_COLOUR, dtype=plain.dtype, device=plain.device)
        table = torch.stack([plain, (plain + yellow + 1) >> 1], 1).reshape(-1, 3)
        table = torch.cat([table, _colour(TOP_K_COLOUR, table).view(1, 3)]).to(torch.uint8)
        # row (segment * 2 + on a boundary) * 256 + grey; the last row is the outline's
        index = (labels[b].int() * 2 + edge[b]) * 256 + grey[b]
        index = index.masked_fill_(ring[b], table.shape[0] - 1)
        for channel, values in enumerate(table.t().contiguous()):
            torch.index_select(values, 0, index.flatten(), out=out[b, channel].view(-1))
    return out


def side_by_side(pictures: Sequence[Tensor], gap: int = 4) -> Tensor:
    """uint8 ``[3, (T), H, sum W + gaps]``: ``pictures`` (each ``[3, (T), H, W]``) side by
    side, ``gap`` columns of dark grey between them (a sheet of boxes, a gallery's rows)."""
    parts: list[Tensor] = []
    for picture in pictures:
        if parts:
            parts.append(torch.full((*picture.shape[:-1], gap), 32, dtype=picture.dtype))
        parts.append(picture)
    return torch.cat(parts, dim=-1)


def luma(rgb: Tensor) -> Tensor:
    """uint8 ``[B, 1, *S]``: the grey of uint8 ``rgb [B, 3, *S]`` (ITU-R BT.601 weights in
    1/256ths: 77 R + 150 G + 29 B)."""
    weights = torch.tensor([77, 150, 29], dtype=torch.int32, device=rgb.device)
    grey = (rgb.to(torch.int32) * weights.view(1, 3, *[1] * (rgb.dim() - 2))).sum(1, keepdim=True)
    return ((grey + 128) >> 8).to(torch.uint8)


def segment_colours(scores: Tensor, num_segments: Tensor) -> Tensor:
    """float RGB ``[B, K, 3]`` (0..255) of segment ``scores [B, K]``, as ``color_scores``
    colours their painted heatmap: padding ids (past ``num_segments``) count as 0, which
    changes neither a sample's largest magnitude nor whether it has a negative value."""
    valid = segment_mask(num_segments, scores.shape[1])
    return color_scores(torch.where(valid, scores.float(), 0.0))


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
    if images.device.type == "cpu" and images.dtype == torch.uint8:
        return _resize_uint8(images, target)
    flat = images.reshape(-1, 1, *images.shape[-2:]).float()
    out = F.interpolate(flat, size=target, mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*images.shape[:-2], *target)


def _resize_uint8(images: Tensor, target: tuple[int, ...]) -> Tensor:
    """The CPU's uint8 resize on channels-last frames (torch's kernel for torchvision's
    resize: 16x faster than through float32 for 112 -> 448 frames, within 1 of it)."""
    clip = images.dim() == 5
    frames = images.transpose(1, 2).flatten(0, 1) if clip else images  # [N*T, C, H, W]
    out = F.interpolate(
        frames.contiguous(memory_format=torch.channels_last),
        size=target,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    ).contiguous()
    if clip:
        return out.view(images.shape[0], images.shape[2], *out.shape[1:]).transpose(1, 2)
    return out


def resize_keeping_aspect(images: Tensor, longest: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` resized (``resize_frames``) to the aspect ratio of ``H x W``
    with the longer side ``longest`` (``picture_shape``): what a detector or a segmenter
    sees of an image."""
    return resize_frames(images, picture_shape(images.shape[-2], images.shape[-1], longest))


def resize_nearest(values: Tensor, shape: tuple[int, int]) -> Tensor:
    """``values [B, *S]`` (labels, masks, scores) resized by nearest neighbour to ``shape``
    in their last two dims, same dtype: output row ``i`` takes input row
    ``floor(i * H / H')`` (columns alike), as ``F.interpolate(mode="nearest")``, by index,
    so integers of any size stay exact and nothing goes through float."""
    if tuple(values.shape[-2:]) == tuple(shape):
        return values
    rows = _nearest_index(values.shape[-2], shape[0], values.device)
    cols = _nearest_index(values.shape[-1], shape[1], values.device)
    return values.index_select(-2, rows).index_select(-1, cols)


def _nearest_index(size: int, out: int, device: torch.device) -> Tensor:
    return (torch.arange(out, device=device, dtype=torch.int64) * size).div(
        out, rounding_mode="floor"
    )


def _grow(t: Tensor, factor: int) -> Tensor:
    return t.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else t


def _colour(rgb: tuple[int, int, int], like: Tensor) -> Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(
        1, 3, *([1] * (like.dim() - 2))
    )
