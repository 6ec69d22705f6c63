"""Region methods on the device: occlusion, KernelSHAP and RISE over segments.

They share LIME's machinery (``gswfast.perturb``): binary masks ``[B, N, K]`` over the
segment ids (1 = kept), composites whose hidden segments show the ``hide`` image, the
model run in chunks of ``batch_size`` rows (memory holds one chunk of perturbed inputs),
masks drawn on the host from a generator seeded with ``(seed, b)`` for sample ``b`` (the
same on every device), one column per id present, so that relabelling the segments (ids
from 1, gaps) does not change them; absent ids score 0. Images are ``[B, C, H, W]``, clips
``[B, C, T, H, W]``; targets, ``preprocess``, ``autocast``, ``eval_mode``,
``channels_last``, ``additional_forward_args``, ``output`` (``"probability"`` explains
the softmax), ``progress`` and ``validate`` are as ``gsw.lime``'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gswfast.attribution._model import Preprocess, Target
from gswfast.explain import Explainer, Explanation
from gswfast.lime import lime, weighted_ridge
from gswfast.options import REGION_METHODS
from gswfast.perturb import (
    Problem,
    Progress,
    check_count,
    check_fraction,
    check_seed,
    explanation,
    given_masks,
    host_generator,
    prepare,
    rank_columns,
    run_masks,
    spread,
)
from gswfast.segmentation import Segmentation

INFINITE_WEIGHT = 1e6  # KernelSHAP's weight of the all-kept and all-hidden masks (Captum's)


def occlusion(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None = None,
    target: Target = None,
    *,
    hide: str | Tensor = "segment_mean",
    batch_size: int = 64,
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
    """Occlusion of one segment at a time: ``output(all kept) - output(segment k hidden)``.

    Captum's ``FeatureAblation`` with ``feature_mask`` = the labels and ``baselines`` = the
    hide image computes the same. ``1 + W`` model rows per input, ``W`` the most ids
    present in a sample of the batch (an input with fewer repeats its unperturbed row).

    Args:
        model, inputs, segmentation, target: as ``gsw.lime`` (inputs ``[B, C, H, W]`` or
            ``[B, C, T, H, W]``; labels ``[B, (T), H, W]``).
        hide: what a hidden segment shows, as ``gsw.lime``'s ``hide``.
        batch_size: model rows per call.
        others: ``n_segments``, ``compactness``, ``slic_options``, ``preprocess``,
            ``autocast``, ``eval_mode``, ``channels_last``, ``additional_forward_args``,
            ``output``, ``progress`` and ``validate`` are as in ``gsw.lime``.

    Returns:
        ``Explanation`` with ``segment_scores`` float32 ``[B, K]`` (0 for absent ids),
        ``method="occlusion"``, ``reduce="ablation"`` and ``info``: ``masks`` uint8
        ``[B, 1 + W, K]`` (row 0 keeps all, row ``1 + j`` hides the ``j``-th id present) and
        ``outputs`` float32 ``[B, 1 + W]``.
    """
    check_count("batch_size", batch_size, 1)
    problem = prepare(
        model,
        inputs,
        segmentation,
        target,
        method="occlusion",
        hide=hide,
        n_segments=n_segments,
        compactness=compactness,
        slic_options=slic_options,
        preprocess=preprocess,
        autocast=autocast,
        eval_mode=eval_mode,
        channels_last=channels_last,
        additional_forward_args=additional_forward_args,
        validate=validate,
        output=output,
    )
    width = int(problem.present.sum(1).max())
    draws = torch.ones((problem.batch, 1 + width, width), dtype=torch.uint8)
    draws[:, 1:] -= torch.eye(width, dtype=torch.uint8)
    keep = spread(draws, problem.present)
    outputs = run_masks(problem, keep, batch_size, progress)
    drop = outputs[:, :1].double() - outputs[:, 1:].double()  # [B, W], per id present
    scores = rank_columns(drop, problem.present)
    info = {"masks": keep, "outputs": outputs}
    return explanation(problem, scores, "occlusion", "ablation", info)


def kernel_shap(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None = None,
    target: Target = None,
    n_samples: int = 1000,
    seed: int = 0,
    *,
    masks: Tensor | None = None,
    hide: str | Tensor = "segment_mean",
    batch_size: int = 64,
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
    """KernelSHAP (Lundberg & Lee 2017) over segments, as Captum's ``KernelShap``.

    Masks: the first keeps every segment, the second hides every one; each further one
    keeps ``k`` of the ``M`` ids present, ``k`` drawn with probability proportional to
    ``(M - 1) / (k (M - k))`` for ``0 < k < M`` and the kept ids uniformly among the
    ``M``-subsets of that size (so the sampling applies the Shapley kernel). Weights: 1,
    and ``INFINITE_WEIGHT`` (1e6) for the all-kept and all-hidden masks, which pins the
    scores' sum to ``output(all kept) - output(all hidden)``. The scores are the
    coefficients of the weighted least-squares fit with intercept, in float64 (the
    least-norm solution when the design is rank-deficient, as scikit-learn's
    ``LinearRegression``). Given Captum's masks this returns Captum's answer.

    Args:
        model, inputs, segmentation, target: as ``gsw.lime``.
        n_samples: masks per input (at least 2), the two fixed ones included.
        seed: seeds the masks; sample ``b``'s come from a host generator seeded with
            ``(seed, b)``.
        masks: the masks instead of sampling, ``[n_samples, K]`` or ``[B, n_samples, K]``,
            0/1, 1 = kept; columns past ``K`` are ignored.
        others: ``hide``, ``batch_size``, ``n_segments``, ``compactness``,
            ``slic_options``, ``preprocess``, ``autocast``, ``eval_mode``, ``channels_last``,
            ``additional_forward_args``, ``output``, ``progress`` and ``validate`` are as in
            ``gsw.lime``.

    Returns:
        ``Explanation`` with ``segment_scores`` float32 ``[B, K]`` (0 for absent ids),
        ``method="kernel_shap"``, ``reduce="least_squares"`` and ``info``: ``intercept
        [B]``, ``masks`` uint8 ``[B, N, K]``, ``outputs`` float32 ``[B, N]`` and
        ``weights`` float64 ``[B, N]``.
    """
    _check_sampling(n_samples, batch_size, seed)
    problem = prepare(
        model,
        inputs,
        segmentation,
        target,
        method="kernel_shap",
        hide=hide,
        n_segments=n_segments,
        compactness=compactness,
        slic_options=slic_options,
        preprocess=preprocess,
        autocast=autocast,
        eval_mode=eval_mode,
        channels_last=channels_last,
        additional_forward_args=additional_forward_args,
        validate=validate,
        output=output,
    )
    if masks is None:
        keep = spread(_shap_masks(problem, n_samples, seed), problem.present)
    else:
        keep = given_masks(masks, problem.batch, n_samples, problem.present)
    outputs = run_masks(problem, keep, batch_size, progress)
    with torch.inference_mode(False):
        weights = shapley_weights(keep, problem.present.sum(1))
        coef, intercept, _ = weighted_ridge(
            keep, outputs, weights, 0.0, problem.present, min_norm=True
        )
    info = {"intercept": intercept, "masks": keep, "outputs": outputs, "weights": weights}
    return explanation(problem, coef, "kernel_shap", "least_squares", info)


def rise(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None = None,
    target: Target = None,
    n_samples: int = 1000,
    p_keep: float = 0.5,
    seed: int = 0,
    *,
    masks: Tensor | None = None,
    hide: str | Tensor = "segment_mean",
    batch_size: int = 64,
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
    """RISE (Petsiuk et al. 2018) with random masks over segments instead of upsampled grids.

    Each mask keeps each present segment independently with probability ``p_keep``; the
    score of segment ``k`` is RISE's estimator ``sum_i output_i * m_ik / (N * p_keep)``, the
    Monte-Carlo estimate of ``E[output * m_k] / p_keep`` (= ``E[output | k kept]``), not
    renormalised by the masks' actual keep counts. The paper multiplies the image by the
    mask (``hide="zeros"``); the default here is LIME's ``"segment_mean"``.

    Args:
        model, inputs, segmentation, target: as ``gsw.lime``.
        n_samples: masks per input, ``N`` (at least 2).
        p_keep: the probability of keeping a segment, in (0, 1).
        seed: seeds the masks; sample ``b``'s come from a host generator seeded with
            ``(seed, b)``.
        masks: the masks instead of sampling, ``[n_samples, K]`` or ``[B, n_samples, K]``,
            0/1, 1 = kept (``p_keep`` still normalises).
        others: ``hide``, ``batch_size``, ``n_segments``, ``compactness``,
            ``slic_options``, ``preprocess``, ``autocast``, ``eval_mode``, ``channels_last``,
            ``additional_forward_args``, ``output``, ``progress`` and ``validate`` are as in
            ``gsw.lime``.

    Returns:
        ``Explanation`` with ``segment_scores`` float32 ``[B, K]`` (0 for absent ids),
        ``method="rise"``, ``reduce="mean"`` and ``info``: ``masks`` uint8 ``[B, N, K]`` and
        ``outputs`` float32 ``[B, N]``.
    """
    _check_sampling(n_samples, batch_size, seed)
    check_fraction("p_keep", p_keep)
    problem = prepare(
        model,
        inputs,
        segmentation,
        target,
        method="rise",
        hide=hide,
        n_segments=n_segments,
        compactness=compactness,
        slic_options=slic_options,
        preprocess=preprocess,
        autocast=autocast,
        eval_mode=eval_mode,
        channels_last=channels_last,
        additional_forward_args=additional_forward_args,
        validate=validate,
        output=output,
    )
    if masks is None:
        keep = spread(_bernoulli_masks(problem, n_samples, p_keep, seed), problem.present)
    else:
        keep = given_masks(masks, problem.batch, n_samples, problem.present)
    outputs = run_masks(problem, keep, batch_size, progress)
    with torch.inference_mode(False):
        scores = rise_scores(keep, outputs, p_keep)
    return explanation(problem, scores, "rise", "mean", {"masks": keep, "outputs": outputs})


def shapley_weights(masks: Tensor, num_present: Tensor) -> Tensor:
    """KernelSHAP's sample weights float64 ``[B, N]`` for ``masks [B, N, K]`` (0 on absent
    ids) of inputs with ``num_present [B]`` ids: ``INFINITE_WEIGHT`` where no id or every id
    is kept, else 1 (the sampling carries the Shapley kernel)."""
    kept = masks.sum(2, dtype=torch.int64)
    ends = (kept == 0) | (kept == num_present.unsqueeze(1))
    ones = torch.ones(kept.shape, dtype=torch.float64, device=masks.device)
    return torch.where(ends, INFINITE_WEIGHT, ones)


def rise_scores(masks: Tensor, outputs: Tensor, p_keep: float) -> Tensor:
    """RISE's ``sum_i outputs[:, i] * masks[:, i, k] / (N * p_keep)``: float64 ``[B, K]``
    from ``masks [B, N, K]`` and ``outputs [B, N]``."""
    weighted = torch.einsum("bn,bnk->bk", outputs.double(), masks.double())
    return weighted / (masks.shape[1] * p_keep)


# ------------------------------------------------------------------------ masks


def _shap_masks(problem: Problem, n_samples: int, seed: int) -> Tensor:
    """Host uint8 ``[B, N, W]``: KernelSHAP's masks over each input's present ids."""
    widths = problem.present.sum(1).tolist()
    draws = torch.zeros((problem.batch, n_samples, max(widths)), dtype=torch.uint8)
    for b, width in enumerate(widths):
        draws[b, :, :width] = _shap_draw(n_samples, width, host_generator(seed, b))
    return draws


def _shap_draw(n_samples: int, width: int, generator: torch.Generator) -> Tensor:
    """uint8 ``[n_samples, width]``: all kept, none kept, then ``k``-subsets with ``k``
    drawn by the Shapley kernel's size distribution (all kept again when ``width`` is 1)."""
    rows = torch.ones((n_samples, width), dtype=torch.uint8)
    rows[1] = 0
    if width < 2 or n_samples < 3:
        return rows
    sizes = torch.arange(1, width, dtype=torch.float64)
    probs = (width - 1) / (sizes * (width - sizes))
    kept = torch.multinomial(probs, n_samples - 2, replacement=True, generator=generator) + 1
    order = torch.rand((n_samples - 2, width), generator=generator).argsort(1).argsort(1)
    rows[2:] = (order < kept.unsqueeze(1)).to(torch.uint8)
    return rows


def _bernoulli_masks(problem: Problem, n_samples: int, p_keep: float, seed: int) -> Tensor:
    """Host uint8 ``[B, N, W]``: each present id kept with probability ``p_keep``."""
    widths = problem.present.sum(1).tolist()
    draws = torch.zeros((problem.batch, n_samples, max(widths)), dtype=torch.uint8)
    for b, width in enumerate(widths):
        uniform = torch.rand((n_samples, width), generator=host_generator(seed, b))
        draws[b, :, :width] = (uniform < p_keep).to(torch.uint8)
    return draws


# ------------------------------------------------------------------------ checks


def _check_sampling(n_samples: object, batch_size: object, seed: object) -> None:
    check_count("n_samples", n_samples, 2)
    check_count("batch_size", batch_size, 1)
    check_seed(seed)


class RegionExplainer:
    """A region method (``REGION_METHODS``) with its options bound, called as an
    ``Explainer`` is: ``(inputs, target, segmentation=None) -> Explanation``; SLIC segments
    the inputs with ``n_segments`` when no segmentation is given. The command's and
    explain-dataset's explainer for ``--method lime|occlusion|kernel_shap|rise``."""

    swag = False  # segments come from SLIC (or the caller), never from an attribution

    def __init__(self, model: nn.Module, method: str, **options: Any) -> None:
        if method not in REGION_METHODS:
            raise ValueError(f"method: expected one of {REGION_METHODS}, got {method!r}")
        self.model, self.method, self.options = model, method, options

    def __call__(
        self,
        inputs: Tensor,
        target: Target = None,
        segmentation: Segmentation | Tensor | None = None,
    ) -> Explanation:
        run = {"lime": lime, "occlusion": occlusion, "kernel_shap": kernel_shap, "rise": rise}
        result: Explanation = run[self.method](
            self.model, inputs, segmentation, target, **self.options
        )
        return result


def make_explainer(model: nn.Module, method: str, **options: Any) -> Explainer | RegionExplainer:
    """``Explainer(model, method, **options)``, or a ``RegionExplainer`` for the region
    methods (``n_samples``, ``design``, ``seed``, ``n_segments``, ``preprocess`` and the
    other keywords of ``gsw.lime`` and its kin)."""
    if method in REGION_METHODS:
        return RegionExplainer(model, method, **options)
    return Explainer(model, method, **options)
