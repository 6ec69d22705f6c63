"""The main job: explain a CNN's decisions on photos and a clip with gradient weighted superpixels.

    python examples/explain_photos.py [--device cuda] [--out demo_output]

No pretrained weights can be downloaded on the build machines, so the torchvision models
have random weights: their timings, shapes and overlays are real, what they "look at" is
not meaningful. For meaning, the demo ends with a small CNN it trains in seconds to tell
red squares from blue ones on grey texture, and counts how often each method's best
superpixel is the square (the pointing game).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import torch
import torchvision

import gswfast as gsw
from gswfast.testing import photos, square_images, train_square_classifier
from gswfast.viz import save_png as write_png

IMAGENET = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def timed(fn, device: str):
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def explain_photos(device: str, out: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(device).eval()
    images = photos(224, 4).to(device)  # astronaut, chelsea, coffee, rocket
    for method, options in [("lime_ig", {}), ("gradcam", {}), ("gradient", {})]:
        explainer = gsw.Explainer(model, method, preprocess=IMAGENET, **options)
        expl, seconds = timed(functools.partial(explainer, images), device)
        best = expl.ranking()[:, :3].tolist()
        print(
            f"{method:>9}: {seconds * 1e3:7.1f} ms for 4 images, {expl.num_segments.tolist()} segments, "
            f"class {expl.target.tolist()}, top-3 segments {best}"
        )
        pictures = expl.overlay(images).cpu()
        for b, picture in enumerate(pictures):
            write_png(picture, str(out / f"photo{b}_{method}.png"))


def explain_clip(device: str, out: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.video.r2plus1d_18().to(device).eval()
    frame = photos(112, 1)[0]
    clip = torch.stack([torch.roll(frame, shifts=3 * t, dims=-1) for t in range(16)], 1)[None].to(
        device
    )
    explainer = gsw.Explainer(model, "gradient")
    expl, seconds = timed(lambda: explainer(clip), device)
    print(
        f"clip [1, 3, 16, 112, 112] (r2plus1d_18, gradient): {seconds * 1e3:.1f} ms, "
        f"{int(expl.num_segments[0])} supervoxels, top-3 {expl.ranking()[0, :3].tolist()}"
    )
    frames = expl.overlay(clip)[0].cpu()  # [3, T, H, W]
    write_png(torch.cat(list(frames.unbind(1)), dim=2), str(out / "clip_gradient_frames.png"))


def explain_trained(device: str) -> None:
    model = train_square_classifier().to(device)
    images, classes, masks = square_images(64, generator=torch.Generator().manual_seed(1))
    images, classes = images.to(device), classes.to(device)
    seg = gsw.slic(images, n_segments=20)
    lime, seconds = timed(lambda: gsw.lime(model, images, seg, classes, n_samples=1000), device)
    print(
        f"trained square classifier, 64 test images; gsw.lime (1000 samples) took {seconds:.1f} s:"
    )
    print(f"  {'method':>20}  best segment on the square  Spearman with LIME")
    rows = [("lime", lime)] + [
        (m, gsw.explain(model, images, classes, method=m, segmentation=seg, reduce="sum"))
        for m in ("integrated_gradients", "gradcam", "input_x_gradient", "gradient", "lime_ig")
    ]
    for method, expl in rows:
        hits = float(gsw.metrics.pointing_game(expl, masks.to(device)).float().mean())
        rho = float(gsw.metrics.agreement(expl, lime, k=3)["spearman"].mean())
        print(f"  {method:>20}  {hits:26.0%}  {rho:18.3f}")
    print(
        "  (LIME, and lime_ig with it, cannot see a superpixel that is all square: filling it\n"
        "   with its mean colour changes nothing. Gradients measure sensitivity, not evidence.)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() and gsw.cuda_available() else "cpu"
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_output"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gswfast {gsw.__version__} on {args.device} ({torch.get_num_threads()} CPU threads)")
    explain_photos(args.device, args.out)
    explain_clip(args.device, args.out)
    explain_trained(args.device)
    print(f"overlays written to {args.out}/")


if __name__ == "__main__":
    main()
