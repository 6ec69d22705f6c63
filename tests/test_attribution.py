"""Pixel scorers against independent references: torch.autograd.grad, Captum, hand math."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SmoothNet, TinyCNN, cpu_and_cuda, untied

from gswfast.attribution import METHODS, attribute, find_layer, make_baseline
from gswfast.attribution.baselines import gaussian_blur, segment_mean_image
from gswfast.attribution.integrated_gradients import integration_points
from gswfast.testing import PYTORCH_GRAD_CAM_CLASSES, grid_labels


def _net(device, dims=2, **kw):
    return TinyCNN(dims, **kw).double().to(device).eval()


def _inputs(device, shape=(3, 3, 12, 12)):
    return torch.rand(shape, dtype=torch.float64, device=device)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.paths
def test_gradient_equals_autograd(device, dims):
    model = _net(device, dims)
    x = _inputs(device, (3, 3, 12, 12) if dims == 2 else (2, 3, 4, 8, 8))
    target = torch.tensor([1, 4, 0][: x.shape[0]], device=device)
    attr, got_target = attribute(model, x, target, "gradient")
    xr = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(xr).gather(1, target[:, None]).sum(), xr)
    torch.testing.assert_close(attr, expected)
    assert torch.equal(got_target, target)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_predicted_class_is_the_default_target(device):
    model, x = _net(device), _inputs(device)
    _, target = attribute(model, x, None, "gradient")
    torch.testing.assert_close(target, model(x).argmax(1))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_input_x_gradient(device):
    model, x = _net(device), _inputs(device)
    baseline = torch.full_like(x, 0.25)
    grad, _ = attribute(model, x, 2, "gradient")
    plain, _ = attribute(model, x, 2, "input_x_gradient")
    shifted, _ = attribute(model, x, 2, "input_x_gradient", baseline=baseline)
    torch.testing.assert_close(plain, x * grad)
    torch.testing.assert_close(shifted, (x - baseline) * grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_completeness(device, integration):
    model = SmoothNet().double().to(device).eval()
    x, baseline = (
        _inputs(device, (2, 3, 10, 10)),
        torch.zeros(2, 3, 10, 10, dtype=torch.float64, device=device),
    )
    target = torch.tensor([1, 3], device=device)
    attr, _ = attribute(
        model, x, target, "integrated_gradients", n_steps=64, integration=integration
    )
    with torch.no_grad():
        delta = (model(x) - model(baseline)).gather(1, target[:, None]).squeeze(1)
    total = attr.flatten(1).sum(1)
    assert torch.all((total - delta).abs() <= 0.02 * delta.abs()), (total, delta)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "integration", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right"]
)
@pytest.mark.paths
def test_integrated_gradients_matches_captum(device, integration):
    IntegratedGradients = pytest.importorskip("captum.attr").IntegratedGradients

    model, x = _net(device), _inputs(device)
    baseline = torch.rand_like(x)
    target = torch.tensor([0, 2, 4], device=device)
    ours, _ = attribute(
        model,
        x,
        target,
        "integrated_gradients",
        baseline=baseline,
        n_steps=20,
        integration=integration,
        internal_batch_size=7,
    )
    theirs = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=20, method=integration
    )
    if integration == "riemann_trapezoid":
        # Captum weighs every trapezoid point 1/n (halving the ends), so its weights sum to
        # (n-1)/n; the trapezoid rule's sum to 1.
        theirs = theirs * 20 / 19
    torch.testing.assert_close(ours, theirs)


@pytest.mark.paths
def test_integrated_gradients_chunks_do_not_change_the_result():
    model, x = _net("cpu"), _inputs("cpu")
    whole, _ = attribute(model, x, 1, "integrated_gradients", n_steps=9)
    chunked, _ = attribute(model, x, 1, "integrated_gradients", n_steps=9, internal_batch_size=2)
    torch.testing.assert_close(whole, chunked)


def test_integration_points_integrate_polynomials():
    for method, n, degree in [
        ("gausslegendre", 4, 7),
        ("riemann_trapezoid", 200, 2),
        ("riemann_middle", 200, 2),
    ]:
        alphas, weights = integration_points(n, method)
        approx = sum(w * a**degree for a, w in zip(alphas, weights, strict=True))
        assert abs(approx - 1 / (degree + 1)) < 1e-4, method


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_smoothgrad(device):
    model, x = _net(device), _inputs(device)
    grad, _ = attribute(model, x, 3, "gradient")
    noiseless, _ = attribute(model, x, 3, "smoothgrad", noise_level=0.0, n_samples=3)
    torch.testing.assert_close(noiseless, grad)
    a, _ = attribute(model, x, 3, "smoothgrad", n_samples=6, seed=7, internal_batch_size=4)
    b, _ = attribute(model, x, 3, "smoothgrad", n_samples=6, seed=7)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, grad)


@pytest.mark.parametrize(
    "base", [m for m in METHODS if m not in ("smoothgrad", "banzhaf", "scorecam")]
)
def test_smoothgrad_wraps_every_method(base):
    model, x = _net("cpu"), _inputs("cpu", (2, 3, 8, 8))
    labels, _ = grid_labels(2, 8, 8, cell=4)
    options = {"n_steps": 4} if base in ("integrated_gradients", "lime_ig") else {}
    plain, _ = attribute(model, x, 1, base, labels=labels, **options)
    smooth, _ = attribute(
        model,
        x,
        1,
        "smoothgrad",
        base=base,
        labels=labels,
        n_samples=3,
        noise_level=0.0,
        internal_batch_size=4,
        **options,
    )
    torch.testing.assert_close(smooth, plain)


def test_smoothgrad_refuses_the_bases_that_sample_already():
    model, x = _net("cpu"), _inputs("cpu", (2, 3, 8, 8))
    for base in ("smoothgrad", "banzhaf", "scorecam"):
        with pytest.raises(ValueError, match=f"base: expected one of .*got '{base}'"):
            attribute(model, x, 1, "smoothgrad", base=base)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_smoothgrad_noise_does_not_depend_on_chunks_batch_or_device(device):
    # float64 model and inputs: only the noise can make a difference, not the arithmetic.
    # 3x7x9 values per copy: not a multiple of the CPU generator's block of 16.
    model, x = _net(device), _inputs(device, (3, 3, 7, 9))
    options = dict(n_samples=5, seed=11, noise_level=0.3)
    whole, _ = attribute(model, x, 1, "smoothgrad", **options)
    for size in (1, 2, 4, 7):
        chunked, _ = attribute(model, x, 1, "smoothgrad", batch_size=size, **options)
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    alone, _ = attribute(model, x[1:2], 1, "smoothgrad", **options)
    first, _ = attribute(model, x[:1], 1, "smoothgrad", **options)
    torch.testing.assert_close(first[0], whole[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(
        alone[0], whole[1]
    )  # the noise belongs to a sample's place in the batch
    if device == "cuda":
        on_cpu, _ = attribute(copy.deepcopy(model).cpu(), x.cpu(), 1, "smoothgrad", **options)
        torch.testing.assert_close(whole.cpu(), on_cpu, rtol=1e-9, atol=1e-9)


def test_smoothgrad_equals_the_mean_over_its_noisy_inputs():
    model, x = _net("cpu"), _inputs("cpu", (2, 3, 8, 8))
    n, level = 5, 0.2
    ours, _ = attribute(
        model,
        x,
        1,
        "smoothgrad",
        n_samples=n,
        noise_level=level,
        seed=3,
        square=True,
        base="input_x_gradient",
    )
    # copy d of sample b: a host generator seeded by (seed, b, d), whatever the chunks and the device
    noise = torch.stack(
        [
            torch.randn(
                (3, 8, 8),
                generator=torch.Generator().manual_seed(
                    ((3 * 1_000_003 + b) * 1_000_003 + d) % 2**63
                ),
            )
            for d in range(n)
            for b in range(2)
        ]
    ).double()
    sigma = level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    noisy = (x.repeat(n, 1, 1, 1) + noise * sigma.repeat(n).view(-1, 1, 1, 1)).requires_grad_()
    (grad,) = torch.autograd.grad(model(noisy)[:, 1].sum(), noisy)
    expected = ((noisy.detach() * grad) ** 2).view(n, 2, 3, 8, 8).mean(0)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcam_equals_hand_computation(device):
    model, x = _net(device), _inputs(device, (2, 3, 12, 12))
    target = torch.tensor([3, 1], device=device)
    cam, _ = attribute(model, x, target, "gradcam", layer="conv2")
    act = model.conv2(model.relu1(model.conv1(x))).detach().requires_grad_()
    out = model.fc(torch.relu(act).flatten(2).mean(2))
    (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), act)
    expected = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    expected = F.interpolate(expected.detach(), size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, expected.to(cam.dtype))


def test_gradcam_finds_the_last_grid_layer_and_upsamples_over_time():
    # The last module whose output is a grid the score reaches: TinyCNN's relu2, after conv2.
    model, x = _net("cpu", 3), _inputs("cpu", (2, 3, 4, 8, 8))
    auto, _ = attribute(model, x, 0, "gradcam")
    named, _ = attribute(model, x, 0, "gradcam", layer=model.relu2)
    assert auto.shape == (2, 1, 4, 8, 8)
    torch.testing.assert_close(auto, named)
    assert auto.min() >= 0


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.paths
def test_guided_backprop_matches_captum(device):
    GuidedBackprop = pytest.importorskip("captum.attr").GuidedBackprop

    model, x = _net(device), _inputs(device)
    ours, _ = attribute(model, x, 2, "guided_backprop")
    theirs = GuidedBackprop(model).attribute(x.clone(), target=2)
    torch.testing.assert_close(ours, theirs)
    grad, _ = attribute(model, x, 2, "gradient")
    assert not torch.allclose(ours, grad)


def test_guided_backprop_with_inplace_relu():
    import torchvision

    model = torchvision.models.resnet18(num_classes=4).eval()  # ReLU(inplace=True) everywhere
    attr, _ = attribute(model, torch.rand(1, 3, 32, 32), 0, "guided_backprop")
    assert torch.isfinite(attr).all()
    assert attr.abs().sum() > 0


def test_baselines():
    x = torch.rand(2, 3, 8, 10)
    labels, k = grid_labels(2, 8, 10, cell=4)
    mean_image = segment_mean_image(x, labels)
    for b in range(2):
        for s in range(k):
            mask = labels[b] == s
            if mask.any():
                torch.testing.assert_close(
                    mean_image[b][:, mask],
                    x[b][:, mask].mean(1, keepdim=True).expand(-1, int(mask.sum())),
                )
    assert torch.equal(make_baseline("zeros", x), torch.zeros_like(x))
    blurred = gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape
    assert blurred.std() < x.std()
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 1, 9, 9), 2.0), torch.ones(1, 1, 9, 9))


def test_model_is_left_as_found_even_when_it_raises():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    model.train()
    model[0].weight.requires_grad_(False)
    stats = model[1].running_mean.clone()
    labels, _ = grid_labels(2, 8, 8, cell=4)
    for method in METHODS:
        options = {
            "lime_ig": {"baseline": "zeros"},
            "banzhaf": {"labels": labels, "n_samples": 2},
        }.get(method, {})
        attribute(model, torch.rand(2, 3, 8, 8), 1, method, **options)
        assert model.training
        assert all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5
        assert all(p.grad is None for p in model.parameters())
        assert torch.equal(model[1].running_mean, stats)
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = torch.nn.Sequential(TinyCNN(), Boom())
    for method in ("gradient", "guided_backprop"):
        with pytest.raises(RuntimeError, match="boom"):
            attribute(broken, torch.rand(1, 3, 8, 8), 0, method)
    with pytest.raises(RuntimeError, match="boom"):
        attribute(broken, torch.rand(1, 3, 8, 8), 0, "gradcam", layer="0.conv2")
    assert all(not m._forward_hooks for m in broken.modules())
    assert all(p.requires_grad for p in broken.parameters())


def test_find_layer_through_wrappers():
    model = TinyCNN()
    wrapped = torch.nn.DataParallel(model)
    assert find_layer(wrapped, "conv2") is model.conv2
    assert find_layer(wrapped, "module.conv2") is model.conv2
    assert find_layer(model, "module.conv2") is model.conv2
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        find_layer(model, "conv9")
    with pytest.raises(ValueError, match="not part of the model"):
        find_layer(model, torch.nn.Conv2d(1, 1, 1))
    for blank in ("", "module.", " "):  # "" named the whole model: its output, not a map
        with pytest.raises(ValueError, match="layer: expected a module name such as 'conv2'"):
            find_layer(wrapped, blank)


def test_bad_input():
    model, x = _net("cpu"), _inputs("cpu")
    with pytest.raises(ValueError, match="target: class 5 is out of range"):
        attribute(model, x, 5, "gradient")
    with pytest.raises(ValueError, match="target: class -1"):
        attribute(model, x, [0, -1, 0], "integrated_gradients", n_steps=2)
    with pytest.raises(ValueError, match=r"target: expected one class per sample \(\[3\]\)"):
        attribute(model, x, [0, 1], "gradient")
    with pytest.raises(TypeError, match="target: expected an integer tensor"):
        attribute(model, x, torch.zeros(3), "gradient")
    with pytest.raises(ValueError, match=r"model: expected logits \[B, classes\]"):
        attribute(torch.nn.Conv2d(3, 2, 1).double(), x, 0, "gradient")
    with pytest.raises(ValueError, match="does not depend differentiably"):
        attribute(_Detached(model), x, 0, "gradient")
    # a graph through its weights (requires_grad left on), none through the input
    with pytest.raises(ValueError, match="does not depend differentiably"):
        attribute(_IgnoresInput(model), x, 0, "gradient")
    with pytest.raises(ValueError, match="method: expected one of"):
        attribute(model, x, 0, "lrp")
    with pytest.raises(TypeError, match="unexpected option"):
        attribute(model, x, 0, "gradient", n_steps=3)
    with pytest.raises(ValueError, match="n_steps: expected an int >= 1"):
        attribute(model, x, 0, "integrated_gradients", n_steps=0)
    with pytest.raises(ValueError, match="integration: expected one of"):
        attribute(model, x, 0, "integrated_gradients", integration="simpson")
    with pytest.raises(ValueError, match="baseline: expected one of"):
        attribute(model, x, 0, "integrated_gradients", baseline="ones")
    with pytest.raises(ValueError, match="baseline: shape"):
        attribute(
            model, x, 0, "input_x_gradient", baseline=torch.zeros(2, 3, 5, 5, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="labels: baseline 'segment_mean' needs a segmentation"):
        attribute(model, x, 0, "lime_ig")
    with pytest.raises(ValueError, match="base: expected one of"):
        attribute(model, x, 0, "smoothgrad", base="smoothgrad")
    with pytest.raises(ValueError, match="noise_level"):
        attribute(model, x, 0, "smoothgrad", noise_level=-1.0)
    with pytest.raises(ValueError, match="blur_sigma"):
        attribute(model, x, 0, "integrated_gradients", baseline="blur", blur_sigma=0.0)
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        attribute(lambda t: t, x, 0, "gradient")


class _IgnoresInput(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach())


class _Detached(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).detach()


@pytest.mark.parametrize(
    ("name", "activation"), [("vit_b_16", "GELU"), ("efficientnet_b0", "SiLU")]
)
def test_guided_backprop_names_the_activation_of_a_model_without_relu(name, activation):
    import torchvision

    kwargs = {"image_size": 32} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(num_classes=3, **kwargs).eval()
    with pytest.raises(
        ValueError, match=rf"needs nn.ReLU modules.*activations are .*{activation}.*'gradient'"
    ):
        attribute(model, torch.rand(1, 3, 32, 32), 0, "guided_backprop")


@pytest.mark.paths
@pytest.mark.parametrize("method", list(PYTORCH_GRAD_CAM_CLASSES))
def test_cam_methods_equal_pytorch_grad_cam(method):
    # The same model, layer and target; pytorch-grad-cam scales each map to 0..1 and
    # resizes it with OpenCV, so the pixel maps are compared by correlation. EigenCAM's
    # first component has no sign of its own: the peer's sign-corrected projection
    # (get_2d_projection_with_sign_correction, the rule ours follows) is the reference.
    import torchvision

    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).double().eval()
    x = untied(torch.rand(3, 3, 64, 80))
    targets = [1, 4, 5]
    if method == "scorecam":  # a model run per channel and sample: 256 runs for one
        x, targets = x[:1], targets[:1]
    layer = model.layer3  # 4 x 5: maps with some detail, not all-zero on a random net
    ours, _ = attribute(model, x, targets, method, layer="layer3")
    if method == "eigencam":
        activations = []
        handle = layer.register_forward_hook(lambda m, i, o: activations.append(o.detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        projection = get_2d_projection_with_sign_correction(activations[0].numpy())
        theirs = scale_cam_image(np.maximum(projection, 0), (80, 64))
    else:
        peer = getattr(grad_cam, PYTORCH_GRAD_CAM_CLASSES[method])(
            model=model, target_layers=[layer]
        )
        theirs = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    for b in range(len(targets)):
        a = ours[b, 0].flatten()
        t = torch.from_numpy(np.asarray(theirs[b])).double().flatten()
        assert float(a.std()) > 0, (method, b)
        correlation = torch.corrcoef(torch.stack([a, t]))[0, 1]
        assert correlation >= 0.999, (method, b, float(correlation))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_several_cam_layers_equal_pytorch_grad_cam(method):
    # layer=[...]: each layer's map scaled to 0..1 and the maps averaged, as
    # pytorch-grad-cam aggregates target_layers.
    import torchvision

    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).double().eval()
    x = untied(torch.rand(2, 3, 64, 80))
    ours, _ = attribute(model, x, [1, 4], method, layer=["layer3", model.layer4])
    one, _ = attribute(model, x, [1, 4], method, layer="layer4")
    peer = getattr(grad_cam, PYTORCH_GRAD_CAM_CLASSES[method])(
        model=model, target_layers=[model.layer3, model.layer4]
    )
    theirs = peer(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(4)])
    for b in range(2):
        a = ours[b, 0].flatten()
        t = torch.from_numpy(theirs[b]).double().flatten()
        assert float(torch.corrcoef(torch.stack([a, t]))[0, 1]) >= 0.999
        assert float(torch.corrcoef(torch.stack([a, one[b, 0].flatten()]))[0, 1]) < 0.99
    with pytest.raises(ValueError, match="'layer4' is given twice"):
        attribute(model, x, 1, method, layer=["layer4", model.layer4])
    with pytest.raises(ValueError, match="got \\[\\]"):
        attribute(model, x, 1, method, layer=[])


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop"])
def test_hooked_methods_run_a_compiled_model_eagerly(method):
    # torch.compile wraps the model; the hooked methods run the module it wraps, so their
    # hooks always reach it, nothing recompiles and layer names are the user's.
    import gswfast as gsw

    model, x = _net("cpu"), _inputs("cpu", (2, 3, 8, 8))
    compiled = torch.compile(model, backend="eager")
    compiled(x)  # it has run before
    eager, _ = attribute(model, x, 1, method)
    ours, _ = attribute(compiled, x, 1, method)
    torch.testing.assert_close(ours, eager)
    if method == "gradcam":
        labels = torch.zeros(2, 8, 8, dtype=torch.int64)
        expl = gsw.explain(compiled, x, 1, method="gradcam", segmentation=labels)
        assert expl.info["layer"] == "relu2"
