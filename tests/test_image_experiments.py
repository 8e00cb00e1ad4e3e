"""The image experiments end to end, each in a tiny configuration (the digits one in its quick one)."""

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
def data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))
    monkeypatch.setenv("NEURALODE_CACHE", str(Path.home() / ".cache" / "neuralode"))  # reuse decoded CIFAR


def test_digits_quick_run_reaches_97_percent(tmp_path):
    out = run_experiment("digits", quick=True, out=tmp_path / "digits")
    assert out.metrics["odenet_test_accuracy"] >= 0.97
    assert out.metrics["odenet_nfe_forward"] == 8 and out.metrics["odenet_nfe_backward"] == 8
    assert (tmp_path / "digits" / "figures" / "loss.png").exists()
    assert (tmp_path / "digits" / "odenet.pt").exists()
    assert "| odenet |" in (tmp_path / "digits" / "report.md").read_text()


def test_mnist_table1_with_all_variants_on_a_subset(tmp_path):
    out = run_experiment("mnist", quick=True, out=tmp_path / "mnist", overrides=[
        "variants=all", "max_train=256", "max_test=200", "rk_step=0.5"])
    m = out.metrics
    assert m["odenet_params"] == m["rknet_params"] == 208_266 and m["resnet_params"] == 576_778
    assert m["resnet_nfe_forward"] == 0 and m["rknet_nfe_backward"] == 0 and m["odenet_nfe_backward"] > 0
    report = (tmp_path / "mnist" / "report.md").read_text()
    for col in ("test_error", "params", "peak_memory_mb", "time_per_epoch_s", "nfe_forward", "nfe_backward"):
        assert col in report
    models = json.loads((tmp_path / "mnist" / "models.json").read_text())
    assert set(models) == {"odenet", "resnet", "rknet"}


def test_cifar10_reports_per_class_scores_on_the_jpeg_copy(tmp_path):
    out = run_experiment("cifar10", quick=True, out=tmp_path / "c", overrides=[
        "max_train=128", "max_test=100", "epochs=1", "batch_size=64"])
    assert out.metrics["dataset"] == "CIFAR-10 (JPEG copy)"
    rows = json.loads((tmp_path / "c" / "per_class.json").read_text())
    assert [r["class"] for r in rows][:2] == ["airplane", "automobile"]
    assert {"odenet F1", "resnet F1", "odenet P", "resnet R"} <= set(rows[0])
    assert "CIFAR-10 (JPEG copy)" in (tmp_path / "c" / "report.md").read_text()


def test_solver_study_table_and_memory_against_horizon(tmp_path):
    run_experiment("solver-study", quick=True, out=tmp_path / "s", overrides=[
        "datasets=digits", "pretrain_steps=3", "pretrain_batch=32", "batch_size=16", "measure_steps=1",
        "eval_images=50", "horizons=0.5,2.0", "horizon_batch=16"])
    rows = json.loads((tmp_path / "s" / "solver_table.json").read_text())
    assert len(rows) == 10  # 5 solver settings x {adjoint, direct}
    by = {(r["solver"], r["gradient"]): r for r in rows}
    assert by[("rk4 h=0.25", "direct")]["nfe_forward"] == 16
    assert by[("euler h=0.25", "adjoint")]["nfe_backward"] > 0
    assert by[("euler h=0.25", "direct")]["nfe_backward"] == 0
    horizon = json.loads((tmp_path / "s" / "memory_vs_horizon.json").read_text())
    saved = {(r["T"], r["gradient"]): r["saved_activations_mb"] for r in horizon}
    assert saved[(2.0, "direct")] > 3 * (saved[(0.5, "direct")] - saved[(0.5, "adjoint")])
    assert saved[(2.0, "adjoint")] == pytest.approx(saved[(0.5, "adjoint")])
    figures = {p.name for p in (tmp_path / "s" / "figures").iterdir()}
    assert {"solvers_sklearn.png", "memory_vs_horizon.png"} <= figures


def test_trajectory_pca_figures(tmp_path):
    out = run_experiment("trajectory-pca", quick=True, out=tmp_path / "p", overrides=[
        "dataset=digits", "train_steps=5", "train_batch=32", "n_points=100", "n_times=5", "n_examples=3"])
    figures = {p.name for p in (tmp_path / "p" / "figures").iterdir()}
    assert {"pca_time_independent.png", "pca_time_dependent.png", "class_probabilities.png"} <= figures
    per_time = json.loads((tmp_path / "p" / "per_time.json").read_text())
    assert [r["t"] for r in per_time] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert 0 <= out.metrics["head_accuracy_t1"] <= 1


def test_trajectory_pca_uses_given_weights_and_rejects_missing_ones(tmp_path):
    from neuralode.nn.image import make_image_classifier

    torch.save(make_image_classifier("odenet", "digits").state_dict(), tmp_path / "odenet.pt")
    out = run_experiment("trajectory-pca", quick=True, out=tmp_path / "p", overrides=[
        "dataset=digits", f"weights={tmp_path}", "n_points=60", "n_times=3", "n_examples=2"])
    assert out.metrics["weights"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="odenet.pt"):
        run_experiment("trajectory-pca", quick=True, out=tmp_path / "q", overrides=[
            "dataset=digits", f"weights={tmp_path / 'nowhere'}"])


def test_resuming_a_multi_model_run_skips_the_models_it_finished(tmp_path):
    overrides = ["variants=resnet,odenet", "epochs=1", "max_train=64", "max_test=40", "batch_size=32"]
    first = run_experiment("digits", quick=True, out=tmp_path / "d", overrides=overrides)
    lines = (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()
    again = run_experiment("digits", quick=True, out=tmp_path / "d", overrides=overrides, resume=True)
    assert again.metrics == first.metrics
    assert (tmp_path / "d" / "metrics.jsonl").read_text().splitlines() == lines  # nothing retrained
