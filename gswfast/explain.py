"""Gradient weighted superpixels: segment, attribute, pool, all on the inputs' device.

``explain(model, inputs, target)`` segments the inputs with SLIC (or takes a given
segmentation), computes a pixel attribution with the model's backward passes, reduces it
over channels and pools it per segment into an ``Explanation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from gswfast import ops, render
from gswfast.attribution import (
    CHANNEL_REDUCTIONS,
    Attributor,
    MethodSpec,
    method_spec,
    reduce_channels,
    resolve_target,
)
from gswfast.attribution._model import OutputTarget, Preprocess, Target
from gswfast.attribution.targets import expand_target
from gswfast.checks import (
    Segments,
    check_input_values,
    check_inputs,
    check_scores,
    resolve_given_segmentation,
    segment_mask,
    tied_samples,
    unit_float,
)
from gswfast.segmentation import Segmentation, rgb_to_lab, slic

SEGMENT_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "max", "positive_mean", "abs_mean")
DEFAULT_SEGMENTS = {4: 50, 5: 200}  # images [B, C, H, W]; 16-frame clips [B, C, T, H, W]


@dataclass(frozen=True)
class Explanation:
    """Segment scores of a batch and everything to show them.

    Attributes:
        segment_scores: float32 ``[B, K]``, ``K = max(num_segments)``; entries past a
            sample's ``num_segments`` are 0.
        labels: int32 ``[B, H, W]`` or ``[B, T, H, W]`` segment ids.
        num_segments: int64 ``[B]``.
        pixel_scores: float32 ``[B, (T), H, W]``: the attribution reduced over channels.
        target: int64 ``[B]``: the explained class (-1 where unknown: a given attribution
            without a target).
        method, reduce: how the scores were made.
        segmentation: the ``Segmentation`` when gswfast computed it (None when given labels).
        info: method-specific extras: ``logits [B, classes]`` (the model's output on the
            inputs, for the methods that run the model on them once: gradient,
            input_x_gradient, gradcam, guided_backprop), ``delta [B]`` (integrated
            gradients' convergence delta: summed attribution minus ``f(x) - f(baseline)``),
            LIME's ``intercept`` and ``score``; the CAM methods' ``layer`` (its dotted
            name; a list for several),
            ``layout`` (how its output was read: ``"[B, K, h, w]"``, ``"[B, h, w, K]"``,
            ``"[B, 1 + 14*14, D]"``, ``"reshape="``) and ``degenerate`` (bool ``[B]``: a map
            zero or constant everywhere).
    """

    segment_scores: Tensor
    labels: Tensor
    num_segments: Tensor
    pixel_scores: Tensor
    target: Tensor
    method: str
    reduce: str
    segmentation: Segmentation | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> Tensor:
        """int64 ``[B, K]``: segment ids by decreasing score; padding ids come last."""
        valid = segment_mask(self.num_segments, self.segment_scores.shape[1])
        scores = torch.where(valid, self.segment_scores, float("-inf"))
        return torch.sort(scores, dim=1, descending=True, stable=True).indices

    def top_k(self, k: int) -> Tensor:
        """bool ``[B, (T), H, W]``: the pixels of each sample's ``k`` best segments (none
        where every segment scores the same: no segment is best)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"k: expected an int >= 0, got {k!r}")
        b, width = self.segment_scores.shape
        best = self.ranking()[:, : min(k, width)]
        chosen = torch.zeros((b, width), dtype=torch.bool, device=best.device)
        chosen.scatter_(1, best, True)
        valid = segment_mask(self.num_segments, width)
        chosen &= valid
        chosen &= ~tied_samples(self.segment_scores, self.num_segments, valid).unsqueeze(1)
        flat = self.labels.reshape(b, -1).long()
        return chosen.gather(1, flat).reshape(self.labels.shape)

    def heatmap(self) -> Tensor:
        """float32 ``[B, (T), H, W]``: every pixel carries its segment's score."""
        return ops.paint(self.segment_scores, self.labels, validate=False)

    def overlay(self, images: Tensor, alpha: float = 0.5, boundaries: bool = True) -> Tensor:
        """uint8 ``[B, 3, (T), H, W]``: ``images`` (uint8, or float 0..1, checked as
        ``explain`` checks them) under the coloured heatmap (diverging map for signed
        scores), with segment boundaries in yellow."""
        images = check_inputs(images)
        if images.is_floating_point():
            check_input_values(images, needs_unit_range=True)
        return render.overlay(
            images.to(self.labels.device),
            self.heatmap(),
            self.labels if boundaries else None,
            alpha,
        )

    def to(self, device: torch.device | str) -> Explanation:
        """The same explanation on another device."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        seg = self.segmentation.to(device) if self.segmentation is not None else None
        info = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.info.items()}
        return replace(self, segmentation=seg, info=info, **moved)

    def numpy(self) -> dict[str, Any]:
        """The tensors as numpy arrays (copied to the host), plus ``method`` and ``reduce``."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name).detach().cpu().numpy()
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        out.update(
            {
                k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v
                for k, v in self.info.items()
            }
        )
        out.update(method=self.method, reduce=self.reduce)
        return out


class Explainer:
    """A reusable explanation pipeline: ``Explainer(model, method, ...)(inputs, target)``.

    It checks its options once, finds the Grad-CAM layer once per input shape, and puts the
    model back as it found it after each call (train/eval state, ``requires_grad`` flags,
    no hooks left), even when the model raises. While a call runs, the model's parameters
    are frozen and hooks may be attached: do not train or explain the same model from
    another thread at the same time (inference under ``no_grad`` is unaffected).

    Args:
        model: any ``nn.Module`` returning logits ``[B, classes]`` (wrappers such as
            ``nn.DataParallel`` included): a tensor, a tuple or list whose first item is
            one, a dict with ``"logits"`` or an object with ``.logits`` (Hugging Face's
            ``ModelOutput``). May be None when every call passes ``attribution``.
        method: ``"integrated_gradients"`` (default), ``"lime_ig"`` (LIME-like answers, fast),
            ``"banzhaf"`` (LIME's target, the Banzhaf value of the segments, from gradients),
            ``"gradient"``, ``"input_x_gradient"``, ``"smoothgrad"``, ``"gradcam"`` and the
            rest of the CAM family (``"gradcam_plus_plus"``, ``"hirescam"``, ``"xgradcam"``,
            ``"layercam"``, ``"eigencam"``, ``"scorecam"``) or ``"guided_backprop"``; see
            ``gswfast.attribution`` for their options.
        reduce: segment reduction, ``"mean"`` (the paper's choice; default), ``"sum"``
            (default for ``lime_ig`` and ``banzhaf``: LIME weights are sums), ``"max"``,
            ``"positive_mean"`` (mean of the positive parts, negatives count as 0) or
            ``"abs_mean"``.
        channel_reduce: ``"sum"``, ``"abs_sum"``, ``"l2"`` or ``"max"`` (largest magnitude);
            default ``"sum"`` for the baseline methods (it keeps completeness) and Grad-CAM,
            ``"abs_sum"`` for gradient, guided backprop and their smoothgrad.
        swag: segment the image channels together with the normalised attribution magnitude
            (SWAG, Hartley et al. WACV 2021), so segments follow what the network uses.
        swag_weight: weight of the attribution channel (1: its 99th percentile spans the
            range of CIELAB's L).
        n_segments, compactness: SLIC parameters; default 50 segments per image and 200
            supervoxels per clip, which suits 224x224 images and 16-frame 112x112 clips.
        slic_options: more ``gswfast.slic`` keywords (``mode``, ``spacing``, ``max_iter``...).
        preprocess: a differentiable function applied to the inputs before the model, such
            as ImageNet normalisation. Inputs stay images (uint8, or float 0..1) for SLIC,
            and attributions are with respect to them, as LIME's.
        autocast: a dtype (``torch.float16``/``torch.bfloat16``) to run the model under
            ``torch.autocast``; scores are accumulated in float32.
        eval_mode: run the model in eval mode (BatchNorm with running statistics, no
            dropout, samples independent of each other), restored afterwards.
        channels_last: give the model channels-last inputs (None: on the CPU and under
            autocast, where convolutions run faster so; see ``ModelForward``).
        validate: check the inputs (finite, in 0..1 when SLIC needs them) and the targets,
            with one device sync.
        additional_forward_args: more arguments for the model after the batch (Captum's
            convention): ``model(preprocess(x), *args)``; tensors among them have one row
            per sample and follow the batch through the method's chunks.
        output: the score explained: ``"logit"`` (default; ``"logits"`` too), ``"probability"``
            (softmax over classes, what LIME users regress) or ``"log_probability"``. Equal to
            explaining the model wrapped in that function; the target is still the argmax.
        method_options: options of the method (``n_steps``, ``baseline``, ``layer``...).
    """

    def __init__(
        self,
        model: nn.Module | None,
        method: str = "integrated_gradients",
        *,
        reduce: str | None = None,
        channel_reduce: str | None = None,
        swag: bool = False,
        swag_weight: float = 1.0,
        n_segments: int | None = None,
        compactness: float = 10.0,
        slic_options: dict[str, Any] | None = None,
        preprocess: Preprocess | None = None,
        autocast: torch.dtype | None = None,
        eval_mode: bool = True,
        validate: bool = True,
        channels_last: bool | None = None,
        additional_forward_args: Any = None,
        output: str = "logit",
        **method_options: Any,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess: expected a callable, got {type(preprocess).__name__}")
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(
                f"autocast: expected None, torch.float16 or torch.bfloat16, got {autocast!r}"
            )
        self.spec: MethodSpec = method_spec(method, method_options)
        self.reduce = reduce if reduce is not None else _default_reduce(method)
        if self.reduce not in SEGMENT_REDUCTIONS:
            raise ValueError(f"reduce: expected one of {SEGMENT_REDUCTIONS}, got {self.reduce!r}")
        self.channel_reduce = channel_reduce or self.spec.default_channel_reduce
        if self.channel_reduce not in CHANNEL_REDUCTIONS:
            raise ValueError(
                f"channel_reduce: expected one of {CHANNEL_REDUCTIONS}, got {self.channel_reduce!r}"
            )
        if swag and self.spec.needs_segmentation:  # a cycle: baseline <- segments <- attribution
            raise ValueError(
                "swag: the segment_mean baseline (and banzhaf's mixes) need the segmentation "
                "that SWAG builds from the attribution; use another method or swag=False"
            )
        if not swag_weight > 0:
            raise ValueError(f"swag_weight: expected a positive number, got {swag_weight}")
        self.model = model
        self.swag = bool(swag)
        self.swag_weight = float(swag_weight)
        self.slic_options = dict(slic_options or {}, compactness=compactness)
        if n_segments is not None:
            self.slic_options["n_segments"] = n_segments
        self.validate = validate
        self._attributor = (
            Attributor(
                model,
                self.spec,
                preprocess,
                autocast,
                eval_mode,
                channels_last,
                additional_forward_args,
                output,
            )
            if model is not None
            else None
        )

    def __call__(
        self,
        inputs: Tensor,
        target: Target = None,
        segmentation: Segmentation | Tensor | None = None,
        attribution: Tensor | None = None,
    ) -> Explanation:
        """Explains ``inputs`` (``[B, C, H, W]`` images or ``[B, C, T, H, W]`` clips, uint8 or
        float 0..1) for ``target``: None (the predicted class); an int, a list, a NumPy array
        or an int tensor ``[B]`` of classes; for models whose output is not ``[B, classes]``,
        a tuple (an index into each sample's output) or a function of the model's output
        returning the ``[B]`` scores to explain (``Explanation.target`` is then -1).
        ``segmentation``: a ``Segmentation`` or labels ``[B, (T), H, W]`` (default: SLIC).
        ``attribution``: a pixel attribution ``[B, C, (T), H, W]`` or ``[B, (T), H, W]`` to pool
        instead of running the method (from Captum, for example)."""
        # Works inside torch.no_grad() and torch.inference_mode() callers: every tensor made
        # here is a normal one (inference tensors cannot take part in a backward pass).
        with torch.inference_mode(False):
            return self._explain(inputs, target, segmentation, attribution)

    def _explain(
        self,
        inputs: Tensor,
        target: Target,
        segmentation: Segmentation | Tensor | None,
        attribution: Tensor | None,
    ) -> Explanation:
        images = check_inputs(inputs)
        if self.swag and segmentation is not None:
            raise ValueError(
                "segmentation: swag=True builds its own segmentation from the attribution; "
                "pass segmentation=None or swag=False"
            )
        x = unit_float(images)
        if self.validate:
            check_input_values(
                x, needs_unit_range=segmentation is None and images.dtype != torch.uint8
            )
        rows, target, info = expand_target(target, x, match="iou")
        seg, labels, num = self._segmentation(images, segmentation)
        if rows is not None:  # one row per box: each box's sample, segmented once
            self._check_rows_of_boxes()
            if attribution is not None and attribution.shape[0] == x.shape[0]:
                attribution = attribution.index_select(0, rows)  # one per image: per box
            images, x = images.index_select(0, rows), x.index_select(0, rows)
            seg = seg.select(rows) if seg is not None else None
            labels = labels.index_select(0, rows) if labels is not None else None
            num = num.index_select(0, rows) if num is not None else None
        resolved = resolve_target(target, x.shape[0], x.device)
        if attribution is not None:
            pixel = self._given_attribution(attribution, x)
            if isinstance(resolved, OutputTarget):
                resolved = resolved.row_classes(x.shape[0], x.device)
            elif not isinstance(resolved, Tensor):
                resolved = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        else:
            if self._attributor is None:
                raise ValueError("model: None needs an attribution= tensor")
            raw, resolved = self._attributor(x, resolved, labels, num)
            pixel = reduce_channels(raw.float(), self.channel_reduce)
            if self._attributor.logits is not None:
                info["logits"] = self._attributor.logits
            if self._attributor.delta is not None:
                info["delta"] = self._attributor.delta
            cam = self._attributor.gradcam  # set by the CAM methods only
            layouts = cam.layouts if cam is not None else None
            if cam is not None and layouts is not None:  # one layer: a name; several: a list
                info["layer"] = cam.names[0] if len(cam.names) == 1 else cam.names
                info["layout"] = layouts[0] if len(layouts) == 1 else layouts
                info["degenerate"] = cam.degenerate
        if self.swag:
            seg = slic(
                _swag_features(images, pixel, self.swag_weight),
                **self._slic_keywords(images),
                validate=False,
            )
            labels, num = seg.labels, seg.num_segments
        assert labels is not None  # given, from SLIC, or from SWAG above
        assert num is not None
        scores = pool_scores(pixel, labels, num, self.reduce)
        info["tied"] = check_scores(scores, num, info.get("degenerate"))
        return Explanation(
            segment_scores=scores,
            labels=labels,
            num_segments=num,
            pixel_scores=pixel,
            target=resolved,
            method=self.spec.method,
            reduce=self.reduce,
            segmentation=seg,
            info=info,
        )

    def _check_rows_of_boxes(self) -> None:
        """A DetectionTarget runs the model on one row per box: per-sample arguments, which
        hold one row per image, cannot follow (``additional_forward_args``, a tensor
        ``baseline``)."""
        forward = self._attributor.forward if self._attributor is not None else None
        baseline = self.spec.options.get("baseline")
        if (forward is not None and forward.extra_args) or isinstance(baseline, Tensor):
            raise ValueError(
                "target: a DetectionTarget explains one row per box, so additional_forward_args "
                "and a baseline tensor (one row per image) cannot follow it; pass them without "
                "the detection target, or a named baseline ('zeros', 'blur', ...)"
            )

    def _segmentation(self, images: Tensor, segmentation: Segmentation | Tensor | None) -> Segments:
        if segmentation is not None:
            return resolve_given_segmentation(segmentation, images)
        if self.swag:
            return None, None, None  # built from the attribution afterwards
        seg = slic(images, **self._slic_keywords(images), validate=False)
        return seg, seg.labels, seg.num_segments

    def _slic_keywords(self, images: Tensor) -> dict[str, Any]:
        return {"n_segments": DEFAULT_SEGMENTS[images.dim()], **self.slic_options}

    def _given_attribution(self, attribution: Tensor, x: Tensor) -> Tensor:
        if not isinstance(attribution, Tensor) or not attribution.is_floating_point():
            got = getattr(attribution, "dtype", type(attribution).__name__)
            raise TypeError(f"attribution: expected a float tensor, got {got}")
        if attribution.device != x.device:
            raise ValueError(
                f"attribution: expected a tensor on {x.device}, got {attribution.device}"
            )
        spatial = tuple(x.shape[2:])
        same_batch = attribution.shape[0] == x.shape[0]
        if attribution.dim() == x.dim() and same_batch and tuple(attribution.shape[2:]) == spatial:
            return reduce_channels(attribution.float(), self.channel_reduce)
        if (
            attribution.dim() == x.dim() - 1
            and same_batch
            and tuple(attribution.shape[1:]) == spatial
        ):
            return attribution.float()
        raise ValueError(
            f"attribution: expected [B, C, {_dims(spatial)}] or [B, {_dims(spatial)}] with B = {x.shape[0]}, "
            f"got shape {tuple(attribution.shape)}"
        )


def explain(
    model: nn.Module | None,
    inputs: Tensor,
    target: Target = None,
    method: str = "integrated_gradients",
    segmentation: Segmentation | Tensor | None = None,
    reduce: str | None = None,
    swag: bool = False,
    *,
    attribution: Tensor | None = None,
    **options: Any,
) -> Explanation:
    """Explains ``model``'s decision on ``inputs`` by gradient weighted superpixels.

    One call of ``Explainer(model, method, reduce=reduce, swag=swag, **options)``; see
    ``Explainer`` for every option. ``method="lime_ig"`` gives LIME-like segment weights
    (integrated gradients from the segment-mean image, summed per segment) at the cost of
    ``n_steps`` backward passes instead of LIME's ~1000 forward passes.

    Returns:
        ``Explanation`` with ``segment_scores [B, K]``, ``labels``, ``pixel_scores``, ``target``.
    """
    explainer = Explainer(model, method, reduce=reduce, swag=swag, **options)
    return explainer(inputs, target, segmentation, attribution)


def _default_reduce(method: str) -> str:
    """``sum`` for the methods whose segment scores are sums (LIME-like), else ``mean``."""
    return "sum" if method in ("lime_ig", "banzhaf") else "mean"


def pool_scores(pixel: Tensor, labels: Tensor, num_segments: Tensor, reduce: str) -> Tensor:
    """Segment scores ``[B, K]`` of pixel scores ``[B, *S]``."""
    if reduce == "positive_mean":
        pixel, reduce = pixel.clamp(min=0), "mean"
    elif reduce == "abs_mean":
        pixel, reduce = pixel.abs(), "mean"
    # Segments past a sample's count are empty, and empty segments pool to 0.
    # a segment_pool reduction now (unknown ones raise there)
    return ops.segment_pool(
        pixel, labels, num_segments, cast(ops.Reduction, reduce), validate=False
    )


def _swag_features(images: Tensor, pixel: Tensor, weight: float) -> Tensor:
    """Image channels (CIELAB for RGB) plus the attribution magnitude, normalised per
    sample by its 99th percentile and scaled to 0..100 (the range of L)."""
    magnitude = pixel.abs().float()
    flat = magnitude.flatten(1)
    rank = max(1, round(0.99 * flat.shape[1]))  # kthvalue: no size limit, unlike quantile
    scale = flat.kthvalue(rank, dim=1).values.clamp(min=1e-12).view(-1, *([1] * (pixel.dim() - 1)))
    extra = (magnitude / scale).clamp(max=1).unsqueeze(1) * (100.0 * weight)
    colour = rgb_to_lab(images) if images.shape[1] == 3 else unit_float(images).float() * 100
    return torch.cat([colour, extra], dim=1)


def _dims(spatial: tuple[int, ...]) -> str:
    return ", ".join(map(str, spatial))
