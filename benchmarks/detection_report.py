"""The detector's evidence table: which method points at the object of the box it explains.

The demo detector (``gswfast.demo.load("detector")``, a small Faster R-CNN trained on
``detection_scenes``) on scenes of two shapes, one in each half: each object's true box and
class is a row of one ``gsw.DetectionTarget``, so every box has its own object and the
other shape is a distractor. One row per method, on the same SLIC superpixels:

- pointing game and relevance mass against the box's object mask (``gsw.metrics``);
- Spearman correlation with D-RISE over the same superpixels (``gsw.rise`` with the
  detection target, 1000 masks, hidden superpixels black as D-RISE's masks make them: IoU
  times score of the best same-class box), and with occlusion (the score lost when one
  superpixel is blacked out);
- deletion AUC of the box's similarity (``gsw.metrics.deletion``: lower is better);
- milliseconds per box (CPU, all boxes of the section in one call).

    python benchmarks/detection_report.py [--out docs/detection_report.md]   # ~3 min, 2 cores
    python benchmarks/detection_report.py --quick                             # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from quality_report import cpu_name
from torch import Tensor, nn

import gswfast as gsw
from gswfast.demo import load
from gswfast.demo.data import detection_scenes
from gswfast.demo.train import detector_recall

Run = Callable[[nn.Module, Tensor, Tensor, gsw.DetectionTarget], gsw.Explanation]


def explained(method: str, **options: Any) -> Run:
    def run(model, x, labels, target):
        return gsw.explain(model, x, target, method, labels, **options)

    return run


def region(name: str, **options: Any) -> Run:
    def run(model, x, labels, target):
        return getattr(gsw, name)(model, x, labels, target=target, **options)

    return run


METHODS: list[tuple[str, Run]] = [
    ("gradient", explained("gradient")),
    ("input_x_gradient", explained("input_x_gradient")),
    ("integrated_gradients", explained("integrated_gradients")),
    ("lime_ig (16 steps)", explained("lime_ig")),
    ("smoothgrad", explained("smoothgrad", seed=0)),
    ("guided_backprop", explained("guided_backprop")),
    ("gradcam", explained("gradcam")),
    ("hirescam", explained("hirescam")),
    ("gsw.lime, sobol (250 samples)", region("lime", n_samples=250, design="sobol")),
    ("gsw.occlusion", region("occlusion")),
    ("gsw.occlusion, zeros", region("occlusion", hide="zeros")),
    ("gsw.kernel_shap (200 samples)", region("kernel_shap", n_samples=200, seed=0)),
    ("gsw.rise (500 samples)", region("rise", n_samples=500, seed=0)),
    ("gsw.rise, zeros (500 samples)", region("rise", n_samples=500, seed=0, hide="zeros")),
]
COLUMNS = (
    "method",
    "pointing game",
    "relevance mass",
    "Spearman vs D-RISE",
    "Spearman vs occlusion",
    "deletion AUC (lower better)",
    "ms per box",
)


def measure(
    run: Run,
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    target: gsw.DetectionTarget,
    masks: Tensor,
    references: dict[str, gsw.Explanation],
) -> dict[str, float]:
    run(model, x[:1], labels[:1], _first_image(target))  # warm-up
    start = time.perf_counter()
    expl = run(model, x, labels, target)
    seconds = time.perf_counter() - start
    row = {
        "pointing": float(gsw.metrics.pointing_game(expl, masks).float().mean()),
        "mass": float(gsw.metrics.relevance_mass(expl, masks).mean()),
        "deletion": float(gsw.metrics.deletion(model, x, expl, steps=10).auc.mean()),
        "ms": 1e3 * seconds / expl.segment_scores.shape[0],
    }
    for name, reference in references.items():
        row[name] = float(gsw.metrics.agreement(expl, reference, k=5)["spearman"].nanmean())
    return row


def _first_image(target: gsw.DetectionTarget) -> gsw.DetectionTarget:
    return gsw.DetectionTarget(target.boxes[:1], target.labels[:1], iou=target.iou)


def report(quick: bool) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    scenes = detection_scenes(2 if quick else 12, generator=torch.Generator().manual_seed(7))
    model = load("detector")
    labels = gsw.slic(scenes.images, n_segments=30).labels
    target = gsw.DetectionTarget(list(scenes.boxes), list(scenes.labels))
    masks = scenes.masks.flatten(0, 1)  # [boxes, H, W]: row (image, box)'s object
    x = scenes.images
    samples = 100 if quick else 1000
    references = {
        "drise": gsw.rise(model, x, labels, target=target, n_samples=samples, seed=1, hide="zeros"),
        "occlusion": gsw.occlusion(model, x, labels, target=target, hide="zeros"),
    }
    rows = [
        (name, measure(run, model, x, labels, target, masks, references)) for name, run in METHODS
    ]
    recall = detector_recall(model)
    title = (
        f"**detector**: the demo Faster R-CNN (objects found: {recall:.0%} of a held-out "
        f"draw), {len(x)} scenes of 3x96x96 with 2 shapes each, one row per true box "
        f"({masks.shape[0]} boxes), 30 SLIC superpixels, D-RISE {samples} masks (black)"
    )
    return title, rows


def markdown(title: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["", title, "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for name, row in rows:
        cells = [
            f"{row['pointing']:.2f}",
            f"{row['mass']:.2f}",
            f"{row['drise']:.3f}",
            f"{row['occlusion']:.3f}",
            f"{row['deletion']:.3f}",
            f"{row['ms']:.1f}",
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines += [
        "",
        (
            f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}. Every method "
            "explains the same boxes on the same superpixels; a box's score is its best "
            "matching predicted box's (gradient methods: IoU at least 0.5 and the same class; "
            "region methods and the curves: D-RISE's IoU times score)."
        ),
    ]
    return "\n".join(lines).strip() + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 scenes, 100 D-RISE masks")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    title, rows = report(args.quick)
    table = markdown(title, rows)
    print(table)
    if args.out:
        words = [
            "python",
            "benchmarks/detection_report.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
        with open(args.out, "w") as handle:
            handle.write(
                f"# The detector's evidence table\n\n`{' '.join(words)}` ({datetime.date.today()}, "
                f'{cpu_name()}, {os.cpu_count()} cores). The guide\'s page "Choosing a method" '
                "(docs/guide/choosing-a-method.md) reads it.\n\n" + table
            )
    if not all(math.isfinite(v) for _, row in rows for v in row.values()):
        raise SystemExit("detection_report: a value is not finite")
    return table


if __name__ == "__main__":
    main()
