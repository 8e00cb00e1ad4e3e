"""scikit-learn's bundled 8×8 digits (1,797 images; ships inside the wheel, no download).

The embedded default for the quick image experiment. The split is a fixed stratified
80/20 split (seed 0): 1,437 train / 360 test images.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import ImageSet

__all__ = ["load_digits"]


def load_digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> ImageSet:
    """Load the ``"train"`` or ``"test"`` part of sklearn's digits as ``(N, 1, 8, 8)`` uint8 in 0..16."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    return ImageSet(
        images=torch.from_numpy(images[idx]).unsqueeze(1),
        labels=torch.from_numpy(labels[idx]),
        classes=[str(i) for i in range(10)],
        name="sklearn digits (8x8)",
        pixel_max=16.0,
    )
