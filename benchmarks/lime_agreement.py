"""The report: how well, and how fast, gswfast's scorers approximate LIME.

For each scorer, on the same SLIC segments: Spearman correlation and top-5 IoU of its
segment scores with LIME's weights (1000 samples; mean and standard deviation over the
inputs), the LIME-vs-LIME agreement between two seeds (the noise floor), deletion and
insertion AUC (softmax probability of the target), and the time per explanation with the
speed-up over ``gsw.lime`` and over the ``lime`` package (timed on the first input).
LIME itself is ``gsw.lime``, which returns the package's weights given the same masks
(``tests/test_lime.py``); scores are summed per segment, as LIME's weights are.

    python benchmarks/lime_agreement.py [--out report.md]            # resnet18, photos
    python benchmarks/lime_agreement.py --model square --segments 20 # the trained CNN
    python benchmarks/lime_agreement.py --size 112 --count 4 --output probability --candidates
        # issue 18: the fast LIME-like scorers (lime_ig, banzhaf designs) against the
        # package's own masks, softmax outputs, with top-10 Jaccard

Inputs: scikit-image's four photos and their mirror images (224x224), resnet18 with random
weights; ``--model square``: 8 synthetic images and the small CNN trained on them, with
how often each method's best segment is the square (``on square``).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torchvision

import gswfast as gsw
from gswfast.testing import lime_masks, lime_package, photos, square_images, train_square_classifier

SCORERS: dict[str, dict] = {
    "gradient": dict(method="gradient"),
    "input_x_gradient, zeros": dict(method="input_x_gradient", baseline="zeros"),
    "input_x_gradient, segment_mean": dict(method="input_x_gradient", baseline="segment_mean"),
    "integrated_gradients, zeros": dict(method="integrated_gradients", baseline="zeros"),
    "integrated_gradients, segment_mean (lime_ig)": dict(method="lime_ig"),
    "smoothgrad": dict(method="smoothgrad", seed=0),
    "gradcam": dict(method="gradcam"),
    "swag (gradient)": dict(method="gradient", swag=True),
}
# --candidates: the LIME-like scorers of issue 18 (cost: n_steps or n_samples backward passes)
CANDIDATES: dict[str, dict] = {
    **{f"lime_ig, {n} steps": dict(method="lime_ig", n_steps=n) for n in (2, 4, 8, 16)},
    "banzhaf, centre (1 point)": dict(method="banzhaf", design="centre"),
    **{f"banzhaf, latin, {n} mixes": dict(method="banzhaf", n_samples=n) for n in (2, 4, 8, 16)},
    "banzhaf, uniform, 8 mixes": dict(method="banzhaf", design="uniform", n_samples=8),
    **{
        f"banzhaf, swap, {n} mixes": dict(method="banzhaf", design="swap", n_samples=n)
        for n in (8, 16)
    },
    "banzhaf, binary, 8 mixes": dict(method="banzhaf", design="binary", n_samples=8),
}


def inputs_and_model(
    name: str, size: int, count: int = 8
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    """The model and inputs; photos: ``count`` <= 4 photos, or the 4 and their mirrors."""
    torch.manual_seed(0)
    if name == "square":
        images, _, masks = square_images(8, generator=torch.Generator().manual_seed(123))
        return train_square_classifier(), images, masks
    model = getattr(torchvision.models, name)().eval()
    if count <= 4:
        return model, photos(size, count), None
    x = photos(size, 4)
    return model, torch.cat([x, x.flip(-1)]), None


def package_masks(seg: gsw.Segmentation, samples: int, seed: int) -> torch.Tensor:
    """uint8 ``[B, samples, K]``: the ``lime`` package's masks for each input."""
    width = int(seg.num_segments.max())
    rows = [lime_masks(seed, samples, int(n)) for n in seg.num_segments]
    padded = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in rows]
    return torch.stack(padded).to(torch.uint8)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate(model, x, expl, reference, masks) -> dict[str, float]:
    counts = expl.num_segments
    rows = gsw.metrics.agreement(
        expl.segment_scores, reference.segment_scores, k=5, num_segments=counts
    )
    top10 = gsw.metrics.agreement(
        expl.segment_scores, reference.segment_scores, k=10, num_segments=counts
    )
    row = {
        "spearman": float(rows["spearman"].mean()),
        "spearman_sd": float(rows["spearman"].std()),
        "top5_iou": float(rows["top_k_iou"].mean()),
        "top10_iou": float(top10["top_k_iou"].mean()),
        "deletion_auc": float(gsw.metrics.deletion(model, x, expl).auc.mean()),
        "insertion_auc": float(gsw.metrics.insertion(model, x, expl).auc.mean()),
    }
    if masks is not None:
        row["on_square"] = f"{int(gsw.metrics.pointing_game(expl, masks).sum())}/{x.shape[0]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--count", type=int, default=8, help="photos: <= 4, or 8 with mirrors")
    parser.add_argument("--output", default="logit", help="logit or probability (softmax)")
    parser.add_argument("--candidates", action="store_true", help="the issue-18 scorer sweep")
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args()
    model, x, masks = inputs_and_model(args.model, args.size, args.count)
    seg = gsw.slic(x, n_segments=args.segments)
    target = gsw.explain(model, x, method="gradient", segmentation=seg).target
    n, out = args.samples, args.output

    def package_answer(seed: int) -> gsw.Explanation:  # the package's weights, on the device
        masks = package_masks(seg, n, seed)
        return gsw.lime(model, x, seg, target, n_samples=n, masks=masks, output=out)

    lime, lime_s = timed(lambda: package_answer(0))
    other = package_answer(1)
    wrapped = torch.nn.Sequential(model, torch.nn.Softmax(1)) if out == "probability" else model
    _, package_s = timed(
        lambda: lime_package(wrapped, x[0], seg.labels[0], int(target[0]), 0, n)["weights"]
    )
    per_lime = lime_s / x.shape[0]
    results: dict[str, dict] = {
        "LIME, seed 1 (noise floor)": evaluate(model, x, other, lime, masks)
    }
    if not args.candidates:  # the sweep leaves it out (4000 more model rows)
        bf16 = gsw.lime(model, x, seg, target, n_samples=n, autocast=torch.bfloat16, output=out)
        results["LIME, bfloat16 autocast"] = evaluate(model, x, bf16, lime, masks)
    results["LIME, seed 0 (the reference)"] = evaluate(model, x, lime, lime, masks)
    results["LIME, seed 0 (the reference)"]["seconds"] = per_lime
    scorers = CANDIDATES if args.candidates else SCORERS
    for name, options in scorers.items():
        explainer = gsw.Explainer(model, reduce="sum", output=out, **options)
        given = None if options.get("swag") else seg
        explainer(x, target, given)  # warm-up (the Grad-CAM layer search, allocator)
        expl, seconds = timed(functools.partial(explainer, x, target, given))
        reference = lime
        if options.get("swag"):  # its own segments: LIME on those
            reference = gsw.lime(model, x, expl.segmentation, target, n_samples=n, output=out)
        results[name] = {
            **evaluate(model, x, expl, reference, masks),
            "seconds": seconds / x.shape[0],
        }
    table = markdown(results, per_lime, package_s, args, x)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


def markdown(results: dict[str, dict], per_lime: float, package_s: float, args, x) -> str:
    square = args.model == "square"
    head = (
        "| scorer | Spearman with LIME (sd) | top-5 IoU | top-10 IoU | deletion AUC (lower better) "
        "| insertion AUC | ms per input | vs gsw.lime | vs lime package |"
    )
    lines = [head + (" on square |" if square else ""), "|---" * (9 + square) + "|"]
    for name, r in results.items():
        seconds = r.get("seconds")
        timing = (
            f"{seconds * 1e3:.1f} | {per_lime / seconds:.0f}x | {package_s / seconds:.0f}x"
            if seconds and "seed 0" not in name
            else f"{per_lime * 1e3:.0f} | 1x | {package_s / per_lime:.1f}x"
            if seconds
            else " | | "
        )
        line = (
            f"| {name} | {r['spearman']:.3f} ({r['spearman_sd']:.3f}) | {r['top5_iou']:.2f} | "
            f"{r['top10_iou']:.2f} | "
            f"{r['deletion_auc']:.4f} | {r['insertion_auc']:.4f} | {timing} |"
        )
        lines.append(line + (f" {r['on_square']} |" if square else ""))
    threads = torch.get_num_threads()
    lines.append("")
    lines.append(
        f"{args.model}, {x.shape[0]} inputs of {tuple(x.shape[1:])}, {args.segments} SLIC "
        f"segments, LIME {args.samples} samples with the package's masks, explaining the "
        f"{args.output}; the lime package took {package_s:.1f} s per input; "
        f"{threads} CPU threads, torch {torch.__version__}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
