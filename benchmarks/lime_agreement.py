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
        # issue 18: the fast LIME-like scorers (lime_ig, banzhaf designs, and the
        # experiments in EXPERIMENTS) against the package's own masks, softmax outputs,
        # with top-10 Jaccard; --only midpoint,bfloat16: just the scorers whose name has one

Inputs: scikit-image's four photos and their mirror images (224x224), resnet18 with random
weights; ``--model square``: 8 synthetic images and the small CNN trained on them, with
how often each method's best segment is the square (``on square``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable

import torch
import torchvision

import gswfast as gsw
from gswfast.attribution.baselines import segment_mean_image
from gswfast.lime import lime_kernel, weighted_ridge
from gswfast.ops import paint
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
    **{
        f"banzhaf, latin, {n} mixes, bfloat16": dict(
            method="banzhaf", n_samples=n, autocast=torch.bfloat16
        )
        for n in (16, 32)
    },
    **{
        f"banzhaf, arcsine, {n} mixes{', bfloat16' if bf16 else ''}": dict(
            method="banzhaf", design="arcsine", n_samples=n, autocast=bf16
        )
        for n in (8, 16, 24, 32, 40)
        for bf16 in (None, torch.bfloat16)
    },
}


def banzhaf_prior(model, x, seg, target, out, *, mixes: int, rows: int, alpha: float):
    """Issue 18, idea (a): LIME's kernel-weighted ridge on ``rows`` sobol masks (one batch
    of forward rows), shrunk towards ``banzhaf`` with ``mixes`` mixes instead of towards 0:
    the prior ``b`` is scaled by the weighted least-squares slope ``s`` of the outputs on
    ``masks @ b``, the ridge fits ``outputs - s * masks @ b`` and ``s * b`` is added back."""
    prior = gsw.explain(
        model, x, method="banzhaf", n_samples=mixes, segmentation=seg, target=target,
        reduce="sum", output=out,
    )  # fmt: skip
    fast = gsw.lime(model, x, seg, target, n_samples=rows, design="sobol", seed=1, output=out)
    keep, y = fast.info["masks"].double(), fast.info["outputs"].double()
    counts = prior.num_segments
    present = torch.arange(keep.shape[2]) < counts.unsqueeze(1)
    w = lime_kernel(keep, counts, 0.25)
    b = prior.segment_scores.double()
    g = torch.einsum("bnk,bk->bn", keep, b)
    wn = w / w.sum(1, keepdim=True)
    gc = g - (wn * g).sum(1, keepdim=True)
    s = ((wn * gc * y).sum(1) / (wn * gc**2).sum(1)).unsqueeze(1)
    coef = weighted_ridge(keep, y - s * g, w, alpha, present)[0] + s * b
    return _rescored(prior, coef)


def banzhaf_beta(model, x, seg, target, out, *, mixes: int, a: float, mid=False, bf16=False):
    """Issue 18, idea (b): ``banzhaf`` with each segment's mix ``z_k`` drawn from
    ``Beta(a, a)`` (``a < 1``: near 0 or 1, so the other segments are nearly shown or hidden
    as in LIME's binary masks; Latin strata of the quantiles, antithetic pairs), each
    ``df/dz_k`` weighted by ``1 / pdf(z_k)`` so that its mean still integrates over ``z_k``.
    ``mid``: the strata's midpoints instead of a random point in each; ``bf16``: the passes
    under bfloat16 autocast."""
    from scipy.special import beta, betaincinv

    labels, batch, width = seg.labels.long(), x.shape[0], int(seg.num_segments.max())
    g = torch.Generator().manual_seed(0)
    strata = torch.rand((mixes // 2, batch, width), generator=g).argsort(0).double()
    u = torch.rand(strata.shape, generator=g, dtype=torch.float64)
    q = (strata + (0.5 if mid else u)) / (mixes // 2)
    z = torch.from_numpy(betaincinv(a, a, q.numpy()))
    z = torch.cat([z, 1 - z])  # [P, B, K]
    hidden = segment_mean_image(x, seg.labels, seg.num_segments)
    diff = x - hidden
    mix = torch.stack([z[p, b][labels[b]] for p in range(mixes) for b in range(batch)])
    points = hidden.repeat(mixes, 1, 1, 1) + mix.unsqueeze(1).float() * diff.repeat(mixes, 1, 1, 1)
    points.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        scores = model(points).float()
    scores = scores.softmax(1) if out == "probability" else scores
    (grad,) = torch.autograd.grad(
        scores[torch.arange(len(points)), target.repeat(mixes)].sum(), points
    )
    pixel = (diff.repeat(mixes, 1, 1, 1) * grad).sum(1).reshape(mixes * batch, -1).double()
    flat = labels.reshape(batch, -1).repeat(mixes, 1)
    dz = torch.zeros(mixes * batch, width, dtype=torch.float64).scatter_add_(1, flat, pixel)
    dz = dz.reshape(mixes, batch, width) * beta(a, a) * (z * (1 - z)) ** (1 - a)
    present = torch.arange(width) < seg.num_segments.unsqueeze(1)
    scores = (dz.mean(0) * present).float()
    return gsw.Explanation(
        segment_scores=scores,
        labels=seg.labels,
        num_segments=seg.num_segments,
        pixel_scores=paint(scores, seg.labels),
        target=target,
        method="test",
        reduce="sum",
        segmentation=seg,
    )


def _rescored(expl: gsw.Explanation, scores: torch.Tensor) -> gsw.Explanation:
    scores = scores.float()
    pixels = paint(scores, expl.labels)
    return dataclasses.replace(expl, segment_scores=scores, pixel_scores=pixels, method="test")


# --candidates: issue-18 experiments that are not options of gsw (cost: all they run)
EXPERIMENTS: dict[str, Callable[..., gsw.Explanation]] = {
    **{
        f"banzhaf 8 prior + LIME ridge on {n} sobol rows, alpha {alpha}": functools.partial(
            banzhaf_prior, mixes=8, rows=n, alpha=alpha
        )
        for n in (16, 32, 128)
        for alpha in (1.0, 10.0)
    },
    "banzhaf 16 prior + LIME ridge on 128 sobol rows, alpha 10": functools.partial(
        banzhaf_prior, mixes=16, rows=128, alpha=10.0
    ),
    **{
        f"banzhaf, Beta({a}, {a}) mixes, {n}": functools.partial(banzhaf_beta, mixes=n, a=a)
        for n in (8, 16)
        for a in (0.5, 0.3)
    },
    **{
        f"banzhaf, Beta(0.5, 0.5) midpoint mixes, {n}{', bfloat16' if bf16 else ''}": (
            functools.partial(banzhaf_beta, mixes=n, a=0.5, mid=True, bf16=bf16)
        )
        for n in (8, 16, 24, 32)
        for bf16 in (False, True)
    },
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
    parser.add_argument(
        "--only", help="--candidates: only the scorers whose name has one of these (a,b)"
    )
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
    experiments = EXPERIMENTS if args.candidates else {}
    if args.only:
        keys = args.only.split(",")
        scorers = {n: o for n, o in scorers.items() if any(k in n for k in keys)}
        experiments = {n: e for n, e in experiments.items() if any(k in n for k in keys)}
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
    for name, experiment in experiments.items():
        run = functools.partial(experiment, model, x, seg, target, out)
        run()  # warm-up
        expl, seconds = timed(run)
        results[name] = {**evaluate(model, x, expl, lime, masks), "seconds": seconds / x.shape[0]}
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
