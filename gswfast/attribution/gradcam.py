"""Grad-CAM (Selvaraju et al. 2017) for 2-D and 3-D CNNs, upsampled to the input."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gswfast.attribution._model import (
    ModelForward,
    OutputTarget,
    Resolved,
    accumulation_dtype,
    rows_of,
)
from gswfast.attribution.integrated_gradients import check_batch_size
from gswfast.options import CAM_METHODS

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


def find_layers(model: nn.Module, layer: object) -> list[tuple[nn.Module, str]]:
    """``layer=``: a module or dotted name, or a list or tuple of them (several CAM layers),
    as ``(module, dotted name)`` pairs; ``ValueError`` for an empty list or a layer given
    twice."""
    given: list[Any] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not given:
        raise ValueError("layer: expected a module, a dotted name or a list of them, got []")
    modules = [find_layer(model, one) for one in given]
    names = [module_name(model, m) for m in modules]
    for i, module in enumerate(modules):
        if any(m is module for m in modules[:i]):
            raise ValueError(f"layer: {names[i]!r} is given twice")
    return list(zip(modules, names, strict=True))


@dataclass(frozen=True)
class GridLayout:
    """How a layer's activations map onto the input's grid: ``channels_first``
    ``[B, K, (t), h, w]`` (CNNs), ``channels_last`` ``[B, (t), h, w, K]`` (Swin) or
    ``tokens`` ``[B, extra + (t*)h*w, D]`` (ViT, DeiT, DINOv2, MViT: class, distillation
    or register tokens first), or ``reshaped``: a user's ``reshape=`` function made the maps."""

    kind: str
    extra: int = 0
    grid: tuple[int, ...] = ()

    def to_maps(self, activations: Tensor) -> Tensor:
        """``[B, K, (t), h, w]`` from the layer's activations."""
        if self.kind == "channels_last":
            return activations.movedim(-1, 1)
        if self.kind == "tokens":
            tokens = activations[:, self.extra :]
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        return activations

    def describe(self) -> str:
        if self.kind == "channels_last":
            return "[B, h, w, K]" if len(self.grid) == 2 else "[B, t, h, w, K]"
        if self.kind == "tokens":
            extra = f"{self.extra} + " if self.extra else ""
            return f"[B, {extra}{'*'.join(map(str, self.grid))}, D]"
        if self.kind == "reshaped":
            return "reshape="
        return "[B, K, h, w]" if len(self.grid) == 2 else "[B, K, t, h, w]"


def _fits(grid: tuple[int, ...], spatial: tuple[int, ...]) -> bool:
    """Whether a grid ``[(t), h, w]`` can be the input's ``[(T), H, W]`` at one stride: no
    larger, more than one pixel in ``h x w``, and about the same stride along h and w."""
    if len(grid) != len(spatial) or any(g < 1 or g > s for g, s in zip(grid, spatial, strict=True)):
        return False
    h, w = grid[-2:]
    if h * w < 2:
        return False
    ratio = (spatial[-2] / h) / (spatial[-1] / w)
    return 1 / 1.5 <= ratio <= 1.5


def _token_grid(tokens: int, spatial: tuple[int, ...]) -> tuple[int, tuple[int, ...]] | None:
    """(extra tokens, ``[(t), h, w]``) of a token sequence over an input ``[(T), H, W]``:
    a grid of tokens at one stride after 0 to 8 extra ones (class, distillation, register
    tokens: DINOv2 with registers has 5; MViT's ``[B, 1 + t*h*w, D]``); None when no split
    fits. Over clips the finest time grid that fits is taken (8 x 7 x 7 rather than
    2 x 14 x 14 for 392 tokens: video transformers keep most of the time steps)."""
    height, width = spatial[-2:]
    times = range(spatial[0], 0, -1) if len(spatial) == 3 else (0,)
    for extra in range(9):
        for t in times:
            grid = tokens - extra
            if t and grid % t:
                continue
            plane = _plane_grid(grid // t if t else grid, height, width)
            if plane is not None:
                return extra, ((t, *plane) if t else plane)
    return None


def _plane_grid(cells: int, height: int, width: int) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w = cells`` at about the same stride along H and W (the
    closest), at least 3 x 3 and a stride of at most 32 pixels (ViT and DeiT patches are
    8 to 32): fewer, coarser tokens are no patch grid (a sequence of frame features,
    a pooled token); None when none fits."""
    if cells < 9:
        return None
    best: tuple[float, int] | None = None
    for h in range(max(3, -(-height // 32)), height + 1):
        if cells % h or cells // h > width or cells // h < max(3, -(-width // 32)):
            continue
        ratio = (height / h) / (width / (cells // h))
        if 0.8 <= ratio <= 1.25 and (best is None or abs(ratio - 1) < best[0]):
            best = (abs(ratio - 1), h)
    return None if best is None else (best[1], cells // best[1])


def read_layout(shape: tuple[int, ...], spatial: tuple[int, ...]) -> GridLayout | None:
    """The layout of activations of ``shape`` over an input of ``spatial`` size ``[(T), H,
    W]``, or None. Where channels first and last both fit (``[B, 7, 7, 7]``), channels
    first, PyTorch's convention; ``reshape=`` says otherwise."""
    if len(shape) == len(spatial) + 2:
        if _fits(tuple(shape[2:]), spatial):
            return GridLayout("channels_first", grid=tuple(shape[2:]))
        if _fits(tuple(shape[1:-1]), spatial):
            return GridLayout("channels_last", grid=tuple(shape[1:-1]))
        return None
    if len(shape) == 3:
        split = _token_grid(shape[1], spatial)
        if split is not None:
            return GridLayout("tokens", extra=split[0], grid=split[1])
    return None


def probe_layer(
    model: nn.Module, forward: ModelForward, x: Tensor, target: OutputTarget | None = None
) -> tuple[nn.Module, str]:
    """Grad-CAM's default layer: the last module, in execution order, whose output is a grid
    over the input (``read_layout``) and whose grid receives gradient from the predicted
    class's score (``target``'s, for an ``OutputTarget``: a detector's box), found on the
    first sample (one forward and one backward, hooks only).
    Returns the module and its dotted name; GradCAM reads the layout again from each call's
    activations.

    The gradient matters: a ViT's last blocks and final norm output a token grid, but only
    the class token reaches the head, so their grid gets none (the last block's attention,
    which mixes the tokens, and what runs before it still do); a layer after global pooling
    has no grid at all. Among token grids the last normalisation layer is taken (the last
    block's ``norm1``, ``ln_1`` or ``layernorm_before``, pytorch-grad-cam's advice for
    ViTs): the projections after it inside the attention (``qkv``) mix other channels.
    """
    spatial = tuple(x.shape[2:])
    seen: list[tuple[str, nn.Module, GridLayout, Tensor]] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and output.shape[:1] == (1,) and output.requires_grad:
                layout = read_layout(tuple(output.shape), spatial)
                if layout is not None:
                    seen.append((name, module, layout, output))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    probe = x[:1].detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            first = torch.zeros(1, dtype=torch.int64, device=x.device)
            score, _ = forward.selected(probe, None if target is None else target[first])
    except ValueError:  # not [B, classes] logits: the last grid, without the gradient check
        score = None
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(
            "layer: no module of the model outputs a grid over the input ([B, K, (t), h, w], "
            "[B, (t), h, w, K] or [B, N, D] tokens); pass layer= (and reshape= for another layout)"
        )
    if score is not None:
        grads = torch.autograd.grad(
            score.sum(), [out for *_, out in seen], allow_unused=True, retain_graph=False
        )
        reached = [
            (module, name, layout)
            for (name, module, layout, _), grad in zip(seen, grads, strict=True)
            if grad is not None and bool(layout.to_maps(grad).abs().sum() > 0)
        ]
        if reached:
            if reached[-1][2].kind == "tokens":  # a transformer: its last block's first norm
                norms = [
                    r for r in reached if r[2].kind == "tokens" and "Norm" in type(r[0]).__name__
                ]
                reached = norms or reached
            module, name, _ = reached[-1]
            return module, name
    name, module, _, _ = seen[-1]
    return module, name


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """``layer``'s dotted name in ``model``."""
    return next((n for n, m in model.named_modules() if m is layer), "")


Reshape = Callable[[Tensor], Tensor]


def class_map(variant: str, maps: Tensor, grad: Tensor) -> Tensor:
    """The class activation map ``[B, 1, (t), h, w]`` (before its ReLU) of a CAM method from
    the layer's maps ``A`` and their gradients ``G``, both ``[B, K, (t), h, w]``, as
    pytorch-grad-cam computes them (sums over the grid ``s``, over channels ``k``):

    - gradcam: ``sum_k mean_s(G_k) A_k`` (Selvaraju et al. 2017);
    - gradcam_plus_plus: ``sum_k (sum_s relu(G) a) A_k``, ``a = G^2 / (2 G^2 + sum_s(A) G^3)``
      where ``G != 0`` (Chattopadhay et al. 2018);
    - hirescam: ``sum_k G_k A_k`` pixel by pixel (Draelos and Carin 2020);
    - xgradcam: ``sum_k (sum_s G A / sum_s A) A_k`` (Fu et al. 2020);
    - layercam: ``sum_k relu(G_k) A_k`` pixel by pixel (Jiang et al. 2021);
    - eigencam: the projection of the centred activations on their first principal
      component, its sign set so that its largest magnitude is positive (Muhammad and
      Yeasin 2020; the sign rule of pytorch-grad-cam's ``get_2d_projection_with_sign_correction``).
      No gradient: it also serves models whose score has none.
    """
    grid = tuple(range(2, maps.dim()))
    if variant == "hirescam":
        return (grad * maps).sum(1, keepdim=True)
    if variant == "layercam":
        return (torch.relu(grad) * maps).sum(1, keepdim=True)
    if variant == "eigencam":
        return _first_component(maps)
    if variant == "xgradcam":
        weights = (grad * maps / (maps.sum(grid, keepdim=True) + 1e-7)).sum(grid, keepdim=True)
    elif variant == "gradcam_plus_plus":
        g2 = grad * grad
        alpha = g2 / (2 * g2 + maps.sum(grid, keepdim=True) * g2 * grad + 1e-6)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(grad) * alpha).sum(grid, keepdim=True)
    else:
        weights = grad.mean(grid, keepdim=True)
    return (weights * maps).sum(1, keepdim=True)


def _first_component(maps: Tensor) -> Tensor:
    b, k = maps.shape[:2]
    rows = maps.reshape(b, k, -1).transpose(1, 2)  # [B, pixels, K]
    rows = rows - rows.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = rows @ vh[:, :1].transpose(1, 2)  # [B, pixels, 1]
    flip = projection.amin(1, keepdim=True).abs() > projection.amax(1, keepdim=True).abs()
    projection = torch.where(flip, -projection, projection)
    return projection.transpose(1, 2).reshape(b, 1, *maps.shape[2:])


@dataclass
class _Tap:
    """One CAM layer: the module, its dotted name, and the activation its forward hook
    captured during the current call."""

    layer: nn.Module
    name: str
    activation: Tensor | None = None
    layout: GridLayout | None = None


class GradCAM:
    """The CAM family (``variant``, see ``class_map``; and ``scorecam``) over one or several
    layers. Each layer's activations ``A [B, K, (t), h, w]`` are read from its output through
    its layout, or ``reshape``, a function from the output to ``[B, K, (t), h, w]`` as
    pytorch-grad-cam's ``reshape_transform``, applied to the activations and to their
    gradients alike. A layer's map is ``relu`` of its class map, upsampled (bilinear,
    trilinear over time) to the input's ``[(T), H, W]``; with several layers each map is
    scaled to 0..1 per sample and the maps are averaged, as pytorch-grad-cam aggregates
    ``target_layers``. Returns ``[B, 1, (T), H, W]`` in the inputs' dtype. Afterwards
    ``layouts`` are the layouts used and ``degenerate [B]`` says which samples got a map
    that is zero or constant everywhere (a warning names the layer).

    Only the layers after the first CAM layer take part in the backward pass: the hook
    makes each activation a leaf of the graph when nothing before it needs gradients.
    """

    def __init__(
        self,
        layers: Sequence[tuple[nn.Module, str]],
        reshape: Reshape | None = None,
        variant: str = "gradcam",
        batch_size: int | None = None,
    ) -> None:
        if variant not in CAM_METHODS:
            raise ValueError(f"method: expected one of {CAM_METHODS}, got {variant!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape: expected a function or None, got {type(reshape).__name__}")
        self.variant = variant
        self.taps = [_Tap(layer, name) for layer, name in layers]
        self.reshape = reshape
        self.batch_size = check_batch_size(batch_size) or 32
        self.degenerate: Tensor | None = None
        self._recording = False

    @property
    def names(self) -> list[str]:
        return [tap.name for tap in self.taps]

    @property
    def layouts(self) -> list[str] | None:
        """Each layer's layout as read by the last call (None before any)."""
        if any(tap.layout is None for tap in self.taps):
            return None
        return [tap.layout.describe() for tap in self.taps if tap.layout is not None]

    def register(self, handles: list[RemovableHandle]) -> None:
        handles.extend(
            tap.layer.register_forward_hook(partial(self._capture, tap)) for tap in self.taps
        )

    def _capture(
        self, tap: _Tap, _module: nn.Module, _inputs: tuple[Any, ...], output: Any
    ) -> Tensor | None:
        if not self._recording:  # Score-CAM's masked runs: nothing to keep
            return None
        if not isinstance(output, Tensor):
            raise ValueError(
                f"layer {tap.name!r}: expected it to output a tensor, got {type(output).__name__}"
            )
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        tap.activation = activation
        # A copy goes on, so that an in-place op after the layer (ReLU(inplace=True))
        # neither touches the captured activation nor modifies a leaf.
        return activation.clone()

    def _maps(self, tap: _Tap, activations: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The function from this layer's outputs (and gradients) to ``[B, K, (t), h, w]``."""
        what = f"layer {tap.name!r}" if tap.name else "layer"
        if self.reshape is not None:
            reshape = self.reshape
            maps = reshape(activations)
            if not isinstance(maps, Tensor) or maps.dim() != x.dim() or maps.shape[0] != x.shape[0]:
                shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
                raise ValueError(
                    f"reshape: expected it to return [B, K, {'t, ' if x.dim() == 5 else ''}h, w] "
                    f"with B = {x.shape[0]} from the {what}'s output {tuple(activations.shape)}, "
                    f"got {shape}"
                )
            tap.layout = GridLayout("reshaped")
            return reshape
        layout = read_layout(tuple(activations.shape), tuple(x.shape[2:]))
        if layout is None or activations.shape[0] != x.shape[0]:
            raise ValueError(
                f"{what}: its output of shape {tuple(activations.shape)} is no grid over "
                f"the input of shape {tuple(x.shape)} "
                f"(expected [B, K, {'t, ' if x.dim() == 5 else ''}h, w], channels last, or "
                "[B, N, D] tokens with B = "
                f"{x.shape[0]}); pick another layer= or pass reshape=, a function to "
                "[B, K, (t), h, w]"
            )
        tap.layout = layout
        return layout.to_maps

    def __call__(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        activations, grads, target = self._run(forward, x, target, sample)
        held = forward.last_logits
        cams = []
        for tap, maps, grad in zip(self.taps, activations, grads, strict=True):
            acc = accumulation_dtype(maps.dtype)
            if self.variant == "scorecam":
                weights = self._score_weights(forward, x, target, maps.to(acc), sample)
                cam = (weights * maps.to(acc)).sum(1, keepdim=True)
            else:
                cam = class_map(self.variant, maps.to(acc), grad.to(acc))
            cam = upsample(torch.relu(cam), x.shape[2:])
            self._warn_if_constant(cam, tap.name)
            cams.append(cam)
        forward.last_logits = held  # Score-CAM's masked runs leave theirs
        result = cams[0] if len(cams) == 1 else torch.stack([unit_scaled(c) for c in cams]).mean(0)
        self.degenerate = _constant(result)
        return result.to(x.dtype), target

    def _run(
        self, forward: ModelForward, x: Tensor, target: Resolved, sample: Tensor | None
    ) -> tuple[list[Tensor], list[Tensor], Tensor | OutputTarget]:
        """Each layer's maps and their gradients ``[B, K, (t), h, w]`` (zeros for the
        gradient-free variants) from one forward and one backward pass, and the targets."""
        for tap in self.taps:
            tap.activation = None
        self._recording = True
        try:
            score, resolved = forward.selected(x.detach(), target, sample)
            captured = [tap.activation for tap in self.taps]
            missing = [tap.name for tap, a in zip(self.taps, captured, strict=True) if a is None]
            if missing:
                raise ValueError(f"layer: the model did not run the CAM layer(s) {missing}")
            kept = [a for a in captured if a is not None]
            to_maps = [self._maps(tap, a, x) for tap, a in zip(self.taps, kept, strict=True)]
            if self.variant in _GRADIENT_FREE:
                grads = [torch.zeros_like(a) for a in kept]
            else:
                grads = list(torch.autograd.grad(score.sum(), kept, allow_unused=True))
                grads = [
                    torch.zeros_like(a) if g is None else g
                    for a, g in zip(kept, grads, strict=True)
                ]
        finally:
            self._recording = False
            for tap in self.taps:
                tap.activation = None
        maps = [f(a.detach()) for f, a in zip(to_maps, kept, strict=True)]
        return maps, [f(g) for f, g in zip(to_maps, grads, strict=True)], resolved

    def _score_weights(
        self,
        forward: ModelForward,
        x: Tensor,
        target: Tensor | OutputTarget,
        maps: Tensor,
        sample: Tensor | None,
    ) -> Tensor:
        """Score-CAM's channel weights ``[B, K, 1, ...]`` (Wang et al. 2020, as
        pytorch-grad-cam): each channel's map, upsampled (``align_corners=True``) and scaled
        to 0..1, multiplies the input (before ``preprocess``); the softmax over channels of
        the target's scores on those inputs. ``batch_size`` masked inputs per model call."""
        batch, channels = maps.shape[:2]
        scores = torch.empty(batch, channels, dtype=maps.dtype, device=maps.device)
        with torch.no_grad():
            for b in range(batch):
                for start in range(0, channels, self.batch_size):
                    chunk = maps[b, start : start + self.batch_size].unsqueeze(1)  # [n, 1, ...]
                    masks = unit_scaled(upsample(chunk, x.shape[2:], align_corners=True), eps=1e-8)
                    masked = (x[b : b + 1].detach() * masks).to(x.dtype)
                    n = masked.shape[0]
                    rows = rows_of(sample, torch.full((n,), b, device=x.device))
                    row_target = (
                        target[torch.full((n,), b, device=x.device)]
                        if isinstance(target, OutputTarget)
                        else target[b].expand(n)
                    )
                    scores[b, start : start + n] = forward.scores(masked, row_target, rows)
        return torch.softmax(scores, dim=1).view(batch, channels, *[1] * (x.dim() - 2))

    def _warn_if_constant(self, cam: Tensor, name: str) -> None:
        constant = _constant(cam)
        if bool(constant.any()):
            samples = constant.nonzero().flatten().tolist()
            warnings.warn(
                f"gswfast: {self.variant} on layer {name or '(given)'!r} is zero or constant for "
                f"sample(s) {samples}: every channel's weighted sum is at most 0 (a ReLU of "
                "all-negative weights, often a random or untrained model), or the layer comes "
                "after global pooling; try another layer= or method",
                RuntimeWarning,
                stacklevel=6,
            )


_GRADIENT_FREE = ("eigencam", "scorecam")


def upsample(cam: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """``cam [B, C, (t), h, w]`` resized to ``size`` ``[(T), H, W]`` (bilinear, trilinear
    for clips)."""
    mode = "trilinear" if cam.dim() == 5 else "bilinear"
    return F.interpolate(cam, size=tuple(size), mode=mode, align_corners=align_corners)


def unit_scaled(cam: Tensor, eps: float = 1e-7) -> Tensor:
    """Each sample's map shifted and scaled to 0..1 (pytorch-grad-cam's ``scale_cam_image``,
    ``eps=1e-7``; its Score-CAM masks use 1e-8): a constant map becomes 0."""
    flat = cam.flatten(1)
    low = flat.amin(1).view(-1, *[1] * (cam.dim() - 1))
    high = flat.amax(1).view(-1, *[1] * (cam.dim() - 1))
    return (cam - low) / (high - low + eps)


def _constant(cam: Tensor) -> Tensor:
    """``[B]``: whether each sample's map is the same everywhere (zero included)."""
    flat = cam.flatten(1)
    return (flat.amax(1) - flat.amin(1)) <= 0
