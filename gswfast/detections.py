"""What the command and explain-dataset do with object detectors and semantic segmenters:
choose the rows worth explaining (a detector's best boxes, as a ``DetectionTarget``; a
segmenter's classes over the pixels it gives them, as a ``SegmentationTarget``), and draw
each row's explanation with its box or its mask outlined.

The API side is ``gsw.DetectionTarget`` and ``gsw.SegmentationTarget``
(``gswfast.attribution.targets``); this module only chooses rows and draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gswfast import render
from gswfast.attribution import model_session
from gswfast.attribution.targets import DetectionTarget, SegmentationTarget, segmentation_maps
from gswfast.checks import unit_float
from gswfast.options import DEFAULT_BOX_THRESHOLD, DEFAULT_BOXES, UserError
from gswfast.segmentation import Segmentation

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


@dataclass(frozen=True)
class Rows:
    """What one image of a detector or a segmenter is explained by, a row each: ``names``
    (``box0``, ``box1``... or ``class3``...), the ``target`` (None: no row, ``notes`` say
    why), the detector's boxes ``found`` or the segmenter's ``classes`` and their pixel
    ``masks`` bool ``[R, H, W]``. ``notes``: what the user should hear about the rows, as
    ``(kind, text)`` (a video's frames share a kind: one line per kind, not per frame)."""

    names: list[str]
    target: DetectionTarget | SegmentationTarget | None
    found: Detections | None = None
    classes: list[int] = field(default_factory=list)
    masks: Tensor | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)


def find_rows(
    model: nn.Module,
    kind: str,
    image: Tensor,
    where: str,
    *,
    boxes: int | None = None,
    box_threshold: float | None = None,
    classes: Sequence[int] | None = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
) -> Rows:
    """The rows of ``image [1, 3, H, W]`` for a model of ``kind``: a detector's
    (``detection_rows``: its best ``boxes``, default 3, scored ``box_threshold`` or more,
    default 0.5) or a segmenter's (``segmentation_rows``: ``classes``, through
    ``preprocess``)."""
    if kind == "detection":
        count = DEFAULT_BOXES if boxes is None else boxes
        threshold = DEFAULT_BOX_THRESHOLD if box_threshold is None else box_threshold
        return detection_rows(model, image, count, threshold, where)
    return segmentation_rows(model, image, classes, preprocess, where)


def detection_rows(
    model: nn.Module, image: Tensor, count: int, threshold: float, where: str
) -> Rows:
    """The rows of a detector on ``image [1, 3, H, W]``: its best ``count`` boxes scored
    ``threshold`` or more (``where`` names the image in the notes)."""
    found = detect(model, image, count, threshold)
    if found.boxes.shape[0]:
        names = [f"box{row}" for row in range(found.boxes.shape[0])]
        return Rows(names, found.target(), found=found)
    if found.found:
        text = (
            f"{where}: no box scored {threshold} or more (the best: {found.best:.3g}); lower "
            "--box-threshold to explain it"
        )
        note = ("low boxes", text)
    else:
        note = ("no box", f"{where}: the model found no box at all")
    return Rows([], None, found=found, notes=[note])


def segmentation_rows(
    model: nn.Module,
    image: Tensor,
    classes: Sequence[int] | None,
    preprocess: Callable[[Tensor], Tensor] | None,
    where: str,
) -> Rows:
    """The rows of a segmenter on ``image [1, 3, H, W]``: each of ``classes`` (default: the
    class given the most pixels, background aside) over the pixels the model gives it.
    ``UserError`` for a class the model does not have."""
    with model_session(model, True), torch.no_grad():
        x = unit_float(image)
        maps = segmentation_maps(model(x if preprocess is None else preprocess(x)))
    predicted, count = maps.argmax(1)[0], maps.shape[1]  # [H, W], classes
    chosen = list(classes) if classes else [most_given_class(predicted, count)]
    wrong = [c for c in chosen if c >= count]
    if wrong:
        raise UserError(f"--classes {wrong[0]}: out of range for a model with {count} classes")
    masks = torch.stack([predicted == c for c in chosen])
    empty = "the model gives class {} no pixel; its explanation is empty (all scores 0)"
    notes = [
        (f"class {c}", f"{where}: {empty.format(c)}")
        for c, mask in zip(chosen, masks, strict=True)
        if not bool(mask.any())
    ]
    target = SegmentationTarget(chosen, masks)
    return Rows([f"class{c}" for c in chosen], target, classes=chosen, masks=masks, notes=notes)


def rows_input(
    image: Tensor, rows: Rows, segmentation: Segmentation | None = None
) -> tuple[Tensor, Segmentation | None]:
    """What the explainer takes for ``rows`` of ``image [1, 3, H, W]`` (and its
    ``segmentation``, where given): a detection target expands the image to a row per box
    itself; a segmenter's classes need the image (and its segments) once per class."""
    if rows.found is not None:
        return image, segmentation
    count = len(rows.names)
    seg = None
    if segmentation is not None:  # the image's segments, once per class
        seg = segmentation.select(torch.zeros(count, dtype=torch.int64, device=segmentation.device))
    return image.expand(count, -1, -1, -1), seg


def most_given_class(predicted: Tensor, classes: int) -> int:
    """The class the model gives the most pixels of ``predicted [H, W]``, class 0 (the
    background of torchvision's segmenters) aside unless it is the only one."""
    counts = torch.bincount(predicted.flatten().cpu(), minlength=classes)
    if classes > 1 and int(counts[1:].sum()) > 0:
        return 1 + int(counts[1:].argmax())
    return 0


def row_pictures(
    expl: Any,
    image: Tensor,
    rows: Rows,
    top_k: int,
    shape: tuple[int, int],
    class_names: Sequence[str] | None,
) -> list[Tensor]:
    """uint8 ``[3, H', W' + legend]`` per row of ``expl``, captioned: its explanation over
    ``image [1, 3, H, W]`` at ``shape``, with its box (a detector's, and its score) or its
    class's pixels (a segmenter's) outlined."""
    from gswfast import viz

    if rows.found is not None:
        drawn = picture_of_boxes(expl, image, rows.found, top_k, shape)
    else:
        assert rows.masks is not None  # a segmenter's rows
        drawn = render.draw_picture(
            expl, image.expand(len(rows.names), -1, -1, -1), top_k, shape=shape
        )
        edge = render.outline(render.resize_nearest(rows.masks, shape)).unsqueeze(1)
        drawn = torch.where(edge, torch.tensor(255, dtype=drawn.dtype, device=drawn.device), drawn)
    pictures = []
    for row, picture in enumerate(drawn.cpu()):
        note = None if rows.found is None else f"box score {float(rows.found.scores[row]):.3g}"
        pictures.append(viz.captioned(picture, expl, row, class_names, note=note))
    return pictures


def empty_picture(image: Tensor, shape: tuple[int, int], caption: str) -> Tensor:
    """uint8 ``[3, H', W' + legend]``: ``image [1, 3, H, W]`` in grey at ``shape``, captioned
    ``caption``: a column of a video's sheet where a frame has fewer rows than others."""
    from gswfast import viz

    grey = render.luma(render.resize_frames(image.cpu(), shape))[0].expand(3, -1, -1)
    strip = viz.legend(shape[1], None, caption)  # no scores: no colour scale
    return torch.cat([grey, strip], dim=-2)


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
