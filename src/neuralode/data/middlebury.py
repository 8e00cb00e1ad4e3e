"""Two real scenes with ground-truth depth for zero-shot evaluation (Middlebury stereo).

``load_aloe()``
    Middlebury 2006 "Aloe" (Scharstein & Pal, CVPR 2007; Hirschmüller & Scharstein, CVPR 2007):
    the left view ``aloeL.jpg`` (1282×1110) and its 8-bit disparity ``aloeGT.png`` (0 = unknown),
    from ``<data_root()>/middlebury_aloe/`` (verified by SHA-256; no download URL: OpenCV's
    sample data ships it). Focal length and baseline are not shipped, so depth is known only up
    to scale: ``depth = 1 / disparity`` (disparity offset zero). Evaluate median-scaled.
``load_motorcycle()``
    Middlebury 2014 "Motorcycle" (Scharstein et al., GCPR 2014) as scikit-image ships it
    (``skimage.data.stereo_motorcycle()``, 4× downsampled, 500×741, no download needed), with
    the metric calibration of its docstring: ``depth_mm = f·B / (d + doffs)``, f = 994.978 px,
    B = 193.001 mm, doffs = 31.086 px. Non-finite disparities are unknown.

Both return a :class:`RealDepth` whose ``valid`` mask marks the pixels with known depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import Resource, fetch_all

__all__ = ["RealDepth", "disparity_to_depth", "load_aloe", "load_motorcycle"]

ALOE_LEFT = Resource("aloeL.jpg", sha256="cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee")
ALOE_GT = Resource("aloeGT.png", sha256="39ce4f3cb48d797d1091c5152f93361d8104298c337f8a1c134d87dda3442c04")
# Middlebury 2014 Motorcycle, 4x downsampled (skimage.data.stereo_motorcycle docstring)
MOTORCYCLE_CALIBRATION = {"focal_px": 994.978, "baseline_mm": 193.001, "doffs_px": 31.086}


@dataclass
class RealDepth:
    """One real image ``uint8 (3, H, W)``, its depth ``float32 (H, W)`` and validity ``bool (H, W)``."""

    name: str
    image: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    units: str = "relative"


def disparity_to_depth(disparity: np.ndarray, *, focal_baseline: float = 1.0, doffs: float = 0.0,
                       invalid_zero: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``depth = focal_baseline / (disparity + doffs)`` and the mask of pixels where it is defined.

    Invalid: non-finite disparities, ``disparity + doffs <= 0``, and (``invalid_zero``) a
    disparity of exactly 0, Middlebury's code for "unknown". Invalid pixels get depth 0.
    """
    d = np.asarray(disparity, dtype=np.float64)
    denom = d + doffs
    valid = np.isfinite(d) & (denom > 0)
    if invalid_zero:
        valid &= d != 0
    depth = np.zeros_like(d)
    depth[valid] = focal_baseline / denom[valid]
    return depth.astype(np.float32), valid


def load_aloe(root: str | Path | None = None) -> RealDepth:
    """Middlebury "Aloe", left view, with depth ∝ 1/disparity (see the module docstring).

    ``root``: a folder holding ``aloeL.jpg`` and ``aloeGT.png`` (default: the data set's folder
    under ``$NEURALODE_DATA`` / the cache, files verified by SHA-256).
    """
    from PIL import Image

    if root is None:
        left, gt = fetch_all([ALOE_LEFT, ALOE_GT], "middlebury_aloe", download=False)
    else:
        left, gt = Path(root) / ALOE_LEFT.filename, Path(root) / ALOE_GT.filename
        for p in (left, gt):
            if not p.is_file():
                raise FileNotFoundError(f"root={str(root)!r} lacks {p.name}")
    image = np.asarray(Image.open(left).convert("RGB"))
    disp = np.asarray(Image.open(gt))
    if disp.ndim == 3:  # a grey PNG saved as RGB: every channel holds the disparity
        disp = disp[..., 0]
    if disp.shape != image.shape[:2]:
        raise ValueError(f"{gt}: disparity {disp.shape} does not match the image {image.shape[:2]}")
    depth, valid = disparity_to_depth(disp)
    return RealDepth("Middlebury 2006 Aloe", torch.from_numpy(image.transpose(2, 0, 1).copy()),
                     torch.from_numpy(depth), torch.from_numpy(valid))


def load_motorcycle() -> RealDepth:
    """Middlebury 2014 "Motorcycle" from scikit-image, metric depth in mm (see the module docstring)."""
    try:
        from skimage.data import stereo_motorcycle
    except ImportError as exc:
        raise ImportError("load_motorcycle needs scikit-image: pip install 'neuralode[depth]'") from exc
    left, _, disp = stereo_motorcycle()
    c = MOTORCYCLE_CALIBRATION
    depth, valid = disparity_to_depth(disp, focal_baseline=c["focal_px"] * c["baseline_mm"],
                                      doffs=c["doffs_px"], invalid_zero=False)
    return RealDepth("Middlebury 2014 Motorcycle", torch.from_numpy(np.ascontiguousarray(left.transpose(2, 0, 1))),
                     torch.from_numpy(depth), torch.from_numpy(valid), units="mm")
