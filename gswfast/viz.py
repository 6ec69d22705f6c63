"""Pictures for people: overlays with the best segments outlined, PNG and GIF files."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gswfast import render
from gswfast.explain import Explanation

TOP_K_COLOUR = (0, 255, 255)


def picture(expl: Explanation, images: Tensor, k: int = 3, size: int | None = None, alpha: float = 0.5) -> Tensor:
    """uint8 ``[B, 3, (T), H', W']``: the heatmap over ``images`` (uint8 or float 0..1),
    segment boundaries half-transparent yellow, the outline of the ``k`` best segments
    cyan. ``size``: enlarge (nearest) so the longer side is about ``size`` pixels; lines are
    drawn after enlarging, one pixel wide."""
    factor = max(1, (size or 0) // max(images.shape[-2:]))
    grow = (lambda t: t.repeat_interleave(factor, -1).repeat_interleave(factor, -2)) if factor > 1 else (lambda t: t)
    rgb = grow(render.as_rgb_uint8(images.to(expl.labels.device), tuple(expl.labels.shape[1:]))).float()
    colours = grow(render.color_scores(expl.heatmap()).movedim(-1, 1))
    out = rgb * (1 - alpha) + colours * alpha
    labels, top = grow(expl.labels), grow(expl.top_k(k))
    edge = render.boundaries(labels).unsqueeze(1)
    yellow = torch.tensor((255.0, 255.0, 0.0), device=out.device).view(1, 3, *([1] * (out.dim() - 2)))
    out = torch.where(edge, 0.5 * out + 0.5 * yellow, out)
    outline = (render.boundaries(top.int()) | _border(top)) & top
    cyan = torch.tensor(TOP_K_COLOUR, dtype=out.dtype, device=out.device).view_as(yellow)
    out = torch.where(outline.unsqueeze(1), cyan, out)
    return out.round().clamp(0, 255).to(torch.uint8)


def _border(mask: Tensor) -> Tensor:
    """The image's outermost pixels (so regions touching the border get outlined too)."""
    edge = torch.zeros_like(mask)
    edge[..., 0, :] = edge[..., -1, :] = True
    edge[..., :, 0] = edge[..., :, -1] = True
    return edge


def save_png(image: Tensor, path: str | Path) -> None:
    """Writes uint8 ``[3, H, W]`` as PNG (Pillow)."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).cpu().contiguous().numpy()).save(str(path))


def save_gif(frames: Tensor, path: str | Path, fps: float = 8.0) -> None:
    """Writes uint8 ``[3, T, H, W]`` as a looping animated GIF (Pillow)."""
    from PIL import Image

    pictures = [Image.fromarray(f.permute(1, 2, 0).cpu().numpy()) for f in frames.unbind(1)]
    pictures[0].save(str(path), save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0)


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """uint8 ``[N, 3, H, W]`` resized (antialiased bilinear) to ``size``, uint8."""
    target = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == target:
        return images
    out = F.interpolate(images.float(), size=target, mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
