"""segment_pool and paint against what a user would otherwise write, in the same run.

Run with ``pytest benchmarks --benchmark-only``; ``python benchmarks/summarize.py FILE``
turns ``--benchmark-json FILE`` into the ratio table docs/guide/performance.md quotes.

CPU case (issue 2): values [64, 224, 224] float32, 256 SLIC-like segments per image, mean.
CUDA case: values [64, 3, 224, 224] float32, same labels; each timed call launches
``CUDA_REPEAT`` ops and synchronises once, so launch overhead is amortised the same way
for every contender ("cuda-*" groups, host overhead included). The "cuda-graph-*" groups
replay the same calls from a CUDA graph: GPU time alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timing import cuda_timed

import gswfast as gsw
from gswfast.testing import grid_labels

CUDA_REPEAT = 50


def _offset_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Flat segment ids across the batch, for the 1-D peers (computed once, not timed)."""
    b = labels.shape[0]
    offsets = torch.arange(b, device=labels.device).view(b, *([1] * (labels.dim() - 1))) * k
    return (labels.long() + offsets).reshape(-1)


# ------------------------------------------------------------------------------ CPU


@pytest.fixture(scope="module")
def cpu_case():
    gen = torch.Generator().manual_seed(0)
    labels, k = grid_labels(64, 224, 224, cell=14, generator=gen)
    values = torch.randn(64, 224, 224, generator=gen)
    return values, labels, k


@pytest.mark.benchmark(group="cpu-mean-64x224x224")
def bench_cpu_gswfast_mean(benchmark, cpu_case):
    values, labels, k = cpu_case
    out = benchmark(gsw.segment_pool, values, labels, k, "mean")
    benchmark.extra_info.update(role="gswfast", threads=torch.get_num_threads())
    assert out.shape == (64, k)


@pytest.mark.benchmark(group="cpu-mean-64x224x224")
def bench_cpu_torch_index_add_mean(benchmark, cpu_case):
    values, labels, k = cpu_case
    flat = _offset_labels(labels, k)
    ones = torch.ones_like(values).reshape(-1)

    def index_add_mean():
        sums = torch.zeros(64 * k).index_add_(0, flat, values.reshape(-1))
        counts = torch.zeros(64 * k).index_add_(0, flat, ones)
        return (sums / counts.clamp(min=1)).view(64, k)

    out = benchmark(index_add_mean)
    benchmark.extra_info.update(role="peer", threads=torch.get_num_threads())
    torch.testing.assert_close(
        out, gsw.segment_pool(values, labels, k, "mean"), rtol=1e-4, atol=1e-5
    )


@pytest.mark.benchmark(group="cpu-mean-64x224x224")
def bench_cpu_numpy_bincount_mean(benchmark, cpu_case):
    values, labels, k = cpu_case
    flat = _offset_labels(labels, k).numpy()
    weights = values.reshape(-1).numpy()

    def bincount_mean():
        sums = np.bincount(flat, weights=weights, minlength=64 * k)
        counts = np.bincount(flat, minlength=64 * k)
        return (sums / np.maximum(counts, 1)).reshape(64, k)

    out = benchmark(bincount_mean)
    benchmark.extra_info.update(role="peer")
    np.testing.assert_allclose(
        out, gsw.segment_pool(values, labels, k, "mean").numpy(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.benchmark(group="cpu-paint-64x224x224")
def bench_cpu_gswfast_paint(benchmark, cpu_case):
    _, labels, k = cpu_case
    scores = torch.randn(64, k)
    benchmark(gsw.paint, scores, labels)
    benchmark.extra_info.update(role="gswfast")


@pytest.mark.benchmark(group="cpu-paint-64x224x224")
def bench_cpu_torch_gather_paint(benchmark, cpu_case):
    _, labels, k = cpu_case
    scores = torch.randn(64, k)
    index = labels.long().reshape(64, -1)
    out = benchmark(lambda: torch.gather(scores, 1, index).view(64, 224, 224))
    benchmark.extra_info.update(role="peer")
    assert torch.equal(out, gsw.paint(scores, labels))


# ----------------------------------------------------------------------------- CUDA


@pytest.fixture(scope="module")
def cuda_case():
    gen = torch.Generator().manual_seed(0)
    labels, k = grid_labels(64, 224, 224, cell=14, generator=gen)
    values = torch.randn(64, 3, 224, 224, generator=gen)
    return values.cuda(), labels.cuda(), k


def _scatter_inputs(cuda_case):
    """values [64, 3, N] and the matching int64 index, as torch's scatter ops want them."""
    values, labels, k = cuda_case
    index = labels.long().reshape(64, 1, -1).expand(64, 3, -1)
    return values.reshape(64, 3, -1), index, k


def _cuda_timed(fn):
    return cuda_timed(fn, CUDA_REPEAT)


def _cuda_graphed(fn):
    """Like _cuda_timed, but the CUDA_REPEAT calls replay from a CUDA graph: GPU time only."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CUDA_REPEAT):
            fn()

    def run():
        graph.replay()
        torch.cuda.synchronize()

    run()
    return run


def _record_cuda(benchmark, role, values, labels):
    moved = values.numel() * values.element_size() + labels.numel() * labels.element_size()
    benchmark.extra_info.update(
        role=role, ops_per_call=CUDA_REPEAT, bytes_per_op=moved, device=torch.cuda.get_device_name()
    )


# What a torch user writes for each reduction: out [64, 3, K], index [64, 3, N], values [64, 3, N].
TORCH_PEERS = {
    "sum": lambda out, index, values: out.scatter_add_(2, index, values),
    "mean": lambda out, index, values: out.scatter_reduce_(
        2, index, values, "mean", include_self=False
    ),
    "max": lambda out, index, values: out.scatter_reduce_(
        2, index, values, "amax", include_self=False
    ),
}


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", TORCH_PEERS)
def bench_cuda_gswfast(benchmark, cuda_case, reduce):
    values, labels, k = cuda_case
    benchmark.group = f"cuda-{reduce}-64x3x224x224"
    out = benchmark(
        _cuda_timed(lambda: gsw.segment_pool(values, labels, k, reduce, validate=False))
    )
    _record_cuda(benchmark, "gswfast", values, labels)
    assert out.shape == (64, 3, k)


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", TORCH_PEERS)
def bench_cuda_torch_scatter(benchmark, cuda_case, reduce):
    values, labels, _ = cuda_case
    flat_values, index, k = _scatter_inputs(cuda_case)
    benchmark.group = f"cuda-{reduce}-64x3x224x224"
    peer = TORCH_PEERS[reduce]
    out = benchmark(
        _cuda_timed(lambda: peer(torch.zeros(64, 3, k, device="cuda"), index, flat_values))
    )
    _record_cuda(benchmark, "peer", values, labels)
    torch.testing.assert_close(
        out, gsw.segment_pool(values, labels, k, reduce), rtol=1e-4, atol=1e-3
    )


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-sum-64x3x224x224")
def bench_cuda_gswfast_sum_validated(benchmark, cuda_case):
    values, labels, k = cuda_case
    benchmark(_cuda_timed(lambda: gsw.segment_pool(values, labels, k, "sum")))
    _record_cuda(benchmark, "gswfast-validate", values, labels)


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-graph-sum-64x3x224x224")
def bench_cuda_graph_gswfast_sum(benchmark, cuda_case):
    values, labels, k = cuda_case
    benchmark(_cuda_graphed(lambda: gsw.segment_pool(values, labels, k, "sum", validate=False)))
    _record_cuda(benchmark, "gswfast", values, labels)


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-graph-sum-64x3x224x224")
def bench_cuda_graph_torch_scatter_add_sum(benchmark, cuda_case):
    values, labels, _ = cuda_case
    flat_values, index, k = _scatter_inputs(cuda_case)
    peer = TORCH_PEERS["sum"]
    benchmark(_cuda_graphed(lambda: peer(torch.zeros(64, 3, k, device="cuda"), index, flat_values)))
    _record_cuda(benchmark, "peer", values, labels)


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-copy-bandwidth")
def bench_cuda_copy_bandwidth(benchmark):
    # The memory-bandwidth ceiling as this GPU achieves it: read + write of 1 GiB.
    src = torch.empty(256 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    benchmark(_cuda_timed(lambda: dst.copy_(src)))
    benchmark.extra_info.update(
        role="ceiling",
        ops_per_call=CUDA_REPEAT,
        bytes_per_op=2 * src.numel() * 4,
        device=torch.cuda.get_device_name(),
    )


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-paint-64x3x224x224")
def bench_cuda_gswfast_paint(benchmark, cuda_case):
    _, labels, k = cuda_case
    scores = torch.randn(64, 3, k, device="cuda")
    benchmark(_cuda_timed(lambda: gsw.paint(scores, labels, validate=False)))
    benchmark.extra_info.update(role="gswfast", ops_per_call=CUDA_REPEAT)


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-paint-64x3x224x224")
def bench_cuda_torch_gather_paint(benchmark, cuda_case):
    _, labels, k = cuda_case
    scores = torch.randn(64, 3, k, device="cuda")
    index = labels.long().reshape(64, 1, -1).expand(64, 3, -1)
    benchmark(_cuda_timed(lambda: torch.gather(scores, 2, index)))
    benchmark.extra_info.update(role="peer", ops_per_call=CUDA_REPEAT)
