"""Shared test helpers: device parametrisation, label generators, plain-torch references."""

from __future__ import annotations

import pytest
import torch


def cpu_and_cuda():
    return ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


def grid_labels(batch: int, *spatial: int, cell: int = 14, device="cpu", dtype=torch.int32,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """SLIC-like labels [B, *S]: square cells with jittered borders, ids 0..K-1 per sample.

    Like superpixels, each label covers a compact region and comes in runs along rows.
    For [B, T, H, W] the cells extend over 4 frames (supervoxels).
    """
    h, w = spatial[-2:]
    rows, cols = -(-h // cell), -(-w // cell)
    y = torch.arange(h).view(h, 1)
    x = torch.arange(w).view(1, w)
    out = []
    for _ in range(batch):
        jy = torch.randint(0, max(cell // 3, 1), (1, w), generator=generator)
        jx = torch.randint(0, max(cell // 3, 1), (h, 1), generator=generator)
        r = ((y + jy) // cell).clamp(max=rows - 1)
        c = ((x + jx) // cell).clamp(max=cols - 1)
        lab = r * cols + c
        if len(spatial) == 3:
            t = spatial[0]
            frames = torch.arange(t).view(t, 1, 1) // 4
            lab = frames * rows * cols + lab.unsqueeze(0)
        out.append(lab)
    labels = torch.stack(out).to(device=device, dtype=dtype)
    k = rows * cols * (-(-spatial[0] // 4) if len(spatial) == 3 else 1)
    return labels, k


def reference_pool(values: torch.Tensor, labels: torch.Tensor, k: int, reduce: str) -> torch.Tensor:
    """Plain-torch segment pooling with scatter_reduce in float64. values [B, C, N], labels [B, N]."""
    b, c, n = values.shape
    v = values.double().cpu()
    lab = labels.long().cpu()
    index = torch.where(lab >= 0, lab, k).unsqueeze(1).expand(b, c, n)  # column k: ignored
    count = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_add_(2, index, torch.ones_like(v))
    if reduce == "count":
        return count[..., :k].long()
    if reduce in ("sum", "mean"):
        out = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_add_(2, index, v)
        if reduce == "mean":
            out = out / count.clamp(min=1)
    else:
        amode = "amax" if reduce == "max" else "amin"
        out = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_reduce(2, index, v, amode, include_self=False)
    out = torch.where(count > 0, out, torch.zeros_like(out))
    return out[..., :k]


TOLERANCES = {
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}
