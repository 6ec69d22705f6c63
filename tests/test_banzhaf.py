"""method="banzhaf": gradients of the segment game at random mixes of image and hidden image."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyCNN, photos, untied

import gswfast as gsw
from gswfast.attribution import make_baseline
from gswfast.attribution.banzhaf import Banzhaf


def _game(model, x, hidden, labels, target):
    """f(z) for one sample: the target logit of hidden + z[label] * (x - hidden)."""

    def f(z: torch.Tensor) -> torch.Tensor:
        weight = z[labels.long()].unsqueeze(0)
        return model((hidden + weight * (x - hidden)).unsqueeze(0))[0, target]

    return f


@pytest.mark.parametrize("design", ["centre", "latin", "swap", "binary"])
@pytest.mark.paths
def test_scores_are_mean_gradients_of_the_segment_game(design):
    model, x = TinyCNN().double(), untied(photos(32, 2))
    seg = gsw.slic(x, n_segments=10)
    expl = gsw.explain(
        model, x, [1, 3], method="banzhaf", segmentation=seg, design=design, n_samples=4, seed=5
    )
    hidden = make_baseline("segment_mean", x, seg.labels, seg.num_segments)
    k = int(seg.num_segments.max())
    mixes = Banzhaf(hidden, seg.labels, 4, design, seed=5).mixes(2, k)
    for b, target in enumerate([1, 3]):
        f = _game(model, x[b], hidden[b], seg.labels[b], target)
        grads = [torch.autograd.functional.jacobian(f, z[b]) for z in mixes]
        expected = torch.stack(grads).mean(0)[: int(seg.num_segments[b])]
        got = expl.segment_scores[b, : int(seg.num_segments[b])].double()
        torch.testing.assert_close(got, expected.float().double(), rtol=1e-4, atol=1e-6)


@pytest.mark.paths
def test_arcsine_weights_each_gradient_by_one_over_the_density():
    """design="arcsine": mean over the mixes z of df/dz_k * pi sqrt(z_k (1 - z_k)), float64."""
    model, x = TinyCNN().double(), untied(photos(32, 2))
    seg = gsw.slic(x, n_segments=10)
    expl = gsw.explain(
        model, x, [1, 3], method="banzhaf", segmentation=seg, design="arcsine", n_samples=6
    )
    hidden = make_baseline("segment_mean", x, seg.labels, seg.num_segments)
    k = int(seg.num_segments.max())
    mixes = Banzhaf(hidden, seg.labels, 6, "arcsine").mixes(2, k)
    for b, target in enumerate([1, 3]):
        f = _game(model, x[b], hidden[b], seg.labels[b], target)
        terms = [
            torch.autograd.functional.jacobian(f, z[b]) * torch.pi * (z[b] * (1 - z[b])).sqrt()
            for z in mixes
        ]
        expected = torch.stack(terms).mean(0)[: int(seg.num_segments[b])]
        got = expl.segment_scores[b, : int(seg.num_segments[b])].double()
        torch.testing.assert_close(got, expected.float().double(), rtol=1e-4, atol=1e-6)


def test_arcsine_mixes_are_midpoints_of_beta_half_quantiles():
    mixes = Banzhaf(torch.zeros(1), torch.zeros(1), n_samples=8, design="arcsine").mixes(3, 6)
    torch.testing.assert_close(mixes[:4] + mixes[4:], torch.ones(4, 3, 6, dtype=torch.float64))
    quantiles = torch.asin(mixes[:4].sqrt()) * 2 / torch.pi  # Beta(1/2, 1/2)'s CDF
    strata = torch.sort(quantiles * 4 - 0.5, dim=0).values
    expected = torch.arange(4.0, dtype=torch.float64).view(4, 1, 1).expand(4, 3, 6)
    torch.testing.assert_close(strata, expected)


def test_linear_model_gives_exact_segment_differences():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 4)).double()
    x = untied(photos(24, 1))
    seg = gsw.slic(x, n_segments=8)
    expl = gsw.explain(model, x, 2, method="banzhaf", segmentation=seg, n_samples=2)
    hidden = make_baseline("segment_mean", x, seg.labels, seg.num_segments)
    for k in range(int(seg.num_segments[0])):
        shown = torch.where(seg.labels[0] == k, x[0], hidden[0])
        difference = model(shown[None])[0, 2] - model(hidden)[0, 2]
        torch.testing.assert_close(
            expl.segment_scores[0, k].double(), difference, rtol=1e-4, atol=1e-6
        )


def test_mixes_are_antithetic_and_stratified():
    scorer = Banzhaf(torch.zeros(1), torch.zeros(1), n_samples=8, design="latin", seed=1)
    mixes = scorer.mixes(3, 6)  # [8, 3, 6]
    torch.testing.assert_close(mixes[:4] + mixes[4:], torch.ones(4, 3, 6, dtype=torch.float64))
    strata = torch.sort((mixes[:4] * 4).floor(), dim=0).values
    assert torch.equal(strata, torch.arange(4.0, dtype=torch.float64).view(4, 1, 1).expand(4, 3, 6))
    assert torch.equal(mixes, scorer.mixes(3, 6))


def test_bad_options_name_the_argument():
    model, x = TinyCNN(), photos(32, 1)
    with pytest.raises(ValueError, match="design: expected one of"):
        gsw.explain(model, x, method="banzhaf", design="sobol")
    with pytest.raises(ValueError, match="n_samples: design 'latin' draws pairs"):
        gsw.explain(model, x, method="banzhaf", n_samples=3)
    with pytest.raises(ValueError, match="base: expected one of"):
        gsw.explain(model, x, method="smoothgrad", base="banzhaf")
    with pytest.raises(ValueError, match="swag"):
        gsw.explain(model, x, method="banzhaf", swag=True)
