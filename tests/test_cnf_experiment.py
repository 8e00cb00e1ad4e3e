"""The cnf-2d experiment: quick configuration end to end, references, and exact resume."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neuralode.experiments import cnf_2d as E
from neuralode.experiments.base import Run


def test_config_defaults_are_the_full_protocol_and_quick_is_small():
    full, quick = E.Config(), E.Config.quick()
    assert (full.method, full.rtol, full.atol, full.lr) == ("dopri5", 1e-5, 1e-5, 1e-3)
    assert full.hidden == (64, 64) and full.activation == "tanh" and full.dataset == "moons"
    assert set(full.variants.split(",")) == {"plain", "rnode"}
    assert quick.iterations < full.iterations and quick.n_train < full.n_train
    assert quick.eval_rtol == full.eval_rtol  # the quick NLL is measured as tightly as the full one


def test_references_kde_beats_the_gaussian_and_the_bandwidth_is_inside_its_grid():
    cfg = dataclasses.replace(E.Config.quick(), n_train=2000, n_val=1000, n_test=1000)
    data = E.make_data(cfg, seed=0)
    again = E.make_data(cfg, seed=0)
    assert all(torch.equal(data[k], again[k]) for k in data)
    g = E.gaussian_nll(data["train"], data["test"])
    kde = E.kde_fit(data["train"], data["val"], data["test"])
    assert kde["test_nll"] < g - 0.5
    assert min(kde["grid"]) < kde["bandwidth"] < max(kde["grid"])
    # the Gaussian reference is the maximum-likelihood fit: any other Gaussian does worse on train
    assert E.gaussian_nll(data["train"], data["train"]) < E.gaussian_nll(data["train"] * 1.1, data["train"])


def test_unknown_variant_or_dataset_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="variants must be a comma list"):
        E.run(dataclasses.replace(E.Config.quick(), variants="plain,ffjord"), Run(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'swissroll'"):
        E.run(dataclasses.replace(E.Config.quick(), dataset="swissroll"), Run(tmp_path))


def _tiny(**kw) -> E.Config:
    return dataclasses.replace(E.Config.quick(), n_train=600, n_val=300, n_test=300, variants="plain,rnode",
                               iterations=8, batch_size=64, checkpoint_every=3, eval_every=4, log_every=2,
                               grid=24, n_samples=200, **kw)


class _KillAt(Run):
    """A run that receives Ctrl-C at its ``kill_at``-th training step."""

    kill_at = 0

    def check_interrupt(self, save):
        self.kill_at -= 1
        if self.kill_at == 0:
            self.interrupt()
        super().check_interrupt(save)


@pytest.mark.parametrize("kill_at", [5, 11])  # inside the first variant; inside the second
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path, kill_at):
    cfg = _tiny(trace="hutchinson")  # Hutchinson noise comes from the checkpointed RNG too
    with Run(tmp_path / "a", config=cfg, seed=3) as run:
        run.start()
        uninterrupted = E.run(cfg, run)
    killed = _KillAt(tmp_path / "b", config=cfg, seed=3)
    killed.kill_at = kill_at
    with killed:
        killed.start()
        with pytest.raises(KeyboardInterrupt):
            E.run(cfg, killed)
    with Run(tmp_path / "b", config=cfg, seed=3, resume=True) as run:
        run.start()
        resumed = E.run(cfg, run)
    for key in ("test_nll", "plain/test_nll", "rnode/test_nll", "rnode/kinetic"):
        assert resumed[key] == uninterrupted[key], key


@pytest.mark.slow
def test_quick_experiment_beats_the_fitted_gaussian_and_writes_its_report(tmp_path):
    from neuralode.experiments import registry

    torch.set_num_threads(1)
    outcome = registry.run_experiment("cnf-2d", quick=True, out=tmp_path / "run")
    m = outcome.metrics
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "result.json").read_text()) == m
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    for key in ("test_nll", "kde_nll", "gaussian_nll", "nfe_forward", "eval_nfe", "kinetic", "jacobian"):
        assert np.isfinite(m[key]), key
    assert m["test_nll"] < m["gaussian_nll"] - 0.3, m  # the quick bar: far below the fitted Gaussian
    assert m["kde_nll"] < m["gaussian_nll"] and m["nfe_forward"] > 0 and m["eval_nfe"] > 0
    report = (run_dir / "report.md").read_text()
    assert "| model | test NLL |" in report and "Gaussian KDE" in report and "Quick configuration" in report
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"density.png", "transport.png", "training.png"} <= figures
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("nfe_forward" in r and "train_nll" in r for r in lines)
