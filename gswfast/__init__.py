"""gswfast: gradient weighted superpixels, fast and on the device.

Segment pooling is available now::

    import gswfast as gsw
    scores = gsw.segment_pool(attribution, labels, reduce="mean")   # [B, K]
    heatmap = gsw.paint(scores, labels)                             # [B, H, W]
"""

from gswfast._extension import build_info, built_with_cuda, cuda_available
from gswfast.ops import REDUCTIONS, paint, segment_pool

__version__ = "0.1.0"

__all__ = [
    "REDUCTIONS",
    "build_info",
    "built_with_cuda",
    "cuda_available",
    "paint",
    "segment_pool",
]
