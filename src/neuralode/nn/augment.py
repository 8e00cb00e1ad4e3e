"""Augmented Neural ODEs (Dupont et al. 2019): solve in a space with extra zero dimensions.

A plain NODE's flow is a homeomorphism, so it cannot untangle e.g. concentric annuli; padding
the state with ``augment_dim`` zeros lets trajectories pass each other in the extra dimensions.
"""
from __future__ import annotations

import torch
from torch import nn


def augment(x: torch.Tensor, augment_dim: int) -> torch.Tensor:
    """Pad the feature dimension (dim 1: features of vectors, channels of images) with zeros."""
    if augment_dim < 0:
        raise ValueError(f"augment_dim must be >= 0; got {augment_dim}")
    if augment_dim == 0:
        return x
    pad = x.new_zeros((x.shape[0], augment_dim, *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def drop_augmented(x: torch.Tensor, augment_dim: int) -> torch.Tensor:
    """Remove the ``augment_dim`` trailing feature dimensions added by :func:`augment`."""
    return x if augment_dim == 0 else x[:, : x.shape[1] - augment_dim]


class Augment(nn.Module):
    """Module form of :func:`augment`, to put before an :class:`~neuralode.nn.ODEBlock`."""

    def __init__(self, augment_dim: int):
        super().__init__()
        if augment_dim < 0:
            raise ValueError(f"augment_dim must be >= 0; got {augment_dim}")
        self.augment_dim = augment_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.augment_dim)

    def extra_repr(self) -> str:
        return f"augment_dim={self.augment_dim}"


class DropAugmented(nn.Module):
    """Module form of :func:`drop_augmented`: read the original dimensions after the block."""

    def __init__(self, augment_dim: int):
        super().__init__()
        self.augment_dim = augment_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_augmented(x, self.augment_dim)
