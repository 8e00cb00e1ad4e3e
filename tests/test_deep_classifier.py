"""ResNet-18/34-depth classifiers with residual, ODE or RK-Net stages, and their CIFAR runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from neuralode.experiments.image_training import parse_variants
from neuralode.experiments.registry import run_experiment
from neuralode.nn.deep_classifier import DEEP_VARIANTS, make_deep_classifier

SHARED = Path(os.environ.get("NEURALODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_variant_groups_expand_and_unknown_names_are_rejected():
    assert parse_variants("deep18") == ["resnet18", "odenet18", "rknet18"]
    assert parse_variants("odenet,deep34") == ["odenet", "resnet34", "odenet34", "rknet34"]
    assert set(DEEP_VARIANTS) == {f"{k}{d}" for k in ("resnet", "odenet", "rknet") for d in ("18", "34")}
    with pytest.raises(ValueError, match="variants='odenet50'"):
        parse_variants("odenet50")
    with pytest.raises(ValueError, match="variant='vgg16'"):
        make_deep_classifier("vgg16", n_classes=10)


def test_ode_and_rk_twins_share_parameters_and_have_fewer_than_the_resnet():
    for depth in ("18", "34"):
        res, ode, rk = (make_deep_classifier(f"{k}{depth}", n_classes=100, width=8) for k in ("resnet", "odenet", "rknet"))
        assert _count(ode) == _count(rk) < _count(res)
    # depth 34 adds residual blocks, not ODE stages: the ODE-Net does not grow
    assert _count(make_deep_classifier("odenet34", n_classes=10, width=8)) == \
        _count(make_deep_classifier("odenet18", n_classes=10, width=8))
    assert _count(make_deep_classifier("resnet34", n_classes=10, width=8)) > \
        _count(make_deep_classifier("resnet18", n_classes=10, width=8))


def test_logits_and_nfe_of_a_fixed_step_ode_variant():
    model = make_deep_classifier("odenet18", n_classes=10, width=8, method="rk4", step_size=0.5, gradient="direct")
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert model.ode_stats().nfe == 4 * 8  # four ODE stages, rk4 with two steps each
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert make_deep_classifier("resnet18", n_classes=10, width=8).ode_stats() is None


@pytest.mark.slow
def test_cifar10_runs_the_resnet18_depth_trio(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))
    monkeypatch.setenv("NEURALODE_CACHE", str(Path.home() / ".cache" / "neuralode"))  # reuse decoded CIFAR
    out = run_experiment("cifar10", quick=True, out=tmp_path / "c", overrides=[
        "variants=deep18", "deep_width=8", "max_train=64", "max_test=50", "epochs=1", "batch_size=32"])
    m = out.metrics
    assert m["odenet18_params"] == m["rknet18_params"] < m["resnet18_params"]
    assert m["odenet18_nfe_forward"] == 32 and m["rknet18_nfe_forward"] == 4 * 16 and m["resnet18_nfe_forward"] == 0
    for v in ("resnet18", "odenet18", "rknet18"):
        assert 0 <= m[f"{v}_test_accuracy"] <= 1 and m[f"{v}_train_images_per_s"] > 0
    report = (tmp_path / "c" / "report.md").read_text()
    assert "| odenet18 |" in report and "odenet18 F1" in report
