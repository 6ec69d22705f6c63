"""gsw.lime against the real lime package and scikit-learn's Ridge."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torchvision
from helpers import TinyCNN, cpu_and_cuda, untied

import gswfast as gsw
from gswfast.lime import lime_kernel, weighted_ridge
from gswfast.testing import grid_labels, lime_masks, lime_package, photos


def _resnet(device="cpu"):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).to(device).eval()


@pytest.mark.parametrize(("hide", "hide_color"), [("segment_mean", None), ("zeros", 0.0)])
@pytest.mark.paths
def test_matches_the_lime_package_given_its_masks(hide, hide_color):
    pytest.importorskip("lime")
    model, x = _resnet(), photos(64, 2)
    seg = gsw.slic(x, n_segments=25)
    for b in range(2):
        k = int(seg.num_segments[b])
        masks = lime_masks(seed=b, n_samples=300, segments=k)
        ours = gsw.lime(
            model, x[b : b + 1], seg.labels[b : b + 1], 3, n_samples=300, masks=masks, hide=hide
        )
        theirs = lime_package(
            model, x[b], seg.labels[b], 3, seed=b, n_samples=300, hide_color=hide_color
        )
        scale = float(theirs["weights"].abs().max())
        torch.testing.assert_close(
            ours.segment_scores[0, :k].double(), theirs["weights"], rtol=1e-4, atol=1e-4 * scale
        )
        torch.testing.assert_close(
            ours.info["intercept"][0], theirs["intercept"], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(ours.info["score"][0], theirs["score"], rtol=1e-4, atol=1e-5)


def test_weighted_ridge_equals_scikit_learn():
    from sklearn.linear_model import Ridge

    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, 2, (3, 200, 12), generator=generator).double()
    y = torch.randn(3, 200, generator=generator, dtype=torch.float64)
    w = torch.rand(3, 200, generator=generator, dtype=torch.float64)
    coef, intercept, score = weighted_ridge(X, y, w, alpha=1.0)
    for b in range(3):
        ref = Ridge(alpha=1.0).fit(X[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy())
        np.testing.assert_allclose(coef[b].numpy(), ref.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(intercept[b]), ref.intercept_, rtol=1e-9)
        np.testing.assert_allclose(
            float(score[b]),
            ref.score(X[b].numpy(), y[b].numpy(), sample_weight=w[b].numpy()),
            rtol=1e-9,
        )


def test_kernel_equals_lime_cosine_kernel():
    from sklearn.metrics import pairwise_distances

    masks = torch.tensor([[[1, 1, 1, 1, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]])
    ours = lime_kernel(masks, torch.tensor([4]), 0.25)
    data = masks[0, :, :4].numpy()
    distances = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    np.testing.assert_allclose(
        ours[0].numpy(), np.sqrt(np.exp(-(distances**2) / 0.25**2)), rtol=1e-12
    )


def test_sampling_is_seeded_and_keeps_the_first_row():
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, _k = grid_labels(2, 32, 32, cell=8)
    a = gsw.lime(model, x, labels, 1, n_samples=50, seed=4)
    b = gsw.lime(model, x, labels, 1, n_samples=50, seed=4, batch_size=7)
    c = gsw.lime(model, x, labels, 1, n_samples=50, seed=5)
    assert torch.equal(a.info["masks"], b.info["masks"])
    assert not torch.equal(a.info["masks"], c.info["masks"])
    torch.testing.assert_close(a.segment_scores, b.segment_scores)
    assert torch.all(a.info["masks"][:, 0] == 1)
    with torch.no_grad():
        torch.testing.assert_close(a.info["outputs"][:, 0], model(x)[:, 1], rtol=1e-5, atol=1e-6)


def test_padding_segments_get_no_weight():
    # Sample 1 has fewer segments: its extra mask columns must not enter its regression.
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, _ = grid_labels(2, 32, 32, cell=8)
    labels[1] = labels[1] % 5
    expl = gsw.lime(model, x, labels, 1, n_samples=40)
    assert int(expl.num_segments[1]) == 5
    assert torch.all(expl.segment_scores[1, 5:] == 0)
    assert torch.all(expl.info["masks"][1, :, 5:] == 0)
    alone = gsw.lime(model, x[1:], labels[1:], 1, n_samples=40, masks=expl.info["masks"][1:, :, :5])
    torch.testing.assert_close(
        alone.segment_scores[0], expl.segment_scores[1, :5], rtol=1e-5, atol=1e-7
    )


def test_clips_and_progress():
    model, clip = TinyCNN(dims=3, classes=3), torch.rand(1, 3, 4, 16, 16)
    seen = []
    expl = gsw.lime(
        model,
        clip,
        None,
        2,
        n_samples=20,
        batch_size=6,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert expl.labels.shape == (1, 4, 16, 16)
    assert expl.pixel_scores.shape == (1, 4, 16, 16)
    assert seen[-1] == (20, 20)
    assert len(seen) == 4
    assert expl.method == "lime"
    assert expl.target.tolist() == [2]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_lime_recovers_a_linear_model(device):
    # A model linear in the segments: LIME's weights are the segments' contributions.
    labels, k = grid_labels(1, 16, 16, cell=8, device=device)
    weight = torch.tensor([2.0, -1.0, 0.5, 3.0], device=device)

    class Linear(torch.nn.Module):
        def forward(self, x):
            per_segment = torch.stack(
                [(x[:, 0] * (labels[0] == s)).sum((1, 2)) for s in range(k)], 1
            )
            return torch.stack(
                [(per_segment * weight).sum(1), torch.zeros_like(per_segment[:, 0])], 1
            )

    x = torch.ones(1, 3, 16, 16, device=device)
    expl = gsw.lime(Linear(), x, labels, 0, n_samples=500, hide="zeros", alpha=0.0)
    pixels = torch.bincount(labels[0].flatten().long(), minlength=k).to(weight)
    torch.testing.assert_close(expl.segment_scores[0], weight * pixels, rtol=1e-4, atol=1e-3)
    assert float(expl.info["score"][0]) > 0.9999


@pytest.mark.cuda
def test_cpu_and_cuda_agree():
    # float64: in float32 the GPU's convolutions use TF32 (10-bit mantissas) by default, and
    # the first H200 run was 15% off on small weights at rtol 1e-3. The ridge fit is the
    # same arithmetic on both backends; in float64 they agree to the float32 rounding of
    # the model's outputs (LIME keeps them in float32).
    model, x = _resnet().double(), untied(photos(64, 2))
    seg = gsw.slic(x, n_segments=25)
    cpu = gsw.lime(model, x, seg, 3, n_samples=200)
    cuda = gsw.lime(
        model.cuda(), x.cuda(), seg.to("cuda"), 3, n_samples=200, masks=cpu.info["masks"].cuda()
    )
    scale = float(cpu.segment_scores.abs().max())
    torch.testing.assert_close(
        cuda.segment_scores.cpu(), cpu.segment_scores, rtol=1e-5, atol=1e-5 * scale
    )


def test_bad_input():
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, k = grid_labels(2, 32, 32, cell=8)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 2"):
        gsw.lime(model, x, labels, 1, n_samples=1)
    with pytest.raises(ValueError, match="batch_size"):
        gsw.lime(model, x, labels, 1, n_samples=4, batch_size=0)
    with pytest.raises(ValueError, match=r"segmentation: expected labels of shape \(2, 32, 32\)"):
        gsw.lime(model, x, labels[:, :16], 1, n_samples=4)
    with pytest.raises(ValueError, match=r"masks: 3 rows \(samples\), but n_samples is 4"):
        gsw.lime(model, x, labels, 1, n_samples=4, masks=torch.ones(3, k))
    with pytest.raises(ValueError, match="masks: expected a tensor of 0/1"):
        gsw.lime(model, x, labels, 1, n_samples=4, masks=torch.full((4, k), 0.5))
    with pytest.raises(ValueError, match="masks: expected a tensor of 0/1"):
        gsw.lime(model, x, labels, 1, n_samples=4, masks=torch.full((4, k), 2))
    with pytest.raises(ValueError, match="hide: expected one of"):
        gsw.lime(model, x, labels, 1, n_samples=4, hide="noise")
    with pytest.raises(ValueError, match="kernel_width"):
        gsw.lime(model, x, labels, 1, n_samples=4, kernel_width=0)
    with pytest.raises(ValueError, match="target: class 3 is out of range"):
        gsw.lime(model, x, labels, 3, n_samples=4)
    with pytest.raises(ValueError, match="inputs: contains NaN"):
        gsw.lime(model, x * float("nan"), labels, 1, n_samples=4)


# ------------------------------------------------------------------ designs and n_samples="auto"


def test_the_default_design_draws_the_masks_it_always_drew():
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, k = grid_labels(2, 32, 32, cell=8)
    expl = gsw.lime(model, x, labels, 1, n_samples=40, seed=7)
    for b in range(2):
        generator = torch.Generator().manual_seed((7 * 1_000_003 + b) % 2**63)
        want = torch.randint(0, 2, (40, k), generator=generator, dtype=torch.uint8)
        want[0] = 1
        assert torch.equal(expl.info["masks"][b], want)
    same = gsw.lime(model, x, labels, 1, n_samples=40, seed=7, design="random")
    assert torch.equal(same.segment_scores, expl.segment_scores)


def test_designs():
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, k = grid_labels(2, 32, 32, cell=8)
    masks = {
        design: gsw.lime(model, x, labels, 1, n_samples=65, design=design).info["masks"]
        for design in ("balanced", "antithetic", "sobol")
    }
    for design, keep in masks.items():
        assert torch.all(keep[:, 0] == 1), design
        assert not torch.equal(keep[0], keep[1]), design  # each input draws its own
    assert torch.all(masks["balanced"][:, 1:].sum(1) == 32)  # each column kept in half the rows
    assert torch.all(masks["sobol"][:, 1:].sum(1) == 32)  # 64 Sobol points: balanced too
    pairs = masks["antithetic"][:, 1:].view(2, 32, 2, k)
    assert torch.all(pairs[:, :, 0] + pairs[:, :, 1] == 1)  # each mask, then its complement
    again = gsw.lime(model, x, labels, 1, n_samples=65, design="sobol", batch_size=9)
    assert torch.equal(again.info["masks"], masks["sobol"])


def test_auto_stops_when_the_ranking_is_stable(monkeypatch):
    model, x = TinyCNN(classes=3).double(), photos(32, 2).double()
    labels, _ = grid_labels(2, 32, 32, cell=8)
    seen = []
    expl = gsw.lime(
        model, x, labels, 1, n_samples="auto", tol=0.05, progress=lambda d, t: seen.append((d, t))
    )
    used = expl.info["n_samples"]
    assert torch.all((used >= 100) & (used <= 1000) & (used % 50 == 0)), used
    assert expl.info["masks"].shape[1] == int(used.max())
    assert seen[-1][0] == int(used.sum())
    assert seen[-1][1] == 2000
    for b in range(2):  # the same as a fixed-size run on the masks it used
        n = int(used[b])
        fixed = gsw.lime(
            model, x[b : b + 1], labels[b : b + 1], 1, n_samples=n, masks=expl.info["masks"][b, :n]
        )
        torch.testing.assert_close(
            fixed.segment_scores[0], expl.segment_scores[b], rtol=1e-5, atol=1e-9
        )
    strict = gsw.lime(model, x, labels, 1, n_samples="auto", tol=1e-9)
    assert torch.all(strict.info["n_samples"] >= used)  # the same estimates, a stricter test
    monkeypatch.setattr(importlib.import_module("gswfast.lime"), "AUTO_MAX", 120)
    capped = gsw.lime(model, x, labels, 1, n_samples="auto", tol=1e-9)
    assert capped.info["n_samples"].tolist() == [120, 120]


def test_bad_design_and_auto_options():
    model, x = TinyCNN(classes=3), photos(32, 2)
    labels, k = grid_labels(2, 32, 32, cell=8)
    with pytest.raises(ValueError, match="design: expected one of"):
        gsw.lime(model, x, labels, 1, n_samples=4, design="halton")
    with pytest.raises(ValueError, match=r"tol: expected a number in \(0, 1\)"):
        gsw.lime(model, x, labels, 1, n_samples="auto", tol=0)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 2 or 'auto'"):
        gsw.lime(model, x, labels, 1, n_samples="many")
    with pytest.raises(ValueError, match="n_samples: give the number of masks"):
        gsw.lime(model, x, labels, 1, n_samples="auto", masks=torch.ones(4, k))
