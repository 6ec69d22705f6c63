"""gsw.lime against the real lime package, in the same run.

Issue 5: LIME with 1000 samples on resnet18 (random weights), one 224x224 photo, the same
50 SLIC segments for both, batches of 64 model rows. Goal: gsw.lime at least 3x faster
than the lime package on this 2-core CPU. ``gswfast_bfloat16`` runs the model under
bfloat16 autocast (a precision trade; ``benchmarks/lime_agreement.py`` measures what it
costs in agreement with float32 LIME).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from timing import cuda_timed

import gswfast as gsw
from gswfast.testing import lime_weights, photos

N_SAMPLES = 1000
BATCH = 64


@pytest.fixture(scope="module")
def one_photo():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = photos(224, 1)
    return model, x, gsw.slic(x, n_segments=50)


def _record(benchmark, role):
    benchmark.extra_info.update(role=role, threads=torch.get_num_threads(), samples=N_SAMPLES)


@pytest.mark.benchmark(group="cpu-lime-resnet18-224-1000-samples")
def bench_cpu_lime_package(benchmark, one_photo):
    pytest.importorskip("lime")
    model, x, seg = one_photo
    weights = benchmark.pedantic(
        lime_weights,
        (model, x[0], seg.labels[0], 1),
        dict(n_samples=N_SAMPLES, batch_size=BATCH),
        rounds=2,
        warmup_rounds=0,
    )
    _record(benchmark, "lime_package")
    assert weights.shape[0] == int(seg.num_segments[0])


@pytest.mark.benchmark(group="cpu-lime-resnet18-224-1000-samples")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def bench_cpu_gsw_lime(benchmark, one_photo, precision):
    model, x, seg = one_photo
    autocast = torch.bfloat16 if precision == "bfloat16" else None
    expl = benchmark.pedantic(
        gsw.lime,
        (model, x, seg, 1),
        dict(n_samples=N_SAMPLES, batch_size=BATCH, autocast=autocast),
        rounds=2,
        warmup_rounds=1,
    )
    _record(benchmark, "gswfast" if precision == "float32" else "gswfast_bfloat16")
    assert torch.isfinite(expl.segment_scores).all()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["float32", "float16"])
def bench_cuda_gsw_lime(benchmark, precision):
    benchmark.group = "cuda-lime-resnet18-224-1000-samples-b16"
    torch.manual_seed(0)
    model = torchvision.models.resnet18().cuda().eval()
    x = photos(224, 16).cuda()
    seg = gsw.slic(x, n_segments=50)
    autocast = torch.float16 if precision == "float16" else None
    benchmark(
        cuda_timed(
            lambda: gsw.lime(
                model,
                x,
                seg,
                1,
                n_samples=N_SAMPLES,
                batch_size=512,
                autocast=autocast,
                validate=False,
            ),
            1,
        )
    )
    _record(benchmark, "gswfast" if precision == "float32" else "gswfast_float16")
    benchmark.extra_info["images_per_call"] = 16


@pytest.mark.cuda
@pytest.mark.parametrize("role", ["lime_package", "gswfast"])
def bench_cuda_one_photo(benchmark, role):
    """One photo, the model on the GPU for both: the package perturbs in numpy on the host
    and sends each batch to the GPU; gsw.lime keeps masks, images and the fit on the device."""
    pytest.importorskip("lime")
    benchmark.group = "cuda-lime-resnet18-224-1000-samples-one-photo"
    torch.manual_seed(0)
    model = torchvision.models.resnet18().cuda().eval()
    x = photos(224, 1).cuda()
    seg = gsw.slic(x, n_segments=50)
    if role == "lime_package":
        labels = seg.labels[0].cpu()
        benchmark.pedantic(
            lime_weights,
            (model, x[0].cpu(), labels, 1),
            dict(n_samples=N_SAMPLES, batch_size=BATCH),
            rounds=2,
            warmup_rounds=1,
        )
    else:
        run = lambda: gsw.lime(model, x, seg, 1, n_samples=N_SAMPLES, batch_size=BATCH)  # noqa: E731
        benchmark.pedantic(cuda_timed(run, 1), rounds=3, warmup_rounds=1)
    _record(benchmark, role)
