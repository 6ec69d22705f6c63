"""SLIC superpixels and supervoxels: contract, quality against scikit-image, warm starts,
determinism, CPU/CUDA parity and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gswfast as gsw
import gswfast.ops  # noqa: F401  (loads _C, which registers the torch.ops.gswfast.* used here)
from gswfast.metrics import boundary_map, boundary_recall, explained_variation, undersegmentation_error
from gswfast.testing import is_connected, synthetic_regions
from helpers import cpu_and_cuda

skimage = pytest.importorskip("skimage")
from skimage import color, data, segmentation  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")


def _photo(name: str) -> torch.Tensor:
    """scikit-image sample photo as uint8 [1, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].contiguous()


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
        crop = photo[:, y:y + 240, x:x + 320]
        image = torch.where(truth == r, crop, image)
    return image[None], truth


def _reference(image: torch.Tensor, n: int) -> torch.Tensor:
    array = image[0].permute(1, 2, 0).numpy()
    return torch.from_numpy(segmentation.slic(array, n_segments=n, compactness=10.0, start_label=0))


def _check_contract(seg: gsw.Segmentation, shape: tuple[int, ...]) -> None:
    assert seg.labels.dtype == torch.int32 and tuple(seg.labels.shape) == shape
    assert seg.num_segments.dtype == torch.int64 and seg.num_segments.shape == (shape[0],)
    for b in range(shape[0]):
        ids = torch.unique(seg.labels[b])
        assert torch.equal(ids.cpu(), torch.arange(int(seg.num_segments[b]), dtype=torch.int32))


# ------------------------------------------------------------------------- quality


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("n_segments", (100, 400))
@pytest.mark.paths
def test_quality_on_synthetic_regions_matches_or_beats_skimage(seed, n_segments):
    image, truth = synthetic_regions(seed=seed)
    ours = gsw.slic(image[None], n_segments=n_segments).labels[0]
    ref = _reference(image[None], n_segments)
    assert boundary_recall(ours, truth) >= boundary_recall(ref, truth) - 0.02
    assert undersegmentation_error(ours, truth) <= undersegmentation_error(ref, truth) + 0.02
    assert abs(int(ours.max()) + 1 - n_segments) <= 0.15 * n_segments
    assert is_connected(ours)


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("n_segments", (100, 400))
@pytest.mark.paths
def test_quality_on_photo_textures_matches_or_beats_skimage(seed, n_segments):
    image, truth = _photo_mosaic(seed)
    ours = gsw.slic(image, n_segments=n_segments).labels[0]
    ref = _reference(image, n_segments)
    assert boundary_recall(ours, truth) >= boundary_recall(ref, truth) - 0.02
    assert undersegmentation_error(ours, truth) <= undersegmentation_error(ref, truth) + 0.02
    assert abs(int(ours.max()) + 1 - n_segments) <= 0.15 * n_segments
    assert is_connected(ours)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("n_segments", (100, 400))
def test_photos_explained_variation_count_and_connectivity(name, n_segments):
    image = _photo(name)
    ours = gsw.slic(image, n_segments=n_segments).labels[0]
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
    spans = [int(torch.unique(torch.nonzero(labels == v)[:, 0]).numel()) for v in on_object.tolist()]
    assert np.median(spans) >= 4


def _moving_square_clip(frames: int, step: int, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A red square moving right over a static two-tone background: [1, 3, T, H, W], truth."""
    g = torch.Generator().manual_seed(0)
    clip = torch.zeros(1, 3, frames, size, size)
    clip[0, 2, :, :, : size // 2] = 0.8
    clip[0, 1, :, :, size // 2:] = 0.6
    truth = torch.zeros(frames, size, size, dtype=torch.int64)
    for t in range(frames):
        x0 = 10 + step * t
        clip[0, :, t, 30:60, x0:x0 + 30] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
        truth[t, 30:60, x0:x0 + 30] = 1
    clip += 0.02 * torch.randn(clip.shape, generator=g)
    return clip.clamp(0, 1), truth


# ------------------------------------------------------------------------- contract


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_image_batch_contract_and_centres(device):
    images = torch.cat([_photo("astronaut")[:, :, :200, :300], _photo("coffee")[:, :, :200, :300]]).to(device)
    seg = gsw.slic(images, n_segments=150)
    _check_contract(seg, (2, 200, 300))
    assert seg.mode == "image" and seg.centers.shape[0] == 2 and seg.centers.shape[2] == 6
    assert torch.equal(seg.center_counts, seg.num_segments)
    assert bool(((seg.iterations >= 1) & (seg.iterations <= 10)).all())
    # Centres are the segments' mean position and mean CIELAB colour (skimage's rgb2lab).
    for b in range(2):
        k = int(seg.num_segments[b])
        labels = seg.labels[b].cpu().long().reshape(-1)
        lab = torch.from_numpy(color.rgb2lab(images[b].cpu().permute(1, 2, 0).numpy())).reshape(-1, 3).float()
        ys, xs = torch.meshgrid(torch.arange(200.0), torch.arange(300.0), indexing="ij")
        values = torch.cat([torch.zeros(60000, 1), ys.reshape(-1, 1), xs.reshape(-1, 1), lab], dim=1)
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
    assert seg.centers.shape[:2] == (1, 4) and seg.iterations.shape == (1, 4)


def test_auto_mode_and_volume_contract():
    clip, _ = _moving_square_clip(frames=6, step=2, size=48)
    seg = gsw.slic(torch.cat([clip, clip.flip(-1)]), n_segments=40)
    assert seg.mode == "volume"
    _check_contract(seg, (2, 6, 48, 48))
    for b in range(2):
        assert is_connected(seg.labels[b])


@pytest.mark.parametrize("channels", (1, 2, 4, 7))
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
    assert (a == b).float().mean() > 0.99 and (a == c).float().mean() > 0.99


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
        return np.mean([int(torch.unique(torch.nonzero(labels == v)[:, 0]).numel()) for v in torch.unique(labels).tolist()])

    assert mean_span(loose) > mean_span(tight)


def test_compactness_makes_segments_squarer():
    image = _photo("astronaut")
    def perimeter(labels):
        return int(boundary_map(labels).sum())
    assert perimeter(gsw.slic(image, n_segments=200, compactness=40).labels[0]) < perimeter(
        gsw.slic(image, n_segments=200, compactness=2).labels[0])


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
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = gsw.slic(images, n_segments=200)
    finally:
        torch.set_num_threads(threads)
    again = gsw.slic(images, n_segments=200)
    for other in (single, again):
        assert torch.equal(first.labels, other.labels)
        assert torch.equal(first.centers, other.centers)
        assert torch.equal(first.iterations, other.iterations)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ("image", "per_frame", "volume"))
def test_cuda_matches_cpu_and_is_deterministic(mode):
    if mode == "image":
        x = torch.cat([_photo("astronaut")[:, :, :240, :320], _photo("coffee")[:, :, :240, :320]])
    else:
        x, _ = _moving_square_clip(frames=8, step=2)
    cpu = gsw.slic(x, n_segments=150, mode=mode)
    gpu = gsw.slic(x.cuda(), n_segments=150, mode=mode)
    again = gsw.slic(x.cuda(), n_segments=150, mode=mode)
    assert torch.equal(gpu.labels, again.labels) and torch.equal(gpu.centers, again.centers)
    assert (gpu.labels.cpu() == cpu.labels).float().mean() >= 0.99
    _check_contract(gpu, tuple(cpu.labels.shape))
    for b in range(x.shape[0]):
        labels = gpu.labels[b].cpu()
        if mode == "per_frame":
            assert all(is_connected(frame) for frame in labels)
        else:
            assert is_connected(labels)


@pytest.mark.cuda
def test_cuda_warm_start():
    image = _photo("astronaut").cuda()
    cold = gsw.slic(image, n_segments=300)
    warm = gsw.slic(image, n_segments=300, init=cold)
    assert int(warm.iterations[0]) <= 3 < int(cold.iterations[0])
    assert (warm.labels == cold.labels).float().mean() > 0.9


# ------------------------------------------------------------------------- the op


def test_opcheck():
    image = _photo("coffee")[:, :, :60, :80].unsqueeze(2).contiguous()
    args = (image, None, None, None, [1, 10, 10, 0, 5, 5, 1, 6, 8], [0.01, 0.01, 0.01], 10.0, True, 5,
            0.02, True, 10, 100)
    torch.library.opcheck(torch.ops.gswfast.slic.default, args,
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_segments=0), ValueError, "n_segments"),
        (dict(n_segments=10**7), ValueError, "n_segments"),
        (dict(n_segments=2.5), TypeError, "n_segments"),
        (dict(compactness=0.0), ValueError, "compactness"),
        (dict(compactness=-1.0), ValueError, "compactness"),
        (dict(compactness=math.nan), ValueError, "compactness"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(min_size_factor=-0.1), ValueError, "min_size_factor"),
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


def test_bad_images():
    with pytest.raises(TypeError, match="images"):
        gsw.slic(np.zeros((1, 3, 20, 20)))
    with pytest.raises(TypeError, match="images"):
        gsw.slic(torch.zeros(1, 3, 20, 20, dtype=torch.int32))
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


def test_image_thinner_than_the_grid_step():
    with pytest.raises(ValueError, match="n_segments.*grid step"):
        gsw.slic(torch.rand(1, 3, 4, 400), n_segments=10)
    # A clip shorter than the step is fine: one layer of seeds in time.
    seg = gsw.slic(torch.rand(1, 3, 2, 64, 64), n_segments=20)
    _check_contract(seg, (1, 2, 64, 64))


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
