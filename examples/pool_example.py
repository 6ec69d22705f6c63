"""A small end-to-end use of gswfast's segment pooling (the main job until the demo exists).

Takes a batch of images, a pixel attribution (here: |gradient| of a random CNN's top logit,
computed with plain torch), SLIC-like grid segments, and pools the attribution per segment:
segment scores, their ranking, and a heatmap painted back onto the pixels. Prints a short
summary and the time each step took, on the GPU when there is one.
"""

from __future__ import annotations

import time

import torch

import gswfast as gsw
from gswfast.testing import grid_labels


def main() -> None:
    device = "cuda" if gsw.cuda_available() else "cpu"
    torch.manual_seed(0)
    print(f"gswfast {gsw.__version__} on {device}; build: {gsw.build_info()}")

    images = torch.rand(8, 3, 224, 224, device=device, requires_grad=True)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 5, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).to(device)
    logits = model(images)
    logits.max(dim=1).values.sum().backward()
    attribution = images.grad.abs().sum(dim=1)  # [B, H, W]

    labels, k = grid_labels(8, 224, 224, cell=14, device=device)  # 256 segments per image
    for _ in range(3):  # warm-up
        gsw.segment_pool(attribution, labels, k, "mean")
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scores = gsw.segment_pool(attribution, labels, k, "mean")  # [B, K]
    heatmap = gsw.paint(scores / scores.amax(dim=1, keepdim=True), labels)  # [B, H, W]
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed_ms = (time.perf_counter() - t0) * 1e3

    ranking = scores.argsort(dim=1, descending=True)
    counts = gsw.segment_pool(attribution, labels, k, "count")
    print(f"segment scores {tuple(scores.shape)}, heatmap {tuple(heatmap.shape)}, "
          f"pool + paint of 8 images in {elapsed_ms:.2f} ms")
    for b in range(3):
        top = ranking[b, :5].tolist()
        print(f"image {b}: top-5 segments {top}, pixels in them {counts[b, top].tolist()}, "
              f"mean |grad| {[f'{v:.3g}' for v in scores[b, top].tolist()]}")
    assert torch.isfinite(heatmap).all() and heatmap.max() <= 1.0


if __name__ == "__main__":
    main()
