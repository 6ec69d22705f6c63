"""gswfast.explain against a bare forward+backward, Captum and pytorch-grad-cam, in one run.

Overhead (issue 4): resnet18, batch 16, 224x224 photos on the CPU (resnet50, batch 64 on
CUDA). ``bare`` is what any gradient explanation must at least pay: one forward pass and
the backward pass to the input for the predicted class (``torch.autograd.grad``).
``gswfast`` is the whole pipeline: SLIC (50 segments), the attribution, channel
reduction and segment pooling. Goal: at most 1.25x ``bare`` for ``gradient`` and ``gradcam``.

Video: r2plus1d_18 on 16x112x112 clips with the ``gradient`` method, SLIC supervoxels
included; ``clips_per_s`` in extra_info (CUDA: batch 16 under float16 autocast).

Peers, given the same segmentation: Captum's ``IntegratedGradients`` (same steps, same
internal batch) pooled with ``torch.index_add_``, and pytorch-grad-cam's ``GradCAM`` on the
same layer (it returns numpy maps) pooled the same way.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from timing import cuda_timed

import gswfast as gsw
from gswfast.testing import PYTORCH_GRAD_CAM_CLASSES, photos

pytest.importorskip("skimage.data")

CUDA_REPEAT = 5


def _photos(batch: int, size: int = 224, device: str = "cpu") -> torch.Tensor:
    return photos(size, batch).to(device)


def _model(name: str, device: str = "cpu", video: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    zoo = torchvision.models.video if video else torchvision.models
    return getattr(zoo, name)().to(device).eval()


def bare_forward_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The floor of any gradient explanation: forward, backward to the input."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), x)
    return grad


def index_add_pool(pixel: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean per segment with plain torch, as a user of Captum or pytorch-grad-cam would."""
    b = pixel.shape[0]
    flat = (
        labels.long()
        + k * torch.arange(b, device=labels.device).view(-1, *[1] * (labels.dim() - 1))
    ).flatten()
    sums = torch.zeros(b * k, device=pixel.device).index_add_(0, flat, pixel.flatten().float())
    counts = torch.zeros(b * k, device=pixel.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.float32)
    )
    return (sums / counts.clamp(min=1)).view(b, k)


def _record(benchmark, role: str, items: int = 1, unit: str = "images") -> None:
    benchmark.extra_info.update(
        role=role, threads=torch.get_num_threads(), **{f"{unit}_per_call": items}
    )


def _rate(benchmark, items: int, unit: str) -> None:
    if benchmark.stats is not None:  # absent with --benchmark-disable
        benchmark.extra_info[f"{unit}_per_s"] = items / benchmark.stats.stats.median


# ------------------------------------------------------------------ CPU overhead


@pytest.fixture(scope="module")
def resnet18_batch16():
    return _model("resnet18"), _photos(16)


@pytest.mark.benchmark(min_rounds=9)  # a ratio of two ~0.5 s timings: fewer rounds were noisy
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cpu_overhead_bare(benchmark, resnet18_batch16, method):
    benchmark.group = f"cpu-explain-overhead-{method}-resnet18-b16"
    model, x = resnet18_batch16
    benchmark(bare_forward_backward, model, x)
    _record(benchmark, "bare_forward_backward", 16)


@pytest.mark.benchmark(min_rounds=9)
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cpu_overhead_gswfast(benchmark, resnet18_batch16, method):
    benchmark.group = f"cpu-explain-overhead-{method}-resnet18-b16"
    model, x = resnet18_batch16
    expl = benchmark(gsw.explain, model, x, method=method)
    _record(benchmark, "gswfast", 16)
    assert expl.segment_scores.shape[0] == 16
    assert torch.isfinite(expl.segment_scores).all()


# ------------------------------------------------------------------ CPU video


@pytest.fixture(scope="module")
def r2plus1d_clips():
    torch.manual_seed(0)
    frames = _photos(2, 112)  # two photos, each panned over 16 frames
    clips = torch.stack(
        [torch.stack([torch.roll(f, shifts=2 * t, dims=-1) for t in range(16)], 1) for f in frames]
    )
    return _model("r2plus1d_18", video=True), clips


@pytest.mark.benchmark(group="cpu-explain-video-r2plus1d_18-16x112x112")
def bench_cpu_video_bare(benchmark, r2plus1d_clips):
    model, clips = r2plus1d_clips
    benchmark.pedantic(bare_forward_backward, (model, clips), rounds=3, warmup_rounds=1)
    _record(benchmark, "bare_forward_backward", 2, "clips")
    _rate(benchmark, 2, "clips")


@pytest.mark.benchmark(group="cpu-explain-video-r2plus1d_18-16x112x112")
def bench_cpu_video_gswfast(benchmark, r2plus1d_clips):
    model, clips = r2plus1d_clips
    expl = benchmark.pedantic(
        gsw.explain, (model, clips), {"method": "gradient"}, rounds=3, warmup_rounds=1
    )
    _record(benchmark, "gswfast", 2, "clips")
    _rate(benchmark, 2, "clips")
    assert expl.labels.shape == (2, 16, 112, 112)


# ------------------------------------------------------------------ peers (CPU)


@pytest.fixture(scope="module")
def peer_inputs():
    model, x = _model("resnet18"), _photos(4)
    return model, x, gsw.slic(x, n_segments=50)


@pytest.mark.benchmark(group="cpu-integrated-gradients-resnet18-b4-16steps")
def bench_cpu_ig_gswfast(benchmark, peer_inputs):
    model, x, seg = peer_inputs
    expl = benchmark.pedantic(
        gsw.explain,
        (model, x, 1),
        dict(method="integrated_gradients", n_steps=16, internal_batch_size=64, segmentation=seg),
        rounds=3,
        warmup_rounds=1,
    )
    _record(benchmark, "gswfast", 4)
    assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.benchmark(group="cpu-integrated-gradients-resnet18-b4-16steps")
def bench_cpu_ig_captum(benchmark, peer_inputs):
    IntegratedGradients = pytest.importorskip("captum.attr").IntegratedGradients

    model, x, seg = peer_inputs
    k = int(seg.num_segments.max())
    ig = IntegratedGradients(model)

    def captum_and_pool():
        attr = ig.attribute(x, target=1, n_steps=16, internal_batch_size=64)
        return index_add_pool(attr.sum(1), seg.labels, k)

    scores = benchmark.pedantic(captum_and_pool, rounds=3, warmup_rounds=1)
    _record(benchmark, "captum_integrated_gradients", 4)
    assert scores.shape == (4, k)


@pytest.fixture(scope="module")
def gradcam_inputs():
    model, x = _model("resnet18"), _photos(16)
    return model, x, gsw.slic(x, n_segments=50)


@pytest.mark.benchmark(group="cpu-gradcam-resnet18-b16")
def bench_cpu_gradcam_gswfast(benchmark, gradcam_inputs):
    model, x, seg = gradcam_inputs
    expl = benchmark(gsw.explain, model, x, 1, method="gradcam", layer="layer4.1", segmentation=seg)
    _record(benchmark, "gswfast", 16)
    assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.benchmark(group="cpu-gradcam-resnet18-b16")
def bench_cpu_gradcam_pytorch_grad_cam(benchmark, gradcam_inputs):
    GradCAM = pytest.importorskip("pytorch_grad_cam").GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, seg = gradcam_inputs
    k = int(seg.num_segments.max())
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    targets = [ClassifierOutputTarget(1)] * x.shape[0]

    def grad_cam_and_pool():
        maps = torch.from_numpy(cam(input_tensor=x, targets=targets))
        return index_add_pool(maps, seg.labels, k)

    scores = benchmark(grad_cam_and_pool)
    _record(benchmark, "pytorch_grad_cam", 16)
    assert scores.shape == (16, k)
    for p in model.parameters():
        p.grad = None  # pytorch-grad-cam's backward accumulates parameter gradients


# Transformers: Grad-CAM on the layer pytorch-grad-cam's documentation names for them (the
# last block's first norm), which is gswfast's default too; pytorch-grad-cam reads the
# tokens through a reshape_transform. Random weights (the head drawn, not torchvision's
# zeros, so that the class score reaches the tokens).
TRANSFORMER_LAYERS = {
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", "tokens"),
    "swin_t": ("features.7.1.norm1", "channels_last"),
}


@pytest.fixture(scope="module", params=list(TRANSFORMER_LAYERS))
def transformer_inputs(request):
    name = request.param
    model = _model(name)
    head = model.heads.head if name == "vit_b_16" else model.head
    torch.nn.init.normal_(head.weight, std=0.02)
    x = _photos(4)
    return name, model, x, gsw.slic(x, n_segments=50)


def _transformer_reshape(kind: str):
    if kind == "tokens":  # [B, 1 + 14*14, D] -> [B, D, 14, 14]
        return lambda t: t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)
    return lambda t: t.permute(0, 3, 1, 2)  # [B, 7, 7, C] -> [B, C, 7, 7]


@pytest.mark.parametrize("method", ["gradcam", "gradient"])
def bench_cpu_transformer_gswfast(benchmark, transformer_inputs, method):
    # in the group of its peer: pytorch-grad-cam for Grad-CAM, Captum's Saliency below
    benchmark.group = f"cpu-{method}-transformers-b4"
    name, model, x, seg = transformer_inputs
    layer = {"layer": TRANSFORMER_LAYERS[name][0]} if method == "gradcam" else {}
    expl = benchmark.pedantic(
        gsw.explain,
        (model, x, 1),
        dict(method=method, segmentation=seg, **layer),
        rounds=3,
        warmup_rounds=1,
    )
    _record(benchmark, f"gswfast_{name}", 4)
    assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.benchmark(group="cpu-gradcam-transformers-b4")
def bench_cpu_gradcam_transformer_pytorch_grad_cam(benchmark, transformer_inputs):
    GradCAM = pytest.importorskip("pytorch_grad_cam").GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, model, x, seg = transformer_inputs
    layer, kind = TRANSFORMER_LAYERS[name]
    k = int(seg.num_segments.max())
    cam = GradCAM(
        model=model,
        target_layers=[model.get_submodule(layer)],
        reshape_transform=_transformer_reshape(kind),
    )
    targets = [ClassifierOutputTarget(1)] * x.shape[0]

    def grad_cam_and_pool():
        maps = torch.from_numpy(cam(input_tensor=x, targets=targets))
        return index_add_pool(maps, seg.labels, k)

    scores = benchmark.pedantic(grad_cam_and_pool, rounds=3, warmup_rounds=1)
    _record(benchmark, f"pytorch_grad_cam_{name}", 4)
    assert scores.shape == (4, k)
    for p in model.parameters():
        p.grad = None  # pytorch-grad-cam's backward accumulates parameter gradients


@pytest.mark.benchmark(group="cpu-gradient-transformers-b4")
def bench_cpu_gradient_transformer_captum(benchmark, transformer_inputs):
    Saliency = pytest.importorskip("captum.attr").Saliency

    name, model, x, seg = transformer_inputs
    k = int(seg.num_segments.max())
    saliency = Saliency(model)

    def saliency_and_pool():
        attr = saliency.attribute(x, target=1, abs=True)
        return index_add_pool(attr.sum(1), seg.labels, k)

    scores = benchmark.pedantic(saliency_and_pool, rounds=3, warmup_rounds=1)
    _record(benchmark, f"captum_saliency_{name}", 4)
    assert scores.shape == (4, k)


# The rest of the CAM family against pytorch-grad-cam's classes: resnet18 on layer4, the
# same target and segments. Score-CAM runs the model once per channel (512 of layer4) and
# sample: one image, one round.
CAM_PEERS = {m: peer for m, peer in PYTORCH_GRAD_CAM_CLASSES.items() if m != "gradcam"}


def _cam_batch(method: str) -> int:
    return 1 if method == "scorecam" else 4


@pytest.fixture(scope="module")
def cam_inputs():
    model, x = _model("resnet18"), _photos(4)
    return model, x, gsw.slic(x, n_segments=50)


def _cam_rounds(method: str) -> dict[str, int]:
    return (
        {"rounds": 1, "warmup_rounds": 0}
        if method == "scorecam"
        else {"rounds": 3, "warmup_rounds": 1}
    )


@pytest.mark.parametrize("method", list(CAM_PEERS))
def bench_cpu_cam_family_gswfast(benchmark, cam_inputs, method):
    benchmark.group = f"cpu-{method}-resnet18-b{_cam_batch(method)}"
    model, x, seg = cam_inputs
    n = _cam_batch(method)
    expl = benchmark.pedantic(
        gsw.explain,
        (model, x[:n], 1),
        dict(method=method, layer="layer4", segmentation=seg.labels[:n]),
        **_cam_rounds(method),
    )
    _record(benchmark, "gswfast", n)
    assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.parametrize("method", list(CAM_PEERS))
def bench_cpu_cam_family_pytorch_grad_cam(benchmark, cam_inputs, method):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    benchmark.group = f"cpu-{method}-resnet18-b{_cam_batch(method)}"
    model, x, seg = cam_inputs
    n = _cam_batch(method)
    k = int(seg.num_segments.max())
    cam = getattr(grad_cam, CAM_PEERS[method])(model=model, target_layers=[model.layer4])
    targets = [ClassifierOutputTarget(1)] * n

    def cam_and_pool():
        maps = torch.from_numpy(cam(input_tensor=x[:n], targets=targets))
        return index_add_pool(maps, seg.labels[:n], k)

    scores = benchmark.pedantic(cam_and_pool, **_cam_rounds(method))
    _record(benchmark, "pytorch_grad_cam", n)
    assert scores.shape == (n, k)
    for p in model.parameters():
        p.grad = None  # pytorch-grad-cam's backward accumulates parameter gradients


# ------------------------------------------------------------------ CUDA


@pytest.fixture(scope="module")
def resnet50_batch64_cuda():
    return _model("resnet50", "cuda"), _photos(64, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cuda_overhead_bare(benchmark, resnet50_batch64_cuda, method):
    benchmark.group = f"cuda-explain-overhead-{method}-resnet50-b64"
    model, x = resnet50_batch64_cuda
    benchmark(cuda_timed(lambda: bare_forward_backward(model, x), CUDA_REPEAT))
    _record(benchmark, "bare_forward_backward", 64)
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cuda_overhead_gswfast(benchmark, resnet50_batch64_cuda, method):
    benchmark.group = f"cuda-explain-overhead-{method}-resnet50-b64"
    model, x = resnet50_batch64_cuda
    explainer = gsw.Explainer(model, method, validate=False)
    benchmark(cuda_timed(lambda: explainer(x), CUDA_REPEAT))
    _record(benchmark, "gswfast", 64)
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT


@pytest.fixture(scope="module")
def gradcam_inputs_cuda():
    model, x = _model("resnet18", "cuda"), _photos(16, device="cuda")
    return model, x, gsw.slic(x, n_segments=50)


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-gradcam-resnet18-b16")
def bench_cuda_gradcam_gswfast(benchmark, gradcam_inputs_cuda):
    model, x, seg = gradcam_inputs_cuda
    explainer = gsw.Explainer(model, "gradcam", layer="layer4.1", validate=False)
    benchmark(cuda_timed(lambda: explainer(x, 1, seg), CUDA_REPEAT))
    _record(benchmark, "gswfast", 16)
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-gradcam-resnet18-b16")
def bench_cuda_gradcam_pytorch_grad_cam(benchmark, gradcam_inputs_cuda):
    GradCAM = pytest.importorskip("pytorch_grad_cam").GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, seg = gradcam_inputs_cuda
    k = int(seg.num_segments.max())
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    targets = [ClassifierOutputTarget(1)] * x.shape[0]

    def grad_cam_and_pool():  # its maps come back as numpy: pool them where a user would
        maps = torch.from_numpy(cam(input_tensor=x, targets=targets)).cuda()
        return index_add_pool(maps, seg.labels, k)

    benchmark(cuda_timed(grad_cam_and_pool, CUDA_REPEAT))
    _record(benchmark, "pytorch_grad_cam", 16)
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT
    for p in model.parameters():
        p.grad = None


@pytest.mark.cuda
@pytest.mark.parametrize("role", ["gswfast", "captum_integrated_gradients"])
def bench_cuda_ig(benchmark, role):
    benchmark.group = "cuda-integrated-gradients-resnet50-b16-32steps"
    model, x = _model("resnet50", "cuda"), _photos(16, device="cuda")
    seg = gsw.slic(x, n_segments=50)
    k = int(seg.num_segments.max())
    if role == "gswfast":
        explainer = gsw.Explainer(
            model, "integrated_gradients", n_steps=32, internal_batch_size=128, validate=False
        )
        fn = functools.partial(explainer, x, 1, seg)
    else:
        ig = pytest.importorskip("captum.attr").IntegratedGradients(model)

        def fn():
            attr = ig.attribute(x, target=1, n_steps=32, internal_batch_size=128)
            return index_add_pool(attr.sum(1), seg.labels, k)

    benchmark(cuda_timed(fn, 1))
    _record(benchmark, role, 16)


@pytest.mark.cuda
@pytest.mark.parametrize("role", ["bare_forward_backward", "gswfast"])
def bench_cuda_video_amp(benchmark, role):
    benchmark.group = "cuda-explain-video-r2plus1d_18-b16-fp16"
    model = _model("r2plus1d_18", "cuda", video=True)
    clips = torch.rand(16, 3, 16, 112, 112, device="cuda")
    if role == "gswfast":
        explainer = gsw.Explainer(model, "gradient", autocast=torch.float16, validate=False)
        fn = functools.partial(explainer, clips)
    else:

        def fn():
            with torch.autocast("cuda", dtype=torch.float16):
                return bare_forward_backward(model, clips)

    benchmark(cuda_timed(fn, CUDA_REPEAT))
    _record(benchmark, role, 16, "clips")
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT
    if benchmark.stats is not None:
        benchmark.extra_info["clips_per_s"] = 16 * CUDA_REPEAT / benchmark.stats.stats.median
