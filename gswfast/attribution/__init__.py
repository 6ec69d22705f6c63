"""Pixel attributions from a model's backward passes.

``attribute(model, inputs, target, method=..., **options)`` returns the attribution of every
input value ``[B, C, (T), H, W]`` (Grad-CAM: ``[B, 1, (T), H, W]``) and the targets ``[B]``.
``gswfast.explain`` pools it per segment; it can also be used on its own, as Captum's
``attribute``. Methods and their options:

- ``gradient``: saliency.
- ``input_x_gradient``: ``baseline="zeros"``.
- ``integrated_gradients``: ``baseline="zeros"``, ``n_steps=32``,
  ``integration="gausslegendre"`` (or ``riemann_trapezoid|middle|left|right``),
  ``batch_size=None`` (model rows per call; Captum's ``internal_batch_size`` works too).
  Its convergence delta (sum of attributions minus ``f(x) - f(baseline)``) is
  ``Attributor.delta`` / ``Explanation.info["delta"]``.
- ``lime_ig``: integrated gradients from the ``segment_mean`` baseline (each segment
  filled with its mean colour, LIME's default for hidden segments), ``n_steps=16``. Summed per segment it
  approximates LIME's segment weights (Garreau & Mardaoui, ICML 2021).
- ``banzhaf``: the Banzhaf value at 0.5 of the segment game (what LIME's weights are close
  to), estimated from ``n_samples=8`` gradients at random mixes of the image and the
  ``baseline="segment_mean"`` image (``design="latin"``, ``"uniform"``, ``"swap"``,
  ``"binary"`` or ``"centre"``; ``seed=0``; ``batch_size``); see
  ``gswfast.attribution.banzhaf``.
- ``smoothgrad``: ``base="gradient"`` (any other method but itself), ``n_samples=25``,
  ``noise_level=0.15``, ``square=False``, ``seed=None``, ``batch_size=None``,
  plus the base method's options.
- ``gradcam``: ``layer=None`` (a module or dotted name, or a list of them: each layer's
  map scaled to 0..1 per sample and the maps averaged; default: the last module, in
  execution order, whose output is a grid over the input that the target's score reaches:
  feature maps ``[B, K, (t), h, w]``, channels-last maps ``[B, (t), h, w, K]`` (Swin) or
  tokens ``[B, extra + (t*)h*w, D]`` (ViT, DeiT, DINOv2, MViT), found on the first sample,
  once per input shape); ``reshape=None`` (a function from the layer's output to
  ``[B, K, (t), h, w]``, as pytorch-grad-cam's ``reshape_transform``, for other layouts).
  ``Explanation.info`` records ``layer``, ``layout`` and ``degenerate`` (the samples whose
  map is zero or constant, which also warns).
- ``gradcam_plus_plus``, ``hirescam``, ``xgradcam``, ``layercam``, ``eigencam``: the rest
  of the CAM family, as pytorch-grad-cam computes it (``gswfast.attribution.gradcam.class_map``),
  with ``gradcam``'s options.
- ``scorecam``: Score-CAM, one model run per channel of the layer and sample (no
  gradient), ``gradcam``'s options and ``batch_size=32`` (masked inputs per model call).
- ``guided_backprop``: guided ReLU gradients.

Baselines (``baseline=``): ``"zeros"``, ``"blur"`` (``blur_sigma=``), ``"segment_mean"``
(needs ``labels``) or a tensor.

Float inputs of another dtype than the model's weights (float64 or float16 images for a
float32 model) are cast to the weights' dtype on the way in, as uint8 images become float;
the attribution comes back in the inputs' dtype.

Targets follow Captum: None (the predicted class), an int, a list, NumPy array or tensor of
classes (one per sample), a tuple (an index into each sample's output, for models whose
output is not ``[B, classes]``) or a function of the model's output returning the scores
``[B]`` to explain. ``additional_forward_args`` (one argument or a tuple) follow the batch
into the model: ``model(preprocess(x), *args)``, tensors among them with one row per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gswfast.attribution._model import (
    OUTPUTS,
    ModelForward,
    OutputTarget,
    Preprocess,
    Target,
    check_target_range,
    model_session,
    resolve_target,
)
from gswfast.attribution.banzhaf import DESIGNS, Banzhaf
from gswfast.attribution.baselines import (
    BASELINES,
    check_baseline,
    make_baseline,
    needs_segmentation,
)
from gswfast.attribution.channels import CHANNEL_REDUCTIONS, reduce_channels
from gswfast.attribution.gradcam import GradCAM, find_layer, find_layers, probe_layer
from gswfast.attribution.gradients import Gradient, GuidedBackprop, InputXGradient, Scorer
from gswfast.attribution.integrated_gradients import INTEGRATIONS, IntegratedGradients
from gswfast.attribution.smoothgrad import SmoothGrad
from gswfast.attribution.targets import DetectionTarget, SegmentationTarget
from gswfast.options import CAM_METHODS, METHOD_NAMES

# One list of method names, in the torch-free module the command's fast checks read.
METHODS: tuple[str, ...] = METHOD_NAMES

_IG_OPTIONS = ("n_steps", "integration", "batch_size")
_SMOOTH_OPTIONS = ("base", "n_samples", "noise_level", "square", "seed", "batch_size")
_ALIASES = {"internal_batch_size": "batch_size", "baselines": "baseline"}  # Captum's spellings
_BASELINE_OPTIONS = ("baseline", "blur_sigma")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "gradient": (),
    "input_x_gradient": _BASELINE_OPTIONS,
    "integrated_gradients": _BASELINE_OPTIONS + _IG_OPTIONS,
    "lime_ig": _BASELINE_OPTIONS + _IG_OPTIONS,
    "banzhaf": (*_BASELINE_OPTIONS, "n_samples", "design", "seed", "batch_size"),
    **dict.fromkeys(CAM_METHODS, ("layer", "reshape")),
    "scorecam": ("layer", "reshape", "batch_size"),
    "guided_backprop": (),
}
# lime_ig: 16 Gauss-Legendre steps rank segments like LIME as well as 32 do (Spearman 0.972
# both, benchmarks/lime_agreement.py), at half the cost.
_DEFAULT_STEPS = {"integrated_gradients": 32, "lime_ig": 16}
_SINGLE_PASS = (
    "gradient",
    "input_x_gradient",
    *CAM_METHODS,
    "guided_backprop",
)  # one model pass on x
_DEFAULT_BASELINE = {
    "input_x_gradient": "zeros",
    "integrated_gradients": "zeros",
    "lime_ig": "segment_mean",
    "banzhaf": "segment_mean",
}
# banzhaf averages over points already; Score-CAM runs the model once per channel
_NOT_SMOOTHED = ("smoothgrad", "banzhaf", "scorecam")


@dataclass(frozen=True)
class MethodSpec:
    """A method with its options checked, before any input is seen."""

    method: str
    options: dict[str, Any]

    @property
    def base(self) -> str:
        return self.options.get("base", "gradient") if self.method == "smoothgrad" else self.method

    @property
    def baseline(self) -> Any:
        return self.options.get("baseline", _DEFAULT_BASELINE.get(self.base))

    @property
    def needs_segmentation(self) -> bool:
        if self.method == "banzhaf":  # it mixes segments
            return True
        return self.baseline is not None and needs_segmentation(self.baseline)

    @property
    def default_channel_reduce(self) -> str:
        return "sum" if self.base in _DEFAULT_BASELINE or self.base in CAM_METHODS else "abs_sum"


def method_spec(method: str, options: dict[str, Any]) -> MethodSpec:
    """Checks ``method`` and that every option belongs to it (``TypeError`` otherwise)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    options = _unalias(options)
    allowed = set(_OPTIONS.get(method, ()))
    if method == "smoothgrad":
        base = options.get("base", "gradient")
        if base not in METHODS or base in _NOT_SMOOTHED:
            bases = tuple(m for m in METHODS if m not in _NOT_SMOOTHED)
            raise ValueError(f"base: expected one of {bases}, got {base!r}")
        allowed = set(_SMOOTH_OPTIONS) | set(_OPTIONS[base])
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"method {method!r} got unexpected option(s) {unknown}; it takes {sorted(allowed)}"
        )
    spec = MethodSpec(method, dict(options))
    if spec.baseline is not None:
        check_baseline(spec.baseline)
    return spec


def options_of(options: dict[str, Any], leave: tuple[str, ...]) -> dict[str, Any]:
    """``options`` without the names in ``leave``."""
    return {k: v for k, v in options.items() if k not in leave}


def _unalias(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for alias, name in _ALIASES.items():
        if alias in out:
            if name in out:
                raise TypeError(f"{alias}: the same option as {name}; pass one of them")
            out[name] = out.pop(alias)
    return out


class Attributor:
    """Builds the scorer of a ``MethodSpec`` for one batch and runs it in a model session."""

    def __init__(
        self,
        model: nn.Module,
        spec: MethodSpec,
        preprocess: Preprocess | None = None,
        autocast: Any = None,
        eval_mode: bool = True,
        channels_last: bool | None = None,
        additional_forward_args: Any = None,
        output: str = "logit",
    ) -> None:
        if spec.base in (*CAM_METHODS, "guided_backprop"):
            model = _eager_module(model)
        self.model = model
        self.spec = spec
        self.forward = ModelForward(
            model, preprocess, autocast, channels_last, additional_forward_args, output
        )
        self.eval_mode = eval_mode
        self.delta: Tensor | None = None
        self._layer: tuple[nn.Module, str] | None = None
        self._layer_key: tuple[int, ...] | None = None
        self.gradcam: GradCAM | None = None  # the last call's, for its layer and layout

    def __call__(
        self,
        x: Tensor,
        target: Tensor | OutputTarget | None,
        labels: Tensor | None = None,
        num_segments: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attribution ``[B, C|1, (T), H, W]`` and targets int64 ``[B]`` (-1 for an
        ``OutputTarget``) of float inputs ``x``. Afterwards ``logits`` holds the model's
        ``[B, classes]`` output on ``x`` when the method ran the model on ``x`` itself once
        (None otherwise), and ``delta [B]`` integrated gradients' convergence delta."""
        self.forward.check_extra_args(x.shape[0], x.device)
        self.forward.check_targets = isinstance(target, Tensor)
        self.forward.last_logits = None
        self.delta = None
        freeze = self.spec.base in CAM_METHODS  # the others differentiate to the input
        with model_session(self.model, self.eval_mode, freeze) as handles:
            scorer = self._scorer(self.spec.base, x, labels, num_segments, handles, target)
            top = scorer
            if self.spec.method == "smoothgrad":
                smooth = {
                    k: v
                    for k, v in self.spec.options.items()
                    if k in _SMOOTH_OPTIONS and k != "base"
                }
                if isinstance(scorer, IntegratedGradients):
                    scorer.convergence_delta = False
                top = SmoothGrad(scorer, **smooth)
            attribution, resolved = top(self.forward, x, target)
        if top is scorer and isinstance(scorer, IntegratedGradients):
            self.delta = scorer.delta
        if isinstance(resolved, OutputTarget):
            resolved = resolved.row_classes(x.shape[0], x.device)
        return attribution, resolved

    @property
    def logits(self) -> Tensor | None:
        return self.forward.last_logits if self.spec.method in _SINGLE_PASS else None

    def _scorer(
        self,
        method: str,
        x: Tensor,
        labels: Tensor | None,
        num_segments: Tensor | None,
        handles: list[RemovableHandle],
        target: Tensor | OutputTarget | None = None,
    ) -> Scorer:
        options = self.spec.options
        if method == "gradient":
            return Gradient()
        if method == "guided_backprop":
            _check_hookable(self.model, method)
            guided = GuidedBackprop(self.model)
            guided.register(handles)
            return guided
        if method in CAM_METHODS:
            _check_single_replica(self.model)
            _check_hookable(self.model, method)
            cam = GradCAM(
                self._cam_layers(x, target),
                options.get("reshape"),
                method,
                options.get("batch_size"),
            )
            cam.register(handles)
            self.gradcam = cam
            return cam
        baseline = make_baseline(
            self.spec.baseline, x, labels, num_segments, options.get("blur_sigma")
        )
        if method == "input_x_gradient":
            return InputXGradient(baseline)
        if method == "banzhaf":
            if labels is None:
                raise ValueError("labels: method 'banzhaf' needs a segmentation")
            return Banzhaf(baseline, labels, **options_of(options, ("baseline", "blur_sigma")))
        ig = {
            "n_steps": _DEFAULT_STEPS[method],
            **{k: v for k, v in options.items() if k in _IG_OPTIONS},
        }
        return IntegratedGradients(baseline, **ig)

    def _cam_layers(
        self, x: Tensor, target: Tensor | OutputTarget | None = None
    ) -> list[tuple[nn.Module, str]]:
        """The CAM layers (``layer=``: one, or a list or tuple of them; default: the probed
        one, reached by ``target``'s score where it is an ``OutputTarget``, by the predicted
        class's otherwise) and their dotted names."""
        layer = self.spec.options.get("layer")
        if layer is not None:
            return find_layers(self.model, layer)
        key = tuple(x.shape[1:])
        if self._layer is None or self._layer_key != key:  # found once per input shape
            scored = target if isinstance(target, OutputTarget) else None
            self._layer = probe_layer(self.model, self.forward, x, scored)
            self._layer_key = key
        return [self._layer]


def _eager_module(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``'d model wraps (its ``_orig_mod``), for the methods that
    hook modules: the hooks reach it whatever the torch release does with hooks added to a
    compiled graph, adding them recompiles nothing (31 s for resnet18 on a 2-core CPU), and
    layer names read as the user wrote the model (``layer4``, not ``_orig_mod.layer4``)."""
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner
    return model


def _check_hookable(model: nn.Module, method: str) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            f"method: {method} hooks the model's modules, which a TorchScript model does not "
            "allow; use another method, or the nn.Module the TorchScript was made from (a "
            "state_dict .pt with --arch on the command line)"
        )


def _check_single_replica(model: nn.Module) -> None:
    # Over several GPUs nn.DataParallel runs hooked replicas in threads, each overwriting
    # the captured activation; with one device it just calls the module.
    for m in model.modules():
        if isinstance(m, nn.DataParallel) and len(m.device_ids) > 1:
            raise ValueError(
                "model: Grad-CAM through nn.DataParallel over several GPUs is not supported; "
                "explain model.module, or split the batch per GPU"
            )


@overload
def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: str = "integrated_gradients",
    *,
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
    preprocess: Preprocess | None = None,
    autocast: Any = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
    return_convergence_delta: Literal[False] = False,
    **options: Any,
) -> tuple[Tensor, Tensor]: ...


@overload
def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: str = "integrated_gradients",
    *,
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
    preprocess: Preprocess | None = None,
    autocast: Any = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
    return_convergence_delta: Literal[True],
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor]: ...


@overload
def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: str = "integrated_gradients",
    *,
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
    preprocess: Preprocess | None = None,
    autocast: Any = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    **options: Any,
) -> tuple[Tensor, ...]: ...


def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    method: str = "integrated_gradients",
    *,
    labels: Tensor | None = None,
    num_segments: Tensor | None = None,
    preprocess: Preprocess | None = None,
    autocast: Any = None,
    eval_mode: bool = True,
    channels_last: bool | None = None,
    additional_forward_args: Any = None,
    output: str = "logit",
    return_convergence_delta: bool = False,
    **options: Any,
) -> tuple[Tensor, ...]:
    """Pixel attribution of float ``inputs [B, C, (T), H, W]`` for ``target`` (None: the
    predicted class; see the module docstring for targets and the methods' options).
    ``output``: the score explained, ``"logit"`` (default), ``"probability"`` (softmax over
    classes) or ``"log_probability"``.

    Returns ``(attribution, target)``, target int64 ``[B]`` (-1 for a tuple or function
    target), and with ``return_convergence_delta=True`` (integrated gradients and lime_ig)
    also the convergence delta ``[B]``: each sample's summed attribution minus
    ``f(x) - f(baseline)``, as Captum's."""
    spec = method_spec(method, options)
    if spec.needs_segmentation and labels is None:
        raise ValueError("labels: baseline 'segment_mean' needs a segmentation")
    if return_convergence_delta and spec.method not in _DEFAULT_STEPS:
        raise ValueError(
            f"return_convergence_delta: only integrated_gradients and lime_ig have one, not {method!r}"
        )
    with torch.inference_mode(False):
        x = inputs.clone() if inputs.is_inference() else inputs
        if isinstance(target, (DetectionTarget, SegmentationTarget)):
            raise TypeError(
                f"target: a {type(target).__name__} is taken by gsw.explain and the region "
                "methods, not by attribute (whose rows are the inputs' samples)"
            )
        resolved = resolve_target(target, x.shape[0], x.device)
        attributor = Attributor(
            model,
            spec,
            preprocess,
            autocast,
            eval_mode,
            channels_last,
            additional_forward_args,
            output,
        )
        attribution, targets = attributor(x, resolved, labels, num_segments)
        if not return_convergence_delta:
            return attribution, targets
        assert attributor.delta is not None  # integrated gradients keep it (method checked above)
        return attribution, targets, attributor.delta


__all__ = [
    "BASELINES",
    "CHANNEL_REDUCTIONS",
    "DESIGNS",
    "INTEGRATIONS",
    "METHODS",
    "OUTPUTS",
    "Attributor",
    "MethodSpec",
    "ModelForward",
    "OutputTarget",
    "attribute",
    "check_target_range",
    "find_layer",
    "make_baseline",
    "method_spec",
    "model_session",
    "reduce_channels",
    "resolve_target",
]
