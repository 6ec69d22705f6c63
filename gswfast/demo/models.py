"""The demo models: a small 2-D CNN for ``shape_images``, a small (2+1)-D CNN for
``action_clips`` and a small Faster R-CNN for ``detection_scenes``, with weights trained by
``python -m gswfast.demo.train`` (fixed seeds) and shipped in ``gswfast/demo/weights/``."""

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


class _DetectorBackbone(nn.Module):
    """The detector's features: stride 8, 64 channels (torchvision reads ``out_channels``)."""

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_block2d(3, 16), *_block2d(16, 32, 2), *_block2d(32, 64, 2), *_block2d(64, 64, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.body(x)  # Module call: Any
        return features


def shape_detector() -> nn.Module:
    """torchvision's Faster R-CNN on a small backbone for ``detection_scenes`` (96x96 images
    kept at that size; classes: background and ``SHAPES``): a real two-stage detector (RPN,
    RoI align, non-maximum suppression) small enough to train in minutes on a CPU."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    detector: nn.Module = FasterRCNN(  # untyped import: Any
        _DetectorBackbone(),
        min_size=96,
        max_size=96,
        rpn_anchor_generator=AnchorGenerator(sizes=((12, 20, 32),), aspect_ratios=((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(64 * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, 1 + len(SHAPES)),
        box_detections_per_img=10,
        # a few objects per 96x96 image: far fewer proposals and sampled boxes than COCO's
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
    )
    return detector


ARCHITECTURES = {"shapes": ShapeNet, "actions": ActionNet, "detector": shape_detector}


def load(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A trained demo model (``"shapes"``, ``"actions"`` or ``"detector"``) in eval mode."""
    if name not in ARCHITECTURES:
        raise ValueError(f"name: expected one of {tuple(ARCHITECTURES)}, got {name!r}")
    model = ARCHITECTURES[name]()
    state = torch.load(WEIGHTS / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()
