"""Grad-CAM (Selvaraju et al. 2017) for 2-D and 3-D CNNs, upsampled to the input."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gswfast.attribution._model import ModelForward, OutputTarget, Resolved, accumulation_dtype

_CONVS = (nn.Conv2d, nn.Conv3d)


def find_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """``layer`` given as a module of ``model`` or a dotted name (``"layer4.1.conv2"``).

    Names work with or without the ``module.`` prefix of ``nn.DataParallel``-style wrappers.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer: the given module is not part of the model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(
            f"layer: expected a module, a dotted name or None, got {type(layer).__name__}"
        )
    convs = [n for n, m in model.named_modules() if isinstance(m, _CONVS)][-3:]
    if not layer.strip().removeprefix("module."):  # "" names the whole model
        example = convs[-1].removeprefix("module.") if convs else "layer4"
        raise ValueError(f"layer: expected a module name such as {example!r}, got {layer!r}")
    modules: dict[str, nn.Module] = dict(model.named_modules())
    for name in (layer, f"module.{layer}", layer.removeprefix("module.")):
        if name in modules:
            return modules[name]
    raise ValueError(
        f"layer: the model has no module named {layer!r} (its last convolutions: {convs})"
    )


def last_conv_layer(model: nn.Module, forward: ModelForward, x: Tensor) -> nn.Module:
    """The last Conv2d/Conv3d, in execution order, whose output still has a spatial
    extent (more than one pixel), found by running the first sample through the model.

    Execution order and extent matter: some models (S3D) end in a 1x1x1 convolution
    used as the classifier after global pooling, which would give a constant map.
    """
    seen: list[nn.Module] = []

    def record(module: nn.Module, _inputs: tuple[Any, ...], output: Tensor) -> None:
        if isinstance(output, Tensor) and output.shape[-1] * output.shape[-2] > 1:
            seen.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _CONVS)]
    try:
        with torch.no_grad():
            forward.output(x[:1], torch.zeros(1, dtype=torch.int64, device=x.device))
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(
            "layer: the model runs no Conv2d/Conv3d with a spatial output; pass layer="
        )
    return seen[-1]


class GradCAM:
    """``relu(sum_k mean(dS/dA_k) * A_k)`` over the activations ``A [B, K, (t), h, w]`` of
    ``layer``, upsampled (bilinear, trilinear over time for 3-D CNNs) to the input's
    ``[(T), H, W]``. Returns ``[B, 1, (T), H, W]`` in the inputs' dtype.

    Only the layers after ``layer`` take part in the backward pass: the hook makes the
    activation the leaf of the graph when nothing before it needs gradients.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self._activation: Tensor | None = None

    def register(self, handles: list[RemovableHandle]) -> None:
        handles.append(self.layer.register_forward_hook(self._capture))

    def _capture(self, _module: nn.Module, _inputs: tuple[Any, ...], output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise ValueError(f"layer: expected it to output a tensor, got {type(output).__name__}")
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        self._activation = activation
        # A copy goes on, so that an in-place op after the layer (ReLU(inplace=True))
        # neither touches the captured activation nor modifies a leaf.
        return activation.clone()

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        self._activation = None
        try:
            score, target = forward.selected(x.detach(), target, sample)
            # Set by the _capture hook during forward.selected, which mypy cannot see (it
            # keeps self._activation narrowed to the None assigned above).
            activation = cast("Tensor | None", self._activation)
            if activation is None:
                raise ValueError("layer: the model did not run the Grad-CAM layer")
            if activation.dim() != x.dim() or activation.shape[0] != x.shape[0]:
                raise ValueError(
                    f"layer: expected activations [B, K, {'t, ' if x.dim() == 5 else ''}h, w] "
                    f"with B = {x.shape[0]}, got shape {tuple(activation.shape)}"
                )
            (grad,) = torch.autograd.grad(score.sum(), activation)
        finally:
            self._activation = None
        acc = accumulation_dtype(activation.dtype)
        weights = grad.to(acc).mean(dim=tuple(range(2, grad.dim())), keepdim=True)
        cam = torch.relu((weights * activation.detach().to(acc)).sum(1, keepdim=True))
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        return F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False).to(
            x.dtype
        ), target
