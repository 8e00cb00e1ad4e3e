"""Encoder–decoder networks for single-image depth: a VGG encoder or an ODE-Net encoder, one decoder.

Encoders return the feature map of every resolution (for the skip connections) and the
bottleneck:

``VGGEncoder``
    torchvision's ``vgg11_bn`` feature layout ("configuration A" of Simonyan & Zisserman 2015
    with batch norm): stages of 1, 1, 2, 2, 2 conv3×3–BN–ReLU at widths 64, 128, 256, 512, 512,
    each followed by 2×2 max pooling. ``width=1`` gives exactly the parameters of
    ``torchvision.models.vgg11_bn(weights=None).features`` (random init; no pretrained weights
    are reachable offline); ``width=0.25`` divides every width by four (CPU runs).
``ODEEncoder``
    The same five resolutions and widths; each stage is a transition (stage 1: conv3×3–GN–ReLU
    from RGB; later stages: 2×2 max pooling and a 1×1 conv to the new width) followed by one
    ODE block ``dz/dt = GN(ConcatConv3×3(ReLU(GN(z)), t))`` on ``[0, 1]`` — a continuous-depth
    version of a stage of repeated conv layers. With one time-conditioned convolution per
    field it has about 0.65× the VGG encoder's parameters at equal widths (two convolutions per
    field, as in Chen et al.'s ODEFunc, would have more parameters than VGG, not fewer).
``DepthDecoder``
    U-Net style: from the bottleneck, five times (upsample ×2, concatenate the skip of that
    resolution and two pixel-coordinate channels, conv3×3–BN–ReLU to half that stage's width, at least 16),
    then a 1×1 conv to log-depth.

``DepthNet(encoder)`` predicts depth ``exp(log-depth)``; both variants share the decoder
design, so parameter differences are the encoders'.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthDecoder", "coordinates", "DepthNet", "ODEEncoder", "VGGEncoder", "VGG11_STAGES", "make_depth_net"]

# vgg11_bn ("A"): conv widths per stage; every stage ends with 2x2 max pooling
VGG11_STAGES: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _widths(width: float) -> list[int]:
    if not width > 0:
        raise ValueError(f"width={width!r}; expected a positive multiplier (1 = vgg11_bn's widths)")
    return [max(4, int(round(s[0] * width))) for s in VGG11_STAGES]


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, c // 4)), c)


class VGGEncoder(nn.Module):
    """vgg11_bn's feature layout (see the module docstring); ``forward`` -> (skips, bottleneck)."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.widths = _widths(width)
        c_in = in_channels
        self.stages = nn.ModuleList()
        for stage in VGG11_STAGES:
            layers: list[nn.Module] = []
            for c in stage:
                c_out = max(4, int(round(c * width)))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        return skips, F.max_pool2d(x, 2)


class _Field(nn.Module):
    """``f(t, z) = GN(ConcatConv3x3(ReLU(GN(z)), t))``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        from neuralode.nn.layers import ConcatConv2d

        self.norm1 = _gn(c)
        self.conv = ConcatConv2d(c, c, 3, 1, 1)
        self.norm2 = _gn(c)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv(t, F.relu(self.norm1(z))))


class ODEEncoder(nn.Module):
    """ODE-Net encoder with vgg11_bn's resolutions and widths (see the module docstring).

    ``method``, ``rtol``, ``atol``, ``options``, ``gradient``: every stage's ODE block solver
    (:class:`neuralode.nn.ODEBlock`).
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3, *, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-3, options: dict[str, Any] | None = None,
                 gradient: str = "adjoint") -> None:
        super().__init__()
        from neuralode.nn.odeblock import ODEBlock

        self.widths = _widths(width)
        self.transitions = nn.ModuleList()
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for i, c in enumerate(self.widths):
            if i == 0:
                self.transitions.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), _gn(c), nn.ReLU()))
            else:
                self.transitions.append(nn.Conv2d(c_in, c, 1))
            self.blocks.append(ODEBlock(_Field(c), method=method, rtol=rtol, atol=atol, options=options,
                                        gradient=gradient))
            c_in = c

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for i, (trans, block) in enumerate(zip(self.transitions, self.blocks)):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(trans(x))
            skips.append(x)
        return skips, F.max_pool2d(x, 2)


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """Two channels ``(N, 2, H, W)``: column and row of each pixel, scaled to [-1, 1]."""
    n, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([cols, rows], dim=1)


class DepthDecoder(nn.Module):
    """U-Net decoder over the encoder's skips (see the module docstring); returns log-depth ``(N, 1, H, W)``.

    Every decoder convolution also sees the pixel coordinates (CoordConv, Liu et al. 2018): depth
    in a room depends strongly on where a pixel is in the image (ground below, walls above),
    which translation-invariant convolutions can only infer from padding effects.
    """

    def __init__(self, widths: list[int], log_depth_bias: float = 0.0) -> None:
        super().__init__()
        self.ups = nn.ModuleList()
        c_below = widths[-1]
        for c in reversed(widths):
            c_out = max(16, c // 2)
            self.ups.append(nn.Sequential(nn.Conv2d(c_below + c + 2, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                          nn.ReLU(inplace=True)))
            c_below = c_out
        self.head = nn.Conv2d(c_below, 1, 1)
        if self.head.bias is not None:  # start near the training set's mean log-depth
            nn.init.constant_(self.head.bias, log_depth_bias)

    def forward(self, skips: list[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        x = bottleneck
        for up, skip in zip(self.ups, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip, coordinates(skip)], dim=1))
        return self.head(x)


class DepthNet(nn.Module):
    """Encoder + :class:`DepthDecoder`. ``forward(x)`` returns log-depth ``(N, H, W)``.

    Inputs are normalised images ``(N, 3, H, W)`` with H and W multiples of 32 (five poolings).
    ``depth(x)`` returns ``exp`` of it.
    """

    encoder: Any  # VGGEncoder or ODEEncoder: .widths, forward -> (skips, bottleneck)

    def __init__(self, encoder: nn.Module, log_depth_bias: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = DepthDecoder(self.encoder.widths, log_depth_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input {tuple(x.shape)}: height and width must be multiples of 32")
        return self.decoder(*self.encoder(x))[:, 0]

    def depth(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).exp()

    def ode_blocks(self) -> list[Any]:
        return list(getattr(self.encoder, "blocks", []))

    def nfe(self) -> tuple[int, int]:
        """Forward and backward NFE of the last call, summed over the encoder's ODE blocks."""
        blocks = self.ode_blocks()
        return sum(b.nfe for b in blocks), sum(b.nfe_backward for b in blocks)


def make_depth_net(encoder: str, *, width: float = 1.0, log_depth_bias: float = 0.0, **ode: Any) -> DepthNet:
    """``encoder="vgg"`` or ``"odenet"`` (``ode``: solver settings of :class:`ODEEncoder`)."""
    if encoder == "vgg":
        return DepthNet(VGGEncoder(width), log_depth_bias)
    if encoder == "odenet":
        return DepthNet(ODEEncoder(width, **ode), log_depth_bias)
    raise ValueError(f"encoder={encoder!r}; expected 'vgg' or 'odenet'")
