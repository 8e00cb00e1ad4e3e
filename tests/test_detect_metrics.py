"""Detection metrics (neuralode.experiments.detection_metrics) against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import torch

from neuralode.experiments import detection_metrics as dm


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def _p(boxes, labels, scores):
    return {**_t(boxes, labels), "scores": torch.tensor(scores, dtype=torch.float64)}


TRUTH = [_t([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]), _t([[5, 5, 15, 15]], [1])]
PREDS = [
    # a hit (0.9), a duplicate of it (0.8, false), a wrong class on the second box (0.7, false)
    _p([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7]),
    # a hit with IoU 64/100 = 0.64 (0.6) and a miss far away (0.95)
    _p([[7, 7, 15, 15], [40, 40, 50, 50]], [1, 1], [0.6, 0.95]),
]


def test_greedy_matching_marks_hits_duplicates_and_wrong_classes():
    scores, tps, n = dm.match_detections(PREDS, TRUTH)
    assert n == 3
    got = dict(zip(scores.tolist(), tps.tolist()))
    assert got == {0.9: True, 0.8: False, 0.7: False, 0.95: False, 0.6: True}
    _, tps_strict, _ = dm.match_detections(PREDS, TRUTH, iou=0.7)  # 0.64 < 0.7: no longer a hit
    assert tps_strict.sum() == 1


def test_precision_recall_f1_at_thresholds_by_hand():
    scores, tps, n = dm.match_detections(PREDS, TRUTH)
    # above 0.85: 0.95 (miss), 0.9 (hit) -> P 1/2, R 1/3
    assert dm.prf_at(scores, tps, n, 0.85) == {"precision": 0.5, "recall": 1 / 3, "f1": 0.4}
    # everything: 2 hits of 5 -> P 0.4, R 2/3, F1 0.5
    r = dm.prf_at(scores, tps, n, 0.0)
    assert math.isclose(r["precision"], 0.4) and math.isclose(r["recall"], 2 / 3) and math.isclose(r["f1"], 0.5)
    assert dm.best_f1_threshold(scores, tps, n) == 0.6
    sweep = dm.pr_sweep(scores, tps, n)
    np.testing.assert_allclose(sweep["threshold"], [0.95, 0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(sweep["recall"], [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_coco_map_is_one_for_perfect_boxes_and_drops_above_iou_half_for_shifted_ones():
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in TRUTH]
    r = dm.coco_map(perfect, TRUTH, ["zero", "one", "two"])
    assert math.isclose(r["map"], 1.0) and math.isclose(r["map50"], 1.0)
    assert math.isclose(r["per_class"]["zero"]["ap"], 1.0) and math.isclose(r["per_class"]["one"]["ap50"], 1.0)
    assert math.isnan(r["per_class"]["two"]["ap"])  # no truth of that class
    shifted = [{"boxes": t["boxes"] + 1.5, "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in TRUTH]  # IoU (8.5^2)/(2*100-8.5^2) = 0.565 for every box
    r = dm.coco_map(shifted, TRUTH, ["zero", "one", "two"])
    assert math.isclose(r["map50"], 1.0) and math.isclose(r["map"], 0.2, abs_tol=1e-6)  # hits only at IoU .50 and .55


def test_random_boxes_score_near_zero_against_real_boxes():
    g = torch.Generator().manual_seed(0)
    truths = []
    for _ in range(50):
        xy = torch.randint(0, 40, (2, 2), generator=g).float()
        truths.append(_t(torch.cat([xy, xy + 20], 1).tolist(), torch.randint(0, 5, (2,), generator=g).tolist()))
    preds = dm.random_box_predictions(truths, 50, 64, 5, seed=0)
    assert len(preds) == 50 and preds[0]["boxes"].shape == (10, 4)
    sides = preds[0]["boxes"][:, 2:] - preds[0]["boxes"][:, :2]
    torch.testing.assert_close(sides, torch.full_like(sides, 20.0))  # sizes from the truth
    assert dm.coco_map(preds, truths, list("abcde"))["map50"] < 0.1
