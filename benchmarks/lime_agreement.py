"""How closely gswfast's segment scores rank segments like the real ``lime`` package.

Runs LIME (``lime.lime_image``, given our SLIC segments, ``hide_color=None`` = segment-mean
colour, 1000 samples) twice with different seeds, and gswfast's methods once, on
scikit-image photos with a random-weight torchvision model, and prints the mean Spearman
correlation of each method's segment scores with LIME's weights.

    python benchmarks/lime_agreement.py [--model resnet18] [--size 224] [--segments 50]
    python benchmarks/lime_agreement.py --model square --segments 20

``--model square`` trains ``gswfast.testing.train_square_classifier`` and explains 8 of its
``square_images`` instead; it also prints how often each method's best segment is the
square (``best_on_square``), LIME's included.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torchvision

import gswfast as gsw
from gswfast.testing import lime_weights, photos, spearman, square_images, train_square_classifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--output", choices=("logit", "probability"), default="logit")
    args = parser.parse_args()
    torch.manual_seed(0)
    masks = None
    if args.model == "square":
        model = train_square_classifier()
        x, _, masks = square_images(8, generator=torch.Generator().manual_seed(123))
    else:
        model = getattr(torchvision.models, args.model)().eval()
        x = photos(args.size)
    seg = gsw.slic(x, n_segments=args.segments)
    methods = {
        "lime_ig": dict(method="lime_ig", n_steps=32),
        "lime_ig_16_steps": dict(method="lime_ig", n_steps=16),
        "lime_ig_8_steps": dict(method="lime_ig", n_steps=8),
        "lime_ig_4_steps": dict(method="lime_ig", n_steps=4),
        "ig_zeros": dict(method="integrated_gradients", n_steps=32, reduce="sum"),
        "abs_gradient": dict(method="gradient", reduce="sum"),
        "gradcam": dict(method="gradcam", reduce="sum"),
    }
    if args.output == "probability":  # LIME and gswfast both explain the class probability
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    scores = {name: gsw.explain(model, x, segmentation=seg, **kw) for name, kw in methods.items()}
    target = scores["lime_ig"].target
    rho: dict[str, list[float]] = {name: [] for name in [*methods, "lime_seed1"]}
    on_square: dict[str, list[bool]] = {name: [] for name in [*methods, "lime"]}
    for b in range(x.shape[0]):
        k = int(seg.num_segments[b])
        ref = lime_weights(model, x[b], seg.labels[b], int(target[b]), 0, args.samples)
        other = lime_weights(model, x[b], seg.labels[b], int(target[b]), 1, args.samples)
        rho["lime_seed1"].append(spearman(ref, other))
        best = {"lime": int(ref.argmax())}
        for name, expl in scores.items():
            rho[name].append(spearman(ref, expl.segment_scores[b, :k]))
            best[name] = int(expl.ranking()[b, 0])
        if masks is not None:
            for name, segment in best.items():
                pixels = seg.labels[b] == segment
                on_square[name].append(bool((pixels & masks[b]).sum() * 2 > pixels.sum()))
    result = {"spearman_with_lime": {name: round(float(np.mean(v)), 3) for name, v in rho.items()}}
    if masks is not None:
        result["best_on_square"] = {name: f"{sum(v)}/{len(v)}" for name, v in on_square.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
