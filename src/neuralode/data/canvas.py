"""Detection canvases built from real images, with exact boxes, deterministic by seed.

Each canvas is a background (black, or a crop of a real photograph) on which 1..k objects are
pasted at random scales and places, with limited overlap. The boxes are not annotations
but the paste itself, so they are exact:

``mode="ink"`` (MNIST digits)
    the object is blended by ``max`` (white ink on the background); its box is the tight
    box of the scaled digit's pixels above ``ink_threshold`` (continuous pixel-edge
    coordinates ``x0, y0, x1, y1``: the box covers columns ``x0 .. x1 - 1``).
``mode="paste"`` (CIFAR-10 objects)
    the whole scaled image replaces the background under it; its box is the pasted rectangle.

Overlap is limited: a new object is placed only where its intersection with every earlier
box is at most ``max_overlap`` of the smaller box's area (50 tries, then the canvas holds
fewer objects). Later objects are drawn over earlier ones; boxes keep the full extent.

Determinism: canvas ``i`` of a call uses ``numpy.random.default_rng([seed, i])`` only, so a
canvas does not depend on how many others are made, and a split is fixed by its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .images import ImageSet

__all__ = ["CanvasSet", "make_canvases", "photo_backgrounds"]

_MAX_TRIES = 50


@dataclass
class CanvasSet:
    """Canvases with their objects.

    Attributes:
        images: ``uint8`` ``(N, C, S, S)``.
        boxes: per canvas a float32 ``(n_i, 4)`` tensor ``x0, y0, x1, y1`` in pixels.
        labels: per canvas an int64 ``(n_i,)`` tensor of class indices (0-based, into ``classes``).
        sources: per canvas the indices of the pasted images in the source :class:`ImageSet`.
        classes: class names.
        name: e.g. ``"MNIST canvases"``.
        recipe: the generator's settings (seed included), for reports.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    sources: list[torch.Tensor]
    classes: list[str]
    name: str
    recipe: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def floats(self) -> torch.Tensor:
        """Canvases as float32 in [0, 1]."""
        return self.images.float().div_(255.0)

    def n_objects(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def photo_backgrounds(names: Sequence[str] = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                               "immunohistochemistry", "camera", "brick", "grass", "gravel"),
                      ) -> list[torch.Tensor]:
    """Real photographs bundled with scikit-image (no download), as uint8 ``(3, H, W)`` tensors.

    Grey-level ones are repeated to three channels. Used as the source of canvas backgrounds.
    """
    try:
        import skimage.data as skdata
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("photo backgrounds need scikit-image: pip install 'neuralode[detect]' (or scikit-image)") from exc
    out = []
    for n in names:
        a = np.asarray(getattr(skdata, n)())
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).contiguous())
    return out


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8 (C, h0, w0) -> float (C, h, w) by antialiased bilinear interpolation."""
    x = img.float().unsqueeze(0)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def _background(rng: np.random.Generator, photos: Sequence[torch.Tensor] | None, channels: int,
                size: int) -> torch.Tensor:
    if not photos:
        return torch.zeros(channels, size, size)
    photo = photos[int(rng.integers(len(photos)))]
    _, h, w = photo.shape
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))  # crops of 1/4 .. all of the short side
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    bg = _resize(photo[:, y:y + side, x:x + side], size, size)
    if channels == 1:
        bg = bg.mean(0, keepdim=True)
    return bg


def _overlap_ok(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], max_overlap: float) -> bool:
    x0, y0, x1, y1 = box
    a = (x1 - x0) * (y1 - y0)
    for u0, v0, u1, v1 in boxes:
        iw, ih = min(x1, u1) - max(x0, u0), min(y1, v1) - max(y0, v0)
        if iw > 0 and ih > 0 and iw * ih > max_overlap * min(a, (u1 - u0) * (v1 - v0)):
            return False
    return True


def make_canvases(objects: ImageSet, n: int, *, size: int = 64, seed: int = 0, objects_per_canvas: tuple[int, int] = (1, 3),
                  scale: tuple[float, float] = (0.5, 2.0), max_overlap: float = 0.2, mode: str = "ink",
                  ink_threshold: int = 32, backgrounds: Sequence[torch.Tensor] | None = None,
                  name: str | None = None) -> CanvasSet:
    """``n`` canvases of side ``size`` with objects drawn from ``objects`` (see the module docstring).

    Args:
        objects: the source images (uint8, ``pixel_max`` 255) and their labels.
        n: number of canvases.
        size: canvas side in pixels.
        seed: canvas ``i`` uses ``numpy.random.default_rng([seed, i])``.
        objects_per_canvas: inclusive range of the number of objects tried per canvas.
        scale: range of the scale factor applied to an object's side (uniform).
        max_overlap: largest intersection with an earlier box, as a fraction of the smaller box.
        mode: ``"ink"`` (max-blend, tight box of the ink) or ``"paste"`` (opaque rectangle).
        ink_threshold: ``"ink"`` mode: pixels of the scaled object above it (0..255) define the box.
        backgrounds: photos (uint8 ``(3, H, W)``) to crop backgrounds from; black when None.
    """
    if mode not in ("ink", "paste"):
        raise ValueError(f"mode={mode!r}; expected 'ink' or 'paste'")
    if n < 0 or size < 8:
        raise ValueError(f"n={n!r}, size={size!r}; expected n >= 0 and size >= 8")
    lo, hi = objects_per_canvas
    if not 1 <= lo <= hi:
        raise ValueError(f"objects_per_canvas={objects_per_canvas!r}; expected 1 <= lo <= hi")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale={scale!r}; expected 0 < lo <= hi")
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap={max_overlap!r}; expected a fraction in [0, 1]")
    channels, oh, ow = objects.images.shape[1:]
    if max(oh, ow) * scale[1] > size:
        raise ValueError(f"scale={scale!r}: objects of {oh}x{ow} px scaled by {scale[1]} exceed the canvas size={size}")
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    all_boxes, all_labels, all_sources = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        canvas = _background(rng, backgrounds, channels, size)
        boxes: list[tuple[int, int, int, int]] = []
        labels, sources = [], []
        for _ in range(int(rng.integers(lo, hi + 1))):
            k = int(rng.integers(len(objects)))
            s = float(rng.uniform(*scale))
            h, w = max(1, round(oh * s)), max(1, round(ow * s))
            obj = _resize(objects.images[k], h, w).clamp_(0, 255).round_()
            if mode == "ink":
                ink = (obj > ink_threshold).any(0)
                if not ink.any():
                    continue
                rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
                r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                obj = torch.where(obj > ink_threshold, obj, torch.zeros(()))  # box = all of the ink
            else:
                r0, r1, c0, c1 = 0, h, 0, w
            for _ in range(_MAX_TRIES):
                y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
                box = (x + c0, y + r0, x + c1, y + r1)
                if _overlap_ok(box, boxes, max_overlap):
                    break
            else:
                continue
            region = canvas[:, y:y + h, x:x + w]
            canvas[:, y:y + h, x:x + w] = torch.maximum(region, obj) if mode == "ink" else obj
            boxes.append(box)
            labels.append(int(objects.labels[k]))
            sources.append(k)
        images[i] = canvas.clamp_(0, 255).round_().to(torch.uint8)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
        all_sources.append(torch.tensor(sources, dtype=torch.int64))
    recipe = dict(seed=seed, n=n, size=size, objects_per_canvas=list(objects_per_canvas), scale=list(scale),
                  max_overlap=max_overlap, mode=mode, ink_threshold=ink_threshold,
                  backgrounds="photos" if backgrounds else "black", source=objects.name)
    return CanvasSet(images, all_boxes, all_labels, all_sources, list(objects.classes),
                     name or f"{objects.name} canvases", recipe)
