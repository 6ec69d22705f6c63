"""Speed-up of the fast LIME-like scorers over the ``lime`` package, timed robustly on a
shared machine: the package and each scorer run in turn, ``--repeats`` times, on the same
photo, model and segments, and the fastest run of each counts.

    python benchmarks/lime_speed.py [--size 112] [--segments 50] [--repeats 3]

resnet18 with random weights, softmax output (``output="probability"``; the package gets
the model wrapped in a softmax), scikit-image's astronaut, 1000 LIME samples.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision

import gswfast as gsw
from gswfast.testing import lime_package, photos

SCORERS: dict[str, dict] = {
    "lime_ig, 8 steps": dict(method="lime_ig", n_steps=8),
    "banzhaf, 8 mixes": dict(method="banzhaf", n_samples=8),
    "banzhaf, 16 mixes": dict(method="banzhaf", n_samples=16),
}


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = photos(args.size, 1)
    seg = gsw.slic(x, n_segments=args.segments)
    target = int(gsw.explain(model, x, method="gradient", segmentation=seg).target[0])
    softmax = torch.nn.Sequential(model, torch.nn.Softmax(1)).eval()
    explainers = {
        name: gsw.Explainer(model, output="probability", **options)
        for name, options in SCORERS.items()
    }
    for explainer in explainers.values():
        explainer(x, target, seg)  # warm-up
    best = {name: float("inf") for name in ["lime package", *SCORERS]}
    for _ in range(args.repeats):
        package = seconds(lambda: lime_package(softmax, x[0], seg.labels[0], target, 0, 1000))
        best["lime package"] = min(best["lime package"], package)
        for name, explainer in explainers.items():
            best[name] = min(best[name], seconds(lambda e=explainer: e(x, target, seg)))
    print(f"| scorer | s (fastest of {args.repeats}) | vs lime package |")
    print("|---|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.3f} | {best['lime package'] / value:.0f}x |")
    print(f"\n{torch.get_num_threads()} CPU threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
