"""explain-dataset throughput for 1 and 2 processes (torchrun), in the same run.

Issue 8: 32 synthetic 112x112 images, resnet18 (random weights), integrated gradients
with 8 steps, batches of 8, through the real command (``python -m gswfast
explain-dataset``, under ``torch.distributed.run --standalone`` for 2 processes), each
process with one thread; ``1 process, 2 threads`` uses the same cores the other way.
extra_info holds items/s; the scaling efficiency is items/s(2) / (2 * items/s(1)).
Wall time includes process start-up and model loading, as a user sees it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

ITEMS = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from gswfast import viz
    from gswfast.demo import shape_images

    folder = tmp_path_factory.mktemp("bench_dataset")
    batch = shape_images(ITEMS, size=112, generator=torch.Generator().manual_seed(0)).images
    for i, image in enumerate(batch):
        viz.save_png((image * 255).to(torch.uint8), folder / f"{i:03d}.png")
    return folder


def _command(source, out, processes: int) -> list[str]:
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
    ]
    head = [*launch, "-m", "gswfast"] if processes > 1 else [sys.executable, "-m", "gswfast"]
    return [
        *head,
        "explain-dataset",
        str(source),
        "--out",
        str(out),
        "--model",
        "torchvision:resnet18",
        "--size",
        "112",
        "--batch-size",
        "8",
        "--quiet",
        "--method",
        "integrated_gradients",
    ]


@pytest.mark.benchmark(group="cpu-explain-dataset-resnet18-32-images")
@pytest.mark.parametrize(("processes", "threads"), [(1, 1), (2, 1), (1, 2)])
def bench_cpu_explain_dataset(benchmark, images, tmp_path, processes, threads):
    runs = iter(range(100))

    def run():
        out = tmp_path / f"out{next(runs)}"  # a fresh folder: nothing to skip
        done = subprocess.run(
            _command(images, out, processes),
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
        )
        assert done.returncode == 0, done.stderr[-2000:]

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    role = (
        "gswfast" if (processes, threads) == (1, 1) else f"{processes}_processes_{threads}_threads"
    )
    benchmark.extra_info.update(
        role=role, processes=processes, threads_per_process=threads, items=ITEMS
    )
    if benchmark.stats is not None:
        benchmark.extra_info["items_per_s"] = ITEMS / benchmark.stats.stats.median


@pytest.mark.cuda
def bench_cuda_explain_dataset_resnet50(benchmark, tmp_path):
    """One process on the GPU: 128 images of 224x224, resnet50, gradient, batches of 64."""
    from gswfast import viz
    from gswfast.dataset import explain_dataset
    from gswfast.testing import photos

    benchmark.group = "cuda-explain-dataset-resnet50-b64"
    source = tmp_path / "images"
    source.mkdir()
    for i, image in enumerate(photos(224, 128)):
        viz.save_png((image * 255).to(torch.uint8), source / f"{i:03d}.png")
    runs = iter(range(100))

    def run():
        explain_dataset(
            source,
            tmp_path / f"out{next(runs)}",
            "torchvision:resnet50",
            method="gradient",
            batch_size=64,
            device="cuda",
            quiet=True,
        )

    benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    benchmark.extra_info.update(role="gswfast", items=128)
    if benchmark.stats is not None:
        benchmark.extra_info["items_per_s"] = 128 / benchmark.stats.stats.median
