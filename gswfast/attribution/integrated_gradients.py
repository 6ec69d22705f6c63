"""Integrated gradients (Sundararajan et al. 2017), steps batched through the model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gswfast.attribution._model import ModelForward, accumulation_dtype, input_gradient
from gswfast.attribution.gradients import pick

INTEGRATIONS: tuple[str, ...] = (
    "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right",
)


def integration_points(n_steps: int, integration: str) -> tuple[list[float], list[float]]:
    """Points ``alpha`` in [0, 1] and weights summing to 1 for the path integral."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps: expected an int >= 1, got {n_steps!r}")
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return ((nodes + 1) / 2).tolist(), (weights / 2).tolist()
    if integration == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("n_steps: riemann_trapezoid needs at least 2 steps")
        alphas = np.linspace(0.0, 1.0, n_steps)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
        return alphas.tolist(), weights.tolist()
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if integration not in offsets:
        raise ValueError(f"integration: expected one of {INTEGRATIONS}, got {integration!r}")
    alphas = (np.arange(n_steps) + offsets[integration]) / n_steps
    return alphas.tolist(), [1.0 / n_steps] * n_steps


class IntegratedGradients:
    """``(x - baseline) * mean over the path of the gradient``.

    The ``n_steps`` points of every sample go through the model in chunks of at most
    ``internal_batch_size`` rows (default: 128, or the batch if larger), so memory stays
    bounded whatever the step count. Completeness: the attributions of a sample sum to
    ``f(x) - f(baseline)`` up to the quadrature error.
    """

    def __init__(self, baseline: Tensor, n_steps: int = 32, integration: str = "gausslegendre",
                 internal_batch_size: int | None = None) -> None:
        self.baseline = baseline
        self.alphas, self.weights = integration_points(n_steps, integration)
        self.internal_batch_size = check_batch_size(internal_batch_size)

    def __call__(self, forward: ModelForward, x: Tensor, target: Tensor | None,
                 sample: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if target is None:
            target = forward.predicted(x)
        baseline = pick(self.baseline, sample)
        diff = x - baseline
        n, steps, acc = x.shape[0], len(self.alphas), accumulation_dtype(x.dtype)
        alphas = torch.tensor(self.alphas, device=x.device, dtype=x.dtype)
        weights = torch.tensor(self.weights, device=x.device, dtype=acc)
        total = torch.zeros(x.shape, device=x.device, dtype=acc)
        chunk = chunk_rows(self.internal_batch_size, n)
        for start in range(0, n * steps, chunk):
            rows = torch.arange(start, min(start + chunk, n * steps), device=x.device)
            step, row = rows // n, rows % n
            view = (-1,) + (1,) * (x.dim() - 1)
            points = baseline[row] + alphas[step].view(view) * diff[row]
            grad, _ = input_gradient(forward, points, target[row])
            total.index_add_(0, row, grad.to(acc) * weights[step].view(view))
        return (diff.to(acc) * total).to(x.dtype), target


def check_batch_size(internal_batch_size: int | None) -> int | None:
    if internal_batch_size is None:
        return None
    if not isinstance(internal_batch_size, int) or isinstance(internal_batch_size, bool) or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size: expected an int >= 1 or None, got {internal_batch_size!r}")
    return internal_batch_size


def chunk_rows(internal_batch_size: int | None, batch: int) -> int:
    """Rows per model call: the given size, else 128 or the batch if larger."""
    return internal_batch_size if internal_batch_size is not None else max(128, batch)
