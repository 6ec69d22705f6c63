"""LIME (Ribeiro et al. 2016) for images and clips, batched on the inputs' device.

Same algorithm as the ``lime`` package's ``LimeImageExplainer``: binary masks over the
segments (the first row keeps everything), perturbed inputs whose hidden segments take
the ``hide`` image, the model's output for the target, LIME's kernel
``sqrt(exp(-d^2 / width^2))`` over the cosine distance of each mask to the all-ones mask,
and a weighted ridge regression with intercept (``alpha=1``). Given the same masks it
returns the package's coefficients; it builds the perturbed inputs, runs the model and
solves the regressions on the device, in chunks of ``batch_size`` model rows.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gswfast import ops
from gswfast.attribution import ModelForward, OutputTarget, model_session, resolve_target
from gswfast.attribution._model import Preprocess, Target, check_target_range
from gswfast.attribution.baselines import BASELINES, stand_in_image
from gswfast.attribution.integrated_gradients import to_device
from gswfast.checks import (
    check_input_values,
    check_inputs,
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


def lime(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None = None,
    target: Target = None,
    n_samples: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    *,
    hide: str | Tensor = "segment_mean",
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    masks: Tensor | None = None,
    n_segments: int | None = None,
    compactness: float = 10.0,
    slic_options: dict[str, Any] | None = None,
    preprocess: Preprocess | None = None,
    autocast: torch.dtype | None = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
    output: str = "logit",
    progress: Progress = False,
    validate: bool = True,
) -> Explanation:
    """LIME segment weights of ``model`` on ``inputs``, computed on their device.

    Args:
        model: any ``nn.Module`` returning ``[B, classes]``; LIME regresses its output for
            the target as ``output`` says.
        inputs: ``[B, C, H, W]`` images or ``[B, C, T, H, W]`` clips, uint8 or float 0..1.
        segmentation: a ``Segmentation`` or labels ``[B, (T), H, W]``; None: ``gsw.slic``
            with ``n_segments`` (default as ``explain``: 50 per image, 200 per clip),
            ``compactness`` and ``slic_options``. Labels need not start at 0 (scikit-image's
            ``start_label=1``) nor be consecutive: only the ids present in a sample are
            scored (masked, counted by the kernel, regressed); absent ids score 0.
        target: as ``gsw.explain``: None (the predicted class), an int, a list, a NumPy
            array or an int tensor ``[B]``, a tuple (an index into each sample's output) or
            a function of the model's output returning the ``[B]`` scores to regress.
        n_samples: perturbations per input (at least 2), the first one unperturbed.
        batch_size: model rows per call; memory holds one chunk of perturbed inputs.
        seed: seeds the masks: sample ``b``'s are drawn on the host from a generator seeded
            with ``(seed, b)`` and then moved, so they are the same on every device.
        hide: what hidden segments show, in ``baseline=``'s words: ``"segment_mean"`` (each
            segment's mean colour, the ``lime`` package's default), ``"zeros"``, ``"blur"``
            or a tensor like ``inputs`` (``"mean"`` and ``"zero"`` still work, deprecated).
        kernel_width: LIME's kernel width (0.25 for images).
        alpha: ridge penalty (the package's 1.0).
        masks: the masks to use instead of sampling, ``[n_samples, K]`` (shared) or
            ``[B, n_samples, K]``, 1 = segment kept. Columns past a sample's segment count
            are ignored. With the ``lime`` package's masks this reproduces its weights.
        preprocess, autocast, eval_mode, channels_last, additional_forward_args: as
            ``gsw.explain``.
        output: ``"logit"`` (default: the model's output as is), ``"probability"`` (softmax
            over classes, as the package's users usually regress) or ``"log_probability"``.
        progress: True prints progress to stderr; a callable gets ``(done, total)`` rows.
        validate: check inputs and targets (one device sync).

    Returns:
        ``Explanation`` with ``segment_scores [B, K]`` = the ridge coefficients,
        ``pixel_scores`` = them painted on the pixels, ``method="lime"``, and ``info``:
        ``intercept [B]``, ``score [B]`` (weighted R^2 of the fit), ``masks [B, N, K]`` and
        ``outputs [B, N]`` (the regressed model outputs).
    """
    _check_parameters(n_samples, batch_size, kernel_width, alpha, seed)
    images = check_inputs(inputs)
    x = unit_float(images)
    if validate:
        check_input_values(x, needs_unit_range=segmentation is None and images.dtype != torch.uint8)
    slic_keywords = {
        "n_segments": n_segments or DEFAULT_SEGMENTS[images.dim()],
        "compactness": compactness,
        **(slic_options or {}),
    }
    seg, labels, num = _segmentation(images, segmentation, slic_keywords)
    k = int(num.max())  # one sync: the width of the masks and the scores
    present = _present(labels, k)
    keep = _masks(masks, x.shape[0], n_samples, k, present, seed, x.device)
    hidden = _hide_image(hide, x, labels, num)
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
        outputs = _perturbed_outputs(
            forward, x, hidden, labels, keep, resolved, batch_size, progress
        )
    with torch.inference_mode(False):
        kernel = lime_kernel(keep, present.sum(1), kernel_width)
        coef, intercept, score = weighted_ridge(keep, outputs, kernel, alpha, present)
    scores = coef.float()
    if isinstance(resolved, OutputTarget):
        resolved = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    return Explanation(
        segment_scores=scores,
        labels=labels,
        num_segments=num,
        pixel_scores=ops.paint(scores, labels, validate=False),
        target=resolved.clone(),
        method="lime",
        reduce="ridge",
        segmentation=seg,
        info={"intercept": intercept, "score": score, "masks": keep, "outputs": outputs},
    )


def lime_kernel(masks: Tensor, num_segments: Tensor, kernel_width: float) -> Tensor:
    """LIME's sample weights ``[B, N]``: ``sqrt(exp(-d^2 / width^2))`` with ``d`` the cosine
    distance between each mask ``[B, N, K]`` and the all-ones mask of its sample's
    ``num_segments [B]`` segments (a mask with no segment kept is at distance 1, as
    scikit-learn's ``pairwise_distances``)."""
    kept = masks.sum(2, dtype=torch.float64)  # masks are 0 past num_segments
    distance = 1 - torch.sqrt(kept / num_segments.to(torch.float64).unsqueeze(1))
    return torch.sqrt(torch.exp(-(distance**2) / kernel_width**2))


def weighted_ridge(
    masks: Tensor, outputs: Tensor, weights: Tensor, alpha: float, present: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched ``min sum_i w_i (y_i - x_i c - b)^2 + alpha |c|^2`` in float64, as
    scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)``.

    ``masks [B, N, K]``, ``outputs [B, N]``, ``weights [B, N]`` -> coefficients ``[B, K]``,
    intercepts ``[B]`` and the weighted R^2 ``[B]``. ``present`` bool ``[B, K]``: the
    columns that are features (others must be all 0 in ``masks``; their coefficient is 0).
    """
    X, y, w = masks.to(torch.float64), outputs.to(torch.float64), weights.to(torch.float64)
    total = w.sum(1, keepdim=True)
    x_mean = (w.unsqueeze(2) * X).sum(1, keepdim=True) / total.unsqueeze(2)  # [B, 1, K]
    y_mean = (w * y).sum(1, keepdim=True) / total  # [B, 1]
    xc, yc = X - x_mean, y - y_mean
    gram = torch.einsum("bnk,bn,bnj->bkj", xc, w, xc)
    gram = gram + alpha * torch.eye(X.shape[2], dtype=torch.float64, device=X.device)
    if (
        present is not None
    ):  # an all-zero column is decoupled from the rest: pin its coefficient to 0
        gram = gram + torch.diag_embed((~present).to(torch.float64))
    coef = torch.linalg.solve(gram, torch.einsum("bnk,bn->bk", xc, w * yc))
    intercept = y_mean.squeeze(1) - (x_mean.squeeze(1) * coef).sum(1)
    residual = y - torch.einsum("bnk,bk->bn", X, coef) - intercept.unsqueeze(1)
    spread = (w * yc**2).sum(1)
    score = 1 - (w * residual**2).sum(1) / torch.where(spread > 0, spread, 1.0)
    return coef, intercept, score


# ------------------------------------------------------------------------ steps


def _segmentation(
    images: Tensor, segmentation: Segmentation | Tensor | None, slic_keywords: dict[str, Any]
) -> tuple[Segmentation | None, Tensor, Tensor]:
    if segmentation is not None:
        return resolve_given_segmentation(segmentation, images)
    seg = slic(images, **slic_keywords, validate=False)
    return seg, seg.labels, seg.num_segments


def _present(labels: Tensor, k: int) -> Tensor:
    """bool ``[B, K]``: the segment ids that occur in each sample."""
    flat = labels.reshape(labels.shape[0], -1).long()
    counts = torch.zeros((labels.shape[0], k), dtype=torch.int32, device=labels.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32)) > 0


def _masks(
    masks: Tensor | None,
    batch: int,
    n_samples: int,
    k: int,
    present: Tensor,
    seed: int,
    device: torch.device,
) -> Tensor:
    """uint8 ``[B, N, K]``, 1 = kept, 0 for the ids absent from a sample. Sample ``b``'s
    masks are drawn on the host (the same on every device) from a generator seeded with
    ``(seed, b)``, one column per id present, in id order: relabelling the segments (ids
    from 1, gaps) does not change them. One host read (the counts of ids present)."""
    if masks is None:
        widths = present.sum(1).tolist()
        draws = torch.zeros((batch, n_samples, max(widths)), dtype=torch.uint8)
        for b, width in enumerate(widths):
            generator = torch.Generator().manual_seed((seed * 1_000_003 + b) % 2**63)
            draws[b, :, :width] = torch.randint(
                0, 2, (n_samples, width), generator=generator, dtype=torch.uint8
            )
        draws[:, 0] = 1  # the first sample is the input itself, as in the lime package
        draws = to_device(draws, device, torch.uint8)
        column = (present.cumsum(1) - 1).clamp(min=0)  # [B, K]: the rank of each present id
        keep = draws.gather(2, column.unsqueeze(1).expand(-1, n_samples, -1))
    else:
        keep = _given_masks(masks, batch, n_samples, k, device)
    return keep * present.unsqueeze(1)


def _given_masks(masks: Tensor, batch: int, n_samples: int, k: int, device: torch.device) -> Tensor:
    if not isinstance(masks, Tensor) or not bool(torch.all((masks == 0) | (masks == 1))):
        raise ValueError("masks: expected a tensor of 0/1 (or bool) values")
    if masks.dim() == 2:
        masks = masks.unsqueeze(0).expand(batch, -1, -1)
    if (
        masks.dim() != 3
        or masks.shape[0] != batch
        or masks.shape[1] != n_samples
        or masks.shape[2] < k
    ):
        raise ValueError(
            f"masks: expected [n_samples, K] or [B, n_samples, K] with B = {batch}, n_samples = {n_samples} "
            f"and K >= {k} (the most segments of a sample), got shape {tuple(masks.shape)}"
        )
    return masks[:, :, :k].to(device=device, dtype=torch.uint8)


def _hide_image(hide: str | Tensor, x: Tensor, labels: Tensor, num: Tensor) -> Tensor:
    if isinstance(hide, str) and hide in _OLD_HIDES:
        warnings.warn(
            f"gsw.lime: hide={hide!r} is now spelled hide={_OLD_HIDES[hide]!r} (baseline= words)",
            DeprecationWarning,
            stacklevel=3,
        )
        hide = _OLD_HIDES[hide]
    return stand_in_image(hide, x, "hide", {name: name for name in HIDES}, labels, num)


def _perturbed_outputs(
    forward: ModelForward,
    x: Tensor,
    hidden: Tensor,
    labels: Tensor,
    keep: Tensor,
    target: Tensor | OutputTarget,
    batch_size: int,
    progress: Progress,
) -> Tensor:
    """The model's target output ``[B, N]`` for every mask, ``batch_size`` rows at a time
    (no host sync per chunk)."""
    batch, n_samples, _ = keep.shape
    flat_labels = labels.reshape(batch, -1).long()
    outputs = torch.empty((batch, n_samples), dtype=torch.float32, device=x.device)
    total = batch * n_samples
    report = _reporter(progress, total)
    for start in range(0, total, batch_size):
        end = min(start + batch_size, total)
        rows = torch.arange(start, end, device=x.device)
        sample, draw = rows // n_samples, rows % n_samples
        perturbed = composite(x, hidden, flat_labels, sample, keep[sample, draw].bool())
        outputs.view(-1)[rows] = forward.scores(perturbed, target[sample], sample).float()
        report(end)
    return outputs


def _reporter(progress: Progress, total: int) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done, total)
    if not progress:
        return lambda done: None

    def to_stderr(done: int) -> None:
        end = "\n" if done >= total else ""
        print(
            f"\rgswfast.lime: {done}/{total} perturbed inputs", end=end, file=sys.stderr, flush=True
        )

    return to_stderr


def _check_parameters(
    n_samples: int, batch_size: int, kernel_width: float, alpha: float, seed: Any
) -> None:
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
        raise ValueError(f"n_samples: expected an int >= 2, got {n_samples!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not (
        isinstance(kernel_width, (int, float)) and math.isfinite(kernel_width) and kernel_width > 0
    ):
        raise ValueError(f"kernel_width: expected a positive number, got {kernel_width!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
