"""One API with Captum's and torchvision's conventions: NumPy targets, tuple and function
targets, additional forward args, the convergence delta, one vocabulary, reproducible
noise and masks, no host syncs per chunk, and messages that name the real cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from helpers import SmoothNet, TinyCNN, tiny_hf_vit

import gswfast as gsw
from gswfast.attribution import attribute
from gswfast.testing import grid_labels
from gswfast.video import StreamExplainer

NORMALIZE = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _net(classes=6):
    return TinyCNN(classes=classes).double().eval()


def _x(batch=2, size=12):
    return torch.rand((batch, 3, size, size), dtype=torch.float64)


# ------------------------------------------------------------------ NumPy targets


def test_numpy_targets_in_explain_attribute_and_lime():
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    for plain, numpy_target in (
        (3, np.int64(3)),
        ([1, 4], np.array([1, 4])),
        ([2, 5], np.array([2, 5], np.int32)),
    ):
        a = gsw.explain(model, x, numpy_target, method="gradient", segmentation=labels)
        b = gsw.explain(model, x, plain, method="gradient", segmentation=labels)
        torch.testing.assert_close(a.segment_scores, b.segment_scores, rtol=0, atol=0)
        assert a.target.tolist() == b.target.tolist()
        got, target = attribute(model, x, numpy_target, "gradient")
        want, _ = attribute(model, x, plain, "gradient")
        assert torch.equal(got, want)
        assert target.dtype == torch.int64
        la = gsw.lime(model, x, labels, numpy_target, n_samples=20)
        lb = gsw.lime(model, x, labels, plain, n_samples=20)
        assert torch.equal(la.segment_scores, lb.segment_scores)
    assert gsw.explain(
        model, x, [np.int64(1), np.int64(2)], method="gradient", segmentation=labels
    ).target.tolist() == [1, 2]
    with pytest.raises(TypeError, match="target: expected an integer array"):
        gsw.explain(model, x, np.array([1.0, 2.0]), method="gradient")


# ------------------------------------------------------------------ targets for other outputs


class _Grid(torch.nn.Module):
    """TinyCNN's 6 classes as a [B, 2, 3] grid, or a dict."""

    def __init__(self, inner, as_dict=False):
        super().__init__()
        self.inner, self.as_dict = inner, as_dict

    def forward(self, x):
        out = self.inner(x)
        return {"logits": out} if self.as_dict else out.view(-1, 2, 3)


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam", "smoothgrad"])
def test_tuple_and_function_targets_for_other_outputs(method):
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    options = (
        {"n_steps": 4}
        if method == "integrated_gradients"
        else {"seed": 1, "n_samples": 3}
        if method == "smoothgrad"
        else {}
    )
    flat = gsw.explain(model, x, 5, method=method, segmentation=labels, **options)
    by_index = gsw.explain(_Grid(model), x, (1, 2), method=method, segmentation=labels, **options)
    by_function = gsw.explain(
        _Grid(model, as_dict=True),
        x,
        lambda out: out["logits"][:, 5],
        method=method,
        segmentation=labels,
        **options,
    )
    for other in (by_index, by_function):
        torch.testing.assert_close(
            other.segment_scores, flat.segment_scores, rtol=1e-12, atol=1e-12
        )
        assert other.target.tolist() == [-1, -1]  # not one class per sample


def test_tuple_and_function_targets_in_lime_and_attribute():
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    flat = gsw.lime(model, x, labels, 5, n_samples=30)
    grid = gsw.lime(_Grid(model), x, labels, (1, 2), n_samples=30)
    torch.testing.assert_close(grid.segment_scores, flat.segment_scores, rtol=1e-6, atol=1e-9)
    a, target = attribute(
        _Grid(model, as_dict=True), x, lambda out: out["logits"][:, 5], "gradient"
    )
    b, _ = attribute(model, x, 5, "gradient")
    assert torch.equal(a, b)
    assert target.tolist() == [-1, -1]


class _Held(torch.nn.Module):
    """TinyCNN's logits inside a tuple (with its features), a list or a dict."""

    def __init__(self, inner, holder):
        super().__init__()
        self.inner, self.holder = inner, holder

    def forward(self, x):
        logits = self.inner(x)
        if self.holder == "tuple":
            return logits, x.mean((2, 3))
        if self.holder == "list":
            return [logits]
        return {"features": x.mean((2, 3)), "logits": logits}


@pytest.mark.parametrize("holder", ["tuple", "list", "dict"])
@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam"])
def test_logits_held_in_tuples_lists_and_dicts(holder, method):
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    plain = gsw.explain(model, x, method=method, segmentation=labels, **options)
    held = gsw.explain(_Held(model, holder), x, method=method, segmentation=labels, **options)
    assert torch.equal(held.segment_scores, plain.segment_scores)
    assert torch.equal(held.target, plain.target)
    lime_plain = gsw.lime(model, x, labels, n_samples=20)
    lime_held = gsw.lime(_Held(model, holder), x, labels, n_samples=20)
    assert torch.equal(lime_held.segment_scores, lime_plain.segment_scores)


def test_hugging_face_model_outputs_give_the_bare_logits_scores():
    torch.manual_seed(0)
    vit = tiny_hf_vit(image_size=32, patch_size=8, width=32)

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            return self.vit(pixel_values=x).logits

    x = torch.rand(2, 3, 32, 32)
    labels, _ = grid_labels(2, 32, 32, cell=8)
    ours = gsw.explain(vit, x, 2, method="gradient", segmentation=labels)  # returns a ModelOutput
    bare = gsw.explain(Bare(), x, 2, method="gradient", segmentation=labels)
    assert torch.equal(ours.segment_scores, bare.segment_scores)


def test_outputs_holding_no_logits_are_named():
    class Text(torch.nn.Module):
        def forward(self, x):
            return "cat"

    with pytest.raises(ValueError, match=r"model output: expected logits \[B, classes\].*got str"):
        attribute(Text(), _x(), None, "gradient")

    class Scores(torch.nn.Module):
        def forward(self, x):
            return {"scores": x.mean((2, 3))}

    with pytest.raises(ValueError, match=r"model output: expected logits.*got dict"):
        attribute(Scores(), _x(), 1, "gradient")


def test_target_mistakes_are_named():
    model, x = _net(), _x()
    with pytest.raises(
        ValueError,
        match=r"the tuple \(1,\) indexes each sample's output.*\[B, d1, d2\]|"
        r"the tuple \(1,\) indexes",
    ):
        attribute(_Grid(model), x, (1,), "gradient")
    with pytest.raises(
        ValueError, match=r"target: index 3 at position 1 of \(1, 3\) is out of range"
    ):
        attribute(_Grid(model), x, (1, 3), "gradient")
    with pytest.raises(ValueError, match=r"must return float scores \[B\]"):
        attribute(model, x, lambda out: out, "gradient")
    with pytest.raises(ValueError, match="for other outputs pass target= as a tuple"):
        attribute(_Grid(model), x, 1, "gradient")
    for huge in (10**21, [0, -(10**21)], np.uint64(2**64 - 1)):
        with pytest.raises(ValueError, match=r"target: class -?[0-9]+ is out of range"):
            attribute(model, x, huge, "gradient")


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop"])
def test_hooked_methods_refuse_torchscript_models(method):
    model = torch.jit.script(torchvision.models.resnet18(num_classes=4).eval())
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=f"method: {method} hooks the model's modules"):
        gsw.explain(model, x, method=method, **({"layer": "layer4"} if method == "gradcam" else {}))


# ------------------------------------------------------------------ additional forward args


class _Scaled(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, scale, shift):  # scale [B] follows the batch; shift is a plain number
        return self.inner(x) * scale.view(-1, 1) + shift


class _Fixed(torch.nn.Module):
    def __init__(self, scaled, scale, shift):
        super().__init__()
        self.scaled, self.scale, self.shift = scaled, scale, shift

    def forward(self, x):
        return self.scaled(x, self.scale.expand(x.shape[0]), self.shift)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"n_steps": 5, "batch_size": 3}),
        ("smoothgrad", {"n_samples": 4, "seed": 2, "batch_size": 3}),
        ("gradcam", {}),
    ],
)
def test_additional_forward_args_follow_the_batch(method, options):
    model, x = _Scaled(_net()), _x(3)
    labels, _ = grid_labels(3, 12, 12, cell=4)
    scale = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    expl = gsw.explain(
        model,
        x,
        1,
        method=method,
        segmentation=labels,
        additional_forward_args=(scale, 0.25),
        **options,
    )
    for b in range(3):
        alone = gsw.explain(
            _Fixed(model, scale[b : b + 1], 0.25),
            x[b : b + 1],
            1,
            method=method,
            segmentation=labels[b : b + 1],
            **options,
        )
        # smoothgrad's noise belongs to the sample's place in the batch: compare sample 0 only
        if method == "smoothgrad" and b:
            continue
        torch.testing.assert_close(
            expl.segment_scores[b], alone.segment_scores[0], rtol=1e-10, atol=1e-12
        )


def test_additional_forward_args_in_lime_and_the_curves():
    model, x = _Scaled(_net()), _x(2)
    labels, _ = grid_labels(2, 12, 12, cell=4)
    scale = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expl = gsw.lime(
        model, x, labels, 1, n_samples=40, batch_size=7, additional_forward_args=(scale, 0.5)
    )
    curve = gsw.metrics.deletion(
        model, x, expl, output="logit", additional_forward_args=(scale, 0.5)
    )
    for b in range(2):
        fixed = _Fixed(model, scale[b : b + 1], 0.5)
        alone = gsw.lime(
            fixed,
            x[b : b + 1],
            labels[b : b + 1],
            1,
            n_samples=40,
            masks=expl.info["masks"][b : b + 1],
        )
        torch.testing.assert_close(
            expl.segment_scores[b], alone.segment_scores[0], rtol=1e-6, atol=1e-9
        )
        single = gsw.Explainer(None)(
            x[b : b + 1], 1, labels[b : b + 1], attribution=expl.pixel_scores[b : b + 1]
        )
        ref = gsw.metrics.deletion(fixed, x[b : b + 1], single, output="logit")
        torch.testing.assert_close(curve.scores[b], ref.scores[0])
    with pytest.raises(
        ValueError, match=r"additional_forward_args: argument 0 is a tensor.*\[2, \.\.\.\]"
    ):
        gsw.explain(model, x, 1, method="gradient", additional_forward_args=(scale[:1], 0.5))


# ------------------------------------------------------------------ convergence delta


def test_integrated_gradients_convergence_delta():
    torch.manual_seed(3)
    model, x = SmoothNet().double().eval(), _x()
    expl = gsw.explain(
        model,
        x,
        1,
        method="integrated_gradients",
        n_steps=8,
        segmentation=grid_labels(2, 12, 12)[0],
    )
    attr, _, delta = attribute(
        model, x, 1, "integrated_gradients", n_steps=8, return_convergence_delta=True
    )
    with torch.no_grad():
        ends = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(delta, attr.flatten(1).sum(1) - ends, rtol=0, atol=1e-12)
    torch.testing.assert_close(expl.info["delta"], delta, rtol=1e-12, atol=1e-14)
    assert float(delta.abs().max()) < 1e-6 * float(
        ends.abs().max()
    )  # smooth net: the quadrature converged
    captum = pytest.importorskip("captum.attr")
    theirs, their_delta = captum.IntegratedGradients(model).attribute(
        x, target=1, n_steps=8, method="gausslegendre", return_convergence_delta=True
    )
    # Captum's Gauss-Legendre weights pass through float32 (relative error ~1e-8): its attributions and
    # its delta (~5e-9 here, ours ~1e-15) agree with ours to that precision
    torch.testing.assert_close(attr, theirs, rtol=1e-7, atol=1e-8 * float(attr.abs().max()))
    torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-7 * float(ends.abs().max()))
    assert "delta" not in gsw.explain(model, x, 1, method="gradient").info
    with pytest.raises(ValueError, match="return_convergence_delta: only integrated_gradients"):
        attribute(model, x, 1, "gradient", return_convergence_delta=True)


# ------------------------------------------------------------------ one vocabulary


def test_one_vocabulary_old_spellings_still_work():
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    for new, old in (("zeros", "zero"), ("segment_mean", "mean")):
        a = gsw.lime(model, x, labels, 1, n_samples=20, hide=new)
        with pytest.warns(DeprecationWarning, match=f"hide='{old}' is now spelled hide='{new}'"):
            b = gsw.lime(model, x, labels, 1, n_samples=20, hide=old)
        assert torch.equal(a.segment_scores, b.segment_scores)
    default = gsw.lime(model, x, labels, 1, n_samples=20)
    assert torch.equal(
        default.segment_scores,
        gsw.lime(model, x, labels, 1, n_samples=20, hide="segment_mean").segment_scores,
    )
    # batch_size is the rows per model call everywhere; Captum's internal_batch_size is the same option
    a, _ = attribute(model, x, 1, "integrated_gradients", n_steps=5, batch_size=3)
    b, _ = attribute(model, x, 1, "integrated_gradients", n_steps=5, internal_batch_size=3)
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="internal_batch_size: the same option as batch_size"):
        attribute(model, x, 1, "integrated_gradients", batch_size=3, internal_batch_size=3)
    # one default method: integrated gradients in explain, attribute and the stream
    c, _ = attribute(model, x, 1)
    d, _ = attribute(model, x, 1, "integrated_gradients")
    assert torch.equal(c, d)
    assert StreamExplainer(model).explainer.spec.method == "integrated_gradients"


def test_curves_take_segment_mean_autocast_and_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(3),
    ).double()
    x = _x(2)
    model(x)  # materialise the lazy layer
    model.train()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    expl = gsw.explain(model, x, 1, method="gradient", segmentation=labels)
    in_train = gsw.metrics.deletion(
        model, x, expl, baseline="segment_mean", eval_mode=False, steps=4
    )
    in_eval = gsw.metrics.deletion(model, x, expl, baseline="segment_mean", steps=4)
    reference = gsw.metrics.deletion(model.eval(), x, expl, baseline="segment_mean", steps=4)
    assert torch.equal(in_eval.scores, reference.scores)
    assert not torch.allclose(in_train.scores, in_eval.scores)
    low = gsw.metrics.insertion(
        model.float().eval(), x.float(), expl, autocast=torch.bfloat16, steps=4
    )
    assert low.scores.dtype == torch.float32
    assert low.scores.shape == (2, 5)


def test_lime_takes_slic_options():
    model, x = _net(), torch.rand((2, 3, 24, 24), dtype=torch.float64)
    options = {"max_iter": 2, "enforce_connectivity": False}
    expl = gsw.lime(
        model, x, None, 1, n_samples=20, n_segments=9, compactness=3.0, slic_options=options
    )
    seg = gsw.slic(x, n_segments=9, compactness=3.0, **options)
    assert torch.equal(expl.labels, seg.labels)


# ------------------------------------------------------------------ LIME on labels that do not start at 0


def test_lime_scores_only_the_ids_present():
    model, x = _net(), _x()
    labels, k = grid_labels(2, 12, 12, cell=4)
    zero_based = gsw.lime(model, x, labels, 1, n_samples=60, seed=5)
    one_based = gsw.lime(
        model, x, labels + 1, 1, n_samples=60, seed=5
    )  # scikit-image's start_label=1
    assert one_based.segment_scores.shape == (2, k + 1)
    assert torch.equal(one_based.segment_scores[:, 0], torch.zeros(2))
    torch.testing.assert_close(
        one_based.segment_scores[:, 1:], zero_based.segment_scores, rtol=1e-6, atol=1e-9
    )
    torch.testing.assert_close(one_based.info["score"], zero_based.info["score"])
    gaps = gsw.lime(model, x, labels * 2, 1, n_samples=60, seed=5, alpha=0.0)  # ids 0, 2, 4, ...
    assert torch.equal(gaps.segment_scores[:, 1::2], torch.zeros_like(gaps.segment_scores[:, 1::2]))
    assert bool(gaps.info["masks"][:, :, 1::2].eq(0).all())


# ------------------------------------------------------------------ reproducibility, host syncs


def test_lime_masks_are_drawn_on_the_host():
    model, x = _net(), _x()
    labels, k = grid_labels(2, 12, 12, cell=4)
    expl = gsw.lime(model, x, labels, 1, n_samples=30, seed=9)
    draws = torch.stack(
        [
            torch.randint(
                0,
                2,
                (30, k),
                dtype=torch.uint8,
                generator=torch.Generator().manual_seed((9 * 1_000_003 + b) % 2**63),
            )
            for b in range(2)
        ]
    )  # sample b: a host generator seeded with (seed, b)
    draws[:, 0] = 1
    assert torch.equal(expl.info["masks"].cpu(), draws)


@pytest.mark.cuda
def test_lime_masks_are_the_same_on_every_device():
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    cpu = gsw.lime(model, x, labels, 1, n_samples=30, seed=9)
    cuda = gsw.lime(model.cuda(), x.cuda(), labels.cuda(), 1, n_samples=30, seed=9)
    assert torch.equal(cuda.info["masks"].cpu(), cpu.info["masks"])


def test_lime_reads_nothing_back_per_chunk(monkeypatch):
    model, x = _net(), _x()
    labels, _ = grid_labels(2, 12, 12, cell=4)
    reads = []
    for name in ("__int__", "__index__", "item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda t, *a, _o=original, _n=name: (reads.append(_n), _o(t, *a))[1]
        )
    counts = []
    for batch_size in (64, 5):  # 1 chunk against 12 chunks
        reads.clear()
        gsw.lime(model, x, labels, 1, n_samples=30, batch_size=batch_size)
        counts.append(len(reads))
    assert counts[0] == counts[1], counts


@pytest.mark.cuda
def test_integrated_gradients_and_smoothgrad_do_not_sync():
    model, x = _net().cuda(), _x().cuda()
    attribute(model, x, None, "integrated_gradients", n_steps=4)  # warm up (cuDNN, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        attribute(model, x, None, "integrated_gradients", n_steps=4, batch_size=3)
        attribute(model, x, None, "smoothgrad", n_samples=3, seed=1, batch_size=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ messages that name the cause


def test_channels_last_inputs_are_named():
    model = TinyCNN()
    with pytest.raises(
        ValueError, match=r"looks like \[B, H, W, C\]; pass inputs.permute\(0, 3, 1, 2\)"
    ):
        gsw.explain(model, torch.rand(2, 16, 16, 3), method="gradient")
    with pytest.raises(
        ValueError, match=r"looks like \[B, T, C, H, W\]; pass inputs.permute\(0, 2, 1, 3, 4\)"
    ):
        gsw.explain(TinyCNN(dims=3), torch.rand(1, 8, 3, 16, 16), method="gradient")
    with pytest.raises(ValueError, match=r"looks like \[B, H, W, C\]"):
        gsw.lime(model, torch.rand(2, 16, 16, 3), None, 1, n_samples=4)


def test_a_grey_image_with_a_colour_preprocess_is_named():
    model = TinyCNN()
    with pytest.raises(
        ValueError,
        match=r"preprocess: failed on inputs of shape \(2, 1, 16, 16\).*1 channel.*"
        r"inputs.expand\(-1, 3",
    ):
        gsw.explain(model, torch.rand(2, 1, 16, 16), 1, method="gradient", preprocess=NORMALIZE)


def test_float_images_in_0_255_are_named():
    model = TinyCNN()
    with pytest.raises(
        ValueError, match=r"these reach 2\d\d(\.\d+)?: 0..255 pixel values\? Divide them by 255"
    ):
        gsw.explain(model, torch.rand(2, 3, 16, 16) * 255, method="gradient")
    with pytest.raises(ValueError, match="look normalised"):
        gsw.explain(model, NORMALIZE(torch.rand(2, 3, 16, 16)), method="gradient")
    with pytest.raises(ValueError, match=r"resampling overshoot\?\); clamp them"):
        gsw.explain(model, torch.rand(2, 3, 16, 16) * 1.1, method="gradient")
