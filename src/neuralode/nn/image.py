"""Chen et al. (2018)'s MNIST classifier and its three feature blocks (Table 1).

The layout follows torchdiffeq's ``examples/odenet_mnist.py``::

    downsampling   Conv2d(c_in, 64, 3, 1)  [GroupNorm, ReLU, Conv2d(64, 64, 4, 2, 1)] x 2
    features       odenet : ODEBlock(ODEFunc(64)), adjoint gradients, dopri5 rtol=atol=1e-3
                   resnet : 6 x ResBlock(64, 64)
                   rknet  : ODEBlock(ODEFunc(64)), fixed-step rk4, direct backprop
    head           GroupNorm, ReLU, AdaptiveAvgPool2d(1), Flatten, Linear(64, n_classes)

with ``norm(dim) = GroupNorm(min(32, dim), dim)`` and
``ODEFunc = norm, ReLU, ConcatConv2d(64, 64, 3, 1, 1), norm, ReLU, ConcatConv2d, norm``.
Parameters (MNIST, 10 classes): odenet / rknet 208,266 (paper: 0.22M), resnet 576,778
(paper: 0.60M). ``width`` and ``n_down`` adapt the network to other image sizes (8x8 digits: ``n_down=1``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "FEATURE_BLOCKS",
    "ImageClassifier",
    "ODEFunc",
    "ResBlock",
    "count_parameters",
    "make_image_classifier",
    "norm",
]

FEATURE_BLOCKS = ("odenet", "resnet", "rknet")


def norm(dim: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups, as in torchdiffeq's MNIST example."""
    return nn.GroupNorm(min(32, dim), dim)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(norm(conv(relu(norm(x))))))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.norm2 = norm(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        return x + out


class ODEFunc(nn.Module):
    """The vector field f(t, z): norm–ReLU–ConcatConv2d, twice, then norm. Time enters each conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        from neuralode.nn import ConcatConv2d

        self.norm1 = norm(dim)
        self.relu = nn.ReLU()  # not in-place: the solver reuses its inputs
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm3 = norm(dim)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(z))
        out = self.relu(self.norm2(self.conv1(t, out)))
        return self.norm3(self.conv2(t, out))


class ImageClassifier(nn.Module):
    """Downsampling → feature block → head. ``forward(x)`` returns logits ``(N, n_classes)``.

    Args:
        feature: ``"odenet"``, ``"resnet"`` or ``"rknet"``.
        in_channels: 1 for MNIST/digits, 3 for CIFAR-10.
        n_classes: number of classes.
        width: channels of the feature maps (64 in the paper).
        n_down: number of stride-2 convolutions in the downsampling (2 in the paper).
        n_resblocks: residual blocks of the ResNet variant (6 in the paper).
        method, rtol, atol, options, gradient: the ODE block's solver settings (see
            :class:`neuralode.nn.ODEBlock`); defaults depend on ``feature``: odenet uses
            dopri5 at 1e-3 with adjoint gradients, rknet rk4 with ``step_size=rk_step``
            and direct backprop.
        rk_step: fixed step of the rknet variant.
        t_end: integration horizon of the ODE block, ``[0, t_end]`` (1 in the paper).
    """

    def __init__(
        self,
        feature: str = "odenet",
        *,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 64,
        n_down: int = 2,
        n_resblocks: int = 6,
        method: str | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: dict[str, Any] | None = None,
        gradient: str | None = None,
        rk_step: float = 0.25,
        t_end: float = 1.0,
    ) -> None:
        super().__init__()
        if feature not in FEATURE_BLOCKS:
            raise ValueError(f"feature={feature!r}; expected one of {FEATURE_BLOCKS}")
        if n_down < 0:
            raise ValueError(f"n_down={n_down!r}; expected a non-negative int")
        self.feature_kind = feature
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1)]
        for _ in range(n_down):
            layers += [norm(width), nn.ReLU(inplace=True), nn.Conv2d(width, width, 4, 2, 1)]
        self.downsampling = nn.Sequential(*layers)
        if feature == "resnet":
            self.features: nn.Module = nn.Sequential(*[ResBlock(width) for _ in range(n_resblocks)])
        else:
            from neuralode.nn import ODEBlock

            if feature == "odenet":
                method = method or "dopri5"
                gradient = gradient or "adjoint"
            else:
                method = method or "rk4"
                gradient = gradient or "direct"
                if options is None:
                    options = {"step_size": rk_step}
            self.features = ODEBlock(ODEFunc(width), t=(0.0, t_end), method=method, rtol=rtol, atol=atol,
                                     options=options, gradient=gradient)
        self.head = nn.Sequential(norm(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, n_classes))

    @property
    def ode_block(self) -> nn.Module | None:
        """The ODE block (None for the ResNet)."""
        return None if self.feature_kind == "resnet" else self.features

    def ode_stats(self) -> Any:
        """SolveStats of the ODE block's last call (None for the ResNet)."""
        block = self.ode_block
        return None if block is None else getattr(block, "stats", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.downsampling(x)))

    def trajectory(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Hidden states z(t) of the ODE block at times ``t``: ``(len(t), N, C, H, W)``."""
        block = self.ode_block
        if block is None:
            raise ValueError("trajectory() needs an ODE feature block; this is a ResNet")
        return block(self.downsampling(x), t=t)


def make_image_classifier(feature: str, dataset: str = "mnist", **kwargs: Any) -> ImageClassifier:
    """The paper's classifier for ``"mnist"``/``"cifar10"``; one with one downsampling step for ``"digits"`` (8x8)."""
    presets: dict[str, dict[str, Any]] = {
        "mnist": {"in_channels": 1},
        "cifar10": {"in_channels": 3},
        # 8x8 input: one stride-2 conv (8 -> 6 -> 3); the paper's width keeps GroupNorm's
        # groups at two channels (with 32 channels each group would be a single channel).
        "digits": {"in_channels": 1, "n_down": 1},
    }
    if dataset not in presets:
        raise ValueError(f"dataset={dataset!r}; expected one of {sorted(presets)}")
    return ImageClassifier(feature, **{**presets[dataset], **kwargs})
