"""Plain-torch twin of the SLIC kernel's exact stages (csrc/slic/slic.h states the rules).

Tests compare the CPU kernel with these functions exactly (``torch.equal``), and the
CUDA-marked tests compare the CUDA kernel with the same functions, so both backends are
held to one written-down rule rather than to each other. It lives in the library, beside
the wrapper it mirrors (as gsplat's ``_torch_impl``), so that a GPU machine, a notebook or
a later kernel can use it without the test tree. Slow (Python loops over merge rounds,
label propagation): meant for small inputs.

Every stage here is exact where the kernels are exact: features in 2^-16 fixed point
(``to_fixed``), integer sums, means divided in float64 and rounded once to float32, and
merge distances in float32 with one rounding per multiply and per add (no fused
multiply-add), which the kernels use too.

maskSLIC: pixels outside the mask carry cluster label -1; every stage here ignores them
(no component, no set, no sums), as the kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIXED_SCALE = 65536.0  # kFixedScale
MAX_FEATURE = 32767.0  # kMaxFeature: features are clamped to +-this before anything else
MERGE_ROUNDS = 16  # kMergeRounds


def clamp_features(features: Tensor) -> Tensor:
    """float32 features clamped to ``[-MAX_FEATURE, MAX_FEATURE]`` (slic.h, clamp_feature)."""
    return features.float().clamp(-MAX_FEATURE, MAX_FEATURE)


def to_fixed(features: Tensor) -> Tensor:
    """float32 -> int64 in 2^-16 fixed point, rounded half away from zero (slic.h, to_fixed)."""
    s = features.float().double() * FIXED_SCALE
    return (s + torch.copysign(torch.full_like(s, 0.5), s)).trunc().long()


def fixed_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """float32 mean of fixed-point sums: one float64 quotient, rounded once (slic.h, fixed_mean)."""
    return (sums.double() / counts.double() / FIXED_SCALE).float()


# ------------------------------------------------------------------ CIELAB, bit for bit


def _f32(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _fast_cbrt(x: Tensor) -> Tensor:
    """slic.h fast_cbrt on float32, one rounding per operation (torch's float32 ops)."""
    third = _f32(1.0) / _f32(3.0)
    bits = x.view(torch.int32).long() & 0xFFFFFFFF  # float_bits, unsigned
    r = ((0x54A2FA8C - bits // 3) & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
    for _ in range(2):
        r3x = r * r * r * x
        r = r * (_f32(4.0) - r3x) * third
    y = x * r * r
    residual = y * y * y - x
    return y - residual * (r * r) * third


def _lab_f(t: Tensor) -> Tensor:
    linear = _f32(7.787) * t + _f32(16.0) / _f32(116.0)
    return torch.where(t > _f32(0.008856), _fast_cbrt(t), linear)


def linear_rgb_to_lab(rgb: Tensor) -> Tensor:
    """slic.h linear_rgb_to_lab, then clamp_feature: float32 linear RGB ``[3, ...]`` ->
    CIELAB ``[3, ...]``, every product and sum rounded on its own, as both backends must
    compute it (a host build that fuses a multiply-add gives other bits)."""
    r, g, b = rgb.float().unbind(0)

    def dot3(a: float, b_: float, c: float) -> Tensor:
        return (_f32(a) * r + _f32(b_) * g) + _f32(c) * b

    x = dot3(0.412453, 0.357580, 0.180423) * (_f32(1.0) / _f32(0.95047))
    y = dot3(0.212671, 0.715160, 0.072169)
    z = dot3(0.019334, 0.119193, 0.950227) * (_f32(1.0) / _f32(1.08883))
    fx, fy, fz = _lab_f(x), _lab_f(y), _lab_f(z)
    lab = torch.stack(
        [_f32(116.0) * fy - _f32(16.0), _f32(500.0) * (fx - fy), _f32(200.0) * (fy - fz)]
    )
    return clamp_features(lab)


# ------------------------------------------------------------------ assignment candidates


def window(centers: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """slic.h window_first and window_last of float32 centre coordinates ``[K]``: int64
    ``ceil(c - step)`` and ``floor(c + step)``, the sums rounded to float32."""
    c = centers.float()
    s = _f32(float(step))
    return torch.ceil(c - s).long(), torch.floor(c + s).long()


def cell_of(coordinates: Tensor, step: int, cells: int) -> Tensor:
    """slic.h cell_of: the cell of finite float32 centre coordinates, floor(c / step) in
    float32, clamped to ``[0, cells - 1]`` (the kernels also map NaN to 0; this does not)."""
    q = torch.floor(coordinates.float() / _f32(float(step)))
    return q.clamp(0, cells - 1).long()


def candidates(
    centers: Tensor, shape: tuple[int, int, int], steps: list[int], cells: list[int]
) -> Tensor:
    """bool ``[K, D, H, W]``: the clusters that may take each pixel (slic.h, Iterations):
    the pixel lies in the centre's window and the centre's cell is within one cell of the
    pixel's (cell_of_pixel: ``min(p // step, cells - 1)``) in every dimension."""
    allowed = torch.ones((centers.shape[0], *shape), dtype=torch.bool)
    for dim in range(3):
        p = torch.arange(shape[dim])
        first, last = window(centers[:, dim], steps[dim])
        in_window = (p >= first[:, None]) & (p <= last[:, None])
        pixel_cell = (p // steps[dim]).clamp(max=cells[dim] - 1)
        centre_cell = cell_of(centers[:, dim], steps[dim], cells[dim])
        near = (pixel_cell - centre_cell[:, None]).abs() <= 1
        view = [centers.shape[0], 1, 1, 1]
        view[1 + dim] = shape[dim]
        allowed &= (in_window & near).view(view)
    return allowed


def _shape3(t: Tensor) -> tuple[int, int, int]:
    """``(D, H, W)`` of a ``[D, H, W]`` tensor."""
    d, h, w = t.shape
    return d, h, w


def _coordinates(shape: tuple[int, int, int]) -> Tensor:
    d, h, w = shape
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([z.reshape(-1), y.reshape(-1), x.reshape(-1)], dim=1)  # [P, 3] int64


def segment_sums(labels: Tensor, features: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exact integer sums by label: counts [rows], coordinate sums [rows, 3] and fixed-point
    feature sums [rows, F] (int64). labels [D, H, W] (ids < rows; -1: outside the mask,
    ignored), features [F, D, H, W]."""
    shape = _shape3(labels)
    flat = labels.reshape(-1).long()
    fixed = to_fixed(clamp_features(features).reshape(features.shape[0], -1)).T  # [P, F]
    inside = flat >= 0
    coordinates = _coordinates(shape)[inside]
    flat, fixed = flat[inside], fixed[inside]
    counts = torch.zeros(rows, dtype=torch.int64).index_add_(0, flat, torch.ones_like(flat))
    coords = torch.zeros(rows, 3, dtype=torch.int64).index_add_(0, flat, coordinates)
    sums = torch.zeros(rows, fixed.shape[1], dtype=torch.int64).index_add_(0, flat, fixed)
    return counts, coords, sums


def centers(labels: Tensor, features: Tensor, rows: int) -> Tensor:
    """Centre rows (z, y, x, features) of labels 0..rows-1 as the kernel writes them: the
    exact means of the labelled pixels (coordinates as float64 quotients, features from
    fixed-point sums), rounded once to float32; empty rows are zero. float32 [rows, 3 + F]."""
    counts, coords, sums = segment_sums(labels, features, rows)
    out = torch.zeros(rows, 3 + sums.shape[1], dtype=torch.float32)
    live = counts > 0
    out[live, :3] = (coords[live].double() / counts[live, None].double()).float()
    out[live, 3:] = fixed_mean(sums[live], counts[live, None])
    return out


def gradient(features: Tensor) -> Tensor:
    """Squared feature gradient of every pixel [D, H, W] (slic.h, gradient_at): central
    differences clamped at the borders, summed over features in order, float32."""
    f = clamp_features(features)
    _, _, h, w = f.shape
    xs, ys = torch.arange(w), torch.arange(h)
    xl, xr = (xs - 1).clamp(min=0), (xs + 1).clamp(max=w - 1)
    yu, yd = (ys - 1).clamp(min=0), (ys + 1).clamp(max=h - 1)
    total = torch.zeros(f.shape[1:], dtype=torch.float32)
    for plane in f:
        dx = plane[:, :, xr] - plane[:, :, xl]
        dy = plane[:, yd, :] - plane[:, yu, :]
        total = total + (dx * dx + dy * dy)
    return total


def seeds(
    features: Tensor,
    steps: list[int],
    starts: list[int],
    cells: list[int],
    mask: Tensor | None = None,
) -> Tensor:
    """Cold-start centres [K, 3 + F] (slic.h, seed_center): grid point start + i * step,
    moved to the lowest gradient of its 3x3 neighbourhood (first in raster order; not along
    y or x where the step is below 3); with a ``mask [D, H, W]``, to in-mask pixels only
    (``live_seeds`` says which seeds live)."""
    f = clamp_features(features)
    grad = gradient(f)
    _, _, h, w = f.shape
    ry, rx = int(steps[1] >= 3), int(steps[2] >= 3)
    rows = []
    for iz in range(cells[0]):
        for iy in range(cells[1]):
            for ix in range(cells[2]):
                z = starts[0] + iz * steps[0]
                y0, x0 = starts[1] + iy * steps[1], starts[2] + ix * steps[2]
                y, x, best = y0, x0, grad[z, y0, x0]
                for dy in range(-ry, ry + 1):
                    for dx in range(-rx, rx + 1):
                        yy, xx = y0 + dy, x0 + dx
                        if not (0 <= yy < h and 0 <= xx < w):
                            continue
                        if mask is not None and not bool(mask[z, yy, xx]):
                            continue
                        if grad[z, yy, xx] < best:
                            y, x, best = yy, xx, grad[z, yy, xx]
                rows.append(
                    torch.cat([torch.tensor([z, y, x], dtype=torch.float32), f[:, z, y, x]])
                )
    return torch.stack(rows)


def live_seeds(mask: Tensor, steps: list[int], starts: list[int], cells: list[int]) -> Tensor:
    """bool [K]: the seeds whose grid point lies inside ``mask [D, H, W]`` (the others are
    dead from the start)."""
    points = mask[starts[0] :: steps[0], starts[1] :: steps[1], starts[2] :: steps[2]]
    return points[: cells[0], : cells[1], : cells[2]].reshape(-1).bool()


def assignment_distances(
    features: Tensor, centers: Tensor, steps: list[int], weights: list[float], compactness: float
) -> Tensor:
    """float64 distance [K, D, H, W] of every pixel to every centre (slic.h, Distance), inf
    outside the centre's window (|offset| <= step in every dimension). The kernels compute
    it in float32, so only gaps above float32 rounding are decided alike."""
    f = clamp_features(features).double()
    d, h, w = f.shape[1:]
    grid = torch.stack(
        torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    ).double()
    out = []
    for c in centers.double():
        offset = grid - c[:3, None, None, None]
        spatial = sum(weights[i] * offset[i] ** 2 for i in range(3))
        colour = ((f - c[3:, None, None, None]) ** 2).sum(0) / compactness**2
        inside = (
            offset.abs() <= torch.tensor(steps, dtype=torch.float64)[:, None, None, None]
        ).all(0)
        out.append(torch.where(inside, colour + spatial, torch.inf))
    return torch.stack(out)


def _neighbour_pairs(shape: tuple[int, int, int]) -> Tensor:
    """All 4-connected (6 in volumes) pixel pairs (p, q), q the earlier one in raster order."""
    d, h, w = shape
    index = torch.arange(d * h * w).reshape(d, h, w)
    pairs = [
        torch.stack([index[:, :, 1:].reshape(-1), index[:, :, :-1].reshape(-1)], 1),
        torch.stack([index[:, 1:, :].reshape(-1), index[:, :-1, :].reshape(-1)], 1),
        torch.stack([index[1:].reshape(-1), index[:-1].reshape(-1)], 1),
    ]
    return torch.cat(pairs)


def _components_of_graph(nodes: int, pairs: Tensor) -> Tensor:
    """Root (lowest node) of every node's connected component in the graph ``pairs``."""
    root = torch.arange(nodes)
    if pairs.numel() == 0:
        return root
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        low = torch.minimum(root[a], root[b])
        new = root.clone().scatter_reduce_(0, a, low, "amin").scatter_reduce_(0, b, low, "amin")
        new = new[new]  # pointer jumping: new[p] <= p lies in p's component
        if torch.equal(new, root):
            return root
        root = new


def components(cluster_labels: Tensor) -> Tensor:
    """Connected components of a cluster map [D, H, W]: each pixel's root (lowest pixel
    index of its component), int64 [P]."""
    shape = _shape3(cluster_labels)
    flat = cluster_labels.reshape(-1)
    pairs = _neighbour_pairs(shape)
    same = (flat[pairs[:, 0]] == flat[pairs[:, 1]]) & (flat[pairs[:, 0]] >= 0)
    return _components_of_graph(flat.numel(), pairs[same])


def merge_round(
    sets: Tensor,
    shape: tuple[int, int, int],
    fixed: Tensor,
    min_size: int,
    inside: Tensor | None = None,
    max_size: int = 0,
) -> tuple[Tensor, bool]:
    """One round of the small-segment merge (slic.h, Connectivity).

    sets: int64 [P], each pixel's set, named by its root (lowest pixel); fixed: int64
    [P, F] fixed-point features. From a snapshot of the round (sizes, mean features), every
    set smaller than ``min_size`` picks the adjacent set with the nearest mean feature
    (squared distance in float32, ties to the lower root); then all the picked pairs are
    united at once, each new set named by its lowest pixel. ``inside``: bool [P], the
    pixels inside the mask (default all); the others are no set and touch none.
    ``max_size`` > 0: only sets smaller than it may be picked (slic.h, takes_more). Returns
    the new sets and whether anything merged."""
    P = sets.numel()
    size = torch.zeros(P, dtype=torch.int64).index_add_(0, sets, torch.ones_like(sets))
    sums = torch.zeros(P, fixed.shape[1], dtype=torch.int64).index_add_(0, sets, fixed)
    mean = fixed_mean(sums, size.clamp(min=1)[:, None])
    pairs = _neighbour_pairs(shape)
    if inside is not None:
        pairs = pairs[inside[pairs[:, 0]] & inside[pairs[:, 1]]]
    a, b = sets[pairs[:, 0]], sets[pairs[:, 1]]
    differ = a != b
    a, b = torch.cat([a[differ], b[differ]]), torch.cat([b[differ], a[differ]])
    small = size[a] < min_size
    if max_size > 0:
        small &= size[b] < max_size
    a, b = a[small], b[small]
    if a.numel() == 0:
        return sets, False
    t = mean[a] - mean[b]
    distance = torch.zeros(a.numel(), dtype=torch.float32)
    for f in range(t.shape[1]):  # one rounding per product and per sum, in feature order
        distance = distance + t[:, f] * t[:, f]
    key = (distance.view(torch.int32).long() << 32) | b
    best = torch.full((P,), torch.iinfo(torch.int64).max, dtype=torch.int64).scatter_reduce_(
        0, a, key, "amin"
    )
    chooser = torch.unique(a)
    chosen = best[chooser] & 0xFFFFFFFF
    root = _components_of_graph(P, torch.stack([chooser, chosen], 1))
    return root[sets], True


def merge_small(
    sets: Tensor,
    shape: tuple[int, int, int],
    features: Tensor,
    min_size: int,
    inside: Tensor | None = None,
    max_size: int = 0,
) -> Tensor:
    """Merge rounds until no set is smaller than ``min_size``, nothing merges, or
    ``MERGE_ROUNDS`` rounds ran. features: [F, D, H, W]. Returns the final sets [P]."""
    if min_size <= 1:
        return sets
    fixed = to_fixed(clamp_features(features).reshape(features.shape[0], -1)).T
    for _ in range(MERGE_ROUNDS):
        sets, merged = merge_round(sets, shape, fixed, min_size, inside, max_size)
        if not merged:
            break
    return sets


def connected_sets(
    cluster_labels: Tensor, features: Tensor, min_size: int, max_size: int = 0
) -> Tensor:
    """The partition the connectivity pass makes of a cluster map [D, H, W]: each pixel's
    final set, named by its lowest pixel, int64 [D, H, W] (a pixel outside the mask, label
    -1, is its own set). features: [F, D, H, W]."""
    shape = _shape3(cluster_labels)
    inside = cluster_labels.reshape(-1) >= 0
    sets = merge_small(components(cluster_labels), shape, features, min_size, inside, max_size)
    return sets.reshape(shape)


def _stable_ids(has_main: list[bool], count: int) -> list[int]:
    """Ids of the main segments by cluster (-1: none): cluster k keeps id k when k < count;
    the mains of clusters k >= count take the free ids below count after the extras'."""
    free = [i for i in range(count) if i >= len(has_main) or not has_main[i]]
    nxt = count - sum(has_main)
    ids = []
    for k, main in enumerate(has_main):
        if main and k >= count:
            ids.append(free[nxt])
            nxt += 1
        else:
            ids.append(k if main else -1)
    return ids


def segment_ids(cluster_labels: Tensor, sets: Tensor | None) -> Tensor:
    """Final ids (slic.h, Ids) of the partition ``sets`` (from ``connected_sets``) of a
    cluster map [D, H, W] with K clusters; ``sets=None``: without connectivity (every
    non-empty cluster is a segment). Pixels outside the mask (cluster -1) stay -1.
    int32 [D, H, W]."""
    shape = tuple(cluster_labels.shape)
    cluster = cluster_labels.reshape(-1).long()
    inside = cluster >= 0
    if sets is None:
        used = torch.zeros(int(cluster.max()) + 1, dtype=torch.bool)
        used[cluster[inside]] = True
        id_of = torch.tensor([*_stable_ids(used.tolist(), int(used.sum())), -1])
        return id_of[cluster].to(torch.int32).reshape(shape)  # cluster -1: the -1 appended
    comps = components(cluster_labels)
    sets = sets.reshape(-1)
    P = cluster.numel()
    size = torch.bincount(comps, minlength=P)
    roots = torch.unique(comps[inside]).tolist()  # ascending: component order is root-pixel order
    key = {r: (int(size[r]), -r) for r in roots}  # largest, ties to the lower root
    main_of: dict[int, tuple[int, int]] = {}
    largest: dict[int, int] = {}  # set -> its largest component
    for r in roots:
        k, s = int(cluster[r]), int(sets[r])
        if k not in main_of or key[r] > main_of[k]:
            main_of[k] = key[r]
        if s not in largest or key[r] > key[largest[s]]:
            largest[s] = r
    set_roots = sorted(largest)  # raster order of the set's root
    K = int(cluster.max()) + 1
    has_main = [False] * K
    is_main = {}
    for s in set_roots:
        r = largest[s]
        is_main[s] = main_of[int(cluster[r])] == key[r]
        if is_main[s]:
            has_main[int(cluster[r])] = True
    count = len(set_roots)
    ids = _stable_ids(has_main, count)
    free = [i for i in range(count) if i >= K or not has_main[i]]
    final = torch.full((P,), -1, dtype=torch.int64)
    extra = 0
    for s in set_roots:
        if is_main[s]:
            final[s] = ids[int(cluster[largest[s]])]
        else:
            final[s] = free[extra]
            extra += 1
    return torch.where(inside, final[sets], -1).to(torch.int32).reshape(shape)


def same_partition(a: Tensor, b: Tensor) -> bool:
    """Whether two label maps split the pixels the same way (ids may differ)."""
    a, b = a.reshape(-1).long(), b.reshape(-1).long()
    pairs = torch.unique(torch.stack([a, b]), dim=1).shape[1]
    return bool(pairs == torch.unique(a).numel() == torch.unique(b).numel())  # unique: Any
