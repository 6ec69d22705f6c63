"""segment_pool against plain-torch (scatter_reduce, index_add_) and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOLERANCES, cpu_and_cuda, grid_labels, reference_pool

import gswfast as gsw
import gswfast.ops

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCES = ("sum", "mean", "max", "min", "count")


def _with_ignored(labels: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    mask = torch.rand(labels.shape, device=labels.device) < fraction
    return torch.where(mask, torch.full_like(labels, -1), labels)


def _check_against_reference(values, labels, k, reduce, out):
    b = values.shape[0]
    v3 = (
        values.reshape(b, -1, labels[0].numel())
        if values.dim() > labels.dim()
        else values.reshape(b, 1, -1)
    )
    ref = reference_pool(v3, labels.reshape(b, -1), k, reduce)
    if values.dim() == labels.dim():
        ref = ref.squeeze(1)
    assert out.shape == ref.shape
    if reduce == "count":
        assert out.dtype == torch.int64
        torch.testing.assert_close(out.cpu(), ref)
        return
    assert out.dtype == values.dtype
    torch.testing.assert_close(out.cpu().double(), ref, **TOLERANCES[values.dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
def test_image_with_channels_matches_reference(device, dtype, reduce, label_dtype):
    labels, k = grid_labels(3, 37, 45, cell=7, device=device, dtype=label_dtype)
    labels = _with_ignored(labels)
    values = torch.randn(3, 3, 37, 45, device=device).to(dtype)
    out = gsw.segment_pool(values, labels, k, reduce)
    _check_against_reference(values, labels, k, reduce, out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduce", REDUCES)
def test_image_without_channels_matches_reference(device, dtype, reduce):
    labels, k = grid_labels(2, 32, 40, cell=8, device=device)
    labels = _with_ignored(labels)
    values = torch.randn(2, 32, 40, device=device).to(dtype)
    out = gsw.segment_pool(values, labels, k, reduce)
    _check_against_reference(values, labels, k, reduce, out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("channels", [0, 1, 2, 5])
def test_video_matches_reference(device, reduce, channels):
    labels, k = grid_labels(2, 9, 20, 24, cell=6, device=device, dtype=torch.int64)
    labels = _with_ignored(labels)
    shape = (2, channels, 9, 20, 24) if channels else (2, 9, 20, 24)
    values = torch.randn(shape, device=device)
    out = gsw.segment_pool(values, labels, k, reduce)
    _check_against_reference(values, labels, k, reduce, out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_random_labels_many_segments_and_tiles(device, reduce):
    # Unstructured labels (no runs) and more segments than one CUDA shared-memory chunk;
    # 300 x 300 pixels span several CPU and CUDA tiles.
    k = 3001
    labels = torch.randint(-1, k, (2, 300, 300), device=device)
    values = torch.randn(2, 3, 300, 300, device=device)
    out = gsw.segment_pool(values, labels, k, reduce)
    _check_against_reference(values, labels, k, reduce, out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.paths
def test_sum_matches_index_add_and_numpy_bincount(device):
    labels, k = grid_labels(4, 64, 64, device=device, dtype=torch.int64)
    values = torch.randn(4, 64, 64, device=device, dtype=torch.float64)
    out = gsw.segment_pool(values, labels, k, "sum").cpu()
    flat = (labels + torch.arange(4, device=device).view(4, 1, 1) * k).flatten().cpu()
    by_index_add = torch.zeros(4 * k, dtype=torch.float64).index_add_(
        0, flat, values.flatten().cpu()
    )
    by_bincount = np.bincount(flat.numpy(), weights=values.flatten().cpu().numpy(), minlength=4 * k)
    torch.testing.assert_close(out.flatten(), by_index_add)
    np.testing.assert_allclose(out.flatten().numpy(), by_bincount, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_empty_segments_give_zero(device, reduce):
    labels = torch.tensor([[[0, 0], [3, 3]]], device=device)
    values = torch.tensor([[[1.0, -2.0], [5.0, 7.0]]], device=device)
    out = gsw.segment_pool(values, labels, 6, reduce)
    assert out.shape == (1, 6)
    assert out[0, [1, 2, 4, 5]].eq(0).all()
    expected = {"sum": (-1.0, 12.0), "mean": (-0.5, 6.0), "max": (1.0, 7.0), "min": (-2.0, 5.0)}[
        reduce
    ]
    assert out[0, 0].item() == expected[0]
    assert out[0, 3].item() == expected[1]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_all_pixels_ignored_gives_zero_segments(device):
    labels = torch.full((2, 4, 4), -1, device=device)
    out = gsw.segment_pool(torch.randn(2, 3, 4, 4, device=device), labels)
    assert out.shape == (2, 3, 0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_nan_propagates_to_its_segment_only(device, reduce):
    labels, k = grid_labels(1, 16, 16, cell=4, device=device)
    values = torch.randn(1, 16, 16, device=device)
    values[0, 5, 6] = float("nan")
    with pytest.raises(ValueError, match=r"values: contain NaN \(1 NaN result"):
        gsw.segment_pool(values, labels, k, reduce)
    out = gsw.segment_pool(values, labels, k, reduce, validate=False)
    bad = labels[0, 5, 6].item()
    assert torch.isnan(out[0, bad])
    assert not torch.isnan(out[0, torch.arange(k, device=device) != bad]).any()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.paths
def test_non_contiguous_and_channels_last(device):
    labels, k = grid_labels(2, 24, 28, cell=5, device=device)
    base = torch.randn(2, 4, 24, 28, device=device)
    expected = gsw.segment_pool(base.contiguous(), labels, k, "mean")
    channels_last = base.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    torch.testing.assert_close(gsw.segment_pool(channels_last, labels, k, "mean"), expected)
    transposed = base.transpose(2, 3).contiguous().transpose(2, 3)  # H/W strides swapped
    torch.testing.assert_close(gsw.segment_pool(transposed, labels, k, "mean"), expected)
    wide = torch.randn(2, 8, 24, 28, device=device)
    wide[:, ::2] = base
    torch.testing.assert_close(gsw.segment_pool(wide[:, ::2], labels, k, "mean"), expected)
    labels_t = labels.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(gsw.segment_pool(base, labels_t, k, "mean"), expected)
    video = torch.randn(2, 3, 5, 24, 28, device=device).to(memory_format=torch.channels_last_3d)
    vlabels, vk = grid_labels(2, 5, 24, 28, cell=5, device=device)
    torch.testing.assert_close(
        gsw.segment_pool(video, vlabels, vk, "sum"),
        gsw.segment_pool(video.contiguous(), vlabels, vk, "sum"),
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_num_segments_none_and_per_sample(device):
    labels = torch.tensor([[[0, 1], [1, 2]], [[0, 0], [1, -1]]], device=device)
    values = torch.ones(2, 2, 2, device=device)
    assert gsw.segment_pool(values, labels, reduce="count").tolist() == [[1, 2, 1], [2, 1, 0]]
    counts = torch.tensor([3, 2], device=device)
    assert gsw.segment_pool(values, labels, counts, "sum").tolist() == [
        [1.0, 2.0, 1.0],
        [2.0, 1.0, 0.0],
    ]
    assert gsw.segment_pool(values, labels, [3, 2], "sum").shape == (2, 3)
    with pytest.raises(ValueError, match="labels"):
        gsw.segment_pool(values, labels, [3, 1], "sum")  # sample 1 has label 1 >= 1


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_bitwise_deterministic(device, reduce):
    labels, k = grid_labels(4, 200, 210, device=device)
    values = torch.randn(4, 3, 200, 210, device=device) * 1000
    first = gsw.segment_pool(values, labels, k, reduce)
    for _ in range(3):
        assert torch.equal(gsw.segment_pool(values, labels, k, reduce), first)


@pytest.mark.paths
def test_cpu_result_does_not_depend_on_thread_count():
    labels, k = grid_labels(3, 300, 310, dtype=torch.int64)
    values = torch.randn(3, 2, 300, 310, dtype=torch.float32) * 100
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gsw.segment_pool(values, labels, k, "mean")
        torch.set_num_threads(max(threads, 2))
        many = gsw.segment_pool(values, labels, k, "mean")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("channels", [0, 2])
def test_gradcheck(device, reduce, channels):
    labels, k = grid_labels(2, 6, 7, cell=3, device=device)
    labels = _with_ignored(labels, 0.15)
    shape = (2, channels, 6, 7) if channels else (2, 6, 7)
    values = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: gsw.segment_pool(v, labels, k, reduce), (values,))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", ["max", "min"])
def test_extreme_gradient_goes_to_first_arg_extreme(device, reduce):
    labels = torch.tensor([[[0, 0, 1, 1]]], device=device)
    values = torch.tensor([[[3.0, 3.0, -1.0, -1.0]]], device=device, requires_grad=True)
    gsw.segment_pool(values, labels, 2, reduce).sum().backward()
    assert values.grad.tolist() == [[[1.0, 0.0, 1.0, 0.0]]]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_mean_gradient_is_gather_over_count(device):
    labels = torch.tensor([[[0, 0, 0, 1], [1, -1, 2, 2]]], device=device)
    values = torch.randn(1, 2, 4, device=device, requires_grad=True)
    weights = torch.tensor([[3.0, 4.0, 10.0]], device=device)
    (gsw.segment_pool(values, labels, 3, "mean") * weights).sum().backward()
    expected = torch.tensor([[[1.0, 1.0, 1.0, 2.0], [2.0, 0.0, 5.0, 5.0]]], device=device)
    torch.testing.assert_close(values.grad, expected)


def test_parameters_do_not_need_grad_for_labels():
    labels, k = grid_labels(1, 8, 8, cell=4)
    values = torch.randn(1, 8, 8, requires_grad=True)
    out = gsw.segment_pool(values, labels, k)
    assert out.requires_grad
    assert labels.grad is None


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    labels, k = grid_labels(2, 10, 12, cell=4, device=device)
    limits = torch.full((2,), k, dtype=torch.int64, device=device)
    for reduce in ("sum", "mean", "max", "min"):
        values = torch.randn(2, 3, 120, device=device, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(
            torch.ops.gswfast.segment_pool, (values, labels.flatten(1), None, k, reduce)
        )
    values = torch.randn(2, 1, 120, device=device, requires_grad=True)
    torch.library.opcheck(
        torch.ops.gswfast.segment_pool, (values, labels.flatten(1), limits, k, "mean")
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_torch_compile_fullgraph(device):
    labels, k = grid_labels(2, 16, 16, cell=4, device=device)

    def explain_like(values):
        scores = gsw.segment_pool(values.abs().sum(1), labels, k, "mean")
        return gsw.paint(scores / scores.amax(1, keepdim=True), labels)

    compiled = torch.compile(explain_like, fullgraph=True)
    values = torch.randn(2, 3, 16, 16, device=device)
    torch.testing.assert_close(compiled(values), explain_like(values))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("bad_label", [7, 1000, -2])
def test_out_of_range_labels_raise(device, bad_label):
    labels = torch.zeros(2, 8, 8, dtype=torch.int64, device=device)
    labels[1, 3, 4] = bad_label
    with pytest.raises(ValueError, match=r"labels: 1 pixel\(s\) have labels outside"):
        gsw.segment_pool(torch.randn(2, 8, 8, device=device), labels, 7)
    # the device is still healthy afterwards
    assert (
        gsw.segment_pool(torch.ones(2, 8, 8, device=device), labels.clamp(0, 6), 7, "sum")
        .sum()
        .item()
        == 128
    )


@pytest.mark.parametrize(
    ("values_shape", "labels_shape", "match"),
    [
        ((2, 8, 9), (2, 8, 8), "values: expected"),
        ((3, 8, 8), (2, 8, 8), "values: expected"),
        ((2, 3, 4, 8, 8), (2, 8, 8), "values: expected"),
        ((2, 64), (2, 64), "labels: expected \\[B, H, W\\]"),
        ((0, 8, 8), (0, 8, 8), "labels: expected a non-empty"),
        ((2, 0, 8), (2, 0, 8), "labels: expected a non-empty"),
    ],
)
def test_bad_shapes_raise(values_shape, labels_shape, match):
    with pytest.raises(ValueError, match=match):
        gsw.segment_pool(torch.randn(values_shape), torch.zeros(labels_shape, dtype=torch.int64), 4)


def test_bad_dtypes_and_arguments_raise():
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="values: expected dtype"):
        gsw.segment_pool(torch.ones(1, 4, 4, dtype=torch.int64), labels, 1)
    with pytest.raises(TypeError, match="labels: expected dtype"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels.float(), 1)
    with pytest.raises(TypeError, match=r"values: expected a torch.Tensor"):
        gsw.segment_pool(np.ones((1, 4, 4)), labels, 1)
    with pytest.raises(ValueError, match="reduce: expected one of"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels, 1, "median")
    with pytest.raises(ValueError, match="num_segments: expected >= 0"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels, -3)
    with pytest.raises(ValueError, match="num_segments: expected 1 per-sample"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels, [1, 2])
    with pytest.raises(TypeError, match="num_segments: expected an integer tensor"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="num_segments"):
        gsw.segment_pool(torch.ones(1, 4, 4), labels, "3")


@pytest.mark.cuda
def test_mismatched_devices_raise():
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels: expected device cuda"):
        gsw.segment_pool(torch.ones(1, 4, 4, device="cuda"), labels, 1)


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_matches_cpu(reduce, dtype):
    labels, k = grid_labels(8, 224, 224, dtype=torch.int32)
    labels = _with_ignored(labels, 0.05)
    values = torch.randn(8, 3, 224, 224).to(dtype)
    cpu = gsw.segment_pool(values, labels, k, reduce)
    gpu = gsw.segment_pool(values.cuda(), labels.cuda(), k, reduce).cpu()
    if reduce == "count" or reduce in ("max", "min"):
        assert torch.equal(cpu, gpu)  # exact: no rounding involved
    else:
        torch.testing.assert_close(gpu, cpu, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_low_precision_gradients_match_float64(device, dtype, reduce):
    labels, k = grid_labels(2, 12, 14, cell=4, device=device)
    base = torch.randn(2, 2, 12, 14, device=device, dtype=torch.float64)
    low = base.to(dtype).requires_grad_()
    high = low.detach().double().requires_grad_()  # same values, so the same arg-extremes
    weights = torch.randn(2, 2, k, device=device, dtype=torch.float64)
    (gsw.segment_pool(low, labels, k, reduce) * weights.to(dtype)).sum().backward()
    (gsw.segment_pool(high, labels, k, reduce) * weights).sum().backward()
    assert low.grad.dtype == dtype
    torch.testing.assert_close(low.grad.double(), high.grad, **TOLERANCES[dtype])
