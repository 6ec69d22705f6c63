"""explain / Explainer / Explanation: pooling, batching, wrappers, layouts, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from helpers import TinyCNN, cpu_and_cuda, photos, tiny_hf_vit, untied

import gswfast as gsw
from gswfast.explain import SEGMENT_REDUCTIONS
from gswfast.metrics import boundary_recall
from gswfast.testing import (
    is_connected,
    lime_weights,
    reference_pool,
    spearman,
    square_images,
    train_square_classifier,
)

NORMALIZE = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _resnet(device="cpu", classes=10):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes).to(device).eval()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduce", SEGMENT_REDUCTIONS)
@pytest.mark.paths
def test_segment_scores_equal_a_reference_pooling(device, reduce):
    x = photos(48, 2).to(device)
    expl = gsw.explain(
        TinyCNN().to(device), x, 1, method="input_x_gradient", reduce=reduce, n_segments=20
    )
    pixel = expl.pixel_scores.flatten(1)[:, None].double()
    pixel = {"positive_mean": pixel.clamp(min=0), "abs_mean": pixel.abs()}.get(reduce, pixel)
    base = {"positive_mean": "mean", "abs_mean": "mean"}.get(reduce, reduce)
    k = expl.segment_scores.shape[1]
    expected = reference_pool(pixel, expl.labels.flatten(1), k, base)[:, 0]
    for b in range(2):
        n = int(expl.num_segments[b])
        torch.testing.assert_close(
            expl.segment_scores[b, :n].double().cpu(), expected[b, :n], rtol=1e-5, atol=1e-6
        )
        assert torch.all(expl.segment_scores[b, n:] == 0)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gradient", {}),
        ("integrated_gradients", {"n_steps": 4}),
        ("lime_ig", {"n_steps": 4}),
        ("gradcam", {}),
        ("guided_backprop", {}),
        ("smoothgrad", {"n_samples": 2, "seed": 1}),
    ],
)
@pytest.mark.paths
def test_batched_equals_per_sample(method, options):
    # Convolutions pick other algorithms for other batch sizes, so the two runs agree up to
    # rounding: float64 and tie-free inputs (see `untied`) make that hold on every CPU.
    model, x = _resnet().double(), untied(photos(64, 3))
    batched = gsw.explain(model, x, [1, 2, 3], method=method, **options)
    for b in range(3):
        if method == "smoothgrad":
            break  # the noise of sample b depends on its position in the batch
        single = gsw.explain(model, x[b : b + 1], b + 1, method=method, **options)
        assert torch.equal(single.labels[0], batched.labels[b])
        scale = float(batched.pixel_scores[b].abs().max())
        torch.testing.assert_close(
            single.pixel_scores[0], batched.pixel_scores[b], rtol=1e-9, atol=1e-11 * scale
        )
        n = int(single.num_segments[0])
        assert n == int(batched.num_segments[b])
        torch.testing.assert_close(
            single.segment_scores[0], batched.segment_scores[b, :n], rtol=1e-9, atol=1e-11 * scale
        )
    assert batched.target.tolist() == [1, 2, 3]


def test_nan_scores_raise_and_their_overlay_draws():
    """A model with NaN weights: explain names the samples (as the command does); an
    Explanation holding NaN scores still draws (the colour map indexed its table at
    -2**63: IndexError on the CPU, a device-side assert on a GPU)."""
    model = TinyCNN(classes=3).eval()
    x = photos(32, 1)
    fine = gsw.explain(model, x, 0, method="gradient")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"segment_scores: NaN or infinite for sample\(s\) \[0\]"):
        gsw.explain(model, x, 0, method="gradient")
    with pytest.raises(ValueError, match="segment_scores: NaN"):
        gsw.lime(model, x, fine.labels, 0, n_samples=8)
    expl = dataclasses.replace(
        fine, segment_scores=torch.full_like(fine.segment_scores, float("nan"))
    )
    picture = expl.overlay(x)
    assert picture.shape == (1, 3, 32, 32)
    colours = gsw.render.colormap(
        torch.tensor([float("nan"), float("inf"), -float("inf")]), ((0, 0, 0), (255, 255, 255))
    )
    assert colours.tolist() == [[0.0] * 3, [255.0] * 3, [0.0] * 3]


class _Flat(torch.nn.Module):
    """A head that ignores its input, as a random torchvision ViT's (initialised to zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))) * 0


def test_tied_scores_warn_are_recorded_and_outline_nothing():
    x = photos(32, 2)
    with pytest.warns(
        RuntimeWarning, match=r"every segment scores the same for sample\(s\) \[0, 1\]"
    ):
        expl = gsw.explain(_Flat(), x, 1, method="gradient", n_segments=8)
    assert expl.info["tied"].tolist() == [True, True]
    assert not expl.top_k(3).any()  # no segment is best
    with pytest.warns(RuntimeWarning, match="every segment scores the same"):
        region = gsw.occlusion(_Flat(), x, expl.labels, 1)
    assert region.info["tied"].tolist() == [True, True]
    plain = gsw.explain(TinyCNN().eval(), x, 1, method="gradient", segmentation=expl.labels)
    assert plain.info["tied"].tolist() == [False, False]
    assert plain.top_k(3).any(dim=(1, 2)).all()


def test_other_input_spellings_are_taken_or_refused_clearly():
    model, x = TinyCNN().eval(), photos(32, 2)
    expl = gsw.explain(model, x, 1, method="gradient", n_segments=8)
    as_numpy = gsw.explain(model, x, 1, method="gradient", segmentation=expl.labels.numpy())
    torch.testing.assert_close(as_numpy.segment_scores, expl.segment_scores)
    with pytest.raises(TypeError, match=r"got a numpy.ndarray of uint8"):
        gsw.explain(model, x, 1, segmentation=expl.labels.numpy().astype("uint8"))
    captum = gsw.explain(
        model, x, 1, method="input_x_gradient", baselines="blur", segmentation=expl.labels
    )
    ours = gsw.explain(
        model, x, 1, method="input_x_gradient", baseline="blur", segmentation=expl.labels
    )
    torch.testing.assert_close(captum.segment_scores, ours.segment_scores)
    with pytest.raises(ValueError, match=r"0..255 pixel values"):
        expl.overlay(x * 255)
    with pytest.raises(ValueError, match=r"masks: 5 rows .* pass n_samples=5"):
        gsw.lime(model, x, expl.labels, 1, masks=torch.ones(5, 16, dtype=torch.uint8))


def test_explanation_ranking_top_k_heatmap_overlay():
    x = photos(64, 2)
    expl = gsw.explain(_resnet(), x, method="gradient")
    ranking = expl.ranking()
    for b in range(2):
        n = int(expl.num_segments[b])
        ordered = expl.segment_scores[b, ranking[b, :n]]
        assert torch.all(ordered[:-1] >= ordered[1:])
        assert sorted(ranking[b, :n].tolist()) == list(range(n))  # padding ids come last
    masks = expl.top_k(3)
    for b in range(2):
        best = ranking[b, :3]
        torch.testing.assert_close(masks[b], torch.isin(expl.labels[b], best.int()))
    assert not expl.top_k(0).any()
    assert expl.top_k(10_000).all()
    heat = expl.heatmap()
    torch.testing.assert_close(
        heat, expl.segment_scores.gather(1, expl.labels.flatten(1).long()).view_as(heat)
    )
    picture = expl.overlay(x)
    assert picture.shape == (2, 3, 64, 64)
    assert picture.dtype == torch.uint8
    edge = gsw.render.boundaries(expl.labels)
    assert torch.all(
        picture.permute(0, 2, 3, 1)[edge] == torch.tensor([255, 255, 0], dtype=torch.uint8)
    )
    plain = expl.overlay((x * 255).to(torch.uint8), alpha=0.0, boundaries=False)
    assert torch.equal(plain, (x * 255).to(torch.uint8))
    arrays = expl.numpy()
    assert arrays["segment_scores"].shape == tuple(expl.segment_scores.shape)
    assert arrays["method"] == "gradient"
    _check_moved(expl, expl.to("cpu"), torch.device("cpu"))
    _check_moved(expl, expl.to("meta"), torch.device("meta"))  # no tensor is left behind


def _check_moved(expl, moved, device):
    """Every tensor of ``moved`` (fields, segmentation, info) is on ``device`` and, off the
    meta device, equal to ``expl``'s; the rest is unchanged."""
    assert (moved.method, moved.reduce) == (expl.method, expl.reduce)
    pairs = [(getattr(expl, f.name), getattr(moved, f.name)) for f in dataclasses.fields(expl)]
    pairs += [(expl.info[k], moved.info[k]) for k in expl.info]
    pairs += [
        (getattr(expl.segmentation, f.name), getattr(moved.segmentation, f.name))
        for f in dataclasses.fields(expl.segmentation)
    ]
    tensors = [(a, b) for a, b in pairs if isinstance(a, torch.Tensor)]
    assert len(tensors) >= 8
    for a, b in tensors:
        assert b.device == device
        assert (b.shape, b.dtype) == (a.shape, a.dtype)
        if device.type != "meta":
            assert torch.equal(a, b)


def test_lime_ig_ranks_segments_like_lime():
    # The real lime package (500 samples) on the same segments and model outputs. The
    # first-order theory (Garreau & Mardaoui 2021) says LIME ~ IG from the segment-mean
    # image, summed per segment; plain gradients rank segments much worse.
    pytest.importorskip("lime")
    model, x = _resnet(classes=10), photos(64, 2)
    seg = gsw.slic(x, n_segments=25)
    ours = gsw.explain(model, x, 3, method="lime_ig", segmentation=seg, n_steps=16)
    plain = gsw.explain(model, x, 3, method="gradient", reduce="sum", segmentation=seg)
    for b in range(2):
        k = int(seg.num_segments[b])
        reference = lime_weights(model, x[b], seg.labels[b], 3, seed=0, n_samples=500)
        rho_ours = spearman(reference, ours.segment_scores[b, :k])
        rho_plain = spearman(reference, plain.segment_scores[b, :k])
        assert rho_ours > 0.8, (rho_ours, rho_plain)
        assert rho_ours > rho_plain + 0.2, (rho_ours, rho_plain)


@pytest.fixture(scope="module")
def square_classifier():
    model = train_square_classifier()
    images, classes, masks = square_images(32, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        assert (model(images).argmax(1) == classes).float().mean() > 0.95
    return model, images, classes, masks


@pytest.mark.parametrize("method", ["integrated_gradients", "gradcam"])
def test_trained_model_explanations_point_at_the_evidence(square_classifier, method):
    # The model tells red squares from blue ones: the best segment should be the square.
    model, images, classes, masks = square_classifier
    expl = gsw.explain(model, images, classes, method=method, n_segments=20)
    assert gsw.metrics.pointing_game(expl, masks).float().mean() >= 0.9


def test_lime_ig_shares_lime_blind_spot_on_the_trained_model(square_classifier):
    # A segment that is all square looks the same when LIME "hides" it with its mean
    # colour, so LIME cannot see it, and neither can lime_ig: they agree, blind spot included.
    pytest.importorskip("lime")
    model, images, classes, _masks = square_classifier
    expl = gsw.explain(model, images[:3], classes[:3], method="lime_ig", n_segments=20)
    for b in range(3):
        k = int(expl.num_segments[b])
        reference = lime_weights(model, images[b], expl.labels[b], int(classes[b]), n_samples=500)
        assert spearman(reference, expl.segment_scores[b, :k]) > 0.9


@pytest.mark.paths
def test_given_attribution_and_segmentation_are_pooled():
    captum = pytest.importorskip("captum.attr")
    IntegratedGradients = captum.IntegratedGradients

    # Contiguous (Captum) and channels-last (gswfast) convolutions round differently:
    # float64 and tie-free inputs (see `untied`) keep max-pool ties out of the comparison.
    model, x = _resnet().double(), untied(photos(64, 2))
    seg = gsw.slic(x, n_segments=30)
    captum = IntegratedGradients(model).attribute(x, target=[4, 5], n_steps=8)
    from_tensor = gsw.explain(None, x, [4, 5], segmentation=seg.labels, attribution=captum)
    ours = gsw.explain(model, x, [4, 5], method="integrated_gradients", segmentation=seg, n_steps=8)
    # Captum rounds its quadrature weights to float32 (`step_sizes ... .float()`): about 6e-8
    # of each step's term, which cancellation between steps can leave in a small score.
    tolerance = dict(rtol=1e-5, atol=1e-6 * float(ours.segment_scores.abs().max()))
    torch.testing.assert_close(from_tensor.segment_scores, ours.segment_scores, **tolerance)
    reduced = gsw.explain(None, x, segmentation=seg, attribution=captum.sum(1))
    torch.testing.assert_close(reduced.segment_scores, from_tensor.segment_scores)
    assert reduced.target.tolist() == [-1, -1]


@pytest.mark.paths
def test_preprocess_is_part_of_the_differentiated_function():
    model, x = _resnet(), photos(64, 2)
    with_pre = gsw.explain(model, x, 3, method="gradient", preprocess=NORMALIZE)
    composed = gsw.explain(torch.nn.Sequential(NORMALIZE, model), x, 3, method="gradient")
    torch.testing.assert_close(with_pre.pixel_scores, composed.pixel_scores)
    with pytest.raises(ValueError, match=r"inputs: SLIC needs images in 0\.\.1"):
        gsw.explain(model, NORMALIZE(x), 3, method="gradient")
    gsw.explain(
        model, NORMALIZE(x), 3, method="gradient", segmentation=with_pre.labels
    )  # given: fine


@pytest.mark.paths
def test_uint8_inputs():
    x = photos(64, 2)
    u8 = (x * 255).round().to(torch.uint8)
    a = gsw.explain(_resnet(), u8, 1, method="gradient")
    b = gsw.explain(_resnet(), u8.float() / 255, 1, method="gradient")
    torch.testing.assert_close(a.pixel_scores, b.pixel_scores)


@pytest.mark.paths
def test_channels_last_inputs():
    # Channels-last weights change the convolution algorithm: float64 and tie-free inputs
    # (see `untied`) keep the comparison free of max-pool ties and CPU-specific rounding.
    model, x = _resnet().double(), untied(photos(64, 2))
    seg = gsw.slic(x, n_segments=30)
    dense = gsw.explain(model, x, 2, method="gradient", segmentation=seg)
    strided = gsw.explain(
        model.to(memory_format=torch.channels_last),
        x.to(memory_format=torch.channels_last),
        2,
        method="gradient",
        segmentation=seg,
    )
    torch.testing.assert_close(dense.segment_scores, strided.segment_scores, rtol=1e-9, atol=1e-12)
    clip, net = torch.rand(2, 3, 4, 16, 16, dtype=torch.float64), TinyCNN(dims=3).double()
    dense = gsw.explain(net, clip, 1, method="gradient", n_segments=12)
    strided = gsw.explain(
        net, clip.to(memory_format=torch.channels_last_3d), 1, method="gradient", n_segments=12
    )
    torch.testing.assert_close(dense.segment_scores, strided.segment_scores, rtol=1e-9, atol=1e-12)


@pytest.mark.paths
def test_data_parallel_wrapper():
    model, x = _resnet(), photos(64, 2)
    wrapped = torch.nn.DataParallel(model)
    for options in (
        {"method": "gradient"},
        {"method": "gradcam", "layer": "layer4"},
        {"method": "gradcam"},
    ):
        a = gsw.explain(model, x, 1, **options)
        b = gsw.explain(wrapped, x, 1, **options)
        torch.testing.assert_close(a.segment_scores, b.segment_scores)


@pytest.mark.paths
def test_batchnorm_in_train_mode_is_explained_in_eval_mode_and_restored():
    # Batched and single runs differ only by rounding when each sample is explained alone
    # (eval-mode BatchNorm); float64 and tie-free inputs make that hold on every CPU.
    model, x = _resnet().double().train(), untied(photos(64, 3))
    stats = model.bn1.running_mean.clone()
    batched = gsw.explain(model, x, 0, method="gradient")
    single = gsw.explain(model, x[:1], 0, method="gradient")
    scale = float(batched.pixel_scores[0].abs().max())
    torch.testing.assert_close(
        single.pixel_scores[0], batched.pixel_scores[0], rtol=1e-9, atol=1e-11 * scale
    )
    assert model.training
    assert model.bn1.training
    assert torch.equal(model.bn1.running_mean, stats)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.paths
def test_autocast_bfloat16_on_cpu():
    model, x = _resnet(), photos(64, 2)
    exact = gsw.explain(model, x, 1, method="gradcam")
    low = gsw.explain(model, x, 1, method="gradcam", autocast=torch.bfloat16)
    assert low.segment_scores.dtype == torch.float32
    corr = torch.corrcoef(
        torch.stack([exact.segment_scores.flatten(), low.segment_scores.flatten()])
    )[0, 1]
    assert corr > 0.9


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["gradient", "gradcam", "integrated_gradients"])
def test_autocast_on_cuda(dtype, method):
    model, x = _resnet("cuda"), photos(64, 2).cuda()
    exact = gsw.explain(
        model, x, 1, method=method, n_segments=30, **({"n_steps": 8} if "integ" in method else {})
    )
    low = gsw.explain(
        model,
        x,
        1,
        method=method,
        n_segments=30,
        autocast=dtype,
        **({"n_steps": 8} if "integ" in method else {}),
    )
    assert low.segment_scores.dtype == torch.float32
    assert torch.isfinite(low.segment_scores).all()
    corr = torch.corrcoef(
        torch.stack([exact.segment_scores.flatten(), low.segment_scores.flatten()])
    )[0, 1]
    assert corr > 0.9


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["gradient", "gradcam", "lime_ig", "guided_backprop"])
def test_cpu_and_cuda_agree(method):
    # float64 and tie-free inputs (see `untied`): in float32 the GPU's convolutions use TF32
    # by default (10-bit mantissas), and its rounding can move a max-pool gradient to the
    # other pixel of a near tie. The first run on an H200 failed so at rtol 1e-3 (up to 5%
    # relative off on small segments); in float64 they agree to the float32 rounding of the
    # returned scores.
    model, x = _resnet().double(), untied(photos(64, 2))
    seg = gsw.slic(x, n_segments=30)
    options = {"n_steps": 8} if method == "lime_ig" else {}
    cpu = gsw.explain(model, x, 2, method=method, segmentation=seg, **options)
    cuda = gsw.explain(
        model.cuda(), x.cuda(), 2, method=method, segmentation=seg.to("cuda"), **options
    )
    scale = float(cpu.segment_scores.abs().max())
    torch.testing.assert_close(
        cuda.segment_scores.cpu(), cpu.segment_scores, rtol=1e-6, atol=1e-6 * scale
    )


def test_swag_segments_follow_the_attribution():
    # A flat grey image: colour says nothing, so plain SLIC gives a grid. The model only
    # looks at a disc, so SWAG's segments should trace the disc's edge.
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - 30.0) ** 2 + (xx - 34.0) ** 2 < 15.0**2).float()

    class DiscModel(torch.nn.Module):
        def forward(self, x):
            inside = (x * disc).flatten(1).sum(1)
            return torch.stack([inside, -inside], 1)

    x = torch.full((1, 3, size, size), 0.5)
    plain = gsw.explain(DiscModel(), x, 0, method="gradient", n_segments=30)
    swag = gsw.explain(DiscModel(), x, 0, method="gradient", n_segments=30, swag=True)
    recall_plain = boundary_recall(plain.labels[0], disc.int(), tolerance=1)
    recall_swag = boundary_recall(swag.labels[0], disc.int(), tolerance=1)
    assert recall_swag > 0.9, (recall_swag, recall_plain)
    assert recall_swag > recall_plain + 0.2, (recall_swag, recall_plain)
    assert is_connected(swag.labels[0])


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet18", (2, 3, 64, 64)),
        ("resnet50", (2, 3, 64, 64)),
        ("mobilenet_v3_small", (2, 3, 64, 64)),
        ("vgg11", (1, 3, 64, 64)),
        ("r3d_18", (1, 3, 8, 56, 56)),
        ("mc3_18", (1, 3, 8, 56, 56)),
        ("r2plus1d_18", (1, 3, 8, 56, 56)),
    ],
)
def test_torchvision_models(name, shape):
    torch.manual_seed(0)
    video = len(shape) == 5
    model = getattr(torchvision.models.video if video else torchvision.models, name)(num_classes=7)
    x = torch.rand(shape)
    for method in ("gradient", "gradcam"):
        expl = gsw.explain(model, x, method=method)
        assert expl.pixel_scores.shape == (shape[0], *shape[2:])
        assert expl.labels.shape == (shape[0], *shape[2:])
        assert torch.isfinite(expl.segment_scores).all()
        if method == "gradient":  # Grad-CAM of a random net may be all zero (its ReLU)
            assert expl.segment_scores.abs().sum() > 0
        else:
            assert expl.pixel_scores.min() >= 0
        assert expl.target.shape == (shape[0],)
        assert int(expl.target.max()) < 7
    assert all(p.grad is None for p in model.parameters())


# Grad-CAM's default layer, found by what the modules output (real torchvision models,
# random weights): the last grid over the input that the class score reaches.
GRADCAM_LAYERS = {
    "resnet18": ("layer4", "[B, K, h, w]", (1, 3, 64, 64)),
    "convnext_tiny": ("features", "[B, K, h, w]", (1, 3, 64, 64)),
    # Swin's stages are channels last; its permute makes the last grid channels first.
    "swin_t": ("permute", "[B, K, h, w]", (1, 3, 64, 64)),
    # The head reads the class token alone: the last block's ln_1, ahead of the attention
    # that mixes the tokens, is the last token grid its score reaches.
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", "[B, 1 + 4*4, D]", (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", list(GRADCAM_LAYERS))
def test_gradcam_default_layer_is_the_last_grid_the_score_reaches(name):
    layer, layout, shape = GRADCAM_LAYERS[name]
    torch.manual_seed(0)
    kwargs = {"image_size": shape[-1]} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(num_classes=5, **kwargs).eval()
    if name == "vit_b_16":  # torchvision starts the ViT head at zero: no score reaches anything
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.rand(shape)
    expl = gsw.explain(model, x, method="gradcam", n_segments=16)
    assert expl.info["layer"] == layer
    assert expl.info["layout"] == layout
    named = gsw.explain(model, x, method="gradcam", segmentation=expl.labels, layer=layer)
    assert torch.equal(named.pixel_scores, expl.pixel_scores)
    assert named.info["layout"] == layout


# More of the zoo (random weights; the timm and Hugging Face ones where installed): the
# layer the probe picks, its layout, and a map that is not zero or constant.
ZOO = {
    "torchvision:efficientnet_b0": ("features", "[B, K, h, w]", (1, 3, 64, 64)),
    "torchvision:regnet_y_400mf": ("trunk_output", "[B, K, h, w]", (1, 3, 64, 64)),
    "torchvision:mobilenet_v3_small": ("features", "[B, K, h, w]", (1, 3, 64, 64)),
    "torchvision:swin_v2_t": ("permute", "[B, K, h, w]", (1, 3, 64, 64)),
    "video:r3d_18": ("layer4", "[B, K, t, h, w]", (1, 3, 8, 64, 64)),
    "video:r2plus1d_18": ("layer4", "[B, K, t, h, w]", (1, 3, 8, 64, 64)),
    "video:mc3_18": ("layer4", "[B, K, t, h, w]", (1, 3, 8, 64, 64)),
    "video:swin3d_t": ("norm", "[B, t, h, w, K]", (1, 3, 8, 64, 64)),
    "timm:vit_tiny_patch16_224": ("blocks.11.norm1", "[B, 1 + 14*14, D]", (1, 3, 224, 224)),
    "timm:deit_tiny_distilled_patch16_224": (
        "blocks.11.norm1",
        "[B, 2 + 14*14, D]",
        (1, 3, 224, 224),
    ),
    "timm:convnext_atto": ("norm_pre", "[B, K, h, w]", (1, 3, 224, 224)),
    "torchvision:maxvit_t": ("blocks.3", "[B, K, h, w]", (1, 3, 224, 224)),
    # MViT's blocks return (tokens, thw); their first norm sees [B, 1 + t*h*w, D] tokens,
    # 16 x 224 x 224 clips pooled to 8 x 7 x 7 (the finest time grid that fits is read).
    "video:mvit_v1_b": ("blocks.15.norm1", "[B, 1 + 8*7*7, D]", (1, 3, 16, 224, 224)),
    "video:mvit_v2_s": ("blocks.15.norm1", "[B, 1 + 8*7*7, D]", (1, 3, 16, 224, 224)),
    "hf:vit": ("vit.layers.1.layernorm_before", "[B, 1 + 4*4, D]", (1, 3, 64, 64)),
}


def _zoo_model(spec):
    family, name = spec.split(":")
    torch.manual_seed(0)
    if family == "torchvision":
        return getattr(torchvision.models, name)(num_classes=5).eval()
    if family == "video":
        return getattr(torchvision.models.video, name)(num_classes=5).eval()
    if family == "timm":
        return (
            pytest.importorskip("timm").create_model(name, pretrained=False, num_classes=5).eval()
        )
    return tiny_hf_vit(image_size=64, patch_size=16, width=64)


@pytest.mark.parametrize("spec", list(ZOO))
def test_gradcam_layers_across_the_model_zoo(spec):
    layer, layout, shape = ZOO[spec]
    model = _zoo_model(spec)
    expl = gsw.explain(model, torch.rand(shape), method="gradcam", n_segments=16)
    assert (expl.info["layer"], expl.info["layout"]) == (layer, layout)
    assert expl.info["degenerate"].tolist() == [False]
    assert float(expl.pixel_scores.std()) > 0


# Every method on the transformers (random weights, small inputs): each gives a finite map
# that is not constant, or, for guided backprop, a message naming the activation found.
# (shape, target): a random Swin's CAMs over its last 3 x 3 grid are all zero for some
# classes (flagged as degenerate), not for class 0.
TRANSFORMERS = {"hf:vit": ((1, 3, 64, 64), 2), "torchvision:swin_t": ((1, 3, 96, 96), 0)}
FAST_OPTIONS = {
    "integrated_gradients": {"n_steps": 2},
    "lime_ig": {"n_steps": 2},
    "banzhaf": {"n_samples": 2},
    "smoothgrad": {"n_samples": 2},
    "scorecam": {"batch_size": 256},
}


@pytest.mark.parametrize("spec", list(TRANSFORMERS))
def test_every_method_runs_on_transformers(spec):
    model = _zoo_model(spec)
    if spec == "torchvision:swin_t":  # torchvision starts the head at zero
        torch.nn.init.normal_(model.head.weight, std=0.02)
    shape, target = TRANSFORMERS[spec]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    seg = gsw.slic(x, n_segments=16)
    for method in gsw.METHODS:
        if method == "scorecam" and spec == "torchvision:swin_t":
            continue  # 768 model runs; the ViT's 64 channels serve
        if method == "guided_backprop":
            with pytest.raises(ValueError, match=r"needs nn.ReLU modules.*GELU"):
                gsw.explain(model, x, method=method, segmentation=seg)
            continue
        options = FAST_OPTIONS.get(method, {})
        expl = gsw.explain(model, x, target, method=method, segmentation=seg, **options)
        assert torch.isfinite(expl.pixel_scores).all(), method
        assert float(expl.pixel_scores.std()) > 0, method
    for region, options in ((gsw.lime, {"n_samples": 16}), (gsw.occlusion, {})):
        expl = region(model, x, seg, target, **options)
        assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_inputs_follow_the_models_dtype(dtype):
    # As uint8 images become float: a float32 model explains float64, float16 and bfloat16
    # images (the cast is part of the differentiated function), and a float64 model
    # float32 images, in the model's precision.
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(2, 3, 16, 16).to(dtype)
    seg = gsw.slic(x.float(), n_segments=8)
    # The attribution comes back in the inputs' dtype: 8 (bfloat16) or 11 (float16) bits,
    # and segment means of values of both signs lose a little more.
    rtol = 1e-5 if dtype == torch.float64 else 4 * torch.finfo(dtype).eps
    for method in ("gradient", "gradcam", "integrated_gradients"):
        ours = gsw.explain(model, x, method=method, segmentation=seg)
        as_float = gsw.explain(model, x.float(), method=method, segmentation=seg)
        assert torch.equal(ours.target, as_float.target)
        scale = float(as_float.segment_scores.abs().max())
        torch.testing.assert_close(
            ours.segment_scores.float(), as_float.segment_scores, rtol=rtol, atol=rtol * scale
        )
    assert torch.isfinite(gsw.lime(model, x, seg, n_samples=16).segment_scores).all()
    double = TinyCNN().double().eval()
    double.load_state_dict(model.state_dict())
    ours = gsw.explain(double, x.float(), method="gradient", segmentation=seg)
    torch.testing.assert_close(
        ours.segment_scores.float(),
        gsw.explain(model, x.float(), method="gradient", segmentation=seg).segment_scores,
    )


class _FrameSequence(torch.nn.Module):
    """A 3-D convolution, then a sequence of per-frame features [B, 8, D] through a linear
    layer and a norm, pooled over time: the sequence is no token grid over the clip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 16, (2, 4, 4), stride=(2, 4, 4))
        self.linear = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.conv(x).mean((3, 4)).transpose(1, 2)  # [B, 8, 16]
        return self.head(self.norm(self.linear(frames)).mean(1))


def test_short_sequences_are_not_read_as_token_grids():
    from gswfast.attribution.gradcam import read_layout

    torch.manual_seed(0)
    expl = gsw.explain(_FrameSequence(), torch.rand(1, 3, 16, 64, 64), method="gradcam")
    assert (expl.info["layer"], expl.info["layout"]) == ("conv", "[B, K, t, h, w]")
    # a pooled token or a few features: no grid (and no division by zero)
    assert read_layout((1, 1, 768), (8, 224, 224)) is None
    assert read_layout((1, 3, 16), (16, 112, 112)) is None
    assert read_layout((1, 1 + 4, 64), (64, 64)) is None  # 2 x 2: coarser than 32 px patches
    assert read_layout((1, 1 + 8 * 7 * 7, 96), (16, 224, 224)).describe() == "[B, 1 + 8*7*7, D]"


def test_vit_gradcam_equals_pytorch_grad_cam_with_its_reshape_transform():
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _zoo_model("timm:vit_tiny_patch16_224")
    x = torch.rand(2, 3, 224, 224)

    def reshape_transform(tokens):
        grid = tokens[:, 1:].reshape(tokens.shape[0], 14, 14, tokens.shape[2])
        return grid.permute(0, 3, 1, 2)

    ours = gsw.explain(model, x, [1, 3], method="gradcam", n_segments=16)
    assert ours.info["layer"] == "blocks.11.norm1"
    peer = grad_cam.GradCAM(
        model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape_transform
    )
    theirs = peer(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    for b in range(2):
        pair = torch.stack(
            [
                ours.pixel_scores[b].flatten().double(),
                torch.from_numpy(theirs[b]).flatten().double(),
            ]
        )
        assert float(torch.corrcoef(pair)[0, 1]) >= 0.99


def test_gradcam_reads_swin_stages_channels_last_and_tokens_with_reshape():
    torch.manual_seed(0)
    swin = torchvision.models.swin_t(num_classes=5).eval()
    x = torch.rand(1, 3, 64, 64)
    last = gsw.explain(swin, x, method="gradcam", layer="features.7", n_segments=16)
    assert last.info["layout"] == "[B, h, w, K]"
    by_hand = gsw.explain(
        swin,
        x,
        method="gradcam",
        layer="features.7",
        segmentation=last.labels,
        reshape=lambda a: a.permute(0, 3, 1, 2),
    )
    assert by_hand.info["layout"] == "reshape="
    torch.testing.assert_close(by_hand.pixel_scores, last.pixel_scores)
    with pytest.raises(ValueError, match=r"reshape: expected it to return \[B, K, h, w\]"):
        gsw.explain(swin, x, method="gradcam", layer="features.7", reshape=lambda a: a[0])
    with pytest.raises(ValueError, match=r"is no grid over the input.*pass reshape="):
        gsw.explain(swin, x, method="gradcam", layer="avgpool")


def test_s3d_gradcam_is_not_zero():
    # S3D ends in a 1x1x1 convolution used as the classifier after global pooling; its
    # Grad-CAM once gave all-zero scores. The default layer now has a grid the score reaches.
    model = torchvision.models.video.s3d(num_classes=5).eval()
    x = torch.rand(1, 3, 16, 224, 224)
    expl = gsw.explain(model, x, method="gradcam")
    assert expl.info["layer"] == "features"
    assert expl.pixel_scores.shape == (1, 16, 224, 224)
    assert expl.segment_scores.abs().sum() > 0


def test_a_zero_gradcam_map_warns_and_is_recorded():
    model = TinyCNN()
    with torch.no_grad():  # ReLU of all-negative maps: Grad-CAM is zero everywhere
        model.conv2.bias.fill_(-100.0)
    with pytest.warns(RuntimeWarning, match=r"gradcam on layer 'relu2' is zero or constant"):
        expl = gsw.explain(model, torch.rand(2, 3, 16, 16), 0, method="gradcam", n_segments=8)
    assert expl.info["degenerate"].tolist() == [True, True]


def test_clips_are_scored_per_frame():
    model = TinyCNN(dims=3)
    clip = torch.rand(2, 3, 6, 32, 32)
    expl = gsw.explain(model, clip, 1, method="gradient", n_segments=40)
    assert expl.labels.shape == (2, 6, 32, 32)
    assert expl.heatmap().shape == (2, 6, 32, 32)
    assert expl.top_k(2).shape == (2, 6, 32, 32)
    assert expl.overlay(clip).shape == (2, 3, 6, 32, 32)
    per_frame = gsw.explain(
        model, clip, 1, method="gradient", slic_options={"mode": "per_frame"}, n_segments=8
    )
    assert per_frame.segmentation.mode == "per_frame"


def test_explainer_is_reusable_and_keeps_the_layer():
    model = _resnet()
    explainer = gsw.Explainer(model, "gradcam")
    first = explainer(photos(64, 2), 1)
    layer = explainer._attributor._layer
    second = explainer(photos(64, 2), 1)
    assert explainer._attributor._layer is layer
    torch.testing.assert_close(first.segment_scores, second.segment_scores)


def test_bad_input():
    model, x = _resnet(), photos(64, 2)
    with pytest.raises(ValueError, match="target: class 10 is out of range"):
        gsw.explain(model, x, 10, method="gradient")
    with pytest.raises(ValueError, match=r"inputs: expected images \[B, C, H, W\]"):
        gsw.explain(model, x[0], 1, method="gradient")
    with pytest.raises(ValueError, match="inputs: expected a non-empty"):
        gsw.explain(model, x[:0], 1, method="gradient")
    with pytest.raises(TypeError, match="inputs: expected uint8 or a float dtype"):
        gsw.explain(model, x.long(), 1, method="gradient")
    with pytest.raises(ValueError, match="inputs: contains NaN"):
        gsw.explain(model, torch.where(x > 0.5, float("nan"), x), 1, method="gradient")
    with pytest.raises(ValueError, match=r"model: expected logits \[B, classes\]"):
        gsw.explain(torch.nn.Conv2d(3, 2, 1), x, 1, method="gradient")
    with pytest.raises(ValueError, match="does not depend differentiably"):
        gsw.explain(_NoGrad(model), x, 1, method="gradient")
    with pytest.raises(ValueError, match="layer: the model has no module named 'layer9'"):
        gsw.explain(model, x, 1, method="gradcam", layer="layer9")
    with pytest.raises(ValueError, match=r"segmentation: expected labels of shape \(2, 64, 64\)"):
        gsw.explain(
            model, x, 1, method="gradient", segmentation=torch.zeros(2, 32, 32, dtype=torch.int32)
        )
    with pytest.raises(ValueError, match="segmentation: labels must be >= 0"):
        gsw.explain(
            model,
            x,
            1,
            method="gradient",
            segmentation=torch.full((2, 64, 64), -1, dtype=torch.int32),
        )
    with pytest.raises(
        TypeError, match="segmentation: expected a Segmentation or int32/int64 labels"
    ):
        gsw.explain(model, x, 1, method="gradient", segmentation=torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="reduce: expected one of"):
        gsw.explain(model, x, 1, method="gradient", reduce="median")
    with pytest.raises(ValueError, match="channel_reduce: expected one of"):
        gsw.explain(model, x, 1, method="gradient", channel_reduce="mean")
    with pytest.raises(ValueError, match="swag: the segment_mean baseline"):
        gsw.explain(model, x, 1, method="lime_ig", swag=True)
    with pytest.raises(ValueError, match="segmentation: swag=True builds its own"):
        gsw.explain(
            model,
            x,
            1,
            method="gradient",
            swag=True,
            segmentation=torch.zeros(2, 64, 64, dtype=torch.int32),
        )
    with pytest.raises(ValueError, match="attribution: expected"):
        gsw.explain(None, x, 1, attribution=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="model: None needs an attribution"):
        gsw.explain(None, x, 1)
    with pytest.raises(ValueError, match="autocast: expected None"):
        gsw.explain(model, x, 1, autocast=torch.float64)
    with pytest.raises(ValueError, match="k: expected an int >= 0"):
        gsw.explain(model, x, 1, method="gradient").top_k(-1)
    with pytest.raises(ValueError, match="images: expected"):
        gsw.explain(model, x, 1, method="gradient").overlay(x[:, :, :32])


def test_inference_mode_and_no_grad_callers():
    model, x = _resnet(), photos(64, 1)
    expected = gsw.explain(model, x, 1, method="gradient").segment_scores
    with torch.no_grad():
        torch.testing.assert_close(
            gsw.explain(model, x, 1, method="gradient").segment_scores, expected
        )
    with torch.inference_mode():
        inside = gsw.explain(model, x.clone(), 1, method="gradient").segment_scores
    torch.testing.assert_close(inside, expected)


class _NoGrad(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


class _FlattensWithView(torch.nn.Module):
    """A model that cannot take channels-last inputs (``view`` after a convolution)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return h.view(h.shape[0], -1)[:, :3]


@pytest.mark.paths
def test_models_that_need_contiguous_inputs_fall_back_once():
    x, model = photos(16, 2), _FlattensWithView()
    explainer = gsw.Explainer(model, "gradient", n_segments=4)
    with pytest.warns(RuntimeWarning, match="failed on a channels-last input"):
        first = explainer(x, 1)
    second = explainer(x, 1)  # no second attempt, no warning
    torch.testing.assert_close(first.segment_scores, second.segment_scores)
    forced = gsw.Explainer(model, "gradient", n_segments=4, channels_last=False)(x, 1)
    torch.testing.assert_close(forced.segment_scores, first.segment_scores)
    with pytest.raises(RuntimeError, match="view size"):
        gsw.Explainer(model, "gradient", n_segments=4, channels_last=True)(x, 1)


_SCORES = {
    "probability": lambda z: torch.softmax(z, 1),
    "log_probability": lambda z: torch.log_softmax(z, 1),
}


class _Wrapped(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, function) -> None:
        super().__init__()
        self.model, self.function = model, function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(self.model(x))


@pytest.mark.parametrize("output", ["probability", "log_probability"])
@pytest.mark.parametrize("method", ["gradient", "lime_ig", "gradcam", "banzhaf"])
@pytest.mark.paths
def test_output_equals_explaining_the_wrapped_model(output, method):
    model, x = TinyCNN().double(), untied(photos(32, 2))
    seg = gsw.slic(x, n_segments=12)
    ours = gsw.explain(model, x, [1, 2], method=method, segmentation=seg, output=output)
    wrapped = _Wrapped(model, _SCORES[output])
    expected = gsw.explain(wrapped, x, [1, 2], method=method, segmentation=seg)
    torch.testing.assert_close(ours.segment_scores, expected.segment_scores)
    predicted = gsw.explain(model, x, method=method, segmentation=seg, output=output)
    assert torch.equal(predicted.target, model(x).argmax(1))


@pytest.mark.paths
def test_lime_output_equals_regressing_the_wrapped_model():
    model, x = TinyCNN().double(), untied(photos(32, 2))
    seg = gsw.slic(x, n_segments=12)
    ours = gsw.lime(model, x, seg, [1, 2], n_samples=40, output="probability")
    wrapped = _Wrapped(model, _SCORES["probability"])
    expected = gsw.lime(wrapped, x, seg, [1, 2], n_samples=40)
    torch.testing.assert_close(ours.segment_scores, expected.segment_scores)


def test_bad_output_names_the_argument():
    model, x = TinyCNN(), photos(32, 1)
    with pytest.raises(ValueError, match="output: expected one of"):
        gsw.Explainer(model, "gradient", output="softmax")
    with pytest.raises(ValueError, match="output: expected one of"):
        gsw.lime(model, x, n_samples=8, output="prob")
    with pytest.raises(ValueError, match="output: 'probability' needs class targets"):
        gsw.explain(model, x, lambda out: out[:, 0], method="gradient", output="probability")
    logits = gsw.explain(model, x, 0, method="gradient", output="logits")
    assert torch.equal(
        logits.segment_scores, gsw.explain(model, x, 0, method="gradient").segment_scores
    )
