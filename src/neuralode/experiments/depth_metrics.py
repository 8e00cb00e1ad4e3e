"""Single-image depth metrics of Eigen, Puhrsch & Fergus (NeurIPS 2014), as monodepth evaluates them.

For prediction ``d`` and ground truth ``g`` over the valid pixels of one image:

=============  ==============================================
``abs_rel``    mean ``|d - g| / g``
``sq_rel``     mean ``(d - g)^2 / g``
``rmse``       ``sqrt(mean((d - g)^2))``
``rmse_log``   ``sqrt(mean((log d - log g)^2))``
``delta1..3``  fraction of pixels with ``max(d/g, g/d) < 1.25^k``
=============  ==============================================

Each metric is computed per image and then averaged over images (the convention of Eigen et al.
and of monodepth's evaluation code). ``median_scale=True`` first multiplies each prediction by
``median(g) / median(d)`` over its valid pixels — the scale-invariant protocol used when the
prediction's scale cannot be known (zero-shot on real scenes whose depth is known up to scale).
"""

from __future__ import annotations

import torch

__all__ = ["METRICS", "depth_metrics", "image_depth_metrics"]

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def image_depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, *,
                        median_scale: bool = False) -> dict[str, float]:
    """The metrics of one image. ``pred``, ``gt``: depth maps of one shape; ``valid``: bool mask.

    Pixels where ``gt`` is not finite and positive are invalid whatever ``valid`` says.
    Predictions are clamped to at least 1e-6 so that ``log`` is defined.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    pred, gt = pred.double(), gt.double()
    ok = torch.isfinite(gt) & (gt > 0) & torch.isfinite(pred)
    if valid is not None:
        if valid.shape != gt.shape:
            raise ValueError(f"valid {tuple(valid.shape)} must have gt's shape {tuple(gt.shape)}")
        ok &= valid.bool()
    if not ok.any():
        raise ValueError("no valid ground-truth pixel in this image")
    d, g = pred[ok].clamp_min(1e-6), gt[ok]
    if median_scale:
        d = d * (g.median() / d.median())
    ratio = torch.maximum(d / g, g / d)
    return {
        "abs_rel": float(((d - g).abs() / g).mean()),
        "sq_rel": float(((d - g) ** 2 / g).mean()),
        "rmse": float(((d - g) ** 2).mean().sqrt()),
        "rmse_log": float(((d.log() - g.log()) ** 2).mean().sqrt()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25 ** 2).double().mean()),
        "delta3": float((ratio < 1.25 ** 3).double().mean()),
    }


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, *,
                  median_scale: bool = False) -> dict[str, float]:
    """Per-image metrics averaged over a batch ``(N, H, W)`` (or one image ``(H, W)``)."""
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
        valid = None if valid is None else valid[None]
    per = [image_depth_metrics(pred[i], gt[i], None if valid is None else valid[i], median_scale=median_scale)
           for i in range(len(pred))]
    return {k: sum(p[k] for p in per) / len(per) for k in METRICS}
