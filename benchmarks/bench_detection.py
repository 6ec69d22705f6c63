"""Explaining a detector's boxes: gswfast against pytorch-grad-cam, in one run.

torchvision's fasterrcnn_mobilenet_v3_large_fpn (random weights, every box kept) on one
640x480 photo, the model's transform left at that size (``min_size=480, max_size=640``):
its 8 best boxes, one map per box, pooled over the same 100 SLIC superpixels.

- gswfast: ``gsw.explain(..., target=gsw.DetectionTarget(boxes, labels))``, one row per box
  in one batched call, with ``gradcam`` (role ``gswfast``: the same method as the peer; its
  default layer, found by the box's score, is the finest FPN level) and with ``gradient``.
- pytorch-grad-cam: ``GradCAM`` on the same layer (its tutorial's ``model.backbone`` outputs
  a dict of FPN levels, which its ``GradCAM`` cannot hook for gradients: the tutorial uses
  the gradient-free ``EigenCAM`` there) with one ``FasterRCNNBoxScoreTarget`` per box, the
  image repeated once per box (its batch form of one map per box), pooled with
  ``index_add_``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from bench_explain import index_add_pool
from timing import cuda_timed

import gswfast as gsw
from gswfast.detections import detect
from gswfast.testing import photos

BOXES = 8
CUDA_REPEAT = 3


def _case(device: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=480, max_size=640
        )
    model = model.to(device).eval()
    image = F.interpolate(photos(480, 1), size=(480, 640), mode="bilinear").to(device)
    found = detect(model, image, BOXES, 0.0)
    assert found.boxes.shape[0] == BOXES
    return model, image, found, gsw.slic(image, n_segments=100)


@pytest.fixture(scope="module")
def detection_cpu():
    return _case("cpu")


@pytest.fixture(scope="module")
def detection_cuda():
    return _case("cuda")


def _ours(model, image, found, seg, method):
    return gsw.explain(model, image, method=method, target=found.target(), segmentation=seg)


def _peer(model, image, found, seg):
    cams = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    cam = cams.GradCAM(model=model, target_layers=[model.backbone.fpn.layer_blocks[0]])
    targets = [
        FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box])
        for box, label in zip(found.boxes, found.labels, strict=True)
    ]
    rows = image.expand(BOXES, -1, -1, -1)
    labels = seg.labels.expand(BOXES, -1, -1)
    k = int(seg.num_segments.max())

    def grad_cam_and_pool():
        maps = torch.from_numpy(cam(input_tensor=rows, targets=targets)).to(image.device)
        return index_add_pool(maps, labels, k)

    return grad_cam_and_pool


def _record(benchmark, role: str) -> None:
    benchmark.extra_info.update(role=role, threads=torch.get_num_threads(), boxes_per_call=BOXES)


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cpu_detection_gswfast(benchmark, detection_cpu, method):
    benchmark.group = "cpu-detection-fasterrcnn_mobilenet_v3_large_fpn-8boxes-640x480"
    model, image, found, seg = detection_cpu
    expl = benchmark.pedantic(_ours, (model, image, found, seg, method), rounds=3)
    _record(benchmark, "gswfast" if method == "gradcam" else f"gswfast_{method}")
    assert expl.segment_scores.shape[0] == BOXES
    assert torch.isfinite(expl.segment_scores).all()


def bench_cpu_detection_pytorch_grad_cam(benchmark, detection_cpu):
    benchmark.group = "cpu-detection-fasterrcnn_mobilenet_v3_large_fpn-8boxes-640x480"
    model, image, found, seg = detection_cpu
    scores = benchmark.pedantic(_peer(model, image, found, seg), rounds=3)
    _record(benchmark, "pytorch_grad_cam")
    assert scores.shape[0] == BOXES
    for p in model.parameters():
        p.grad = None  # pytorch-grad-cam's backward accumulates parameter gradients


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def bench_cuda_detection_gswfast(benchmark, detection_cuda, method):
    benchmark.group = "cuda-detection-fasterrcnn_mobilenet_v3_large_fpn-8boxes-640x480"
    model, image, found, seg = detection_cuda
    benchmark(cuda_timed(lambda: _ours(model, image, found, seg, method), CUDA_REPEAT))
    _record(benchmark, "gswfast" if method == "gradcam" else f"gswfast_{method}")
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT


@pytest.mark.cuda
def bench_cuda_detection_pytorch_grad_cam(benchmark, detection_cuda):
    benchmark.group = "cuda-detection-fasterrcnn_mobilenet_v3_large_fpn-8boxes-640x480"
    model, image, found, seg = detection_cuda
    benchmark(cuda_timed(_peer(model, image, found, seg), CUDA_REPEAT))
    _record(benchmark, "pytorch_grad_cam")
    benchmark.extra_info["ops_per_call"] = CUDA_REPEAT
