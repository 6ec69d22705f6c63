"""Integrated gradients (Sundararajan et al. 2017), steps batched through the model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gswfast.attribution._model import (
    ModelForward,
    OutputTarget,
    Resolved,
    accumulation_dtype,
    input_gradient,
    rows_of,
)
from gswfast.attribution.gradients import pick

INTEGRATIONS: tuple[str, ...] = (
    "gausslegendre",
    "riemann_trapezoid",
    "riemann_middle",
    "riemann_left",
    "riemann_right",
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
    ``batch_size`` rows (default: 128, or the batch if larger), so memory stays bounded
    whatever the step count. Completeness: the attributions of a sample sum to
    ``f(x) - f(baseline)`` up to the quadrature error; with ``convergence_delta`` that
    error (Captum's convergence delta, sum of attributions minus ``f(x) - f(baseline)``) is
    kept in ``delta [B]`` after each call, for two more forward passes.
    """

    def __init__(
        self,
        baseline: Tensor,
        n_steps: int = 32,
        integration: str = "gausslegendre",
        batch_size: int | None = None,
        convergence_delta: bool = True,
    ) -> None:
        self.baseline = baseline
        alphas, weights = integration_points(n_steps, integration)
        # on the host once; copied to the device without a sync (pinned, non_blocking)
        self._alphas, self._weights = (
            torch.tensor(alphas, dtype=torch.float64),
            torch.tensor(weights, dtype=torch.float64),
        )
        self.batch_size = check_batch_size(batch_size)
        self.convergence_delta = convergence_delta
        self.delta: Tensor | None = None

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        if target is None:
            target = forward.predicted(x, sample)
        baseline = pick(self.baseline, sample)
        diff = x - baseline
        n, steps, acc = x.shape[0], len(self._alphas), accumulation_dtype(x.dtype)
        alphas, weights = (
            to_device(self._alphas, x.device, x.dtype),
            to_device(self._weights, x.device, acc),
        )
        total = torch.zeros(x.shape, device=x.device, dtype=acc)
        chunk = chunk_rows(self.batch_size, n)
        for start in range(0, n * steps, chunk):
            rows = torch.arange(start, min(start + chunk, n * steps), device=x.device)
            step, row = rows // n, rows % n
            view = (-1,) + (1,) * (x.dim() - 1)
            points = baseline[row] + alphas[step].view(view) * diff[row]
            grad, _ = input_gradient(forward, points, target[row], rows_of(sample, row))
            total.index_add_(0, row, grad.to(acc) * weights[step].view(view))
        attribution = diff.to(acc) * total
        self.delta = (
            self._delta(forward, x, baseline, target, sample, attribution)
            if self.convergence_delta
            else None
        )
        return attribution.to(x.dtype), target

    @staticmethod
    def _delta(
        forward: ModelForward,
        x: Tensor,
        baseline: Tensor,
        target: Tensor | OutputTarget,
        sample: Tensor | None,
        attribution: Tensor,
    ) -> Tensor:
        """Sum of each sample's attributions minus ``f(x) - f(baseline)``: ``[B]``."""
        with torch.no_grad():
            ends = forward.scores(x, target, sample) - forward.scores(baseline, target, sample)
        return attribution.flatten(1).sum(1) - ends.to(attribution.dtype)


def to_device(values: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small host tensor on ``device`` without a host sync (through pinned memory)."""
    if device.type == "cuda":
        return values.to(dtype).pin_memory().to(device, non_blocking=True)
    return values.to(device=device, dtype=dtype)


def check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is None:
        return None
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1 or None, got {batch_size!r}")
    return batch_size


def chunk_rows(batch_size: int | None, batch: int) -> int:
    """Rows per model call: the given size, else 128 or the batch if larger."""
    return batch_size if batch_size is not None else max(128, batch)
