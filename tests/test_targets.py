"""Targets beyond classes: ``gsw.DetectionTarget`` (boxes of torchvision's detectors, or of
any detector through an adapter) and ``gsw.SegmentationTarget`` (a class over a mask of a
segmentation model), through the gradient methods and the region methods."""

from __future__ import annotations

import warnings

import pytest
import torch

import gswfast as gsw
from gswfast.attribution.targets import BoxScores, box_iou

torchvision = pytest.importorskip("torchvision")


def _detector():
    """Faster R-CNN (MobileNetV3, 320 px variant) with random weights, images kept at
    96x128 inside (min_size), every box kept (box_score_thresh=0) so it finds boxes."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=96, max_size=128
        )
    # class scores that differ from box to box (the random init makes them nearly all tied)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.1)
    return model.eval()


def _images(batch=2):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, 96, 128, generator=generator)


def _segmenter(classes):
    """LR-ASPP (MobileNetV3) with random weights drawn from seed 0 and ``classes`` classes."""
    torch.manual_seed(0)
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=classes
    ).eval()


def _top_boxes(model, x, per_image):
    with torch.no_grad():
        found = model(x)
    boxes = [f["boxes"][:n] for f, n in zip(found, per_image, strict=True)]
    labels = [f["labels"][:n] for f, n in zip(found, per_image, strict=True)]
    return boxes, labels


def _found(boxes, labels, scores, probs=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    if probs is not None:
        out["probs"] = torch.tensor(probs, dtype=torch.float32)
    return out


def _rows(boxes, labels, match="iou", iou=0.5):
    return BoxScores(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.tensor(labels),
        iou=iou,
        match=match,
        adapt=None,
    )


# ------------------------------------------------------------------ matching


def test_box_iou_of_a_hand_computed_case():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor(
        [[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20, 30, 30], [3, 3, 3, 8]]
    )
    # overlap 25, union 175; itself; apart; a box without area
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[25 / 175, 1.0, 0.0, 0.0]]))


def test_a_box_scores_its_best_iou_match_of_the_same_label_and_zero_without_one():
    predicted = _found(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 9], [40, 40, 50, 50]],
        labels=[3, 3, 5, 3],
        scores=[0.2, 0.9, 0.7, 0.4],
    )
    rows = _rows(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [60, 60, 70, 70], [40, 40, 50, 50]],
        labels=[3, 5, -1, 3, 5],
    )
    scores = rows.select([predicted] * 5, 5)
    # label 3: IoU 1 (score 0.2) beats IoU 0.81 (0.9); label 5: the IoU 0.9 box; any label:
    # the IoU-1 box; nothing overlaps; the right place but another label
    torch.testing.assert_close(scores, torch.tensor([0.2, 0.7, 0.2, 0.0, 0.0]))
    strict = _rows([[0, 0, 10, 10]], labels=[3], iou=1.0).select([predicted], 1)
    loose = _rows([[2, 2, 10, 10]], labels=[3], iou=0.5).select([predicted], 1)
    torch.testing.assert_close(strict, torch.tensor([0.2]))
    torch.testing.assert_close(loose, torch.tensor([0.9]))  # IoU 0.79 beats 0.64


def test_region_methods_match_by_d_rise_similarity():
    predicted = _found(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]],
        labels=[3, 3, 4],
        scores=[0.2, 0.9, 0.8],
        probs=[[0.0, 0.6, 0.8], [0.0, 0.8, 0.6], [0.0, 0.0, 1.0]],
    )
    plain = {k: v for k, v in predicted.items() if k != "probs"}
    rows = _rows([[0, 0, 10, 10]], labels=[3], match="similarity")
    # IoU x score over the label-3 boxes: max(1 x 0.2, 0.81 x 0.9)
    torch.testing.assert_close(rows.select([plain], 1), torch.tensor([0.81 * 0.9]))
    # with class probabilities, times their cosine with class 3's one-hot vector... class 1 here
    by_probs = _rows([[0, 0, 10, 10]], labels=[1], match="similarity")
    predicted["labels"] = torch.tensor([1, 1, 4])
    expected = max(1 * 0.2 * 0.6, 0.81 * 0.9 * 0.8)
    torch.testing.assert_close(by_probs.select([predicted], 1), torch.tensor([expected]))


def test_an_image_without_any_box_scores_zero():
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert _rows([[0, 0, 5, 5]], labels=[-1]).select([empty], 1).tolist() == [0.0]


# ------------------------------------------------------------------ gradient methods


def test_several_boxes_of_a_batch_are_rows_with_their_sample_and_box():
    model, x = _detector(), _images()
    boxes, labels = _top_boxes(model, x, [2, 1])
    target = gsw.DetectionTarget(boxes, labels)
    expl = gsw.explain(model, x, method="gradient", target=target, n_segments=16)
    assert expl.segment_scores.shape[0] == 3
    assert expl.info["box_of"] == [(0, 0), (0, 1), (1, 0)]
    torch.testing.assert_close(expl.info["boxes"], torch.cat(boxes))
    assert expl.target.tolist() == torch.cat(labels).tolist()
    # each row is segmented as its own sample
    single = gsw.slic(x, n_segments=16)
    assert torch.equal(expl.labels[1], single.labels[0])
    assert torch.equal(expl.labels[2], single.labels[1])
    assert bool((expl.segment_scores.abs().amax(1) > 0).all())
    first, second = (row / row.abs().max() for row in expl.segment_scores[:2])
    assert not torch.allclose(first, second, atol=1e-3)  # two boxes, two maps


@pytest.mark.parametrize(
    ("method", "options"),
    [("integrated_gradients", {"n_steps": 3, "batch_size": 2}), ("input_x_gradient", {})],
)
def test_each_box_row_equals_explaining_that_box_alone(method, options):
    # rows chunked across boxes and images must keep each row's own box and image
    model, x = _detector(), _images()
    boxes, labels = _top_boxes(model, x, [2, 1])
    seg = gsw.slic(x, n_segments=12).labels
    explainer = gsw.Explainer(model, method, channels_last=False, **options)
    together = explainer(x, gsw.DetectionTarget(boxes, labels), segmentation=seg)
    for row, (b, i) in enumerate(together.info["box_of"]):
        alone = explainer(
            x[b : b + 1],
            gsw.DetectionTarget([boxes[b][i : i + 1]], [labels[b][i : i + 1]]),
            segmentation=seg[b : b + 1],
        )
        n = int(alone.num_segments[0])
        scale = alone.segment_scores.abs().max()
        assert scale > 0
        torch.testing.assert_close(
            together.segment_scores[row, :n], alone.segment_scores[0, :n], rtol=0, atol=1e-3 * scale
        )


def test_the_gradient_is_autograd_of_the_matched_score():
    model, x = _detector(), _images(1)
    boxes, labels = _top_boxes(model, x, [2])
    target = gsw.DetectionTarget(boxes, labels)
    expl = gsw.explain(
        model, x, method="gradient", target=target, n_segments=16, channels_last=False
    )
    for row in range(2):
        point = x.clone().requires_grad_(True)
        (found,) = model(point)
        overlap = box_iou(boxes[0][row : row + 1], found["boxes"])[0]
        eligible = (overlap >= 0.5) & (found["labels"] == labels[0][row])
        best = int(torch.where(eligible, overlap, -1.0).argmax())
        (grad,) = torch.autograd.grad(found["scores"][best], point)
        pixel = grad.abs().sum(1)  # the gradient method's channel reduction, abs_sum
        expected = gsw.segment_pool(
            pixel, expl.labels[row : row + 1], expl.num_segments[row : row + 1]
        )
        scale = expected.abs().max()
        assert scale > 0
        torch.testing.assert_close(
            expl.segment_scores[row : row + 1], expected, rtol=0, atol=1e-3 * scale
        )


def test_every_gradient_method_and_swag_take_boxes():
    model, x = _detector(), _images(1)
    boxes, labels = _top_boxes(model, x, [2])
    target = gsw.DetectionTarget(boxes, labels)
    for method, options in (
        ("integrated_gradients", {"n_steps": 4}),
        ("smoothgrad", {"n_samples": 3}),
        ("input_x_gradient", {"swag": True}),
    ):
        expl = gsw.explain(model, x, method=method, target=target, n_segments=12, **options)
        assert expl.segment_scores.shape[0] == 2
        assert torch.isfinite(expl.segment_scores).all()


# ------------------------------------------------------------------ region methods


def test_occlusion_equals_captum_feature_ablation_of_the_box_similarity():
    from captum.attr import FeatureAblation

    model, x = _detector(), _images(1)
    boxes, labels = _top_boxes(model, x, [1])
    labels_map = gsw.slic(x, n_segments=8).labels
    hide = torch.zeros_like(x)
    ours = gsw.occlusion(model, x, labels_map, gsw.DetectionTarget(boxes, labels), hide=hide)
    similarity = _rows(boxes[0].tolist(), labels[0].tolist(), match="similarity")

    def box_score(inputs):
        with torch.no_grad():
            return similarity[torch.zeros(inputs.shape[0], dtype=torch.int64)].select(
                model(inputs.contiguous()), inputs.shape[0]
            )

    theirs = FeatureAblation(box_score).attribute(
        x, baselines=hide, feature_mask=labels_map.unsqueeze(1).long()
    )
    scale = theirs.abs().max()
    assert scale > 0
    torch.testing.assert_close(
        ours.pixel_scores.double(), theirs[:, 0].double(), rtol=0, atol=1e-3 * float(scale)
    )


@pytest.mark.filterwarnings("ignore:gswfast. every segment scores the same")
def test_lime_kernel_shap_and_rise_take_boxes():
    model, x = _detector(), _images(1)
    boxes, labels = _top_boxes(model, x, [2])
    target = gsw.DetectionTarget(boxes, labels)
    for explain, options in (
        (gsw.lime, {"n_samples": 24}),
        (gsw.kernel_shap, {"n_samples": 24}),
        (gsw.rise, {"n_samples": 24}),
    ):
        expl = explain(model, x, target=target, n_segments=8, **options)
        assert expl.segment_scores.shape[0] == 2
        assert expl.info["box_of"] == [(0, 0), (0, 1)]
        assert torch.isfinite(expl.segment_scores).all()


# ------------------------------------------------------------------ adapters and errors


def test_a_yolo_style_output_is_read_through_an_adapter():
    class Yolo(torch.nn.Module):
        """[B, N, 4 + C]: N boxes (xyxy) and their class scores, from the image's means."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            level = self.conv(x).mean((2, 3))  # [B, 4]
            boxes = torch.tensor([[0.0, 0, 40, 40], [30, 30, 90, 90]]).expand(x.shape[0], -1, -1)
            classes = torch.stack([level[:, :2], level[:, 2:]], 1).sigmoid()  # [B, 2, 2]
            return torch.cat([boxes, classes], -1)

    def detections(output):  # the adapter the guide documents
        scores, labels = output[..., 4:].max(-1)
        return [
            {"boxes": rows[:, :4], "labels": classes, "scores": best, "probs": rows[:, 4:]}
            for rows, classes, best in zip(output, labels, scores, strict=True)
        ]

    model, x = Yolo().eval(), _images(2)
    target = gsw.DetectionTarget(
        [torch.tensor([[0.0, 0, 40, 40]]), torch.tensor([[30.0, 30, 90, 90]])], outputs=detections
    )
    expl = gsw.explain(model, x, method="gradient", target=target, n_segments=10)
    assert expl.segment_scores.shape[0] == 2
    assert expl.segment_scores.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: gsw.DetectionTarget([torch.zeros(2, 3)]), "boxes: sample 0: expected \\[N, 4\\]"),
        (lambda: gsw.DetectionTarget([torch.tensor([[5.0, 5, 1, 9]])]), "x2 >= x1"),
        (lambda: gsw.DetectionTarget([torch.zeros(2, 4)], [[1]]), "labels: sample 0: expected 2"),
        (lambda: gsw.DetectionTarget([torch.zeros(1, 4)], iou=0), "iou: expected a number in"),
        (lambda: gsw.DetectionTarget("boxes"), "boxes: expected a list"),
        (lambda: gsw.SegmentationTarget(1, torch.zeros(4)), "masks: expected a bool tensor"),
        (lambda: gsw.SegmentationTarget(1, torch.zeros(4, 4)), "masks: expected a bool tensor"),
        (
            lambda: gsw.SegmentationTarget(1.5, torch.ones(4, 4, dtype=torch.bool)),
            "classes: expected",
        ),
    ],
)
def test_bad_targets_are_refused_naming_the_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_a_detection_target_needs_boxes_for_every_sample_and_a_detector():
    model, x = _detector(), _images(2)
    with pytest.raises(ValueError, match="boxes for 1 sample"):
        gsw.explain(model, x, target=gsw.DetectionTarget([torch.zeros(1, 4)]))
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(ValueError, match="one dict of boxes, labels and scores per input"):
        gsw.explain(
            classifier, x[:1], method="gradient", target=gsw.DetectionTarget([torch.zeros(1, 4)])
        )


# ------------------------------------------------------------------ segmentation


def test_a_segmentation_target_explains_a_class_over_a_mask():
    model = _segmenter(4)
    x = _images(2)[..., :64, :64]
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 30:, :] = True
    target = gsw.SegmentationTarget([1, 3], masks)
    expl = gsw.explain(
        model, x, method="gradient", target=target, n_segments=10, channels_last=False
    )
    assert expl.target.tolist() == [1, 3]
    for b, cls in enumerate([1, 3]):
        point = x[b : b + 1].clone().requires_grad_(True)
        score = (model(point)["out"][0, cls] * masks[b]).sum()  # pytorch-grad-cam's target
        (grad,) = torch.autograd.grad(score, point)
        expected = gsw.segment_pool(
            grad.abs().sum(1), expl.labels[b : b + 1], expl.num_segments[b : b + 1]
        )
        scale = expected.abs().max()
        assert scale > 0
        ours = expl.segment_scores[b : b + 1, : expected.shape[1]]
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-3 * scale)
    with pytest.raises(ValueError, match="class 7 is out of range"):
        gsw.explain(model, x, method="gradient", target=gsw.SegmentationTarget(7, masks))


def test_a_segmentation_target_through_occlusion_and_its_mask_size():
    model = _segmenter(3)
    x = _images(2)[..., :48, :48]
    masks = torch.zeros(2, 48, 48, dtype=torch.bool)
    masks[:, 8:40, 8:40] = True
    expl = gsw.occlusion(model, x, target=gsw.SegmentationTarget([0, 2], masks), n_segments=6)
    assert expl.target.tolist() == [0, 2]
    assert bool((expl.segment_scores.abs().amax(1) > 0).all())
    with pytest.raises(ValueError, match="masks: expected the inputs' height and width"):
        gsw.occlusion(model, x, target=gsw.SegmentationTarget(0, masks[:, :40]), n_segments=6)


def test_selecting_rows_of_a_per_frame_segmentation_keeps_each_frame_state():
    clips = torch.rand(3, 3, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    seg = gsw.slic(clips, n_segments=6, mode="per_frame")
    picked = seg.select(torch.tensor([2, 0]))
    alone = gsw.slic(clips[2:3], n_segments=6, mode="per_frame")
    for name in ("labels", "num_segments", "clusters", "cluster_counts", "cluster_labels"):
        assert torch.equal(
            getattr(picked, name)[: getattr(alone, name).shape[0]], getattr(alone, name)
        )
    assert picked.clusters.shape[0] == 2 * 2  # two samples of two frames


def test_deletion_and_insertion_follow_each_box():
    model, x = _detector(), _images(2)
    boxes, labels = _top_boxes(model, x, [1, 2])
    expl = gsw.explain(
        model, x, method="gradient", target=gsw.DetectionTarget(boxes, labels), n_segments=6
    )
    curve = gsw.metrics.deletion(model, x, expl, steps=3)
    assert curve.scores.shape == (3, 4)
    similarity = _rows(torch.cat(boxes).tolist(), torch.cat(labels).tolist(), match="similarity")
    with torch.no_grad():
        start = similarity.select(model(x[[0, 1, 1]]), 3)
    torch.testing.assert_close(
        curve.scores[:, 0], start, rtol=1e-4, atol=1e-6
    )  # nothing deleted yet
    assert bool((curve.scores[:, -1] <= 1).all())
    inserted = gsw.metrics.insertion(model, x, expl, steps=3)
    torch.testing.assert_close(inserted.scores[:, -1], start, rtol=1e-4, atol=1e-6)  # all back


def test_box_curves_take_a_baseline_tensor_of_one_row_per_image():
    # Image 0 has two boxes and image 1 none: rows [0, 0], as many as images. A baseline of
    # one row per image is repeated per box; a baseline of another length is refused
    # rather than read one way or the other.
    model, x = _detector(), _images(2)
    boxes, labels = _top_boxes(model, x, [2, 0])
    expl = gsw.explain(
        model, x, method="gradient", target=gsw.DetectionTarget(boxes, labels), n_segments=6
    )
    grey = torch.full_like(x, 0.5)
    grey[1] = 0.0  # image 1's row: never used, it has no box
    by_tensor = gsw.metrics.deletion(model, x, expl, steps=2, baseline=grey)
    by_hand = gsw.metrics.deletion(model, x, expl, steps=2, baseline=torch.full_like(x, 0.5))
    torch.testing.assert_close(by_tensor.scores, by_hand.scores)
    with pytest.raises(ValueError, match=r"baseline: .* one row per image \[2, \.\.\.\]"):
        gsw.metrics.deletion(model, x, expl, steps=2, baseline=grey[:1])
