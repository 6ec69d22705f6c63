"""LIME in fewer model evaluations: how close each mask design gets to the 1000-sample ranking.

The reference is ``gsw.lime`` with 1000 random masks (seed 0); the noise floor is another
1000-sample run (seed 1) against it. Each design (``gsw.lime(design=...)``) runs with 125,
250 and 500 samples per input (seeds 1.. ``--repeats``; never the reference's seed, whose
random masks would share a prefix with it), and ``n_samples="auto"`` with a few
tolerances. Reported per row: mean Spearman correlation with the reference (over inputs
and repeats, with its standard deviation), top-5 and top-10 Jaccard (intersection over
union) of the best segments, and the mean model evaluations per input.

    OMP_NUM_THREADS=1 python benchmarks/lime_budget.py [--out lime_budget.md]

Inputs: ``gswfast.testing.photos(size=112, count=4)``, resnet18 with random weights
wrapped in a softmax (LIME regresses probabilities), 50 SLIC segments, the predicted class.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import gswfast as gsw
from gswfast.lime import DESIGNS
from gswfast.testing import photos


def agreement(expl: gsw.Explanation, reference: gsw.Explanation) -> dict[str, torch.Tensor]:
    """Per input: Spearman and top-5/top-10 Jaccard with ``reference``."""
    counts = reference.num_segments
    rows = {}
    for k in (5, 10):
        found = gsw.metrics.agreement(
            expl.segment_scores, reference.segment_scores, k=k, num_segments=counts
        )
        rows["spearman"] = found["spearman"]
        rows[f"top{k}"] = found["top_k_iou"]
    rows["evaluations"] = expl.info["n_samples"].double()
    return rows


def summarise(runs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    joined = {name: torch.cat([run[name] for run in runs]) for name in runs[0]}
    summary = {name: float(values.mean()) for name, values in joined.items()}
    summary["spearman_sd"] = (
        float(joined["spearman"].std()) if joined["spearman"].numel() > 1 else 0.0
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--budgets", type=int, nargs="+", default=[125, 250, 500])
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS))
    parser.add_argument("--tols", type=float, nargs="+", default=[0.05, 0.02, 0.01])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torchvision.models.resnet18(), torch.nn.Softmax(1)).eval()
    x = photos(args.size, args.count)
    seg = gsw.slic(x, n_segments=args.segments)
    start = time.perf_counter()
    reference = gsw.lime(model, x, seg, None, n_samples=1000, seed=0)
    target = reference.target
    rows: dict[str, dict[str, float]] = {}

    def run(name: str, **options: object) -> None:
        runs = [
            agreement(gsw.lime(model, x, seg, target, seed=seed, **options), reference)
            for seed in range(1, args.repeats + 1)
        ]
        rows[name] = summarise(runs)
        print(name, {k: round(v, 3) for k, v in rows[name].items()}, flush=True)

    floor = agreement(gsw.lime(model, x, seg, target, n_samples=1000, seed=1), reference)
    rows["floor: random, 1000 (seed 1)"] = summarise([floor])
    for budget in args.budgets:
        for design in args.designs:
            run(f"{design}, {budget}", n_samples=budget, design=design)
    for tol in args.tols:
        for design in ("random", "sobol"):
            run(f"{design}, auto tol={tol}", n_samples="auto", design=design, tol=tol)
    minutes = (time.perf_counter() - start) / 60
    table = markdown(rows, args, x, minutes)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


def markdown(rows: dict[str, dict[str, float]], args: argparse.Namespace, x, minutes: float) -> str:
    lines = [
        (
            "| design, samples | evaluations per input | Spearman with 1000-sample LIME (sd) "
            "| top-5 Jaccard | top-10 Jaccard |"
        ),
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['evaluations']:.0f} | {r['spearman']:.3f} ({r['spearman_sd']:.3f}) "
            f"| {r['top5']:.2f} | {r['top10']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"resnet18 (random weights) + softmax, {x.shape[0]} photos of {tuple(x.shape[1:])}, "
        f"{args.segments} SLIC segments, reference: gsw.lime 1000 random masks seed 0; "
        f"{args.repeats} seeds per row; {minutes:.1f} min on {torch.get_num_threads()} CPU "
        f"threads, torch {torch.__version__}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
