"""Time-conditioned layers for vector fields ``f(t, x)`` (as in FFJORD's ``diffeq_layers``).

Each is called as ``layer(t, x)`` with ``t`` a 0-d tensor or a number.
"""
from __future__ import annotations

import torch
from torch import nn


def _time_like(t, x: torch.Tensor, shape) -> torch.Tensor:
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(shape)


class ConcatLinear(nn.Module):
    """``Linear([t, x])``: the time enters as one extra input feature."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = _time_like(t, x, (*x.shape[:-1], 1))
        return self.linear(torch.cat([tt, x], dim=-1))


class ConcatSquashLinear(nn.Module):
    """``Linear(x) · σ(W_g t + b_g) + W_b t``: the time gates and shifts the output (FFJORD)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(1, 1)
        return self.linear(x) * torch.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)


class ConcatConv2d(nn.Module):
    """``Conv2d([t, x])``: the time enters as one extra constant input channel (Chen et al. 2018)."""

    def __init__(self, dim_in: int, dim_out: int, ksize: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True, transpose: bool = False):
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.conv = conv(dim_in + 1, dim_out, kernel_size=ksize, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = _time_like(t, x, (x.shape[0], 1, *x.shape[2:]))
        return self.conv(torch.cat([tt, x], dim=1))
