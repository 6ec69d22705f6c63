"""What the command does with object detectors: find the boxes worth explaining, name them
as a ``DetectionTarget``, and draw each box's explanation with the box on it.

The API side is ``gsw.DetectionTarget`` (``gswfast.attribution.targets``); this module only
chooses boxes and draws them, for ``gswfast explain`` with a torchvision detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gswfast import render
from gswfast.attribution import model_session
from gswfast.attribution.targets import DetectionTarget
from gswfast.checks import unit_float

BOX_COLOUR = (255, 255, 255)  # the explained box, over the heat and the boundaries


@dataclass(frozen=True)
class Detections:
    """The boxes of one image worth explaining: ``boxes`` float ``[N, 4]`` xyxy in the
    model's input pixels, ``labels`` int64 ``[N]``, ``scores`` float ``[N]``, best first;
    ``best`` the highest score of any box found (to say why none was kept)."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    best: float

    def target(self, iou: float = 0.5) -> DetectionTarget:
        """The ``DetectionTarget`` of these boxes (one image)."""
        return DetectionTarget([self.boxes], [self.labels], iou=iou)


def detect(model: nn.Module, image: Tensor, count: int, threshold: float) -> Detections:
    """The ``count`` best boxes of ``image [1, 3, H, W]`` (uint8 or float 0..1) with a score
    of at least ``threshold``, as the detector (eval mode, no gradients) returns them."""
    with model_session(model, True), torch.no_grad():
        (found,) = model(unit_float(image))
    scores = found["scores"].float()
    order = torch.argsort(scores, descending=True, stable=True)
    kept = order[scores[order] >= threshold][:count]
    return Detections(
        boxes=found["boxes"][kept].float(),
        labels=found["labels"][kept].long(),
        scores=scores[kept],
        best=float(scores.max()) if scores.numel() else 0.0,
    )


def draw_boxes(pictures: Tensor, boxes: Tensor, scale: tuple[float, float]) -> Tensor:
    """uint8 ``pictures [N, 3, H', W']`` with box ``n`` of ``boxes [N, 4]`` (xyxy in input
    pixels, ``scale`` = (H' / H, W' / W) to the picture) outlined, 2 pixels wide."""
    out = pictures.clone()
    colour = torch.tensor(BOX_COLOUR, dtype=out.dtype, device=out.device).view(3, 1, 1)
    height, width = out.shape[-2:]
    for picture, box in zip(out, boxes.tolist(), strict=True):
        x1, x2 = (min(max(round(v * scale[1]), 0), width - 1) for v in (box[0], box[2]))
        y1, y2 = (min(max(round(v * scale[0]), 0), height - 1) for v in (box[1], box[3]))
        for top, bottom, left, right in (
            (y1, y1 + 2, x1, x2 + 1),
            (y2 - 1, y2 + 1, x1, x2 + 1),
            (y1, y2 + 1, x1, x1 + 2),
            (y1, y2 + 1, x2 - 1, x2 + 1),
        ):
            picture[:, max(top, 0) : bottom, max(left, 0) : right] = colour
    return out


def sheet(pictures: Sequence[Tensor], gap: int = 4) -> Tensor:
    """uint8 ``[3, H, sum W + gaps]``: ``pictures`` (each ``[3, H, W]``) side by side."""
    parts: list[Tensor] = []
    for picture in pictures:
        if parts:
            parts.append(torch.full((3, picture.shape[1], gap), 32, dtype=picture.dtype))
        parts.append(picture)
    return torch.cat(parts, dim=-1)


def box_record(found: Detections, row: int, scale: tuple[float, float]) -> dict[str, Any]:
    """The JSON of box ``row``: its xyxy box in the input file's pixels (``scale`` = file /
    model input) and the detector's score (its label is the explanation's target)."""
    box = found.boxes[row].tolist()
    x1, y1, x2, y2 = box[0] * scale[1], box[1] * scale[0], box[2] * scale[1], box[3] * scale[0]
    return {
        "box": [round(v, 2) for v in (x1, y1, x2, y2)],
        "score": round(float(found.scores[row]), 6),
    }


def picture_of_boxes(
    expl: Any, image: Tensor, found: Detections, k: int, shape: tuple[int, int]
) -> Tensor:
    """uint8 ``[N, 3, H', W']``: each box's explanation drawn over ``image [1, 3, H, W]`` at
    ``shape``, its box outlined."""
    rows = expl.segment_scores.shape[0]
    pictures = render.draw_picture(expl, image.expand(rows, -1, -1, -1), k, shape=shape)
    scale = (shape[0] / image.shape[-2], shape[1] / image.shape[-1])
    return draw_boxes(pictures, found.boxes.to(pictures.device), scale)
