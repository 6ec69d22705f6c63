"""SLIC superpixels and supervoxels: contract, quality against scikit-image, warm starts,
determinism, CPU/CUDA parity and bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import TinyCNN, cpu_and_cuda, cpu_threads

import gswfast as gsw
import gswfast.ops
from gswfast import _slic_reference as reference
from gswfast.metrics import (
    boundary_map,
    boundary_recall,
    explained_variation,
    undersegmentation_error,
)
from gswfast.segmentation import _seed_grid, _spatial_weights
from gswfast.testing import is_connected, synthetic_regions

skimage = pytest.importorskip("skimage")
color = pytest.importorskip("skimage.color")
data = pytest.importorskip("skimage.data")
segmentation = pytest.importorskip("skimage.segmentation")

PHOTOS = ("astronaut", "coffee", "chelsea")


def _photo(name: str) -> torch.Tensor:
    """scikit-image sample photo as uint8 [1, 3, H, W]."""
    return (
        torch.from_numpy(np.ascontiguousarray(getattr(data, name)()))
        .permute(2, 0, 1)[None]
        .contiguous()
    )


def _photo_mosaic(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Known regions filled with natural texture: each region of a synthetic partition
    shows a different crop of scikit-image's photos. float32 [1, 3, 240, 320], truth."""
    _, truth = synthetic_regions(240, 320, regions=16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, 240, 320)
    for r in range(16):
        photo = _photo(PHOTOS[r % len(PHOTOS)])[0].float() / 255
        y = int(torch.randint(0, photo.shape[1] - 240, (1,), generator=g))
        x = int(torch.randint(0, photo.shape[2] - 320, (1,), generator=g))
        crop = photo[:, y : y + 240, x : x + 320]
        image = torch.where(truth == r, crop, image)
    return image[None], truth


def _reference(image: torch.Tensor, n: int) -> torch.Tensor:
    array = image[0].permute(1, 2, 0).numpy()
    return torch.from_numpy(segmentation.slic(array, n_segments=n, compactness=10.0, start_label=0))


def _check_contract(seg: gsw.Segmentation, shape: tuple[int, ...]) -> None:
    assert seg.labels.dtype == torch.int32
    assert tuple(seg.labels.shape) == shape
    assert seg.num_segments.dtype == torch.int64
    assert seg.num_segments.shape == (shape[0],)
    for b in range(shape[0]):
        ids = torch.unique(seg.labels[b])
        assert torch.equal(ids.cpu(), torch.arange(int(seg.num_segments[b]), dtype=torch.int32))


# ------------------------------------------------------------------------- quality


@pytest.mark.parametrize("subsample", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_segments", [100, 400])
@pytest.mark.paths
def test_quality_on_synthetic_regions_matches_or_beats_skimage(seed, n_segments, subsample):
    image, truth = synthetic_regions(seed=seed)
    ours = gsw.slic(image[None], n_segments=n_segments, subsample=subsample).labels[0]
    ref = _reference(image[None], n_segments)
    assert boundary_recall(ours, truth) >= boundary_recall(ref, truth) - 0.02
    assert undersegmentation_error(ours, truth) <= undersegmentation_error(ref, truth) + 0.02
    assert abs(int(ours.max()) + 1 - n_segments) <= 0.15 * n_segments
    assert is_connected(ours)


@pytest.mark.parametrize("subsample", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_segments", [100, 400])
@pytest.mark.paths
def test_quality_on_photo_textures_matches_or_beats_skimage(seed, n_segments, subsample):
    image, truth = _photo_mosaic(seed)
    ours = gsw.slic(image, n_segments=n_segments, subsample=subsample).labels[0]
    ref = _reference(image, n_segments)
    assert boundary_recall(ours, truth) >= boundary_recall(ref, truth) - 0.02
    assert undersegmentation_error(ours, truth) <= undersegmentation_error(ref, truth) + 0.02
    assert abs(int(ours.max()) + 1 - n_segments) <= 0.15 * n_segments
    assert is_connected(ours)


@pytest.mark.parametrize("subsample", [1, 3])
@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("n_segments", [100, 400])
def test_photos_explained_variation_count_and_connectivity(name, n_segments, subsample):
    image = _photo(name)
    ours = gsw.slic(image, n_segments=n_segments, subsample=subsample).labels[0]
    ref = _reference(image, n_segments)
    pixels = image[0].float() / 255
    assert explained_variation(ours, pixels) >= explained_variation(ref, pixels) - 0.02
    assert abs(int(ours.max()) + 1 - n_segments) <= 0.15 * n_segments
    assert is_connected(ours)


def test_volume_supervoxels_follow_a_moving_object():
    clip, truth = _moving_square_clip(frames=12, step=2)
    seg = gsw.slic(clip, n_segments=300, mode="volume")
    labels = seg.labels[0]
    assert undersegmentation_error(labels, truth) < 0.03
    assert is_connected(labels)
    # Supervoxels on the object span several frames: they move with it.
    on_object = torch.unique(labels[truth == 1])
    spans = [
        int(torch.unique(torch.nonzero(labels == v)[:, 0]).numel()) for v in on_object.tolist()
    ]
    assert np.median(spans) >= 4


def _moving_square_clip(
    frames: int, step: int, size: int = 96
) -> tuple[torch.Tensor, torch.Tensor]:
    """A red square moving right over a static two-tone background: [1, 3, T, H, W], truth."""
    g = torch.Generator().manual_seed(0)
    clip = torch.zeros(1, 3, frames, size, size)
    clip[0, 2, :, :, : size // 2] = 0.8
    clip[0, 1, :, :, size // 2 :] = 0.6
    truth = torch.zeros(frames, size, size, dtype=torch.int64)
    for t in range(frames):
        x0 = 10 + step * t
        clip[0, :, t, 30:60, x0 : x0 + 30] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
        truth[t, 30:60, x0 : x0 + 30] = 1
    clip += 0.02 * torch.randn(clip.shape, generator=g)
    return clip.clamp(0, 1), truth


# ------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_image_batch_contract_and_centres(device):
    images = torch.cat(
        [_photo("astronaut")[:, :, :200, :300], _photo("coffee")[:, :, :200, :300]]
    ).to(device)
    seg = gsw.slic(images, n_segments=150)
    _check_contract(seg, (2, 200, 300))
    assert seg.mode == "image"
    assert seg.centers.shape[0] == 2
    assert seg.centers.shape[2] == 6
    assert torch.equal(seg.center_counts, seg.num_segments)
    assert bool(((seg.iterations >= 1) & (seg.iterations <= 10)).all())
    # Centres are the segments' mean position and mean CIELAB colour (skimage's rgb2lab).
    for b in range(2):
        k = int(seg.num_segments[b])
        labels = seg.labels[b].cpu().long().reshape(-1)
        lab = (
            torch.from_numpy(color.rgb2lab(images[b].cpu().permute(1, 2, 0).numpy()))
            .reshape(-1, 3)
            .float()
        )
        ys, xs = torch.meshgrid(torch.arange(200.0), torch.arange(300.0), indexing="ij")
        values = torch.cat(
            [torch.zeros(60000, 1), ys.reshape(-1, 1), xs.reshape(-1, 1), lab], dim=1
        )
        count = torch.bincount(labels, minlength=k).float()
        expected = torch.zeros(k, 6).index_add_(0, labels, values) / count[:, None]
        torch.testing.assert_close(seg.centers[b, :k].cpu(), expected, atol=2e-3, rtol=1e-4)
        assert bool((seg.centers[b, k:] == 0).all())


@pytest.mark.paths
def test_per_frame_mode_equals_frames_segmented_one_by_one():
    clip, _ = _moving_square_clip(frames=4, step=3)
    seg = gsw.slic(clip, n_segments=50, mode="per_frame")
    _check_contract(seg, (1, 4, 96, 96))
    offset = 0
    for t in range(4):
        single = gsw.slic(clip[:, :, t], n_segments=50)
        assert torch.equal(seg.labels[0, t], single.labels[0] + offset)
        assert int(seg.center_counts[0, t]) == int(single.num_segments[0])
        offset += int(single.num_segments[0])
    assert int(seg.num_segments[0]) == offset
    assert seg.centers.shape[:2] == (1, 4)
    assert seg.iterations.shape == (1, 4)


def test_auto_mode_and_volume_contract():
    clip, _ = _moving_square_clip(frames=6, step=2, size=48)
    seg = gsw.slic(torch.cat([clip, clip.flip(-1)]), n_segments=40)
    assert seg.mode == "volume"
    _check_contract(seg, (2, 6, 48, 48))
    for b in range(2):
        assert is_connected(seg.labels[b])


@pytest.mark.parametrize("channels", [1, 2, 4, 7])
def test_any_number_of_channels(channels):
    image, truth = synthetic_regions(96, 128, regions=8, seed=3)
    stacked = torch.cat([image, image.mean(0, keepdim=True).expand(channels, -1, -1)])[:channels]
    seg = gsw.slic(stacked[None], n_segments=60, compactness=0.1)
    _check_contract(seg, (1, 96, 128))
    assert seg.centers.shape[2] == 3 + channels
    assert undersegmentation_error(seg.labels[0], truth) < 0.1


@pytest.mark.paths
def test_uint8_and_float_inputs_agree():
    image = _photo("chelsea")
    a = gsw.slic(image, n_segments=200).labels
    b = gsw.slic(image.float() / 255, n_segments=200).labels
    c = gsw.slic(image.double() / 255, n_segments=200).labels
    assert (a == b).float().mean() > 0.99
    assert (a == c).float().mean() > 0.99


def test_without_connectivity_ids_follow_clusters():
    image = _photo("coffee")
    seg = gsw.slic(image, n_segments=100, enforce_connectivity=False)
    _check_contract(seg, (1, 400, 600))
    assert int(seg.num_segments[0]) <= 100 + 15


def test_spacing_weights_time_in_volumes():
    clip, _ = _moving_square_clip(frames=8, step=4, size=48)
    loose = gsw.slic(clip, n_segments=60, spacing=(0.1, 1, 1)).labels[0]
    tight = gsw.slic(clip, n_segments=60, spacing=(10, 1, 1)).labels[0]

    def mean_span(labels):
        return np.mean(
            [
                int(torch.unique(torch.nonzero(labels == v)[:, 0]).numel())
                for v in torch.unique(labels).tolist()
            ]
        )

    assert mean_span(loose) > mean_span(tight)


def test_compactness_makes_segments_squarer():
    image = _photo("astronaut")

    def perimeter(labels):
        return int(boundary_map(labels).sum())

    assert perimeter(gsw.slic(image, n_segments=200, compactness=40).labels[0]) < perimeter(
        gsw.slic(image, n_segments=200, compactness=2).labels[0]
    )


# ------------------------------------------------------------------------- warm start


def test_warm_start_on_a_static_scene_converges_at_once_and_keeps_ids():
    image = _photo("astronaut")
    cold = gsw.slic(image, n_segments=300)
    warm = gsw.slic(image, n_segments=300, init=cold)
    assert int(warm.iterations[0]) <= 3 < int(cold.iterations[0])
    assert (warm.labels == cold.labels).float().mean() > 0.9
    again = gsw.slic(image, n_segments=300, init=warm)
    assert int(again.iterations[0]) == 1
    assert (again.labels == warm.labels).float().mean() > 0.97


def test_warm_start_on_a_moving_scene_keeps_background_ids():
    clip, truth = _moving_square_clip(frames=8, step=2)
    first = gsw.slic(clip[:, :, 0], n_segments=120)
    cold_next = gsw.slic(clip[:, :, 1], n_segments=120)
    warm_next = gsw.slic(clip[:, :, 1], n_segments=120, init=first)
    assert int(warm_next.iterations[0]) < int(cold_next.iterations[0])
    background = (truth[0] == 0) & (truth[1] == 0)
    same = (warm_next.labels[0] == first.labels[0])[background].float().mean()
    assert same > 0.9
    assert is_connected(warm_next.labels[0])


def test_warm_start_follows_a_panning_photo():
    photo = _photo("coffee")[:, :, :240, :320]
    panned = _photo("coffee")[:, :, 2:242, 3:323]
    first = gsw.slic(photo, n_segments=200)
    cold = gsw.slic(panned, n_segments=200)
    warm = gsw.slic(panned, n_segments=200, init=first)
    assert int(warm.iterations[0]) < int(cold.iterations[0])
    # Segments moved with the picture: most pixels keep the id of the pixel they show.
    assert (warm.labels[0, :-2, :-3] == first.labels[0, 2:, 3:]).float().mean() > 0.8


def test_warm_start_volume_and_per_frame():
    clip, _ = _moving_square_clip(frames=6, step=2, size=48)
    for mode in ("volume", "per_frame"):
        cold = gsw.slic(clip, n_segments=40, mode=mode)
        warm = gsw.slic(clip, n_segments=40, mode=mode, init=cold)
        _check_contract(warm, tuple(cold.labels.shape))
        assert bool((warm.iterations <= cold.iterations).all())


# ------------------------------------------------------------------------- determinism


@pytest.mark.paths
def test_deterministic_and_independent_of_thread_count():
    images = torch.cat([_photo("astronaut")[:, :, :240, :320], _photo("chelsea")[:, :, :240, :320]])
    first = gsw.slic(images, n_segments=200)
    with cpu_threads(1):
        single = gsw.slic(images, n_segments=200)
    again = gsw.slic(images, n_segments=200)
    for other in (single, again):
        assert torch.equal(first.labels, other.labels)
        assert torch.equal(first.centers, other.centers)
        assert torch.equal(first.iterations, other.iterations)


def _large_photo() -> torch.Tensor:
    """uint8 [1, 3, 1024, 1024]: 2^20 pixels, one sample (its passes may use threads)."""
    photo = _photo("astronaut").float()
    big = torch.nn.functional.interpolate(photo, size=(1024, 1024), mode="bilinear")
    return big.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.paths
def test_a_large_photo_beside_busy_processes_equals_one_thread():
    # One sample of 2^20 pixels or more uses as many of ATen's threads as the machine has
    # free cores; with every core kept busy by other processes it runs on the calling
    # thread alone. Either way the bits are those of one thread.
    image = _large_photo()
    with cpu_threads(1):
        one = gsw.slic(image, n_segments=1000)
    idle = gsw.slic(image, n_segments=1000)
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        busy = gsw.slic(image, n_segments=1000)
        assert all(s.poll() is None for s in spinners)  # busy the whole call
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    for other in (idle, busy):
        for name in ("labels", "centers", "iterations", "clusters", "cluster_labels"):
            assert torch.equal(getattr(other, name), getattr(one, name)), name


@pytest.mark.parametrize("subsample", [1, 3])
def test_threads_above_the_single_thread_size_change_nothing(subsample):
    # 2^20 pixels per call and more run on several threads (smaller calls on one): the
    # work is cut by shape, so the thread count changes no bit.
    photos = [_photo(name)[:, :, :256, :256] for name in ("astronaut", "chelsea")]
    images = torch.cat(photos * 8)  # 16 x 256 x 256 = 2^20 pixels
    with cpu_threads(2):
        two = gsw.slic(images, n_segments=100, subsample=subsample)
    with cpu_threads(1):
        one = gsw.slic(images, n_segments=100, subsample=subsample)
    for name in ("labels", "centers", "iterations", "clusters", "cluster_labels"):
        assert torch.equal(getattr(two, name), getattr(one, name)), name
    # Samples are independent: the first one alone gives the same result.
    alone = gsw.slic(images[:1], n_segments=100, subsample=subsample)
    assert torch.equal(alone.labels[0], one.labels[0])


def test_subsample_with_only_full_passes_changes_nothing():
    # The last pass is full, and so is a warm start's first: a single cold pass, or a warm
    # start of at most two passes, reassigns every pixel in every pass.
    image = _photo("coffee")
    full = gsw.slic(image, n_segments=200, max_iter=1, tol=0.0)
    sub = gsw.slic(image, n_segments=200, max_iter=1, tol=0.0, subsample=3)
    assert torch.equal(full.labels, sub.labels)
    assert torch.equal(full.clusters, sub.clusters)
    start = gsw.slic(image, n_segments=200, max_iter=3)
    for max_iter in (1, 2):
        full = gsw.slic(image, n_segments=200, max_iter=max_iter, tol=0.0, init=start)
        sub = gsw.slic(image, n_segments=200, max_iter=max_iter, tol=0.0, init=start, subsample=3)
        assert torch.equal(full.labels, sub.labels)
        assert torch.equal(full.clusters, sub.clusters)


def test_subsampled_passes_reassign_their_rows_only():
    # max_iter=3, tol=0: passes 0 and 1 reassign the rows y % 3 == 0 and 1 only, so the
    # result differs from full passes, yet stays close and connected.
    image = _photo("coffee")
    full = gsw.slic(image, n_segments=200, max_iter=3, tol=0.0)
    sub = gsw.slic(image, n_segments=200, max_iter=3, tol=0.0, subsample=3)
    assert not torch.equal(full.cluster_labels, sub.cluster_labels)
    assert (full.cluster_labels == sub.cluster_labels).float().mean() > 0.8
    assert is_connected(sub.labels[0])
    # A subsample larger than the image height: the middle pass visits row 1 % s only.
    tall = gsw.slic(image, n_segments=200, max_iter=3, tol=0.0, subsample=10**6)
    _check_contract(tall, (1, *image.shape[2:]))


def _one_segment_per_pixel(image: torch.Tensor) -> gsw.Segmentation:
    """One seed per pixel, one pass, no connectivity: each pixel is its own segment, whose
    centre holds the pixel's features."""
    pixels = image.shape[-2] * image.shape[-1]
    return gsw.slic(image, n_segments=pixels, max_iter=1, enforce_connectivity=False)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_cielab_features_match_scikit_image_pixel_by_pixel(device):
    # Every grey level, the primaries and 760 random colours: the division-free cube root
    # and the sRGB table must give scikit-image's rgb2lab (float64) to float precision.
    g = torch.Generator().manual_seed(5)
    grey = torch.arange(256, dtype=torch.uint8).expand(3, 256)
    primaries = torch.tensor([[255, 0, 0, 255, 255, 0, 0, 1], [0, 255, 0, 255, 0, 255, 0, 1]])
    primaries = torch.cat([primaries, torch.tensor([[0, 0, 255, 0, 255, 255, 0, 1]])])
    rand = torch.randint(0, 256, (3, 760), generator=g)
    image = torch.cat([grey, primaries.to(torch.uint8), rand.to(torch.uint8)], dim=1)
    image = image.view(1, 3, 32, 32).contiguous()
    seg = _one_segment_per_pixel(image.to(device))
    assert int(seg.num_segments[0]) == 1024
    labels = seg.labels[0].cpu().long().reshape(-1)
    ours = seg.centers[0].cpu()[labels, 3:].double()
    expected = torch.from_numpy(color.rgb2lab(image[0].permute(1, 2, 0).numpy())).reshape(-1, 3)
    # Fixed-point centres are within 2^-17 of the feature; float32 CIELAB within ~1e-5.
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def _srgb_table(name: str) -> torch.Tensor:
    """float32 entries of the array ``name`` of csrc/slic/srgb_tables.h."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "csrc" / "slic" / "srgb_tables.h").read_text()
    body = text.split(f"inline constexpr float {name}[", 1)[1].split("#endif", 1)[1]
    body = body.split("};", 1)[0]
    values = [np.float32(v.rstrip("f")) for v in body.replace(",", " ").split()]
    return torch.from_numpy(np.array(values, dtype=np.float32))


def _lab_centres(linear: torch.Tensor) -> torch.Tensor:
    """What a one-pixel segment's centre holds for linear RGB ``[3, P]``: the twin's CIELAB
    in 2^-16 fixed point, as the kernels sum it."""
    lab = reference.linear_rgb_to_lab(linear)
    return reference.fixed_mean(reference.to_fixed(lab), torch.ones(())).T


@pytest.mark.paths
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_cielab_features_have_the_contract_bits(device):
    # slic.h: one rounding per product and per sum in the CIELAB conversion, on every host
    # build and on CUDA. A build that fuses multiply-adds (aarch64, -march=haswell without
    # -ffp-contract=off) rounds otherwise and moves many centres by a fixed-point step.
    g = torch.Generator().manual_seed(6)
    colours = torch.cat(
        [torch.arange(256).expand(3, 256), torch.randint(0, 256, (3, 768), generator=g)], 1
    )
    image = colours.to(torch.uint8).view(1, 3, 32, 32)
    seg = _one_segment_per_pixel(image.to(device))
    labels = seg.labels[0].cpu().long().reshape(-1)
    linear = _srgb_table("kSrgbU8")[colours.long()]
    assert torch.equal(seg.centers[0].cpu()[labels, 3:], _lab_centres(linear))
    # Float input in 0..1 decodes by interpolating kSrgbFloat (srgb_float_to_linear).
    unit = torch.rand(3, 1024, generator=g)
    table, steps = _srgb_table("kSrgbFloat"), 4096
    t = unit * steps
    i = t.long()
    linear = table[i] + (t - i.float()) * (table[i + 1] - table[i])
    seg = _one_segment_per_pixel(unit.view(1, 3, 32, 32).to(device))
    labels = seg.labels[0].cpu().long().reshape(-1)
    assert torch.equal(seg.centers[0].cpu()[labels, 3:], _lab_centres(linear))


def _warm_pass(device, image, centres, steps, starts, cells, init_label=0):
    """One full k-means pass of the kernel from the given centres (feature planes as given,
    no connectivity): its cluster labels [P]."""
    k = centres.shape[0]
    outputs = gswfast.ops.slic_kernel(
        image.to(device),
        (*steps, *starts, *cells),
        [1.0 / steps[2] ** 2] * 3,
        0.1,
        False,
        1,
        False,
        0,
        k,
        centres[None].float().to(device),
        torch.ones(1, k, dtype=torch.int32, device=device),
        torch.full((1, image[0, 0].numel()), init_label, dtype=torch.int32, device=device),
    )
    return outputs[6][0].cpu()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_assignment_takes_candidates_by_window_and_neighbouring_cells(device):
    # A centre just below a cell edge (x = nextafter(63, 0), step 3: cell 20) has a window
    # whose c + step rounds up to 66 (float32), which lies in cell 22: two cells away, so
    # CUDA, scanning the cells around each pixel, never sees it. Both backends follow that
    # rule (slic.h, cell_span): pixel 66 goes to the centre at 67.5, although the colour of
    # the one below 63 is its own.
    below = float(np.nextafter(np.float32(63.0), np.float32(0.0)))
    centres = torch.tensor(
        [[0.0, 3.0, 30.0, 0.5], [0.0, 3.0, below, 0.9], [0.0, 3.0, 67.5, 0.1]], dtype=torch.float64
    )
    image = torch.full((1, 1, 1, 7, 80), 0.5)
    image[..., 60:] = 0.9
    steps, starts, cells = (1, 3, 3), (0, 1, 1), (1, 2, 26)
    labels = _warm_pass(device, image, centres, steps, starts, cells).view(1, 7, 80)
    allowed = reference.candidates(centres.float(), (1, 7, 80), list(steps), list(cells))
    _, last = reference.window(centres[:, 2].float(), 3)
    assert int(last[1]) == 66  # the window alone reaches pixel 66
    assert not bool(allowed[1, 0, 0, 66])  # the cells do not
    spatial = sum(
        (torch.arange(n, dtype=torch.float64).view(view) - centres[:, d].view(-1, 1, 1, 1)) ** 2 / 9
        for d, (n, view) in enumerate(
            zip((1, 7, 80), ((1, -1, 1, 1), (1, 1, -1, 1), (1, 1, 1, -1)), strict=True)
        )
    )
    colour = (image[0].double() - centres[:, 3].view(-1, 1, 1, 1)) ** 2 / 0.1**2
    distance = torch.where(allowed, colour + spatial, torch.inf)
    expected = torch.where(allowed.any(0), distance.argmin(0), 0)
    assert torch.equal(labels.long(), expected)
    assert bool((labels[0, :, 66] == 2).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_windows_past_2_to_the_24_are_integer_bounds(device):
    # Pixel x = 2^24 + 1 is 16777216 as a float32: a window compared in floats (CUDA's, once)
    # took it where the window ends at 2^24; both backends compare integers (slic.h,
    # window_first/window_last), so the centre at 2^24 - 2^22 (window up to 2^24 exactly)
    # does not reach it and the centre past it takes it, though the colour is the first's.
    step = 2**22
    width = 2**24 + 8
    centres = torch.tensor(
        [[0.0, 0.0, 2.0**24 - step, 0.9], [0.0, 0.0, width - 1.0, 0.1]], dtype=torch.float64
    )
    image = torch.full((1, 1, 1, 1, width), 0.9)
    labels = _warm_pass(device, image, centres, (1, 1, step), (0, 0, 0), (1, 1, 4), init_label=0)
    assert int(labels[2**24]) == 0  # the last pixel of the first window
    assert int(labels[2**24 + 1]) == 1
    assert int(labels[2**24 - step - 1]) == 0  # no candidate: keeps its label


_PORTABLE_CASES = """
import torch, gswfast as gsw
g = torch.Generator().manual_seed(3)
photo = torch.load(IMAGE)
clip = torch.rand(1, 3, 4, 30, 40, generator=g)
mask = torch.zeros(1, 96, 128, dtype=torch.bool)
mask[:, 10:80, 20:110] = True
runs = {
    "cielab": lambda: gsw.slic(photo, 120),
    "cielab_subsample": lambda: gsw.slic(photo, 120, subsample=3),
    "float_cielab": lambda: gsw.slic(photo.float() / 255, 120),
    "grey": lambda: gsw.slic(photo[:, :1], 80),
    "five_channels": lambda: gsw.slic(torch.rand(2, 5, 40, 50, generator=g), 30),
    "volume": lambda: gsw.slic(clip, 40),
    "mask": lambda: gsw.slic(photo, 60, mask=mask),
    # Flat colour: space alone decides, with many pixels at equal real distance from two
    # centres, where one rounding more or less picks the other winner.
    "flat": lambda: gsw.slic(torch.full((1, 3, 70, 90), 0.5), 150, max_iter=3, convert_lab=False),
    "flat_spacing": lambda: gsw.slic(
        torch.full((1, 1, 5, 30, 40), 0.5), 80, max_iter=2, spacing=(0.7, 1.3, 1.1)
    ),
}
fields = ("labels", "num_segments", "centers", "iterations", "clusters", "cluster_labels")
out = {name: [getattr(run(), f) for f in fields] for name, run in runs.items()}
torch.save(out, OUT)
"""


def _cases_in_two_processes(
    tmp_path, images: torch.Tensor, cases: str, variable: str, values: tuple[str, str], device="cpu"
) -> list[dict[str, list[torch.Tensor]]]:
    """Runs the ``cases`` script (it reads IMAGE and DEVICE, saves a dict of tensor lists
    to OUT) in a fresh process per value of the environment ``variable``, one thread, and
    returns the two dicts: what a process reads once at start (or per call) can differ."""
    torch.save(images, tmp_path / "images.pt")
    outputs = []
    for i, value in enumerate(values):
        out = tmp_path / f"out{i}.pt"
        script = (
            f"IMAGE = {str(tmp_path / 'images.pt')!r}\nOUT = {str(out)!r}\nDEVICE = {device!r}\n"
        )
        env = dict(os.environ, OMP_NUM_THREADS="1", **{variable: value})
        subprocess.run([sys.executable, "-c", script + cases], env=env, check=True, timeout=300)
        outputs.append(torch.load(out))
    return outputs


def _assert_same_cases(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for case, fields in first.items():
        for a, b in zip(fields, second[case], strict=True):
            assert torch.equal(a, b), case


@pytest.mark.paths
def test_portable_loops_give_the_avx2_loops_bits(tmp_path):
    # slic.h fixes every rounding (CIELAB, the assignment distance's fused multiply-adds),
    # so the portable loops (libm's fmaf; what CPUs without AVX2 and non-x86 builds run)
    # must give the same bits as the AVX2 ones. GSWFAST_SLIC_PORTABLE picks them.
    photo = _photo("astronaut")[:, :, :96, :128].contiguous()
    vector, portable = _cases_in_two_processes(
        tmp_path, photo, _PORTABLE_CASES, "GSWFAST_SLIC_PORTABLE", ("0", "1")
    )
    _assert_same_cases(vector, portable)


_GROUP_CASES = """
import torch, gswfast as gsw
images = torch.load(IMAGE).to(DEVICE)
cold = gsw.slic(images, n_segments=60)
calls = {
    "cold": cold,
    "warm": gsw.slic(images, n_segments=60, init=cold),
    "masked": gsw.slic(images, n_segments=60, mask=images[:, 1] > images[:, 1].median()),
    "subsampled": gsw.slic(images, n_segments=60, subsample=3),
}
fields = ("labels", "num_segments", "centers", "iterations", "clusters", "cluster_labels")
torch.save({k: [getattr(s, f).cpu() for f in fields] for k, s in calls.items()}, OUT)
"""


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_a_batch_cut_into_groups_equals_one_call(tmp_path, device):
    # A batch above the pixels of one kernel call (2^31 on the CPU, 2^28 on CUDA) runs in
    # groups of samples; GSWFAST_SLIC_CHUNK_PIXELS lowers that bound so that 5 samples run
    # as groups of 2, 2 and 1. Samples are independent: the groups change no bit.
    names = ("astronaut", "coffee", "chelsea", "rocket", "astronaut")
    images = torch.cat([_photo(name)[:, :, :64, :80] for name in names])
    bound = str(2 * 64 * 80 + 1)
    whole, groups = _cases_in_two_processes(
        tmp_path, images, _GROUP_CASES, "GSWFAST_SLIC_CHUNK_PIXELS", ("0", bound), device
    )
    _assert_same_cases(whole, groups)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16, torch.float64])
def test_cuda_features_and_segments_equal_the_cpu_bit_for_bit(dtype):
    # slic.h: sRGB decodes through the generated tables (uint8 and floats in 0..1), CIELAB
    # rounds once per operation and the assignment distance fixes every rounding, so both
    # backends agree exactly. (uint8 passed on an H200 before floats had their table.)
    image = torch.cat([_photo("astronaut")[:, :, :240, :320], _photo("coffee")[:, :, :240, :320]])
    if dtype != torch.uint8:
        image = (image.double() / 255).to(dtype)
    for run in (_one_segment_per_pixel, lambda x: gsw.slic(x, n_segments=150)):
        cpu, gpu = run(image), run(image.cuda())
        for field in ("labels", "num_segments", "centers", "iterations", "clusters"):
            assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field)), field


@pytest.mark.cuda
@pytest.mark.parametrize("subsample", [2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_subsampled_and_masked_calls_equal_the_cpu_bit_for_bit(subsample, masked):
    # The contract's exact parity holds for every option; subsample=3 is fast-slic's
    # configuration (and the one that meets issue 15's CPU speed goals). Not yet run on a GPU.
    image = torch.cat([_photo("astronaut")[:, :, :240, :320], _photo("coffee")[:, :, :240, :320]])
    mask = None
    if masked:
        mask = torch.zeros(2, 240, 320, dtype=torch.bool)
        mask[:, 20:220, 30:300] = True
    cpu = gsw.slic(image, n_segments=150, subsample=subsample, mask=mask)
    gpu = gsw.slic(
        image.cuda(),
        n_segments=150,
        subsample=subsample,
        mask=None if mask is None else mask.cuda(),
    )
    for field in ("labels", "num_segments", "centers", "iterations", "clusters"):
        assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field)), field


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["image", "per_frame", "volume"])
def test_cuda_matches_cpu_and_is_deterministic(mode):
    if mode == "image":
        x = torch.cat([_photo("astronaut")[:, :, :240, :320], _photo("coffee")[:, :, :240, :320]])
    else:
        x, _ = _moving_square_clip(frames=8, step=2)
    cpu = gsw.slic(x, n_segments=150, mode=mode)
    gpu = gsw.slic(x.cuda(), n_segments=150, mode=mode)
    again = gsw.slic(x.cuda(), n_segments=150, mode=mode)
    assert torch.equal(gpu.labels, again.labels)
    assert torch.equal(gpu.centers, again.centers)
    for field in ("labels", "num_segments", "centers", "iterations"):  # float input in 0..1
        assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field)), field
    _check_contract(gpu, tuple(cpu.labels.shape))
    for b in range(x.shape[0]):
        labels = gpu.labels[b].cpu()
        if mode == "per_frame":
            assert all(is_connected(frame) for frame in labels)
        else:
            assert is_connected(labels)


def _early_exit_call(masked: bool, device: str = "cuda") -> dict:
    """Kernel arguments (gswfast.ops.slic_kernel) of a call whose three samples converge and
    stop merging at passes far apart, well before max_iter and kMergeRounds.

    Sample 0 is flat and converges within a few passes, the photos much later: on the CPU
    the iterations are [4, 19, 21] (masked: [15, 27, 12]) of max_iter=100, and the samples
    leave the merge loop after about 1, 4 and 3 of the 16 rounds (the reference's rounds on
    scikit-image's CIELAB). CUDA's float CIELAB may move a near-tie by a pass, so tests
    assert the spread and the margin, not these counts."""
    h, w = 120, 160
    photos = [_photo(name)[:, :, :h, :w] for name in PHOTOS]
    image = torch.cat(photos).unsqueeze(2).contiguous()  # [3, 3, 1, H, W]
    image[0] = 128
    steps, starts, cells = _seed_grid((1, h, w), 100, "image")
    mask = None
    if masked:
        disc = torch.stack([_disc_mask(h, w, seed=s) for s in range(3)])
        mask = disc.reshape(3, -1).to(torch.uint8).to(device)
    return dict(
        image=image.to(device),
        grid=[*steps, *starts, *cells],
        weights=_spatial_weights(None, steps, "image"),
        compactness=10.0,
        convert_lab=True,
        max_iter=100,
        connectivity=True,
        min_size=h * w // (4 * math.prod(cells)),
        max_centers=h * w,
        tol=0.005,
        mask=mask,
    )


def _loop_launches(kernel_names: list[str]) -> tuple[int, int]:
    """Launches of step_kernel (one per k-means pass) and of merge_step_kernel (one per
    merge round) among the kernel names of a profile."""
    steps = sum("step_kernel(" in n and "merge_step_kernel" not in n for n in kernel_names)
    merges = sum("merge_step_kernel" in n for n in kernel_names)
    return steps, merges


def _check_early_exit_data(call: dict, iterations: list[int]) -> None:
    # Passes were left to skip, and the samples leave the k-means loop at different passes
    # (the last one counts the call out, not the first).
    assert max(iterations) < call["max_iter"], iterations
    assert min(iterations) < max(iterations), iterations


@pytest.mark.cuda
def test_cuda_pieces_fit_the_free_memory(monkeypatch):
    # slic_cuda.cpp sizes each piece of a batch from the device's free memory;
    # GSWFAST_SLIC_CUDA_FREE_BYTES stands in for it. One 64x80 sample needs some 0.45 MB.
    names = ("astronaut", "coffee", "chelsea", "rocket", "astronaut")
    images = torch.cat([_photo(name)[:, :, :64, :80] for name in names]).cuda()
    whole = gsw.slic(images, n_segments=60)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gsw.slic(images[:1], n_segments=60)
    used = torch.cuda.max_memory_allocated() - base  # one sample, measured
    monkeypatch.setenv("GSWFAST_SLIC_CUDA_FREE_BYTES", str(2 * used))
    pieces = gsw.slic(images, n_segments=60)  # in pieces of a sample or two
    for name in ("labels", "num_segments", "centers", "iterations", "clusters"):
        assert torch.equal(getattr(whole, name), getattr(pieces, name)), name
    # The estimate is within a factor two of what one sample takes: below half of it the
    # call refuses, naming the memory.
    monkeypatch.setenv("GSWFAST_SLIC_CUDA_FREE_BYTES", str(used // 2))
    with pytest.raises(torch.OutOfMemoryError, match=r"GiB of scratch memory on cuda"):
        gsw.slic(images[:1], n_segments=60)


@pytest.mark.cuda
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_early_exit_skips_launches_and_changes_nothing(masked):
    # Eagerly, the host stops enqueuing k-means passes and merge rounds once every sample
    # has left them (slic_cuda.cu, early exit): fewer step kernels than max_iter and fewer
    # merge step kernels than kMergeRounds run, though never fewer than the samples needed.
    # How many are skipped depends on how far the host runs ahead of the GPU, so up to
    # three tries. A captured CUDA graph keeps every pass; the skipped launches are no-ops,
    # so both give the same outputs, bit for bit.
    call = _early_exit_call(masked)
    max_iter, rounds = call["max_iter"], reference.MERGE_ROUNDS
    for _ in range(3):
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            eager = gswfast.ops.slic_kernel(**call)
            torch.cuda.synchronize()
        iterations = eager[3].tolist()
        steps, merges = _loop_launches([event.name for event in prof.events()])
        # Every pass up to the last sample's exit, and at least one round, always run.
        assert steps >= max(iterations), (steps, iterations)
        assert merges >= 1, merges
        if steps < max_iter and merges < rounds:
            break
    _check_early_exit_data(call, iterations)
    assert steps < max_iter, (steps, iterations)  # k-means passes were skipped
    assert merges < rounds, merges  # merge rounds were skipped
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gswfast.ops.slic_kernel(**call)
    for _ in range(2):  # replays run every pass again, from the same inputs
        graph.replay()
        torch.cuda.synchronize()
        for ours, theirs in zip(eager, captured, strict=True):
            assert torch.equal(ours, theirs)


# A child process's script: slic_kernel with the arguments saved in argv[1] (tensors moved
# to the GPU), under the CUDA profiler; saves the outputs and the names of the kernels it
# ran to argv[2].
_PROFILED_CHILD = """
import sys
import torch
import gswfast.ops
call = torch.load(sys.argv[1])
call = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in call.items()}
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    outputs = gswfast.ops.slic_kernel(**call)
    torch.cuda.synchronize()
names = [event.name for event in prof.events()]
torch.save({"outputs": [t.cpu() for t in outputs], "names": names}, sys.argv[2])
"""


@pytest.mark.cuda
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_early_exit_with_blocking_launches_stops_after_the_last_pass(masked, tmp_path):
    # With CUDA_LAUNCH_BLOCKING=1 a launch returns once its kernel has run, so the host sees
    # the flag as soon as it is written: exit is deterministic. The host reads the flag at
    # the top of each pass, before the pass's first launch; the last sample leaves in the
    # step kernel of pass M - 1 (0-based, M = max(iterations)), which writes the token
    # before pass M's top. So passes 0 .. M - 1 are enqueued: exactly M step kernels, not
    # one more (and M = max_iter, the loop's bound, when a sample never converges). The
    # merge rounds stop likewise, after the round where the last sample stopped merging
    # (which the outputs do not tell: some 4 of the 16 here).
    call = _early_exit_call(masked, device="cpu")
    torch.save(call, tmp_path / "call.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(gswfast.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROFILED_CHILD,
            str(tmp_path / "call.pt"),
            str(tmp_path / "out.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = torch.load(tmp_path / "out.pt")
    blocking = result["outputs"]
    iterations = blocking[3].tolist()
    steps, merges = _loop_launches(result["names"])
    _check_early_exit_data(call, iterations)
    assert steps == max(iterations), (steps, iterations)
    assert 1 <= merges < reference.MERGE_ROUNDS, merges
    # The blocking run equals a captured graph that runs every pass (and this process's
    # eager call, which also warms up before the capture).
    call = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in call.items()}
    eager = gswfast.ops.slic_kernel(**call)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gswfast.ops.slic_kernel(**call)
    graph.replay()
    torch.cuda.synchronize()
    for ours, theirs, again in zip(blocking, captured, eager, strict=True):
        assert torch.equal(ours, theirs.cpu())
        assert torch.equal(ours, again.cpu())


@pytest.mark.cuda
def test_cuda_early_exit_with_host_threads_and_streams():
    # Each host thread has its own flag; calls on several threads and streams at once, and
    # in threads that reuse the flags of exited ones, give the single-thread outputs.
    from concurrent.futures import ThreadPoolExecutor

    calls = [_early_exit_call(masked) for masked in (False, True)]
    expected = [gswfast.ops.slic_kernel(**call) for call in calls]
    torch.cuda.synchronize()

    def run(i: int) -> list:
        stream = torch.cuda.Stream(device=calls[i % 2]["image"].device)
        with torch.cuda.stream(stream):
            outputs = [gswfast.ops.slic_kernel(**calls[i % 2]) for _ in range(3)]
        stream.synchronize()
        return outputs

    for _ in range(2):  # the second pool's threads take the flags the first pool's left
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(run, range(4)))
        for i, outputs in enumerate(results):
            for output in outputs:
                for ours, theirs in zip(output, expected[i % 2], strict=True):
                    assert torch.equal(ours, theirs)


@pytest.mark.cuda
def test_cuda_warm_start():
    image = _photo("astronaut").cuda()
    cold = gsw.slic(image, n_segments=300)
    warm = gsw.slic(image, n_segments=300, init=cold)
    assert int(warm.iterations[0]) <= 3 < int(cold.iterations[0])
    assert (warm.labels == cold.labels).float().mean() > 0.9


# ------------------------------------------------------------------------- the twin
# gswfast._slic_reference restates the kernel's exact stages in plain torch; each backend
# is compared with it exactly. Features are the float32 channels themselves
# (convert_lab=False), so the twin sees the very values the kernel sums.


def _min_size(shape: tuple[int, int, int], n_segments: int, factor: float, mode: str) -> int:
    _, _, cells = _seed_grid(shape, n_segments, mode)
    return int(factor * math.prod(shape) / math.prod(cells))


def _blocky_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Quantised noise plus a little jitter: k-means leaves many small components."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(shape, generator=g) * 4).round() / 4
    return image + 0.05 * torch.rand(shape, generator=g)


MERGE_CASES = ("image-0", "image-1", "image-2", "image-3", "volume-0", "volume-1")


def _twin_case(kind: str, seed: int, device: str, factor: float, connectivity: bool = True):
    """A k-means result with many small components, and what the twin makes of it."""
    shape = (1, 2, 24, 30) if kind == "image" else (1, 2, 4, 16, 18)
    image = _blocky_noise(shape, seed)
    n_segments = 40 if kind == "image" else 30
    seg = gsw.slic(
        image.to(device),
        n_segments=n_segments,
        compactness=0.05,
        min_size_factor=factor,
        convert_lab=False,
        enforce_connectivity=connectivity,
    )
    features = image[0].unsqueeze(1) if kind == "image" else image[0]  # [F, D, H, W]
    dims = tuple(features.shape[1:])
    clusters = seg.cluster_labels[0].cpu().view(dims)
    min_size = _min_size(dims, n_segments, factor, kind)
    sets = reference.connected_sets(clusters, features, min_size) if connectivity else None
    return seg, features, dims, clusters, min_size, sets


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_rounds_ids_and_centres_equal_the_reference(device, case):
    # The old CPU loop linked roots in ascending order and skipped a root already linked
    # under a lower one this round, so its partition depended on visiting order (and CUDA's
    # on thread timing); all six cases differ from the snapshot rule under that loop.
    kind, seed = case.split("-")
    seg, features, dims, clusters, min_size, sets = _twin_case(kind, int(seed), device, 0.9)
    assert min_size > 1
    assert (
        torch.unique(sets).numel() < torch.unique(reference.components(clusters)).numel()
    )  # merges
    labels = seg.labels[0].cpu().view(dims)
    assert reference.same_partition(sets, labels)
    assert torch.equal(labels, reference.segment_ids(clusters, sets))
    expected = reference.centers(labels, features, seg.centers.shape[1])
    assert torch.equal(seg.centers[0].cpu(), expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(("connectivity", "factor"), [(True, 0.0), (True, 0.3), (False, 0.0)])
@pytest.mark.parametrize("case", ["image-0", "image-1", "volume-0"])
def test_ids_equal_the_reference(device, case, connectivity, factor):
    # Split clusters (extra segments), clusters k >= num_segments, no connectivity.
    kind, seed = case.split("-")
    seg, features, dims, clusters, _, sets = _twin_case(
        kind, int(seed), device, factor, connectivity
    )
    labels = seg.labels[0].cpu().view(dims)
    assert torch.equal(labels, reference.segment_ids(clusters, sets))
    assert torch.equal(
        seg.centers[0].cpu(), reference.centers(labels, features, seg.centers.shape[1])
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("n_segments", [30, 120, 400])  # grid steps 8, 4 and 2 (seeds stay put)
def test_seeds_and_first_assignment_equal_the_reference(device, n_segments):
    image = _photo("coffee")[:, :, 50:90, 100:150].float() / 255  # [1, 3, 40, 50]
    # tol=1: the first pass counts as converged, so no update: the clusters are the seeds.
    seg = gsw.slic(
        image.to(device),
        n_segments=n_segments,
        compactness=0.1,
        max_iter=1,
        tol=1.0,
        convert_lab=False,
        enforce_connectivity=False,
    )
    features = image[0].unsqueeze(1)
    steps, starts, cells = _seed_grid((1, 40, 50), n_segments, "image")
    seeds = reference.seeds(features, steps, starts, cells)
    assert torch.equal(seg.clusters[0].cpu(), seeds)
    # Assignment: the nearest centre whose window holds the pixel. The kernels' float32
    # distances (fused or not, by CPU and backend) decide near-ties, the twin's float64 the
    # rest: equal wherever the best centre is clearly best, and never a worse one.
    dist = reference.assignment_distances(
        features, seeds, steps, _spatial_weights(None, steps, "image"), 0.1
    )
    best, second = dist.topk(2, dim=0, largest=False).values
    labels = seg.cluster_labels[0].cpu().view(1, 40, 50).long()
    slack = 1e-5 * (1 + best)
    clear = (second - best) > slack
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear], dist.argmin(0)[clear])
    assert bool((dist.gather(0, labels[None])[0] <= best + slack).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(("max_iter", "subsample"), [(1, 1), (4, 1), (4, 3), (6, 2)])
def test_kmeans_centres_are_the_exact_means_of_their_clusters(device, max_iter, subsample):
    # tol=0: a sample stops only when nothing changed, so the last update saw the final
    # cluster labels. The CPU used to sum features in float (run by run) and CUDA in fixed
    # point: now both add fixed-point integers.
    image = _photo("chelsea")[:, :, 60:120, 100:180].float() / 255 * 40  # features 0..40
    seg = gsw.slic(
        image.to(device),
        n_segments=50,
        compactness=40.0,
        max_iter=max_iter,
        subsample=subsample,
        tol=0.0,
        convert_lab=False,
    )
    clusters = seg.cluster_labels[0].cpu().view(1, 60, 80)
    K = seg.clusters.shape[1]
    expected = reference.centers(clusters, image[0].unsqueeze(1), K)
    counts = torch.bincount(clusters.reshape(-1).long(), minlength=K)
    assert torch.equal(seg.cluster_counts[0].cpu().long(), counts)
    live = counts > 0
    assert torch.equal(seg.clusters[0].cpu()[live], expected[live])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("connectivity", [True, False])
def test_centres_are_exact_means_for_large_features(device, connectivity):
    # Feature scales that overflowed CUDA's 32-bit warp sums (RGB in 0..255, a SWAG channel
    # of 100 * weight) and one past the clamp (+-1e5 -> +-32767). Without connectivity the
    # centres used to be the k-means centres of the pass before the last labels.
    g = torch.Generator().manual_seed(5)
    base, _ = synthetic_regions(48, 64, regions=6, seed=4)
    image = torch.cat(
        [
            base * 255,
            base[:1] * 3000 + torch.rand(1, 48, 64, generator=g),
            (torch.rand(1, 48, 64, generator=g) - 0.5) * 2e5,
        ]
    )[None].float()
    seg = gsw.slic(
        image.to(device),
        n_segments=30,
        compactness=500.0,
        convert_lab=False,
        enforce_connectivity=connectivity,
    )
    _check_contract(seg, (1, 48, 64))
    features = image[0].unsqueeze(1)
    expected = reference.centers(
        seg.labels[0].cpu().view(1, 48, 64), features, seg.centers.shape[1]
    )
    assert torch.equal(seg.centers[0].cpu(), expected)
    # The clamp: the last channel's centres stay within +-32767 (the mean of the clamped values).
    assert float(seg.centers[0, :, 3 + 4].abs().max()) <= 32767
    labels = seg.labels[0].cpu().reshape(-1).long()
    k = int(seg.num_segments[0])
    exact = torch.zeros(k, 4, dtype=torch.float64).index_add_(
        0, labels, image[0, :4].reshape(4, -1).T.double()
    )
    exact /= torch.bincount(labels, minlength=k)[:, None].double()
    torch.testing.assert_close(
        seg.centers[0, :k, 3:7].cpu().double(), exact, rtol=1e-6, atol=2**-16
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_more_samples_than_a_cuda_grid_dimension(device):
    # 65537 samples > 65535, the most blocks gridDim.y takes; each sample as if alone.
    images = torch.rand(65537, 1, 4, 4, generator=torch.Generator().manual_seed(0)).to(device)
    seg = gsw.slic(images, n_segments=2, compactness=0.1)
    assert seg.labels.shape == (65537, 4, 4)
    for i in (0, 1, 65534, 65535, 65536):
        single = gsw.slic(images[i : i + 1], n_segments=2, compactness=0.1)
        assert torch.equal(seg.labels[i], single.labels[0])
        assert torch.equal(seg.centers[i], single.centers[0])
        assert int(seg.num_segments[i]) == int(single.num_segments[0])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_warm_start_without_a_live_cluster(device):
    image = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1)).to(device)
    seg = gsw.slic(image, n_segments=12)
    counts = seg.cluster_counts.clone()
    counts[1] = 0
    dead = dataclasses.replace(seg, cluster_counts=counts)
    with pytest.raises(ValueError, match=r"init: 1 sample.*no live cluster"):
        gsw.slic(image, n_segments=12, init=dead)
    # Unvalidated, both backends give the kernel's rule: every pixel joins cluster 0.
    out = gsw.slic(image, n_segments=12, init=dead, validate=False)
    assert bool((out.labels[1] == 0).all())
    assert int(out.num_segments[1]) == 1
    assert torch.equal(
        out.labels[0],
        gsw.slic(
            image[:1],
            n_segments=12,
            init=dataclasses.replace(
                seg,
                cluster_counts=counts[:1],
                clusters=seg.clusters[:1],
                cluster_labels=seg.cluster_labels[:1],
                labels=seg.labels[:1],
            ),
            validate=False,
        ).labels[0],
    )


# ------------------------------------------------------------------------- the op


def test_opcheck():
    image = _photo("coffee")[:, :, :60, :80].unsqueeze(2).contiguous()
    args = (
        image,
        None,
        None,
        None,
        [1, 10, 10, 0, 5, 5, 1, 6, 8],
        [0.01, 0.01, 0.01],
        10.0,
        True,
        5,
        0.02,
        True,
        10,
        100,
    )
    torch.library.opcheck(
        torch.ops.gswfast.slic.default, args, test_utils=("test_schema", "test_faketensor")
    )
    mask = torch.zeros(1, 60 * 80, dtype=torch.uint8)
    mask[:, 1000:3000] = 1
    torch.library.opcheck(
        torch.ops.gswfast.slic.default,
        (*args, mask),
        test_utils=("test_schema", "test_faketensor"),
    )


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(n_segments=0), ValueError, "n_segments"),
        (dict(n_segments=2.5), TypeError, "n_segments"),
        (dict(compactness=0.0), ValueError, "compactness"),
        (dict(compactness=1e-20), ValueError, "compactness"),  # 1/c^2 overflows float32
        (dict(compactness=-1.0), ValueError, "compactness"),
        (dict(compactness=math.nan), ValueError, "compactness"),
        (dict(compactness=10**400), ValueError, "compactness: expected a finite number >= 1e-10"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(max_iter=2**31), ValueError, r"max_iter: expected an int in \[1, 2147483647\]"),
        (dict(max_iter=2**70), ValueError, r"max_iter: expected an int in \[1, 2147483647\]"),
        (dict(max_iter=2.5), TypeError, "max_iter: expected an int"),
        (dict(subsample=0), ValueError, "subsample"),
        (dict(subsample=2.0), TypeError, "subsample: expected an int"),
        (dict(subsample=2**70), ValueError, r"subsample: expected an int in \[1, 2147483647\]"),
        (dict(min_size_factor=-0.1), ValueError, "min_size_factor"),
        # Bools are no numbers, and flags are bools (a string is no flag).
        (dict(n_segments=True), TypeError, "n_segments: expected an int, got True"),
        (dict(n_segments=np.bool_(True)), TypeError, "n_segments: expected an int"),
        (dict(compactness=True), TypeError, "compactness: expected a number, got True"),
        (dict(min_size_factor=True), TypeError, "min_size_factor: expected a number"),
        (dict(tol=True), TypeError, "tol: expected a number"),
        (dict(tol="0.1"), TypeError, "tol: expected a number"),
        (dict(enforce_connectivity="no"), TypeError, "enforce_connectivity: expected True or"),
        (dict(enforce_connectivity=1), TypeError, "enforce_connectivity: expected True or"),
        (dict(convert_lab="no"), TypeError, "convert_lab: expected True, False or None"),
        (dict(validate=0), TypeError, "validate: expected True or False"),
        (dict(spacing=(True, 1)), TypeError, "spacing: expected a sequence of floats"),
        (dict(sigma=True), TypeError, "sigma: expected a float or a sequence"),
        (dict(sigma=(1.0, True)), TypeError, "sigma: expected a float or a sequence"),
        (dict(sigma="12"), TypeError, "sigma: expected a float or a sequence"),
        # A Gaussian of 1e5 pixels flattens any image: more is an error, spacing included.
        (dict(sigma=1e9), ValueError, r"sigma: expected at most 100000 pixels"),
        (dict(sigma=2.0, spacing=(1e-9, 1.0)), ValueError, r"sigma: .* with spacing"),
        (dict(sigma=(0.0, 1e5)), None, None),
        (dict(max_iter=2**31 - 1, subsample=2**31 - 1, max_size_factor=1e300), None, None),
        (dict(mode="video"), ValueError, "mode"),
        (dict(mode="volume"), ValueError, "mode"),
        (dict(convert_lab=True, n_segments=10), None, None),
        (dict(spacing=(1, 2)), None, None),
        (dict(spacing=(1, 0, 1)), ValueError, "spacing"),
        (dict(spacing=(1, 2, 3, 4)), ValueError, "spacing"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    image = torch.rand(1, 3, 40, 50)
    if error is None:
        gsw.slic(image, **kwargs)
        return
    with pytest.raises(error, match=match):
        gsw.slic(image, **kwargs)


def test_numpy_scalars_are_read_as_their_python_values():
    # scikit-image users pass NumPy scalars (n_segments from an array, factors from a config).
    image = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    given = dict(n_segments=60, compactness=5.0, max_iter=4, min_size_factor=0.5, tol=0.01)
    given |= dict(sigma=1.5, subsample=2, max_size_factor=2.5)
    ints = {"n_segments", "max_iter", "subsample"}
    as_numpy = {k: (np.int64(v) if k in ints else np.float32(v)) for k, v in given.items()}
    ours, theirs = gsw.slic(image, **given), gsw.slic(image, **as_numpy)
    assert torch.equal(ours.labels, theirs.labels)
    assert torch.equal(ours.centers, theirs.centers)
    assert torch.equal(ours.iterations, theirs.iterations)


def test_huge_limits_mean_no_limit():
    # max_size_factor past the pixel count, n_segments past it, max_iter and subsample at the
    # int32 limit: each is the same call as no limit (or one segment per pixel).
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 20, 24, dtype=torch.bool)
    mask[:, :, :5] = False
    free = gsw.slic(image, n_segments=30)
    assert torch.equal(gsw.slic(image, n_segments=30, max_size_factor=1e300).labels, free.labels)
    capped = gsw.slic(image, n_segments=30, max_iter=1000)
    assert int(capped.iterations.max()) < 1000  # converged: a larger cap changes nothing
    assert torch.equal(gsw.slic(image, n_segments=30, max_iter=2**31 - 1).labels, capped.labels)
    assert torch.equal(gsw.slic(image, n_segments=30, subsample=2**31 - 1).labels, free.labels)
    for m in (None, mask):
        huge = gsw.slic(image, n_segments=10**400, mask=m)
        assert torch.equal(huge.labels, gsw.slic(image, n_segments=20 * 24, mask=m).labels)


def test_bad_images():
    with pytest.raises(TypeError, match="images"):
        gsw.slic(np.zeros((1, 3, 20, 20)))
    with pytest.raises(TypeError, match=r"images: expected an integer, bool or float.*complex64"):
        gsw.slic(torch.zeros(1, 3, 20, 20, dtype=torch.complex64))
    for shape in ((3, 20, 20), (1, 1, 3, 4, 20, 20)):
        with pytest.raises(ValueError, match="images"):
            gsw.slic(torch.rand(shape))
    with pytest.raises(ValueError, match="images"):
        gsw.slic(torch.rand(0, 3, 20, 20))
    for bad in (math.nan, math.inf):
        x = torch.rand(1, 3, 20, 20)
        x[0, 1, 5, 5] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            gsw.slic(x, n_segments=10)
    with pytest.raises(ValueError, match="convert_lab"):
        gsw.slic(torch.rand(1, 4, 20, 20), convert_lab=True, n_segments=10)


def _skimage_count(image: torch.Tensor, n_segments: int) -> int:
    array = image[0].permute(1, 2, 0).double().numpy()
    return (
        int(segmentation.slic(array, n_segments=n_segments, compactness=10.0, start_label=0).max())
        + 1
    )


@pytest.mark.parametrize(
    ("shape", "n_segments"),
    [((4, 400), 10), ((2, 5), 2), ((1, 8), 1), ((8, 1), 1), ((3, 30), 3), ((1, 40), 4)],
)
def test_thin_images_get_one_row_of_seeds(shape, n_segments):
    # scikit-image segments these (the regular grid clamps the step to the thin side).
    image = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    seg = gsw.slic(image, n_segments=n_segments)
    _check_contract(seg, (1, *shape))
    assert is_connected(seg.labels[0])
    _, _, cells = _seed_grid((1, *shape), n_segments, "image")
    assert math.prod(cells) == _skimage_seeds((1, *shape), n_segments)
    # A clip shorter than the step is fine too: one layer of seeds in time.
    seg = gsw.slic(torch.rand(1, 3, 2, 64, 64), n_segments=20)
    _check_contract(seg, (1, 2, 64, 64))


def _skimage_seeds(shape: tuple[int, int, int], n_segments: int) -> int:
    from skimage.util import regular_grid

    grid = regular_grid(shape, n_segments)
    return math.prod(len(range(*s.indices(d))) for s, d in zip(grid, shape, strict=True))


@pytest.mark.parametrize("subsample", [1, 3])
@pytest.mark.parametrize("n_segments", [50, 100, 210, 300, 420, 421, 10**6])
def test_n_segments_near_and_above_the_pixel_count(n_segments, subsample):
    # 20 x 21 = 420 pixels. Seeds one or two pixels apart used to meet on the same lowest-
    # gradient pixel (all but one died: 420 asked gave 112); more than 420 raised. With
    # subsample=3, a subsampled first pass starved the seeds of skipped rows (153 of 420).
    image = _photo("astronaut")[:, :, 100:120, 200:221]
    seg = gsw.slic(image, n_segments=n_segments, subsample=subsample)
    _check_contract(seg, (1, 20, 21))
    ours, theirs = int(seg.num_segments[0]), _skimage_count(image.float() / 255, n_segments)
    assert abs(ours - theirs) <= 0.15 * theirs, (ours, theirs)
    if n_segments >= 420:
        assert ours == 420  # one segment per pixel, as scikit-image


@pytest.mark.parametrize("subsample", [1, 3])
def test_photo_with_one_segment_per_two_by_two_block(subsample):
    image = _photo("astronaut")[:, :, 100:164, 200:264]  # 64 x 64
    for n_segments in (1024, 4096):
        count = int(gsw.slic(image, n_segments=n_segments, subsample=subsample).num_segments[0])
        assert abs(count - n_segments) <= 0.15 * n_segments, (n_segments, count)


def test_float_srgb_outside_0_1_is_an_error_with_cielab():
    image = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    for bad in (image * 255, image + 1000, image - 0.5):
        with pytest.raises(ValueError, match=r"outside 0..1.*convert_lab=False"):
            gsw.slic(bad, n_segments=20)
    # As features (no CIELAB) any finite value is fine, and a 0..255 scale is a scale.
    a = gsw.slic(image * 255, n_segments=20, convert_lab=False, compactness=2550.0).labels
    b = gsw.slic(image, n_segments=20, convert_lab=False, compactness=10.0).labels
    assert (a == b).float().mean() > 0.95


@pytest.mark.parametrize("sigma", [0.7, 2.0, (1.0, 3.0)])
def test_sigma_smooths_as_scipy_gaussian_filter(sigma):
    from scipy import ndimage

    from gswfast.segmentation import _resolve_sigma, _smooth

    image = torch.rand(2, 3, 9, 40, 50, generator=torch.Generator().manual_seed(0))
    blur = _resolve_sigma(sigma, None, "volume")
    ours = _smooth(image, blur)
    theirs = ndimage.gaussian_filter(
        image.double().numpy(), [0, 0, *blur], mode="reflect", truncate=4.0
    )
    torch.testing.assert_close(ours.double(), torch.from_numpy(theirs), atol=1e-6, rtol=0)
    # gsw.slic(sigma=...) segments exactly the smoothed images; sigma 0 changes nothing.
    seg = gsw.slic(image, n_segments=40, sigma=sigma)
    assert torch.equal(seg.labels, gsw.slic(ours, n_segments=40).labels)
    assert torch.equal(
        gsw.slic(image, n_segments=40, sigma=0).labels, gsw.slic(image, n_segments=40).labels
    )


@pytest.mark.parametrize(("sigma", "spacing"), [((30.0, 60.0), None), (1e3, (1.0, 0.5))])
def test_sigma_wider_than_the_image_is_folded_onto_it(sigma, spacing):
    # scipy's reflected signal repeats every 2n pixels: a kernel that wide adds its weights
    # up over one period, 2n taps (not 8 sigma + 1: sigma=1e4 took a second on 20 x 30).
    from scipy import ndimage

    from gswfast.segmentation import _gaussian_taps, _resolve_sigma, _smooth

    image = torch.rand(2, 3, 1, 40, 50, generator=torch.Generator().manual_seed(0))
    blur = _resolve_sigma(sigma, spacing, "image")
    for s, n in zip(blur[1:], (40, 50), strict=True):
        assert len(_gaussian_taps(s, n)[1]) == 2 * n
    ours = _smooth(image, blur)
    theirs = ndimage.gaussian_filter(
        image.double().numpy(), [0, 0, *blur], mode="reflect", truncate=4.0
    )
    torch.testing.assert_close(ours.double(), torch.from_numpy(theirs), atol=1e-6, rtol=0)
    # Narrower kernels are scipy's taps as they are.
    first, weights = _gaussian_taps(2.0, 40)
    assert (first, len(weights)) == (-8, 17)


def test_sigma_per_frame_images_and_spacing():
    from gswfast.segmentation import _resolve_sigma

    assert _resolve_sigma(2.0, (2.0, 1.0, 0.5), "volume") == [1.0, 2.0, 4.0]
    assert _resolve_sigma(2.0, None, "per_frame") == [0.0, 2.0, 2.0]
    assert _resolve_sigma((1.0, 3.0), None, "image") == [0.0, 1.0, 3.0]
    noisy = _photo("coffee")[:, :, :120, :160].float() / 255
    noisy = (
        noisy + 0.15 * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
    ).clamp(0, 1)

    rough = int(boundary_map(gsw.slic(noisy, n_segments=100).labels[0]).sum())
    smooth = int(boundary_map(gsw.slic(noisy, n_segments=100, sigma=2.0).labels[0]).sum())
    assert smooth < rough
    for bad in (-1.0, math.nan, (1.0, 2.0, 3.0, 4.0)):
        with pytest.raises(ValueError, match="sigma"):
            gsw.slic(noisy, n_segments=100, sigma=bad)
    with pytest.raises(TypeError, match="sigma"):
        gsw.slic(noisy, n_segments=100, sigma="wide")


def test_uint16_images_are_their_nominal_range():
    image = (torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(0)) * 65535).to(
        torch.uint16
    )
    seg = gsw.slic(image, n_segments=20)
    same = gsw.slic(image.float() / 65535, n_segments=20)
    assert torch.equal(seg.labels, same.labels)
    assert torch.equal(seg.centers, same.centers)


@pytest.mark.parametrize(
    "dtype",
    [torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint32, torch.uint64],
)
def test_integer_and_bool_images_are_read_as_img_as_float(dtype):
    # value / the dtype's largest value, as scikit-image's img_as_float (signed: -1..1): the
    # same bits as segmenting its float image, cast to float32.
    from skimage.util import img_as_float

    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 30, 40, generator=g, dtype=torch.float64)
    if dtype == torch.bool:
        images = [noise > 0.5]
    else:
        top = torch.iinfo(dtype).max
        images = [(noise * top).to(dtype)]  # 0..max
        if dtype.is_signed:  # -max..max, and min: -128 / 127 is read as -1
            images.append(((2 * noise - 1) * top).to(dtype))
            images[1].view(-1)[:5] = torch.iinfo(dtype).min
    for image, lab in zip(images, (True, False), strict=False):  # CIELAB needs 0..1
        seg = gsw.slic(image, n_segments=20, convert_lab=lab)
        theirs = torch.from_numpy(img_as_float(image.numpy())).float()
        same = gsw.slic(theirs, n_segments=20, convert_lab=lab)
        assert torch.equal(seg.labels, same.labels)
        assert torch.equal(seg.centers, same.centers)
    if dtype.is_signed:  # negative values are below CIELAB's 0..1, and the error says why
        with pytest.raises(ValueError, match=rf"outside 0..1.*{dtype} images are read as value /"):
            gsw.slic(images[1], n_segments=20)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32])
def test_integer_photos_segment_as_well_as_skimage(dtype):
    # scikit-image segments the same integer array (after its own img_as_float).
    photo = _photo("chelsea")
    image = photo.to(dtype) * (torch.iinfo(dtype).max // 255)
    ours = gsw.slic(image, n_segments=100).labels[0]
    ref = torch.from_numpy(
        segmentation.slic(image[0].permute(1, 2, 0).numpy(), n_segments=100, start_label=0)
    )
    pixels = photo[0].float() / 255
    assert explained_variation(ours, pixels) >= explained_variation(ref, pixels) - 0.02
    assert abs(int(ours.max()) + 1 - 100) <= 0.15 * 100
    assert is_connected(ours)


def test_bool_images_segment_as_well_as_skimage():
    regions, _ = synthetic_regions(seed=0, noise=0.0)
    image = regions > 0.5  # [3, H, W]: up to 8 colours
    ours = gsw.slic(image[None], n_segments=100).labels[0]
    ref = torch.from_numpy(
        segmentation.slic(image.permute(1, 2, 0).numpy(), n_segments=100, start_label=0)
    )
    pixels = image.float()
    assert explained_variation(ours, pixels) >= explained_variation(ref, pixels) - 0.02
    assert abs(int(ours.max()) + 1 - 100) <= 0.15 * 100
    assert is_connected(ours)


def test_bad_init():
    image = torch.rand(1, 3, 40, 50)
    seg = gsw.slic(image, n_segments=20)
    with pytest.raises(TypeError, match="init"):
        gsw.slic(image, n_segments=20, init=seg.labels)
    with pytest.raises(ValueError, match="init"):
        gsw.slic(torch.rand(1, 3, 40, 52), n_segments=20, init=seg)
    with pytest.raises(ValueError, match="init"):
        gsw.slic(torch.rand(2, 3, 40, 50), n_segments=20, init=seg)
    with pytest.raises(ValueError, match="init"):
        gsw.slic(torch.rand(1, 2, 40, 50), n_segments=20, init=seg)
    with pytest.raises(ValueError, match="init"):
        gsw.slic(torch.rand(1, 3, 1, 40, 50), n_segments=20, mode="per_frame", init=seg)


# ------------------------------------------------------------------------- maskSLIC


def _disc_mask(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """bool [H, W]: an ellipse and a detached rectangle (two mask components)."""
    g = torch.Generator().manual_seed(seed)
    cy, cx = h * (0.4 + 0.2 * float(torch.rand((), generator=g))), w * 0.4
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ellipse = ((yy - cy) / (0.35 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1
    rect = (yy >= h // 5) & (yy < h // 2) & (xx >= int(0.78 * w)) & (xx < int(0.95 * w))
    return ellipse | rect


def _masked_connected(labels: torch.Tensor) -> bool:
    """Every id >= 0 of ``labels`` is one 4- (6-) connected region; -1 is background."""
    from skimage.measure import label as connected

    array = labels.cpu().numpy()
    components = connected(array + 1, background=0, connectivity=1)
    return int(components.max()) == len(set(array[array >= 0].tolist()))


def _check_masked(seg: gsw.Segmentation, mask: torch.Tensor) -> None:
    labels = seg.labels.cpu()
    mask = mask.cpu()
    assert bool((labels[~mask] == -1).all())
    assert bool((labels[mask] >= 0).all())
    for b in range(labels.shape[0]):
        inside = labels[b][mask[b]]
        ids = torch.unique(inside)
        assert torch.equal(ids, torch.arange(int(seg.num_segments[b]), dtype=torch.int32))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_segments", [100, 300])
def test_mask_matches_skimage(seed, n_segments):
    image, truth = synthetic_regions(seed=seed)
    mask = _disc_mask(*truth.shape, seed=seed)
    seg = gsw.slic(image[None], n_segments=n_segments, mask=mask[None])
    _check_masked(seg, mask[None])
    ours = seg.labels[0]
    assert _masked_connected(ours)
    assert seg.mask is mask or torch.equal(seg.mask[0], mask)
    array = image.permute(1, 2, 0).numpy()
    ref = segmentation.slic(
        array, n_segments=n_segments, compactness=10.0, start_label=1, mask=mask.numpy()
    )
    ref = torch.from_numpy(ref).long() - 1  # -1 outside, as gswfast
    # scikit-image's masked connectivity step merges more (69-83 segments for 100 here),
    # so the count is held to its k-means segments (before connectivity), and to n_segments.
    loose = segmentation.slic(
        array,
        n_segments=n_segments,
        compactness=10.0,
        start_label=1,
        mask=mask.numpy(),
        enforce_connectivity=False,
    )
    count, ref_count = int(seg.num_segments[0]), len(np.unique(loose[loose > 0]))
    assert abs(count - ref_count) <= 0.15 * ref_count
    assert abs(count - n_segments) <= 0.15 * n_segments
    assert count >= int(ref.max()) + 1 - 0.05 * n_segments
    inner_truth = torch.where(mask, truth, -1)
    assert boundary_recall(ours, inner_truth) >= boundary_recall(ref, inner_truth) - 0.03
    inside = mask.reshape(-1)
    variation = explained_variation(
        ours.reshape(-1)[inside].long(), image.reshape(3, -1)[:, inside]
    )
    ref_variation = explained_variation(
        ref.reshape(-1)[inside].long(), image.reshape(3, -1)[:, inside]
    )
    assert variation >= ref_variation - 0.03


def test_mask_all_true_changes_nothing():
    image = _photo("coffee")[:, :, :120, :160]
    mask = torch.ones(1, 120, 160, dtype=torch.bool)
    for connectivity in (True, False):
        plain = gsw.slic(image, n_segments=60, enforce_connectivity=connectivity)
        masked = gsw.slic(image, n_segments=60, enforce_connectivity=connectivity, mask=mask)
        assert torch.equal(plain.labels, masked.labels)
        assert torch.equal(plain.centers, masked.centers)
        assert torch.equal(plain.clusters, masked.clusters)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("n_segments", [30, 120])
def test_mask_seeds_equal_the_reference(device, n_segments):
    image = _photo("coffee")[:, :, 50:90, 100:150].float() / 255  # [1, 3, 40, 50]
    mask = _disc_mask(40, 50)
    seg = gsw.slic(
        image.to(device),
        n_segments=n_segments,
        compactness=0.1,
        max_iter=1,
        tol=1.0,
        convert_lab=False,
        enforce_connectivity=False,
        mask=mask[None].to(device),
    )
    from gswfast.segmentation import _masked_grid

    steps, starts, cells, _, _ = _masked_grid(
        mask.reshape(1, -1).to(torch.uint8), (1, 40, 50), n_segments, "image", 1
    )
    features = image[0].unsqueeze(1)
    seeds = reference.seeds(features, steps, starts, cells, mask=mask[None])
    live = reference.live_seeds(mask[None], steps, starts, cells)
    assert torch.equal(seg.cluster_counts[0].cpu() > 0, live)
    assert torch.equal(seg.clusters[0].cpu()[live], seeds[live])
    assert bool((seg.cluster_labels[0].cpu()[~mask.reshape(-1)] == -1).all())
    assert bool((seg.cluster_labels[0].cpu()[mask.reshape(-1)] >= 0).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    ("connectivity", "factor", "limit"),
    [(True, 0.9, None), (True, 0.3, None), (False, 0.0, None), (True, 0.9, 1.2)],
)
@pytest.mark.parametrize("kind", ["image", "volume"])
def test_mask_connectivity_ids_and_centres_equal_the_reference(
    device, kind, connectivity, factor, limit
):
    shape = (1, 2, 24, 30) if kind == "image" else (1, 2, 4, 16, 18)
    image = _blocky_noise(shape, 3)
    h, w = shape[-2:]
    mask = _disc_mask(h, w, seed=1)
    if kind == "volume":
        mask = mask.expand(shape[2], h, w).clone()
        mask[1, : h // 2] = False  # not the same in every frame
    seg = gsw.slic(
        image.to(device),
        n_segments=40 if kind == "image" else 30,
        compactness=0.05,
        min_size_factor=factor,
        convert_lab=False,
        enforce_connectivity=connectivity,
        mask=mask[None].to(device),
        max_size_factor=limit,
    )
    _check_masked(seg, mask[None])
    features = image[0].unsqueeze(1) if kind == "image" else image[0]  # [F, D, H, W]
    dims = tuple(features.shape[1:])
    clusters = seg.cluster_labels[0].cpu().view(dims)
    assert bool((clusters.reshape(-1)[~mask.reshape(-1)] == -1).all())
    labels = seg.labels[0].cpu().view(dims)
    if connectivity:
        from gswfast.segmentation import _masked_grid

        _, _, _, seeds, area = _masked_grid(
            mask.reshape(1, -1).to(torch.uint8), dims, 40 if kind == "image" else 30, kind, 1
        )
        max_size = int(limit * area / seeds) if limit else 0
        sets = reference.connected_sets(clusters, features, int(factor * area / seeds), max_size)
        assert reference.same_partition(torch.where(mask.view(dims), sets, -1), labels.long())
        assert torch.equal(labels, reference.segment_ids(clusters, sets))
        assert _masked_connected(labels)
    else:
        assert torch.equal(labels, reference.segment_ids(clusters, None))
    expected = reference.centers(labels, features, seg.centers.shape[1])
    assert torch.equal(seg.centers[0].cpu(), expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_mask_clips_per_frame_and_volume(device):
    clip = torch.rand(2, 3, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    mask = _disc_mask(30, 40).expand(2, 3, 30, 40).clone()
    mask[1, 2] = False  # an empty frame: no segment there
    for mode in ("per_frame", "volume"):
        seg = gsw.slic(clip.to(device), n_segments=20, mode=mode, mask=mask.to(device))
        labels = seg.labels.cpu()
        assert bool((labels[~mask] == -1).all())
        assert bool((labels[mask] >= 0).all())
        for b in range(2):
            ids = torch.unique(labels[b][mask[b]])
            assert torch.equal(ids, torch.arange(int(seg.num_segments[b]), dtype=torch.int32))
        if mode == "per_frame":
            assert int(seg.center_counts[1, 2]) == 0
            frame = gsw.slic(clip[:1, :, 1].to(device), n_segments=20, mask=mask[:1, 1].to(device))
            assert torch.equal(
                frame.labels.cpu()[0],
                labels[0, 1] - int(seg.center_counts[0, 0]) * (labels[0, 1] >= 0),
            )


def _first_converged_pass(changes: torch.Tensor, limit: int) -> int:
    """The 1-based pass that stops a sample whose passes changed ``changes`` pixels: the
    first with at most ``limit`` changes (else the last pass)."""
    met = (changes <= limit).nonzero()
    return int(met[0]) + 1 if len(met) else len(changes)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_mask_tol_counts_against_the_mask_area(device):
    # Two samples with masks of about 10% and 40% of the pixels. With tol=0 no sample stops
    # before a pass changes nothing, so the k-means labels after max_iter=k passes give the
    # in-mask pixels changed by each pass; with tol, a sample must stop at the first pass
    # that changed at most floor(tol * its mask area) pixels (not tol * all its pixels),
    # with the k-means labels of that pass.
    image = torch.cat([_photo("coffee")[:, :, :120, :160], _photo("chelsea")[:, :, :120, :160]])
    small = torch.zeros(120, 160, dtype=torch.bool)
    small[30:70, 40:90] = True
    mask = torch.stack([small & _disc_mask(120, 160), _disc_mask(120, 160, seed=1)])
    inside = mask.reshape(2, -1)
    passes, tol = 15, 0.01
    before = torch.full((2, 120 * 160), -1, dtype=torch.int32)
    changes, after_pass = [], []
    for k in range(1, passes + 1):
        seg = gsw.slic(image.to(device), n_segments=100, mask=mask.to(device), tol=0.0, max_iter=k)
        labels = seg.cluster_labels.reshape(2, -1).cpu()
        changes.append(((labels != before) & inside).sum(dim=1))
        after_pass.append(labels)
        before = labels
    per_pass = torch.stack(changes, dim=1)  # [2, passes]
    areas = inside.sum(dim=1).tolist()
    expected = [_first_converged_pass(per_pass[b], int(tol * areas[b])) for b in range(2)]
    # The old rule (tol * all pixels) stops both samples earlier: the test tells them apart.
    old = [_first_converged_pass(per_pass[b], int(tol * 120 * 160)) for b in range(2)]
    assert all(e > o for e, o in zip(expected, old, strict=True)), (expected, old)
    seg = gsw.slic(image.to(device), n_segments=100, mask=mask.to(device), tol=tol, max_iter=passes)
    assert seg.iterations.cpu().tolist() == expected
    labels = seg.cluster_labels.reshape(2, -1).cpu()
    for b in range(2):  # the labels of the tol=0, max_iter=expected[b] run
        assert torch.equal(labels[b], after_pass[expected[b] - 1][b])


def test_mask_warm_start_and_pooling():
    image = _photo("chelsea")[:, :, :100, :140]
    mask = _disc_mask(100, 140)[None]
    seg = gsw.slic(image, n_segments=50, mask=mask)
    warm = gsw.slic(image, n_segments=50, mask=mask, init=seg)
    _check_masked(warm, mask)
    assert int(warm.iterations[0]) <= 2
    assert (warm.labels == seg.labels).float().mean() > 0.95
    pooled = gsw.segment_pool(image.float(), seg.labels, int(seg.num_segments[0]))
    assert bool(torch.isfinite(pooled).all())


def test_mask_bad_inputs_name_the_argument():
    image = torch.rand(2, 3, 20, 24)
    good = torch.ones(2, 20, 24, dtype=torch.bool)
    with pytest.raises(TypeError, match="mask"):
        gsw.slic(image, mask=good.float())
    with pytest.raises(TypeError, match="mask"):
        gsw.slic(image, mask=good.numpy())
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 20, 24\)"):
        gsw.slic(image, mask=good[:1])
    with pytest.raises(ValueError, match="mask: expected device"):
        gsw.slic(image, mask=good.to("meta"))
    empty = good.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="mask: sample 1 has no True pixel"):
        gsw.slic(image, mask=empty)
    clip = torch.rand(1, 3, 2, 20, 24)
    with pytest.raises(ValueError, match="mask"):
        gsw.slic(clip, mode="per_frame", mask=good)
    model = TinyCNN()
    attribution = torch.rand(2, 3, 20, 24)
    with pytest.raises(ValueError, match="segmentation: a masked segmentation"):
        gsw.explain(None, image, segmentation=gsw.slic(image, mask=good), attribution=attribution)
    with pytest.raises(ValueError, match="segmentation: a masked segmentation"):
        gsw.lime(model, image, gsw.slic(image, mask=good), 1, n_samples=8)
    from gswfast.checks import resolve_given_segmentation

    small = good.clone()
    small[:, :5] = False
    seg = gsw.slic(image, n_segments=10, mask=small)
    with pytest.raises(ValueError, match="segmentation: a masked segmentation"):
        resolve_given_segmentation(seg, image)
    with pytest.raises(ValueError, match="segmentation: labels must be >= 0"):
        resolve_given_segmentation(seg.labels, image)


def test_mask_tiny_region_still_gets_a_segment():
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 1:3, 1:4] = True  # holds no point of the first grid
    seg = gsw.slic(image, n_segments=16, mask=mask)
    _check_masked(seg, mask)
    assert int(seg.num_segments[0]) >= 1


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("subsample", [2, 4])
def test_mask_keeps_its_seeds_under_subsampled_passes(device, subsample):
    # A 2-row mask: every seed's in-mask pixels lie on rows a subsampled first pass would
    # skip for some seeds, which then died for good (review finding); a masked call's first
    # pass is full, so subsampling keeps every live seed of the full passes.
    image = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.zeros(1, 64, 128, dtype=torch.bool, device=device)
    mask[0, 30:32] = True
    options = {"n_segments": 64, "enforce_connectivity": False, "mask": mask}
    full = gsw.slic(image, **options)
    sub = gsw.slic(image, subsample=subsample, **options)
    assert int((sub.cluster_counts > 0).sum()) == int((full.cluster_counts > 0).sum())
    assert int(sub.num_segments[0]) == int(full.num_segments[0])
    again = gsw.slic(image, subsample=subsample, init=sub, **options)  # a valid warm start
    _check_masked(again, mask)


@pytest.mark.parametrize("rows", [0, 3])
def test_the_op_checks_the_mask_before_cutting_it_into_calls(rows):
    # One sample, a mask of 3 rows (or none): an error naming the mask, not a silent cut.
    image = torch.rand(1, 3, 1, 16, 16)
    grid = [1, 8, 8, 0, 4, 4, 1, 2, 2]
    mask = torch.ones(rows, 256, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"mask: expected \[N, P\] = \[1, 256\]"):
        gswfast.ops.slic_kernel(image, grid, [0.1] * 3, 10.0, True, 5, True, 4, 16, mask=mask)


# ------------------------------------------------------------------------- max_size_factor


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case", ["image-0", "image-1", "volume-0"])
def test_max_size_factor_merges_equal_the_reference(device, case):
    kind, seed = case.split("-")
    shape = (1, 2, 24, 30) if kind == "image" else (1, 2, 4, 16, 18)
    image = _blocky_noise(shape, int(seed))
    n_segments = 40 if kind == "image" else 30
    options = dict(n_segments=n_segments, compactness=0.05, min_size_factor=0.9, convert_lab=False)
    seg = gsw.slic(image.to(device), max_size_factor=1.2, **options)
    unlimited = gsw.slic(image.to(device), **options)
    features = image[0].unsqueeze(1) if kind == "image" else image[0]
    dims = tuple(features.shape[1:])
    clusters = seg.cluster_labels[0].cpu().view(dims)
    assert torch.equal(clusters, unlimited.cluster_labels[0].cpu().view(dims))
    min_size = _min_size(dims, n_segments, 0.9, kind)
    max_size = int(1.2 * math.prod(dims) / math.prod(_seed_grid(dims, n_segments, kind)[2]))
    sets = reference.connected_sets(clusters, features, min_size, max_size)
    labels = seg.labels[0].cpu().view(dims)
    assert reference.same_partition(sets, labels)
    assert torch.equal(labels, reference.segment_ids(clusters, sets))
    assert torch.equal(
        seg.centers[0].cpu(), reference.centers(labels, features, seg.centers.shape[1])
    )
    # The limit bites: more segments, none larger than without it.
    assert int(seg.num_segments[0]) > int(unlimited.num_segments[0])
    assert int(torch.bincount(labels.reshape(-1)).max()) <= int(
        torch.bincount(unlimited.labels[0].cpu().reshape(-1)).max()
    )
    assert _masked_connected(labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_max_size_factor_three_matches_skimage(seed):
    image, truth = synthetic_regions(seed=seed)
    ours = gsw.slic(image[None], n_segments=200, max_size_factor=3).labels[0]
    ref = _reference(image[None], 200)  # scikit-image's default max_size_factor=3
    assert boundary_recall(ours, truth) >= boundary_recall(ref, truth) - 0.02
    assert abs(int(ours.max()) + 1 - 200) <= 0.15 * 200
    assert is_connected(ours)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "3"])
def test_max_size_factor_bad_values(value):
    error = TypeError if isinstance(value, (bool, str)) else ValueError
    with pytest.raises(error, match="max_size_factor"):
        gsw.slic(torch.rand(1, 3, 20, 24), max_size_factor=value)


def test_mask_batch_shares_one_grid_scaled_to_the_mean_area():
    # One grid per call: a sample gets about n_segments * its area / the mean area seeds.
    image, _ = synthetic_regions(seed=0)
    full = _disc_mask(240, 320)
    half = full & (torch.arange(320) < 160)
    masks = torch.stack([full, half])
    seg = gsw.slic(image[None].expand(2, -1, -1, -1), n_segments=150, mask=masks)
    _check_masked(seg, masks)
    areas = masks.sum((1, 2)).double()
    expected = 150 * areas / areas.mean()
    assert bool(((seg.num_segments.double() - expected).abs() <= 0.15 * expected).all())
    for b in range(2):
        assert _masked_connected(seg.labels[b])
