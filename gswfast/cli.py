"""The ``gswfast`` command: ``gswfast demo``, ``gswfast explain PATH...`` and
``gswfast explain-dataset SOURCE`` (arguments and printing; models come from
``gswfast.models``, dataset jobs from ``gswfast.dataset``).

User mistakes (bad options, missing or corrupt files, unknown models, weights that do not
fit, a device that is not there) end with one line ``gswfast: error: ...`` on stderr and
exit code 2. Options are checked before any model loads; this module imports only the
standard library and ``gswfast.options`` at first, so ``--help``, ``--version`` and option
mistakes never import torch; torch, torchvision, PyAV, Pillow and tqdm load only when used.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from gswfast import __version__
from gswfast.options import (
    CAM_METHODS,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_BOXES,
    DEFAULT_METHODS,
    METHOD_NAMES,
    PICTURE_SIDE,
    REGION_METHODS,
    ROW_KINDS,
    ROW_STRIDE,
    SAMPLING_METHODS,
    UserError,
    check_kind_options,
    check_method,
    check_method_options,
    check_streamable,
    failure_line,
    make_out_folder,
)

if TYPE_CHECKING:
    import torch

    from gswfast.detections import Rows
    from gswfast.explain import Explainer, Explanation
    from gswfast.progress import Progress
    from gswfast.regions import RegionExplainer
    from gswfast.segmentation import Segmentation
    from gswfast.video import Mp4Writer, StreamExplainer, WindowResult
    from gswfast.viz import NpzWriter

_T = TypeVar("_T")

__all__ = ["UserError", "main"]

# Counts above these are mistakes: larger ones overflow C integers (OverflowError), and a
# side above MAX_SIZE asks for tens of GB per image (100000 x 100000 x 3 float32: 120 GB).
MAX_COUNT, MAX_SIZE = 2**31 - 1, 4096
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes
OUTPUT_SUFFIXES = (
    ".png",
    ".mp4",
    ".gif",
    ".timeline.jsonl",
    ".labels.npz",
)  # what explain writes per input
STEM_BYTES = 200  # output stems are cut there: with "-NN" and a suffix, within 255 bytes
NORMALIZE_CHOICES = ("auto", "imagenet", "kinetics", "none")
EXIT_PARTIAL, EXIT_USER_ERROR = 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns its exit code (0 done, 1 some inputs failed, 2 a mistake)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or an option argparse refused (one line, 2)
        return int(done.code or 0)
    try:
        _check_options(args)
        run: Callable[[argparse.Namespace], int] = args.run  # set by each subcommand's parser
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            if getattr(args, "quiet", False):
                warnings.simplefilter("ignore")
            return run(args)
    except UserError as error:
        print(f"gswfast: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gswfast: interrupted", file=sys.stderr)
        return 130


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """The command's warnings as its other messages: one line, ``gswfast: warning: ...``,
    without the source location Python's default shows."""
    text = str(message).removeprefix("gswfast: ")
    print(f"gswfast: warning: {text}", file=sys.stderr if file is None else file)


# ------------------------------------------------------------------------ arguments


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, ``gswfast: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"gswfast: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _count(
    minimum: int, maximum: int = MAX_COUNT, shown: str | None = None
) -> Callable[[str], int]:
    """An argparse type: an int in ``minimum..maximum`` (``shown`` names the range in
    messages; ``>= minimum`` when the maximum is only there to stop overflows)."""
    bounds = f"an int from {shown or f'{minimum} to {maximum}'}"
    expected = bounds if shown or maximum != MAX_COUNT else f"an int >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected {bounds}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def _class_list(text: str) -> list[int]:
    """An argparse type: distinct classes separated by commas (``1,3``)."""
    parse = _count(0)
    try:
        classes = [parse(word.strip()) for word in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected classes >= 0 separated by commas (1,3), got {text!r}"
        ) from None
    if len(set(classes)) < len(classes):
        raise argparse.ArgumentTypeError(f"expected distinct classes, got {text!r}")
    return classes


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gswfast",
        description="Gradient weighted superpixel explanations of image and video CNNs.",
    )
    parser.add_argument("--version", action="version", version=f"gswfast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser(
        "demo", help="explain the demo images and clips, write pictures and JSON"
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("gswfast_demo"),
        help="output folder (default: gswfast_demo)",
    )
    _common(
        demo,
        method_help="default: integrated_gradients for the demo images and clips alike (the demo "
        "models are small enough)",
    )
    demo.set_defaults(run=_run_demo)

    explain = commands.add_parser("explain", help="explain images and videos with a model")
    explain.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="images (PNG, JPEG, 16-bit PNG, ...) and videos (MP4, WebM, MKV, animated GIF, ...)",
    )
    _model_options(explain)
    explain.add_argument(
        "--stride",
        type=_count(1),
        help="frames between video windows (default: --frames; 4 with --stream); detectors "
        f"and segmenters: frames between explained frames (default {ROW_STRIDE})",
    )
    explain.add_argument(
        "--stream",
        action="store_true",
        help="explain videos as a stream: supervoxels warm-started window to window, a JSON timeline",
    )
    explain.add_argument(
        "--out", type=Path, default=Path("gswfast_out"), help="output folder (default: gswfast_out)"
    )
    _row_options(explain)
    explain.add_argument(
        "--no-pictures",
        dest="pictures",
        action="store_false",
        help="no pictures (PNG, MP4, GIF): explanations.json, the labels and the timelines of "
        "--stream only",
    )
    _common(explain)
    explain.set_defaults(run=_run_explain)

    dataset = commands.add_parser(
        "explain-dataset", help="explain a folder or list of images/videos; torchrun-aware"
    )
    dataset.add_argument(
        "source",
        type=Path,
        help="a folder of images/videos, a text file with one path per line, or one image or video",
    )
    dataset.add_argument(
        "--out", type=Path, required=True, help="output folder (items/*.npz, manifest.json)"
    )
    _model_options(dataset)
    dataset.add_argument(
        "--stride",
        type=_count(1),
        help="frames between video windows (default: --frames); detectors and segmenters: "
        f"frames between explained frames (default {ROW_STRIDE})",
    )
    _row_options(dataset)
    dataset.add_argument(
        "--batch-size", type=_count(1), default=16, help="images per model call (default 16)"
    )
    dataset.add_argument("--pictures", action="store_true", help="also write an overlay per item")
    dataset.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute items made with other settings (without it, a rerun with other settings "
        "than the ones recorded in --out refuses)",
    )
    _common(dataset)
    dataset.set_defaults(run=_run_dataset)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="torchvision:resnet18",
        help="torchvision:NAME (a classification, video, detection or segmentation model), "
        "timm:NAME (an image classifier, where timm is installed), hf:FOLDER (a Hugging Face "
        "image classifier saved with save_pretrained, loaded offline), demo:shapes, "
        "demo:actions, demo:detector, or a "
        ".pt file (TorchScript, or a state_dict with --arch). Default: torchvision:resnet18 "
        "with RANDOM weights: torchvision and timm models have random weights (drawn from "
        "--seed) unless --weights is given; nothing is downloaded",
    )
    parser.add_argument(
        "--arch", help="architecture of a state_dict .pt file (torchvision:NAME or demo:NAME)"
    )
    parser.add_argument("--weights", type=Path, help="a state_dict to load into --model")
    parser.add_argument(
        "--seed",
        type=_count(*SEED_RANGE, shown="-2**63 to 2**64 - 1"),
        default=0,
        help="seed of random weights (default 0: the same every run)",
    )
    parser.add_argument(
        "--target", type=_count(0), help="class to explain (default: the predicted one)"
    )
    parser.add_argument(
        "--size",
        type=_count(1, MAX_SIZE),
        help="the model sees SIZE x SIZE inputs (default: 224 for images; 112 for video, 224 for "
        "s3d and MViT; 64 for the demo models); detectors and segmenters see the image's "
        "aspect ratio with its longer side SIZE (default 640 and 520; 96 for demo:detector); "
        "pictures keep the input's aspect ratio",
    )
    parser.add_argument(
        "--normalize",
        choices=NORMALIZE_CHOICES,
        default="auto",
        help="input normalisation (auto: ImageNet/Kinetics for torchvision models, the model's "
        "own mean and std for timm and Hugging Face models, none otherwise)",
    )
    parser.add_argument(
        "--frames", type=_count(1), default=16, help="frames per video window (default 16)"
    )
    parser.add_argument(
        "--layer",
        help="the CAM methods' layer, a dotted module name such as layer4, or several "
        "separated by commas (layer3,layer4: their maps scaled to 0..1 and averaged); "
        "default: the last module whose output is a grid over the input that the class "
        "score reaches",
    )
    parser.add_argument(
        "--samples",
        type=_count(1),
        help=f"samples drawn by {', '.join(SAMPLING_METHODS)} (their own defaults otherwise)",
    )
    parser.add_argument(
        "--design",
        help="how lime draws its masks (random, balanced, antithetic, sobol) or banzhaf its "
        "mixes (latin, uniform, swap, binary, centre, arcsine)",
    )
    parser.add_argument(
        "--swag",
        action="store_true",
        help="SWAG: segments built from the image and the attribution together (gradient methods)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when some inputs failed (default: 0 when any input was explained; the "
        "failures are printed and recorded either way, so a torchrun job with a corrupt "
        "file does not end as a crash)",
    )


def _row_options(parser: argparse.ArgumentParser) -> None:
    """The options of detectors (``--boxes``, ``--box-threshold``) and segmenters
    (``--classes``), whose images and video frames are explained a row per box or class."""
    parser.add_argument(
        "--boxes",
        type=_count(1),
        help="detection models: explain the best BOXES boxes of each image or video frame "
        "(default 3)",
    )
    parser.add_argument(
        "--box-threshold",
        type=_fraction,
        help="detection models: explain only boxes scored at least this, 0 to 1 (default 0.5)",
    )
    parser.add_argument(
        "--classes",
        type=_class_list,
        help="segmentation models: the classes to explain, each over the pixels the model gives "
        "it, separated by commas (default: the class given the most pixels, background aside)",
    )


def _common(parser: argparse.ArgumentParser, method_help: str | None = None) -> None:
    parser.add_argument(
        "--method",
        help=method_help
        or (
            f"{', '.join(METHOD_NAMES)}, or a region method: {', '.join(REGION_METHODS[:-1])} "
            f"or {REGION_METHODS[-1]}; "
            "default: integrated_gradients for images, gradcam for videos "
            "(integrated gradients cost 32 forward+backward passes of a 3-D CNN per window, "
            "Grad-CAM one forward and a partial backward)"
        ),
    )
    parser.add_argument(
        "--segments", type=_count(1), help="superpixels per image / supervoxels per clip"
    )
    parser.add_argument(
        "--top-k", type=_count(0), default=3, help="segments outlined in the pictures (default 3)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress, warnings or summary; only errors"
    )


def _check_options(args: argparse.Namespace) -> None:
    """The checks that need no model: before anything heavy loads."""
    if args.method is not None:
        check_method(args.method)
    _check_out(args.out)
    if getattr(args, "layer", None) is not None and (args.method or "gradcam") not in CAM_METHODS:
        raise UserError(
            f"--layer: only the CAM methods ({', '.join(CAM_METHODS)}) use a layer, not {args.method}"
        )
    if hasattr(args, "samples"):  # explain and explain-dataset
        for kind in ("image", "video", *ROW_KINDS):  # each kind's default method
            check_method_options(_method(args, kind), args.samples, args.design, args.swag)


def _check_out(out: Path) -> None:
    """An ``--out`` that is a folder, or that can be made in the nearest folder above it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    above = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not above.is_dir():
        raise UserError(f"--out: {out}: cannot make it, {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"--out: {out}: cannot write there, {above} is not writable")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options of ``--samples``, ``--design`` and ``--swag`` that were given."""
    given = {"n_samples": args.samples, "design": args.design, "swag": args.swag or None}
    return {k: v for k, v in given.items() if v is not None}


def _method(args: argparse.Namespace, kind: str) -> str:
    """The method for inputs of ``kind`` (``image``, ``video``, ``detection`` or
    ``segmentation``): ``--method``, or that kind's default."""
    return args.method or DEFAULT_METHODS.get(kind, DEFAULT_METHODS["image"])


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ demo


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from gswfast.demo import ACTIONS, SHAPES, action_clips, load, shape_images
    from gswfast.models import resolve_device
    from gswfast.regions import make_explainer

    device = resolve_device(args.device)
    method = args.method or "integrated_gradients"
    report: dict[str, Any] = {"device": str(device), "method": method}
    images = shape_images(8, generator=torch.Generator().manual_seed(2026))
    clips = action_clips(2, generator=torch.Generator().manual_seed(2026))
    for name, batch, labels, segments in (
        ("images", images, SHAPES, 20),
        ("clips", clips, ACTIONS, 60),
    ):
        model = load("shapes" if name == "images" else "actions", device)
        x, masks = batch.images.to(device), batch.masks.to(device)
        explainer = make_explainer(model, method, n_segments=args.segments or segments)
        expl, seconds = _timed(functools.partial(explainer, x), device)
        make_out_folder(args.out)
        files = _write_demo_pictures(expl, x, args.out, name, args.top_k)
        report[name] = _records(expl, batch.classes, labels, files, masks)
        report[f"{name}_seconds"] = seconds
        _say(args, _summary(name, report[name], seconds))
    from gswfast.detections import demo_scenes

    report["detection_method"] = args.method or DEFAULT_METHODS["detection"]
    records, summary, seconds = demo_scenes(
        device, report["detection_method"], args.out, args.top_k, n_segments=args.segments
    )
    report["detections"], report["detections_seconds"] = records, seconds
    _say(args, summary)
    (args.out / "demo.json").write_text(json.dumps(report, indent=1))
    _say(args, f"wrote {args.out}/demo.json and the pictures beside it")
    return 0


def _records(
    expl: Explanation,
    classes: torch.Tensor,
    labels: Sequence[str],
    files: list[list[str]],
    masks: torch.Tensor,
) -> list[dict[str, Any]]:
    import gswfast as gsw

    hits = gsw.metrics.pointing_game(expl, masks).tolist()
    mass = gsw.metrics.relevance_mass(expl, masks).tolist()
    ranking = expl.ranking()
    rows = []
    for b in range(expl.segment_scores.shape[0]):
        n = int(expl.num_segments[b])
        rows.append(
            {
                "files": files[b],
                "class": labels[int(classes[b])],
                "predicted": labels[int(expl.target[b])],
                "segment_scores": float32_list(expl.segment_scores[b, :n]),
                "ranking": ranking[b, :n].tolist(),
                "pointing_game": hits[b],
                "relevance_mass": round(mass[b], 4),
            }
        )
    return rows


def _summary(name: str, rows: list[dict[str, Any]], seconds: float) -> str:
    correct = sum(r["class"] == r["predicted"] for r in rows)
    hits = sum(r["pointing_game"] for r in rows)
    mass = sum(r["relevance_mass"] for r in rows) / len(rows)
    return (
        f"{len(rows)} demo {name}: {correct} classified right; best segment on the object in {hits}; "
        f"mean relevance mass {mass:.2f}; explained in {seconds * 1e3:.0f} ms"
    )


def _write_demo_pictures(
    expl: Explanation, x: torch.Tensor, out: Path, name: str, k: int
) -> list[list[str]]:
    from gswfast import render, viz
    from gswfast.video.io import write_mp4

    pictures = render.draw_picture(expl, x, k, size=256).cpu()
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


# ------------------------------------------------------------------------ explain


class InputFailed(Exception):
    """One input could not be explained; the others go on."""


def _run_explain(args: argparse.Namespace) -> int:
    from gswfast.video import media_kind

    for path in args.paths:
        if path.is_dir():
            raise UserError(
                f"{path} is a folder: explain takes image and video files; for a folder run "
                f"gswfast explain-dataset {path} --out FOLDER (resumable, torchrun-aware)"
            )

    kinds = [
        media_kind(path) or "image" for path in args.paths
    ]  # other suffixes: Pillow says what they are
    job = _ExplainJob(args)
    job.check_sheets(kinds)
    results: list[dict[str, Any]] = []
    counts = job.item_counts(args.paths, kinds)
    try:
        with job.progress(sum(counts)) as progress:
            for path, kind, stem, count in zip(
                args.paths, kinds, _unique_stems(args.paths, args.out), counts, strict=True
            ):
                before = progress.done
                try:
                    results.append(job.explain(path, kind, stem, progress))
                except UserError:
                    raise  # an option mistake: the same for every input
                except Exception as error:  # any other failure fails this input alone
                    failure = error if isinstance(error, InputFailed) else input_failed(path, error)
                    progress.write(f"gswfast: error: {failure}", always=True)
                    results.append({"input": str(path), "error": str(failure)})
                progress.set(max(progress.done, before + count))  # a failed input counts as done
    finally:
        job.remove_empty_folder()
    failed = sum("error" in r for r in results)
    if failed == len(results):
        return EXIT_USER_ERROR
    make_out_folder(args.out)  # with --no-pictures nothing else may have made it
    (args.out / "explanations.json").write_text(_json_text(results), encoding="utf-8")
    names = [Path(r["input"]).name for r in results if "error" in r]
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    _say(
        args,
        f"wrote {args.out}/explanations.json and the pictures beside it"
        + (
            f"; {failed} of {len(results)} inputs failed: {listed} (reasons there)"
            if failed
            else ""
        ),
    )
    return partial_exit(failed, args.strict)


def partial_exit(failed: int, strict: bool) -> int:
    """The exit code of a run where some inputs were explained and ``failed`` were not:
    0, or 1 with ``--strict``. A failed input is reported and recorded, not a crash: under
    torchrun an exit 1 reads as a crashed worker (``ChildFailedError``) and stops the
    others."""
    return EXIT_PARTIAL if failed and strict else 0


def input_failed(path: Path, error: BaseException) -> InputFailed:
    """A failure of any type on one input, in one line (``failure_line``)."""
    return InputFailed(f"{path}: {failure_line(error)}")


def _json_text(value: Any) -> str:
    """JSON with its text as is (UTF-8), or, when a file name is not UTF-8 (Latin-1 names
    from old archives), with ``\\uXXXX`` escapes, which give the name back exactly."""
    text = json.dumps(value, indent=1, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes are lone surrogates (PEP 383)
        return json.dumps(value, indent=1)
    return text


def _short(stem: str, limit: int = STEM_BYTES) -> str:
    """``stem`` cut to at most ``limit`` bytes of its file-system encoding, at a character."""
    kept, size = [], 0
    for char in stem:
        size += len(os.fsencode(char))
        if size > limit:
            break
        kept.append(char)
    return "".join(kept)


def _unique_stems(paths: Sequence[Path], out: Path) -> list[str]:
    """Output names: each input's stem, with ``-2``, ``-3``... when stems repeat
    (``a/x.png`` and ``b/x.jpg`` give ``x`` and ``x-2``) or when an output in ``out`` would
    overwrite an input (``--out`` the inputs' folder: ``x.png`` gives ``x-2.png``). A
    detector's pictures are ``<stem>.box<i>.png``: a stem that starts another's, dot
    included (``a`` and ``a.box0``), or an input in ``out`` named like one of its outputs,
    is taken too."""
    inputs = {path.resolve() for path in paths}
    in_out = [path.name.lower() for path in inputs if path.parent == out.resolve()]

    def clash(name: str, other: str) -> bool:
        return name == other or name.startswith(other + ".") or other.startswith(name + ".")

    def taken(name: str) -> bool:
        lower = name.lower()
        return (
            any(clash(lower, other) for other in used)
            or any((out / f"{name}{suffix}").resolve() in inputs for suffix in OUTPUT_SUFFIXES)
            or any(other.startswith(lower + ".") for other in in_out)
        )

    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = _short(path.stem), 1
        while taken(stem if n == 1 else f"{stem}-{n}"):
            n += 1
        stem = stem if n == 1 else f"{stem}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


class _ExplainJob:
    """The model, its settings and the output folder of one ``gswfast explain`` run."""

    def __init__(self, args: argparse.Namespace) -> None:
        from gswfast.models import default_size, load_model, normaliser, resolve_device

        self.args = args
        self.device = resolve_device(args.device)
        self.loaded = load_model(args.model, args.arch, args.weights, seed=args.seed)
        check_kind_options(
            self.loaded.kind,
            args.model,
            args.target,
            getattr(args, "boxes", None),
            getattr(args, "box_threshold", None),
            getattr(args, "classes", None),
        )
        if self.loaded.random_weights:
            _say(
                args,
                f"gswfast: warning: {self.loaded.name} has random weights (drawn from --seed "
                f"{self.loaded.seed}): the explanations show how gswfast works, not what a trained model "
                "sees; pass --weights FILE for trained weights",
            )
        stream = getattr(args, "stream", False)
        if stream and self.loaded.kind not in ROW_KINDS and (args.stride or 0) > args.frames:
            raise UserError(  # a window per --stride frames; detectors explain single frames
                f"--stride {args.stride}: --stream needs --stride <= --frames ({args.frames})"
            )
        self.model = self.loaded.module.to(self.device)
        self.size = args.size or default_size(args.model, args.arch, self.loaded.kind)
        self.preprocess = normaliser(args.normalize, self.loaded.normalisation, self.device)
        self._explainers: dict[str, Explainer | RegionExplainer] = {}
        # a detector's boxes: the best 3 scored 0.5 or more unless --boxes, --box-threshold
        self.boxes = getattr(args, "boxes", None) or DEFAULT_BOXES
        threshold = getattr(args, "box_threshold", None)
        self.box_threshold = DEFAULT_BOX_THRESHOLD if threshold is None else threshold
        self._folder_existed = args.out.exists()

    def item_counts(self, paths: Sequence[Path], kinds: Sequence[str | None]) -> list[int]:
        """Items per input, for the progress: one per image, one per video window (frame
        counts from the videos' headers where they have them)."""
        from gswfast.video import frame_count
        from gswfast.video.io import window_starts

        counts = []
        for path, kind in zip(paths, kinds, strict=True):
            if kind == "video" and self.loaded.kind in ROW_KINDS:
                counts.append(max(1, -(-frame_count(path) // (self.args.stride or ROW_STRIDE))))
            elif kind == "video":
                stride = self.args.stride or (4 if self.args.stream else self.args.frames)
                windows = window_starts(
                    frame_count(path), self.args.frames, stride, tail=not self.args.stream
                )
                counts.append(max(1, len(windows)))
            else:
                counts.append(1)
        return counts

    def columns(self) -> int:
        """Columns of a detector's or a segmenter's video sheet: a box or a class each."""
        if self.loaded.kind == "detection":
            return self.boxes
        return len(self.args.classes or [0])

    def check_sheets(self, kinds: Sequence[str]) -> None:
        """``UserError`` before any input is explained when a video's sheet of rows would not
        fit (``sheet_side``), so no earlier input's outputs are left without their JSON."""
        if self.args.pictures and self.loaded.kind in ROW_KINDS and "video" in kinds:
            sheet_side(self.columns())

    def progress(self, total: int) -> Progress:
        from gswfast.progress import Progress

        return Progress("gswfast explain", total, "item", quiet=self.args.quiet)

    def explain(self, path: Path, kind: str, stem: str, progress: Progress) -> dict[str, Any]:
        self._check_kind(path, kind)
        if self.loaded.kind in ROW_KINDS:
            if kind == "video":
                return self._rows_video(path, stem, progress)
            return self._explain_rows(path, stem, progress)
        if kind == "video" and self.args.stream:
            return self._stream_video(path, stem, progress)
        if kind == "video":
            return self._explain_video(path, stem, progress)
        return self._explain_image(path, stem, progress)

    def _check_kind(self, path: Path, kind: str) -> None:
        from gswfast.models import check_video_input

        model_kind = self.loaded.kind
        if model_kind in ROW_KINDS:  # images, and videos frame by frame
            return
        if model_kind != "any" and kind != model_kind:
            raise InputFailed(
                f"{path}: {'a video' if kind == 'video' else 'an image'} cannot go through the "
                f"{model_kind} model {self.args.model}"
            )
        if kind == "video":
            check_video_input(self.args.model, self.args.arch, self.args.frames, self.size)

    def explainer(self, kind: str) -> Explainer | RegionExplainer:
        from gswfast.models import command_explainer, layer_option

        method = _method(self.args, kind)
        if method not in self._explainers:
            options: dict[str, Any] = layer_option(self.args.layer, method)
            options.update(sampling_options(self.args))
            self._explainers[method] = command_explainer(
                self.model,
                method,
                preprocess=self.preprocess,
                n_segments=self.args.segments,
                channels_last=None,
                **options,
            )
        return self._explainers[method]

    def _labels_path(self, stem: str) -> Path:
        """``<stem>.labels.npz`` (an ``NpzWriter`` fills it as the explanations come): the
        segment ids (int32 ``[(T), H, W]`` at the model's input size) that the JSON's
        segment scores and rankings index, ``labels`` for an image, ``window_<first
        frame>`` per video window."""
        return self.folder() / f"{stem}.labels.npz"

    def _image_labels(self, stem: str, expl: Explanation, rows: Sequence[str] = ()) -> str:
        """``labels``: the image's segment ids; with ``rows`` (a detector's boxes, a
        segmenter's classes, one name each) whose segments differ (``--swag`` builds them
        per row), one array per row under its name instead."""
        from gswfast.viz import NpzWriter

        path = self._labels_path(stem)
        with NpzWriter(path) as labels:
            _add_labels(labels, expl, rows)
        return str(path)

    def folder(self) -> Path:
        out: Path = self.args.out  # argparse: type=Path
        return make_out_folder(out)  # made when the first output is written

    def remove_empty_folder(self) -> None:
        """No empty output folder left behind when nothing could be written."""
        out = self.args.out
        if not self._folder_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    def _explain_image(self, path: Path, stem: str, progress: Progress) -> dict[str, Any]:
        from gswfast import render, viz
        from gswfast.video import MediaError, read_image

        try:
            original = read_image(path)
        except MediaError as error:
            raise InputFailed(str(error)) from None
        image = render.resize_frames(original[None], self.size).to(self.device)
        expl, seconds = _timed(
            lambda: self._call(self.explainer("image"), image, path), self.device
        )
        out = self.folder() / f"{stem}.png" if self.args.pictures else None
        if out is not None:
            shape = render.picture_shape(original.shape[-2], original.shape[-1], PICTURE_SIDE)
            picture = render.draw_picture(expl, image, self.args.top_k, shape=shape)[0]
            viz.save_png(viz.captioned(picture, expl, 0, self.loaded.class_names), out)
        progress.update()
        return {
            "input": str(path),
            "output": None if out is None else str(out),
            "method": expl.method,
            **_scores(expl, 0, self.loaded.class_names),
            "labels": self._image_labels(stem, expl),
            "seconds": seconds,
        }

    def _read_keeping_aspect(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The file ``[3, H, W]`` and the model's input ``[1, 3, h, w]`` on the device, its
        longer side ``--size`` and the file's aspect ratio (detectors and segmenters take
        any shape)."""
        from gswfast import render
        from gswfast.video import MediaError, read_image

        try:
            original = read_image(path)
        except MediaError as error:
            raise InputFailed(str(error)) from None
        return original, render.resize_keeping_aspect(original[None], self.size).to(self.device)

    def _explain_rows(self, path: Path, stem: str, progress: Progress) -> dict[str, Any]:
        """A detector (its best ``--boxes`` boxes scored ``--box-threshold`` or more) or a
        segmenter (each of ``--classes`` over the pixels the model gives it) on an image, a
        row each: a picture per row with its box or mask outlined, and a sheet of them all."""
        original, image = self._read_keeping_aspect(path)
        rows = self._rows_of(image, path)
        for _, note in rows.notes:
            progress.write(f"gswfast: note: {note}")
        record: dict[str, Any] = {
            "input": str(path),
            "method": _method(self.args, self.loaded.kind),
        }
        if rows.target is None:  # a detector without a box worth explaining
            assert rows.found is not None  # a segmenter always has a row
            progress.update()
            return {**record, "output": None, "boxes": [], "best_score": round(rows.found.best, 6)}
        expl, seconds = self._explain_rows_of(image, path, rows)
        records = self._row_records(rows, expl, original.shape[-2:], image.shape[-2:])
        drawn = self._finish_rows(stem, rows, expl, (image, original), records, progress)
        return {**record, **drawn, self._rows_key(): records, "seconds": seconds}

    def _rows_key(self) -> str:
        return "boxes" if self.loaded.kind == "detection" else "classes"

    def _rows_of(self, image: torch.Tensor, path: Path, where: str | None = None) -> Rows:
        """The rows of ``image [1, 3, h, w]`` (``where`` names it in notes; default
        ``path``): the detector's boxes or the segmenter's classes; a failure of the model
        fails the input."""
        from gswfast import detections

        try:
            return detections.find_rows(
                self.model,
                self.loaded.kind,
                image,
                str(path) if where is None else where,
                boxes=self.boxes,
                box_threshold=self.box_threshold,
                classes=self.args.classes,
                preprocess=self.preprocess,
            )
        except UserError:
            raise  # --classes out of range: the same for every input
        except Exception as error:
            raise self._model_error(error, path, image) from None

    def _explain_rows_of(
        self,
        image: torch.Tensor,
        path: Path,
        rows: Rows,
        segmentation: Segmentation | None = None,
    ) -> tuple[Explanation, float]:
        """Each row of ``image [1, 3, h, w]`` explained (a detection target expands the
        image to a row per box itself; a segmenter's classes are a row each of the image),
        over ``segmentation`` (the image's, ``[1, h, w]``) where given; and the seconds."""
        from gswfast.detections import rows_input

        batch, seg = rows_input(image, rows, segmentation)
        explainer = self.explainer(self.loaded.kind)
        return _timed(lambda: self._call(explainer, batch, path, rows.target, seg), self.device)

    def _row_records(
        self,
        rows: Rows,
        expl: Explanation,
        file_shape: Sequence[int],
        model_shape: Sequence[int],
    ) -> list[dict[str, Any]]:
        """The JSON of each row: a box (in the file's pixels) and its score, or a class and
        its pixels; the row's segment scores."""
        from gswfast import detections

        names = self.loaded.class_names
        if rows.found is not None:
            to_file = (file_shape[0] / model_shape[0], file_shape[1] / model_shape[1])
            return [
                {**detections.box_record(rows.found, row, to_file), **_scores(expl, row, names)}
                for row in range(len(rows.names))
            ]
        assert rows.masks is not None  # a segmenter's rows
        return [
            {"pixels": int(rows.masks[row].sum()), **_scores(expl, row, names)}
            for row in range(len(rows.names))
        ]

    def _finish_rows(
        self,
        stem: str,
        rows: Rows,
        expl: Explanation,
        images: tuple[torch.Tensor, torch.Tensor],
        records: list[dict[str, Any]],
        progress: Progress,
    ) -> dict[str, Any]:
        """With pictures, each row's (its path in its record) and the sheet; the labels;
        the image record's ``output`` and ``labels``."""
        image, original = images
        output, written = None, [self._labels_path(stem)]
        try:
            if self.args.pictures:
                output = self._draw_rows(stem, rows, expl, image, original, written)
                for record, picture in zip(records, output[1], strict=True):
                    record["picture"] = picture
            labels = self._image_labels(stem, expl, rows.names)
        except BaseException:  # no partial outputs of a failed input
            _remove(*written)
            raise
        progress.update()
        return {"output": None if output is None else output[0], "labels": labels}

    def _draw_rows(
        self,
        stem: str,
        rows: Rows,
        expl: Explanation,
        image: torch.Tensor,
        original: torch.Tensor,
        written: list[Path],
    ) -> tuple[str, list[str]]:
        """One picture per row as ``<stem>.<row name>.png``, and all side by side as
        ``<stem>.png``; returns the sheet's path and the rows'. Each file goes into
        ``written`` before it is written."""
        from gswfast import detections, render, viz

        shape = render.picture_shape(original.shape[-2], original.shape[-1], PICTURE_SIDE)
        pictures = detections.row_pictures(
            expl, image, rows, self.args.top_k, shape, self.loaded.class_names
        )
        paths = []
        for name, picture in zip(rows.names, pictures, strict=True):
            paths.append(str(self.folder() / f"{stem}.{name}.png"))
            written.append(Path(paths[-1]))
            viz.save_png(picture, paths[-1])
        sheet = self.folder() / f"{stem}.png"
        written.append(sheet)
        viz.save_png(render.side_by_side(pictures), sheet)
        return str(sheet), paths

    def _rows_video(self, path: Path, stem: str, progress: Progress) -> dict[str, Any]:
        """A detector or a segmenter on a video: every ``--stride``-th frame (default 4) as
        an image, its superpixels warm-started from the last explained frame's (labels
        stay put where the scene does); the MP4 shows those frames at fps / stride, each a
        sheet of one column per row (``--boxes`` of them for a detector, grey where a frame
        has fewer boxes). JSON: a record per explained frame, in ``explanations.json`` or,
        with ``--stream``, a line each in ``<stem>.timeline.jsonl`` as they finish."""
        from gswfast.video import MediaError, read_video
        from gswfast.viz import NpzWriter

        stride = self.args.stride or ROW_STRIDE
        folder, labels_path = self.folder(), self._labels_path(stem)
        out = folder / f"{stem}.mp4"
        timeline_path = folder / f"{stem}.timeline.jsonl" if self.args.stream else None
        gif = folder / f"{stem}.gif"
        made = [p for p in (out, labels_path, timeline_path, gif) if p is not None]
        frames_seen, explained, sheet = 0, _FrameRecords(timeline_path), _RowSheet(self)
        try:
            frames, fps = read_video(path)
            with (
                _movie(out, fps / stride, self.args.pictures) as movie,
                NpzWriter(labels_path) as labels,
                explained,
            ):
                for index, frame in enumerate(frames):
                    frames_seen += 1
                    if index % stride == 0:
                        record = sheet.explain_frame(frame, index, path, labels, movie)
                        explained.add({"frame": index, **record})
                        progress.update()
            if not frames_seen:
                raise InputFailed(f"{path}: no frame could be decoded")
            if self.args.pictures:
                self._save_preview(sheet.preview, stem, fps / stride)
        except MediaError as error:
            _remove(*made)
            raise InputFailed(str(error)) from None
        except BaseException:  # no partial outputs of a failed input, whatever failed
            _remove(*made)
            raise
        for first, count in sheet.notes.values():  # a line per kind of note, not per frame
            more = f" (and {count - 1} more frame(s) alike)" if count > 1 else ""
            progress.write(f"gswfast: note: {first}{more}")
        return {
            "input": str(path),
            "output": str(out) if self.args.pictures else None,
            "fps": fps,
            "method": _method(self.args, self.loaded.kind),
            "stride": stride,
            "frames_seen": frames_seen,
            "labels": str(labels_path),
            **explained.summary(),
        }

    def _save_preview(self, preview: list[torch.Tensor], stem: str, fps: float) -> None:
        """``<stem>.gif``: the first 64 frames of a video's pictures ``[3, t, H, W]`` at half
        their size (Pillow's palettes)."""
        import torch

        from gswfast import render, viz

        frames = torch.cat(preview, 1)[:, :64]
        half = (max(1, frames.shape[-2] // 2), max(1, frames.shape[-1] // 2))
        viz.save_gif(
            render.resize_frames(frames[None], half)[0], self.folder() / f"{stem}.gif", fps
        )

    def _explain_video(self, path: Path, stem: str, progress: Progress) -> dict[str, Any]:
        """Window by window: decode, explain, write the pictures to the MP4; memory holds one
        window (and the first 64 frames for the GIF preview). The last window is aligned to
        the end of the video, so every frame is shown once."""

        from gswfast import render, viz
        from gswfast.video import MediaError, read_video, windows
        from gswfast.video.io import remember_shape
        from gswfast.viz import NpzWriter

        explained: list[dict[str, Any]] = []
        show = _FrameShower()
        out, labels_path = self.folder() / f"{stem}.mp4", self._labels_path(stem)
        try:
            frames, fps = read_video(path)
            frames, shape = remember_shape(frames)
            with _movie(out, fps, self.args.pictures) as movie, NpzWriter(labels_path) as labels:
                for start, clip in windows(
                    frames, self.args.frames, self.args.stride or self.args.frames, self.size
                ):
                    x = clip.to(self.device)[None]  # [1, 3, T, H, W]
                    call = functools.partial(self._call, self.explainer("video"), x, path)
                    expl, seconds = _timed(call, self.device)
                    labels.add(f"window_{start}", expl.labels[0].int())
                    explained.append(
                        {
                            "first_frame": start,
                            "frames": self.args.frames,
                            **_scores(expl, 0, self.loaded.class_names),
                            "seconds": seconds,
                        }
                    )
                    if movie is not None:
                        picture = render.draw_picture(
                            expl,
                            x,
                            self.args.top_k,
                            shape=render.picture_shape(shape[0][0], shape[0][1], PICTURE_SIDE),
                        )[0]
                        picture = viz.captioned(picture, expl, 0, self.loaded.class_names)
                        show.next_window(movie, start, picture)
                    progress.update()
                if movie is not None:
                    show.finish(movie)
        except MediaError as error:
            _remove(out, labels_path)
            raise InputFailed(str(error)) from None
        except BaseException:  # no partial outputs of a failed input, whatever failed
            _remove(out, labels_path)
            raise
        if not explained:
            _remove(out, labels_path)
            raise InputFailed(f"{path}: shorter than one window of --frames {self.args.frames}")
        if self.args.pictures:
            self._save_preview(show.preview, stem, fps)
        return {
            "input": str(path),
            "output": str(out) if self.args.pictures else None,
            "fps": fps,
            "method": _method(self.args, "video"),
            "labels": str(labels_path),
            "windows": explained,
        }

    def _stream_video(self, path: Path, stem: str, progress: Progress) -> dict[str, Any]:
        """``--stream``: frames go through ``StreamExplainer`` one by one (warm-started
        supervoxels); the MP4 shows each frame once, with the heatmap of the newest window
        holding it; ``<name>.timeline.jsonl`` gets one JSON line per window as it finishes.
        Frames after the last full window are not shown (counted in the JSON)."""
        from gswfast import render, viz
        from gswfast.models import layer_option
        from gswfast.video import MediaError, StreamExplainer, read_video
        from gswfast.viz import NpzWriter

        args, stride = self.args, self.args.stride or 4
        check_streamable(_method(args, "video"))
        options: dict[str, Any] = layer_option(args.layer, _method(args, "video"))
        options["target"] = args.target
        try:
            stream = StreamExplainer(
                self.model,
                window=args.frames,
                stride=stride,
                method=_method(args, "video"),
                n_segments=args.segments,
                device=self.device,
                preprocess=self.preprocess,
                **options,
            )
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from None
        folder = self.folder()
        labels_path = self._labels_path(stem)
        out, timeline_path, windows, frames_seen = (
            folder / f"{stem}.mp4",
            folder / f"{stem}.timeline.jsonl",
            0,
            0,
        )
        try:
            frames, fps = read_video(path)
            with (
                _movie(out, fps, args.pictures) as movie,
                open(timeline_path, "w") as timeline,
                NpzWriter(labels_path) as labels,
            ):
                for frame in frames:
                    frames_seen += 1
                    shape = render.picture_shape(frame.shape[-2], frame.shape[-1], PICTURE_SIDE)
                    x = render.resize_frames(frame[None], self.size)[0].to(self.device)
                    for result in self._push(stream, x, path):
                        self._check_target_width(result.logits.shape[-1])
                        fresh = (
                            result.clip.shape[2] if result.index == 0 else stride
                        )  # frames not shown yet
                        if movie is not None:
                            picture = render.draw_picture(
                                result.explanation, result.clip, args.top_k, shape=shape, last=fresh
                            )[0]
                            names = self.loaded.class_names
                            movie.write(viz.captioned(picture, result.explanation, 0, names))
                        labels.add(
                            f"window_{result.first_frame}",
                            result.explanation.labels[0].int(),
                        )
                        timeline.write(
                            json.dumps(_timeline_entry(result)) + "\n"
                        )  # streamed: constant memory
                        windows += 1
                        progress.update()
        except MediaError as error:
            _remove(out, timeline_path, labels_path)  # no partial outputs of a failed input
            raise InputFailed(str(error)) from None
        except BaseException:  # whatever failed
            _remove(out, timeline_path, labels_path)
            raise
        finally:
            stream.close()
        if not windows:
            _remove(out, timeline_path, labels_path)
            raise InputFailed(f"{path}: shorter than one window of --frames {args.frames}")
        left_out = frames_seen - (args.frames + (windows - 1) * stride)
        if left_out:
            progress.write(
                f"gswfast: note: {path}: its last {left_out} frame(s) come after the last full window "
                f"(--stride {stride}); they are not in {out.name}"
            )
        return {
            "input": str(path),
            "output": str(out) if args.pictures else None,
            "fps": fps,
            "method": _method(args, "video"),
            "stride": stride,
            "windows": windows,
            "frames_not_explained": left_out,
            "timeline": str(timeline_path),
            "labels": str(labels_path),
        }

    def _push(self, stream: StreamExplainer, frame: torch.Tensor, path: Path) -> list[WindowResult]:
        try:
            return stream.push(frame)
        except Exception as error:
            # A failed window breaks the stream; what failed is the error's cause.
            cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
            raise self._model_error(cause, path, frame) from None

    def _call(
        self,
        explainer: Explainer | RegionExplainer,
        x: torch.Tensor,
        path: Path,
        target: Any = None,
        segmentation: Segmentation | None = None,
    ) -> Explanation:
        """``explainer(x, target, segmentation)`` (default: ``--target``, SLIC), a failure
        reported as the model's."""
        try:
            target = self.args.target if target is None else target
            expl = explainer(x, target, segmentation=segmentation)
        except Exception as error:
            raise self._model_error(error, path, x) from None
        return expl

    def _check_target_width(self, classes: int) -> None:
        if self.args.target is not None and self.args.target >= classes:
            raise UserError(
                f"--target {self.args.target}: out of range for a model with {classes} outputs"
            )

    def _model_error(self, error: Exception, path: Path, x: torch.Tensor) -> Exception:
        """Option mistakes (target, layer) stop the run; a model that fails on one input
        fails that input."""
        message = str(error).strip()
        if isinstance(error, (ValueError, RuntimeError)) and message.startswith(
            ("target:", "layer:", "method:", "model:", "n_samples:", "design:")
        ):
            api_hint = message.find("; for other outputs pass target=")
            if api_hint >= 0:  # target= is the API's; say what the command can take
                message = (
                    message[:api_hint] + "; the command explains [B, classes] logits (first in "
                    "a tuple or list, 'logits' in a dict); explain other outputs from Python "
                    "with target= a function of the output"
                )
            return UserError(message.replace("pass layer=", "pass --layer NAME"))
        return InputFailed(
            f"{path}: the model {self.args.model} failed on an input of shape "
            f"{list(x.shape)}: {failure_line(error)}"
        )


def _movie(path: Path, fps: float, pictures: bool) -> contextlib.AbstractContextManager[Any]:
    """The MP4 writer of a video's pictures, encoding while the next window is explained, or
    None (as a context) with ``--no-pictures``."""
    from gswfast.video import Mp4Writer

    return Mp4Writer(path, fps, background=True) if pictures else contextlib.nullcontext()


class _FrameShower:
    """Writes each frame of a video once: a window's frames up to the next window's first
    frame (the last window's to its end), and keeps the first 64 for the GIF preview."""

    def __init__(self) -> None:
        self.shown = 0  # frames before this one are in the MP4 (or skipped by --stride)
        self.pending: tuple[int, torch.Tensor] | None = None  # (first frame, picture [3, T, H, W])
        self.preview: list[torch.Tensor] = []

    def next_window(self, movie: Mp4Writer, start: int, picture: torch.Tensor) -> None:
        if self.pending is not None:
            self._write(movie, until=start)
        self.pending = (start, picture)

    def finish(self, movie: Mp4Writer) -> None:
        if self.pending is not None:
            self._write(movie, until=None)
            self.pending = None

    def _write(self, movie: Mp4Writer, until: int | None) -> None:
        assert self.pending is not None  # callers write only a pending window
        start, picture = self.pending
        first = max(0, self.shown - start)
        last = picture.shape[1] if until is None else min(picture.shape[1], until - start)
        if last > first:
            movie.write(picture[:, first:last])
            if sum(p.shape[1] for p in self.preview) < 64:
                self.preview.append(picture[:, first:last])
        self.shown = max(self.shown, start + last)


SHEET_WIDTH = 3840  # a video's sheet at most this wide (4K); libx264 refuses 16384 and more


def sheet_side(columns: int, gap: int = 4) -> int:
    """The longer side of each picture of a video's sheet of ``columns`` columns:
    ``PICTURE_SIDE``, or less so that the sheet fits ``SHEET_WIDTH``; ``UserError`` when
    that leaves under 32 pixels (``--boxes`` or ``--classes`` asks too many columns)."""
    side = min(PICTURE_SIDE, (SHEET_WIDTH - gap * (columns - 1)) // columns)
    if side < 32:
        most = (SHEET_WIDTH + gap) // (32 + gap)
        raise UserError(
            f"--boxes/--classes: {columns} columns do not fit a video's pictures (at most {most}); "
            "explain fewer rows, or pass --no-pictures"
        )
    return side


def _add_labels(
    writer: NpzWriter, expl: Explanation, rows: Sequence[str] = (), frame: int | None = None
) -> None:
    """The segment ids of ``expl``: one array (``labels``, or ``frame_<frame>`` for a
    video's frame), or, when its ``rows`` (a detector's boxes, a segmenter's classes, a
    name each) have segments of their own (``--swag`` builds them per row), one array per
    row under its name (``frame_<frame>_<name>`` for a video's frame)."""
    import torch

    shared = all(torch.equal(expl.labels[0], row) for row in expl.labels[1:])
    if shared or not rows:
        writer.add("labels" if frame is None else f"frame_{frame}", expl.labels[0].int())
        return
    for name, row in zip(rows, expl.labels, strict=True):
        writer.add(name if frame is None else f"frame_{frame}_{name}", row.int())


class _FrameRecords:
    """The records of a video's explained frames: kept for ``explanations.json``, or, with
    a ``timeline`` path (``--stream``), written there a JSON line each as they come."""

    def __init__(self, timeline: Path | None) -> None:
        self.timeline, self.count = timeline, 0
        self.records: list[dict[str, Any]] = []
        self._file: TextIO | None = None

    def __enter__(self) -> _FrameRecords:
        if self.timeline is not None:
            self._file = open(self.timeline, "w", encoding="utf-8")  # closed by __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        if self._file is None:
            self.records.append(record)
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()  # a live reader sees each frame as it finishes

    def summary(self) -> dict[str, Any]:
        if self.timeline is None:
            return {"frames_explained": self.count, "frames": self.records}
        return {"frames_explained": self.count, "timeline": str(self.timeline)}


class _RowSheet:
    """A detector's or a segmenter's video, frame by frame: each explained frame's rows, its
    superpixels warm-started from the previous explained frame's, its sheet in the MP4."""

    def __init__(self, job: _ExplainJob) -> None:
        self.job = job
        self.previous: Segmentation | None = None  # the last explained frame's superpixels
        self.preview: list[torch.Tensor] = []  # the first 64 sheets, for the GIF
        self.notes: dict[str, tuple[str, int]] = {}  # per kind of note: (the first, count)
        self.columns = job.columns()
        self.empty = "no box" if job.loaded.kind == "detection" else "no class"
        self.side = sheet_side(self.columns) if job.args.pictures else PICTURE_SIDE

    def explain_frame(
        self,
        frame: torch.Tensor,
        index: int,
        path: Path,
        labels: NpzWriter,
        movie: Mp4Writer | None,
    ) -> dict[str, Any]:
        """Frame ``index`` (uint8 ``[3, H, W]``) explained: its labels added to ``labels``,
        its sheet to ``movie``; returns its record (without the frame number)."""
        from gswfast import detections, render

        job = self.job
        image = render.resize_keeping_aspect(frame[None], job.size).to(job.device)
        shape = render.picture_shape(frame.shape[-2], frame.shape[-1], self.side)  # pictures'
        where = f"{path} frame {index}"
        rows = job._rows_of(image, path, where)
        for kind, note in rows.notes:
            first, count = self.notes.get(kind, (note, 0))
            self.notes[kind] = (first, count + 1)
        pictures: list[torch.Tensor] = []
        if rows.target is None:
            assert rows.found is not None  # a segmenter always has a row
            record: dict[str, Any] = {"boxes": [], "best_score": round(rows.found.best, 6)}
        else:
            expl, seconds = job._explain_rows_of(image, path, rows, self._segment(image))
            records = job._row_records(rows, expl, frame.shape[-2:], image.shape[-2:])
            _add_labels(labels, expl, rows.names, frame=index)
            record = {job._rows_key(): records, "seconds": seconds}
            if movie is not None:
                pictures = detections.row_pictures(
                    expl, image, rows, job.args.top_k, shape, job.loaded.class_names
                )
        if movie is not None:
            self._show(movie, image, pictures, shape)
        return record

    def _segment(self, image: torch.Tensor) -> Segmentation | None:
        """``image``'s superpixels, warm-started from the last explained frame's; None with
        ``--swag`` (its segments follow each row's attribution)."""
        from gswfast.explain import DEFAULT_SEGMENTS
        from gswfast.segmentation import slic

        if self.job.args.swag:
            return None
        n_segments = self.job.args.segments or DEFAULT_SEGMENTS[4]
        seg = slic(image, n_segments=n_segments, compactness=10.0, init=self.previous)
        self.previous = seg
        return seg

    def _show(
        self,
        movie: Mp4Writer,
        image: torch.Tensor,
        pictures: list[torch.Tensor],
        shape: tuple[int, int],
    ) -> None:
        """The frame's sheet: its rows' pictures, then grey columns up to ``columns``."""
        from gswfast import detections, render

        blank = [detections.empty_picture(image, shape, self.empty)] * (
            self.columns - len(pictures)
        )
        sheet = render.side_by_side(pictures + blank)[:, None]  # [3, 1, H, W]
        movie.write(sheet)
        if sum(p.shape[1] for p in self.preview) < 64:
            self.preview.append(sheet)


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _timeline_entry(result: WindowResult) -> dict[str, Any]:
    return {
        "window": result.index,
        "first_frame": result.first_frame,
        "last_frame": result.last_frame,
        "target": result.target,
        "score": float32_list(result.logits[result.target : result.target + 1])[0],
        "latency_ms": round(result.latency * 1e3, 3),
        "segment_scores": float32_list(result.explanation.segment_scores[0]),
    }


def _scores(expl: Explanation, b: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    from gswfast.viz import class_name

    n = int(expl.num_segments[b])
    target = int(expl.target[b])
    name = class_name(class_names, target)
    out: dict[str, Any] = {
        "target": target,
        **({"class": name} if name is not None else {}),
        "segment_scores": float32_list(expl.segment_scores[b, :n]),
        "ranking": expl.ranking()[b, :n].tolist(),
    }
    if "tied" in expl.info:  # every segment scores the same: no best segment, none outlined
        out["tied"] = bool(expl.info["tied"][b])
    if "layer" in expl.info:  # Grad-CAM: the layer it read, how, and whether its map says anything
        out["layer"] = expl.info["layer"]
        out["layout"] = expl.info["layout"]
        out["degenerate"] = bool(expl.info["degenerate"][b])
    return out


def float32_list(values: torch.Tensor) -> list[float]:
    """Python floats that print as the shortest decimals giving back each float32 value
    exactly (``0.1`` for float32 0.1, no 6-decimal rounding)."""
    import numpy as np

    return [float(str(v)) for v in values.detach().float().cpu().numpy().astype(np.float32)]


# ------------------------------------------------------------------------ explain-dataset


def _run_dataset(args: argparse.Namespace) -> int:
    from gswfast.dataset import explain_dataset

    manifest = explain_dataset(
        args.source,
        args.out,
        args.model,
        arch=args.arch,
        weights=args.weights,
        method=args.method,
        segments=args.segments,
        size=args.size,
        normalize=args.normalize,
        batch_size=args.batch_size,
        frames=args.frames,
        stride=args.stride,
        target=args.target,
        seed=args.seed,
        layer=args.layer,
        boxes=args.boxes,
        box_threshold=args.box_threshold,
        classes=args.classes,
        pictures=args.pictures,
        overwrite=args.overwrite,
        **sampling_options(args),
        device=args.device,
        quiet=args.quiet,
    )
    if manifest is None:  # not rank 0
        return 0
    totals = manifest["totals"]
    _say(
        args,
        f"{totals['done']} items done, {totals['failed']} failed, {totals['missing']} missing "
        f"({totals['processes']} processes); wrote {args.out}/manifest.json",
    )
    if totals["done"] == 0 and totals["items"] > 0:
        return EXIT_USER_ERROR if totals["missing"] == 0 else EXIT_PARTIAL
    if totals["failed"]:  # even with --quiet, which silences all but errors
        print(
            f"gswfast: {totals['failed']} items failed: their reasons are in "
            f"{args.out}/items/*.failed.json and manifest.json"
            + ("" if args.strict else " (--strict makes this exit 1)"),
            file=sys.stderr,
        )
    if totals["missing"]:  # a rank did not finish: rerun the job
        return EXIT_PARTIAL
    return partial_exit(totals["failed"], args.strict)


# ------------------------------------------------------------------------ helpers


def _timed(fn: Callable[[], _T], device: torch.device) -> tuple[_T, float]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
