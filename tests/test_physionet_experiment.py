"""The physionet experiment: the quick configuration end to end, and its pieces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neuralode.experiments import physionet as E


def _data_root() -> Path | None:
    env = os.environ.get("NEURALODE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data"
    return root if (root / "physionet2012" / "set-a.tar.gz").is_file() else None


def test_config_defaults_are_the_full_protocol_and_quick_is_small():
    full, quick = E.Config(), E.Config.quick()
    assert full.n_patients is None and full.round_hours == 0.1 and full.normalisation == "minmax"
    assert set(full.models) == {"gru_dt", "gru_decay", "ode_rnn", "latent_ode_rnn", "latent_ode_odernn"}
    assert quick.n_patients < 1000 and quick.epochs < full.epochs


def test_holdout_is_fixed_per_patient_and_never_empty_or_total():
    class P:
        def __init__(self, rid, n):
            self.record_id, self.times = rid, np.arange(n, dtype=np.float32)

    pats = [P(1, 1), P(2, 2), P(3, 50), P(4, 0)]  # set a has stays without any observation
    a = E._holdout_keep(pats, 0.2, seed=7)
    b = E._holdout_keep(pats[::-1], 0.2, seed=7)[::-1]  # independent of batch order
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].tolist() == [True]  # a single observation is kept as input
    assert a[1].sum() == 1 and 0 < a[2].sum() < 50 and len(a[3]) == 0


@pytest.mark.slow
def test_quick_experiment_runs_and_beats_the_training_mean(tmp_path, monkeypatch):
    root = _data_root()
    if root is None:
        pytest.skip("PhysioNet 2012 files not available (set NEURALODE_DATA)")
    from neuralode.experiments import registry

    monkeypatch.setenv("NEURALODE_DATA", str(root))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    outcome = registry.run_experiment("physionet", quick=True, out=tmp_path / "run")
    m = outcome.metrics
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "result.json").read_text()) == m
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["round_hours"] == 1.0 and config["enc_method"] == "euler"  # choices recorded
    assert config["protocol"] == "ours" and config["p_extrap"] == 0.0
    for model in E.Config.quick().models:
        for key in ("interp_mse", "extrap_mse", "auc", "params", "s_per_epoch", "nfe_forward"):
            assert np.isfinite(m[f"{model}/{key}"]), (model, key)
        assert 0.0 <= m[f"{model}/auc"] <= 1.0
        assert m[f"{model}/auc_ci_lo"] <= m[f"{model}/auc"] <= m[f"{model}/auc_ci_hi"]
        assert np.isfinite(m[f"{model}/mse_rpc"])
    assert m["min_auc"] >= 0.65  # issue 12: no model near chance in the quick configuration (seed 0, compact batches: 0.69-0.81)
    for model in E.ODE_MODELS:
        assert m[f"{model}/nfe_forward"] > 0
    assert m["best_interp_mse"] < m["mean_baseline_interp_mse"]
    assert m["ode_rnn/interp_mse"] < m["mean_baseline_interp_mse"]
    report = (run_dir / "report.md").read_text()
    assert "| model |" in report and "predict training mean" in report
    figures = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert "roc.png" in figures and "nfe.png" in figures
    assert any(name.startswith("patient_") for name in figures)
    assert not list(root.glob("physionet2012/*parsed*"))  # nothing written into NEURALODE_DATA


def test_unknown_model_is_rejected_before_training(tmp_path):
    from neuralode.experiments.base import Run

    config = E.Config.quick()
    config.models = ("gru_dt", "transformer")
    with pytest.raises(ValueError, match="unknown models"):
        E.run(config, Run(tmp_path))
