"""A small end-to-end use of gswfast (the main job until the demo exists).

Segments a batch of scikit-image sample photos with gswfast's SLIC, computes a pixel
attribution (|gradient| of a random CNN's top logit, with plain torch), and pools it per
superpixel: segment scores, their ranking, and a heatmap painted back onto the pixels.
Then segments a 16-frame clip into supervoxels, cold and warm-started. Prints a short
summary and the time each step took, on the GPU when there is one.
"""

from __future__ import annotations

import time

import torch
from skimage import data

import gswfast as gsw


def timed(fn, device: str):
    """Runs fn once to warm up, then once timed; returns (result, milliseconds)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def photos(device: str) -> torch.Tensor:
    """Four sample photos resized to 224 x 224, uint8 [4, 3, 224, 224]."""
    batch = [
        torch.from_numpy(getattr(data, n)()).permute(2, 0, 1)[None].float()
        for n in ("astronaut", "coffee", "chelsea", "rocket")
    ]
    resized = [
        torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        for x in batch
    ]
    return torch.cat(resized).round().clamp(0, 255).to(torch.uint8).to(device)


def main() -> None:
    device = "cuda" if gsw.cuda_available() else "cpu"
    torch.manual_seed(0)
    print(f"gswfast {gsw.__version__} on {device}; build: {gsw.build_info()}")

    images = photos(device)
    seg, slic_ms = timed(lambda: gsw.slic(images, n_segments=200), device)
    print(
        f"slic: {tuple(seg.labels.shape)} labels, segments per image {seg.num_segments.tolist()}, "
        f"k-means passes {seg.iterations.tolist()}, {slic_ms:.1f} ms for 4 images"
    )

    x = (images.float() / 255).requires_grad_(True)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 5, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).to(device)
    model(x).max(dim=1).values.sum().backward()
    attribution = x.grad.abs().sum(dim=1)  # [B, H, W]

    def pool_and_paint():
        scores = gsw.segment_pool(attribution, seg.labels, seg.num_segments, "mean")  # [B, K]
        return scores, gsw.paint(scores / scores.amax(dim=1, keepdim=True), seg.labels)  # [B, H, W]

    (scores, heatmap), pool_ms = timed(pool_and_paint, device)
    ranking = scores.argsort(dim=1, descending=True)
    counts = gsw.segment_pool(attribution, seg.labels, seg.num_segments, "count")
    print(
        f"segment scores {tuple(scores.shape)}, heatmap {tuple(heatmap.shape)}, pool + paint {pool_ms:.2f} ms"
    )
    for b in range(2):
        top = ranking[b, :5].tolist()
        print(
            f"image {b}: top-5 segments {top}, pixels in them {counts[b, top].tolist()}, "
            f"mean |grad| {[f'{v:.3g}' for v in scores[b, top].tolist()]}"
        )
    assert torch.isfinite(heatmap).all()
    assert heatmap.max() <= 1.0

    # A clip: the coffee photo panning right, 2 px per frame, as supervoxels.
    wide = photos(device)[1:2].float() / 255
    wide = torch.nn.functional.interpolate(wide, size=(112, 160), mode="bilinear", antialias=True)
    clip = torch.stack([wide[:, :, :, 2 * t : 2 * t + 112] for t in range(16)], dim=2).contiguous()
    cold, cold_ms = timed(lambda: gsw.slic(clip, n_segments=200, mode="volume"), device)
    warm, warm_ms = timed(lambda: gsw.slic(clip, n_segments=200, mode="volume", init=cold), device)
    kept = (warm.labels == cold.labels).float().mean().item()
    print(
        f"clip {tuple(clip.shape)}: {int(cold.num_segments[0])} supervoxels, {int(cold.iterations[0])} passes "
        f"in {cold_ms:.1f} ms; warm start {int(warm.iterations[0])} passes in {warm_ms:.1f} ms, "
        f"{kept:.1%} of voxels keep their id"
    )


if __name__ == "__main__":
    main()
