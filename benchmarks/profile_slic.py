"""Where SLIC's GPU time goes: per-kernel CUDA time (torch.profiler) and the wall time per
call, for issue 15's two GPU goals (a batch of 64 640x480 frames, a 16x112x112 clip as
supervoxels) and a few variants.

    python benchmarks/profile_slic.py [--json FILE]      # on a machine with a GPU
    python benchmarks/profile_slic.py --ncu              # one call, for ncu
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import gswfast as gsw
from gswfast.testing import photos


def wall_ms(fn: Callable[[], object], calls: int = 10) -> float:
    """Median wall milliseconds per call, synchronised after each call (5 warm-ups)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def kernel_table(fn: Callable[[], object], calls: int = 3) -> list[dict]:
    """CUDA microseconds per call for each kernel name, largest first."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if device_us > 0:
            rows.append(
                {
                    "kernel": event.key[:90],
                    "us_per_call": device_us / calls,
                    "launches_per_call": event.count / calls,
                }
            )
    return sorted(rows, key=lambda row: -row["us_per_call"])


def cases() -> dict[str, Callable[[], object]]:
    four = photos(480, 4).cuda()  # astronaut, chelsea, coffee, rocket
    wide = torch.nn.functional.interpolate(four, size=(480, 640), mode="bilinear")
    frames = (wide.repeat(16, 1, 1, 1) * 255).round().to(torch.uint8)  # [64, 3, 480, 640]
    one = frames[:1].contiguous()
    # as benchmarks/bench_slic.py: a photo panning right 2 px per frame, float [1, 3, T, H, W]
    photo = torch.nn.functional.interpolate(four[2:3], size=(112, 160), mode="bilinear")[0]
    clip = torch.stack([photo[:, :, 2 * t : 2 * t + 112] for t in range(16)], 1)[None]
    clip = clip.contiguous()
    return {
        "batch64_640x480_uint8": lambda: gsw.slic(frames, 400, validate=False),
        "batch64_640x480_uint8_subsample3": lambda: gsw.slic(
            frames, 400, validate=False, subsample=3
        ),
        "batch64_640x480_uint8_no_connectivity": lambda: gsw.slic(
            frames, 400, validate=False, enforce_connectivity=False
        ),
        "one_640x480_uint8": lambda: gsw.slic(one, 400, validate=False),
        "clip_16x112x112_volume": lambda: gsw.slic(clip, 200, mode="volume", validate=False),
        "clip_16x112x112_volume_max_iter5": lambda: gsw.slic(
            clip, 200, mode="volume", validate=False, max_iter=5
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--ncu", action="store_true", help="one batch-of-64 call, for ncu")
    args = parser.parse_args()
    if args.ncu:
        cases()["batch64_640x480_uint8"]()
        torch.cuda.synchronize()
        return
    result: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in cases().items():
        seg = fn()
        entry = {
            "wall_ms": wall_ms(fn),
            "iterations": seg.iterations.flatten()[:8].tolist(),
            "kernels": kernel_table(fn),
        }
        entry["kernel_us_total"] = sum(row["us_per_call"] for row in entry["kernels"])
        result[name] = entry
        print(
            f"== {name}: {entry['wall_ms']:.3f} ms wall, "
            f"{entry['kernel_us_total'] / 1e3:.3f} ms in kernels, iterations {entry['iterations']}"
        )
        for row in entry["kernels"][:14]:
            print(
                f"   {row['us_per_call']:9.1f} us  x{row['launches_per_call']:5.1f}  {row['kernel']}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
