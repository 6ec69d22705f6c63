"""paint (gather segment values back to pixels) against torch.gather."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_and_cuda, grid_labels

import gswfast as gsw
import gswfast.ops


def _reference_paint(seg: torch.Tensor, labels: torch.Tensor, fill: float) -> torch.Tensor:
    b = labels.shape[0]
    seg3 = seg if seg.dim() == 3 else seg.unsqueeze(1)
    flat = labels.reshape(b, 1, -1).long()
    index = flat.clamp(min=0).expand(-1, seg3.shape[1], -1)
    out = torch.gather(seg3, 2, index)
    out = torch.where(flat >= 0, out, torch.full_like(out, fill))
    out = out.reshape(b, seg3.shape[1], *labels.shape[1:])
    return out if seg.dim() == 3 else out.squeeze(1)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("spatial", [(17, 23), (5, 12, 14)])
@pytest.mark.parametrize("channels", [None, 3])
def test_paint_matches_gather(device, dtype, label_dtype, spatial, channels):
    labels, k = grid_labels(2, *spatial, cell=4, device=device, dtype=label_dtype)
    labels[:, 0] = -1
    shape = (2, channels, k) if channels else (2, k)
    seg = torch.randn(shape, device=device).to(dtype)
    out = gsw.paint(seg, labels, fill=-7.5)
    assert out.dtype == dtype
    assert torch.equal(out, _reference_paint(seg, labels, -7.5))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_paint_then_pool_round_trip(device):
    labels, k = grid_labels(3, 40, 50, device=device)
    seg = torch.randn(3, k, device=device, dtype=torch.float64)
    torch.testing.assert_close(gsw.segment_pool(gsw.paint(seg, labels), labels, k, "mean"), seg)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_paint_gradcheck(device):
    labels, k = grid_labels(2, 6, 6, cell=3, device=device)
    labels[0, 0, 0] = -1
    seg = torch.randn(2, 2, k, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: gsw.paint(s, labels), (seg,))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_paint_opcheck(device):
    labels, k = grid_labels(2, 8, 8, cell=4, device=device)
    seg = torch.randn(2, 3, k, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gswfast.paint, (seg, labels.flatten(1), None, 0.0))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_paint_bad_input_raises(device):
    labels = torch.zeros(2, 4, 4, dtype=torch.int64, device=device)
    labels[0, 1, 1] = 5
    with pytest.raises(ValueError, match=r"labels: 1 pixel\(s\) have labels outside"):
        gsw.paint(torch.ones(2, 5, device=device), labels)
    with pytest.raises(ValueError, match=r"labels: 1 pixel\(s\) have labels outside"):
        gsw.paint(torch.ones(2, 3, 5, device=device), labels)  # counted once, not per channel
    nan_values = torch.ones(2, 5, device=device)
    nan_values[1, 3] = float("nan")
    with pytest.raises(ValueError, match="segment_values: contain NaN"):
        gsw.paint(nan_values, labels.clamp(max=4))
    assert (
        torch.isnan(gsw.paint(nan_values, labels.clamp(max=4), validate=False)).sum() == 0
    )  # label 3 unused
    with pytest.raises(ValueError, match="segment_values: expected \\[B, K\\]"):
        gsw.paint(torch.ones(3, 5, device=device), labels)
    with pytest.raises(TypeError, match="segment_values: expected dtype"):
        gsw.paint(torch.ones(2, 6, dtype=torch.int32, device=device), labels)
    with pytest.raises(TypeError, match="labels: expected dtype"):
        gsw.paint(torch.ones(2, 6, device=device), labels.float())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("limit", [8, 2**40, -1])
def test_ops_clamp_limits_to_the_segments_they_hold(device, limit):
    # A direct caller's limits past K (or negative) must never index past the K rows
    # (segment_pool.h, label_limit): labels from K (from 0 when negative) count as invalid.
    labels = torch.tensor([[0, 1, 5, 5, -1]], dtype=torch.int64, device=device)
    limits = torch.tensor([limit], device=device)
    seg = torch.arange(2.0, device=device).view(1, 1, 2)
    painted, invalid = torch.ops.gswfast.paint(seg, labels, limits, -3.0)
    kept = [0.0, 1.0] if limit > 0 else [-3.0, -3.0]
    assert painted.cpu().tolist() == [[[*kept, -3.0, -3.0, -3.0]]]
    assert int(invalid) == (2 if limit > 0 else 4)
    values = torch.ones(1, 1, 5, device=device)
    for reduce in ("sum", "max"):
        out, count, invalid = torch.ops.gswfast.segment_pool(values, labels, limits, 2, reduce)
        assert count.cpu().tolist() == ([[1, 1]] if limit > 0 else [[0, 0]])
        assert out.cpu().tolist() == ([[[1.0, 1.0]]] if limit > 0 else [[[0.0, 0.0]]])
        assert int(invalid) == (2 if limit > 0 else 4)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_paint_without_channels_still_counts_invalid_labels(device):
    labels = torch.tensor([[0, 3, -1, -2]], dtype=torch.int32, device=device)
    _, invalid = torch.ops.gswfast.paint(torch.zeros(1, 0, 2, device=device), labels, None, 0.0)
    assert int(invalid) == 2
