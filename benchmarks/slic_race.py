"""SLIC on one 640x480 photo, gswfast against fast-slic and scikit-image, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/slic_race.py [ROUNDS]

Each round runs every contender once, in turn (scikit-image every third round: it is 10-20x
slower), and times the CPU time of the calling thread (``time.thread_time``), which other
processes on a shared machine disturb least; the medians and the ratios of issue 15's goals
(fast-slic / gswfast >= 1, scikit-image / gswfast >= 20) are printed. Needs fast-slic
(``make bench-peers``). The SLIC CPU table of docs/guide/performance.md comes from this script.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from fast_slic.avx2 import SlicAvx2
from skimage import data
from skimage.segmentation import slic as skimage_slic

import gswfast as gsw

SEGMENTS, COMPACTNESS, PASSES = 400, 10.0, 10


def photo() -> torch.Tensor:
    """uint8 ``[1, 3, 480, 640]``: scikit-image's astronaut, resized."""
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    image = torch.nn.functional.interpolate(image, size=(480, 640), mode="bilinear", antialias=True)
    return image.round().clamp(0, 255).to(torch.uint8)


def contenders(image: torch.Tensor) -> dict[str, Callable[[], object]]:
    hwc = np.ascontiguousarray(image[0].permute(1, 2, 0).numpy())
    fast = SlicAvx2(num_components=SEGMENTS, compactness=COMPACTNESS, convert_to_lab=True)
    return {
        "gswfast": lambda: gsw.slic(image, SEGMENTS, COMPACTNESS, PASSES),
        "gswfast subsample=3": lambda: gsw.slic(image, SEGMENTS, COMPACTNESS, PASSES, subsample=3),
        "fast-slic AVX2": lambda: fast.iterate(hwc),
        "scikit-image": lambda: skimage_slic(
            hwc, n_segments=SEGMENTS, compactness=COMPACTNESS, max_num_iter=PASSES, start_label=0
        ),
    }


def race(rounds: int) -> dict[str, float]:
    """Median CPU milliseconds per contender."""
    runs = contenders(photo())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: allocations, the extension's first load
    for i in range(rounds):
        for name, run in runs.items():
            if name == "scikit-image" and i % 3:
                continue
            start = time.thread_time()
            run()
            times[name].append((time.thread_time() - start) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    medians = race(rounds)
    for name, ms in medians.items():
        print(f"{name:>20}: {ms:7.2f} ms CPU (median of {rounds} rounds)")
    for name in ("gswfast", "gswfast subsample=3"):
        fast = medians["fast-slic AVX2"] / medians[name]
        skimage = medians["scikit-image"] / medians[name]
        print(
            f"{name}: fast-slic / it {fast:.2f} (goal >= 1), scikit-image / it {skimage:.1f}x (goal >= 20)"
        )


if __name__ == "__main__":
    main()
