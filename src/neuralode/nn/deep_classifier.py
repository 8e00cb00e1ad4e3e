"""Image classifiers on the ResNet-18/34-depth backbones: residual, ODE or RK-Net stages.

``make_deep_classifier("odenet18", n_classes=10)`` puts a classification head (global average
pooling, linear layer) on :func:`neuralode.nn.backbones.make_backbone` with the ResNet-18 preset
(stages of 2, 2, 2, 2 blocks at widths w, 2w, 4w, 8w) whose bodies are residual blocks
(``resnet18``), one ODE stage each (``odenet18``) or the fixed-step RK-Net twin (``rknet18``);
``*34`` uses the ResNet-34 preset (3, 4, 6, 3 blocks). For 32×32 inputs (CIFAR) the stem keeps
the resolution (stride 1), so the four stages run at 32, 16, 8 and 4 pixels — the CIFAR variant
of He et al. (2016).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DEEP_VARIANTS", "DeepClassifier", "make_deep_classifier"]

DEEP_VARIANTS = tuple(f"{kind}{depth}" for depth in ("18", "34") for kind in ("resnet", "odenet", "rknet"))


class DeepClassifier(nn.Module):
    """Backbone → global average pooling → linear. ``forward(x)`` returns logits ``(N, n_classes)``."""

    backbone: Any  # a neuralode.nn.backbones.Backbone (out_channels, ode_blocks(), nfe)

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.backbone.out_channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def ode_stats(self) -> Any:
        """The backbone (its ``nfe``/``nfe_backward`` sum the ODE stages); None for a ResNet."""
        return self.backbone if self.backbone.ode_blocks() else None


def make_deep_classifier(variant: str, *, n_classes: int, in_channels: int = 3, width: int = 64,
                         stem_stride: int = 1, method: str | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                         gradient: str | None = None, step_size: float | None = None,
                         rk_step: float = 0.25) -> DeepClassifier:
    """One of :data:`DEEP_VARIANTS` (``"resnet18"``, ``"odenet18"``, ``"rknet18"``, ``*34``).

    ``method``, ``rtol``, ``atol``, ``gradient``: the ODE stages' solver (defaults: odenet dopri5
    with adjoint gradients, rknet rk4 with direct backprop); ``step_size`` makes the odenet's
    stages fixed-step (CPU runs); ``rk_step``: the rknet's step.
    """
    from neuralode.nn.backbones import make_backbone

    if variant not in DEEP_VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {', '.join(DEEP_VARIANTS)}")
    kind, depth = variant[:-2], f"resnet{variant[-2:]}"
    kw: dict[str, Any] = {}
    if kind == "odenet":
        kw = {"method": method, "rtol": rtol, "atol": atol, "gradient": gradient}
    elif kind == "rknet":
        kw = {"rk_step": rk_step}
    backbone = make_backbone(kind, depth, width=width, in_channels=in_channels, stem_stride=stem_stride, **kw)
    if kind == "odenet" and step_size:
        for block in backbone.ode_blocks():
            block.options = {**(block.options or {}), "step_size": step_size}
    return DeepClassifier(backbone, n_classes)
