"""Timing helper shared by the benchmark files."""

from __future__ import annotations

import torch


def cuda_timed(fn, repeat: int):
    """A callable that runs ``fn`` ``repeat`` times and synchronises once (launch overhead
    amortised alike for every contender); warmed up once before it is returned."""

    def run():
        for _ in range(repeat):
            out = fn()
        torch.cuda.synchronize()
        return out

    run()  # warm-up: allocator, module load
    return run
