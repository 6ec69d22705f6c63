"""Targets beyond classes: boxes of object detectors and masks of semantic segmenters.

``DetectionTarget`` names boxes to explain ("why did the detector find this box?"): the
batch is expanded to one row per box (``rows``), each row's score is the score of its best
matching predicted box, and the explanation has one row per box. ``SegmentationTarget``
explains a class's summed logit over a pixel mask (pytorch-grad-cam's
SemanticSegmentationTarget). Both resolve to an ``OutputTarget`` whose rows can be chosen
(``target[rows]``), so every method and its batching take them as they take a function of
the model's output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from gswfast.attribution._model import OutputTarget, Target, accumulation_dtype

Detections = list[Mapping[str, Tensor]]
MATCHES: tuple[str, ...] = ("iou", "similarity")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]``
    (0 where a box has no area), differentiable in both."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - overlap
    return torch.where(union > 0, overlap / union.clamp(min=1e-12), 0.0)


class DetectionTarget:
    """The boxes of a detector to explain, one list entry per sample of the batch.

    Args:
        boxes: per sample, float ``[N_b, 4]`` xyxy boxes in input pixels (usually the
            detector's own top boxes); a single ``[N, 4]`` tensor for a batch of one.
        labels: per sample, int ``[N_b]`` classes of the boxes, or None: a predicted box of
            any class may match.
        iou: the least IoU of a match, in (0, 1].
        outputs: for detectors whose output is not torchvision's (a list of dicts with
            ``boxes [M, 4]``, ``labels [M]``, ``scores [M]``, optionally ``probs [M, C]``),
            a function from the model's output to such a list (a YOLO-style adapter is in
            the user guide).

    A box's score in an output is that of its best matching predicted box, 0 without one.
    Gradient methods match by IoU (at least ``iou``, the same label, the highest IoU wins)
    and explain that box's score: the gradient flows through the matched score, while the
    non-maximum suppression that kept the box only selects. Region methods (LIME,
    occlusion, KernelSHAP, RISE), whose perturbed inputs move boxes, use D-RISE's similarity
    instead: IoU times the predicted score (times the cosine of the class probabilities
    where the detector returns ``probs``), the largest over the same-label boxes.
    """

    def __init__(
        self,
        boxes: Sequence[Tensor] | Tensor,
        labels: Sequence[Tensor | Sequence[int]] | Tensor | None = None,
        iou: float = 0.5,
        outputs: Callable[[Any], Detections] | None = None,
    ) -> None:
        self.boxes = _box_list(boxes)
        self.labels = _label_list(labels, [len(b) for b in self.boxes])
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
            raise ValueError(f"iou: expected a number in (0, 1], got {iou!r}")
        if outputs is not None and not callable(outputs):
            raise TypeError(f"outputs: expected a function of the model's output, got {outputs!r}")
        self.iou = float(iou)
        self.outputs = outputs

    def __repr__(self) -> str:
        counts = [len(b) for b in self.boxes]
        return f"DetectionTarget(boxes per sample={counts}, iou={self.iou})"

    def rows(self, batch: int, device: torch.device, match: str) -> tuple[Tensor, BoxScores]:
        """The sample of each box-row ``[R]`` (``R`` = all boxes) and the rows' target,
        matching as ``match`` says (``MATCHES``)."""
        if len(self.boxes) != batch:
            raise ValueError(
                f"target: the DetectionTarget has boxes for {len(self.boxes)} sample(s), "
                f"the inputs have {batch}"
            )
        counts = torch.tensor([len(b) for b in self.boxes], dtype=torch.int64)
        if int(counts.sum()) == 0:
            raise ValueError("target: the DetectionTarget has no box to explain")
        rows = torch.repeat_interleave(torch.arange(batch), counts).to(device)
        boxes = torch.cat(self.boxes).to(device=device, dtype=torch.float32)
        labels = torch.cat(self.labels).to(device)
        return rows, BoxScores(
            boxes=boxes, labels=labels, iou=self.iou, match=match, adapt=self.outputs
        )

    def box_of(self) -> list[tuple[int, int]]:
        """``(sample, box)`` of each row, in row order."""
        return [(b, i) for b, boxes in enumerate(self.boxes) for i in range(len(boxes))]


@dataclass(frozen=True, kw_only=True)
class BoxScores(OutputTarget):
    """Row ``r`` explains reference box ``boxes[r]`` (label ``labels[r]``, -1: any)."""

    boxes: Tensor
    labels: Tensor
    iou: float
    match: str
    adapt: Callable[[Any], Detections] | None

    def __getitem__(self, rows: object) -> BoxScores:
        index = _row_index(rows, self.boxes.device)
        return replace(
            self, boxes=self.boxes.index_select(0, index), labels=self.labels.index_select(0, index)
        )

    def row_classes(self, batch: int, device: torch.device) -> Tensor:
        return self.labels.to(device).clone()

    def select(self, output: object, batch: int) -> Tensor:
        detections = _detections(output if self.adapt is None else self.adapt(output), batch)
        if self.boxes.shape[0] != batch:
            raise ValueError(
                f"target: {self.boxes.shape[0]} box row(s) for a model output of {batch} inputs"
            )
        return torch.stack([self._score(r, found) for r, found in enumerate(detections)])

    def _score(self, row: int, found: Mapping[str, Tensor]) -> Tensor:
        """The score of reference box ``row`` among one input's predicted boxes (no host read)."""
        scores = found["scores"]
        if scores.shape[0] == 0:
            return scores.sum() * 0  # no box at all: 0, still a function of the output
        boxes = found["boxes"].to(self.boxes.dtype)
        overlap = box_iou(self.boxes[row : row + 1], boxes)[0]  # [M]
        label = self.labels[row]
        same = (found["labels"].to(label.device) == label) | (label < 0)
        if self.match == "similarity":
            similarity = overlap * scores
            if "probs" in found:
                similarity = similarity * _label_cosine(found["probs"], label)
            return torch.where(same, similarity, 0.0).amax()
        eligible = same & (overlap >= self.iou)
        best = torch.where(eligible, overlap, -1.0).argmax()
        return torch.where(eligible[best], scores[best], scores[best] * 0)


class SegmentationTarget:
    """A class's summed score over a pixel mask of a semantic segmentation model's output
    (torchvision's FCN, DeepLabV3 and LRASPP return ``{"out": [B, classes, H, W]}``; a
    tensor ``[B, classes, h, w]`` or an output with ``.logits`` are read too).

    Args:
        classes: the class of each sample, an int (all samples) or a sequence ``[B]``.
        masks: bool ``[B, H, W]`` (or ``[H, W]`` for all samples): the pixels whose logits
            of the class are summed; resized (nearest) to the output's grid where it is
            coarser than the input.
    """

    def __init__(self, classes: int | Sequence[int] | Tensor, masks: Tensor) -> None:
        if not isinstance(masks, Tensor) or masks.dim() not in (2, 3) or masks.dtype != torch.bool:
            got = f"{_shape_of(masks)}" + (
                f" of {masks.dtype}" if isinstance(masks, Tensor) else ""
            )
            raise ValueError(f"masks: expected a bool tensor [B, H, W] or [H, W], got {got}")
        self.classes = _classes(classes)
        if bool((self.classes < 0).any()):
            raise ValueError(f"classes: expected classes >= 0, got {self.classes.tolist()}")
        self.masks = masks

    def resolve(self, batch: int, spatial: tuple[int, ...], device: torch.device) -> MaskScores:
        """The ``OutputTarget`` of this target for a batch of ``batch`` inputs."""
        classes = self.classes.expand(batch) if self.classes.numel() == 1 else self.classes
        masks = self.masks.expand(batch, -1, -1) if self.masks.dim() == 2 else self.masks
        if classes.shape[0] != batch or masks.shape[0] != batch:
            raise ValueError(
                f"target: the SegmentationTarget has {classes.shape[0]} class(es) and "
                f"{masks.shape[0]} mask(s), the inputs {batch} sample(s)"
            )
        if tuple(masks.shape[-2:]) != tuple(spatial[-2:]):
            raise ValueError(
                f"masks: expected the inputs' height and width {tuple(spatial[-2:])}, got "
                f"{tuple(masks.shape[-2:])}"
            )
        return MaskScores(
            classes=classes.to(device).clone(),
            masks=masks.to(device),
            largest_class=int(classes.max()),
        )


@dataclass(frozen=True, kw_only=True)
class MaskScores(OutputTarget):
    """Row ``r``: the summed output of class ``classes[r]`` over ``masks[r]``."""

    classes: Tensor
    masks: Tensor
    largest_class: int  # read on the host once, so no forward pass waits for the device

    def __getitem__(self, rows: object) -> MaskScores:
        index = _row_index(rows, self.classes.device)
        return replace(
            self,
            classes=self.classes.index_select(0, index),
            masks=self.masks.index_select(0, index),
        )

    def row_classes(self, batch: int, device: torch.device) -> Tensor:
        return self.classes.to(device).clone()

    def select(self, output: object, batch: int) -> Tensor:
        maps = segmentation_maps(output)
        if maps.shape[0] != batch or self.classes.shape[0] != batch:
            raise ValueError(
                f"target: expected segmentation maps [B, classes, H, W] with B = {batch}, got "
                f"{tuple(maps.shape)}"
            )
        if self.largest_class >= maps.shape[1]:
            raise ValueError(
                f"classes: class {self.largest_class} is out of range for a model with "
                f"{maps.shape[1]} classes"
            )
        masks = self.masks
        if tuple(masks.shape[-2:]) != tuple(maps.shape[-2:]):
            masks = torch.nn.functional.interpolate(
                masks[:, None].float(), size=maps.shape[-2:], mode="nearest"
            )[:, 0].bool()
        chosen = maps.gather(1, self.classes.view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:]))
        # summed in float32 at least: float16 maps (autocast) overflow over a large mask
        return (chosen[:, 0].to(accumulation_dtype(maps.dtype)) * masks).flatten(1).sum(1)


def expand_target(
    target: Target, inputs: Tensor, match: str
) -> tuple[Tensor | None, Target, dict[str, Any]]:
    """For a ``DetectionTarget``: the sample of each box-row ``[R]``, the rows' target and
    the explanation's extra info (``box_of``: ``(sample, box)`` per row; ``boxes [R, 4]``;
    ``detection``: the target itself, for the deletion and insertion curves).
    A ``SegmentationTarget`` resolves in place (no rows); any other target passes through.
    ``inputs [B, C, (T), H, W]``: the batch."""
    batch, spatial, device = inputs.shape[0], tuple(inputs.shape[2:]), inputs.device
    if isinstance(target, DetectionTarget):
        rows, scores = target.rows(batch, device, match)
        info = {"box_of": target.box_of(), "boxes": scores.boxes, "detection": target}
        return rows, scores, info
    if isinstance(target, SegmentationTarget):
        return None, target.resolve(batch, spatial, device), {}
    return None, target, {}


def segmentation_maps(output: object) -> Tensor:
    """A segmentation model's float maps ``[B, classes, H, W]`` out of its output: the
    tensor itself, a dict's ``"out"`` (torchvision) or ``"logits"``, or ``.logits``."""
    held: object = output
    if isinstance(output, Mapping):
        held = output.get("out", output.get("logits"))
    elif not isinstance(output, Tensor):
        held = getattr(output, "logits", output)
    if not isinstance(held, Tensor) or held.dim() != 4 or not held.is_floating_point():
        raise ValueError(
            "target: a SegmentationTarget needs the model's maps as float [B, classes, H, W] "
            f"(a tensor, a dict's 'out' or .logits), got {_shape_of(held)}"
        )
    return held


def _detections(output: object, batch: int) -> Detections:
    """The model's output as one ``{"boxes", "labels", "scores"}`` mapping per input."""
    if not isinstance(output, (list, tuple)) or len(output) != batch:
        raise ValueError(
            f"target: a DetectionTarget needs one dict of boxes, labels and scores per input "
            f"({batch}), as torchvision's detectors return, got {_shape_of(output)}; map "
            "another output with DetectionTarget(..., outputs=a function)"
        )
    for i, found in enumerate(output):
        if not isinstance(found, Mapping) or not {"boxes", "labels", "scores"} <= set(found):
            raise ValueError(
                f"target: the output for input {i} must be a dict with 'boxes', 'labels' and "
                f"'scores', got {_shape_of(found)}"
            )
        boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
        probs = found.get("probs")
        if (
            boxes.dim() != 2
            or boxes.shape[1] != 4
            or scores.shape != boxes.shape[:1]
            or labels.shape != boxes.shape[:1]
            or (probs is not None and (probs.dim() != 2 or probs.shape[0] != boxes.shape[0]))
        ):
            raise ValueError(
                f"target: input {i}'s boxes must be [M, 4], its labels and scores [M] (probs "
                f"[M, C]), got {tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(scores.shape)}"
                + (f" and {tuple(probs.shape)}" if probs is not None else "")
            )
    return list(output)


def _label_cosine(probs: Tensor, label: Tensor) -> Tensor:
    """The cosine between each row of ``probs [M, C]`` and the one-hot vector of ``label``
    (1 for every row when ``label`` is -1: any class)."""
    column = label.clamp(min=0).to(probs.device).view(1, 1).expand(probs.shape[0], 1)
    cosine = probs.gather(1, column)[:, 0] / probs.norm(dim=1).clamp(min=1e-12)
    return torch.where(label.to(probs.device) < 0, torch.ones_like(cosine), cosine)


def _box_list(boxes: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(boxes, Tensor):
        boxes = [boxes]
    if not isinstance(boxes, Sequence) or not all(isinstance(b, Tensor) for b in boxes):
        raise TypeError(
            f"boxes: expected a list of [N, 4] tensors (one per sample), got {_shape_of(boxes)}"
        )
    checked = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes: sample {i}: expected [N, 4] xyxy boxes, got {tuple(b.shape)}")
        if not (b.is_floating_point() or b.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"boxes: sample {i}: expected float or int boxes, got {b.dtype}")
        b = b.detach().float()
        if not bool(torch.isfinite(b).all()) or bool((b[:, 2:] < b[:, :2]).any()):
            raise ValueError(
                f"boxes: sample {i}: expected finite xyxy boxes with x2 >= x1, y2 >= y1"
            )
        checked.append(b.cpu())
    return checked


def _label_list(labels: Any, counts: list[int]) -> list[Tensor]:
    if labels is None:
        return [torch.full((n,), -1, dtype=torch.int64) for n in counts]
    if isinstance(labels, Tensor):
        labels = [labels]
    if not isinstance(labels, Sequence) or len(labels) != len(counts):
        raise ValueError(
            f"labels: expected None or one sequence of classes per sample ({len(counts)}), "
            f"got {_shape_of(labels)}"
        )
    checked = []
    for i, (values, n) in enumerate(zip(labels, counts, strict=True)):
        t = torch.as_tensor(values).reshape(-1)
        if t.numel() == 0:
            t = t.to(torch.int64)  # [] reads as float
        if t.is_floating_point() or t.dtype == torch.bool or t.shape[0] != n:
            raise ValueError(
                f"labels: sample {i}: expected {n} integer class(es), one per box, got {values!r}"
            )
        if bool((t < 0).any()):
            raise ValueError(f"labels: sample {i}: expected classes >= 0, got {t.tolist()}")
        checked.append(t.to(torch.int64).cpu())
    return checked


def _classes(classes: object) -> Tensor:
    """``classes`` (an int, a sequence of ints or an int tensor of at most one dim) as int64."""
    if isinstance(classes, Tensor):
        valid = classes.dim() <= 1 and not (
            classes.is_floating_point() or classes.dtype == torch.bool
        )
        values = classes
    else:
        items = (
            classes if isinstance(classes, Sequence) and not isinstance(classes, str) else [classes]
        )
        valid = all(isinstance(c, int) and not isinstance(c, bool) for c in items)
        values = torch.tensor(list(items) if valid else [], dtype=torch.int64)
    if not valid:
        raise TypeError(
            f"classes: expected an int or a sequence of ints (one per sample), got {classes!r}"
        )
    return values.to(torch.int64).reshape(-1).cpu()


def _row_index(rows: object, device: torch.device) -> Tensor:
    if isinstance(rows, Tensor):
        return rows.to(device=device, dtype=torch.int64).reshape(-1)
    if isinstance(rows, int):
        return torch.tensor([rows], device=device)
    if isinstance(rows, slice):
        raise TypeError("target rows: expected indices, not a slice")
    return torch.as_tensor(rows, dtype=torch.int64, device=device).reshape(-1)


def _shape_of(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


__all__ = [
    "MATCHES",
    "BoxScores",
    "DetectionTarget",
    "MaskScores",
    "SegmentationTarget",
    "box_iou",
    "expand_target",
    "segmentation_maps",
]
