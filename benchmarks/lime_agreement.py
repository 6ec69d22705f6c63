"""How closely gswfast's segment scores rank segments like the real ``lime`` package.

Runs LIME (``lime.lime_image``, given our SLIC segments, ``hide_color=None`` = segment-mean
colour, 1000 samples) twice with different seeds, and gswfast's methods once, on
scikit-image photos with a random-weight torchvision model, and prints the mean Spearman
correlation of each method's segment scores with LIME's weights.

    python benchmarks/lime_agreement.py [--model resnet18] [--size 224] [--segments 50]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import spearmanr

import gswfast as gsw


def photos(size: int) -> torch.Tensor:
    import skimage.data as data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    batch = [F.interpolate(torch.from_numpy(i).permute(2, 0, 1)[None].float(), size=(size, size),
                           mode="bilinear", antialias=True)[0] for i in images]
    return (torch.stack(batch) / 255).clamp(0, 1)


def lime_weights(model, image: torch.Tensor, labels: np.ndarray, target: int, seed: int,
                 n_samples: int, output: str) -> np.ndarray:
    from lime import lime_image

    def classify(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            logits = torch.cat([model(c) for c in x.split(64)])
        return (logits.softmax(1) if output == "probability" else logits).numpy()

    explainer = lime_image.LimeImageExplainer(random_state=seed)
    result = explainer.explain_instance(
        image.permute(1, 2, 0).double().numpy(), classify, labels=(target,), top_labels=None,
        hide_color=None, num_samples=n_samples, batch_size=64, segmentation_fn=lambda _: labels,
        random_seed=seed,
    )
    weights = np.zeros(int(labels.max()) + 1)
    for segment, weight in result.local_exp[target]:
        weights[segment] = weight
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--output", choices=("logit", "probability"), default="logit")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    x = photos(args.size)
    seg = gsw.slic(x, n_segments=args.segments)
    methods = {
        "lime_ig": dict(method="lime_ig", n_steps=32),
        "ig_zeros": dict(method="integrated_gradients", n_steps=32, reduce="sum"),
        "abs_gradient": dict(method="gradient", reduce="sum"),
        "gradcam": dict(method="gradcam", reduce="sum"),
    }
    if args.output == "probability":
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    scores = {name: gsw.explain(model, x, segmentation=seg, **kw) for name, kw in methods.items()}
    target = scores["lime_ig"].target
    inner = model[0] if args.output == "probability" else model
    rho: dict[str, list[float]] = {name: [] for name in [*methods, "lime_seed1"]}
    for b in range(x.shape[0]):
        labels = seg.labels[b].numpy()
        k = int(seg.num_segments[b])
        ref = lime_weights(inner, x[b], labels, int(target[b]), 0, args.samples, args.output)
        other = lime_weights(inner, x[b], labels, int(target[b]), 1, args.samples, args.output)
        rho["lime_seed1"].append(spearmanr(ref, other).statistic)
        for name, expl in scores.items():
            rho[name].append(spearmanr(ref, expl.segment_scores[b, :k].numpy()).statistic)
    print(json.dumps({name: round(float(np.mean(v)), 3) for name, v in rho.items()}, indent=1))


if __name__ == "__main__":
    main()
