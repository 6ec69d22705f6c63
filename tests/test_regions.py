"""gsw.occlusion, gsw.kernel_shap and gsw.rise against Captum and RISE's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyCNN, untied

import gswfast as gsw
from gswfast.testing import grid_labels, photos


def _net(dims=2, classes=4):
    torch.manual_seed(0)
    return TinyCNN(dims=dims, classes=classes).double().eval()


def _case(batch=2, size=32, cell=8):
    x = untied(photos(size, batch))
    labels, k = grid_labels(batch, size, size, cell=cell)
    hide = untied(torch.zeros_like(x), seed=1)  # a hide image of its own (noise)
    return x, labels, k, hide


# ------------------------------------------------------------------ occlusion


@pytest.mark.paths
@pytest.mark.parametrize("relabel", ["consecutive", "gaps"])
def test_occlusion_matches_captum_feature_ablation(relabel):
    from captum.attr import FeatureAblation

    model, (x, labels, _, hide) = _net(), _case()
    if relabel == "gaps":
        labels = labels * 3 + 1  # ids 1, 4, 7, ...: absent ids in between
    ours = gsw.occlusion(model, x, labels, [1, 2], hide=hide)
    theirs = FeatureAblation(model).attribute(
        x, baselines=hide, target=[1, 2], feature_mask=labels.unsqueeze(1).long()
    )
    torch.testing.assert_close(
        ours.pixel_scores.double(), theirs[:, 0].double(), rtol=1e-5, atol=1e-7
    )
    assert ours.method == "occlusion"
    assert ours.info["masks"].shape[1] == 1 + int(labels[0].unique().numel())


def test_occlusion_with_segment_mean_hides_one_segment_at_a_time():
    model, (x, labels, k, _) = _net(), _case(batch=1)
    expl = gsw.occlusion(model, x, labels, 0, batch_size=5)
    masks = expl.info["masks"][0]
    assert torch.all(masks[0] == 1)
    assert torch.equal(masks[1:], 1 - torch.eye(k, dtype=torch.uint8))
    with torch.no_grad():
        full = model(x)[0, 0]
    torch.testing.assert_close(expl.info["outputs"][0, 0].double(), full, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ KernelSHAP


def _captum_kernel_shap(model, x, labels, target, hide, n_samples):
    """Captum's KernelShap on one input, and the masks it drew."""
    from captum.attr import KernelShap

    explainer, drawn = KernelShap(model), []
    original = explainer.perturb_func

    def recording(inputs, **kwargs):
        for mask in original(inputs, **kwargs):
            drawn.append(mask.cpu())
            yield mask

    explainer.perturb_func = recording
    coef = explainer.attribute(
        x,
        baselines=hide,
        target=target,
        feature_mask=labels.unsqueeze(1).long(),
        n_samples=n_samples,
        return_input_shape=False,
    )
    return coef.flatten().double(), torch.cat(drawn)


@pytest.mark.paths
@pytest.mark.parametrize("n_samples", [120, 10])  # 10 < 16 segments: the least-norm solution
def test_kernel_shap_matches_captum_given_its_masks(n_samples):
    model, (x, labels, _, hide) = _net(), _case()
    for b in range(2):
        torch.manual_seed(b)
        theirs, masks = _captum_kernel_shap(
            model, x[b : b + 1], labels[b : b + 1], 3, hide[b : b + 1], n_samples
        )
        ours = gsw.kernel_shap(
            model, x[b : b + 1], labels[b : b + 1], 3, n_samples, masks=masks, hide=hide[b : b + 1]
        )
        assert torch.equal(ours.info["masks"][0], masks.to(torch.uint8))
        scale = float(theirs.abs().max())
        # Captum fits in float32 (scikit-learn on float32 arrays), gswfast in float64
        torch.testing.assert_close(
            ours.segment_scores[0].double(), theirs, rtol=1e-3, atol=1e-3 * scale
        )


def test_kernel_shap_sampling_and_efficiency():
    model, (x, labels, k, hide) = _net(), _case()
    expl = gsw.kernel_shap(model, x, labels, 1, 200, seed=3, hide=hide)
    masks, outputs = expl.info["masks"], expl.info["outputs"].double()
    assert torch.all(masks[:, 0] == 1)
    assert torch.all(masks[:, 1] == 0)
    kept = masks[:, 2:].sum(2)
    assert torch.all((kept >= 1) & (kept <= k - 1))
    assert bool((kept <= 3).any())  # the kernel favours both ends
    assert bool((kept >= k - 3).any())
    # the two heavy rows pin the sum of the scores to f(all) - f(none)
    total = expl.segment_scores.double().sum(1)
    torch.testing.assert_close(total, outputs[:, 0] - outputs[:, 1], rtol=1e-3, atol=1e-6)
    again = gsw.kernel_shap(model, x, labels, 1, 200, seed=3, hide=hide, batch_size=7)
    assert torch.equal(again.info["masks"], masks)
    other = gsw.kernel_shap(model, x, labels, 1, 200, seed=4, hide=hide)
    assert not torch.equal(other.info["masks"], masks)


def test_kernel_shap_recovers_a_linear_model():
    # Additive in the segments: the Shapley values are the segments' contributions.
    labels, k = grid_labels(1, 16, 16, cell=8)
    weight = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    one_hot = torch.stack([(labels[0] == s).double() for s in range(k)])

    class Linear(torch.nn.Module):
        def forward(self, x):
            per_segment = torch.einsum("bhw,khw->bk", x[:, 0], one_hot)
            return torch.stack([per_segment @ weight, torch.zeros_like(per_segment[:, 0])], 1)

    x = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    expl = gsw.kernel_shap(Linear(), x, labels, 0, 40, hide="zeros")
    pixels = one_hot.sum((1, 2))
    torch.testing.assert_close(
        expl.segment_scores[0].double(), weight * pixels, rtol=1e-4, atol=1e-3
    )


# ------------------------------------------------------------------ RISE


def _rise_by_hand(model, x, labels, target, hide, masks, p_keep):
    """RISE's formula in NumPy: sum_i f(x with mask i) * m_ik / (N * p_keep)."""
    x, hide, labels = x.numpy(), hide.numpy(), labels.long().numpy()
    out = np.zeros(masks.shape[::2])
    for b in range(x.shape[0]):
        for mask in masks[b].numpy().astype(bool):
            pixels = mask[labels[b]][None]  # [1, H, W]: the kept pixels
            image = np.where(pixels, x[b], hide[b])[None]
            with torch.no_grad():
                f = float(model(torch.from_numpy(image))[0, target[b]])
            out[b] += f * mask
    return torch.from_numpy(out / (masks.shape[1] * p_keep))


@pytest.mark.paths
@pytest.mark.parametrize("p_keep", [0.5, 0.3])
def test_rise_matches_its_formula(p_keep):
    model, (x, labels, k, hide) = _net(), _case()
    expl = gsw.rise(model, x, labels, [0, 2], 40, p_keep=p_keep, seed=1, hide=hide, batch_size=9)
    masks = expl.info["masks"]
    assert masks.shape == (2, 40, k)
    assert abs(float(masks.double().mean()) - p_keep) < 0.1
    want = _rise_by_hand(model, x, labels, [0, 2], hide, masks, p_keep)
    torch.testing.assert_close(expl.segment_scores.double(), want, rtol=1e-5, atol=1e-7)
    given = gsw.rise(model, x, labels, [0, 2], 40, p_keep=p_keep, masks=masks, hide=hide)
    torch.testing.assert_close(given.segment_scores, expl.segment_scores, rtol=0, atol=0)


# ------------------------------------------------------------------ all three


METHODS = {
    "occlusion": lambda *a, **o: gsw.occlusion(*a, **o),
    "kernel_shap": lambda *a, **o: gsw.kernel_shap(*a, n_samples=60, **o),
    "rise": lambda *a, **o: gsw.rise(*a, n_samples=60, **o),
}


@pytest.mark.paths
@pytest.mark.parametrize("method", sorted(METHODS))
def test_chunking_does_not_change_the_answer(method):
    model, (x, labels, _, hide) = _net(), _case()
    whole = METHODS[method](model, x, labels, 1, hide=hide, batch_size=256)
    chunked = METHODS[method](model, x, labels, 1, hide=hide, batch_size=7)
    assert torch.equal(whole.info["masks"], chunked.info["masks"])
    torch.testing.assert_close(
        chunked.info["outputs"], whole.info["outputs"], rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(chunked.segment_scores, whole.segment_scores, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_absent_and_non_consecutive_ids(method):
    model, (x, labels, k, hide) = _net(), _case()
    base = METHODS[method](model, x, labels, 1, hide=hide)
    for relabelled, ids in ((labels + 1, torch.arange(k) + 1), (labels * 2, torch.arange(k) * 2)):
        expl = METHODS[method](model, x, relabelled, 1, hide=hide)
        torch.testing.assert_close(
            expl.segment_scores[:, ids], base.segment_scores, rtol=1e-6, atol=1e-9
        )
        absent = torch.ones(expl.segment_scores.shape[1], dtype=torch.bool)
        absent[ids] = False
        assert torch.all(expl.segment_scores[:, absent] == 0)
        assert torch.all(expl.info["masks"][:, :, absent] == 0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_clips_targets_and_progress(method):
    model, clip = _net(dims=3, classes=3), torch.rand(1, 3, 4, 16, 16, dtype=torch.float64)
    seen = []
    expl = METHODS[method](
        model, clip, None, None, n_segments=8, progress=lambda d, t: seen.append((d, t))
    )
    assert expl.labels.shape == (1, 4, 16, 16)
    assert expl.pixel_scores.shape == (1, 4, 16, 16)
    assert expl.method == method
    with torch.no_grad():
        assert expl.target.tolist() == model(clip).argmax(1).tolist()
    assert seen[-1][0] == seen[-1][1] == expl.info["outputs"].numel()
    assert expl.segmentation is not None


def test_bad_input():
    model, (x, labels, k, _) = _net(), _case()
    with pytest.raises(ValueError, match="n_samples: expected an int >= 2"):
        gsw.kernel_shap(model, x, labels, 1, n_samples=1)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 2"):
        gsw.rise(model, x, labels, 1, n_samples=2.5)
    for p_keep in (0, 1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"p_keep: expected a number in \(0, 1\)"):
            gsw.rise(model, x, labels, 1, n_samples=4, p_keep=p_keep)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        gsw.occlusion(model, x, labels, 1, batch_size=0)
    with pytest.raises(TypeError, match="seed: expected an int"):
        gsw.rise(model, x, labels, 1, n_samples=4, seed=1.0)
    with pytest.raises(ValueError, match=r"masks: 3 rows \(samples\), but n_samples is 4"):
        gsw.kernel_shap(model, x, labels, 1, n_samples=4, masks=torch.ones(3, k))
    with pytest.raises(ValueError, match=rf"masks: {k - 1} columns, fewer than the {k} segments"):
        gsw.rise(model, x, labels, 1, n_samples=4, masks=torch.ones(4, k - 1))
    with pytest.raises(ValueError, match="masks: expected a tensor of 0/1"):
        gsw.rise(model, x, labels, 1, n_samples=4, masks=torch.full((4, k), 0.5))
    with pytest.raises(ValueError, match="hide: expected one of"):
        gsw.occlusion(model, x, labels, 1, hide="noise")
    with pytest.raises(ValueError, match="target: class 7 is out of range"):
        gsw.occlusion(model, x, labels, 7)
    with pytest.raises(ValueError, match=r"segmentation: expected labels of shape \(2, 32, 32\)"):
        gsw.kernel_shap(model, x, labels[:, :16], 1, n_samples=4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_host_read_per_chunk(method, monkeypatch):
    model, (x, labels, _, hide) = _net(), _case()
    reads = []
    for name in ("__int__", "__index__", "item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda t, *a, _o=original, _n=name: (reads.append(_n), _o(t, *a))[1]
        )
    counts = []
    for batch_size in (256, 5):
        reads.clear()
        METHODS[method](model, x, labels, 1, hide=hide, batch_size=batch_size)
        counts.append(len(reads))
    assert counts[0] == counts[1], counts
