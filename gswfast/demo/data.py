"""Synthetic demo data with known answers: shapes on textured backgrounds, and clips of a
shape performing an action among static distractors. Every sample comes with the exact
mask of the object that decides its class, so explanations can be scored (pointing game,
relevance mass). Everything is drawn in torch from a seeded generator: no downloads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
ACTIONS: tuple[str, ...] = ("left", "right", "up", "down", "rotate", "grow")


@dataclass(frozen=True)
class Batch:
    """``images`` float ``[N, 3, H, W]`` (or clips ``[N, 3, T, H, W]``) in 0..1, ``classes``
    int64 ``[N]`` and the deciding object's ``masks`` bool ``[N, H, W]`` (``[N, T, H, W]``)."""

    images: Tensor
    classes: Tensor
    masks: Tensor


def shape_images(count: int, size: int = 64, generator: torch.Generator | None = None) -> Batch:
    """Images of one shape each (the class, ``SHAPES``) at a random place, scale, colour and
    rotation, over a textured background (photo crop, smooth noise or stripes) with a few
    small clutter blobs."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    classes = torch.randint(0, len(SHAPES), (count,), generator=g)
    images = _backgrounds(count, size, g)
    _draw_clutter(images, g)
    radius = size * (0.15 + 0.12 * torch.rand(count, generator=g))
    centre = radius.unsqueeze(1) + (size - 2 * radius.unsqueeze(1)) * torch.rand(
        count, 2, generator=g
    )
    angle = 2 * math.pi * torch.rand(count, generator=g)
    masks = _inside(classes, centre, radius, angle, size)
    _paint(images, masks, _colours(count, g))
    return Batch(images.clamp(0, 1), classes, masks)


@dataclass(frozen=True)
class Scenes:
    """Detection data: ``images`` float ``[N, 3, H, W]`` in 0..1 with ``OBJECTS`` shapes each,
    their ``boxes`` float ``[N, OBJECTS, 4]`` (xyxy, the tight box of each mask, pixel
    edges), ``labels`` int64 ``[N, OBJECTS]`` (1 + the shape's index in ``SHAPES``: 0 is
    torchvision's background) and ``masks`` bool ``[N, OBJECTS, H, W]``."""

    images: Tensor
    boxes: Tensor
    labels: Tensor
    masks: Tensor


OBJECTS = 2  # shapes per detection scene: one in each half, so a box has its own object


def detection_scenes(
    count: int, size: int = 96, generator: torch.Generator | None = None
) -> Scenes:
    """Images with ``OBJECTS`` shapes each, one in the left half and one in the right (never
    overlapping), of random kinds, scales, colours and rotations over a textured background
    with clutter: the demo detector's data, where each box has one object to point at."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    images = _backgrounds(count, size, g)
    _draw_clutter(images, g)
    masks = []
    labels = torch.randint(0, len(SHAPES), (count, OBJECTS), generator=g)
    for side in range(OBJECTS):
        radius = size * (0.1 + 0.08 * torch.rand(count, generator=g))
        half = size / OBJECTS
        y = radius + (size - 2 * radius) * torch.rand(count, generator=g)
        x = side * half + radius + (half - 2 * radius) * torch.rand(count, generator=g)
        angle = 2 * math.pi * torch.rand(count, generator=g)
        mask = _inside(labels[:, side], torch.stack([y, x], 1), radius, angle, size)
        _paint(images, mask, _colours(count, g))
        masks.append(mask)
    stacked = torch.stack(masks, 1)  # [N, OBJECTS, H, W]
    return Scenes(images.clamp(0, 1), _mask_boxes(stacked), labels + 1, stacked)


def _mask_boxes(masks: Tensor) -> Tensor:
    """float ``[..., 4]``: the xyxy box around each mask ``[..., H, W]`` (pixel edges)."""
    rows, cols = masks.any(-1), masks.any(-2)
    index_y = torch.arange(masks.shape[-2], dtype=torch.float32)
    index_x = torch.arange(masks.shape[-1], dtype=torch.float32)
    y1 = torch.where(rows, index_y, float("inf")).amin(-1)
    y2 = torch.where(rows, index_y, -1.0).amax(-1) + 1
    x1 = torch.where(cols, index_x, float("inf")).amin(-1)
    x2 = torch.where(cols, index_x, -1.0).amax(-1) + 1
    return torch.stack([x1, y1, x2, y2], -1)


def action_clips(
    count: int, frames: int = 16, size: int = 64, generator: torch.Generator | None = None
) -> Batch:
    """Clips where one shape performs the class's action (``ACTIONS``: moves left, right,
    up or down, rotates, or grows) over a static textured background with two static
    distractor shapes. Masks are the acting shape in every frame."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    classes = torch.randint(0, len(ACTIONS), (count,), generator=g)
    background = _backgrounds(count, size, g)
    _draw_clutter(background, g)
    _draw_distractors(background, g)
    shape = torch.randint(1, len(SHAPES), (count,), generator=g)  # no circles: rotation must show
    colour = _colours(count, g)
    time = torch.linspace(0, 1, frames).view(1, frames)
    radius0 = size * (0.12 + 0.05 * torch.rand(count, 1, generator=g))
    travel = size * (0.3 + 0.15 * torch.rand(count, 1, generator=g))  # pixels moved over the clip
    radius = radius0 * torch.where(classes.view(-1, 1) == 5, 1 + 0.9 * time, torch.ones_like(time))
    spin = (0.6 + 0.6 * torch.rand(count, 1, generator=g)) * torch.where(
        torch.rand(count, 1, generator=g) < 0.5, -1.0, 1.0
    )
    angle = 2 * math.pi * torch.rand(count, 1, generator=g) + torch.where(
        classes.view(-1, 1) == 4, spin * math.pi * time, 0.0
    )
    direction = torch.tensor(
        [[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    )[classes]  # (y, x)
    margin = radius.amax(1, keepdim=True) + 1
    low = margin - torch.clamp(direction * travel, max=0)  # room for the trip on both sides
    high = size - margin - torch.clamp(direction * travel, min=0)
    start = low + (high - low).clamp(min=0) * torch.rand(count, 2, generator=g)
    centre = start.unsqueeze(1) + direction.unsqueeze(1) * travel.unsqueeze(2) * time.unsqueeze(
        2
    )  # [N, T, 2]
    masks = _inside(
        shape.repeat_interleave(frames),
        centre.reshape(-1, 2),
        radius.reshape(-1),
        angle.reshape(-1),
        size,
    )
    clips = (
        background.unsqueeze(1).repeat(1, frames, 1, 1, 1).reshape(count * frames, 3, size, size)
    )
    _paint(clips, masks, colour.repeat_interleave(frames, 0))
    clips = clips.reshape(count, frames, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()
    return Batch(clips.clamp(0, 1), classes, masks.reshape(count, frames, size, size))


# ------------------------------------------------------------------------ drawing


def _inside(shape: Tensor, centre: Tensor, radius: Tensor, angle: Tensor, size: int) -> Tensor:
    """bool ``[N, size, size]``: pixels inside each shape (centre ``[N, 2]`` as (y, x))."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = (coords.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dx = (coords.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    circle = u * u + v * v <= 1
    square = torch.maximum(u.abs(), v.abs()) <= 0.8
    triangle = (v >= -0.5) & (v <= 1 - math.sqrt(3) * u.abs())
    cross = ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    pick = shape.view(-1, 1, 1)
    return torch.where(
        pick == 0, circle, torch.where(pick == 1, square, torch.where(pick == 2, triangle, cross))
    )


def _paint(images: Tensor, masks: Tensor, colours: Tensor) -> None:
    images.copy_(torch.where(masks.unsqueeze(1), colours.view(-1, 3, 1, 1), images))


def _colours(count: int, g: torch.Generator) -> Tensor:
    """Saturated colours of random hue, ``[N, 3]``."""
    hue = torch.rand(count, 1, generator=g)
    phase = torch.tensor([0.0, 1 / 3, 2 / 3])
    return (0.5 + 0.5 * torch.cos(2 * math.pi * (hue + phase))).clamp(0, 1) * 0.8 + 0.1


def _draw_clutter(images: Tensor, g: torch.Generator) -> None:
    count, _, size, _ = images.shape
    for _ in range(3):
        radius = size * (0.03 + 0.03 * torch.rand(count, generator=g))
        centre = size * torch.rand(count, 2, generator=g)
        blob = _inside(
            torch.zeros(count, dtype=torch.long), centre, radius, torch.zeros(count), size
        )
        _paint(images, blob, torch.rand(count, 3, generator=g))


def _draw_distractors(images: Tensor, g: torch.Generator) -> None:
    count, _, size, _ = images.shape
    for _ in range(2):
        radius = size * (0.08 + 0.04 * torch.rand(count, generator=g))
        centre = radius.unsqueeze(1) + (size - 2 * radius.unsqueeze(1)) * torch.rand(
            count, 2, generator=g
        )
        shape = torch.randint(0, len(SHAPES), (count,), generator=g)
        angle = 2 * math.pi * torch.rand(count, generator=g)
        _paint(images, _inside(shape, centre, radius, angle, size), _colours(count, g))


def _backgrounds(count: int, size: int, g: torch.Generator) -> Tensor:
    kind = torch.randint(0, 3, (count,), generator=g)
    out = torch.empty(count, 3, size, size)
    photos = _photo_bank()
    for i in range(count):
        if kind[i] == 0:
            out[i] = _photo_crop(photos, size, g)
        elif kind[i] == 1:
            out[i] = _smooth_noise(size, g)
        else:
            out[i] = _stripes(size, g)
    return out * 0.7 + 0.15  # keep the object's saturated colours apart from the background


@functools.lru_cache(maxsize=1)
def _photo_bank() -> list[Tensor]:
    import skimage.data as data  # scikit-image ships these photos; nothing is downloaded

    return [
        torch.from_numpy(p()).permute(2, 0, 1).float() / 255  # type: ignore[no-untyped-call]  # scikit-image's function is unannotated
        for p in (data.astronaut, data.coffee, data.chelsea)
    ]


def _photo_crop(photos: list[Tensor], size: int, g: torch.Generator) -> Tensor:
    photo = photos[int(torch.randint(0, len(photos), (1,), generator=g))]
    side = int(torch.randint(size, min(photo.shape[1:]), (1,), generator=g))
    top = int(torch.randint(0, photo.shape[1] - side + 1, (1,), generator=g))
    left = int(torch.randint(0, photo.shape[2] - side + 1, (1,), generator=g))
    crop = photo[:, top : top + side, left : left + side].unsqueeze(0)
    return (
        torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]
        * 0.6
        + 0.2
    )


def _smooth_noise(size: int, g: torch.Generator) -> Tensor:
    coarse = torch.rand(1, 3, max(2, size // 8), max(2, size // 8), generator=g)
    return (
        torch.nn.functional.interpolate(
            coarse, size=(size, size), mode="bilinear", align_corners=False
        )[0]
        * 0.5
        + 0.25
    )


def _stripes(size: int, g: torch.Generator) -> Tensor:
    angle = math.pi * float(torch.rand(1, generator=g))
    period = size * (0.1 + 0.2 * float(torch.rand(1, generator=g)))
    coords = torch.arange(size, dtype=torch.float32)
    phase = (
        (math.cos(angle) * coords.view(1, -1) + math.sin(angle) * coords.view(-1, 1))
        * 2
        * math.pi
        / period
    )
    wave = 0.5 + 0.5 * torch.sin(phase)
    a, b = (
        torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2,
        torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2,
    )
    return a * wave + b * (1 - wave)
