"""How good is an explanation: deletion/insertion curves, agreement between two
explanations, and the pointing game and relevance mass against known object masks; and how
good is a segmentation: boundary recall, under-segmentation error, explained variation.

The explanation metrics run on the explanation's device and take batches of images or
clips; the segmentation metrics take one label map ``[H, W]`` and return a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gswfast.attribution import ModelForward, model_session
from gswfast.attribution._model import Preprocess
from gswfast.attribution.baselines import BASELINES, stand_in_image
from gswfast.attribution.targets import DetectionTarget
from gswfast.checks import check_inputs, composite, composite_logits, unit_float
from gswfast.explain import Explanation

__all__ = [
    "OUTPUTS",
    "Curve",
    "agreement",
    "boundary_map",
    "boundary_recall",
    "deletion",
    "explained_variation",
    "insertion",
    "pointing_game",
    "relevance_mass",
    "spearman",
    "undersegmentation_error",
]

OUTPUTS: tuple[str, ...] = ("probability", "logit")
"""The values of ``output=`` of the deletion and insertion curves: what they score."""


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve per sample.

    Attributes:
        fractions: float32 ``[B, S]``: the fraction of each sample's segments deleted
            (inserted) at each point, from 0 to 1.
        scores: float32 ``[B, S]``: the model's output for the target at each point.
        auc: float32 ``[B]``: area under the curve over ``fractions`` (trapezoids).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def deletion(
    model: nn.Module,
    inputs: Tensor,
    explanation: Explanation,
    *,
    steps: int | None = None,
    baseline: str | Tensor = "zeros",
    output: str = "probability",
    batch_size: int = 64,
    preprocess: Preprocess | None = None,
    autocast: torch.dtype | None = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
) -> Curve:
    """Deletion curve (RISE, Petsiuk et al. 2018): segments are replaced by ``baseline``
    (``"zeros"``, ``"blur"``, ``"segment_mean"`` or a tensor like ``inputs``: the words of
    ``explain``'s ``baseline=``) in the explanation's ranking, best first. A good
    explanation makes the target's score fall fast: low AUC is better.

    ``steps``: points after the start (None: one per segment of the sample with the most);
    point ``i`` removes ``round(i / steps * num_segments[b])`` segments of sample ``b``.
    ``output``: ``"probability"`` (softmax, as RISE) or ``"logit"``. ``batch_size``: model
    rows per call. ``preprocess``, ``autocast``, ``eval_mode``, ``channels_last`` and
    ``additional_forward_args``: how the model runs, as in ``gsw.explain``.

    An explanation of a ``DetectionTarget``'s boxes (one row per box) takes the images it
    explained, ``inputs [B, ...]`` (and a ``baseline`` tensor of one row per image): each
    row's curve follows its box's D-RISE similarity (IoU times the detector's score, as the
    region methods score boxes), and ``output`` does not apply.
    """
    model_options = dict(
        preprocess=preprocess,
        autocast=autocast,
        eval_mode=eval_mode,
        channels_last=channels_last,
        additional_forward_args=additional_forward_args,
    )
    return _curve(
        model, inputs, explanation, steps, baseline, output, batch_size, model_options, insert=False
    )


def insertion(
    model: nn.Module,
    inputs: Tensor,
    explanation: Explanation,
    *,
    steps: int | None = None,
    baseline: str | Tensor = "blur",
    output: str = "probability",
    batch_size: int = 64,
    preprocess: Preprocess | None = None,
    autocast: torch.dtype | None = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
) -> Curve:
    """Insertion curve (RISE): starts from ``baseline`` (default the blurred input) and puts
    the input's segments back in the explanation's ranking, best first. High AUC is better.
    Options as ``deletion``'s."""
    model_options = dict(
        preprocess=preprocess,
        autocast=autocast,
        eval_mode=eval_mode,
        channels_last=channels_last,
        additional_forward_args=additional_forward_args,
    )
    return _curve(
        model, inputs, explanation, steps, baseline, output, batch_size, model_options, insert=True
    )


def agreement(
    a: Explanation | Tensor, b: Explanation | Tensor, k: int = 5, num_segments: Tensor | None = None
) -> dict[str, Tensor]:
    """How similarly two explanations of the same segments score them, per sample.

    ``a``, ``b``: ``Explanation``s or segment scores ``[B, K]`` (then ``num_segments [B]``,
    default all ``K``). Returns float64 ``[B]`` tensors: ``spearman`` and ``kendall`` (tau-b)
    rank correlations (ties get mean ranks, as SciPy), and ``top_k_iou``: the overlap of
    the ``k`` best segments of each, as intersection over union.
    """
    scores_a, count = _scores(a, num_segments, "a")
    scores_b, count_b = _scores(b, num_segments, "b")
    if scores_a.shape != scores_b.shape:
        raise ValueError(
            f"b: expected scores of shape {tuple(scores_a.shape)} like a's, got {tuple(scores_b.shape)}"
        )
    if not torch.equal(count, count_b.to(count.device)):
        raise ValueError("b: explains other segments than a (num_segments differ)")
    counts = count.tolist()
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > min(counts):
        raise ValueError(
            f"k: expected an int in [1, {min(counts)}] (the fewest segments of a sample), got {k!r}"
        )
    rows = [
        _agreement_row(scores_a[i, :n], scores_b[i, :n].to(scores_a.device), k)
        for i, n in enumerate(counts)
    ]
    return {
        name: torch.stack([row[name] for row in rows])
        for name in ("spearman", "kendall", "top_k_iou")
    }


def pointing_game(explanation: Explanation, masks: Tensor, min_overlap: float = 0.5) -> Tensor:
    """bool ``[B]``: a hit when the explanation's best segment lies on the object, that is
    when more than ``min_overlap`` of its pixels are in ``masks [B, (T), H, W]`` (the
    pointing game of Zhang et al. 2016, at the level of segments, whose pixels all share
    the maximum)."""
    object_mask = _check_masks(masks, explanation)
    best = explanation.ranking()[:, :1].to(explanation.labels.dtype)
    in_best = explanation.labels.flatten(1) == best
    on_object = (in_best & object_mask.flatten(1)).sum(1)
    return on_object > min_overlap * in_best.sum(1)


def relevance_mass(explanation: Explanation, masks: Tensor) -> Tensor:
    """float32 ``[B]``: the share of the positive relevance (the heatmap's positive part)
    that falls on the object ``masks [B, (T), H, W]`` (Arras et al. 2022); 0 without any."""
    object_mask = _check_masks(masks, explanation)
    positive = explanation.heatmap().clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * object_mask.flatten(1)).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


# ------------------------------------------------------------------------ curves


def _curve(
    model: nn.Module,
    inputs: Tensor,
    explanation: Explanation,
    steps: int | None,
    baseline: str | Tensor,
    output: str,
    batch_size: int,
    model_options: dict[str, Any],
    insert: bool,
) -> Curve:
    eval_mode = model_options.pop("eval_mode")
    x = unit_float(check_inputs(inputs))
    boxes = explanation.info.get("detection")
    if isinstance(boxes, DetectionTarget):  # one row per box: its image, scored by its box
        rows, box_scores = boxes.rows(x.shape[0], x.device, "similarity")
        if isinstance(baseline, Tensor):  # one row per image, repeated for each of its boxes
            if baseline.dim() != x.dim() or len(baseline) != len(x):
                raise ValueError(
                    f"baseline: with a DetectionTarget's explanation, expected a tensor of one "
                    f"row per image [{len(x)}, ...] like inputs (each box takes its image's), "
                    f"got shape {tuple(baseline.shape)}"
                )
            baseline = baseline.index_select(0, rows.to(baseline.device))
        x = x.index_select(0, rows)
    _check_curve_options(x, explanation, steps, output, batch_size, boxes is not None)
    other = stand_in_image(
        baseline,
        x,
        "baseline",
        {name: name for name in BASELINES},
        explanation.labels,
        explanation.num_segments,
    )
    num = explanation.num_segments
    points = steps if steps is not None else int(num.max())
    fractions = torch.arange(points + 1, device=x.device, dtype=torch.float32) / points  # [S]
    counts = torch.round(
        fractions.unsqueeze(0) * num.unsqueeze(1)
    ).long()  # [B, S] segments changed
    order = _rank_positions(explanation)  # [B, K]: each segment's place in the ranking
    forward = ModelForward(model, **model_options)
    forward.check_extra_args(x.shape[0], x.device)
    scores = torch.empty(counts.shape, dtype=torch.float32, device=x.device)
    flat_labels = explanation.labels.reshape(x.shape[0], -1).long()
    with model_session(model, eval_mode), torch.inference_mode():
        for start in range(0, counts.numel(), batch_size):
            rows = torch.arange(start, min(start + batch_size, counts.numel()), device=x.device)
            sample, point = rows // counts.shape[1], rows % counts.shape[1]
            changed = order[sample] < counts[sample, point].unsqueeze(1)  # [rows, K]
            start_image, end_image = (other, x) if insert else (x, other)
            if isinstance(boxes, DetectionTarget):
                images = composite(end_image, start_image, flat_labels, sample, changed)
                scores.view(-1)[rows] = forward.scores(images, box_scores[sample]).float()
                continue
            logits = composite_logits(forward, end_image, start_image, flat_labels, sample, changed)
            values = logits.softmax(1) if output == "probability" else logits
            scores.view(-1)[rows] = (
                values.gather(1, explanation.target[sample].view(-1, 1)).squeeze(1).float()
            )
    auc = torch.trapezoid(scores, fractions.unsqueeze(0).expand_as(scores), dim=1)
    return Curve(fractions.unsqueeze(0).expand_as(scores).contiguous(), scores, auc)


def _rank_positions(explanation: Explanation) -> Tensor:
    """``[B, K]``: 0 for each sample's best segment, 1 for the next, ..."""
    ranking = explanation.ranking()
    positions = torch.empty_like(ranking)
    steps = torch.arange(ranking.shape[1], device=ranking.device).expand_as(ranking)
    return positions.scatter_(1, ranking, steps)


def _check_curve_options(
    x: Tensor,
    explanation: Explanation,
    steps: int | None,
    output: str,
    batch_size: int,
    boxes: bool = False,
) -> None:
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation: expected an Explanation, got {type(explanation).__name__}")
    if tuple(explanation.labels.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"inputs: expected the explained inputs' shape [B, C, {tuple(explanation.labels.shape[1:])}], "
            f"got {tuple(x.shape)}"
        )
    if explanation.labels.device != x.device:
        raise ValueError(
            f"inputs: expected them on the explanation's device {explanation.labels.device}, got {x.device}"
        )
    if not boxes and bool((explanation.target < 0).any()):
        raise ValueError("explanation: its target is unknown (-1); explain with a target")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps: expected an int >= 1 or None, got {steps!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")


# ------------------------------------------------------------------------ agreement


def _scores(
    e: Explanation | Tensor, num_segments: Tensor | None, name: str
) -> tuple[Tensor, Tensor]:
    if isinstance(e, Explanation):
        return e.segment_scores, e.num_segments
    if not isinstance(e, Tensor) or e.dim() != 2 or not e.is_floating_point():
        got = getattr(e, "shape", type(e).__name__)
        raise ValueError(
            f"{name}: expected an Explanation or float segment scores [B, K], got {got}"
        )
    if num_segments is None:
        return e, torch.full((e.shape[0],), e.shape[1], dtype=torch.int64, device=e.device)
    return e, num_segments.to(e.device)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """float64 scalar: Spearman's rank correlation of two score vectors ``[K]``, ties sharing
    their mean rank (SciPy's ``spearmanr``); NaN when either vector is constant."""
    rank_a, rank_b = _mean_ranks(a.double()), _mean_ranks(b.double())
    ca, cb = rank_a - rank_a.mean(), rank_b - rank_b.mean()
    return (ca * cb).sum() / torch.sqrt((ca * ca).sum() * (cb * cb).sum())


def _agreement_row(a: Tensor, b: Tensor, k: int) -> dict[str, Any]:
    a, b = a.double(), b.double()
    sign_a = torch.sign(a.unsqueeze(0) - a.unsqueeze(1))
    sign_b = torch.sign(b.unsqueeze(0) - b.unsqueeze(1))
    kendall = (sign_a * sign_b).sum() / torch.sqrt((sign_a**2).sum() * (sign_b**2).sum())
    top_a = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    top_b = torch.zeros_like(top_a)
    top_a[torch.sort(a, descending=True, stable=True).indices[:k]] = True
    top_b[torch.sort(b, descending=True, stable=True).indices[:k]] = True
    iou = (top_a & top_b).sum() / (top_a | top_b).sum()
    return {"spearman": spearman(a, b), "kendall": kendall, "top_k_iou": iou.double()}


def _mean_ranks(v: Tensor) -> Tensor:
    """1-based ranks, ties sharing their mean rank (O(K^2); K is a few hundred at most)."""
    less = (v.unsqueeze(0) < v.unsqueeze(1)).sum(1, dtype=torch.float64)
    equal = (v.unsqueeze(0) == v.unsqueeze(1)).sum(1, dtype=torch.float64)
    return less + (equal + 1) / 2


def _check_masks(masks: Tensor, explanation: Explanation) -> Tensor:
    if not isinstance(masks, Tensor) or tuple(masks.shape) != tuple(explanation.labels.shape):
        raise ValueError(
            f"masks: expected [B, (T), H, W] = {tuple(explanation.labels.shape)} like the labels, "
            f"got {tuple(getattr(masks, 'shape', ()))}"
        )
    return masks.to(device=explanation.labels.device, dtype=torch.bool)


# ------------------------------------------------------------------------ segmentation quality


def boundary_map(labels: Tensor) -> Tensor:
    """Pixels ``[..., H, W]`` whose right or lower neighbour has another label."""
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    edge[..., :, :-1] |= labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., :-1, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return edge


def boundary_recall(segments: Tensor, truth: Tensor, tolerance: int = 2) -> float:
    """Fraction of the truth's boundary pixels within ``tolerance`` (Chebyshev) pixels of a
    segment boundary. ``segments`` and ``truth``: ``[H, W]``."""
    truth_edges = boundary_map(truth)
    seg_edges = boundary_map(segments).float()[None, None]
    near = (
        torch.nn.functional.max_pool2d(seg_edges, 2 * tolerance + 1, stride=1, padding=tolerance)[
            0, 0
        ]
        > 0
    )
    return float((near & truth_edges).sum() / truth_edges.sum().clamp(min=1))


def undersegmentation_error(segments: Tensor, truth: Tensor) -> float:
    """Neubert & Protzel's under-segmentation error: for every truth region and every
    segment overlapping it, the smaller of the overlap and the segment's part outside the
    region, summed and divided by the pixel count. ``[H, W]`` inputs; lower is better."""
    s = segments.reshape(-1).long()
    t = truth.reshape(-1).long()
    k_s, k_t = int(s.max()) + 1, int(t.max()) + 1
    overlap = torch.bincount(t * k_s + s, minlength=k_t * k_s).view(k_t, k_s)
    outside = overlap.sum(0, keepdim=True) - overlap
    leak = torch.minimum(overlap, outside)[overlap > 0]
    return float(leak.sum() / s.numel())


def explained_variation(segments: Tensor, image: Tensor) -> float:
    """Fraction of the image's colour variance explained by segment means (no truth
    needed; 1 is perfect). ``segments [H, W]``, ``image [C, H, W]``."""
    s = segments.reshape(-1).long()
    pixels = image.reshape(image.shape[0], -1).double()
    k = int(s.max()) + 1
    count = torch.bincount(s, minlength=k).clamp(min=1).double()
    means = torch.zeros(image.shape[0], k, dtype=torch.float64).index_add_(1, s, pixels) / count
    total = ((pixels - pixels.mean(1, keepdim=True)) ** 2).sum()
    explained = ((means[:, s] - pixels.mean(1, keepdim=True)) ** 2).sum()
    return float(explained / total)
