"""Eigen et al.'s depth metrics against values computed by hand; Middlebury loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from neuralode.data.middlebury import MOTORCYCLE_CALIBRATION, disparity_to_depth, load_aloe, load_motorcycle
from neuralode.experiments.depth_metrics import depth_metrics, image_depth_metrics


def test_metrics_match_hand_computed_values():
    pred = torch.tensor([2.0, 4.0, 1.5])
    gt = torch.tensor([1.0, 4.0, 1.0])
    m = image_depth_metrics(pred, gt)
    # errors 1, 0, 0.5 over ground truths 1, 4, 1; ratios 2, 1, 1.5
    assert m["abs_rel"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((1 + 0 + 0.25) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 0.25) / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(1.5) ** 2) / 3))
    assert m["delta1"] == pytest.approx(1 / 3)   # only ratio 1 < 1.25
    assert m["delta2"] == pytest.approx(2 / 3)   # 1 and 1.5 < 1.5625
    assert m["delta3"] == pytest.approx(2 / 3)   # 2 > 1.953


def test_invalid_pixels_are_ignored_and_images_are_averaged():
    gt = torch.tensor([[1.0, 0.0], [float("nan"), 2.0]])
    pred = torch.tensor([[2.0, 100.0], [100.0, 2.0]])
    assert image_depth_metrics(pred, gt)["abs_rel"] == pytest.approx(0.5)  # (1 + 0) / 2
    valid = torch.tensor([[False, True], [True, True]])
    assert image_depth_metrics(pred, gt, valid)["abs_rel"] == pytest.approx(0.0)
    batch = depth_metrics(torch.stack([pred, gt.nan_to_num(1.0)]), torch.stack([gt, gt]))
    assert batch["abs_rel"] == pytest.approx((0.5 + 0.0) / 2)  # per image, then the mean


def test_median_scaling_removes_a_global_scale():
    gt = torch.rand(5, 8, 8) * 5 + 1
    m = depth_metrics(3.7 * gt, gt, median_scale=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6) and m["delta1"] == 1.0
    assert depth_metrics(3.7 * gt, gt)["abs_rel"] == pytest.approx(2.7)


def test_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        image_depth_metrics(torch.ones(2, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="no valid"):
        image_depth_metrics(torch.ones(2, 2), torch.zeros(2, 2))


def test_disparity_to_depth_masks_unknown_and_applies_the_offset():
    disp = np.array([[0.0, 2.0], [np.nan, 4.0]])
    depth, valid = disparity_to_depth(disp, focal_baseline=8.0)
    np.testing.assert_array_equal(valid, [[False, True], [False, True]])
    np.testing.assert_allclose(depth, [[0.0, 4.0], [0.0, 2.0]])
    depth, valid = disparity_to_depth(np.array([0.0, 2.0]), focal_baseline=12.0, doffs=2.0, invalid_zero=False)
    np.testing.assert_allclose(depth, [6.0, 3.0])
    assert valid.all()


def test_aloe_loader_turns_disparity_into_inverse_depth_and_masks_zeros(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "aloeL.jpg")
    disp = np.array([[0, 10, 20, 40, 50]] * 6, dtype=np.uint8)
    Image.fromarray(disp).save(tmp_path / "aloeGT.png")
    scene = load_aloe(tmp_path)
    assert scene.image.shape == (3, 6, 5) and scene.image.dtype == torch.uint8
    assert not scene.valid[:, 0].any() and scene.valid[:, 1:].all()
    np.testing.assert_allclose(scene.depth[0, 1:].numpy(), [1 / 10, 1 / 20, 1 / 40, 1 / 50], rtol=1e-6)
    assert (scene.depth[:, 0] == 0).all()


def test_aloe_loader_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="aloeL.jpg"):
        load_aloe(tmp_path)


def test_motorcycle_depth_uses_the_published_calibration():
    from skimage.data import stereo_motorcycle

    _, _, disp = stereo_motorcycle()
    scene = load_motorcycle()
    assert scene.units == "mm" and tuple(scene.image.shape) == (3, *disp.shape)
    np.testing.assert_array_equal(scene.valid.numpy(), np.isfinite(disp))
    i, j = np.argwhere(np.isfinite(disp))[1234]
    c = MOTORCYCLE_CALIBRATION
    assert scene.depth[i, j].item() == pytest.approx(994.978 * 193.001 / (disp[i, j] + 31.086), rel=1e-6)
    assert c["focal_px"] == 994.978 and c["doffs_px"] == 31.086
    d = scene.depth[scene.valid]
    assert 1000 < d.median().item() < 5000  # a motorcycle a couple of metres from the camera
