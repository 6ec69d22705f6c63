"""gswfast: gradient weighted superpixels, fast and on the device.

    import gswfast as gsw
    expl = gsw.explain(model, images, method="lime_ig")    # images [B, 3, H, W] in 0..1
    expl.segment_scores                                     # [B, K] score per superpixel
    expl.heatmap(), expl.top_k(5), expl.overlay(images)
    reference = gsw.lime(model, images, expl.segmentation)   # LIME on the device
    gsw.metrics.agreement(expl, reference, k=5)             # Spearman, Kendall, top-k IoU

The parts can be used on their own::

    seg = gsw.slic(images, n_segments=200)  # labels [B, H, W]
    scores = gsw.segment_pool(attribution, seg.labels, seg.num_segments)  # [B, K]
    heatmap = gsw.paint(scores, seg.labels)  # [B, H, W]

Importing the package imports neither torch nor the compiled extension: every public name
is imported on first use (PEP 562). The first use of an op (``gswfast.ops``, or any name
built on it) loads the extension and checks that it matches torch; ``import gswfast.ops``
does not pull in the model layers above it.
"""

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    # What type checkers see: the public names with their own types (``__getattr__`` below
    # is typed ``Any``), re-exported explicitly (``X as X``: ``__all__`` is computed). At
    # run time nothing here is imported; the names load on first use.
    from gswfast import attribution as attribution
    from gswfast import metrics as metrics
    from gswfast._extension import build_info as build_info
    from gswfast._extension import built_with_cuda as built_with_cuda
    from gswfast._extension import cuda_available as cuda_available
    from gswfast.attribution import METHODS as METHODS
    from gswfast.attribution import attribute as attribute
    from gswfast.attribution.targets import DetectionTarget as DetectionTarget
    from gswfast.attribution.targets import SegmentationTarget as SegmentationTarget
    from gswfast.explain import SEGMENT_REDUCTIONS as SEGMENT_REDUCTIONS
    from gswfast.explain import Explainer as Explainer
    from gswfast.explain import Explanation as Explanation
    from gswfast.explain import explain as explain
    from gswfast.lime import lime as lime
    from gswfast.ops import REDUCTIONS as REDUCTIONS
    from gswfast.ops import paint as paint
    from gswfast.ops import segment_pool as segment_pool
    from gswfast.regions import kernel_shap as kernel_shap
    from gswfast.regions import occlusion as occlusion
    from gswfast.regions import rise as rise
    from gswfast.segmentation import Segmentation as Segmentation
    from gswfast.segmentation import rgb_to_lab as rgb_to_lab
    from gswfast.segmentation import slic as slic

__version__ = "0.1.0"

# public name -> the module that defines it (a module itself where the name is a module)
_LAZY: dict[str, str] = {
    "METHODS": "gswfast.attribution",
    "REDUCTIONS": "gswfast.ops",
    "SEGMENT_REDUCTIONS": "gswfast.explain",
    "DetectionTarget": "gswfast.attribution.targets",
    "Explainer": "gswfast.explain",
    "Explanation": "gswfast.explain",
    "Segmentation": "gswfast.segmentation",
    "SegmentationTarget": "gswfast.attribution.targets",
    "attribute": "gswfast.attribution",
    "attribution": "gswfast.attribution",
    "build_info": "gswfast._extension",
    "built_with_cuda": "gswfast._extension",
    "cuda_available": "gswfast._extension",
    "explain": "gswfast.explain",
    "kernel_shap": "gswfast.regions",
    "lime": "gswfast.lime",
    "metrics": "gswfast.metrics",
    "occlusion": "gswfast.regions",
    "paint": "gswfast.ops",
    "rgb_to_lab": "gswfast.segmentation",
    "rise": "gswfast.regions",
    "segment_pool": "gswfast.ops",
    "slic": "gswfast.segmentation",
}
_MODULES = ("attribution", "metrics")  # names that are modules, not attributes of one

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> _Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gswfast' has no attribute {name!r}")
    module = _importlib.import_module(_LAZY[name])
    # "lime" is both a module and the function in it: the package's name is the function.
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    loaded = {
        name
        for name, value in globals().items()
        if isinstance(value, _types.ModuleType) and name[0] != "_"
    }
    return sorted({*__all__, "__version__", *loaded})


class _Package(_types.ModuleType):
    """The package module. Loading a submodule binds it on its package (``gswfast.explain =
    <module>``); ``explain`` and ``lime`` name functions here, so the function in that
    submodule is bound instead, as the eager imports of earlier versions did."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in _LAZY and name not in _MODULES and isinstance(value, _types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
