"""fit-spiral / fit-linear: the trajectory data, the snippet batches, the quick runs and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuralode.data.trajectories import CUBIC_A, LINEAR_3D, cubic_spiral, linear_system, snippet_batch
from neuralode.experiments import fit_dynamics as E
from neuralode.experiments import registry
from neuralode.experiments.base import Run

# ----------------------------------------------------------------------------- data


def test_cubic_spiral_is_torchdiffeqs_demo_problem_and_matches_scipy():
    from scipy.integrate import solve_ivp

    data = cubic_spiral()
    assert data.y.shape == (1000, 1, 2) and data.t.shape == (1000,)
    assert float(data.t[-1]) == pytest.approx(25.0)
    torch.testing.assert_close(data.y[0, 0], torch.tensor([2.0, 0.0]))
    a = np.array(CUBIC_A)
    ref = solve_ivp(lambda t, y: (y**3) @ a, (0.0, 25.0), [2.0, 0.0], t_eval=data.t.double().numpy(),
                    method="DOP853", rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(data.y[:, 0].numpy(), ref.y.T, atol=1e-5)


def test_linear_trajectories_are_exact_solutions():
    data = linear_system(LINEAR_3D, n_traj=4, n_points=2001, t_max=2.0, seed=3)
    assert data.y.shape == (2001, 4, 3)
    torch.testing.assert_close(data.y[0], data.y0)
    dt = float(data.t[1] - data.t[0])
    dydt = (data.y[2:] - data.y[:-2]).double() / (2 * dt)  # central differences
    torch.testing.assert_close(dydt, data.field(data.y[1:-1].double()), rtol=0, atol=1e-3)
    # seeded
    torch.testing.assert_close(linear_system(LINEAR_3D, n_traj=4, seed=3).y0, data.y0)
    assert not torch.allclose(linear_system(LINEAR_3D, n_traj=4, seed=4).y0, data.y0)


def test_linear_system_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        linear_system([[1.0, 2.0, 3.0]])


def test_snippets_are_consecutive_observations_starting_at_their_first():
    data = linear_system(LINEAR_3D, n_traj=5, n_points=50)
    g = torch.Generator().manual_seed(0)
    y0, t, y = snippet_batch(data, 10, 32, generator=g)
    assert y0.shape == (32, 3) and t.shape == (10,) and y.shape == (10, 32, 3)
    torch.testing.assert_close(y[0], y0)
    torch.testing.assert_close(t, data.t[:10])
    # each snippet is a run of consecutive rows of one trajectory
    flat = data.y.permute(1, 0, 2).reshape(-1, 3)
    for s in range(32):
        hits = torch.nonzero((flat == y0[s]).all(dim=1)).flatten()
        assert len(hits) >= 1
        i = int(hits[0])
        torch.testing.assert_close(flat[i:i + 10], y[:, s])
    # same generator state, same batch
    g2 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(snippet_batch(data, 10, 32, generator=g2)[2], y)
    with pytest.raises(ValueError, match="batch_time"):
        snippet_batch(data, 51, 4)


# ----------------------------------------------------------------------------- experiments


def test_configs_full_is_the_demo_and_quick_is_shorter():
    full, quick = E.SpiralConfig(), E.SpiralConfig.quick()
    assert (full.batch_time, full.batch_size, full.steps, full.n_points, full.t_max) == (10, 20, 2000, 1000, 25.0)
    assert quick.steps < full.steps
    assert E.LinearConfig.quick().steps < E.LinearConfig().steps
    assert {"fit-spiral", "fit-linear"} <= set(registry.names())


@pytest.mark.slow
def test_quick_fit_linear_recovers_the_matrix(tmp_path):
    out = registry.run_experiment("fit-linear", quick=True, out=tmp_path / "run")
    m = out.metrics
    assert m["matrix_error"] < 0.02
    assert m["traj_mse"] < 1e-3 * m["traj_mse_initial"]
    assert m["nfe_forward"] > 0
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "result.json").read_text()) == m
    report = (run_dir / "report.md").read_text()
    for fig in ("trajectory.png", "vector_field.png", "training.png", "matrix.png"):
        assert (run_dir / "figures" / fig).is_file() and f"figures/{fig}" in report


@pytest.mark.slow
def test_quick_fit_spiral_beats_predicting_the_mean_trajectory(tmp_path):
    out = registry.run_experiment("fit-spiral", quick=True, out=tmp_path / "run")
    m = out.metrics
    y = cubic_spiral().y
    mean_baseline = float(((y - y.mean(0)) ** 2).mean())  # ~0.39: the best constant prediction
    assert m["traj_mse"] < 0.5 * mean_baseline
    assert m["traj_mse"] < 0.01 * m["traj_mse_initial"]
    assert (tmp_path / "run" / "figures" / "vector_field.png").is_file()


def _interrupt_at(monkeypatch, at: int) -> None:
    """Make Run.log request a Ctrl-C-style interrupt once step ``at`` is logged."""
    original = Run.log

    def log(self, step, **metrics):
        original(self, step, **metrics)
        if step == at and not self.resume:
            self.interrupt()

    monkeypatch.setattr(Run, "log", log)


@pytest.mark.slow
def test_fit_linear_killed_and_resumed_ends_with_the_uninterrupted_parameters(tmp_path, monkeypatch):
    config = E.LinearConfig(steps=30, eval_every=10, checkpoint_every=10, n_traj=3, n_points=60)
    registry.run_experiment("fit-linear", config=config, out=tmp_path / "a")
    _interrupt_at(monkeypatch, 17)
    with pytest.raises(KeyboardInterrupt):
        registry.run_experiment("fit-linear", config=config, out=tmp_path / "b")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 17
    resumed = registry.run_experiment("fit-linear", config=config, out=tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    uninterrupted = json.loads((tmp_path / "a" / "result.json").read_text())
    for key in ("traj_mse", "matrix_error", "final_loss", "nfe_forward"):
        assert resumed.metrics[key] == uninterrupted[key], key


def test_fields_demo_initialisation_and_shapes():
    torch.manual_seed(0)
    cubic = E.CubicField(2, 50)
    assert cubic(torch.tensor(0.0), torch.randn(7, 2)).shape == (7, 2)
    w = cubic.net[0].weight.detach()
    assert abs(float(w.std()) - 0.1) < 0.03 and torch.equal(cubic.net[0].bias.detach(), torch.zeros(50))
    # it reads y**3 through tanh with zero biases: at initialisation the field is odd in y
    y = torch.randn(5, 2)
    torch.testing.assert_close(cubic(torch.tensor(0.0), -y), -cubic(torch.tensor(0.0), y))
    assert E.MLPField(3, 16)(torch.tensor(0.0), torch.randn(4, 3)).shape == (4, 3)
    linear = E.LinearField(3)
    assert torch.equal(linear.matrix.detach(), torch.zeros(3, 3))  # no prior on the dynamics


def test_bad_settings_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="field must be 'cubic' or 'mlp'"):
        E.run_spiral(E.SpiralConfig(field="siren"), Run(tmp_path))
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        E.run_linear(E.LinearConfig(dim=4), Run(tmp_path))
