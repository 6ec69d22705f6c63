"""GPU-side timing of segment_pool, free of host overhead (CUDA graph replay), for a few
shapes, beside torch's scatter_add_; plus the host cost of one eager call.

    python benchmarks/profile_pool.py [--json FILE]      # on a machine with a GPU
    GSWFAST_POOL_TILE=8192 python benchmarks/profile_pool.py   # a fixed CUDA tile size
    python benchmarks/profile_pool.py --ncu              # a few launches, for ncu
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import gswfast as gsw
import gswfast.ops
from gswfast.testing import grid_labels

REPEAT = 20


def graph_ms(fn) -> float:
    """Median GPU milliseconds per call of fn, replaying a CUDA graph of REPEAT calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEAT):
            fn()
    times = []
    for _ in range(15):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / REPEAT)
    return sorted(times)[len(times) // 2]


def host_us(fn, n=200) -> float:
    """Host microseconds to enqueue one eager call (GPU work overlaps)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def cases():
    gen = torch.Generator().manual_seed(0)
    lab, k = grid_labels(64, 224, 224, cell=14, generator=gen)
    yield "image 64x3x224x224 K=256", torch.randn(64, 3, 224, 224, generator=gen), lab, k
    yield "image 64x224x224 K=256", torch.randn(64, 224, 224, generator=gen), lab, k
    vlab, vk = grid_labels(4, 16, 224, 224, cell=14, generator=gen)
    yield "clip 4x1x16x224x224 K=1024", torch.randn(4, 1, 16, 224, 224, generator=gen), vlab, vk
    lab1, k1 = grid_labels(1, 224, 224, cell=14, generator=gen)
    yield "image 1x3x224x224 K=256", torch.randn(1, 3, 224, 224, generator=gen), lab1, k1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--ncu", action="store_true")
    args = parser.parse_args()
    if args.ncu:
        _, values, labels, k = next(cases())
        values, labels = values.cuda(), labels.cuda()
        for _ in range(6):
            gsw.segment_pool(values, labels, k, "sum", validate=False)
        torch.cuda.synchronize()
        return
    copy_gbs = _copy_gbs(graph_ms)
    rows = [
        _cuda_row(name, values.cuda(), labels.cuda(), k, graph_ms, host_us)
        for name, values, labels, k in cases()
    ]
    for row in rows:
        row["fraction_of_copy"] = row["GB_per_s"] / copy_gbs
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "copy_GB_per_s": copy_gbs,
        "tile_env": os.environ.get("GSWFAST_POOL_TILE"),
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def _copy_gbs(graph_ms) -> float:
    """Device-to-device copy bandwidth in GB/s: the ceiling a memory-bound kernel can reach."""
    src = torch.empty(256 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / graph_ms(lambda: dst.copy_(src)) / 1e6


def _cuda_row(name, values, labels, k, graph_ms, host_us) -> dict:
    """One case on the GPU: gswfast's sum pooling against scatter_add_, both CUDA-graphed."""
    moved = values.numel() * values.element_size() + labels.numel() * labels.element_size()
    v3 = values.reshape(values.shape[0], -1, labels[0].numel())
    index = labels.long().reshape(labels.shape[0], 1, -1).expand_as(v3)
    shape = (v3.shape[0], v3.shape[1], k)
    peer = graph_ms(lambda: torch.zeros(shape, device="cuda").scatter_add_(2, index, v3))
    ms = graph_ms(lambda: gsw.segment_pool(values, labels, k, "sum", validate=False))
    flat = labels.reshape(labels.shape[0], -1)
    return {
        "case": name,
        "gswfast_ms": ms,
        "scatter_add_ms": peer,
        "speedup": peer / ms,
        "GB_per_s": moved / ms / 1e6,
        "host_us_eager": host_us(
            lambda: gsw.segment_pool(values, labels, k, "sum", validate=False)
        ),
        "host_us_raw_op": host_us(lambda: torch.ops.gswfast.segment_pool(v3, flat, None, k, "sum")),
    }


if __name__ == "__main__":
    main()
