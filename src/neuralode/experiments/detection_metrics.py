"""Detection metrics: precision / recall / F1 at IoU 0.5 over score thresholds, COCO AP via pycocotools.

Predictions and ground truth are per image: ``{"boxes": (n, 4) x0 y0 x1 y1, "labels": (n,),
"scores": (n,)}`` (no scores for the ground truth). Labels are class indices; matching is
class-aware.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["coco_map", "match_detections", "pr_sweep", "prf_at", "random_box_predictions"]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes ``a`` (n, 4) and ``b`` (m, 4)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def match_detections(preds: Sequence[dict], truths: Sequence[dict], iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching per image in descending score (as in PASCAL VOC / COCO).

    Returns ``(scores, is_true_positive, n_truth)`` over all detections. A detection is a true
    positive when it overlaps a not-yet-matched truth box of its class with IoU >= ``iou``.
    Because matching runs in score order, the matches of the detections above any threshold
    are those of the full list restricted to them, so one matching serves every threshold.
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} images")
    scores, tps, n_truth = [], [], 0
    for p, t in zip(preds, truths):
        pb, ps, pl = _np(p["boxes"]).reshape(-1, 4), _np(p["scores"]).reshape(-1), _np(p["labels"]).reshape(-1)
        tb, tl = _np(t["boxes"]).reshape(-1, 4), _np(t["labels"]).reshape(-1)
        n_truth += len(tb)
        order = np.argsort(-ps, kind="stable")
        matched = np.zeros(len(tb), dtype=bool)
        ious = _iou(pb, tb) if len(pb) and len(tb) else np.zeros((len(pb), len(tb)))
        for j in order:
            ok = (~matched) & (tl == pl[j]) & (ious[j] >= iou) if len(tb) else np.zeros(0, dtype=bool)
            hit = bool(ok.any())
            if hit:
                matched[int(np.argmax(np.where(ok, ious[j], -1.0)))] = True
            scores.append(float(ps[j]))
            tps.append(hit)
    return np.asarray(scores, dtype=float), np.asarray(tps, dtype=bool), n_truth


def pr_sweep(scores: np.ndarray, tps: np.ndarray, n_truth: int) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at every distinct score threshold (detections with score >= t)."""
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], tps[order].astype(float)
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)  # end of each tie
    ctp, cfp, s = ctp[last], cfp[last], s[last]
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    recall = ctp / max(n_truth, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {"threshold": s, "precision": precision, "recall": recall, "f1": f1}


def prf_at(scores: np.ndarray, tps: np.ndarray, n_truth: int, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 of the detections with score >= ``threshold``."""
    keep = scores >= threshold
    tp = float(tps[keep].sum())
    fp = float(keep.sum()) - tp
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / n_truth if n_truth else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f}


def best_f1_threshold(scores: np.ndarray, tps: np.ndarray, n_truth: int) -> float:
    """The score threshold that maximises F1 (1.0 when there are no detections)."""
    sweep = pr_sweep(scores, tps, n_truth)
    if not len(sweep["f1"]):
        return 1.0
    return float(sweep["threshold"][int(np.argmax(sweep["f1"]))])


def coco_map(preds: Sequence[dict], truths: Sequence[dict], classes: Sequence[str]) -> dict[str, Any]:
    """COCO box AP with pycocotools' evaluator: mAP@[.5:.95], mAP@0.5 and per-class AP (both).

    Labels are 0-based indices into ``classes``; boxes x0 y0 x1 y1 in pixels. Returns
    ``{"map": .., "map50": .., "per_class": {name: {"ap": .., "ap50": ..}}}`` (AP of a class with
    no truth is NaN, as in pycocotools).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("COCO AP needs pycocotools: pip install 'neuralode[detect]' (or pycocotools)") from exc

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        images.append({"id": i})
        for b, lab in zip(_np(t["boxes"]).reshape(-1, 4), _np(t["labels"]).reshape(-1)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(lab),
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for b, lab, s in zip(_np(p["boxes"]).reshape(-1, 4), _np(p["labels"]).reshape(-1), _np(p["scores"]).reshape(-1)):
            detections.append({"image_id": i, "category_id": int(lab), "score": float(s),
                               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k, "name": c} for k, c in enumerate(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not detections:
            return {"map": 0.0, "map50": 0.0, "per_class": {c: {"ap": 0.0, "ap50": 0.0} for c in classes}}
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    per_class = {}
    for k, c in enumerate(classes):
        pk = prec[:, :, k, 0, -1]
        valid = pk[pk > -1]
        p50 = pk[0][pk[0] > -1]
        per_class[c] = {"ap": float(valid.mean()) if valid.size else float("nan"),
                        "ap50": float(p50.mean()) if p50.size else float("nan")}
    return {"map": float(max(ev.stats[0], 0.0)), "map50": float(max(ev.stats[1], 0.0)), "per_class": per_class}


def random_box_predictions(truths_train: Sequence[dict], n_images: int, size: int, n_classes: int, *,
                           per_image: int = 10, seed: int = 0) -> list[dict]:
    """The box-at-random baseline: boxes with sides drawn from the training boxes, uniform places,
    classes and scores — what a detector that learnt only the box-size statistics would output."""
    rng = np.random.default_rng(seed)
    sides = np.concatenate([_np(t["boxes"]).reshape(-1, 4) for t in truths_train])
    wh = np.stack([sides[:, 2] - sides[:, 0], sides[:, 3] - sides[:, 1]], 1)
    out = []
    for _ in range(n_images):
        pick = wh[rng.integers(len(wh), size=per_image)]
        x0 = rng.uniform(0, size - pick[:, 0])
        y0 = rng.uniform(0, size - pick[:, 1])
        boxes = np.stack([x0, y0, x0 + pick[:, 0], y0 + pick[:, 1]], 1)
        out.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32),
                    "labels": torch.as_tensor(rng.integers(n_classes, size=per_image)),
                    "scores": torch.as_tensor(rng.uniform(size=per_image), dtype=torch.float32)})
    return out
