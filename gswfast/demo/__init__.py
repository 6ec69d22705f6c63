"""Demo data and models: synthetic images and clips with known object masks, and small
CNNs trained on them (weights shipped with the package; ``python -m gswfast.demo.train``
reproduces them)."""

from gswfast.demo.data import ACTIONS, SHAPES, Batch, action_clips, shape_images
from gswfast.demo.models import ActionNet, ShapeNet, load

__all__ = [
    "ACTIONS",
    "SHAPES",
    "ActionNet",
    "Batch",
    "ShapeNet",
    "action_clips",
    "load",
    "shape_images",
]
