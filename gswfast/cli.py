"""The ``gswfast`` command: ``gswfast demo`` and ``gswfast explain PATH...``.

User mistakes (missing or corrupt files, unknown models, weights that do not fit, a device
that is not there) end with one line on stderr and exit code 2; nothing else prints a
traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gswfast.video.io import VIDEO_SUFFIXES

NORMALISATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "kinetics": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
}


_VIDEO_FILES = VIDEO_SUFFIXES | {".gif"}  # explain also reads animated GIFs as video


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"gswfast: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gswfast: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gswfast", description="Gradient weighted superpixel explanations.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="explain the demo images and clips, write pictures and JSON")
    demo.add_argument("--out", type=Path, default=Path("gswfast_demo"), help="output folder (default: gswfast_demo)")
    _common(demo)
    demo.set_defaults(run=_run_demo)
    explain = commands.add_parser("explain", help="explain images and videos with a model")
    explain.add_argument("paths", nargs="+", type=Path, help="images (PNG, JPEG, ...) and videos (MP4, ...)")
    explain.add_argument("--model", default="torchvision:resnet18",
                         help="torchvision:NAME, demo:shapes, demo:actions, or a .pt file (TorchScript, or a "
                              "state_dict with --arch)")
    explain.add_argument("--arch", help="architecture of a state_dict .pt file (torchvision:NAME or demo:NAME)")
    explain.add_argument("--weights", type=Path, help="a state_dict to load into --model")
    explain.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
    explain.add_argument("--size", type=int, help="input size (default: 224 for images, 112 for video, 64 for demo)")
    explain.add_argument("--normalize", choices=("auto", "imagenet", "kinetics", "none"), default="auto",
                         help="input normalisation (auto: ImageNet/Kinetics for torchvision models, none otherwise)")
    explain.add_argument("--frames", type=int, default=16, help="frames per video window (default 16)")
    explain.add_argument("--stride", type=int, help="frames between video windows (default: --frames; 4 with --stream)")
    explain.add_argument("--stream", action="store_true",
                         help="explain videos as a stream: supervoxels warm-started window to window, a JSON timeline")
    explain.add_argument("--out", type=Path, default=Path("gswfast_out"), help="output folder (default: gswfast_out)")
    _common(explain)
    explain.set_defaults(run=_run_explain)
    dataset = commands.add_parser("explain-dataset", help="explain a folder or list of images/videos; torchrun-aware")
    dataset.add_argument("source", type=Path, help="a folder of images/videos, or a text file with one path per line")
    dataset.add_argument("--out", type=Path, required=True, help="output folder (items/*.npz, manifest.json)")
    dataset.add_argument("--model", default="torchvision:resnet18", help="as for explain")
    dataset.add_argument("--arch", help="as for explain")
    dataset.add_argument("--weights", type=Path, help="as for explain")
    dataset.add_argument("--size", type=int, help="as for explain")
    dataset.add_argument("--normalize", choices=("auto", "imagenet", "kinetics", "none"), default="auto")
    dataset.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    dataset.add_argument("--frames", type=int, default=16, help="frames per video window (default 16)")
    dataset.add_argument("--stride", type=int, help="frames between video windows (default: --frames)")
    dataset.add_argument("--pictures", action="store_true", help="also write an overlay per item")
    _common(dataset)
    dataset.set_defaults(run=_run_dataset)
    return parser


def _run_dataset(args: argparse.Namespace) -> int:
    from gswfast.dataset import explain_dataset

    if args.batch_size < 1 or args.frames < 1 or (args.stride is not None and args.stride < 1):
        raise UserError("--batch-size, --frames and --stride must be >= 1")
    manifest = explain_dataset(
        args.source, args.out, args.model, arch=args.arch, weights=args.weights, method=check_method(args.method),
        segments=args.segments, size=args.size, normalize=args.normalize, batch_size=args.batch_size,
        frames=args.frames, stride=args.stride, pictures=args.pictures, device=args.device, quiet=args.quiet,
    )
    if manifest is not None and not args.quiet:
        totals = manifest["totals"]
        print(f"\n{totals['done']} items done, {totals['failed']} failed, {totals['missing']} missing "
              f"({totals['processes']} processes); wrote {args.out}/manifest.json", file=sys.stderr)
    return 0 if manifest is None or manifest["totals"]["missing"] == 0 else 1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="integrated_gradients",
                        help="gradient, input_x_gradient, integrated_gradients, lime_ig, smoothgrad, gradcam, "
                             "guided_backprop (default: integrated_gradients)")
    parser.add_argument("--segments", type=int, help="superpixels per image / supervoxels per clip")
    parser.add_argument("--top-k", type=int, default=3, help="segments outlined in the pictures (default 3)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress or summary")


# ------------------------------------------------------------------------ demo


def _run_demo(args: argparse.Namespace) -> int:
    import gswfast as gsw
    from gswfast.demo import ACTIONS, SHAPES, action_clips, load, shape_images

    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    say = _printer(args.quiet)
    report: dict[str, Any] = {"device": str(device), "method": args.method}
    images = shape_images(8, generator=torch.Generator().manual_seed(2026))
    clips = action_clips(2, generator=torch.Generator().manual_seed(2026))
    for name, batch, labels, segments in (("images", images, SHAPES, 20), ("clips", clips, ACTIONS, 60)):
        model = load("shapes" if name == "images" else "actions", device)
        x, masks = batch.images.to(device), batch.masks.to(device)
        explainer = gsw.Explainer(model, check_method(args.method), n_segments=args.segments or segments)
        expl, seconds = _timed(lambda: explainer(x), device)
        files = _write_pictures(expl, x, args.out, name, args.top_k)
        report[name] = _records(expl, batch.classes, labels, files, masks)
        report[f"{name}_seconds"] = seconds
        say(_summary(name, report[name], seconds))
    (args.out / "demo.json").write_text(json.dumps(report, indent=1))
    say(f"wrote {args.out}/demo.json and the pictures beside it")
    return 0


def _records(expl, classes: torch.Tensor, labels: Sequence[str], files: list[list[str]], masks: torch.Tensor) -> list[dict]:
    import gswfast as gsw

    hits = gsw.metrics.pointing_game(expl, masks).tolist()
    mass = gsw.metrics.relevance_mass(expl, masks).tolist()
    ranking = expl.ranking()
    rows = []
    for b in range(expl.segment_scores.shape[0]):
        n = int(expl.num_segments[b])
        rows.append({
            "files": files[b], "class": labels[int(classes[b])], "predicted": labels[int(expl.target[b])],
            "segment_scores": [round(v, 6) for v in expl.segment_scores[b, :n].tolist()],
            "ranking": ranking[b, :n].tolist(), "pointing_game": hits[b], "relevance_mass": round(mass[b], 4),
        })
    return rows


def _summary(name: str, rows: list[dict], seconds: float) -> str:
    correct = sum(r["class"] == r["predicted"] for r in rows)
    hits = sum(r["pointing_game"] for r in rows)
    mass = sum(r["relevance_mass"] for r in rows) / len(rows)
    return (f"{len(rows)} demo {name}: {correct} classified right; best segment on the object in {hits}; "
            f"mean relevance mass {mass:.2f}; explained in {seconds * 1e3:.0f} ms")


# ------------------------------------------------------------------------ explain


def _run_explain(args: argparse.Namespace) -> int:
    import gswfast as gsw

    device = resolve_device(args.device)
    model, kind, normalize = load_model(args.model, args.arch, args.weights)
    model = model.to(device).eval()
    size = args.size or default_size(args.model, args.arch, kind)
    preprocess = normaliser(args.normalize, normalize, device)
    explainer = gsw.Explainer(model, check_method(args.method), preprocess=preprocess,
                              n_segments=args.segments, channels_last=None)
    args.out.mkdir(parents=True, exist_ok=True)
    say = _printer(args.quiet)
    results = []
    for index, path in enumerate(args.paths, 1):
        say(f"[{index}/{len(args.paths)}] {path}")
        is_video = path.suffix.lower() in _VIDEO_FILES
        if is_video != (kind == "video") and kind != "any":
            raise UserError(f"{path}: a {'video' if is_video else 'image'} cannot go through the {kind} model {args.model}")
        if is_video and args.stream:
            results.append(_stream_video(model, path, size, args, device, preprocess, say))
        else:
            run = _explain_video if is_video else _explain_image
            results.append(run(explainer, path, size, args, device, say))
    (args.out / "explanations.json").write_text(json.dumps(results, indent=1))
    say(f"wrote {args.out}/explanations.json and the pictures beside it")
    return 0


def _explain_image(explainer, path: Path, size: int, args, device, say) -> dict:
    from gswfast import viz
    from gswfast.video import MediaError, read_image

    try:
        image = viz.resize(read_image(path)[None], size).to(device)
    except MediaError as error:
        raise UserError(str(error)) from None
    expl, seconds = _timed(lambda: _call(explainer, image, args.target), device)
    out = args.out / f"{path.stem}.png"
    viz.save_png(viz.picture(expl, image, args.top_k, size=448)[0], out)
    return {"input": str(path), "output": str(out), **_scores(expl, 0), "seconds": seconds}


def _explain_video(explainer, path: Path, size: int, args, device, say) -> dict:
    """Window by window: decode, explain, write the pictures to the MP4; memory holds one
    window (and the first 64 frames for the GIF preview)."""
    from gswfast import viz
    from gswfast.video import MediaError, Mp4Writer, read_video, windows

    stride = args.stride or args.frames
    if args.frames < 1 or stride < 1:
        raise UserError("--frames and --stride must be >= 1")
    out = args.out / f"{path.stem}.mp4"
    explained, preview = [], []
    try:
        frames, fps = read_video(path)
        with Mp4Writer(out, fps) as movie:
            for start, clip in windows(frames, args.frames, stride, size):
                x = clip.to(device)[None]  # [1, 3, T, H, W]
                expl, seconds = _timed(lambda: _call(explainer, x, args.target), device)
                explained.append({"first_frame": start, "frames": args.frames, **_scores(expl, 0), "seconds": seconds})
                shown = viz.picture(expl, x, args.top_k, size=448)[0][:, :stride].cpu()  # frames up to the next window
                movie.write(shown)
                if sum(p.shape[1] for p in preview) < 64:
                    preview.append(shown)
                say(f"  window at frame {start}: class {explained[-1]['target']}, {seconds * 1e3:.0f} ms")
    except MediaError as error:
        raise UserError(str(error)) from None
    if not explained:
        out.unlink(missing_ok=True)
        raise UserError(f"{path}: shorter than one window of --frames {args.frames}")
    viz.save_gif(torch.cat(preview, 1)[:, :64], args.out / f"{path.stem}.gif", fps)
    return {"input": str(path), "output": str(out), "fps": fps, "windows": explained}


def _stream_video(model, path: Path, size: int, args, device, preprocess, say) -> dict:
    """``--stream``: frames go through ``StreamExplainer`` one by one (warm-started
    supervoxels); the MP4 shows each frame once, with the heatmap of the newest window
    holding it; ``<name>.timeline.jsonl`` gets one JSON line per window as it finishes."""
    from gswfast import viz
    from gswfast.video import MediaError, Mp4Writer, StreamExplainer, read_video

    stride = args.stride or 4
    if args.frames < 1 or stride < 1 or stride > args.frames:
        raise UserError("--stream needs 1 <= --stride <= --frames")
    stream = StreamExplainer(model, window=args.frames, stride=stride, method=check_method(args.method),
                             n_segments=args.segments, device=device, preprocess=preprocess)
    out, timeline_path, windows = args.out / f"{path.stem}.mp4", args.out / f"{path.stem}.timeline.jsonl", 0
    try:
        frames, fps = read_video(path)
        with Mp4Writer(out, fps) as movie, open(timeline_path, "w") as timeline:
            for frame in frames:
                for result in stream.push(viz.resize(frame[None], size)[0].to(device)):
                    clip = result.clip
                    fresh = clip.shape[2] if result.index == 0 else stride  # frames not shown yet
                    movie.write(viz.picture(result.explanation, clip, args.top_k, size=448)[0][:, -fresh:].cpu())
                    timeline.write(json.dumps(_timeline_entry(result)) + "\n")  # streamed: constant memory
                    windows += 1
                    say(f"  window {result.index} (frames {result.first_frame}-{result.last_frame}): "
                        f"class {result.target}, {result.latency * 1e3:.0f} ms")
    except MediaError as error:
        raise UserError(str(error)) from None
    if not windows:
        out.unlink(missing_ok=True)
        timeline_path.unlink(missing_ok=True)
        raise UserError(f"{path}: shorter than one window of --frames {args.frames}")
    return {"input": str(path), "output": str(out), "fps": fps, "stride": stride, "windows": windows,
            "timeline": str(timeline_path)}


def _timeline_entry(result) -> dict:
    return {"window": result.index, "first_frame": result.first_frame, "last_frame": result.last_frame,
            "target": result.target, "score": round(float(result.logits[result.target]), 6),
            "latency_ms": round(result.latency * 1e3, 3),
            "segment_scores": [round(v, 6) for v in result.explanation.segment_scores[0].tolist()]}


def _call(explainer, x: torch.Tensor, target: int | None):
    try:
        return explainer(x, target)
    except ValueError as error:
        if str(error).startswith(("target:", "model:", "layer:")):
            raise UserError(str(error)) from None
        raise


def _scores(expl, b: int) -> dict:
    n = int(expl.num_segments[b])
    return {"target": int(expl.target[b]), "segment_scores": [round(v, 6) for v in expl.segment_scores[b, :n].tolist()],
            "ranking": expl.ranking()[b, :n].tolist()}


# ------------------------------------------------------------------------ models


def load_model(spec: str, arch: str | None = None, weights: Path | None = None) -> tuple[torch.nn.Module, str, str]:
    """The model named by ``spec`` (``torchvision:NAME``, ``demo:NAME`` or a .pt file), its
    input kind (``image``, ``video`` or ``any``) and its normalisation; ``UserError`` for
    anything that does not load."""
    if spec.endswith((".pt", ".pth")) or Path(spec).exists():
        return _model_file(Path(spec), arch, weights)
    model, kind, normalize = _named_model(spec)
    if weights is not None:
        _load_weights(model, weights, spec)
    return model, kind, normalize


def default_size(spec: str, arch: str | None, kind: str) -> int:
    """Input side: 64 for the demo models, 112 for video models, 224 for the rest."""
    if spec.startswith("demo:") or (arch or "").startswith("demo:"):
        return 64
    return 112 if kind == "video" else 224


def _named_model(spec: str) -> tuple[torch.nn.Module, str, str]:
    source, _, name = spec.partition(":")
    if source == "demo":
        from gswfast.demo.models import ARCHITECTURES, load

        if name not in ARCHITECTURES:
            raise UserError(f"--model: unknown demo model {name!r} (choose from {sorted(ARCHITECTURES)})")
        return load(name), "video" if name == "actions" else "image", "none"
    if source == "torchvision":
        import torchvision

        video = set(torchvision.models.list_models(module=torchvision.models.video))
        if name not in torchvision.models.list_models():
            raise UserError(f"--model: unknown torchvision model {name!r}")
        model = torchvision.models.get_model(name, weights=None)  # no downloads: pass --weights
        return model, "video" if name in video else "image", "kinetics" if name in video else "imagenet"
    raise UserError(f"--model: expected torchvision:NAME, demo:NAME or a .pt file, got {spec!r}")


def _model_file(path: Path, arch: str | None, weights: Path | None) -> tuple[torch.nn.Module, str, str]:
    if not path.is_file():
        raise UserError(f"--model: {path}: no such file")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, and still what users have
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu"), "any", "none"
    except (RuntimeError, ValueError):
        pass  # not TorchScript: a state_dict for --arch
    if arch is None:
        raise UserError(f"--model: {path} is not TorchScript; give its architecture with --arch")
    model, kind, normalize = _named_model(arch)
    _load_weights(model, path, arch)
    return model, kind, normalize


def _load_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise UserError(f"--weights: {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors all mean: not a weights file
        raise UserError(f"--weights: {path}: cannot read it as a state_dict ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0:2]
        raise UserError(f"--weights: {path} does not fit {name}: {' '.join(first)}") from None


def normaliser(choice: str, default: str, device: torch.device):
    """The ``preprocess`` for ``--normalize`` (None for ``none``)."""
    name = default if choice == "auto" else choice
    if name == "none":
        return None
    mean, std = (torch.tensor(v, device=device).view(1, 3, *([1] * 3)) for v in NORMALISATION[name])

    def normalise(x: torch.Tensor) -> torch.Tensor:
        shape = (1, 3) + (1,) * (x.dim() - 2)
        return (x - mean.view(shape)) / std.view(shape)

    return normalise


# ------------------------------------------------------------------------ helpers


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``UserError`` when it is not there."""
    import gswfast as gsw

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and gsw.cuda_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and gsw.cuda_available()):
        raise UserError(f"--device {name}: no CUDA device (or gswfast was built without CUDA kernels)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def check_method(name: str) -> str:
    from gswfast.attribution import METHODS

    if name not in METHODS:
        raise UserError(f"--method: expected one of {', '.join(METHODS)}, got {name!r}")
    return name


def _write_pictures(expl, x: torch.Tensor, out: Path, name: str, k: int) -> list[list[str]]:
    from gswfast import viz
    from gswfast.video import write_mp4

    pictures = viz.picture(expl, x, k, size=256).cpu()
    files = []
    for b, picture in enumerate(pictures):
        if picture.dim() == 3:
            path = out / f"{name}_{b}.png"
            viz.save_png(picture, path)
            files.append([str(path)])
        else:
            gif, mp4 = out / f"{name}_{b}.gif", out / f"{name}_{b}.mp4"
            viz.save_gif(picture, gif)
            write_mp4(picture, mp4)
            files.append([str(gif), str(mp4)])
    return files


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _printer(quiet: bool):
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main())
