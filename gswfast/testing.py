"""Helpers for tests and benchmarks: SLIC-like label maps and plain-torch references."""

from __future__ import annotations

import torch
from torch import Tensor


def grid_labels(
    batch: int,
    *spatial: int,
    cell: int = 14,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.int32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """SLIC-like labels ``[B, H, W]`` or ``[B, T, H, W]`` and their count ``K``.

    Square cells of ``cell`` pixels with jittered borders, ids ``0..K-1`` in every sample.
    Like superpixels, each label covers a compact region and comes in runs along rows.
    For clips the cells extend over 4 frames (supervoxels). 224 x 224 with ``cell=14``
    gives 256 segments.
    """
    if len(spatial) not in (2, 3):
        raise ValueError(f"spatial: expected (H, W) or (T, H, W), got {spatial}")
    h, w = spatial[-2:]
    rows, cols = -(-h // cell), -(-w // cell)
    y = torch.arange(h).view(h, 1)
    x = torch.arange(w).view(1, w)
    jitter = max(cell // 3, 1)
    maps = []
    for _ in range(batch):
        jy = torch.randint(0, jitter, (1, w), generator=generator)
        jx = torch.randint(0, jitter, (h, 1), generator=generator)
        lab = ((y + jy) // cell).clamp(max=rows - 1) * cols + ((x + jx) // cell).clamp(max=cols - 1)
        if len(spatial) == 3:
            t = spatial[0]
            lab = (torch.arange(t).view(t, 1, 1) // 4) * rows * cols + lab.unsqueeze(0)
        maps.append(lab)
    k = rows * cols * (-(-spatial[0] // 4) if len(spatial) == 3 else 1)
    return torch.stack(maps).to(device=device, dtype=dtype), k


def reference_pool(values: Tensor, labels: Tensor, num_segments: int, reduce: str) -> Tensor:
    """Segment pooling with plain torch (scatter_reduce in float64, on the CPU).

    values ``[B, C, N]``, labels ``[B, N]`` (``-1`` ignored) -> ``[B, C, K]`` float64
    (int64 for ``count``); empty segments give 0.
    """
    b, c, n = values.shape
    k = num_segments
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
        mode = "amax" if reduce == "max" else "amin"
        out = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_reduce(2, index, v, mode, include_self=False)
    out = torch.where(count > 0, out, torch.zeros_like(out))
    return out[..., :k]
