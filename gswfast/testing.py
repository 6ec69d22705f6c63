"""Helpers for tests and benchmarks: SLIC-like label maps, plain-torch references, the
``lime`` package as a reference, and synthetic data. Not part of the library's API; the
segmentation quality metrics users want are in ``gswfast.metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np


# The pytorch-grad-cam class that each CAM method of gswfast is compared with (tests) and
# timed against (benchmarks).
PYTORCH_GRAD_CAM_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam_plus_plus": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}


def grid_labels(
    batch: int,
    *spatial: int,
    cell: int = 14,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.int32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """SLIC-like labels ``[B, H, W]`` or ``[B, T, H, W]`` and their count ``K``.

    Square cells of ``cell`` pixels with jittered borders, ids ``0..K-1`` in every sample.
    Like superpixels, each label covers a compact region and comes in runs along rows.
    For clips the cells extend over 4 frames (supervoxels). 224 x 224 with ``cell=14``
    gives 256 segments.
    """
    if len(spatial) not in (2, 3):
        raise ValueError(f"spatial: expected (H, W) or (T, H, W), got {spatial}")
    h, w = spatial[-2:]
    rows, cols = -(-h // cell), -(-w // cell)
    y = torch.arange(h).view(h, 1)
    x = torch.arange(w).view(1, w)
    jitter = max(cell // 3, 1)
    maps = []
    for _ in range(batch):
        jy = torch.randint(0, jitter, (1, w), generator=generator)
        jx = torch.randint(0, jitter, (h, 1), generator=generator)
        lab = ((y + jy) // cell).clamp(max=rows - 1) * cols + ((x + jx) // cell).clamp(max=cols - 1)
        if len(spatial) == 3:
            t = spatial[0]
            lab = (torch.arange(t).view(t, 1, 1) // 4) * rows * cols + lab.unsqueeze(0)
        maps.append(lab)
    k = rows * cols * (-(-spatial[0] // 4) if len(spatial) == 3 else 1)
    return torch.stack(maps).to(device=device, dtype=dtype), k


def reference_pool(values: Tensor, labels: Tensor, num_segments: int, reduce: str) -> Tensor:
    """Segment pooling with plain torch (scatter_reduce in float64, on the CPU).

    values ``[B, C, N]``, labels ``[B, N]`` (``-1`` ignored) -> ``[B, C, K]`` float64
    (int64 for ``count``); empty segments give 0.
    """
    b, c, n = values.shape
    k = num_segments
    v = values.double().cpu()
    lab = labels.long().cpu()
    index = torch.where(lab >= 0, lab, k).unsqueeze(1).expand(b, c, n)  # column k: ignored
    count = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_add_(2, index, torch.ones_like(v))
    if reduce == "count":
        return count[..., :k].long()
    if reduce in ("sum", "mean"):
        out = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_add_(2, index, v)
        if reduce == "mean":
            out = out / count.clamp(min=1)
    else:
        mode = "amax" if reduce == "max" else "amin"
        out = torch.zeros(b, c, k + 1, dtype=torch.float64).scatter_reduce(
            2, index, v, mode, include_self=False
        )
    out = torch.where(count > 0, out, torch.zeros_like(out))
    return out[..., :k]


# ------------------------------------------------------------------ segmentation quality


def synthetic_regions(
    height: int = 240,
    width: int = 320,
    regions: int = 24,
    noise: float = 0.04,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """An image of piecewise-constant colour regions plus Gaussian noise, and its truth.

    Regions are the Voronoi cells of random points under a randomly stretched metric, so
    borders run at all angles. Returns ``image`` float32 ``[3, H, W]`` in 0..1 and
    ``truth`` int64 ``[H, W]`` (region ids ``0..regions-1``).
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(regions, 2, generator=g) * torch.tensor([height, width])
    stretch = 0.5 + torch.rand(regions, 2, generator=g)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack([yy, xx], dim=-1).float()  # [H, W, 2]
    distance = (((grid[:, :, None, :] - points) * stretch) ** 2).sum(-1)  # [H, W, R]
    truth = distance.argmin(-1)
    colours = torch.rand(regions, 3, generator=g)
    image = colours[truth].permute(2, 0, 1) + noise * torch.randn(3, height, width, generator=g)
    return image.clamp(0, 1), truth


def is_connected(labels: Tensor) -> bool:
    """True when every label of ``[H, W]`` or ``[T, H, W]`` forms one 4- (6-) connected
    region; checked with scikit-image's independent labelling."""
    from skimage.measure import label as connected

    array = labels.cpu().numpy()
    components = connected(array + 1, background=0, connectivity=1)  # type: ignore[no-untyped-call]  # scikit-image's function is unannotated
    return int(components.max()) == len(set(array.reshape(-1).tolist()))


def lime_package(
    model: torch.nn.Module,
    image: Tensor,
    labels: Tensor,
    target: int,
    seed: int = 0,
    n_samples: int = 1000,
    batch_size: int = 64,
    hide_color: float | None = None,
) -> dict[str, Tensor]:
    """The real ``lime`` package on one float image ``[3, H, W]`` (0..1) and its segments
    ``labels [H, W]``, with LIME's defaults (hidden segments take their mean colour unless
    ``hide_color``, cosine kernel of width 0.25, ridge regression) on the model's raw
    outputs; the model runs on the device of its parameters. Returns ``weights [K]``,
    ``intercept`` and ``score`` (R^2), float64; its masks are
    ``lime_masks(seed, n_samples, K)``."""
    from lime import lime_image  # heavy and optional: imported here

    device = next(model.parameters(), torch.empty(0)).device  # a GPU model runs on the GPU

    def classify(batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(device)
        with torch.no_grad():
            outputs = torch.cat([model(chunk) for chunk in torch.split(x, batch_size)])
        return outputs.cpu().numpy()

    segments = labels.cpu().numpy()
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    result = explainer.explain_instance(
        image.permute(1, 2, 0).double().cpu().numpy(),
        classify,
        labels=(target,),
        top_labels=None,
        hide_color=hide_color,
        num_samples=n_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _: segments,
        random_seed=seed,
    )
    weights = torch.zeros(int(segments.max()) + 1, dtype=torch.float64)
    for segment, weight in result.local_exp[target]:
        weights[segment] = weight
    return {
        "weights": weights,
        "intercept": torch.tensor(float(result.intercept[target]), dtype=torch.float64),
        "score": torch.tensor(float(result.score), dtype=torch.float64),
    }  # one value: the last label's


def lime_masks(seed: int, n_samples: int, segments: int) -> Tensor:
    """The masks ``[n_samples, segments]`` the ``lime`` package draws with ``random_state=seed``
    (numpy's legacy generator; the first row keeps every segment)."""
    import numpy as np

    data = (
        np.random.RandomState(seed)
        .randint(0, 2, n_samples * segments)
        .reshape((n_samples, segments))
    )
    data[0, :] = 1
    return torch.from_numpy(data)


def lime_weights(
    model: torch.nn.Module,
    image: Tensor,
    labels: Tensor,
    target: int,
    seed: int = 0,
    n_samples: int = 1000,
    batch_size: int = 64,
) -> Tensor:
    """Segment weights ``[K]`` of the real ``lime`` package (see ``lime_package``)."""
    return lime_package(model, image, labels, target, seed, n_samples, batch_size)["weights"]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties get their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.detach().cpu().numpy(), b.detach().cpu().numpy()).statistic)


def photos(size: int = 64, count: int = 4) -> Tensor:
    """scikit-image's sample photos (astronaut, chelsea, coffee, rocket, repeated to
    ``count``) resized to ``size x size``: float ``[count, 3, size, size]`` in 0..1."""
    import skimage.data as data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]  # type: ignore[no-untyped-call]  # scikit-image's functions are unannotated
    resized = [
        torch.nn.functional.interpolate(
            torch.from_numpy(i).permute(2, 0, 1)[None].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
        )[0]
        for i in images
    ]
    batch = (torch.stack(resized) / 255).clamp(0, 1)
    return batch.repeat((count + 3) // 4, 1, 1, 1)[:count].contiguous()


def square_images(
    count: int, size: int = 48, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic evidence with a known place: a red (class 0) or blue (class 1) square on a
    smooth grey texture. Returns images float ``[count, 3, size, size]`` in 0..1, classes
    int64 ``[count]`` and the squares' masks bool ``[count, size, size]``."""
    coarse = torch.rand((count, 1, size // 8, size // 8), generator=generator)
    grey = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    images = (0.3 + 0.4 * grey).expand(-1, 3, -1, -1).clone()
    classes = torch.randint(0, 2, (count,), generator=generator)
    sides = torch.randint(size // 5, size // 3 + 1, (count,), generator=generator)
    masks = torch.zeros((count, size, size), dtype=torch.bool)
    for i in range(count):
        side = int(sides[i])
        top, left = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
        masks[i, top : top + side, left : left + side] = True
    colours = torch.tensor([[0.85, 0.1, 0.1], [0.1, 0.1, 0.85]])[classes]  # [count, 3]
    images = torch.where(masks.unsqueeze(1), colours.view(count, 3, 1, 1), images)
    return images, classes, masks


def train_square_classifier(steps: int = 150, size: int = 48, seed: int = 0) -> torch.nn.Module:
    """A small CNN trained on ``square_images`` to tell red squares from blue ones (a few
    seconds on a CPU). Its decisions rest on the square: explanations should point there."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 2),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        images, classes, _ = square_images(64, size, generator)
        loss = torch.nn.functional.cross_entropy(model(images), classes)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        optimiser.step()
    return model.eval()
