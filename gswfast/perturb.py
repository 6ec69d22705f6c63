"""What the perturbation methods share: LIME (``gswfast.lime``) and the region methods
(``gswfast.regions``: occlusion, KernelSHAP, RISE).

Each method scores the segments of a sample from the model's outputs on composites: binary
masks ``[B, N, K]`` over the segment ids (1 = kept), the kept segments showing the input and
the hidden ones the ``hide`` image. This module prepares a ``Problem`` (checked inputs,
segmentation, the ids present, the hide image, the model's forward and the resolved
target), runs the model on masks in chunks of ``batch_size`` rows, draws host-side seeded
masks and builds the ``Explanation``.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gswfast import ops
from gswfast.attribution import ModelForward, OutputTarget, model_session, resolve_target
from gswfast.attribution._model import Preprocess, Target, check_target_range
from gswfast.attribution.baselines import BASELINES, stand_in_image
from gswfast.attribution.integrated_gradients import to_device
from gswfast.attribution.targets import expand_target
from gswfast.checks import (
    check_input_values,
    check_inputs,
    check_scores,
    composite,
    resolve_given_segmentation,
    unit_float,
)
from gswfast.explain import DEFAULT_SEGMENTS, Explanation
from gswfast.segmentation import Segmentation, slic

HIDES: tuple[str, ...] = (
    BASELINES  # the words of baseline= everywhere: "zeros", "blur", "segment_mean"
)
_OLD_HIDES = {"mean": "segment_mean", "zero": "zeros"}  # earlier spellings, deprecated
Progress = bool | Callable[[int, int], None]


@dataclass
class Problem:
    """One batch to explain by perturbation.

    Attributes:
        x: float ``[B, C, H, W]`` or ``[B, C, T, H, W]`` inputs in 0..1.
        segmentation: the ``Segmentation`` when computed here, else None.
        labels: int ``[B, (T), H, W]`` segment ids; num_segments: int64 ``[B]`` (max id + 1).
        present: bool ``[B, K]``: the ids that occur in each sample (``K = max num``).
        hidden: what hidden segments show, like ``x``.
        forward: the model's forward; target: int64 ``[B]`` or an ``OutputTarget``.
        model, eval_mode, method: for the model session and the messages.
    """

    x: Tensor
    segmentation: Segmentation | None
    labels: Tensor
    num_segments: Tensor
    present: Tensor
    hidden: Tensor
    forward: ModelForward
    target: Tensor | OutputTarget
    model: nn.Module
    eval_mode: bool
    method: str
    info: dict[str, Any] = field(default_factory=dict)  # the explanation's extras (boxes)

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])

    @property
    def k(self) -> int:
        return int(self.present.shape[1])


def prepare(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None,
    target: Target,
    *,
    method: str,
    hide: str | Tensor,
    n_segments: int | None,
    compactness: float,
    slic_options: dict[str, Any] | None,
    preprocess: Preprocess | None,
    autocast: torch.dtype | None,
    eval_mode: bool,
    channels_last: bool | None,
    additional_forward_args: Any,
    validate: bool,
    output: str = "logit",
) -> Problem:
    """Checks ``inputs`` (``[B, C, (T), H, W]``), segments them unless ``segmentation`` is
    given, makes the hide image and resolves ``target`` as ``gsw.explain`` does (None: the
    predicted class, one forward pass); the model's outputs are taken as ``output`` says
    (``gsw.explain``'s ``output=``). Two host reads (the segment count, the targets'
    range when ``validate``)."""
    images = check_inputs(inputs)
    x = unit_float(images)
    if validate:
        check_input_values(x, needs_unit_range=segmentation is None and images.dtype != torch.uint8)
    slic_keywords = {
        "n_segments": n_segments or DEFAULT_SEGMENTS[images.dim()],
        "compactness": compactness,
        **(slic_options or {}),
    }
    rows, target, box_info = expand_target(target, x, match="similarity")
    seg, labels, num = _segmentation(images, segmentation, slic_keywords)
    if rows is not None:  # one row per box: each box's sample, segmented once
        if additional_forward_args is not None:
            raise ValueError(
                "target: a DetectionTarget explains one row per box, so additional_forward_args "
                "(one row per image) cannot follow it"
            )
        if isinstance(hide, Tensor) and hide.dim() == x.dim() and hide.shape[0] == x.shape[0]:
            hide = hide.index_select(0, rows.to(hide.device))  # one per image: per box
        x, labels, num = (
            x.index_select(0, rows),
            labels.index_select(0, rows),
            num.index_select(0, rows),
        )
        seg = seg.select(rows) if seg is not None else None
    present = present_ids(labels, int(num.max()))  # one sync: the width of masks and scores
    hidden = _hide_image(hide, x, labels, num, method)
    forward = ModelForward(
        model, preprocess, autocast, channels_last, additional_forward_args, output
    )
    forward.check_extra_args(x.shape[0], x.device)
    forward.check_targets = False  # checked here, once
    with model_session(model, eval_mode), torch.inference_mode():
        resolved = resolve_target(target, x.shape[0], x.device)
        if resolved is None:
            resolved = forward.logits(x).argmax(1)
        elif validate and isinstance(resolved, Tensor):
            first = torch.zeros(1, dtype=torch.int64, device=x.device)
            check_target_range(resolved, forward.logits(x[:1], first).shape[1])
    return Problem(
        x, seg, labels, num, present, hidden, forward, resolved, model, eval_mode, method, box_info
    )


def run_masks(
    problem: Problem,
    keep: Tensor,
    batch_size: int,
    progress: Progress,
    rows: Tensor | None = None,
) -> Tensor:
    """The model's target output, float32 ``[B, N]``, on the composites of ``keep`` (uint8
    ``[B, N, K]``, 1 = kept), ``batch_size`` model rows at a time, with no host read per
    chunk. ``rows``: int64 flat indices ``b * N + n`` to evaluate (default all); the others
    are 0."""
    batch, n_samples, _ = keep.shape
    x = problem.x
    if rows is None:
        rows = torch.arange(batch * n_samples, device=x.device)
    flat_labels = problem.labels.reshape(batch, -1).long()
    outputs = torch.zeros((batch, n_samples), dtype=torch.float32, device=x.device)
    total = int(rows.numel())
    report = reporter(progress, total, problem.method)
    with model_session(problem.model, problem.eval_mode), torch.inference_mode():
        for start in range(0, total, batch_size):
            end = min(start + batch_size, total)
            chunk = rows[start:end]
            sample, draw = chunk // n_samples, chunk % n_samples
            mask = keep[sample, draw].bool()
            perturbed = composite(x, problem.hidden, flat_labels, sample, mask)
            target = problem.target[sample]
            outputs.view(-1)[chunk] = problem.forward.scores(perturbed, target, sample).float()
            report(end)
    return outputs


def explanation(
    problem: Problem, scores: Tensor, method: str, reduce: str, info: dict[str, Any]
) -> Explanation:
    """The ``Explanation`` of segment ``scores [B, K]`` (any float dtype, stored float32);
    ``info["tied"]`` as ``explain``'s (``check_scores``)."""
    scores = scores.float()
    info = {**problem.info, **info}
    info["tied"] = check_scores(scores, problem.num_segments)
    target = problem.target
    if isinstance(target, OutputTarget):
        target = target.row_classes(problem.batch, problem.x.device)
    return Explanation(
        segment_scores=scores,
        labels=problem.labels,
        num_segments=problem.num_segments,
        pixel_scores=ops.paint(scores, problem.labels, validate=False),
        target=target.clone(),
        method=method,
        reduce=reduce,
        segmentation=problem.segmentation,
        info=info,
    )


# ------------------------------------------------------------------------ masks


def present_ids(labels: Tensor, k: int) -> Tensor:
    """bool ``[B, K]``: the segment ids that occur in each sample of ``labels [B, *S]``."""
    flat = labels.reshape(labels.shape[0], -1).long()
    counts = torch.zeros((labels.shape[0], k), dtype=torch.int32, device=labels.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32)) > 0


def host_generator(seed: int, sample: int) -> torch.Generator:
    """The host generator of sample ``sample``'s masks: the same draws on every device."""
    return torch.Generator().manual_seed((seed * 1_000_003 + sample) % 2**63)


def spread(draws: Tensor, present: Tensor) -> Tensor:
    """uint8 ``[B, N, K]`` on ``present``'s device from host ``draws [B, N, W]`` with one
    column per id present, in id order (column ``j`` of sample ``b`` goes to its ``j``-th
    present id): relabelling the segments (ids from 1, gaps) does not change the masks.
    Absent ids get 0."""
    draws = to_device(draws.to(torch.uint8), present.device, torch.uint8)
    column = (present.cumsum(1) - 1).clamp(min=0)  # [B, K]: the rank of each present id
    keep = draws.gather(2, column.unsqueeze(1).expand(-1, draws.shape[1], -1))
    return keep * present.unsqueeze(1)


def given_masks(masks: object, batch: int, n_samples: int, present: Tensor) -> Tensor:
    """uint8 ``[B, N, K]`` from the caller's ``masks`` (``[N, K']`` shared or ``[B, N, K']``
    with ``K' >= K``, 0/1 or bool); columns past ``K`` and absent ids are dropped."""
    k = present.shape[1]
    if not isinstance(masks, Tensor) or not bool(torch.all((masks == 0) | (masks == 1))):
        raise ValueError("masks: expected a tensor of 0/1 (or bool) values")
    if masks.dim() == 2:
        masks = masks.unsqueeze(0).expand(batch, -1, -1)
    if masks.dim() != 3 or masks.shape[0] != batch:
        raise ValueError(
            f"masks: expected [n_samples, K] or [B, n_samples, K] with B = {batch}, got shape "
            f"{tuple(masks.shape)}"
        )
    if masks.shape[1] != n_samples:
        raise ValueError(
            f"masks: {masks.shape[1]} rows (samples), but n_samples is {n_samples}; pass "
            f"n_samples={masks.shape[1]} with these masks"
        )
    if masks.shape[2] < k:
        raise ValueError(
            f"masks: {masks.shape[2]} columns, fewer than the {k} segments of the largest "
            "sample (one column per segment id)"
        )
    keep = masks[:, :, :k].to(device=present.device, dtype=torch.uint8)
    return keep * present.unsqueeze(1)


def rank_columns(values: Tensor, present: Tensor) -> Tensor:
    """``[B, K]`` from ``values [B, W]`` given per present id in id order (as ``spread``);
    absent ids get 0."""
    column = (present.cumsum(1) - 1).clamp(min=0)
    return values.gather(1, column) * present


# ------------------------------------------------------------------------ checks


def check_count(name: str, value: object, minimum: int) -> None:
    """Raises ``ValueError`` unless ``value`` is an int ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def check_seed(seed: object) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")


def check_fraction(name: str, value: object) -> None:
    """Raises ``ValueError`` unless ``value`` is a number strictly between 0 and 1."""
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value < 1
    ):
        raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")


# ------------------------------------------------------------------------ steps


def reporter(progress: Progress, total: int, method: str) -> Callable[[int], None]:
    """``progress`` as a function of the rows done: a callable gets ``(done, total)``,
    True prints to stderr, False does nothing."""
    if callable(progress):
        return lambda done: progress(done, total)
    if not progress:
        return lambda done: None

    def to_stderr(done: int) -> None:
        end = "\n" if done >= total else ""
        text = f"\rgswfast.{method}: {done}/{total} perturbed inputs"
        print(text, end=end, file=sys.stderr, flush=True)

    return to_stderr


def _segmentation(
    images: Tensor, segmentation: Segmentation | Tensor | None, slic_keywords: dict[str, Any]
) -> tuple[Segmentation | None, Tensor, Tensor]:
    if segmentation is not None:
        seg, labels, num = resolve_given_segmentation(segmentation, images)
        if labels is None or num is None:  # never: given segments always have labels
            raise TypeError("segmentation: expected a Segmentation or a label tensor")
        return seg, labels, num
    seg = slic(images, **slic_keywords, validate=False)
    return seg, seg.labels, seg.num_segments


def _hide_image(hide: str | Tensor, x: Tensor, labels: Tensor, num: Tensor, method: str) -> Tensor:
    if isinstance(hide, str) and hide in _OLD_HIDES:
        warnings.warn(
            f"gsw.{method}: hide={hide!r} is now spelled hide={_OLD_HIDES[hide]!r} "
            "(baseline= words)",
            DeprecationWarning,
            stacklevel=4,
        )
        hide = _OLD_HIDES[hide]
    return stand_in_image(hide, x, "hide", {name: name for name in HIDES}, labels, num)
