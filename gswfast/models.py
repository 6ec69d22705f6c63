"""Models for the command and dataset jobs: loading, normalisation, input sizes, devices.

``load_model(spec)`` builds ``torchvision:NAME`` (classifiers and video classifiers only,
random weights unless given, never downloaded), ``timm:NAME`` (random weights),
``hf:FOLDER`` (a Hugging Face image classifier saved with ``save_pretrained``, loaded
offline), ``demo:NAME`` (the shipped demo models) or a ``.pt`` file (TorchScript, or a
state_dict with ``arch``). Everything the user can get
wrong raises ``UserError`` with a one-line message naming the option; the command prints it
as ``gswfast: error: ...`` and exits 2.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch

from gswfast._extension import cuda_available
from gswfast.demo.data import ACTIONS, SHAPES
from gswfast.demo.models import ARCHITECTURES
from gswfast.demo.models import load as load_demo
from gswfast.explain import Explainer
from gswfast.options import CAM_METHODS, UserError, check_method  # noqa: F401  (re-exported: the command and dataset use them)
from gswfast.regions import RegionExplainer, make_explainer

NORMALISATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "kinetics": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
}
# What torchvision's video models take, probed with torchvision 0.29 (every other video
# model runs at 112x112 with 8 or more frames): s3d pools 7x7 (and 2 in time) after its
# /32 (/8 in time) strides; MViT's position embeddings fix its input at 16 x 224 x 224.
VIDEO_MIN_INPUTS = {"s3d": (16, 224)}  # (frames, side): at least
VIDEO_EXACT_INPUTS = {"mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224)}  # (frames, side): exactly
# torchvision model families that do not return class scores [B, classes].
_NOT_CLASSIFIERS = {
    "optical_flow": "an optical flow model (it returns flow fields, not class scores)",
    "quantization": "a quantized model (quantized layers have no gradients)",
}


MeanStd = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class LoadedModel:
    """A model ready to explain: ``module`` in eval mode on the CPU, its input ``kind``
        (``image``, ``video`` or ``any`` for TorchScript), its ``normalisation`` (a name,
        ``imagenet``, ``kinetics`` or ``none``, or the model's own (mean, std), as timm's
        configuration gives), its ``name`` for messages, and whether its weights are random
        (``seed`` drew them), and ``class_names`` where the model says what its outputs are
    (the demo models, a Hugging Face config's ``id2label``)."""

    module: torch.nn.Module
    kind: str
    normalisation: str | MeanStd
    name: str
    random_weights: bool = False
    seed: int | None = None
    class_names: tuple[str, ...] | None = None  # what each output means, where known

    def eval_mode(self) -> LoadedModel:
        self.module.eval()
        return self


def load_model(
    spec: str, arch: str | None = None, weights: str | Path | None = None, seed: int = 0
) -> LoadedModel:
    """The model named by ``spec`` (``torchvision:NAME``, ``demo:NAME`` or a .pt file).

    torchvision models get random weights drawn from ``seed`` (the same on every run)
    unless ``weights`` names a state_dict; nothing is ever downloaded."""
    if spec.endswith((".pt", ".pth")) or (spec and Path(spec).exists()):  # Path("") is "."
        return _model_file(Path(spec), arch, weights, seed)
    if arch is not None:
        raise UserError(
            f"--arch: only a state_dict .pt --model takes --arch; --model {spec} names its "
            "architecture itself"
        )
    loaded = _named_model(spec, seed, "--model")
    if weights is not None:
        _load_weights(loaded.module, Path(weights), spec, "--weights")
        loaded.random_weights, loaded.seed = False, None
    return loaded.eval_mode()


def default_size(spec: str, arch: str | None, kind: str) -> int:
    """Input side: 64 for the demo models (96 for the demo detector); 112 for video models
    (224 for s3d and MViT, which need it); timm and Hugging Face models' own configured
    size; the longer side 640 for detectors and 520 for segmenters; 224 for the rest."""
    if spec == "demo:detector" or arch == "demo:detector":
        return 96  # detection_scenes' size
    if spec.startswith("demo:") or (arch or "").startswith("demo:"):
        return 64
    if spec.startswith("timm:"):
        return _timm_size(spec.partition(":")[2])
    if spec.startswith("hf:"):
        return _hf_size(Path(spec.partition(":")[2]))
    if kind in ("detection", "segmentation"):  # the longer side; the aspect ratio is kept
        return {"detection": 640, "segmentation": 520}[kind]
    if kind != "video":
        return 224
    name = _torchvision_name(spec, arch) or ""
    return {**VIDEO_MIN_INPUTS, **VIDEO_EXACT_INPUTS}.get(name, (0, 112))[1]


def check_video_input(spec: str, arch: str | None, frames: int, size: int) -> None:
    """``UserError`` when a torchvision video model cannot take ``frames`` x ``size`` x
    ``size`` clips (found by probing each model; see ``VIDEO_MIN_INPUTS``)."""
    name = _torchvision_name(spec, arch) or ""
    if name in VIDEO_EXACT_INPUTS and (frames, size) != VIDEO_EXACT_INPUTS[name]:
        t, side = VIDEO_EXACT_INPUTS[name]
        raise UserError(
            f"--frames {frames} --size {size}: torchvision:{name} takes clips of exactly {t} frames "
            f"of {side}x{side} (--frames {t} --size {side})"
        )
    t, side = VIDEO_MIN_INPUTS.get(name, (1, 1))
    if frames < t or size < side:
        raise UserError(
            f"--frames {frames} --size {size}: too small for torchvision:{name}, which needs at least "
            f"{t} frames of {side}x{side} (--frames {t} --size {side})"
        )


def normaliser(
    choice: str, default: str | MeanStd, device: torch.device | str
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ``preprocess`` for ``--normalize`` (None for ``none``); ``auto`` takes ``default``,
    a name or the model's own (mean, std)."""
    name = default if choice == "auto" else choice
    if name == "none":
        return None
    if isinstance(name, str) and name not in NORMALISATION:
        raise UserError(f"--normalize: expected auto, imagenet, kinetics or none, got {choice!r}")
    pair = NORMALISATION[name] if isinstance(name, str) else name
    mean, std = (torch.tensor(v, device=device) for v in pair)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        shape = (1, 3) + (1,) * (x.dim() - 2)
        return (x - mean.view(shape)) / std.view(shape)

    return normalise


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (``cuda:local_rank`` when the CUDA kernels are built and a GPU is visible,
    else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``UserError`` when it is not there."""
    gpu = torch.cuda.is_available() and cuda_available()
    if name == "auto":
        return (
            torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
            if gpu
            else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda" and not gpu:
        raise UserError(
            f"--device {name}: no CUDA device (or gswfast was built without CUDA kernels)"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def command_explainer(
    model: torch.nn.Module, method: str, **options: Any
) -> Explainer | RegionExplainer:
    """``make_explainer`` for the command and explain-dataset: a method option the method
    refuses is a ``UserError`` naming ``--method``."""
    try:
        return make_explainer(model, method, **options)
    except (ValueError, TypeError) as error:  # the options of the method
        raise UserError(f"--method {method}: {error}") from None


def layer_option(layer: str | None, method: str) -> dict[str, str | list[str]]:
    """``{"layer": layer}`` for the CAM methods (empty without a layer; a list for names
    separated by commas); ``UserError`` for a layer given to another method."""
    if layer is None:
        return {}
    if method not in CAM_METHODS:
        raise UserError(
            f"--layer: only the CAM methods ({', '.join(CAM_METHODS)}) use a layer, and this "
            f"input's method is {method}"
        )
    names = [name.strip() for name in layer.split(",")]
    return {"layer": names} if len(names) > 1 else {"layer": names[0]}


# ------------------------------------------------------------------------ helpers


def _torchvision_names(family: str) -> list[str]:
    import torchvision

    module = (
        torchvision.models if family == "classification" else getattr(torchvision.models, family)
    )
    names: list[str] = torchvision.models.list_models(module=module)  # untyped import: Any
    return names


def _torchvision_name(spec: str, arch: str | None) -> str | None:
    for text in (spec, arch or ""):
        source, _, name = text.partition(":")
        if source == "torchvision":
            return name
    return None


def _named_model(spec: str, seed: int, flag: str) -> LoadedModel:
    source, _, name = spec.partition(":")
    if source == "demo":
        if name not in ARCHITECTURES:
            raise UserError(
                f"{flag}: unknown demo model {name!r} (choose from {', '.join(sorted(ARCHITECTURES))})"
            )
        if name == "detector":  # torchvision's Faster R-CNN: class 0 is the background
            module = load_demo(name)  # every box kept: --box-threshold picks them
            module.roi_heads.score_thresh = 0.0  # type: ignore[union-attr]
            names = ("__background__", *SHAPES)
            return LoadedModel(module, "detection", "none", spec, class_names=names)
        names = ACTIONS if name == "actions" else SHAPES
        kind = "video" if name == "actions" else "image"
        return LoadedModel(load_demo(name), kind, "none", spec, class_names=tuple(names))
    if source == "torchvision":
        kind = _torchvision_kind(name, flag)
        with torch.random.fork_rng(devices=[]):  # the same random weights on every run
            torch.manual_seed(seed)
            module = _build_torchvision(name)
        # detectors normalise inside (their transform); segmenters expect ImageNet's
        normalisation = {"video": "kinetics", "detection": "none"}.get(kind, "imagenet")
        categories = (
            _torchvision_categories(name) if kind in ("detection", "segmentation") else None
        )
        return LoadedModel(module, kind, normalisation, spec, True, seed, class_names=categories)
    if source == "timm":
        return _timm_model(name, seed, flag, spec)
    if source == "hf":
        return _hf_model(Path(name), flag, spec)
    files = " or a .pt file" if flag == "--model" else ""  # --arch names an architecture
    raise UserError(
        f"{flag}: expected torchvision:NAME, timm:NAME, hf:FOLDER or demo:NAME{files}, got {spec!r}"
    )


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError(
            "--model: timm:NAME needs the timm package, which is not installed (pip install timm)"
        ) from None
    return timm


def _timm_model(name: str, seed: int, flag: str, spec: str) -> LoadedModel:
    """A timm image classifier with random weights drawn from ``seed`` (never downloaded),
    normalised with the mean and std of its own configuration."""
    timm = _timm()
    if name not in timm.list_models():
        raise UserError(f"{flag}: unknown timm model {name!r} (timm.list_models() lists them)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module: torch.nn.Module = timm.create_model(name, pretrained=False)
    config = getattr(module, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    normalisation: str | MeanStd = (
        (tuple(mean), tuple(std)) if mean is not None and std is not None else "imagenet"
    )
    return LoadedModel(module, "image", normalisation, spec, True, seed)


def _hf_model(folder: Path, flag: str, spec: str) -> LoadedModel:
    """A Hugging Face image classifier saved in ``folder`` (``save_pretrained``: its
    ``config.json`` and weights), loaded offline with its own weights; normalised with the
    mean and std of the folder's ``preprocessor_config.json`` (ImageNet's without one)."""
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{flag}: {spec}: expected a folder holding a Hugging Face model's config.json "
            "(what save_pretrained writes)"
        )
    try:
        import transformers
    except ImportError:
        raise UserError(
            f"{flag}: hf:FOLDER needs the transformers package, which is not installed "
            "(pip install transformers)"
        ) from None
    try:
        with _hf_quiet(transformers):
            module: torch.nn.Module = transformers.AutoModelForImageClassification.from_pretrained(
                str(folder), local_files_only=True
            )
    except (OSError, ValueError, KeyError) as error:  # no weights, another task, bad JSON
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{flag}: {spec}: cannot load it as an image classifier ({first})"
        ) from None
    preprocessing = _hf_preprocessing(folder)
    mean, std = preprocessing.get("image_mean"), preprocessing.get("image_std")
    normalisation: str | MeanStd = "imagenet"
    if preprocessing.get("do_normalize") is False:
        normalisation = "none"
    elif _three_floats(mean) and _three_floats(std):
        normalisation = (tuple(mean), tuple(std))
    return LoadedModel(module, "image", normalisation, spec, class_names=_hf_names(module))


def _hf_names(module: torch.nn.Module) -> tuple[str, ...] | None:
    """The config's ``id2label`` as a tuple of names, when it names every output."""
    labels = getattr(getattr(module, "config", None), "id2label", None) or {}
    if set(labels) != set(range(len(labels))):
        return None
    return tuple(str(labels[i]) for i in range(len(labels)))


@contextlib.contextmanager
def _hf_quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or info logs from transformers while loading (the command's output
    is its own), put back as they were afterwards."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _hf_preprocessing(folder: Path) -> dict[str, Any]:
    """The folder's ``preprocessor_config.json`` (empty when absent or unreadable)."""
    import json

    try:
        config = json.loads((folder / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _three_floats(value: object) -> TypeGuard[list[float]]:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) for v in value)
    )


def _hf_size(folder: Path) -> int:
    """The input side of a Hugging Face folder: its preprocessor's ``size`` (an int, or
    ``height``/``shortest_edge``), else its config's ``image_size``, else 224."""
    import json

    size = _hf_preprocessing(folder).get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    if isinstance(size, int) and size > 0:
        return size
    try:
        config = json.loads((folder / "config.json").read_text())
        side = config.get("image_size") if isinstance(config, dict) else None
    except (OSError, ValueError):
        side = None
    if isinstance(side, list) and side:
        side = side[-1]
    return side if isinstance(side, int) and side > 0 else 224


def _timm_size(name: str) -> int:
    """The input side timm's configuration of ``name`` gives (224 when it gives none)."""
    try:
        size = _timm().get_pretrained_cfg(name).input_size[-1]
    except (AttributeError, RuntimeError, ValueError):
        return 224
    return int(size)


def _torchvision_kind(name: str, flag: str) -> str:
    import torchvision

    if name in _torchvision_names("video"):
        return "video"
    if name in _torchvision_names("classification"):
        return "image"
    if name in _torchvision_names("detection"):
        return "detection"
    if name in _torchvision_names("segmentation"):
        return "segmentation"
    for family, why in _NOT_CLASSIFIERS.items():
        if name in _torchvision_names(family):
            raise UserError(
                f"{flag}: torchvision:{name} is {why}; gswfast explains torchvision's "
                "classification, video, detection and segmentation models"
            )
    if name in torchvision.models.list_models():
        raise UserError(
            f"{flag}: torchvision:{name} is not a classifier; gswfast explains classifiers"
        )
    raise UserError(f"{flag}: unknown torchvision model {name!r}")


def _torchvision_categories(name: str) -> tuple[str, ...] | None:
    """The class names of a torchvision model's default weights (COCO for detectors, VOC
    for segmenters), read from the weights' metadata, nothing downloaded."""
    import torchvision

    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    except (ValueError, AttributeError):
        return None
    categories = meta.get("categories")
    return tuple(categories) if categories else None


def _build_torchvision(name: str) -> torch.nn.Module:
    """torchvision's builder with no weights at all (nor backbone weights): no download."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    options: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        options["weights_backbone"] = None
    if name in _torchvision_names("detection"):  # every box, the command keeps the best
        options["box_score_thresh" if "rcnn" in name else "score_thresh"] = 0.0
    model: torch.nn.Module = builder(**options)  # untyped import: Any
    return model


def _model_file(path: Path, arch: str | None, weights: str | Path | None, seed: int) -> LoadedModel:
    if not path.is_file():
        raise UserError(f"--model: {path}: no such file")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, and still what users have
            warnings.simplefilter("ignore", FutureWarning)
            # torch.jit.load is unannotated in torch
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError):
        module = None  # not TorchScript: a state_dict for --arch
    if module is not None:
        if arch is not None or weights is not None:
            raise UserError(
                f"--model: {path} is TorchScript, which carries its own architecture and weights; "
                "drop --arch and --weights"
            )
        return LoadedModel(module.eval(), "any", "none", str(path))
    if arch is None:
        raise UserError(f"--model: {path} {_what_file(path)}")
    if weights is not None:
        raise UserError(
            f"--weights: --model {path} is already the weights file of --arch {arch}; drop --weights"
        )
    loaded = _named_model(arch, seed, "--arch")
    _load_weights(loaded.module, path, arch, "--model")
    loaded.random_weights, loaded.seed, loaded.name = False, None, f"{path} ({arch})"
    return loaded.eval_mode()


def _what_file(path: Path) -> str:
    """What a .pt file that is not TorchScript is, and what to do with it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            return (
                "is a pickled Python object (torch.save(model)), which gswfast does not load: "
                "unpickling runs whatever code the file names. Save model.state_dict() and pass "
                "it with --arch NAME, or save torch.jit.script(model)"
            )
        return f"is neither TorchScript nor a state_dict ({type(error).__name__})"
    if isinstance(state, dict):
        return "is a state_dict; give its architecture with --arch (torchvision:NAME, timm:NAME, demo:NAME)"
    return f"holds a {type(state).__name__}, not TorchScript or a state_dict"


def _load_weights(model: torch.nn.Module, path: Path, name: str, flag: str) -> None:
    if not path.is_file():
        raise UserError(f"{flag}: {path}: no such file")
    if _is_torchscript(path):
        raise UserError(
            f"{flag}: {path} is a TorchScript model, not a state_dict; pass it as --model {path}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors all mean: not a weights file
        raise UserError(
            f"{flag}: {path}: cannot read it as a state_dict ({type(error).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{flag}: {path}: expected a state_dict, got {type(state).__name__}")
    state = _without_wrapper_prefix(state, model)
    problem = weight_mismatch(model, state)
    if problem:
        raise UserError(f"{flag}: {path} does not fit {name}: {problem}")
    model.load_state_dict(state)


def _without_wrapper_prefix(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``state`` without the ``module.`` prefix that ``nn.DataParallel`` and
    ``DistributedDataParallel`` put on every name, when the model's own names have none (as
    ``--layer`` takes names with or without it)."""
    prefix = "module."
    if not state or not all(k.startswith(prefix) for k in state):
        return state
    if any(k.startswith(prefix) for k in model.state_dict()):
        return state
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with ``constants.pkl`` (as ``torch.load`` tells them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def weight_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> str:
    """A short account of how ``state`` does not fit ``model`` ('' when it fits): counts of
    missing, unexpected and differently shaped tensors, with the first two names of each."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(getattr(state[k], 'shape', []))} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("with another shape", shapes),
    ):
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > 2 else ""
            parts.append(f"{len(names)} tensor(s) {label} ({', '.join(names[:2])}{more})")
    return "; ".join(parts)
