"""LIME (Ribeiro et al. 2016) for images and clips, batched on the inputs' device.

Same algorithm as the ``lime`` package's ``LimeImageExplainer``: binary masks over the
segments (the first row keeps everything), perturbed inputs whose hidden segments take
the ``hide`` image, the model's output for the target, LIME's kernel
``sqrt(exp(-d^2 / width^2))`` over the cosine distance of each mask to the all-ones mask,
and a weighted ridge regression with intercept (``alpha=1``). Given the same masks it
returns the package's coefficients; it builds the perturbed inputs, runs the model and
solves the regressions on the device, in chunks of ``batch_size`` model rows (the machinery
shared with occlusion, KernelSHAP and RISE is in ``gswfast.perturb``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gswfast.attribution._model import Preprocess, Target
from gswfast.explain import Explanation
from gswfast.metrics import spearman
from gswfast.perturb import (
    HIDES,
    Problem,
    Progress,
    check_count,
    check_fraction,
    check_seed,
    explanation,
    given_masks,
    host_generator,
    prepare,
    run_masks,
    spread,
)
from gswfast.segmentation import Segmentation

__all__ = ["DESIGNS", "HIDES", "draw_masks", "lime", "lime_kernel", "weighted_ridge"]

DESIGNS: tuple[str, ...] = ("random", "balanced", "antithetic", "sobol")
AUTO_STEP = 50  # n_samples="auto": samples added per input between two checks
AUTO_MAX = 1000  # n_samples="auto": the most samples per input


def lime(
    model: nn.Module,
    inputs: Tensor,
    segmentation: Segmentation | Tensor | None = None,
    target: Target = None,
    n_samples: int | str = 1000,
    batch_size: int = 64,
    seed: int = 0,
    *,
    hide: str | Tensor = "segment_mean",
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    masks: Tensor | None = None,
    design: str = "random",
    tol: float = 0.01,
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
        n_samples: perturbations per input (at least 2), the first one unperturbed; or
            ``"auto"``: ``AUTO_STEP`` (50) more per input at a time, up to ``AUTO_MAX``
            (1000), until the Spearman correlation of an input's weights with its previous
            estimate reaches ``1 - tol`` (one host read per step).
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
        design: how the masks after the first (all kept) are drawn: ``"random"`` (each
            entry a fair coin, as the ``lime`` package), ``"balanced"`` (each column kept
            in half of the rows, rows shuffled per column), ``"antithetic"`` (random masks
            followed by their complements) or ``"sobol"`` (a scrambled Sobol sequence
            thresholded at 1/2: balanced, nearly orthogonal columns).
        tol: the stopping tolerance of ``n_samples="auto"``.
        preprocess, autocast, eval_mode, channels_last, additional_forward_args: as
            ``gsw.explain``.
        output: ``"logit"`` (default: the model's output as is), ``"probability"`` (softmax
            over classes, as the package's users usually regress) or ``"log_probability"``.
        progress: True prints progress to stderr; a callable gets ``(done, total)`` rows.
        validate: check inputs and targets (one device sync).

    Returns:
        ``Explanation`` with ``segment_scores [B, K]`` = the ridge coefficients,
        ``pixel_scores`` = them painted on the pixels, ``method="lime"``, and ``info``:
        ``intercept [B]``, ``score [B]`` (weighted R^2 of the fit), ``masks [B, N, K]``,
        ``outputs [B, N]`` (the regressed model outputs) and ``n_samples`` int64 ``[B]``
        (the samples used per input; with ``"auto"``, rows past them are unused, output 0).
    """
    auto = n_samples == "auto"
    _check_parameters(AUTO_MAX if auto else n_samples, batch_size, kernel_width, alpha, seed)
    _check_design(design, tol, auto, masks)
    problem = prepare(
        model,
        inputs,
        segmentation,
        target,
        method="lime",
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
    count = AUTO_MAX if auto else int(n_samples)
    if masks is None:
        keep = spread(
            draw_masks(problem.present.sum(1).tolist(), count, seed, design), problem.present
        )
    else:
        keep = given_masks(masks, problem.batch, count, problem.present)
    with torch.inference_mode(False):
        if auto:
            outputs, used = _auto_outputs(
                problem, keep, batch_size, progress, kernel_width, alpha, tol
            )
            keep, outputs = keep[:, : int(used.max())], outputs[:, : int(used.max())]
        else:
            outputs = run_masks(problem, keep, batch_size, progress)
            used = torch.full((problem.batch,), count, dtype=torch.int64, device=keep.device)
        coef, intercept, score = _fit(problem, keep, outputs, used, kernel_width, alpha)
    info = {"intercept": intercept, "score": score, "masks": keep, "outputs": outputs}
    return explanation(problem, coef, "lime", "ridge", {**info, "n_samples": used})


def draw_masks(widths: list[int], n_samples: int, seed: int, design: str = "random") -> Tensor:
    """Host uint8 masks ``[B, n_samples, max(widths)]``: sample ``b``'s first ``widths[b]``
    columns drawn by ``design`` (see ``lime``) from ``host_generator(seed, b)``, the first
    row all ones, the other columns 0."""
    draws = torch.zeros((len(widths), n_samples, max(widths)), dtype=torch.uint8)
    for b, width in enumerate(widths):
        generator = host_generator(seed, b)
        draws[b, :, :width] = _DRAW[design](n_samples, width, generator)
    draws[:, 0] = 1  # the first sample is the input itself, as in the lime package
    return draws


def _random(n: int, width: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n, width), generator=generator, dtype=torch.uint8)


def _balanced(n: int, width: int, generator: torch.Generator) -> Tensor:
    order = torch.rand((n - 1, width), generator=generator).argsort(0)
    return torch.cat([torch.ones((1, width), dtype=torch.uint8), (order % 2).to(torch.uint8)])


def _antithetic(n: int, width: int, generator: torch.Generator) -> Tensor:
    half = _random(n // 2, width, generator)
    pairs = torch.stack([half, 1 - half], 1).reshape(-1, width)
    return torch.cat([torch.ones((1, width), dtype=torch.uint8), pairs])[:n]


def _sobol(n: int, width: int, generator: torch.Generator) -> Tensor:
    scramble = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    engine = torch.quasirandom.SobolEngine(width, scramble=True, seed=scramble)  # type: ignore[no-untyped-call]  # torch leaves SobolEngine.__init__ unannotated
    points = engine.draw(n - 1, dtype=torch.float64)
    return torch.cat([torch.ones((1, width)), points >= 0.5]).to(torch.uint8)


_DRAW = {"random": _random, "balanced": _balanced, "antithetic": _antithetic, "sobol": _sobol}


def _fit(
    problem: Problem,
    keep: Tensor,
    outputs: Tensor,
    used: Tensor,
    kernel_width: float,
    alpha: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """LIME's ridge fit of ``outputs [B, N]`` on ``keep [B, N, K]``, the first ``used [B]``
    rows of each input."""
    kernel = lime_kernel(keep, problem.present.sum(1), kernel_width)
    rows = torch.arange(keep.shape[1], device=keep.device)
    kernel = kernel * (rows < used.unsqueeze(1))
    return weighted_ridge(keep, outputs, kernel, alpha, problem.present)


def _auto_outputs(
    problem: Problem,
    keep: Tensor,
    batch_size: int,
    progress: Progress,
    kernel_width: float,
    alpha: float,
    tol: float,
) -> tuple[Tensor, Tensor]:
    """``n_samples="auto"``: the outputs ``[B, AUTO_MAX]`` (0 where not run) and the samples
    used per input, int64 ``[B]``."""
    batch, total, _ = keep.shape
    device = keep.device
    outputs = torch.zeros((batch, total), dtype=torch.float32, device=device)
    used = torch.zeros(batch, dtype=torch.int64, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    previous: Tensor | None = None
    done = 0
    while bool(active.any()) and int(used.max()) < total:
        start = int(used.max())
        end = min(start + AUTO_STEP, total)
        samples = active.nonzero().squeeze(1)
        draws = torch.arange(start, end, device=device)
        rows = (samples.unsqueeze(1) * total + draws).reshape(-1)
        report = _offset(progress, done, batch * total)
        outputs += run_masks(problem, keep, batch_size, report, rows)
        done += int(rows.numel())
        used = torch.where(active, end, used)
        coef = _fit(problem, keep, outputs, used, kernel_width, alpha)[0]
        if previous is not None:
            stable = _spearman_rows(previous, coef, problem.present) >= 1 - tol
            active = active & ~stable
        previous = coef
    return outputs, used


def _offset(progress: Progress, done: int, total: int) -> Progress:
    if progress is True:
        return progress
    if not callable(progress):
        return False
    report = progress
    return lambda rows, _total: report(done + rows, total)


def _spearman_rows(a: Tensor, b: Tensor, present: Tensor) -> Tensor:
    """float64 ``[B]``: Spearman correlation of ``a[i]`` and ``b[i]`` (``[B, K]``) over the
    ids present in sample ``i`` (NaN, never stable, when one of them is constant)."""
    rows = [spearman(a[i][present[i]], b[i][present[i]]) for i in range(a.shape[0])]
    return torch.stack(rows)


def lime_kernel(masks: Tensor, num_segments: Tensor, kernel_width: float) -> Tensor:
    """LIME's sample weights ``[B, N]``: ``sqrt(exp(-d^2 / width^2))`` with ``d`` the cosine
    distance between each mask ``[B, N, K]`` and the all-ones mask of its sample's
    ``num_segments [B]`` segments (a mask with no segment kept is at distance 1, as
    scikit-learn's ``pairwise_distances``)."""
    kept = masks.sum(2, dtype=torch.float64)  # masks are 0 past num_segments
    distance = 1 - torch.sqrt(kept / num_segments.to(torch.float64).unsqueeze(1))
    return torch.sqrt(torch.exp(-(distance**2) / kernel_width**2))


def weighted_ridge(
    masks: Tensor,
    outputs: Tensor,
    weights: Tensor,
    alpha: float,
    present: Tensor | None = None,
    min_norm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched ``min sum_i w_i (y_i - x_i c - b)^2 + alpha |c|^2`` in float64, as
    scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)``.

    ``masks [B, N, K]``, ``outputs [B, N]``, ``weights [B, N]`` -> coefficients ``[B, K]``,
    intercepts ``[B]`` and the weighted R^2 ``[B]``. ``present`` bool ``[B, K]``: the
    columns that are features (others must be all 0 in ``masks``; their coefficient is 0).
    ``min_norm``: solve with a pseudo-inverse, for ``alpha=0`` on designs that may be
    rank-deficient (the least-norm solution, as scikit-learn's ``LinearRegression``).
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
    rhs = torch.einsum("bnk,bn->bk", xc, w * yc)
    if min_norm:
        coef = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)
        if present is not None:  # the pseudo-inverse leaves rounding noise there
            coef = coef * present
    else:
        coef = torch.linalg.solve(gram, rhs)
    intercept = y_mean.squeeze(1) - (x_mean.squeeze(1) * coef).sum(1)
    residual = y - torch.einsum("bnk,bk->bn", X, coef) - intercept.unsqueeze(1)
    spread = (w * yc**2).sum(1)
    score = 1 - (w * residual**2).sum(1) / torch.where(spread > 0, spread, 1.0)
    return coef, intercept, score


def _check_parameters(
    n_samples: object, batch_size: object, kernel_width: float, alpha: float, seed: object
) -> None:
    if isinstance(n_samples, str):
        raise ValueError(f"n_samples: expected an int >= 2 or 'auto', got {n_samples!r}")
    check_count("n_samples", n_samples, 2)
    check_count("batch_size", batch_size, 1)
    if not (
        isinstance(kernel_width, (int, float)) and math.isfinite(kernel_width) and kernel_width > 0
    ):
        raise ValueError(f"kernel_width: expected a positive number, got {kernel_width!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    check_seed(seed)


def _check_design(design: object, tol: object, auto: bool, masks: Tensor | None) -> None:
    if design not in DESIGNS:
        raise ValueError(f"design: expected one of {DESIGNS}, got {design!r}")
    check_fraction("tol", tol)
    if auto and masks is not None:
        raise ValueError("n_samples: give the number of masks (an int) with masks=, not 'auto'")
