"""What the command checks before anything heavy loads: the method names, ``check_method``
and ``UserError``. No torch here, so ``gswfast --help`` and option mistakes are fast.
"""

from __future__ import annotations

# The methods of gswfast.explain (gswfast.attribution.METHODS is this tuple), here without torch
METHOD_NAMES: tuple[str, ...] = (
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "lime_ig",
    "banzhaf",
    "smoothgrad",
    "gradcam",
    "guided_backprop",
)


class UserError(ValueError):
    """A mistake in the options or the files: reported in one line, exit code 2."""


def check_method(name: str) -> str:
    """``name`` if it is a method of ``gswfast.explain``, else ``UserError``."""
    if name not in METHOD_NAMES:
        raise UserError(f"--method: expected one of {', '.join(METHOD_NAMES)}, got {name!r}")
    return name
