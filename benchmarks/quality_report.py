"""The evidence table: every explanation method against LIME, and on its own merits.

One section per model and data set, one row per method: agreement with the ``lime``
package's 1000-sample answer (Spearman, top-5 and top-10 Jaccard), deletion and insertion
AUC (softmax probability; deletion hides with black, insertion starts from the blurred
input), pointing game and relevance mass against the object masks, model evaluations and
milliseconds per explanation (CPU, batch of the section's inputs).

    python benchmarks/quality_report.py [--out report.md]       # about 10 minutes, 2 cores
    python benchmarks/quality_report.py --quick --sections shapes   # smoke test

Sections: the trained demo models (``gswfast.demo``: shapes, action clips; they know where
the object is), the trained square classifier (``gswfast.testing``), and three models with
random weights on scikit-image's photos (no object masks): resnet18, a ViT-S/16 built from
torchvision's ``VisionTransformer`` and swin_t. Random weights serve agreement with LIME and
deletion/insertion (what the network computes, trained or not), not where the object is.
The package's answer is ``gsw.lime`` with the package's own masks (``gswfast.testing.lime_masks``: the same weights,
``tests/test_lime.py``); the package itself is timed on the first image. ``gsw.lime, other
seed`` is the seed-to-seed floor. A new method is one line in ``METHODS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

import gswfast as gsw
from gswfast.demo import action_clips, load, shape_images
from gswfast.segmentation import Segmentation
from gswfast.testing import lime_masks, lime_package, photos, square_images, train_square_classifier


@dataclasses.dataclass
class Case:
    """One section: a model, its inputs ``[B, C, (T), H, W]`` float 0..1, their segments,
    the explained classes int64 ``[B]`` and the object masks bool ``[B, (T), H, W]``."""

    name: str
    model: nn.Module
    inputs: Tensor
    segmentation: Segmentation
    target: Tensor
    masks: Tensor | None
    n_segments: int
    samples: int  # LIME's
    output: str  # what every row explains: "probability" (LIME's users) or "logit"

    @property
    def clips(self) -> bool:
        return self.inputs.dim() == 5


Runner = Callable[[Case, nn.Module, Tensor, Tensor], gsw.Explanation]


@dataclasses.dataclass(frozen=True)
class Method:
    """A row: ``run(case, model, inputs, target)`` returns an ``Explanation``. ``swag``:
    the method builds its own segments (no agreement with LIME's on the shared ones)."""

    name: str
    run: Runner
    swag: bool = False
    warm_up: bool = True  # run once on the first input before timing (not for LIME)


def explained(method: str, **options: Any) -> Runner:
    """A row of ``gsw.explain`` on the case's segments (or SWAG's own)."""

    def run(case: Case, model: nn.Module, x: Tensor, target: Tensor) -> gsw.Explanation:
        segmentation = None if options.get("swag") else case.segmentation.labels[: len(x)]
        n_segments = {"n_segments": case.n_segments} if options.get("swag") else {}
        return gsw.explain(
            model, x, target, method, segmentation, **n_segments, output=case.output, **options
        )

    return run


def lime_run(seed: int | None) -> Runner:
    """``gsw.lime`` with the package's masks (``seed``) or its own draw (None)."""

    def run(case: Case, model: nn.Module, x: Tensor, target: Tensor) -> gsw.Explanation:
        labels = case.segmentation.labels[: len(x)]
        masks = package_masks(case.segmentation, len(x), case.samples, seed)
        return gsw.lime(
            model, x, labels, target, case.samples, seed=1, masks=masks, output=case.output
        )

    return run


def region(name: str, **options: Any) -> Runner:
    """A region method of the package, ``gsw.<name>(model, inputs, segmentation, target=...)``."""

    def run(case: Case, model: nn.Module, x: Tensor, target: Tensor) -> gsw.Explanation:
        labels = case.segmentation.labels[: len(x)]
        return getattr(gsw, name)(model, x, labels, target=target, output=case.output, **options)

    return run


METHODS: list[Method] = [
    Method("gradient", explained("gradient")),
    Method("input_x_gradient", explained("input_x_gradient")),
    Method("integrated_gradients", explained("integrated_gradients")),
    Method("lime_ig (16 steps)", explained("lime_ig")),
    Method("banzhaf (8 mixes)", explained("banzhaf")),
    Method("banzhaf (16 mixes)", explained("banzhaf", n_samples=16)),
    Method("banzhaf, zeros (8 mixes)", explained("banzhaf", baseline="zeros")),
    Method("gradcam", explained("gradcam")),
    Method("eigencam", explained("eigencam")),
    Method("scorecam", explained("scorecam", batch_size=64), warm_up=False),
    Method("smoothgrad", explained("smoothgrad", seed=0)),
    Method("guided_backprop", explained("guided_backprop")),
    Method("swag (gradient)", explained("gradient", swag=True), swag=True),
    Method("swag (integrated_gradients)", explained("integrated_gradients", swag=True), swag=True),
    Method("swag (gradcam)", explained("gradcam", swag=True), swag=True),
    Method("gsw.lime, other seed", lime_run(None), warm_up=False),
    Method("lime package", lime_run(0), warm_up=False),
]
METHODS += [
    Method("gsw.lime, sobol (250 samples)", region("lime", n_samples=250, design="sobol")),
    Method("gsw.occlusion", region("occlusion")),
    Method("gsw.kernel_shap (200 samples)", region("kernel_shap", n_samples=200, seed=0)),
    Method("gsw.rise (500 samples)", region("rise", n_samples=500, seed=0)),
]

COLUMNS = (
    "method",
    "Spearman vs LIME",
    "top-5 Jaccard",
    "top-10 Jaccard",
    "deletion AUC (lower better)",
    "insertion AUC",
    "pointing game",
    "relevance mass",
    "model evaluations",
    "ms",
)


# ------------------------------------------------------------------------ cases


def cases(quick: bool, names: list[str]) -> list[Case]:
    """The sections, small enough to run in about 10 minutes on 2 cores (``quick``: seconds)."""
    builders = {
        "shapes": shapes_case,
        "actions": actions_case,
        "square": square_case,
        "photos": photos_case,
        "vit": vit_case,
        "swin": swin_case,
    }
    return [builders[name](quick) for name in names]


def shapes_case(quick: bool) -> Case:
    batch = shape_images(2 if quick else 8, size=48 if quick else 64)
    model = load("shapes")
    return make_case("shapes", model, batch.images, batch.classes, batch.masks, 30, "logit", quick)


def actions_case(quick: bool) -> Case:
    batch = action_clips(2 if quick else 4, frames=8 if quick else 16, size=32 if quick else 48)
    model = load("actions")
    return make_case("actions", model, batch.images, batch.classes, batch.masks, 60, "logit", quick)


def square_case(quick: bool) -> Case:
    images, classes, masks = square_images(
        2 if quick else 8, generator=torch.Generator().manual_seed(123)
    )
    model = train_square_classifier()
    return make_case("square", model, images, classes, masks, 20, "logit", quick)


def photos_case(quick: bool) -> Case:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = photos(64 if quick else 112, 1 if quick else 2)
    with torch.no_grad():
        target = model(x).argmax(1)
    return make_case("photos", model, x, target, None, 50, "probability", quick)


def vit_case(quick: bool) -> Case:
    """A ViT-S/16 built from torchvision's ``VisionTransformer`` (6 layers, 6 heads, width
    384: a quarter of vit_b_16's cost, the same code) on the photos, random weights; its
    head drawn (torchvision starts it at zero, which makes every score constant)."""
    size = 64 if quick else 112
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=size, patch_size=16, num_layers=6, num_heads=6, hidden_dim=384, mlp_dim=1536
    ).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return transformer_case("vit", model, size, quick)


def swin_case(quick: bool) -> Case:
    """torchvision's swin_t on the photos, random weights."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t().eval()
    return transformer_case("swin", model, 64 if quick else 112, quick)


def transformer_case(name: str, model: nn.Module, size: int, quick: bool) -> Case:
    x = photos(size, 1 if quick else 2)
    with torch.no_grad():
        target = model(x).argmax(1)
    return make_case(name, model, x, target, None, 50, "probability", quick)


def make_case(
    name: str,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    masks: Tensor | None,
    n_segments: int,
    output: str,
    quick: bool,
) -> Case:
    seg = gsw.slic(x, n_segments=n_segments)
    samples = 100 if quick else 1000
    return Case(name, model, x, seg, target, masks, n_segments, samples, output)


def package_masks(seg: Segmentation, count: int, samples: int, seed: int | None) -> Tensor | None:
    """uint8 ``[count, samples, K]``: the ``lime`` package's masks for each input (None:
    ``gsw.lime``'s own draw)."""
    if seed is None:
        return None
    width = int(seg.num_segments.max())
    rows = [lime_masks(seed, samples, int(n)) for n in seg.num_segments[:count]]
    return torch.stack([nn.functional.pad(m, (0, width - m.shape[1])) for m in rows]).to(
        torch.uint8
    )


# ------------------------------------------------------------------------ measuring


class Counting(nn.Module):
    """The model, counting the rows it runs (``rows``) and those run with a graph for a
    backward pass (``graph_rows``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0
        self.graph_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        self.graph_rows += x.shape[0] if torch.is_grad_enabled() and x.requires_grad else 0
        return self.model(x)


def measure(case: Case, method: Method, reference: gsw.Explanation) -> dict[str, Any]:
    """One row of ``case``'s table (values None where they do not apply)."""
    counting = Counting(case.model)
    x, target = case.inputs, case.target
    if method.warm_up:
        method.run(case, counting, x[:1], target[:1])  # warm-up: layer search, allocator
    seconds = math.inf
    for _ in range(2 if method.warm_up else 1):  # the faster of two runs: a shared machine
        counting.rows = counting.graph_rows = 0
        start = time.perf_counter()
        expl = method.run(case, counting, x, target)
        seconds = min(seconds, (time.perf_counter() - start) / len(x))
    count = len(x)
    row: dict[str, Any] = {
        "evaluations": (counting.rows / count, counting.graph_rows / count),
        "ms": seconds * 1e3,
    }
    if method.name == "lime package" and not case.clips:  # clips: gsw.lime's time
        row["ms"] = package_seconds(case) * 1e3
    if not method.swag:
        for k in (5, 10):
            agree = gsw.metrics.agreement(
                expl.segment_scores, reference.segment_scores, k=k, num_segments=expl.num_segments
            )
            row[f"top{k}"] = float(agree["top_k_iou"].mean())
            row["spearman"] = float(agree["spearman"].mean())
        if _constant_for_an_input(expl):  # no ranking to correlate (a zero Grad-CAM map)
            row["spearman"] = None
    row["deletion"] = float(gsw.metrics.deletion(case.model, x, expl).auc.mean())
    row["insertion"] = float(gsw.metrics.insertion(case.model, x, expl).auc.mean())
    if case.masks is not None:
        row["pointing"] = float(gsw.metrics.pointing_game(expl, case.masks).float().mean())
        row["mass"] = float(gsw.metrics.relevance_mass(expl, case.masks).mean())
    return row


def _constant_for_an_input(expl: gsw.Explanation) -> bool:
    scores = [expl.segment_scores[b, : int(n)] for b, n in enumerate(expl.num_segments)]
    return any(bool(s.max() == s.min()) for s in scores)


def package_seconds(case: Case) -> float:
    """The ``lime`` package's time on the first input (on the case's output)."""
    model = case.model
    if case.output == "probability":
        model = nn.Sequential(case.model, nn.Softmax(1)).eval()
    labels, target = case.segmentation.labels[0], int(case.target[0])
    start = time.perf_counter()
    lime_package(model, case.inputs[0], labels, target, 0, case.samples)
    return time.perf_counter() - start


def section(case: Case) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The rows of one case, the package's 1000-sample answer as the reference."""
    reference = lime_run(0)(case, case.model, case.inputs, case.target)
    return describe(case), [(m.name, measure_if_defined(case, m, reference)) for m in METHODS]


def measure_if_defined(case: Case, method: Method, reference: gsw.Explanation) -> dict[str, Any]:
    """``measure``, or an empty row where the method refuses the model (guided backprop on
    a model without ReLU)."""
    try:
        return measure(case, method, reference)
    except ValueError as error:
        if "needs nn.ReLU" not in str(error):
            raise
        return {}


def describe(case: Case) -> str:
    shape = "x".join(map(str, case.inputs.shape[1:]))
    model = type(case.model).__name__
    what = "clip" if case.clips else "image"
    return (
        f"**{case.name}**: {model}, {len(case.inputs)} {what}(s) of {shape}, "
        f"{case.n_segments} SLIC {'supervoxels' if case.clips else 'superpixels'}, "
        f"LIME {case.samples} samples, explaining the {case.output}"
    )


# ------------------------------------------------------------------------ the table


def markdown(sections: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> str:
    lines = []
    for title, rows in sections:
        lines += ["", title, "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
        for name, row in rows:
            lines.append("| " + " | ".join([name, *cells(row)]) + " |")
    threads = torch.get_num_threads()
    lines += [
        "",
        (
            f"CPU, {threads} threads, torch {torch.__version__}. Model evaluations: rows through "
            "the model per explanation (in brackets: those with a backward pass). Every row of a "
            "section explains the same output (`output=`): the softmax probability for the "
            "random-weight photos, as LIME's users do; the logit for the trained models, whose "
            "probabilities saturate at 1. The lime package row shows its answer (gsw.lime with "
            "its masks, the reference) and its own time on the first input; for clips, which "
            "the package does not take, gsw.lime's time. ms: the faster of two runs (LIME: one). "
            "A Spearman of — beside Jaccards: the method's scores are constant for an input "
            "(a zero Grad-CAM map of a random transformer), so they rank nothing."
        ),
    ]
    return "\n".join(lines).strip() + "\n"


def header(argv: list[str] | None) -> str:
    """The file's title: the command, the date and the machine that produced the table."""
    threads = os.environ.get("OMP_NUM_THREADS")
    words = [f"OMP_NUM_THREADS={threads}"] if threads else []
    words += ["python", "benchmarks/quality_report.py", *(sys.argv[1:] if argv is None else argv)]
    return (
        f"# The evidence table\n\n`{' '.join(words)}` ({datetime.date.today()}, {cpu_name()}, "
        f"{os.cpu_count()} cores). The guide's page "
        '"Choosing a method" (docs/guide/choosing-a-method.md) reads it.\n\n'
    )


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cells(row: dict[str, Any]) -> list[str]:
    def number(key: str, digits: int) -> str:
        value = row.get(key)
        return "—" if value is None else f"{value:.{digits}f}"

    if not row:  # the method does not apply to the model
        return ["—"] * (len(COLUMNS) - 1)
    rows, graph = row["evaluations"]
    evaluations = f"{rows:.0f}" + (f" ({graph:.0f})" if graph else "")
    return [
        number("spearman", 3),
        number("top5", 2),
        number("top10", 2),
        number("deletion", 3),
        number("insertion", 3),
        number("pointing", 2),
        number("mass", 2),
        evaluations,
        f"{row['ms']:.1f}",
    ]


def finite(sections: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> bool:
    """Every measured number is finite (None: not measured)."""
    return all(
        math.isfinite(v)
        for _, rows in sections
        for _, row in rows
        for value in row.values()
        for v in (value if isinstance(value, tuple) else (value,))
        if v is not None
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs, 100 LIME samples")
    parser.add_argument(
        "--sections",
        default="shapes,actions,square,photos,vit,swin",
        help="comma-separated: shapes, actions, square, photos, vit, swin",
    )
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    sections = [section(case) for case in cases(args.quick, args.sections.split(","))]
    table = markdown(sections)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(header(argv) + table)
    if not finite(sections):
        raise SystemExit("quality_report: a value is not finite")
    return table


if __name__ == "__main__":
    main()
