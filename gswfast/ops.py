"""Typed wrappers over ``torch.ops.gswfast.*``: validation, shapes, fake kernels, autograd.

Shapes use ``S`` for the spatial extent, ``(H, W)`` for images or ``(T, H, W)`` for clips,
and ``K`` for the number of segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from gswfast import _extension

__all__ = ["REDUCTIONS", "NumSegments", "Reduction", "paint", "segment_pool", "slic_kernel"]

Reduction = Literal["sum", "mean", "max", "min", "count"]
"""The ``reduce=`` of ``segment_pool``, as a type."""
REDUCTIONS: tuple[str, ...] = ("sum", "mean", "max", "min", "count")
"""The ``reduce=`` values of ``segment_pool``."""
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LABEL_DTYPES = (torch.int32, torch.int64)

NumSegments = int | Sequence[int] | Tensor | None
"""``num_segments=``: None (one more than the largest label), an int for the whole batch, or
one count per sample (a sequence or an int tensor ``[B]``)."""


def segment_pool(
    values: Tensor,
    labels: Tensor,
    num_segments: NumSegments = None,
    reduce: Reduction = "mean",
    *,
    validate: bool = True,
) -> Tensor:
    """Reduces pixel values per segment.

    Args:
        values: ``[B, *S]`` or ``[B, C, *S]``, float16, bfloat16, float32 or float64, any
            strides (channels-last included).
        labels: ``[B, *S]`` int32 or int64 on the same device. ``-1`` marks pixels to
            ignore; every other label of sample ``b`` must lie in ``[0, num_segments[b])``.
        num_segments: ``None`` (``labels.max() + 1``; costs a device sync on CUDA), an
            int ``K``, or per-sample counts (a sequence or an integer tensor ``[B]``, as
            ``Segmentation.num_segments``), in which case ``K = max(num_segments)``.
        reduce: ``"sum"``, ``"mean"``, ``"max"``, ``"min"`` or ``"count"``.
        validate: raise ``ValueError`` for out-of-range labels and for NaN in ``values``.
            On CUDA this reads two ints back from the device (one sync). With
            ``validate=False`` out-of-range pixels are skipped and NaN propagates to its
            segment's result. Skipped under ``torch.compile``.

    Returns:
        ``[B, K]`` for ``values [B, *S]``, ``[B, C, K]`` for ``values [B, C, *S]``, in the
        dtype of ``values`` (``count``: int64). Empty segments give 0 for every reduction.
        With ``validate=False`` a NaN pixel makes its segment's result NaN.

    Sums accumulate in float64 on the CPU and float32 on CUDA (float64 for float64
    values). The result is bitwise reproducible on a given device: pixels are reduced in
    tiles fixed by the shape (on CUDA also by the GPU model), each in a fixed order,
    without floating-point atomics.

    Gradients: sum and mean scatter the output gradient back to every pixel of the
    segment (a gather); max and min send it to the first pixel (lowest flat index) that
    attains the extreme.
    """
    _check_reduce(reduce)
    values3, labels2, has_channel = _flatten_pool_inputs(values, labels)
    k, limits = _resolve_num_segments(num_segments, labels2)
    if reduce == "count":
        _, count, invalid = _segment_pool_op(values3[:, :0], labels2, limits, k, "sum")
        _raise_on_bad_input(invalid, validate)
        count = count.to(torch.int64)
        return count.unsqueeze(1).expand(-1, values3.shape[1], -1) if has_channel else count
    out, _, invalid = _segment_pool_op(values3, labels2, limits, k, reduce)
    # Every reduction propagates NaN, so a NaN in the (small) output marks a NaN input.
    _raise_on_bad_input(invalid, validate, nan_in=out, nan_name="values")
    return out if has_channel else out.squeeze(1)


def paint(
    segment_values: Tensor,
    labels: Tensor,
    fill: float = 0.0,
    *,
    validate: bool = True,
) -> Tensor:
    """Paints segment values back onto their pixels (the gather inverse of pooling).

    Args:
        segment_values: ``[B, K]`` or ``[B, C, K]``, float16, bfloat16, float32 or float64.
        labels: ``[B, *S]`` int32 or int64 on the same device, ``-1`` or ``0 <= l < K``.
        fill: value written to pixels labelled ``-1``.
        validate: raise ``ValueError`` for labels outside ``[-1, K)`` and for NaN in
            ``segment_values`` (one device sync on CUDA); with ``validate=False`` such
            pixels get ``fill`` and NaN is painted as is.

    Returns:
        ``[B, *S]`` for ``segment_values [B, K]``, ``[B, C, *S]`` for ``[B, C, K]``.
        Differentiable with respect to ``segment_values`` (the backward is a segment sum).
    """
    _check_tensor(segment_values, "segment_values", _FLOAT_DTYPES)
    _check_labels(labels)
    if segment_values.dim() not in (2, 3) or segment_values.shape[0] != labels.shape[0]:
        raise ValueError(
            f"segment_values: expected [B, K] or [B, C, K] with B = {labels.shape[0]} "
            f"(labels' batch), got shape {tuple(segment_values.shape)}"
        )
    _check_same_device(segment_values, labels, "labels")
    has_channel = segment_values.dim() == 3
    seg3 = segment_values if has_channel else segment_values.unsqueeze(1)
    spatial = labels.shape[1:]
    out, invalid = _paint_op(seg3, labels.reshape(labels.shape[0], -1), None, float(fill))
    _raise_on_bad_input(invalid, validate, nan_in=seg3, nan_name="segment_values")
    out = out.reshape(out.shape[0], out.shape[1], *spatial)
    return out if has_channel else out.squeeze(1)


def slic_kernel(
    image: Tensor,
    grid: Sequence[int],
    weights: Sequence[float],
    compactness: float,
    convert_lab: bool,
    max_iter: int,
    connectivity: bool,
    min_size: int,
    max_centers: int,
    init_centers: Tensor | None = None,
    init_counts: Tensor | None = None,
    init_labels: Tensor | None = None,
    tol: float = 0.0,
    subsample: int = 1,
    mask: Tensor | None = None,
    max_size: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The SLIC kernel on normalised inputs; ``gswfast.slic`` is the user-facing API.

    Args:
        image: ``[N, C, D, H, W]`` contiguous uint8 (0..255) or float (0..1), finite.
        grid: ``(step_z, step_y, step_x, start_z, start_y, start_x, cells_z, cells_y, cells_x)``.
        weights: spatial distance weights ``(z, y, x)``: ``spacing**2 / step**2``.
        init_centers, init_counts, init_labels: warm start, the k-means state of a previous
            call: cluster centres ``[N, K0, 3 + F]`` float32, cluster sizes ``[N, K0]``
            int32 (0: dead) and each pixel's cluster ``[N, D*H*W]`` int32.
        tol: a sample has converged when at most ``tol * D*H*W`` pixels change cluster
            (``tol`` times its in-mask pixels with ``mask``).
        subsample: row stride of the middle passes (1: every pass reassigns every pixel);
            it travels as a 10th ``grid`` entry.
        max_size: with connectivity, a set of ``max_size`` pixels or more takes no more
            small sets in the merge rounds (0: no limit); it travels as an 11th ``grid``
            entry.
        mask: maskSLIC, uint8 ``[N, D*H*W]`` (nonzero: inside) on the image's device:
            pixels outside get label -1 and take no part; a seed whose grid point lies
            outside is dead.

    Returns:
        ``labels [N, D*H*W]`` int32, ``num_segments [N]`` int64,
        ``centers [N, max_centers, 3 + F]`` float32, ``iterations [N]`` int32, and the
        k-means state: ``clusters [N, K, 3 + F]``, ``cluster_counts [N, K]`` int32,
        ``cluster_labels [N, D*H*W]`` int32.
        The contract is written once in ``csrc/slic/slic.h``.
    """
    # torch.ops.gswfast.* are untyped (Any): the typed local states the op's schema.
    result: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor] = torch.ops.gswfast.slic(
        image,
        init_centers,
        init_counts,
        init_labels,
        [int(v) for v in grid]
        + ([int(subsample)] if subsample != 1 or max_size > 0 else [])
        + ([int(max_size)] if max_size > 0 else []),
        [float(v) for v in weights],
        float(compactness),
        bool(convert_lab),
        int(max_iter),
        float(tol),
        bool(connectivity),
        int(min_size),
        int(max_centers),
        mask,
    )
    return result


def _segment_pool_op(
    values: Tensor, labels: Tensor, limits: Tensor | None, num_segments: int, reduce: str
) -> tuple[Tensor, Tensor, Tensor]:
    """torch.ops.gswfast.segment_pool (untyped): ``(out [B, C, K], count [B, K], invalid [])``."""
    result: tuple[Tensor, Tensor, Tensor] = torch.ops.gswfast.segment_pool(
        values, labels, limits, num_segments, reduce
    )
    return result


def _paint_op(
    segment_values: Tensor, labels: Tensor, limits: Tensor | None, fill: float
) -> tuple[Tensor, Tensor]:
    """torch.ops.gswfast.paint (untyped): ``(out [B, C, N], invalid [])``."""
    result: tuple[Tensor, Tensor] = torch.ops.gswfast.paint(segment_values, labels, limits, fill)
    return result


# ----------------------------------------------------------------------------- checks


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")


def _check_tensor(t: object, name: str, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {names}, got {t.dtype}")
    if t.device.type == "cuda" and not _extension.built_with_cuda():
        raise RuntimeError(
            f"{name}: is on {t.device} but this gswfast build has no CUDA kernels; "
            "reinstall with GSWFAST_CUDA=ON (see docs/guide/troubleshooting.md)"
        )


def _check_labels(labels: object) -> None:
    _check_tensor(labels, "labels", _LABEL_DTYPES)
    assert isinstance(labels, Tensor)
    if labels.dim() not in (3, 4):
        raise ValueError(
            f"labels: expected [B, H, W] or [B, T, H, W], got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] == 0 or math.prod(labels.shape[1:]) == 0:
        raise ValueError(
            f"labels: expected a non-empty batch and spatial size, got shape {tuple(labels.shape)}"
        )


def _check_same_device(a: Tensor, b: Tensor, b_name: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{b_name}: expected device {a.device} (like the values), got {b.device}")


def _flatten_pool_inputs(values: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, bool]:
    """values [B, *S] | [B, C, *S], labels [B, *S] -> values [B, C, N], labels [B, N]."""
    _check_tensor(values, "values", _FLOAT_DTYPES)
    _check_labels(labels)
    _check_same_device(values, labels, "labels")
    spatial = tuple(labels.shape[1:])
    if tuple(values.shape) == tuple(labels.shape):
        values = values.unsqueeze(1)
        has_channel = False
    elif (
        values.dim() == labels.dim() + 1
        and values.shape[0] == labels.shape[0]
        and tuple(values.shape[2:]) == spatial
    ):
        has_channel = True
    else:
        raise ValueError(
            f"values: expected [B, *S] or [B, C, *S] with [B, *S] = {tuple(labels.shape)} "
            f"(the labels' shape), got shape {tuple(values.shape)}"
        )
    # flatten() returns a view whenever the spatial dims are mutually contiguous, which
    # includes channels-last tensors; the kernels take any strides for [B, C, N].
    return values.flatten(2), labels.reshape(labels.shape[0], -1), has_channel


def _resolve_num_segments(num_segments: NumSegments, labels: Tensor) -> tuple[int, Tensor | None]:
    """Returns K and the per-sample label bounds [B] (None when every sample uses K)."""
    if num_segments is None:
        return int(labels.max().item()) + 1, None
    if isinstance(num_segments, bool):
        raise TypeError(
            "num_segments: expected an int, a sequence of ints or an int tensor, got bool"
        )
    if isinstance(num_segments, int):
        if num_segments < 0:
            raise ValueError(f"num_segments: expected >= 0, got {num_segments}")
        return num_segments, None
    if isinstance(num_segments, Tensor):
        if (
            num_segments.dtype.is_floating_point
            or num_segments.dtype == torch.bool
            or num_segments.is_complex()
        ):
            raise TypeError(f"num_segments: expected an integer tensor, got {num_segments.dtype}")
        limits = num_segments.to(device=labels.device, dtype=torch.int64).reshape(-1)
    elif isinstance(num_segments, Sequence) and not isinstance(num_segments, (str, bytes)):
        limits = torch.as_tensor(list(num_segments), dtype=torch.int64, device=labels.device)
    else:
        raise TypeError(
            "num_segments: expected None, an int, a sequence of ints or an int tensor, "
            f"got {type(num_segments).__name__}"
        )
    if limits.numel() != labels.shape[0]:
        raise ValueError(
            f"num_segments: expected {labels.shape[0]} per-sample counts (one per batch item), got {limits.numel()}"
        )
    low, high = torch.stack(torch.aminmax(limits)).tolist()  # one device sync for both
    if low < 0:
        raise ValueError("num_segments: expected counts >= 0")
    return int(high), limits.contiguous()


def _raise_on_bad_input(
    num_invalid: Tensor, validate: bool, nan_in: Tensor | None = None, nan_name: str = ""
) -> None:
    """Raises for out-of-range labels (counted by the kernel) and NaN in `nan_in`.

    Both facts come back from the device in one read (one sync on CUDA).
    """
    if not validate or torch.compiler.is_compiling():
        return
    if nan_in is None or nan_in.numel() == 0:
        bad, nans = int(num_invalid.item()), 0
    else:
        bad, nans = (
            int(x) for x in torch.stack([num_invalid.long(), torch.isnan(nan_in).sum()]).tolist()
        )
    if bad:
        raise ValueError(
            f"labels: {bad} pixel(s) have labels outside [-1, num_segments); "
            "use -1 for pixels to ignore"
        )
    if nans:
        raise ValueError(
            f"{nan_name}: contain NaN ({nans} NaN result(s)); pass validate=False to let NaN "
            "propagate to the affected segments"
        )


# ------------------------------------------------------------- fake kernels (meta)


def _segment_pool_fake(
    values: Tensor, labels: Tensor, limits: Tensor | None, num_segments: int, reduce: str
) -> tuple[Tensor, Tensor, Tensor]:
    b, c, _ = values.shape
    return (
        values.new_empty((b, c, num_segments)),
        labels.new_empty((b, num_segments), dtype=torch.int32),
        labels.new_empty((), dtype=torch.int32),
    )


def _paint_fake(
    segment_values: Tensor, labels: Tensor, limits: Tensor | None, fill: float
) -> tuple[Tensor, Tensor]:
    b, c, _ = segment_values.shape
    return segment_values.new_empty((b, c, labels.shape[1])), labels.new_empty(
        (), dtype=torch.int32
    )


def _slic_fake(
    image: Tensor,
    init_centers: Tensor | None,
    init_counts: Tensor | None,
    init_labels: Tensor | None,
    grid: list[int],
    weights: list[float],
    compactness: float,
    convert_lab: bool,
    max_iter: int,
    tol: float,
    connectivity: bool,
    min_size: int,
    max_centers: int,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n, c = image.shape[:2]
    pixels = math.prod(image.shape[2:])
    k = init_centers.shape[1] if init_centers is not None else math.prod(grid[6:9])
    return (
        image.new_empty((n, pixels), dtype=torch.int32),
        image.new_empty((n,), dtype=torch.int64),
        image.new_empty((n, max_centers, 3 + c), dtype=torch.float32),
        image.new_empty((n,), dtype=torch.int32),
        image.new_empty((n, k, 3 + c), dtype=torch.float32),
        image.new_empty((n, k), dtype=torch.int32),
        image.new_empty((n, pixels), dtype=torch.int32),
    )


# Registered by call, not as decorators: torch.library.register_fake has no return annotation,
# so as a decorator it would make the fake kernels untyped for mypy. It registers and returns
# the function either way.
torch.library.register_fake("gswfast::segment_pool", _segment_pool_fake)
torch.library.register_fake("gswfast::paint", _paint_fake)
torch.library.register_fake("gswfast::slic", _slic_fake)


# --------------------------------------------------------------------- autograd


# ctx is torch's autograd context object, which carries attributes set here (Any).
def _segment_pool_setup(
    ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]
) -> None:
    values, labels, limits, _num_segments, reduce = inputs
    out, count, _ = output
    ctx.reduce = reduce
    if reduce in ("max", "min"):
        ctx.save_for_backward(labels, limits, count, values, out)
    else:
        ctx.save_for_backward(labels, limits, count)


def _segment_pool_backward(
    ctx: Any, grad_out: Tensor, _grad_count: Tensor | None, _grad_invalid: Tensor | None
) -> tuple[Tensor, None, None, None, None]:
    if ctx.reduce in ("max", "min"):
        labels, limits, _, values, out = ctx.saved_tensors
        return _extreme_backward(values, labels, limits, out, grad_out), None, None, None, None
    labels, limits, count = ctx.saved_tensors
    if ctx.reduce == "mean":
        grad_out = grad_out / count.clamp(min=1).unsqueeze(1).to(grad_out.dtype)
    grad, _ = _paint_op(grad_out, labels, limits, 0.0)
    return grad, None, None, None, None


def _extreme_backward(
    values: Tensor, labels: Tensor, limits: Tensor | None, out: Tensor, grad_out: Tensor
) -> Tensor:
    """Sends grad_out [B, C, K] to the first pixel of each segment that attains the extreme."""
    b, c, n = values.shape
    k = out.shape[2]
    if k == 0:
        return values.new_zeros((b, c, n), dtype=grad_out.dtype)
    extreme, _ = _paint_op(out, labels, limits, float("nan"))  # [B, C, N]
    index = torch.arange(n, device=values.device).expand(b, c, n)
    candidate = torch.where(values == extreme, index, n)  # NaN fill never matches
    segment = labels.long().clamp(min=0, max=k - 1).unsqueeze(1).expand(b, c, n)
    first = torch.full((b, c, k), n, dtype=torch.int64, device=values.device)
    first.scatter_reduce_(2, segment, candidate, "amin")
    # Column n collects segments without a winner (empty); it is dropped.
    grad = values.new_zeros((b, c, n + 1)).to(grad_out.dtype)
    grad.scatter_(2, first, grad_out)
    return grad[..., :n]


def _paint_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    segment_values, labels, limits, _fill = inputs
    ctx.num_segments = segment_values.shape[2]
    ctx.save_for_backward(labels, limits)


def _paint_backward(
    ctx: Any, grad_out: Tensor, _grad_invalid: Tensor | None
) -> tuple[Tensor, None, None, None]:
    labels, limits = ctx.saved_tensors
    grad, _, _ = _segment_pool_op(grad_out, labels, limits, ctx.num_segments, "sum")
    return grad, None, None, None


torch.library.register_autograd(
    "gswfast::segment_pool", _segment_pool_backward, setup_context=_segment_pool_setup
)
torch.library.register_autograd("gswfast::paint", _paint_backward, setup_context=_paint_setup)
