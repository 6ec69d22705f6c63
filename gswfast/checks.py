"""Input checks and model calls shared by ``explain``, ``lime`` and ``metrics``.

It sits above ``attribution`` and ``segmentation`` and below the modules that use it, so
that none of them has to import another's internals.
"""

from __future__ import annotations

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
        raise ValueError(f"inputs: expected images [B, C, H, W] or clips [B, C, T, H, W], got shape {tuple(inputs.shape)}")
    if inputs.dtype not in INPUT_DTYPES:
        raise TypeError(f"inputs: expected uint8 or a float dtype, got {inputs.dtype}")
    if inputs.numel() == 0:
        raise ValueError(f"inputs: expected a non-empty tensor, got shape {tuple(inputs.shape)}")
    return inputs.clone() if inputs.is_inference() else inputs


def unit_float(images: Tensor) -> Tensor:
    """uint8 images as float 0..1; float images detached, as they are."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.detach()


def check_input_values(x: Tensor, needs_unit_range: bool) -> None:
    """NaN/inf, and values outside 0..1 when SLIC segments the inputs: one device sync."""
    flags = [~torch.isfinite(x).all()]
    if needs_unit_range:
        low, high = torch.aminmax(x)
        flags.append((low < 0) | (high > 1))
    bad = torch.stack(flags).tolist()
    if bad[0]:
        raise ValueError("inputs: contains NaN or infinite values")
    if needs_unit_range and bad[1]:
        raise ValueError(
            "inputs: SLIC needs images in 0..1 (or uint8); these look normalised. Pass the raw "
            "images with preprocess=<normalisation>, or give segmentation="
        )


def resolve_given_segmentation(segmentation: Segmentation | Tensor, images: Tensor) -> Segments:
    """A given ``Segmentation`` or labels ``[B, (T), H, W]`` checked against ``images``:
    ``(segmentation or None, labels, num_segments [B])``."""
    seg = segmentation if isinstance(segmentation, Segmentation) else None
    labels = seg.labels if seg is not None else segmentation
    expected = (images.shape[0], *images.shape[2:])
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int32, torch.int64):
        got = getattr(labels, "dtype", type(labels).__name__)
        raise TypeError(f"segmentation: expected a Segmentation or int32/int64 labels, got {got}")
    if tuple(labels.shape) != expected:
        raise ValueError(f"segmentation: expected labels of shape {expected} (the inputs' [B, (T), H, W]), "
                         f"got {tuple(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"segmentation: expected labels on {images.device}, got {labels.device}")
    if seg is not None:
        return seg, seg.labels, seg.num_segments
    flat = labels.reshape(labels.shape[0], -1)
    low = flat.amin()
    if bool(low < 0):  # one sync; label ranges past this are checked by segment_pool
        raise ValueError("segmentation: labels must be >= 0")
    return None, labels, flat.amax(1).to(torch.int64) + 1


def composite_logits(forward: ModelForward, inside: Tensor, outside: Tensor, flat_labels: Tensor, sample: Tensor,
                     segments: Tensor) -> Tensor:
    """The model's logits ``[rows, classes]`` on composites: row ``i`` shows sample
    ``sample[i]`` of ``inside`` on its segments where ``segments [rows, K]`` is True, and of
    ``outside`` elsewhere (``inside``/``outside [B, C, *S]``, ``flat_labels`` int64 ``[B, P]``)."""
    pixels = segments.gather(1, flat_labels[sample]).view(sample.numel(), 1, *inside.shape[2:])
    return forward.logits(torch.where(pixels, inside[sample], outside[sample]))
