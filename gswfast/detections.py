"""What the command does with object detectors: find the boxes worth explaining, name them
as a ``DetectionTarget``, and draw each box's explanation with the box on it.

The API side is ``gsw.DetectionTarget`` (``gswfast.attribution.targets``); this module only
chooses boxes and draws them, for ``gswfast explain`` with a torchvision detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    ``best`` the highest score of any box found (to say why none was kept), ``found`` how
    many the detector returned."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    best: float
    found: int = 0

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
        found=int(scores.numel()),
    )


def draw_boxes(pictures: Tensor, boxes: Tensor, scale: tuple[float, float]) -> Tensor:
    """uint8 ``pictures [N, 3, H', W']`` with box ``n`` of ``boxes [N, 4]`` (xyxy pixel edges
    in input pixels, ``scale`` = (H' / H, W' / W) to the picture) outlined, 2 pixels wide,
    inside the box."""
    out = pictures.clone()
    colour = torch.tensor(BOX_COLOUR, dtype=out.dtype, device=out.device).view(3, 1, 1)
    height, width = out.shape[-2:]
    for picture, box in zip(out, boxes.tolist(), strict=True):
        x1, x2 = (min(max(round(v * scale[1]), 0), width) for v in (box[0], box[2]))
        y1, y2 = (min(max(round(v * scale[0]), 0), height) for v in (box[1], box[3]))
        for top, bottom, left, right in (
            (y1, y1 + 2, x1, x2),
            (y2 - 2, y2, x1, x2),
            (y1, y2, x1, x1 + 2),
            (y1, y2, x2 - 2, x2),
        ):
            picture[:, max(top, y1) : min(bottom, y2), max(left, x1) : min(right, x2)] = colour
    return out


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


def demo_scenes(
    device: torch.device,
    method: str,
    out: Path,
    top_k: int,
    count: int = 4,
    n_segments: int | None = None,
) -> tuple[list[dict[str, Any]], str, float]:
    """``gswfast demo``'s detections: the demo detector on ``count`` demo scenes, its boxes
    scored 0.5 or more explained with ``method``, a picture per box (``detections_<n>.png``);
    each box scored against the true object it overlaps most (pointing game, relevance
    mass). Returns the JSON records, the summary line and the seconds explaining took."""
    import time

    import gswfast as gsw
    from gswfast import viz
    from gswfast.demo import SHAPES, load
    from gswfast.demo.data import detection_scenes
    from gswfast.regions import make_explainer

    scenes = detection_scenes(count, generator=torch.Generator().manual_seed(2026))
    model = load("detector", device)
    x = scenes.images.to(device)
    found = [detect(model, x[b : b + 1], 2, 0.5) for b in range(count)]
    target = DetectionTarget([f.boxes for f in found], [f.labels for f in found])
    # a gradient method or a region method
    explainer = make_explainer(model, method, n_segments=n_segments)
    start = time.perf_counter()
    expl = explainer(x, target)
    seconds = time.perf_counter() - start
    rows = expl.info["box_of"]
    objects = [_object_of(scenes.boxes[b], found[b].boxes[i].cpu()) for b, i in rows]
    masks = torch.stack([scenes.masks[b, o] for (b, _), o in zip(rows, objects, strict=True)])
    hits = gsw.metrics.pointing_game(expl, masks.to(device)).tolist()
    mass = gsw.metrics.relevance_mass(expl, masks.to(device)).tolist()
    names = ("__background__", *SHAPES)
    side = 3 * x.shape[-1]  # pictures at 3x the scenes' 96 pixels
    samples = torch.tensor([b for b, _ in rows], device=device)
    pictures = render.draw_picture(expl, x.index_select(0, samples), top_k, shape=(side, side))
    boxes = torch.stack([found[b].boxes[i] for b, i in rows])
    pictures = draw_boxes(pictures, boxes.to(pictures.device), (3.0, 3.0)).cpu()
    records = []
    for row, (b, i) in enumerate(rows):
        path = out / f"detections_{row}.png"
        note = f"box score {float(found[b].scores[i]):.3g}"
        viz.save_png(viz.captioned(pictures[row], expl, row, names, note=note), path)
        records.append(
            {
                "files": [str(path)],
                "scene": b,
                "class": names[int(found[b].labels[i])],
                "score": round(float(found[b].scores[i]), 6),
                "pointing_game": hits[row],
                "relevance_mass": round(mass[row], 4),
            }
        )
    total = int(scenes.labels.numel())
    summary = (
        f"{count} demo scenes: {len(rows)} boxes found for {total} objects; best segment on the "
        f"box's object in {sum(hits)}; mean relevance mass {sum(mass) / max(len(mass), 1):.2f}; "
        f"explained in {seconds * 1e3:.0f} ms"
    )
    return records, summary, seconds


def _object_of(true_boxes: Tensor, box: Tensor) -> int:
    """The index of the true box that ``box`` overlaps most."""
    from gswfast.attribution.targets import box_iou

    return int(box_iou(box.view(1, 4), true_boxes)[0].argmax())
