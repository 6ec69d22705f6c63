"""Scorers made of one backward pass: gradient, input x gradient, guided backprop.

A scorer is called as ``scorer(forward, x, target, sample)``: ``x [N, C, (T), H, W]`` are
the rows to score, ``target [N]`` their classes (``None``: predicted; or an
``OutputTarget``) and ``sample [N]`` the row's sample in the original batch (``None``: row
``i`` is sample ``i``), used to pick per-sample tensors such as baselines and additional
forward args when a wrapper (smoothgrad) adds rows. It returns
the attribution ``[N, C, (T), H, W]`` and the targets ``[N]``.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gswfast.attribution._model import ModelForward, OutputTarget, Resolved, input_gradient


class Scorer(Protocol):
    """What every scorer is: ``scorer(forward, x, target, sample)`` (see above)."""

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]: ...


def pick(per_sample: Tensor, sample: Tensor | None) -> Tensor:
    """The rows of a per-sample tensor that belong to ``sample`` (all rows if None)."""
    return per_sample if sample is None else per_sample.index_select(0, sample)


class Gradient:
    """d(target logit)/d(input) (saliency, Simonyan et al. 2014)."""

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        return input_gradient(forward, x, target, sample)


class InputXGradient:
    """``(x - baseline) * gradient``: the first-order Taylor term of each input value."""

    def __init__(self, baseline: Tensor) -> None:
        self.baseline = baseline  # [B, C, (T), H, W]

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        grad, target = input_gradient(forward, x, target, sample)
        return (x - pick(self.baseline, sample)) * grad, target


# Activation modules other than ReLU, named when guided backprop has no ReLU to guide;
# libraries' own activation classes (Hugging Face's GELUActivation, timm's) by their names.
_ACTIVATION_NAMES = ("GELU", "SiLU", "Swish", "Mish", "Tanh", "Sigmoid")
_ACTIVATIONS = (
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardsigmoid,
)


def _is_activation(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, _ACTIVATIONS) or any(word in name for word in _ACTIVATION_NAMES)


class GuidedBackprop:
    """Gradient with every ``nn.ReLU``'s backward also zeroing negative incoming gradients
    (Springenberg et al. 2015). ReLUs called as functions (``F.relu``) are not guided."""

    def __init__(self, model: nn.Module) -> None:
        self.relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        if not self.relus:
            found = sorted({type(m).__name__ for m in model.modules() if _is_activation(m)})
            uses = f"; its activations are {', '.join(found)}" if found else ""
            raise ValueError(
                f"method: guided_backprop needs nn.ReLU modules, the model has none{uses}: "
                "guided backprop is defined for ReLU networks; use 'gradient' or "
                "'input_x_gradient' (or 'integrated_gradients')"
            )

    def register(self, handles: list[RemovableHandle]) -> None:
        """Hooks every ReLU module (the caller removes the handles)."""
        handles.extend(relu.register_forward_hook(_guide_relu_output) for relu in self.relus)

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        return input_gradient(forward, x, target, sample)


def _guide_relu_output(_module: nn.Module, _inputs: tuple[Any, ...], output: Tensor) -> None:
    # ReLU's own backward keeps the gradient where its input was positive; clamping the
    # gradient that reaches its output also drops negative gradients: guided backprop.
    if isinstance(output, Tensor) and output.requires_grad:
        # Tensor.register_hook has no annotations in torch
        output.register_hook(lambda grad: grad.clamp(min=0))  # type: ignore[no-untyped-call]
