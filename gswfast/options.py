"""What the command checks before anything heavy loads: the method names, ``check_method``,
``UserError``, ``make_out_folder`` and ``failure_line``. No torch here, so ``gswfast --help`` and option
mistakes are fast.
"""

from __future__ import annotations

from pathlib import Path

# The class activation map methods: each reads one layer's activations (``layer=``).
CAM_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam_plus_plus",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
)
# The methods of gswfast.explain (gswfast.attribution.METHODS is this tuple), here without torch
METHOD_NAMES: tuple[str, ...] = (
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "lime_ig",
    "banzhaf",
    "smoothgrad",
    *CAM_METHODS,
    "guided_backprop",
)


PICTURE_SIDE = 448  # the longer side of the pictures both commands write


# Per input kind: integrated gradients for images; Grad-CAM for video, where integrated
# gradients cost 32 forward+backward passes of a 3-D CNN per window (48 s on a 2-core CPU
# for r2plus1d_18, against 1-5 s for Grad-CAM).
# Detectors and segmenters: input x gradient, one pass per explained box or class (their
# models cost 10-100x a classifier's pass).
DEFAULT_METHODS = {
    "image": "integrated_gradients",
    "video": "gradcam",
    "detection": "input_x_gradient",
    "segmentation": "input_x_gradient",
}
# The region methods (gswfast.lime and gswfast.regions), methods of the command beside
# gswfast.explain's; their explainer is gswfast.regions.RegionExplainer.
REGION_METHODS: tuple[str, ...] = ("lime", "occlusion", "kernel_shap", "rise")
# The command's options that only some methods take
SAMPLING_METHODS: tuple[str, ...] = ("lime", "kernel_shap", "rise", "banzhaf", "smoothgrad")
DESIGN_METHODS: tuple[str, ...] = ("lime", "banzhaf")


class UserError(ValueError):
    """A mistake in the options or the files: reported in one line, exit code 2."""


def check_method(name: str) -> str:
    """``name`` if it is a method of ``gswfast.explain`` or a region method, else
    ``UserError``."""
    if name not in METHOD_NAMES + REGION_METHODS:
        names = ", ".join(METHOD_NAMES + REGION_METHODS)
        raise UserError(f"--method: expected one of {names}, got {name!r}")
    return name


ROW_KINDS: tuple[str, ...] = ("detection", "segmentation")  # models explained a row per box/class
ROW_STRIDE = 4  # frames between a detector's or segmenter's explained video frames
DEFAULT_BOXES, DEFAULT_BOX_THRESHOLD = 3, 0.5  # a detector's boxes explained per image


def check_kind_options(
    kind: str,
    model: str,
    target: int | None,
    boxes: int | None,
    box_threshold: float | None,
    classes: list[int] | None,
) -> None:
    """``UserError`` for an option the model's ``kind`` does not take: ``--target`` (classes
    of a classifier), ``--boxes`` and ``--box-threshold`` (detectors), ``--classes``
    (segmenters)."""
    given = {
        "--target": target is not None and kind in ROW_KINDS,
        "--boxes": boxes is not None and kind != "detection",
        "--box-threshold": box_threshold is not None and kind != "detection",
        "--classes": classes is not None and kind != "segmentation",
    }
    wrong = next((flag for flag, refused in given.items() if refused), None)
    if wrong is not None:
        what = "classifier" if kind in ("image", "video", "any") else f"{kind} model"
        raise UserError(
            f"{wrong}: not for a {what} ({model}): --target is a classifier's, --boxes and "
            "--box-threshold a detector's, --classes a segmenter's"
        )


def check_method_options(method: str, samples: int | None, design: str | None, swag: bool) -> None:
    """``UserError`` for ``--samples``, ``--design`` or ``--swag`` given to a method that
    does not take it."""
    if samples is not None and method not in SAMPLING_METHODS:
        raise UserError(f"--samples: only {', '.join(SAMPLING_METHODS)} draw samples, not {method}")
    if design is not None and method not in DESIGN_METHODS:
        raise UserError(
            f"--design: only {' and '.join(DESIGN_METHODS)} take a design, not {method}"
        )
    if swag and method in REGION_METHODS:
        raise UserError(
            f"--swag: SWAG builds segments from a pixel attribution; the region method {method} "
            "has none (use a gradient method)"
        )


def make_out_folder(folder: Path) -> Path:
    """Makes ``folder`` (an ``--out`` or a folder in it); ``UserError`` when the system
    refuses what the option checks could not see (/proc, a read-only file system)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out: cannot make {folder} ({error.strerror})") from None
    return folder


def failure_line(error: BaseException) -> str:
    """Any exception in one line: its type (with its module where it is not a builtin, as
    ``torch.jit.Error``) and its last message line (a TorchScript error's is the ``raise``
    in the model's code), cut at 300 characters."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{name}: {lines[-1][:300]}" if lines else name


def check_streamable(method: str) -> None:
    """``UserError`` for a region method with ``--stream`` (checked when a video streams)."""
    if method in REGION_METHODS:
        raise UserError(
            f"--stream: the streaming explainer runs gswfast.explain's methods; explain a video "
            f"with {method} window by window without --stream"
        )
