"""The demo models: a small 2-D CNN for ``shape_images`` and a small (2+1)-D CNN for
``action_clips``, with weights trained by ``python -m gswfast.demo.train`` (fixed seeds)
and shipped in ``gswfast/demo/weights/``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gswfast.demo.data import ACTIONS, SHAPES

WEIGHTS = Path(__file__).parent / "weights"


def _block2d(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _block21d(cin: int, cout: int, spatial_stride: int, temporal_stride: int) -> list[nn.Module]:
    """A (2+1)-D block: a 1x3x3 spatial convolution, then a 3x1x1 temporal one."""
    return [
        nn.Conv3d(cin, cout, (1, 3, 3), (1, spatial_stride, spatial_stride), (0, 1, 1), bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, (3, 1, 1), (temporal_stride, 1, 1), (1, 0, 0), bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    ]


class ShapeNet(nn.Module):
    """Images ``[B, 3, H, W]`` in 0..1 -> logits over ``SHAPES``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block2d(3, 16),
            *_block2d(16, 32, 2),
            *_block2d(32, 64, 2),
            *_block2d(64, 64, 2),
            *_block2d(64, 64),
        )
        self.classifier = nn.Linear(64, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x).mean((2, 3)))  # Module call: Any
        return logits


class ActionNet(nn.Module):
    """Clips ``[B, 3, T, H, W]`` in 0..1 -> logits over ``ACTIONS``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block21d(3, 16, 2, 1), *_block21d(16, 32, 2, 2), *_block21d(32, 64, 2, 2)
        )
        self.classifier = nn.Linear(64, len(ACTIONS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x).mean((2, 3, 4)))  # Module call: Any
        return logits


ARCHITECTURES = {"shapes": ShapeNet, "actions": ActionNet}


def load(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A trained demo model (``"shapes"`` or ``"actions"``) in eval mode."""
    if name not in ARCHITECTURES:
        raise ValueError(f"name: expected one of {tuple(ARCHITECTURES)}, got {name!r}")
    model = ARCHITECTURES[name]()
    state = torch.load(WEIGHTS / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()
