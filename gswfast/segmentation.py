"""SLIC superpixels for image batches and supervoxels for frame stacks, on their device.

``slic`` follows scikit-image's ``slic`` where the parameters mean the same (``n_segments``,
``compactness``, ``max_iter``, ``spacing``, ``enforce_connectivity``, ``min_size_factor``,
``mask``, the seeding grid and the distance), and adds batches, clips, warm starts and CUDA.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, SupportsFloat

import torch
from torch import Tensor

from gswfast import _extension, ops

Mode = Literal["auto", "image", "per_frame", "volume"]
MODES: tuple[str, ...] = ("auto", "image", "per_frame", "volume")
# Integer images other than uint8 (which the kernel reads itself) are read as value / the
# dtype's largest value, as scikit-image's img_as_float and torchvision's convert_image_dtype:
# unsigned ones and bool in 0..1, signed ones in -1..1.
_INTEGER_DTYPES = (
    torch.bool,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_IMAGE_DTYPES = (torch.uint8, *_INTEGER_DTYPES, *_FLOAT_DTYPES)


@dataclass(frozen=True)
class Segmentation:
    """Result of ``slic``: segment ids per pixel and what a warm start needs.

    Attributes:
        labels: int32 ``[B, H, W]`` (image mode) or ``[B, T, H, W]`` (clips); ids of sample
            ``b`` are ``0 .. num_segments[b] - 1``. In ``per_frame`` mode the ids of frame
            ``t`` follow those of frames ``0 .. t-1`` of the same clip.
        num_segments: int64 ``[B]``.
        centers: float32 ``[B, M, 3 + F]`` (``[B, T, M, 3 + F]`` per frame): the mean
            ``(t, y, x, features)`` of each segment, rows past its count are zero. Features
            are CIELAB when the input was converted, else the channels scaled to 0..1.
        center_counts: int64 ``[B]`` (``[B, T]`` per frame): valid rows of ``centers``.
        iterations: int32 ``[B]`` (``[B, T]``): k-means passes each sample used (fewer
            when it converged, as warm starts usually do).
        mode: ``"image"``, ``"per_frame"`` or ``"volume"``.
        clusters, cluster_counts, cluster_labels: the k-means state before connectivity
            (cluster centres ``[N, K, 3 + F]``, sizes ``[N, K]``, each pixel's cluster
            ``[N, D*H*W]``, with ``N = B``, or ``B * T`` per frame) that ``init=`` resumes
            from. The segment that holds the largest piece of cluster ``k`` has id ``k``
            whenever ``k < num_segments``.
        mask: the ``mask`` given to ``slic`` (bool, the labels' shape), or None. Pixels
            outside it have label -1 and belong to no segment.
    """

    labels: Tensor
    num_segments: Tensor
    centers: Tensor
    center_counts: Tensor
    iterations: Tensor
    mode: str
    clusters: Tensor
    cluster_counts: Tensor
    cluster_labels: Tensor
    mask: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def select(self, rows: Tensor) -> Segmentation:
        """The segmentation of samples ``rows [R]`` (int64, on its device), in that order:
        a sample may appear several times (one row per box of a ``DetectionTarget``)."""
        frames = self.labels.shape[1] if self.mode == "per_frame" else 1
        # per frame, the k-means state has one row per (sample, frame)
        state_rows = (rows[:, None] * frames + torch.arange(frames, device=rows.device)).flatten()
        pick = {
            name: getattr(self, name).index_select(0, rows)
            for name in ("labels", "num_segments", "centers", "center_counts", "iterations")
        }
        for name in ("clusters", "cluster_counts", "cluster_labels"):
            pick[name] = getattr(self, name).index_select(0, state_rows)
        mask = self.mask.index_select(0, rows) if self.mask is not None else None
        return replace(self, **pick, mask=mask)

    def to(self, device: torch.device | str) -> Segmentation:
        """The same segmentation on another device."""
        return replace(
            self,
            labels=self.labels.to(device),
            num_segments=self.num_segments.to(device),
            centers=self.centers.to(device),
            center_counts=self.center_counts.to(device),
            iterations=self.iterations.to(device),
            clusters=self.clusters.to(device),
            cluster_counts=self.cluster_counts.to(device),
            cluster_labels=self.cluster_labels.to(device),
            mask=self.mask.to(device) if self.mask is not None else None,
        )


def slic(
    images: Tensor,
    n_segments: int = 200,
    compactness: float = 10.0,
    max_iter: int = 10,
    *,
    mode: Mode = "auto",
    spacing: Sequence[float] | None = None,
    convert_lab: bool | None = None,
    enforce_connectivity: bool = True,
    min_size_factor: float = 0.25,
    init: Segmentation | None = None,
    tol: float = 0.02,
    validate: bool = True,
    sigma: float | Sequence[float] = 0.0,
    subsample: int = 1,
    mask: Tensor | None = None,
    max_size_factor: float | None = None,
) -> Segmentation:
    """Segments images into superpixels or clips into supervoxels (SLIC).

    Args:
        images: ``[B, C, H, W]`` images or ``[B, C, T, H, W]`` clips, uint8 (0..255),
            float16/bfloat16/float32/float64 (0..1), or other integers and bool, read as
            scikit-image's ``img_as_float`` does: value / the dtype's largest value (uint16
            0..65535 as 0..1, int16 -32767..32767 as -1..1, bool as 0 and 1); any number of
            channels, CPU or CUDA. Values are taken in their nominal range (no per-image
            stretch, unlike scikit-image), so a frame's segments never depend on the
            brightest pixel of another frame; sRGB outside 0..1 (negative signed integers
            too) is an error when converted to CIELAB (with ``validate``). Without CIELAB,
            float channels are used as given (features), clamped to +-32767.
        n_segments: approximate number of segments per image (``image``, ``per_frame``)
            or per clip (``volume``). Seeds sit on scikit-image's regular grid; more
            segments than pixels give one per pixel, and a thin image gets one row of seeds.
        compactness: weight of space against colour; larger gives squarer segments. Same
            scale as scikit-image: colour distance in CIELAB units (or 0..1 values) divided
            by ``compactness``, spatial distance divided by the grid step. At least 1e-10
            (smaller would overflow the kernel's float32 colour term).
        max_iter: k-means passes at most (up to 2^31 - 1); a sample stops early once no
            pixel changes.
        mode: ``"image"`` (4-D input), ``"per_frame"`` (each frame of a clip on its own),
            ``"volume"`` (supervoxels over ``T x H x W``) or ``"auto"`` (4-D: image,
            5-D: volume).
        spacing: distance weights ``(t, y, x)`` (volume; ``(y, x)`` also accepted for
            images), as scikit-image's ``spacing``. Default: all ones.
        convert_lab: convert sRGB to CIELAB on the device; default True for 3 channels.
        enforce_connectivity: make every segment one 4-connected (6-connected in volumes)
            region: connected components are labelled, and components smaller than
            ``min_size_factor * pixels / seeds`` join the adjacent segment with the nearest
            mean colour.
        min_size_factor: see ``enforce_connectivity``.
        max_size_factor: as scikit-image's ``max_size_factor`` (whose default is 3;
            here None: no limit, the results of earlier versions): with connectivity, a
            segment stops growing past ``max_size_factor * pixels / seeds`` pixels (the
            mask area per seed with ``mask``): a set that large takes no more small
            components in the merge rounds, so a small one next to large ones only stays
            a segment of its own. Unlike scikit-image, a connected k-means cluster larger
            than that is not split (k-means clusters stay within their seed's 2S x 2S
            window, at most about 4x the mean size; scikit-image cuts them in
            breadth-first order, which has no order-free parallel equivalent).
        init: a previous ``Segmentation`` of an input of the same shape (for example the
            previous window of a video): its segments are the starting clusters (centres
            and pixels), so k-means needs fewer passes, and a segment that is still there
            keeps its id.
        tol: a sample stops iterating once at most ``tol`` times its pixel count (its
            mask area with ``mask``) changed cluster in a pass (0: only when none did, as
            scikit-image). SLIC's k-means keeps flipping about 1-2% of the pixels
            (boundary pixels) long after the segments have settled, so the default 0.02
            ends it there: a warm start on an unchanged scene then takes a single pass.
        sigma: Gaussian smoothing before segmenting, as scikit-image's ``sigma``: the
            standard deviation in pixels, divided by ``spacing`` when a scalar, or one value
            per dimension (``(y, x)`` or ``(t, y, x)``); scipy's ``reflect`` borders,
            truncated at 4 sigma. Time is smoothed in ``volume`` mode only. 0: none; at most
            1e5 pixels (after the spacing), which already flattens any image to its mean.
        subsample: row stride of the k-means passes (fast-slic's subsampled assignment).
            A pass reassigns the rows ``y % subsample == pass % subsample`` of each frame
            only, except the last pass and the first of a warm start or of a masked call,
            which reassign every pixel; once a subsampled pass changes at most ``tol`` of
            the pixels (of the mask area with ``mask``), every later pass is full and the
            next one that meets ``tol`` ends the loop. Centres are the exact means of all
            assigned pixels' current clusters. Where the seed rows are closer than
            ``2 * subsample`` (``step_y < 2 * subsample``: dense grids, thin images) every
            pass is full: skipped rows would starve the seeds between the visited ones.
            1 (default): every pass is full (the classic SLIC loop); see docs/guide/performance.md
            for why 3 (fast-slic's default) is not the default.
        mask: maskSLIC (scikit-image's ``mask``): bool ``[B, H, W]`` (images) or
            ``[B, T, H, W]`` (clips) on the images' device; only its True pixels are
            segmented, the others get label -1 (``segment_pool`` and ``paint`` skip them;
            ``explain`` and LIME refuse such a segmentation). Seeds: the regular grid of
            ``n_segments * pixels / mask area`` seeds (area: the mean over the samples,
            frames in ``per_frame`` mode, whose mask is not empty), of which those whose
            grid point lies inside are kept, so a sample gets about ``n_segments * its
            area / mean area`` seeds (scikit-image spreads exactly ``n_segments`` by
            k-means on the mask); where a sample's mask holds no grid point, the grid is
            made twice as dense until every one does. Outside pixels take no part in the
            assignment, the centres or connectivity; ``min_size_factor`` is relative to
            the mask area per seed, and ``tol`` to each sample's own mask area (frames in
            ``per_frame`` mode). Every sample needs a True pixel; an empty frame of a
            ``per_frame`` clip gets no segment. One host sync (also on CUDA).
        validate: raise ``ValueError`` for NaN or infinite values, float sRGB outside 0..1
            with CIELAB, and an ``init`` sample without a live cluster (one device sync on
            CUDA). Unvalidated, such an ``init`` sample comes out as one segment.

    Integer arguments take Python or NumPy integers, number arguments any real number
    (NumPy floats too), but no bools; ``enforce_connectivity``, ``convert_lab`` and
    ``validate`` take True or False only. A wrong type raises ``TypeError``, a value out
    of range ``ValueError``, naming the argument.

    Returns:
        ``Segmentation`` with int32 labels ``[B, H, W]`` or ``[B, T, H, W]``.

    Same input, same output, bitwise, on a given device.
    """
    _check_images(images)
    given_dtype = images.dtype
    images = _integers_as_float(images)
    mode = _resolve_mode(mode, images)
    n_segments = _as_int("n_segments", n_segments, 1)
    compactness = _as_float("compactness", compactness, _MIN_COMPACTNESS)
    max_iter = _as_int("max_iter", max_iter, 1, _INT32_MAX)
    min_size_factor = _as_float("min_size_factor", min_size_factor, 0.0, 1.0)
    tol = _as_float("tol", tol, 0.0, 1.0)
    subsample = _as_int("subsample", subsample, 1, _INT32_MAX)
    if max_size_factor is not None:
        max_size_factor = _as_float("max_size_factor", max_size_factor, 0.0, above=True)
    enforce_connectivity = _as_flag("enforce_connectivity", enforce_connectivity)
    validate = _as_flag("validate", validate)
    channels = images.shape[1]
    lab = _resolve_convert_lab(convert_lab, channels)
    volume = _as_volume_batch(images, mode)  # [N, C, D, H, W]
    _n, _, d, h, w = volume.shape
    kernel_mask = _check_mask(mask, images, mode)  # uint8 [N, P] or None
    if kernel_mask is None:
        steps, starts, cells = _seed_grid((d, h, w), n_segments, mode)
        seeds = math.prod(cells)
        area = d * h * w
    else:
        steps, starts, cells, seeds, area = _masked_grid(
            kernel_mask, (d, h, w), n_segments, mode, images.shape[0]
        )
    weights = _spatial_weights(spacing, steps, mode)
    blur = _resolve_sigma(sigma, spacing, mode)
    pixels = d * h * w
    min_size = int(min_size_factor * area / seeds) if enforce_connectivity else 0
    max_size = (  # at most the pixels (the kernel's limit too): 1e300 * area would overflow
        max(1, int(min(max_size_factor * area / seeds, pixels)))
        if enforce_connectivity and max_size_factor is not None
        else 0
    )
    max_centers = _max_centers(seeds, pixels, min_size, enforce_connectivity)
    init_centers, init_counts, init_labels = _warm_start(init, images, mode, volume, channels)
    if validate:
        _validate_values(images, init_counts, lab, given_dtype)
    if any(s > 0 for s in blur):
        volume = _smooth(volume, blur)
    outputs = ops.slic_kernel(
        volume,
        (*steps, *starts, *cells),
        weights,
        compactness,
        lab,
        max_iter,
        enforce_connectivity,
        min_size,
        max_centers,
        init_centers,
        init_counts,
        init_labels,
        tol,
        subsample,
        kernel_mask,
        max_size,
    )
    seg = _assemble(images, mode, *outputs, masked=mask is not None)
    return seg if mask is None else replace(seg, mask=mask)


# ------------------------------------------------------------------------ shapes


def _resolve_mode(mode: Mode, images: Tensor) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "image" if images.dim() == 4 else "volume"
    if mode == "image" and images.dim() != 4:
        raise ValueError(
            f"mode: 'image' expects images [B, C, H, W], got shape {tuple(images.shape)}"
        )
    if mode in ("per_frame", "volume") and images.dim() != 5:
        raise ValueError(
            f"mode: {mode!r} expects clips [B, C, T, H, W], got shape {tuple(images.shape)}"
        )
    return mode


def _as_volume_batch(images: Tensor, mode: str) -> Tensor:
    """images -> [N, C, D, H, W] contiguous: images and frames are D = 1 volumes."""
    if mode == "image":
        return images.unsqueeze(2).contiguous()
    if mode == "per_frame":
        b, c, t, h, w = images.shape
        return images.permute(0, 2, 1, 3, 4).reshape(b * t, c, 1, h, w).contiguous()
    return images.contiguous()


def _assemble(
    images: Tensor,
    mode: str,
    labels: Tensor,
    num: Tensor,
    centers: Tensor,
    iterations: Tensor,
    *state: Tensor,
    masked: bool = False,
) -> Segmentation:
    if mode == "image":
        b, _, h, w = images.shape
        return Segmentation(labels.view(b, h, w), num, centers, num, iterations, mode, *state)
    b, _, t, h, w = images.shape
    if mode == "volume":
        return Segmentation(labels.view(b, t, h, w), num, centers, num, iterations, mode, *state)
    # per_frame: shift each frame's ids past those of the clip's earlier frames.
    frame_num = num.view(b, t)
    offsets = torch.cumsum(frame_num, dim=1) - frame_num
    frames = labels.view(b, t, h * w)
    clip_labels = frames + offsets.to(torch.int32).unsqueeze(2)
    if masked:  # -1 (outside the mask) stays -1
        clip_labels = torch.where(frames >= 0, clip_labels, frames)
    return Segmentation(
        clip_labels.view(b, t, h, w),
        frame_num.sum(dim=1),
        centers.view(b, t, *centers.shape[1:]),
        frame_num,
        iterations.view(b, t),
        mode,
        *state,
    )


# ------------------------------------------------------------------------ the grid


def _seed_grid(
    shape: tuple[int, int, int], n_segments: int, mode: str
) -> tuple[list[int], list[int], list[int]]:
    """Seed grid as scikit-image's ``regular_grid``: steps, starts and seed counts (z, y, x).

    The grid spreads ``n_segments`` seeds isotropically; a dimension shorter than the step
    gets a single layer of seeds (time, the unit depth of an image, or a thin image, as
    scikit-image), and more segments than pixels give one seed per pixel.
    """
    pixels = math.prod(shape)
    n_segments = min(n_segments, pixels)
    order = sorted(range(3), key=lambda i: shape[i])
    dims = [shape[i] for i in order]
    steps = [(pixels / n_segments) ** (1.0 / 3.0)] * 3
    if any(dim < step for dim, step in zip(dims, steps, strict=True)):
        for i in range(3):
            steps[i] = float(dims[i])
            rest = math.prod(dims[i + 1 :])
            if i < 2:
                steps[i + 1 :] = [(rest / n_segments) ** (1.0 / (2 - i))] * (2 - i)
            if all(dim >= step for dim, step in zip(dims, steps, strict=True)):
                break
    if pixels <= n_segments:  # one seed per pixel
        sorted_steps, sorted_starts = [1, 1, 1], [0, 0, 0]
    else:
        sorted_starts = [int(s // 2) for s in steps]
        sorted_steps = [max(1, round(s)) for s in steps]
    out_steps, out_starts = [0, 0, 0], [0, 0, 0]
    for i, dim_index in enumerate(order):
        out_steps[dim_index] = sorted_steps[i]
        out_starts[dim_index] = sorted_starts[i]
    cells = [
        len(range(start, dim, step))
        for start, dim, step in zip(out_starts, shape, out_steps, strict=True)
    ]
    return out_steps, out_starts, cells


def _check_mask(mask: object, images: Tensor, mode: str) -> Tensor | None:
    """The kernel's mask, uint8 ``[N, D*H*W]`` (frames are samples in ``per_frame`` mode),
    from ``mask`` bool ``[B, (T), H, W]``; None without one."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask: expected a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    expected = (images.shape[0], *images.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask: expected shape {expected} (the images' [B, (T), H, W]), got {tuple(mask.shape)}"
        )
    if mask.device != images.device:
        raise ValueError(
            f"mask: expected device {images.device} (like the images), got {mask.device}"
        )
    b = images.shape[0]
    flat = mask.reshape(b, -1).to(torch.uint8).contiguous()
    return flat.view(-1, math.prod(images.shape[-2:])) if mode == "per_frame" else flat


def _masked_grid(
    mask: Tensor, shape: tuple[int, int, int], n_segments: int, mode: str, batch: int
) -> tuple[list[int], list[int], list[int], int, int]:
    """The seed grid of a masked call (``slic``'s ``mask [N, P]``): steps, starts, cells,
    and the live seeds (grid points inside the mask) and mask pixels summed over the samples
    whose mask is not empty. One host sync per grid tried (usually one)."""
    pixels = math.prod(shape)
    n = mask.shape[0]
    areas: list[int] = mask.sum(dim=1, dtype=torch.int64).tolist()
    per_batch = n // batch  # frames per clip in per_frame mode, else 1
    for b in range(batch):
        if not any(areas[b * per_batch : (b + 1) * per_batch]):
            raise ValueError(f"mask: sample {b} has no True pixel; expected some pixels to segment")
    nonempty = [i for i, a in enumerate(areas) if a > 0]
    total = sum(areas[i] for i in nonempty)
    # At most one seed per pixel: min(n_segments, pixels) gives the same target, and keeps a
    # huge n_segments out of the float division.
    target = min(pixels, max(1, round(min(n_segments, pixels) * pixels * len(nonempty) / total)))
    volume = mask.view(n, *shape)
    while True:
        steps, starts, cells = _seed_grid(shape, target, mode)
        points = volume[:, starts[0] :: steps[0], starts[1] :: steps[1], starts[2] :: steps[2]]
        points = points[:, : cells[0], : cells[1], : cells[2]]
        live: list[int] = points.reshape(n, -1).sum(dim=1, dtype=torch.int64).tolist()
        if target >= pixels or all(live[i] > 0 for i in nonempty):
            break
        target = min(pixels, 2 * target)
    return steps, starts, cells, max(1, sum(live[i] for i in nonempty)), total


def _spatial_weights(
    spacing: Sequence[float] | None, steps: Sequence[int], mode: str
) -> list[float]:
    """Weights of the squared (z, y, x) distances: spacing**2 / S**2 (S = largest step)."""
    if spacing is None:
        values = [1.0, 1.0, 1.0]
    else:
        values = _as_floats("spacing", spacing, "a sequence of floats")
        if len(values) == 2 and mode != "volume":
            values = [1.0, *values]
        if len(values) != 3:
            raise ValueError(
                f"spacing: expected (t, y, x){' or (y, x)' if mode != 'volume' else ''}, got {spacing!r}"
            )
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"spacing: expected positive finite values, got {spacing!r}")
    step = float(max(steps))
    return [v * v / (step * step) for v in values]


def _max_centers(seeds: int, pixels: int, min_size: int, connectivity: bool) -> int:
    """Rows of the centres table: an upper bound on the segment count in practice.

    Without connectivity there is at most one segment per seed. With it, every segment
    but a lone leftover holds at least ``min_size`` pixels, and extra pieces of split
    clusters are rare: a cluster's largest piece keeps its id.
    """
    if not connectivity:
        return seeds
    return min(pixels, seeds + pixels // max(min_size, 1) + 1)


# Beyond 1e5 pixels (twice the side of the largest square sample the kernel takes, under
# 2^31 pixels) a Gaussian flattens any such image to its mean, to float32 precision; the
# bound keeps the weights (4 sigma each side, summed over the reflected period) cheap.
_MAX_SIGMA = 1e5


def _resolve_sigma(
    sigma: float | Sequence[float], spacing: Sequence[float] | None, mode: str
) -> list[float]:
    """Per-dimension (t, y, x) standard deviations, as scikit-image: a scalar is divided by
    the spacing; frames of ``image`` and ``per_frame`` inputs are never smoothed together."""
    scalar = isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)
    values = _as_floats(
        "sigma", [sigma] * 3 if scalar else sigma, "a float or a sequence of floats"
    )
    if len(values) not in (2, 3) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            f"sigma: expected finite values >= 0, one or (y, x) or (t, y, x), got {sigma!r}"
        )
    if len(values) == 2:
        values = [0.0, *values]
    if scalar and spacing is not None:
        space = _as_floats("spacing", spacing, "a sequence of floats")
        space = [1.0, *space] if len(space) == 2 else space
        values = [v / p for v, p in zip(values, space, strict=True)]
    if max(values) > _MAX_SIGMA:
        raise ValueError(
            f"sigma: expected at most {_MAX_SIGMA:g} pixels (divided by spacing), got {sigma!r}"
            f"{'' if spacing is None else f' with spacing {spacing!r}'}: that flattens any "
            "image to its mean"
        )
    if mode != "volume":
        values[0] = 0.0
    return values


def _smooth(volume: Tensor, sigma: Sequence[float]) -> Tensor:
    """Separable Gaussian filter of [N, C, D, H, W] along (D, H, W), float32 values in the
    nominal 0..1 range (uint8 / 255), as scipy.ndimage.gaussian_filter(mode="reflect",
    truncate=4.0) on the device."""
    x = volume.float() / 255 if volume.dtype == torch.uint8 else volume.float()
    for dim, s in zip((2, 3, 4), sigma, strict=True):
        n = x.shape[dim]
        if s <= 0 or n == 1:
            continue
        first, weights = _gaussian_taps(s, n)
        index = torch.arange(first, first + len(weights) - 1 + n) % (2 * n)
        index = torch.where(index >= n, 2 * n - 1 - index, index).to(x.device)  # d c b a | a b c d
        padded = x.index_select(dim, index)
        out = torch.zeros_like(x)
        for k, w in enumerate(weights):
            out += w * padded.narrow(dim, k, n)
        x = out
    return x.contiguous()


def _gaussian_taps(sigma: float, n: int) -> tuple[int, list[float]]:
    """The first offset and the weights of scipy's Gaussian (truncated at 4 sigma) along a
    dimension of ``n`` pixels with scipy's ``reflect`` border.

    The reflected signal repeats every ``2 n`` pixels, so a kernel as wide as that adds its
    weights up over one period: ``2 n`` taps whatever ``sigma`` (the same result up to
    rounding, and a short loop). Narrower kernels (radius ``4 sigma``, rounded, below
    ``n``) are scipy's taps as they are: the same bits as before the folding.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = gauss / gauss.sum()
    if radius < n:
        return -radius, weights.tolist()
    period = (torch.arange(-radius, radius + 1) + n) % (2 * n)  # 0: offset -n
    folded = torch.zeros(2 * n, dtype=torch.float64).index_add_(0, period, weights)
    return -n, folded.tolist()


# ------------------------------------------------------------------------ checks


def _integers_as_float(images: Tensor) -> Tensor:
    """Integer and bool images (but uint8) as float32 value / the dtype's largest value,
    signed ones clamped at -1 (-128 / 127 is -1), as scikit-image's ``img_as_float``: the
    product in float64 first, so int32 and int64 round once, to the same float32 as it."""
    if images.dtype not in _INTEGER_DTYPES:
        return images
    top = 1 if images.dtype == torch.bool else torch.iinfo(images.dtype).max
    return (images.double() * (1.0 / top)).clamp(min=-1.0).float()


def _check_images(images: object) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype not in _IMAGE_DTYPES:
        raise TypeError(
            f"images: expected an integer, bool or float16/bfloat16/float32/float64 dtype, got "
            f"{images.dtype} (convert it to float in 0..1)"
        )
    if images.dim() not in (4, 5):
        raise ValueError(
            f"images: expected [B, C, H, W] or [B, C, T, H, W], got shape {tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError(f"images: expected a non-empty tensor, got shape {tuple(images.shape)}")
    if images.device.type not in ("cpu", "cuda"):
        raise ValueError(f"images: expected a CPU or CUDA tensor, got {images.device}")
    if images.device.type == "cuda" and not _extension.built_with_cuda():
        raise RuntimeError(
            f"images: is on {images.device} but this gswfast build has no CUDA kernels; "
            "reinstall with GSWFAST_CUDA=ON (see docs/guide/troubleshooting.md)"
        )


# The kernel keeps max_iter and subsample in int32.
_INT32_MAX = 2**31 - 1
# The kernel divides colour distances by compactness^2 in float32: below about 1e-14 a
# colour term overflows to inf (and 0 * inf is NaN), which would silently segment by
# position alone, the opposite of what a tiny compactness asks for.
_MIN_COMPACTNESS = 1e-10


def _as_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``: Python and NumPy integers, not bools (True
    is no count), else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    number = operator.index(value)
    if number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an int {bounds}, got {number}")
    return number


def _as_float(
    name: str, value: object, low: float, high: float = math.inf, *, above: bool = False
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` when ``above``):
    Python and NumPy numbers, not bools, else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    number = _float_or_inf(value)
    if not (
        math.isfinite(number) and (number > low if above else number >= low) and number <= high
    ):
        if high == math.inf:
            bounds = f"> {low:g}" if above else f">= {low:g}"
        else:
            bounds = f"in {'(' if above else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}: expected a finite number {bounds}, got {value!r}")
    return number


def _as_floats(name: str, values: object, expected: str) -> list[float]:
    """``values``, a sequence of numbers (not bools or strings), as floats, else
    ``TypeError`` naming ``name`` and what was ``expected``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name}: expected {expected}, got {values!r}")
    items = list(values)
    if any(isinstance(v, (bool, str, bytes)) for v in items):
        raise TypeError(f"{name}: expected {expected}, got {values!r}")
    try:
        return [_float_or_inf(v) for v in items]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected {expected}, got {values!r}") from None


def _float_or_inf(value: SupportsFloat) -> float:
    """``float(value)``, and inf for an int past the float range (which ``float`` refuses
    with ``OverflowError``): the range checks then name the argument."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _as_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool: a string or a number is refused, not read as true."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def _resolve_convert_lab(convert_lab: bool | None, channels: int) -> bool:
    if convert_lab is None:
        return channels == 3
    if not isinstance(convert_lab, bool):
        raise TypeError(f"convert_lab: expected True, False or None, got {convert_lab!r}")
    if convert_lab and channels != 3:
        raise ValueError(f"convert_lab: CIELAB needs 3 (RGB) channels, got {channels}")
    return bool(convert_lab)


def _validate_values(
    images: Tensor, init_counts: Tensor | None, lab: bool, given_dtype: torch.dtype
) -> None:
    """NaN/inf pixels, float sRGB outside 0..1 when converting to CIELAB (``images`` as
    read from ``given_dtype``), and warm-start samples without a live cluster (the kernel
    would put every pixel in cluster 0): one device sync for all."""
    if torch.compiler.is_compiling():
        return
    floats = images.dtype != torch.uint8
    checks = []
    if floats:
        checks.append((~torch.isfinite(images)).sum())
        checks.append(((images < 0) | (images > 1)).sum() if lab else checks[0] * 0)
    if init_counts is not None:
        checks.append((~(init_counts > 0).any(dim=1)).sum())
    if not checks:
        return
    counts = torch.stack(checks).tolist()
    if floats and counts[0]:
        raise ValueError(
            f"images: contain {counts[0]} NaN or infinite value(s); expected finite values in 0..1"
        )
    if floats and counts[1]:
        raise ValueError(
            f"images: {counts[1]} value(s) outside 0..1; CIELAB conversion (convert_lab, the default "
            "for 3 channels) expects sRGB in 0..1 (scikit-image would stretch each image to "
            f"0..1, gswfast does not): {_range_fix(given_dtype)}, or pass convert_lab=False to "
            "use the values as features"
        )
    if init_counts is not None and counts[-1]:
        raise ValueError(
            f"init: {counts[-1]} sample(s) have no live cluster (all cluster_counts are 0); "
            "expected a Segmentation returned by slic"
        )


def _range_fix(dtype: torch.dtype) -> str:
    """What to do about sRGB outside 0..1, for images of ``dtype``."""
    if dtype.is_floating_point:
        return "divide 0..255 floats by 255"
    # Only signed integers get here: the other integer dtypes map into 0..1.
    return (
        f"{dtype} images are read as value / {torch.iinfo(dtype).max} (scikit-image's "
        "img_as_float), so their negative values fall below 0: pass values >= 0"
    )


def _warm_start(
    init: Segmentation | None, images: Tensor, mode: str, volume: Tensor, channels: int
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The previous segmentation's centres [N, M, 3 + F], counts [N] and labels [N, P]."""
    if init is None:
        return None, None, None
    if not isinstance(init, Segmentation):
        raise TypeError(f"init: expected a Segmentation, got {type(init).__name__}")
    expected = (images.shape[0], *images.shape[2:])
    if init.mode != mode or tuple(init.labels.shape) != tuple(expected):
        raise ValueError(
            f"init: expected a {mode!r} segmentation of labels shape {tuple(expected)}, got a "
            f"{init.mode!r} one of shape {tuple(init.labels.shape)}"
        )
    if init.clusters.shape[-1] != 3 + channels:
        raise ValueError(
            f"init: its centres hold {init.clusters.shape[-1] - 3} feature channels, the images have {channels}"
        )
    if init.labels.device != images.device:
        raise ValueError(
            f"init: expected device {images.device} (like the images), got {init.labels.device}"
        )
    n = volume.shape[0]
    if init.clusters.shape[0] != n or tuple(init.cluster_labels.shape) != (
        n,
        math.prod(volume.shape[2:]),
    ):
        raise ValueError("init: its k-means state does not match the images' shape")
    return (
        init.clusters.to(torch.float32).contiguous(),
        init.cluster_counts.to(torch.int32).contiguous(),
        init.cluster_labels.to(torch.int32).contiguous(),
    )


# ------------------------------------------------------------------------ colour

# sRGB (D65) -> XYZ, divided by the D65 white point, as scikit-image's rgb2lab.
_RGB_TO_XYZ_D65 = (
    (0.412453 / 0.95047, 0.357580 / 0.95047, 0.180423 / 0.95047),
    (0.212671, 0.715160, 0.072169),
    (0.019334 / 1.08883, 0.119193 / 1.08883, 0.950227 / 1.08883),
)


def rgb_to_lab(images: Tensor) -> Tensor:
    """sRGB to CIELAB (D65, 2 degree observer) on the device, as scikit-image's ``rgb2lab``.

    Args:
        images: ``[B, 3, ...]`` uint8 (0..255) or float (0..1).

    Returns:
        float32 ``[B, 3, ...]``: L in 0..100, a and b roughly -128..127.
    """
    if not isinstance(images, Tensor) or images.dim() < 2 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected [B, 3, ...] sRGB, got {getattr(images, 'shape', type(images))}"
        )
    rgb = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ_D65, device=rgb.device)
    xyz = torch.einsum("ij,bj...->bi...", matrix, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=1)
