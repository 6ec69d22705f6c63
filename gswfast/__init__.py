"""gswfast: gradient weighted superpixels, fast and on the device.

Segmentation and segment pooling are available now::

    import gswfast as gsw
    seg = gsw.slic(images, n_segments=200)                          # labels [B, H, W]
    scores = gsw.segment_pool(attribution, seg.labels, seg.num_segments)   # [B, K]
    heatmap = gsw.paint(scores, seg.labels)                         # [B, H, W]
"""

from gswfast._extension import build_info, built_with_cuda, cuda_available
from gswfast.ops import REDUCTIONS, paint, segment_pool
from gswfast.segmentation import Segmentation, slic

__version__ = "0.1.0"

__all__ = [
    "REDUCTIONS",
    "Segmentation",
    "build_info",
    "built_with_cuda",
    "cuda_available",
    "paint",
    "segment_pool",
    "slic",
]
