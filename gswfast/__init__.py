"""gswfast: gradient weighted superpixels, fast and on the device.

    import gswfast as gsw
    expl = gsw.explain(model, images, method="lime_ig")    # images [B, 3, H, W] in 0..1
    expl.segment_scores                                     # [B, K] score per superpixel
    expl.heatmap(), expl.top_k(5), expl.overlay(images)
    reference = gsw.lime(model, images, expl.segmentation)   # LIME on the device
    gsw.metrics.agreement(expl, reference, k=5)             # Spearman, Kendall, top-k IoU

The parts can be used on their own::

    seg = gsw.slic(images, n_segments=200)                          # labels [B, H, W]
    scores = gsw.segment_pool(attribution, seg.labels, seg.num_segments)   # [B, K]
    heatmap = gsw.paint(scores, seg.labels)                         # [B, H, W]
"""

from gswfast import attribution, metrics
from gswfast._extension import build_info, built_with_cuda, cuda_available
from gswfast.attribution import METHODS, attribute
from gswfast.explain import SEGMENT_REDUCTIONS, Explainer, Explanation, explain
from gswfast.lime import lime
from gswfast.ops import REDUCTIONS, paint, segment_pool
from gswfast.segmentation import Segmentation, rgb_to_lab, slic

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "SEGMENT_REDUCTIONS",
    "Explainer",
    "Explanation",
    "Segmentation",
    "attribute",
    "attribution",
    "build_info",
    "built_with_cuda",
    "cuda_available",
    "explain",
    "lime",
    "metrics",
    "paint",
    "rgb_to_lab",
    "segment_pool",
    "slic",
]
