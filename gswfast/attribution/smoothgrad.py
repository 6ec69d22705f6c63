"""SmoothGrad (Smilkov et al. 2017): any scorer averaged over noisy copies of the input."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gswfast.attribution._model import ModelForward, OutputTarget, Resolved, accumulation_dtype
from gswfast.attribution.gradients import Scorer
from gswfast.attribution.integrated_gradients import check_batch_size, chunk_rows


class SmoothGrad:
    """Mean (or mean square) of ``base`` over ``n_samples`` copies of each input with
    Gaussian noise of standard deviation ``noise_level * (max - min)`` of that input.

    Noisy copies go through the model in chunks of ``batch_size`` rows. The noise of copy
    ``d`` of sample ``b`` is drawn on the host from a generator seeded with ``(seed, b, d)``
    and then moved, so one seed gives the same noise on every device, whatever the chunk
    size (``seed=None``: a seed drawn from torch's global generator).
    """

    def __init__(
        self,
        base: Scorer,
        n_samples: int = 25,
        noise_level: float = 0.15,
        square: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")
        if not (
            isinstance(noise_level, (int, float))
            and math.isfinite(noise_level)
            and noise_level >= 0
        ):
            raise ValueError(f"noise_level: expected a finite number >= 0, got {noise_level!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.base = base
        self.n_samples = n_samples
        self.noise_level = float(noise_level)
        self.square = bool(square)
        self.seed = seed
        self.batch_size = check_batch_size(batch_size)

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        if sample is not None:
            raise ValueError("method: smoothgrad cannot wrap smoothgrad")
        if target is None:
            target = forward.predicted(x)
        n, acc = x.shape[0], accumulation_dtype(x.dtype)
        flat = x.detach().flatten(1).to(acc)
        sigma = self.noise_level * (flat.amax(1) - flat.amin(1))  # [B]
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()))
        total: Tensor | None = None
        view = (-1,) + (1,) * (x.dim() - 1)
        chunk = chunk_rows(self.batch_size, n)
        for start in range(0, n * self.n_samples, chunk):
            end = min(start + chunk, n * self.n_samples)
            rows = torch.arange(start, end, device=x.device)
            row = rows % n
            noise = host_noise(seed, range(start, end), n, tuple(x.shape[1:]), x.device)
            noisy = (x[row].to(acc) + noise * sigma[row].view(view)).to(x.dtype)
            attribution, _ = self.base(forward, noisy, target[row], row)
            attribution = attribution.to(acc)
            if self.square:
                attribution = attribution * attribution
            if total is None:
                total = torch.zeros((n, *attribution.shape[1:]), device=x.device, dtype=acc)
            total.index_add_(0, row, attribution)
        assert total is not None  # n_samples >= 1 copies of a non-empty batch
        return (total / self.n_samples).to(x.dtype), target


def host_noise(
    seed: int, rows: range, batch: int, shape: tuple[int, ...], device: torch.device
) -> Tensor:
    """Standard normal noise ``[len(rows), *shape]`` float32 on ``device``: row ``r`` is copy
    ``r // batch`` of sample ``r % batch``, drawn on the host from a generator seeded by
    ``(seed, sample, copy)``, so it does not depend on how rows are chunked or on the device."""
    generator = torch.Generator()
    draws = []
    for r in rows:
        generator.manual_seed(((seed * 1_000_003 + r % batch) * 1_000_003 + r // batch) % 2**63)
        draws.append(torch.randn(shape, generator=generator))
    noise = torch.stack(draws)
    if device.type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)
