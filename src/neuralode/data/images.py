"""The container every image loader returns (loaders know nothing of models)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """Images of one split of a data set.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)`` with values in ``[0, pixel_max]``.
        labels: ``int64`` tensor ``(N,)``.
        classes: class names, indexed by label.
        name: human-readable data set name, used in reports (e.g. ``"CIFAR-10 (JPEG copy)"``).
        pixel_max: the value that maps to 1.0 (255 for MNIST/CIFAR, 16 for sklearn digits).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    pixel_max: float = 255.0

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels in {self.name}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def floats(self) -> torch.Tensor:
        """Images as ``float32`` in ``[0, 1]``."""
        return self.images.float().div_(self.pixel_max)

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A random subset of ``n`` images (all of them when ``n`` is None or ≥ N)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.name, self.pixel_max)
