"""Banzhaf-like segment values from gradients at random segment mixes (``method="banzhaf"``).

The segment game: ``f(z)`` is the target score of the image whose segment ``k`` shows
``hidden + z_k * (x - hidden)`` (``z`` in ``[0, 1]^K``; ``hidden`` the segment-mean image,
LIME's hidden segments). LIME keeps each segment with probability 0.5 and its kernel is
nearly flat around half hidden, so its weights are close to the Banzhaf value at 0.5,
``E_z[f(z | z_k = 1) - f(z | z_k = 0)] = E_z[integral_0^1 df/dz_k(t, z_-k) dt]``. One
backward pass at a point ``z`` gives all ``K`` partial derivatives ``df/dz_k``; averaged
over points whose coordinates are spread over ``[0, 1]`` (each segment's values stratified
over the points, antithetic pairs ``z, 1 - z``), they estimate that integral in random
half-hidden contexts. ``df/dz_k`` is the sum over segment ``k``'s pixels of
``(x - hidden) * gradient``, so the scorer returns that pixel attribution averaged over the
points, and ``reduce="sum"`` pools it into the estimate.
"""

from __future__ import annotations

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
from gswfast.attribution.integrated_gradients import check_batch_size, chunk_rows, to_device

DESIGNS: tuple[str, ...] = ("latin", "uniform", "swap", "binary", "centre", "arcsine")


class Banzhaf:
    """``(x - hidden) * mean_i gradient(hidden + z_i * (x - hidden))`` with ``z_i`` painted
    per segment: ``n_samples`` points of ``[0, 1]^K`` per sample.

    ``design``: ``"latin"`` (default: each segment's ``n_samples / 2`` values take one
    random point in each of as many equal strata, independently permuted across
    segments, plus their mirror images ``1 - z``), ``"uniform"`` (independent uniform
    values, antithetic pairs), ``"swap"`` (a random half of the segments at ``t``, the
    others at ``1 - t``, ``t`` stratified over the points: points on the straight paths
    between a random half-hidden mask and its complement), ``"binary"`` (random half-hidden
    masks and their complements), ``"centre"`` (every segment at 0.5, one point) or
    ``"arcsine"`` (as ``"latin"``, but at the midpoints of ``n_samples / 2`` quantile strata
    of ``Beta(1/2, 1/2)``, ``z = sin^2(pi (j + 1/2) / (n_samples / 2) / 2)``, and each
    gradient weighted per segment by ``pi sqrt(z (1 - z))``, one over that law's density;
    see the module). Values are drawn on the host from a generator seeded with
    ``(seed, sample)``: the same on every device.
    """

    def __init__(
        self,
        baseline: Tensor,
        labels: Tensor,
        n_samples: int = 8,
        design: str = "latin",
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")
        if design not in DESIGNS:
            raise ValueError(f"design: expected one of {DESIGNS}, got {design!r}")
        if design != "centre" and n_samples % 2:
            raise ValueError(f"n_samples: design {design!r} draws pairs, expected an even number")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.baseline = baseline  # [B, C, *S]
        self.labels = labels  # [B, *S]
        self.n_samples = 1 if design == "centre" else n_samples
        self.design = design
        self.seed = seed
        self.batch_size = check_batch_size(batch_size)

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        if target is None:
            target = forward.predicted(x, sample)
        baseline = pick(self.baseline, sample)
        flat = pick(self.labels, sample).reshape(x.shape[0], -1).long()
        diff = x - baseline
        n, acc = x.shape[0], accumulation_dtype(x.dtype)
        width = int(flat.max()) + 1  # one sync: the mixes' width
        mixes = to_device(self.mixes(n, width), x.device, x.dtype)  # [points, B, K]
        total = torch.zeros(x.shape, device=x.device, dtype=acc)
        view = (-1, 1, *x.shape[2:])
        chunk = chunk_rows(self.batch_size, n)
        for start in range(0, n * self.n_samples, chunk):
            rows = torch.arange(start, min(start + chunk, n * self.n_samples), device=x.device)
            point, row = rows // n, rows % n
            weight = mixes[point, row].gather(1, flat[row]).view(view)
            points = baseline[row] + weight * diff[row]
            grad, _ = input_gradient(forward, points, target[row], rows_of(sample, row))
            grad = grad.to(acc)
            if self.design == "arcsine":  # one over the density of z: pi sqrt(z (1 - z))
                grad = grad * (torch.pi * torch.sqrt(weight * (1 - weight))).to(acc)
            total.index_add_(0, row, grad)
        return (diff.to(acc) * total / self.n_samples).to(x.dtype), target

    def mixes(self, batch: int, width: int) -> Tensor:
        """float64 ``[n_samples, batch, width]`` in ``[0, 1]`` on the host."""
        if self.design == "centre":
            return torch.full((1, batch, width), 0.5, dtype=torch.float64)
        half = self.n_samples // 2
        draws = []
        for b in range(batch):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + b) % 2**63)
            draws.append(_half_design(self.design, half, width, g))
        first = torch.stack(draws, 1)  # [half, B, K]
        return torch.cat([first, 1 - first])


def _half_design(design: str, half: int, width: int, g: torch.Generator) -> Tensor:
    """``[half, width]`` float64: the first of each antithetic pair."""
    if design == "binary":
        return torch.randint(0, 2, (half, width), generator=g).to(torch.float64)
    if design == "swap":
        t = (torch.randperm(half, generator=g) + torch.rand(half, generator=g)) / half
        kept = torch.randint(0, 2, (half, width), generator=g).to(torch.float64)
        t = t.to(torch.float64).unsqueeze(1)
        return kept * t + (1 - kept) * (1 - t)
    uniform = torch.rand((half, width), generator=g, dtype=torch.float64)
    if design == "uniform":
        return uniform
    strata = torch.argsort(torch.rand((half, width), generator=g), dim=0).to(torch.float64)
    if design == "arcsine":  # the quantile strata's midpoints, through Beta(1/2, 1/2)
        return torch.sin(torch.pi / 2 * (strata + 0.5) / half) ** 2
    return (strata + uniform) / half
