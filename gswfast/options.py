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


class UserError(ValueError):
    """A mistake in the options or the files: reported in one line, exit code 2."""


def check_method(name: str) -> str:
    """``name`` if it is a method of ``gswfast.explain``, else ``UserError``."""
    if name not in METHOD_NAMES:
        raise UserError(f"--method: expected one of {', '.join(METHOD_NAMES)}, got {name!r}")
    return name


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
