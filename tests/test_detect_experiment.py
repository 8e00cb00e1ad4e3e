"""`neuralode run detect` end to end in a tiny configuration: it completes, writes its report and
figures, and its detectors beat boxes placed at random."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from neuralode.experiments.registry import run_experiment

torch.set_num_threads(1)

SHARED = Path(os.environ.get("NEURALODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def data_env(monkeypatch):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))


@pytest.mark.slow
def test_tiny_detect_run_beats_random_boxes_and_reports_everything(tmp_path):
    out = run_experiment("detect", quick=True, out=tmp_path / "d", overrides=[
        "variants=resnet,odenet", "n_train=160", "n_val=30", "n_test=40", "epochs=2", "rtol=0.1", "atol=0.1",
        "test_tolerances=0.3,0.01", "n_figure=2"])
    m = out.metrics
    for v in ("resnet", "odenet"):
        assert m[f"{v}_map50"] > max(0.03, 5 * m["random_map50"]), (v, m[f"{v}_map50"], m["random_map50"])
        assert 0 <= m[f"{v}_precision"] <= 1 and 0 <= m[f"{v}_recall"] <= 1
    assert m["odenet_nfe_forward"] > 0 and m["odenet_nfe_backward"] > 0 and m["resnet_nfe_forward"] == 0
    assert m["odenet_vs_resnet_backbone_params"] < 1
    models = json.loads((tmp_path / "d" / "models.json").read_text())
    sweep = models["odenet"]["tolerance_sweep"]
    assert [r["tolerance"] for r in sweep] == [0.3, 0.01] and sweep[0]["nfe"] < sweep[1]["nfe"]
    assert set(models["resnet"]["per_class"]) == {str(i) for i in range(10)}
    for name in ("boxes.png", "pr_curves.png", "accuracy_vs_nfe.png", "loss.png"):
        assert (tmp_path / "d" / "figures" / name).exists()
    report = (tmp_path / "d" / "report.md").read_text()
    assert "| odenet |" in report and "random boxes" in report and "Per-class AP" in report


def test_unknown_variant_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="variants='vgg'"):
        run_experiment("detect", quick=True, out=tmp_path / "bad", overrides=["variants=vgg"])
