"""The streaming explainer against the naive loop, in the same run.

Issue 7: windows of 16 frames of 112x112, stride 1 and 4, ``gradient`` and ``gradcam``,
for r2plus1d_18 (random weights) and the demo action model. ``stream``: frames pushed one
by one into ``StreamExplainer`` (ring buffer on the device, warm-started supervoxels).
``naive``: every window rebuilt from host numpy frames, segmented from scratch and
explained on its own. extra_info holds the per-window latency percentiles (ms) and
windows/s; the benchmark's time is the whole stream of ``WINDOWS`` windows.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchvision

import gswfast as gsw
from gswfast.demo import action_clips, load
from gswfast.video import StreamExplainer

WINDOW, SIZE, WINDOWS = 16, 112, 6
CASES = [
    (model, stride, method)
    for model in ("r2plus1d_18", "demo_actions")
    for stride in (1, 4)
    for method in ("gradient", "gradcam")
]


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "demo_actions":
        return load("actions", device)
    return torchvision.models.video.r2plus1d_18().to(device).eval()


def _frames(stride: int) -> torch.Tensor:
    count = WINDOW + stride * (WINDOWS - 1)
    clip = action_clips(
        1, frames=count, size=SIZE, generator=torch.Generator().manual_seed(1)
    ).images[0]
    return (clip * 255).round().to(torch.uint8).permute(1, 0, 2, 3).contiguous()  # [N, 3, H, W]


def _stream(model, frames, stride, method, device):
    stream = StreamExplainer(model, window=WINDOW, stride=stride, method=method, device=device)
    return [r.latency for r in stream.push_many(frames.to(device))]


def _naive(model, frames, stride, method, device):
    host = frames.numpy()  # what a loop over decoded numpy frames starts from
    latencies = []
    for start in range(0, len(host) - WINDOW + 1, stride):
        begin = time.perf_counter()
        clip = (
            torch.from_numpy(np.ascontiguousarray(host[start : start + WINDOW]))
            .permute(1, 0, 2, 3)[None]
            .to(device)
        )
        expl = gsw.explain(model, clip, method=method, n_segments=200)
        expl.segment_scores.cpu()  # a host round trip per window
        latencies.append(time.perf_counter() - begin)
    return latencies


def _record(benchmark, role, latencies):
    ms = np.array(latencies) * 1e3
    benchmark.extra_info.update(
        role=role,
        windows=len(latencies),
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
    )
    if benchmark.stats is not None:
        benchmark.extra_info["windows_per_s"] = len(latencies) / benchmark.stats.stats.median


@pytest.mark.parametrize("role", ["stream", "naive"])
@pytest.mark.parametrize(("name", "stride", "method"), CASES)
def bench_cpu_stream(benchmark, name, stride, method, role):
    benchmark.group = f"cpu-stream-{name}-16x112x112-stride{stride}-{method}"
    model, frames = _model(name, "cpu"), _frames(stride)
    run = _stream if role == "stream" else _naive
    latencies = benchmark.pedantic(
        run, (model, frames, stride, method, "cpu"), rounds=1, warmup_rounds=1
    )
    _record(benchmark, "gswfast" if role == "stream" else "naive_loop", latencies)
    assert len(latencies) == WINDOWS


@pytest.mark.cuda
@pytest.mark.parametrize("role", ["stream", "naive"])
@pytest.mark.parametrize(("name", "stride", "method"), CASES)
def bench_cuda_stream(benchmark, name, stride, method, role):
    benchmark.group = f"cuda-stream-{name}-16x112x112-stride{stride}-{method}"
    model, frames = _model(name, "cuda"), _frames(stride)
    if role == "stream":

        def run():
            stream = StreamExplainer(
                model,
                window=WINDOW,
                stride=stride,
                method=method,
                device="cuda",
                autocast=torch.float16,
                validate=False,
            )
            return [r.latency for r in stream.push_many(frames.cuda())]
    else:

        def run():
            return _naive(model, frames, stride, method, "cuda")

    latencies = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    _record(benchmark, "gswfast" if role == "stream" else "naive_loop", latencies)
