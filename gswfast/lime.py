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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gswfast import ops
from gswfast.attribution import ModelForward, model_session, resolve_target
from gswfast.attribution._model import Preprocess, Target, check_target_range
from gswfast.attribution.baselines import stand_in_image
from gswfast.checks import check_input_values, check_inputs, composite_logits, resolve_given_segmentation, unit_float
from gswfast.explain import DEFAULT_SEGMENTS, Explanation
from gswfast.segmentation import Segmentation, slic

_HIDE_BASELINES = {"mean": "segment_mean", "zero": "zeros", "blur": "blur"}  # hide -> make_baseline
HIDES: tuple[str, ...] = tuple(_HIDE_BASELINES)
Progress = bool | Callable[[int, int], None]


def lime(model: nn.Module, inputs: Tensor, segmentation: Segmentation | Tensor | None = None, target: Target = None,
         n_samples: int = 1000, batch_size: int = 64, seed: int = 0, *, hide: str | Tensor = "mean",
         kernel_width: float = 0.25, alpha: float = 1.0, masks: Tensor | None = None,
         preprocess: Preprocess | None = None, autocast: torch.dtype | None = None, eval_mode: bool = True,
         channels_last: bool | None = None, progress: Progress = False, validate: bool = True) -> Explanation:
    """LIME segment weights of ``model`` on ``inputs``, computed on their device.

    Args:
        model: any ``nn.Module`` returning ``[B, classes]``; LIME regresses its output for
            the target as is (wrap it with a softmax to regress probabilities).
        inputs: ``[B, C, H, W]`` images or ``[B, C, T, H, W]`` clips, uint8 or float 0..1.
        segmentation: a ``Segmentation`` or labels ``[B, (T), H, W]``; None: ``gsw.slic``
            with ``explain``'s defaults.
        target: None (the predicted class), an int, a list or an int tensor ``[B]``.
        n_samples: perturbations per input (at least 2), the first one unperturbed.
        batch_size: model rows per call; memory holds one chunk of perturbed inputs.
        seed: seeds the masks (a generator on the inputs' device).
        hide: what hidden segments show: ``"mean"`` (each segment's mean colour, the
            ``lime`` package's default), ``"zero"``, ``"blur"`` or a tensor like ``inputs``.
        kernel_width: LIME's kernel width (0.25 for images).
        alpha: ridge penalty (the package's 1.0).
        masks: the masks to use instead of sampling, ``[n_samples, K]`` (shared) or
            ``[B, n_samples, K]``, 1 = segment kept. Columns past a sample's segment count
            are ignored. With the ``lime`` package's masks this reproduces its weights.
        preprocess, autocast, eval_mode, channels_last: as ``gsw.explain``.
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
    seg, labels, num = _segmentation(images, segmentation)
    k = int(num.max())  # one sync: the width of the masks and the scores
    keep = _masks(masks, x.shape[0], n_samples, k, num, seed, x.device)
    hidden = _hide_image(hide, x, labels, num)
    forward = ModelForward(model, preprocess, autocast, channels_last)
    with model_session(model, eval_mode), torch.inference_mode():
        resolved = resolve_target(target, x.shape[0], x.device)
        if resolved is None:
            resolved = forward.logits(x).argmax(1)
        elif validate:
            check_target_range(resolved, forward.logits(x[:1]).shape[1])
        outputs = _perturbed_outputs(forward, x, hidden, labels, keep, resolved, batch_size, progress)
    with torch.inference_mode(False):
        coef, intercept, score = weighted_ridge(keep, outputs, lime_kernel(keep, num, kernel_width), alpha)
    scores = coef.float()
    return Explanation(
        segment_scores=scores, labels=labels, num_segments=num,
        pixel_scores=ops.paint(scores, labels, validate=False), target=resolved.clone(),
        method="lime", reduce="ridge", segmentation=seg,
        info={"intercept": intercept, "score": score, "masks": keep, "outputs": outputs},
    )


def lime_kernel(masks: Tensor, num_segments: Tensor, kernel_width: float) -> Tensor:
    """LIME's sample weights ``[B, N]``: ``sqrt(exp(-d^2 / width^2))`` with ``d`` the cosine
    distance between each mask ``[B, N, K]`` and the all-ones mask of its sample (a mask
    with no segment kept is at distance 1, as scikit-learn's ``pairwise_distances``)."""
    kept = masks.sum(2, dtype=torch.float64)  # masks are 0 past num_segments
    distance = 1 - torch.sqrt(kept / num_segments.to(torch.float64).unsqueeze(1))
    return torch.sqrt(torch.exp(-(distance**2) / kernel_width**2))


def weighted_ridge(masks: Tensor, outputs: Tensor, weights: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Batched ``min sum_i w_i (y_i - x_i c - b)^2 + alpha |c|^2`` in float64, as
    scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)``.

    ``masks [B, N, K]``, ``outputs [B, N]``, ``weights [B, N]`` -> coefficients ``[B, K]``,
    intercepts ``[B]`` and the weighted R^2 ``[B]``.
    """
    X, y, w = masks.to(torch.float64), outputs.to(torch.float64), weights.to(torch.float64)
    total = w.sum(1, keepdim=True)
    x_mean = (w.unsqueeze(2) * X).sum(1, keepdim=True) / total.unsqueeze(2)  # [B, 1, K]
    y_mean = (w * y).sum(1, keepdim=True) / total  # [B, 1]
    xc, yc = X - x_mean, y - y_mean
    gram = torch.einsum("bnk,bn,bnj->bkj", xc, w, xc)
    gram = gram + alpha * torch.eye(X.shape[2], dtype=torch.float64, device=X.device)
    coef = torch.linalg.solve(gram, torch.einsum("bnk,bn->bk", xc, w * yc))
    intercept = y_mean.squeeze(1) - (x_mean.squeeze(1) * coef).sum(1)
    residual = y - torch.einsum("bnk,bk->bn", X, coef) - intercept.unsqueeze(1)
    spread = (w * yc**2).sum(1)
    score = 1 - (w * residual**2).sum(1) / torch.where(spread > 0, spread, 1.0)
    return coef, intercept, score


# ------------------------------------------------------------------------ steps


def _segmentation(images: Tensor, segmentation: Segmentation | Tensor | None) -> tuple[Segmentation | None, Tensor, Tensor]:
    if segmentation is not None:
        return resolve_given_segmentation(segmentation, images)
    seg = slic(images, n_segments=DEFAULT_SEGMENTS[images.dim()], validate=False)
    return seg, seg.labels, seg.num_segments


def _masks(masks: Tensor | None, batch: int, n_samples: int, k: int, num: Tensor, seed: int,
           device: torch.device) -> Tensor:
    """uint8 ``[B, N, K]``, 1 = kept, zero past each sample's segment count."""
    if masks is None:
        generator = torch.Generator(device=device).manual_seed(seed)
        keep = torch.randint(0, 2, (batch, n_samples, k), generator=generator, device=device, dtype=torch.uint8)
        keep[:, 0] = 1  # the first sample is the input itself, as in the lime package
    else:
        keep = _given_masks(masks, batch, n_samples, k, device)
    valid = torch.arange(k, device=device) < num.view(-1, 1, 1)
    return keep * valid


def _given_masks(masks: Tensor, batch: int, n_samples: int, k: int, device: torch.device) -> Tensor:
    if not isinstance(masks, Tensor) or not bool(torch.all((masks == 0) | (masks == 1))):
        raise ValueError("masks: expected a tensor of 0/1 (or bool) values")
    if masks.dim() == 2:
        masks = masks.unsqueeze(0).expand(batch, -1, -1)
    if masks.dim() != 3 or masks.shape[0] != batch or masks.shape[1] != n_samples or masks.shape[2] < k:
        raise ValueError(
            f"masks: expected [n_samples, K] or [B, n_samples, K] with B = {batch}, n_samples = {n_samples} "
            f"and K >= {k} (the most segments of a sample), got shape {tuple(masks.shape)}"
        )
    return masks[:, :, :k].to(device=device, dtype=torch.uint8)


def _hide_image(hide: str | Tensor, x: Tensor, labels: Tensor, num: Tensor) -> Tensor:
    return stand_in_image(hide, x, "hide", _HIDE_BASELINES, labels, num)


def _perturbed_outputs(forward: ModelForward, x: Tensor, hidden: Tensor, labels: Tensor, keep: Tensor,
                       target: Tensor, batch_size: int, progress: Progress) -> Tensor:
    """The model's target output ``[B, N]`` for every mask, ``batch_size`` rows at a time."""
    batch, n_samples, _ = keep.shape
    flat_labels = labels.reshape(batch, -1).long()
    outputs = torch.empty((batch, n_samples), dtype=torch.float32, device=x.device)
    report = _reporter(progress, batch * n_samples)
    for start in range(0, batch * n_samples, batch_size):
        rows = torch.arange(start, min(start + batch_size, batch * n_samples), device=x.device)
        sample, draw = rows // n_samples, rows % n_samples
        logits = composite_logits(forward, x, hidden, flat_labels, sample, keep[sample, draw].bool())
        outputs.view(-1)[rows] = logits.gather(1, target[sample].view(-1, 1)).squeeze(1).float()
        report(int(rows[-1]) + 1 if rows.numel() else start)
    return outputs


def _reporter(progress: Progress, total: int) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done, total)
    if not progress:
        return lambda done: None

    def to_stderr(done: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rgswfast.lime: {done}/{total} perturbed inputs", end=end, file=sys.stderr, flush=True)

    return to_stderr


def _check_parameters(n_samples: int, batch_size: int, kernel_width: float, alpha: float, seed: Any) -> None:
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
        raise ValueError(f"n_samples: expected an int >= 2, got {n_samples!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not (isinstance(kernel_width, (int, float)) and math.isfinite(kernel_width) and kernel_width > 0):
        raise ValueError(f"kernel_width: expected a positive number, got {kernel_width!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
