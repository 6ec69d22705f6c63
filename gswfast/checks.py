"""Input checks and model calls shared by ``explain``, ``lime`` and ``metrics``.

It sits above ``attribution`` and ``segmentation`` and below the modules that use it, so
that none of them has to import another's internals.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from gswfast.attribution import ModelForward
from gswfast.segmentation import Segmentation

INPUT_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
Segments = tuple[Segmentation | None, Tensor | None, Tensor | None]  # segmentation, labels, counts


def check_inputs(inputs: object) -> Tensor:
    """``inputs`` as a tensor of images ``[B, C, H, W]`` or clips ``[B, C, T, H, W]``
    (uint8 or float), cloned out of inference mode; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a tensor, got {type(inputs).__name__}")
    if inputs.dim() not in (4, 5):
        raise ValueError(
            f"inputs: expected images [B, C, H, W] or clips [B, C, T, H, W], got shape {tuple(inputs.shape)}"
        )
    if inputs.dtype not in INPUT_DTYPES:
        raise TypeError(f"inputs: expected uint8 or a float dtype, got {inputs.dtype}")
    if inputs.numel() == 0:
        raise ValueError(f"inputs: expected a non-empty tensor, got shape {tuple(inputs.shape)}")
    _check_channels_first(tuple(inputs.shape))
    return inputs.clone() if inputs.is_inference() else inputs


def _check_channels_first(shape: tuple[int, ...]) -> None:
    """Channels-last layouts (what PIL, NumPy and video decoders give) named, with the fix."""
    channels = (1, 3, 4)
    if shape[1] in channels:
        return
    if shape[-1] in channels:
        layout, fix = (
            ("[B, H, W, C]", "permute(0, 3, 1, 2)")
            if len(shape) == 4
            else ("[B, T, H, W, C]", "permute(0, 4, 1, 2, 3)")
        )
    elif len(shape) == 5 and shape[2] in channels:
        layout, fix = "[B, T, C, H, W]", "permute(0, 2, 1, 3, 4)"
    else:
        return
    raise ValueError(
        f"inputs: expected channels first ({'[B, C, H, W]' if len(shape) == 4 else '[B, C, T, H, W]'}), "
        f"got shape {shape}, which looks like {layout}; pass inputs.{fix}"
    )


def unit_float(images: Tensor) -> Tensor:
    """uint8 images as float 0..1; float images detached, as they are."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.detach()


def check_input_values(x: Tensor, needs_unit_range: bool) -> None:
    """NaN/inf, and values outside 0..1 when SLIC segments the inputs: one device sync."""
    low, high = torch.aminmax(x.detach())
    nonfinite, low, high = torch.stack(
        [(~torch.isfinite(x).all()).double(), low.double(), high.double()]
    ).tolist()
    if nonfinite:
        raise ValueError("inputs: contains NaN or infinite values")
    if not needs_unit_range or (low >= 0 and high <= 1):
        return
    if low >= 0 and 2 < high <= 255:
        raise ValueError(
            f"inputs: float images must be in 0..1, but these reach {high:g}: 0..255 pixel values? "
            "Divide them by 255, or pass the uint8 tensor"
        )
    if low >= -0.5 and high <= 1.5:
        raise ValueError(
            f"inputs: float images must be in 0..1, these span {low:g}..{high:g} (resampling "
            "overshoot?); clamp them with inputs.clamp(0, 1)"
        )
    raise ValueError(
        f"inputs: SLIC needs images in 0..1 (or uint8); these span {low:g}..{high:g} and look normalised. Pass "
        "the raw images with preprocess=<normalisation>, or give segmentation="
    )


def resolve_given_segmentation(
    segmentation: Segmentation | Tensor, images: Tensor
) -> tuple[Segmentation | None, Tensor, Tensor]:
    """A given ``Segmentation`` or labels ``[B, (T), H, W]`` checked against ``images``:
    ``(segmentation or None, labels, num_segments [B])``."""
    seg = segmentation if isinstance(segmentation, Segmentation) else None
    labels: object = seg.labels if seg is not None else segmentation
    if isinstance(labels, np.ndarray) and labels.dtype in (np.int32, np.int64):
        labels = torch.from_numpy(np.ascontiguousarray(labels)).to(images.device)
    expected = (images.shape[0], *images.shape[2:])
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int32, torch.int64):
        got = (
            f"a {type(labels).__module__}.{type(labels).__name__} of {labels.dtype}"
            if hasattr(labels, "dtype")
            else type(labels).__name__
        )
        raise TypeError(
            "segmentation: expected a Segmentation or int32/int64 labels (a tensor, or a "
            f"NumPy array), got {got}"
        )
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"segmentation: expected labels of shape {expected} (the inputs' [B, (T), H, W]), "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != images.device:
        raise ValueError(f"segmentation: expected labels on {images.device}, got {labels.device}")
    if seg is not None:
        if seg.mask is not None:
            raise ValueError(
                "segmentation: a masked segmentation (slic(mask=...), label -1 outside the "
                "mask) cannot be explained: every pixel must belong to a segment; segment "
                "without mask, or pass labels with the outside as a segment of its own"
            )
        return seg, seg.labels, seg.num_segments
    flat = labels.reshape(labels.shape[0], -1)
    low = flat.amin()
    if bool(low < 0):  # one sync; label ranges past this are checked by segment_pool
        raise ValueError("segmentation: labels must be >= 0")
    return None, labels, flat.amax(1).to(torch.int64) + 1


def composite(
    inside: Tensor, outside: Tensor, flat_labels: Tensor, sample: Tensor, segments: Tensor
) -> Tensor:
    """Composites ``[rows, C, *S]``: row ``i`` shows sample ``sample[i]`` of ``inside`` on its
    segments where ``segments [rows, K]`` is True, and of ``outside`` elsewhere
    (``inside``/``outside [B, C, *S]``, ``flat_labels`` int64 ``[B, P]``)."""
    pixels = segments.gather(1, flat_labels[sample]).view(sample.numel(), 1, *inside.shape[2:])
    return torch.where(pixels, inside[sample], outside[sample])


def composite_logits(
    forward: ModelForward,
    inside: Tensor,
    outside: Tensor,
    flat_labels: Tensor,
    sample: Tensor,
    segments: Tensor,
) -> Tensor:
    """The model's logits ``[rows, classes]`` on ``composite(...)``'s rows (the additional
    forward args follow ``sample``)."""
    return forward.logits(composite(inside, outside, flat_labels, sample, segments), sample)


def segment_mask(num_segments: Tensor, width: int) -> Tensor:
    """bool ``[B, width]``: which ids of each sample's ``[B, K]`` scores are its segments
    (``id < num_segments[b]``); the rest is padding."""
    return torch.arange(width, device=num_segments.device) < num_segments.unsqueeze(1)


def tied_samples(scores: Tensor, num_segments: Tensor, valid: Tensor | None = None) -> Tensor:
    """bool ``[B]``: the samples with two or more segments whose ``scores [B, K]`` are all
    equal (no segment is best); ``valid``: their ``segment_mask`` where the caller has it.
    On the device, no sync."""
    if valid is None:
        valid = segment_mask(num_segments, scores.shape[1])
    high = torch.where(valid, scores, float("-inf")).amax(1)
    low = torch.where(valid, scores, float("inf")).amin(1)
    return (high == low) & (num_segments > 1)


def check_scores(scores: Tensor, num_segments: Tensor, warned: Tensor | None = None) -> Tensor:
    """The tied samples ``[B]`` (``tied_samples``) of segment ``scores [B, K]``, with a
    warning for those not in ``warned`` (a CAM map already reported as constant);
    ``ValueError`` for NaN or infinite scores, which a model with NaN weights or an output
    that overflows gives. One device sync."""
    valid = segment_mask(num_segments, scores.shape[1])
    finite = torch.isfinite(torch.where(valid, scores, 0)).all(1)
    tied = tied_samples(scores, num_segments, valid)
    fresh = tied if warned is None else tied & ~warned.to(tied.device)
    flags = torch.stack([~finite, fresh]).cpu()
    bad = flags[0].nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"segment_scores: NaN or infinite for sample(s) {bad}: the model's output or its "
            "gradient is not finite there (are its weights finite?)"
        )
    if bool(flags[1].any()):
        warnings.warn(
            f"gswfast: every segment scores the same for sample(s) "
            f"{flags[1].nonzero().flatten().tolist()}: the explained output does not change with "
            "the input there (a head initialised to zero, as a random torchvision ViT's?); no "
            "segment is best, so top_k() and the pictures outline none",
            RuntimeWarning,
            stacklevel=4,
        )
    return tied
