"""Speed-up of the fast LIME-like scorers over the ``lime`` package, timed robustly on a
shared machine: the package and each scorer run in turn, ``--repeats`` times, on the same
photo, model and segments, and the fastest run of each counts.

    python benchmarks/lime_speed.py [--size 112] [--segments 50] [--repeats 3]

resnet18 with random weights, softmax output (``output="probability"``; the package gets
the model wrapped in a softmax), scikit-image's astronaut, 1000 LIME samples. Also times
the issue-18 experiments named in ``EXPERIMENTS`` (defined in ``lime_agreement.py``).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import torchvision
from lime_agreement import EXPERIMENTS as ALL_EXPERIMENTS

import gswfast as gsw
from gswfast.testing import lime_package, photos

SCORERS: dict[str, dict] = {
    "lime_ig, 8 steps": dict(method="lime_ig", n_steps=8),
    "banzhaf, 8 mixes": dict(method="banzhaf", n_samples=8),
    "banzhaf, 16 mixes": dict(method="banzhaf", n_samples=16),
    "banzhaf, 16 mixes, bfloat16": dict(method="banzhaf", n_samples=16, autocast=torch.bfloat16),
    "banzhaf, arcsine, 32 mixes": dict(method="banzhaf", design="arcsine", n_samples=32),
    **{
        f"banzhaf, arcsine, {n} mixes, bfloat16": dict(
            method="banzhaf", design="arcsine", n_samples=n, autocast=torch.bfloat16
        )
        for n in (24, 32, 40)
    },
}
EXPERIMENTS: tuple[str, ...] = (
    "banzhaf 8 prior + LIME ridge on 16 sobol rows, alpha 1.0",
    "banzhaf 8 prior + LIME ridge on 32 sobol rows, alpha 1.0",
    "banzhaf 8 prior + LIME ridge on 128 sobol rows, alpha 10.0",
    "banzhaf, Beta(0.5, 0.5) mixes, 8",
    *(f"banzhaf, Beta(0.5, 0.5) midpoint mixes, {n}, bfloat16" for n in (16, 24, 32)),
    "banzhaf, Beta(0.5, 0.5) midpoint mixes, 32",
)


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
    targets = torch.tensor([target])
    runs: dict[str, Callable[[], object]] = {
        name: lambda e=explainer: e(x, target, seg) for name, explainer in explainers.items()
    }
    for name in EXPERIMENTS:
        runs[name] = functools.partial(ALL_EXPERIMENTS[name], model, x, seg, targets, "probability")
    for run in runs.values():
        run()  # warm-up
    best = {name: float("inf") for name in ["lime package", *runs]}
    for _ in range(args.repeats):
        package = seconds(lambda: lime_package(softmax, x[0], seg.labels[0], target, 0, 1000))
        best["lime package"] = min(best["lime package"], package)
        for name, run in runs.items():
            best[name] = min(best[name], seconds(run))
    print(f"| scorer | s (fastest of {args.repeats}) | vs lime package |")
    print("|---|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.3f} | {best['lime package'] / value:.0f}x |")
    print(f"\n{torch.get_num_threads()} CPU threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
