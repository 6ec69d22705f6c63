"""gsw.metrics on hand-made cases whose answers are known, and against SciPy."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_and_cuda
from scipy.stats import kendalltau, spearmanr

import gswfast as gsw
from gswfast.explain import Explanation


def _explanation(scores, labels, target=0) -> Explanation:
    scores = torch.as_tensor(scores, dtype=torch.float32, device=labels.device)
    num = torch.full((labels.shape[0],), scores.shape[1], dtype=torch.int64, device=labels.device)
    return Explanation(
        scores, labels, num, gsw.paint(scores, labels), torch.full_like(num, target), "test", "mean"
    )


def _quadrants(device="cpu", batch=1, size=4):
    half = size // 2
    q = torch.zeros(size, size, dtype=torch.int32, device=device)
    q[:half, half:], q[half:, :half], q[half:, half:] = 1, 2, 3
    return q.expand(batch, size, size).contiguous()


class _SumModel(torch.nn.Module):
    """Class 0's logit is the sum of channel 0; class 1's is 0."""

    def forward(self, x):
        total = x[:, 0].flatten(1).sum(1)
        return torch.stack([total, torch.zeros_like(total)], 1)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_agreement_equals_scipy(device):
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (3, 30), generator=generator).float()  # ties on purpose
    b = a + torch.randn(3, 30, generator=generator)
    out = gsw.metrics.agreement(a.to(device), b.to(device), k=5)
    for i in range(3):
        assert float(out["spearman"][i]) == pytest.approx(
            spearmanr(a[i], b[i]).statistic, abs=1e-12
        )
        assert float(out["kendall"][i]) == pytest.approx(
            kendalltau(a[i], b[i]).statistic, abs=1e-12
        )
    same = gsw.metrics.agreement(a, a, k=3)
    assert torch.allclose(same["spearman"], torch.ones(3, dtype=torch.float64))
    reverse = gsw.metrics.agreement(torch.arange(6.0)[None], -torch.arange(6.0)[None], k=2)
    assert float(reverse["spearman"][0]) == pytest.approx(-1)
    assert float(reverse["kendall"][0]) == pytest.approx(-1)


def test_top_k_iou_by_hand():
    a = torch.tensor([[5.0, 4, 3, 2, 1]])  # top-2: {0, 1}
    b = torch.tensor([[5.0, 1, 4, 2, 3]])  # top-2: {0, 2}
    assert float(gsw.metrics.agreement(a, b, k=2)["top_k_iou"][0]) == pytest.approx(1 / 3)
    assert float(gsw.metrics.agreement(a, b, k=5)["top_k_iou"][0]) == 1.0


def test_agreement_uses_each_samples_segments():
    labels = _quadrants(batch=2)
    a, b = (
        _explanation([[1.0, 2, 3, 4], [4.0, 3, 2, 1]], labels),
        _explanation([[1.0, 2, 3, 4], [1.0, 2, 3, 4]], labels),
    )
    a = Explanation(**{**a.__dict__, "num_segments": torch.tensor([4, 3])})
    b = Explanation(**{**b.__dict__, "num_segments": torch.tensor([4, 3])})
    out = gsw.metrics.agreement(a, b, k=2)
    assert float(out["spearman"][0]) == pytest.approx(1)
    assert float(out["spearman"][1]) == pytest.approx(-1)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_pointing_game_and_relevance_mass_by_hand(device):
    labels = _quadrants(device, batch=2)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool, device=device)
    masks[:, :2, 2:] = True  # the object is quadrant 1
    expl = _explanation([[0.0, 3.0, 1.0, 0.0], [2.0, 1.0, -1.0, 1.0]], labels)
    assert gsw.metrics.pointing_game(expl, masks).tolist() == [True, False]
    mass = gsw.metrics.relevance_mass(expl, masks)
    torch.testing.assert_close(mass.cpu(), torch.tensor([3 / 4, 1 / 4]))
    nothing = _explanation([[-1.0, -1.0, -1.0, -1.0]], labels[:1])
    assert float(gsw.metrics.relevance_mass(nothing, masks[:1])[0]) == 0.0


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_deletion_and_insertion_by_hand(device):
    labels = _quadrants(device)
    x = torch.zeros(1, 3, 4, 4, device=device)
    for segment, value in enumerate([0.1, 0.4, 0.2, 0.3]):
        x[0, 0][labels[0] == segment] = value  # each quadrant has 4 pixels: sums 0.4, 1.6, 0.8, 1.2
    expl = _explanation([[1.0, 4.0, 2.0, 3.0]], labels)  # ranking: 1, 3, 2, 0
    curve = gsw.metrics.deletion(_SumModel(), x, expl, output="logit", batch_size=3)
    expected = torch.tensor([[4.0, 2.4, 1.2, 0.4, 0.0]])
    torch.testing.assert_close(curve.scores.cpu(), expected)
    torch.testing.assert_close(curve.fractions.cpu(), torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]]))
    torch.testing.assert_close(
        curve.auc.cpu(), torch.tensor([0.25 * (2.0 + 2.4 + 1.2 + 0.4 + 0.0)])
    )
    inserted = gsw.metrics.insertion(_SumModel(), x, expl, output="logit", baseline="zeros")
    torch.testing.assert_close(inserted.scores.cpu(), torch.tensor([[0.0, 1.6, 2.8, 3.6, 4.0]]))
    coarse = gsw.metrics.deletion(_SumModel(), x, expl, output="logit", steps=2)
    torch.testing.assert_close(coarse.scores.cpu(), torch.tensor([[4.0, 1.2, 0.0]]))
    probability = gsw.metrics.deletion(_SumModel(), x, expl)
    torch.testing.assert_close(probability.scores.cpu(), torch.sigmoid(expected))


def test_curves_follow_a_real_explanation():
    from gswfast.testing import square_images, train_square_classifier

    model = train_square_classifier(steps=60)
    images, classes, _ = square_images(8, generator=torch.Generator().manual_seed(5))
    good = gsw.explain(model, images, classes, method="integrated_gradients", n_segments=20)
    bad = Explanation(**{**good.__dict__, "segment_scores": -good.segment_scores})
    assert (
        gsw.metrics.deletion(model, images, good).auc.mean()
        < gsw.metrics.deletion(model, images, bad).auc.mean()
    )
    assert (
        gsw.metrics.insertion(model, images, good).auc.mean()
        > gsw.metrics.insertion(model, images, bad).auc.mean()
    )


def test_clips():
    labels = torch.zeros(1, 2, 4, 4, dtype=torch.int32)
    labels[:, 1] = 1
    expl = _explanation([[0.0, 1.0]], labels)
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[:, 1] = True
    assert gsw.metrics.pointing_game(expl, masks).tolist() == [True]
    curve = gsw.metrics.deletion(_SumModel(), torch.ones(1, 3, 2, 4, 4), expl, output="logit")
    torch.testing.assert_close(curve.scores, torch.tensor([[32.0, 16.0, 0.0]]))


def test_bad_input():
    labels = _quadrants()
    expl = _explanation([[1.0, 2, 3, 4]], labels)
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 4\]"):
        gsw.metrics.agreement(expl, expl, k=5)
    with pytest.raises(ValueError, match="b: expected scores of shape"):
        gsw.metrics.agreement(torch.rand(1, 4), torch.rand(1, 5), k=2)
    with pytest.raises(ValueError, match=r"masks: expected \[B, \(T\), H, W\]"):
        gsw.metrics.pointing_game(expl, torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks: expected"):
        gsw.metrics.relevance_mass(expl, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        gsw.metrics.deletion(_SumModel(), torch.zeros(1, 3, 4, 4), expl, steps=0)
    with pytest.raises(ValueError, match="output: expected one of"):
        gsw.metrics.deletion(_SumModel(), torch.zeros(1, 3, 4, 4), expl, output="rank")
    with pytest.raises(ValueError, match="inputs: expected the explained inputs' shape"):
        gsw.metrics.insertion(_SumModel(), torch.zeros(1, 3, 8, 8), expl)
    with pytest.raises(ValueError, match="explanation: its target is unknown"):
        gsw.metrics.deletion(
            _SumModel(), torch.zeros(1, 3, 4, 4), _explanation([[1.0, 2, 3, 4]], labels, target=-1)
        )
