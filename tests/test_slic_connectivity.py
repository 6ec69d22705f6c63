"""The CPU connectivity pass of SLIC on given cluster maps: components, merges, ids and
centres equal the plain-torch twin (gswfast._slic_reference) on maps of many short runs,
and a sample large enough to be cut into bands of rows gives the bits of one band, on any
number of threads."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_threads

import gswfast._C  # noqa: F401  (registers torch.ops.gswfast)
from gswfast import _slic_reference as reference

PARALLEL_PIXELS = 2**20  # kParallelPixels (slic_cpu.cpp): such samples run in bands of rows


def _given(
    clusters: torch.Tensor,
    features: torch.Tensor,
    min_size: int,
    max_size: int = 0,
    connectivity: bool = True,
    max_centers: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """The op's outputs for the cluster map ``clusters [D, H, W]`` (int64, -1: outside the
    mask) and ``features [F, D, H, W]`` (float32). A warm start whose centres lie far outside
    the image claims no pixel and converges at once (tol=1), so the k-means labels are the
    given map and only the connectivity pass acts."""
    d, h, w = clusters.shape
    k, f = int(clusters.max()) + 1, features.shape[0]
    centers = torch.zeros(1, k, 3 + f)
    centers[..., :3] = -1e7
    init_labels = clusters.reshape(1, -1).to(torch.int32)
    mask = (clusters >= 0).reshape(1, -1).to(torch.uint8)
    outputs = torch.ops.gswfast.slic(
        features.reshape(1, f, d, h, w).contiguous(),
        centers,
        torch.ones(1, k, dtype=torch.int32),
        init_labels,
        [1, 1, 1, 0, 0, 0, 1, 1, 1] + ([1, max_size] if max_size else []),
        [1.0, 1.0, 1.0],
        1.0,
        False,
        1,
        1.0,
        connectivity,
        min_size,
        max_centers or d * h * w,
        None if bool(mask.all()) else mask,
    )
    assert torch.equal(outputs[6], init_labels)  # the k-means labels are the given map
    return outputs


def _grid(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij")


def _random(shape: tuple[int, int, int], k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def _blocks(shape: tuple[int, int, int], k: int, seed: int, speck: float = 0.05) -> torch.Tensor:
    """Random clusters in 4 x 4 blocks (components across many blocks) with single-pixel
    specks of random clusters (small components to merge)."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = shape
    coarse = torch.randint(0, k, (d, h // 4 + 1, w // 4 + 1), generator=g)
    clusters = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :h, :w].contiguous()
    specks = torch.rand(shape, generator=g) < speck
    clusters[specks] = torch.randint(0, k, (int(specks.sum()),), generator=g)
    return clusters


def _map(name: str) -> torch.Tensor:
    z, y, x = _grid((3, 5, 7)) if name == "volume-checkerboard" else _grid((1, 16, 21))
    return {
        "random-2": lambda: _random((1, 23, 37), 2, 0),
        "random-5": lambda: _random((1, 29, 31), 5, 1),
        "checkerboard": lambda: (x + y) % 2,
        "stripes-1-wide": lambda: x % 2,
        "rows": lambda: (y % 2).transpose(1, 2).contiguous(),
        "stripes-3": lambda: (x + 2 * y) % 3,
        "blocks": lambda: _blocks((1, 40, 50), 4, 2),
        "one-row": lambda: _random((1, 1, 97), 3, 3),
        "one-column": lambda: _random((1, 97, 1), 3, 4),
        "one-pixel": lambda: torch.zeros(1, 1, 1, dtype=torch.int64),
        "volume": lambda: _random((4, 9, 11), 3, 5),
        "volume-checkerboard": lambda: (x + y + z) % 2,
        "volume-blocks": lambda: _blocks((3, 12, 17), 3, 6),
    }[name]()


MAPS = (
    "random-2",
    "random-5",
    "checkerboard",
    "stripes-1-wide",
    "rows",
    "stripes-3",
    "blocks",
    "one-row",
    "one-column",
    "one-pixel",
    "volume",
    "volume-checkerboard",
    "volume-blocks",
)


def _features(clusters: torch.Tensor, kind: str, seed: int = 7) -> torch.Tensor:
    """[2, D, H, W]: noise in 0..1; all equal (every merge distance ties: lower roots win);
    or near +-kMaxFeature, whose fixed-point sums pass 2^31 within two pixels."""
    if kind == "flat":
        return torch.full((2, *clusters.shape), 0.5)
    noise = torch.rand(2, *clusters.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(noise < 0.5, -32760.0, 32760.0) + noise if kind == "large" else noise


def _assert_reference(
    outputs: tuple[torch.Tensor, ...],
    clusters: torch.Tensor,
    features: torch.Tensor,
    min_size: int,
    max_size: int = 0,
    connectivity: bool = True,
) -> None:
    labels = outputs[0][0].view(clusters.shape)
    sets = (
        reference.connected_sets(clusters, features, min_size, max_size) if connectivity else None
    )
    assert torch.equal(labels, reference.segment_ids(clusters, sets))
    assert int(outputs[1][0]) == torch.unique(labels[labels >= 0]).numel()
    assert torch.equal(outputs[2][0], reference.centers(labels, features, outputs[2].shape[1]))


@pytest.mark.paths
@pytest.mark.parametrize("features", ["noise", "flat", "large"])
@pytest.mark.parametrize("min_size", [0, 3, 12])
@pytest.mark.parametrize("name", MAPS)
def test_given_cluster_maps_equal_the_reference(name, min_size, features):
    clusters = _map(name)
    f = _features(clusters, features)
    _assert_reference(_given(clusters, f, min_size), clusters, f, min_size)


@pytest.mark.paths
@pytest.mark.parametrize("name", ["random-2", "checkerboard", "blocks", "volume-blocks"])
def test_given_cluster_maps_with_max_size_equal_the_reference(name):
    clusters = _map(name)
    f = _features(clusters, "noise")
    _assert_reference(_given(clusters, f, 8, max_size=10), clusters, f, 8, max_size=10)


@pytest.mark.paths
@pytest.mark.parametrize("name", ["random-5", "stripes-1-wide", "one-column", "volume"])
def test_given_cluster_maps_without_connectivity_equal_the_reference(name):
    clusters = _map(name)
    f = _features(clusters, "noise")
    outputs = _given(clusters, f, 0, connectivity=False)
    _assert_reference(outputs, clusters, f, 0, connectivity=False)


@pytest.mark.paths
@pytest.mark.parametrize("connectivity", [True, False])
@pytest.mark.parametrize("min_size", [0, 5])
@pytest.mark.parametrize("name", ["random-2", "blocks", "stripes-1-wide", "volume-blocks"])
def test_given_masked_cluster_maps_equal_the_reference(name, min_size, connectivity):
    clusters = _map(name)
    g = torch.Generator().manual_seed(8)
    outside = torch.rand(clusters.shape, generator=g) < 0.3
    outside[..., : clusters.shape[-2] // 3, :] = True  # a band of rows outside too
    clusters = torch.where(outside, -1, clusters)
    f = _features(clusters, "noise")
    outputs = _given(clusters, f, min_size, connectivity=connectivity)
    assert bool((outputs[0][0].view(clusters.shape)[outside] == -1).all())
    _assert_reference(outputs, clusters, f, min_size, connectivity=connectivity)


def _large_case(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A map below PARALLEL_PIXELS (one band) with holes outside the mask, and the same map
    padded outside the mask to above it (rows below for an image, frames after for a
    volume: its pixels keep their raster order), with their features."""
    shape, padded = (
        ((1, 700, 1024), (1, 1025, 1024)) if kind == "image" else ((3, 300, 960), (4, 300, 960))
    )
    clusters = _blocks(shape, 4, 9, speck=0.02)
    g = torch.Generator().manual_seed(10)
    clusters[torch.rand(shape, generator=g) < 0.01] = -1
    clusters[:, 100:140, 200:700] = -1
    features = torch.rand(2, *shape, generator=g)
    big = torch.full(padded, -1, dtype=torch.int64)
    big[: shape[0], : shape[1]] = clusters
    big_features = torch.zeros(2, *padded)
    big_features[:, : shape[0], : shape[1]] = features
    assert clusters.numel() < PARALLEL_PIXELS <= big.numel()
    return clusters, features, big, big_features


@pytest.mark.paths
@pytest.mark.parametrize("kind", ["image", "volume"])
def test_bands_of_a_large_sample_equal_one_band_on_any_thread_count(kind):
    # A sample of PARALLEL_PIXELS or more runs its connectivity pass in bands of rows
    # (joined at their first rows, on several threads when there are); below it, in one.
    # Padding outside the mask changes no component, merge, id or centre, so the padded
    # map must give the bits of the map itself, on 1, 2 or 3 threads.
    clusters, features, big, big_features = _large_case(kind)
    one_band = _given(clusters, features, 30, max_centers=4096)
    runs = []
    for n in (1, 2, 3):
        with cpu_threads(n):
            runs.append(_given(big, big_features, 30, max_centers=4096))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
    labels = runs[0][0][0]
    P = clusters.numel()
    assert torch.equal(labels[:P], one_band[0][0])
    assert bool((labels[P:] == -1).all())
    assert torch.equal(runs[0][1], one_band[1])
    assert torch.equal(runs[0][2], one_band[2])
    assert int(one_band[1][0]) > 1000  # many segments, across the bands
