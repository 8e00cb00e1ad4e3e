"""Neural ODE layers: ODE blocks, time-conditioned layers, augmentation, CNFs, latent ODEs, backbones."""
from .augment import Augment, DropAugmented, augment, drop_augmented
from .layers import ConcatConv2d, ConcatLinear, ConcatSquashLinear
from .odeblock import ODEBlock

__all__ = [
    "ODEBlock",
    "ConcatLinear",
    "ConcatSquashLinear",
    "ConcatConv2d",
    "Augment",
    "DropAugmented",
    "augment",
    "drop_augmented",
]


def __getattr__(name: str):
    # Heavier layers load on first use so that importing neuralode.nn stays cheap.
    lazy = {"CNF": ".cnf", "LatentODE": ".latent", "RNNBaseline": ".latent",
            "Backbone": ".backbones", "make_backbone": ".backbones", "backbone_with_fpn": ".backbones",
            "make_faster_rcnn": ".detection"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name], __name__), name)
    raise AttributeError(f"module 'neuralode.nn' has no attribute {name!r}")
