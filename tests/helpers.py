"""Shared test helpers: device parametrisation and tolerances."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from gswfast.testing import grid_labels, photos, reference_pool  # noqa: F401  (re-exported for tests)


def cpu_and_cuda():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """ATen's CPU thread count set to ``count`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TOLERANCES = {
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}


def untied(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``images`` plus 1% seeded uniform noise, clamped to 0..1, in float64.

    For tests that compare the gradients of two numerical paths (batched and single,
    channels-last and contiguous, gswfast and Captum): flat photo regions give max-pool
    ties, and which tied pixel receives the gradient depends on rounding that differs
    between the paths and between CPUs (Intel or AMD, with or without AVX-512). The noise
    removes exact ties; float64 (use a ``.double()`` model) keeps both paths' rounding,
    about 1e-16, far below the noise's gaps, so no near-tie can flip either.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    return (images.double().cpu() + 0.01 * noise).clamp(0, 1).to(images.device)


class TinyCNN(torch.nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global mean -> linear; 2-D or 3-D (``dims=3``)."""

    def __init__(self, dims: int = 2, channels: int = 3, classes: int = 5, width: int = 4) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.conv1 = conv(channels, width, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = conv(width, width, 3, padding=1, stride=2)
        self.relu2 = torch.nn.ReLU()
        self.fc = torch.nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.flatten(2).mean(2))


class SmoothNet(torch.nn.Module):
    """A smooth (tanh) net, on which integrated gradients' quadrature converges fast."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))


def tiny_hf_vit(image_size: int, patch_size: int, width: int) -> torch.nn.Module:
    """A Hugging Face ViTForImageClassification built from a small config (no download):
    2 layers, 2 heads, 5 classes; skips the test where transformers is not installed."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        num_labels=5,
    )
    model: torch.nn.Module = transformers.ViTForImageClassification(config).eval()
    return model
