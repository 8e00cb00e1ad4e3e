"""The depth experiment end to end (tiny configuration) and its encoder-decoder networks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision

from neuralode.experiments.registry import run_experiment
from neuralode.nn.depth import ODEEncoder, VGGEncoder, make_depth_net

SHARED = Path(os.environ.get("NEURALODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_vgg_encoder_has_exactly_torchvision_vgg11_bn_feature_parameters():
    enc = VGGEncoder(1.0)
    ref = torchvision.models.vgg11_bn(weights=None).features
    assert _count(enc) == _count(ref) == 9_225_984
    convs = [m.out_channels for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [m.out_channels for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]


def test_ode_encoder_has_fewer_parameters_at_equal_widths_and_same_skip_shapes():
    vgg, ode = VGGEncoder(0.25), ODEEncoder(0.25, method="rk4", options={"step_size": 0.5}, gradient="direct")
    assert vgg.widths == ode.widths == [16, 32, 64, 128, 128]
    assert _count(ode) < 0.7 * _count(vgg)
    x = torch.randn(2, 3, 64, 64)
    (sv, bv), (so, bo) = vgg(x), ode(x)
    assert [s.shape for s in sv] == [s.shape for s in so] and bv.shape == bo.shape == (2, 128, 2, 2)


def test_depth_net_predicts_full_resolution_positive_depth_and_counts_nfe():
    net = make_depth_net("odenet", width=0.125, log_depth_bias=1.5, method="rk4", options={"step_size": 0.5},
                         gradient="direct")
    x = torch.randn(2, 3, 32, 64)
    d = net.depth(x)
    assert d.shape == (2, 32, 64) and bool((d > 0).all())
    assert net.nfe() == (5 * 8, 0)  # five stages, rk4 with two steps each
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 3, 40, 64))
    with pytest.raises(ValueError, match="encoder='resnet'"):
        make_depth_net("resnet")


@pytest.mark.slow
def test_tiny_depth_run_beats_the_mean_depth_map(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))
    monkeypatch.setenv("NEURALODE_CACHE", str(Path.home() / ".cache" / "neuralode"))  # reuse rendered scenes
    out = run_experiment("depth", quick=True, out=tmp_path / "d", overrides=[
        "image_size=32", "n_train=256", "n_test=32", "epochs=4", "real_height=64", "n_figure=2"])
    m = out.metrics
    for enc in ("vgg", "odenet"):
        assert m[f"{enc}_abs_rel"] < m["mean_map_abs_rel"], (enc, m)
        assert 0 < m[f"{enc}_aloe_abs_rel"] < 1 and 0 < m[f"{enc}_motorcycle_abs_rel"] < 1
    assert m["odenet_encoder_params"] < m["vgg_encoder_params"] and m["odenet_nfe_forward"] == 10
    assert m["vgg_nfe_forward"] == 0
    models = json.loads((tmp_path / "d" / "models.json").read_text())
    assert set(models["odenet"]["test"]) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"}
    report = (tmp_path / "d" / "report.md").read_text()
    assert "Middlebury 2006 Aloe" in report and "Middlebury 2014 Motorcycle" in report and "Target" in report
    assert (tmp_path / "d" / "figures" / "predictions.png").exists()
