"""The latent-spirals experiment: config, a tiny run interrupted and resumed, the quick run's bar."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from neuralode.experiments import latent_spirals as E
from neuralode.experiments.base import Run

torch.set_num_threads(1)


def _tiny() -> E.Config:
    return E.Config(n_spirals=40, n_total=100, n_window=20, obs_counts=(5, 10, 20), iters=6, latent_iters=None, batch_size=8,
                    checkpoint_every=2, log_every=1, latent_dim=3, rec_hidden=6, ode_hidden=6, rnn_hidden=6,
                    rnn_head_hidden=6, eval_batch_size=7, n_plot=1)


def test_config_defaults_are_the_full_protocol_and_quick_is_shorter():
    full, quick = E.Config(), E.Config.quick()
    assert (full.n_spirals, full.n_window, tuple(full.obs_counts), full.noise_std) == (1000, 100, (30, 50, 100), 0.1)
    assert (full.latent_dim, full.rec_hidden, full.ode_hidden, full.ode_layers, full.dec_hidden) == (4, 25, 20, 2, 20)
    assert full.obs_std is None and full.clockwise_shape == "archimedean"  # likelihood noise = the data's noise
    assert set(full.models) == {"latent_ode", "rnn_paper", "rnn"}
    assert E.PAPER_RMSE == {"latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
                            "rnn_paper": {30: 0.3937, 50: 0.3202, 100: 0.1813}}  # Chen et al., Table 2
    assert quick.iters < full.iters and quick.n_spirals == full.n_spirals
    assert (full.iters, full.latent_iters, quick.latent_iters) == (5000, None, None)  # every model: iters steps


def test_horizon_warm_up_grows_linearly_to_the_window_and_keeps_each_first_observation():
    config = E.Config(iters=7, latent_iters=100, horizon_warmup=0.5, horizon_start=0.2)  # the latent ODE's steps count
    assert [E._horizon(config, step, 4.0) for step in (0, 25, 50, 99)] == pytest.approx([0.8, 2.4, 4.0, 4.0])
    assert E._horizon(dataclasses.replace(config, horizon_warmup=0.0), 0, 4.0) == 4.0
    t = torch.tensor([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0], [0.1, 0.2, 0.0]])
    m = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    kept = E._within_horizon(t, m, 1.5)
    assert kept.tolist() == [[True, True, False], [True, False, False], [True, True, False]]


def test_headlines_judge_the_papers_ordering_at_every_count():
    from neuralode.report.headlines import headline_rows

    metrics = {f"rmse_{model}_{n}": value for model, value in (("latent_ode", 0.2), ("rnn_paper", 0.4)) for n in (30, 50)}
    metrics.update(rmse_latent_ode_100=0.5, rmse_rnn_paper_100=0.25)
    verdicts = {row["result"]: row["verdict"] for row in headline_rows("latent-spirals", metrics)}
    ordering = {n: verdicts[f"latent ODE / paper's RNN RMSE, {n} obs (< 1: the paper's ordering)"] for n in (30, 50, 100)}
    assert ordering[30] == ordering[50] == "met" and ordering[100].startswith("missed")
    assert verdicts["latent ODE extrapolation RMSE, 30 obs"] == "reproduced"  # 0.2 is within 1.5x of 0.1642


def test_covered_test_windows_keep_the_training_set_and_move_only_the_held_out_windows():
    class _Quiet:
        def info(self, *args):
            pass

    config = E.Config(n_spirals=200, obs_counts=(30,))
    covered, old = E._load(config, _Quiet()), E._load(dataclasses.replace(config, test_windows="all"), _Quiet())
    torch.testing.assert_close(covered.train.noisy, old.train.noisy)  # the same training spirals either way
    assert (covered.train.start_index <= 300).all() and int(covered.train.start_index.max()) > 200
    assert covered.test.meta["start_range"] == (100, 200) and old.test.meta["start_range"] == (100, 300)
    assert torch.equal(covered.test.clockwise, old.test.clockwise) and old.test_all is None
    torch.testing.assert_close(covered.test_all.noisy, old.test.noisy)  # still reported as the all-starts rows
    # every test extrapolation point lies at or before the last grid point a training observation window reaches
    assert int((covered.test.start_index + 199).max()) <= int((covered.train.start_index + 99).max())
    with pytest.raises(ValueError, match="test_windows must be one of"):
        E._load(dataclasses.replace(config, test_windows="late"), _Quiet())


def test_unknown_model_is_rejected_before_training(tmp_path):
    config = dataclasses.replace(_tiny(), models=("latent_ode", "transformer"))
    with pytest.raises(ValueError, match="unknown models"):
        E.run(config, Run(tmp_path))


class _StopAfter(Run):
    """A run that is 'Ctrl-C'ed at its n-th check_interrupt call."""

    def __init__(self, *args, stop_at: int, **kw):
        super().__init__(*args, **kw)
        self.calls, self.stop_at = 0, stop_at

    def check_interrupt(self, save):
        self.calls += 1
        if self.calls == self.stop_at:
            self.interrupt()
        super().check_interrupt(save)


def _interrupted_then_resumed(folder, config, seed: int, stop_at: int) -> dict:
    """Run the experiment in ``folder``, interrupted at step ``stop_at``, then resumed to the end: its metrics."""
    with _StopAfter(folder, config=config, seed=seed, stop_at=stop_at) as run:
        run.start()
        with pytest.raises(KeyboardInterrupt):
            E.run(config, run)
    with Run(folder, config=config, seed=seed, resume=True) as run:
        run.start()
        return E.run(config, run)


@pytest.mark.parametrize("stop_at", [4])  # inside the first model (the second then trains after the resume)
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, stop_at):
    config = _tiny()
    with Run(tmp_path / "a", config=config, seed=3) as run:
        run.start()
        straight = E.run(config, run)
    resumed = _interrupted_then_resumed(tmp_path / "b", config, seed=3, stop_at=stop_at)
    assert _untimed(resumed) == _untimed(straight)
    assert set(resumed) == set(straight)
    assert (tmp_path / "b" / "figures" / "spirals.png").is_file()


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "train_s_" not in k}


def test_seed_aggregation_is_the_mean_and_sample_std_of_the_seeds():
    per_seed = {2: {"rmse": 1.0, "n": 10.0}, 3: {"rmse": 2.0, "n": 10.0}, 4: {"rmse": 4.0, "n": 10.0}}
    out = E.aggregate_seeds(per_seed)
    assert out["rmse"] == pytest.approx(7 / 3) and out["rmse_std"] == pytest.approx((7 / 3) ** 0.5)  # ddof 1
    assert out["n"] == 10.0 and out["n_std"] == 0.0
    assert out["seed3/rmse"] == 2.0 and out["seed4/n"] == 10.0
    single = E.aggregate_seeds({5: {"rmse": 0.25}})
    assert single == {"rmse": 0.25, "seed5/rmse": 0.25}  # one seed: its value, no spread
    with pytest.raises(ValueError, match="at least one seed"):
        E.aggregate_seeds({})


def test_seeds_must_be_a_positive_int(tmp_path):
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="seeds must be an int >= 1"):
            E.run(dataclasses.replace(_tiny(), seeds=bad), Run(tmp_path))


@pytest.mark.parametrize("stop_at", [8])  # inside seed 4's latent ODE (seed 3's two models took 2 x 3 steps)
def test_multi_seed_run_resumes_across_seeds_and_each_seed_equals_its_single_seed_run(tmp_path, stop_at):
    config = dataclasses.replace(_tiny(), models=("latent_ode", "rnn_paper"), iters=3, checkpoint_every=1, seeds=2)
    resumed = _interrupted_then_resumed(tmp_path / "multi", config, seed=3, stop_at=stop_at)
    single = {}
    for seed in (3, 4):
        one = dataclasses.replace(config, seeds=1)
        with Run(tmp_path / f"single{seed}", config=one, seed=seed) as run:
            run.start()
            single[seed] = E.run(one, run)
    assert resumed["seeds"] == 2 and "seed5/rmse_latent_ode_5" not in resumed
    for seed in (3, 4):  # model seed s of a multi-seed run is the single-seed run --seed s
        assert {k.split("/", 1)[1]: v for k, v in _untimed(resumed).items() if k.startswith(f"seed{seed}/")} == {
            k: v for k, v in _untimed(single[seed]).items() if k in resumed and "/" not in k
            and k not in ("seeds", "mse_mean_trajectory", "recon_mse_mean_trajectory", "oracle_rmse_capped_radius")}
    for model in config.models:
        for n in config.obs_counts:
            values = [single[s][f"rmse_{model}_{n}"] for s in (3, 4)]
            assert resumed[f"rmse_{model}_{n}"] == pytest.approx(sum(values) / 2)
            assert resumed[f"rmse_{model}_{n}_std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)


def test_multi_seed_report_puts_the_papers_rows_beside_mean_and_std_and_per_seed_rows(tmp_path):
    config = dataclasses.replace(_tiny(), n_total=400, n_window=100, obs_counts=(30, 50, 100), iters=2,
                                 models=("latent_ode", "rnn_paper"), seeds=2, n_spirals=20)
    with Run(tmp_path, config=config, seed=0) as run:
        run.start()
        m = E.run(config, run)
    report = (tmp_path / "report.md").read_text()
    assert "| Latent ODE (Chen et al., Table 2) | 0.1642 | 0.1502 | 0.1346 |" in report
    assert "| RNN (Chen et al.'s baseline: tanh RNN 25, Δt input) (Chen et al., Table 2) | 0.3937 | 0.3202 | 0.1813 |" in report
    mean_std = f"{m['rmse_latent_ode_30']:.3g} ± {m['rmse_latent_ode_30_std']:.2g}"
    assert f"| Latent ODE | {mean_std} |" in report
    for seed in (0, 1):
        assert f"| Latent ODE | {seed} | {m[f'seed{seed}/rmse_latent_ode_30']:.4g} |" in report
    assert "GRU 25 with Δt input" not in report and "Chen et al.'s tanh RNN (6 units" in report


@pytest.mark.slow
def test_quick_experiment_beats_the_mean_trajectory_and_the_papers_rnn(tmp_path):
    from neuralode.experiments import registry

    outcome = registry.run_experiment("latent-spirals", quick=True, out=tmp_path / "run")
    m = outcome.metrics
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "result.json").read_text()) == m
    for model in ("latent_ode", "rnn_paper", "rnn"):
        for n in (30, 50, 100):
            assert 0 < m[f"rmse_{model}_{n}"] < float("inf")
    # the bar: the latent ODE reconstructs and extrapolates better than the mean training trajectory
    assert m["recon_mse"] < 0.1 * m["recon_mse_mean_trajectory"]
    assert m["mse_latent_ode"] < m["mse_mean_trajectory"]
    # Chen et al.'s ordering (Table 2): the latent ODE extrapolates better than their RNN baseline at every count
    for n in (30, 50, 100):
        assert m[f"rmse_latent_ode_{n}"] < m[f"rmse_rnn_paper_{n}"]
    assert m["nfe_latent_ode"] > 0
    report = (run_dir / "report.md").read_text()
    assert "Chen et al., Table 2" in report and "mean training trajectory" in report
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"spirals.png", "rmse.png", "loss.png"} <= figures


def test_checkpoints_from_before_the_seeds_setting_name_the_runs_seed():
    assert E._legacy_key("latent_ode", 3) == "latent_ode#3"  # a model finished by a single-seed run of --seed 3
    assert E._legacy_key("rnn_paper#1", 3) == "rnn_paper#1" and E._legacy_key("", 3) == ""


def test_latent_iters_sets_the_latent_odes_steps_and_its_warm_up_while_the_rnns_keep_iters(tmp_path):
    config = dataclasses.replace(_tiny(), models=("latent_ode", "rnn_paper"), iters=2, latent_iters=5, checkpoint_every=50)
    assert E._horizon(dataclasses.replace(config, horizon_warmup=0.5, horizon_start=0.2), 1, 5.0) == pytest.approx(
        5.0 * (0.2 + 0.8 * 1 / 2.5))  # the warm-up spans half of the latent ODE's 5 steps, not of iters
    with Run(tmp_path, config=config, seed=0) as run:
        run.start()
        m = E.run(config, run)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = {name: max(r["step"] for r in rows if r.get("model") == name and "loss" in r) for name in config.models}
    assert steps == {"latent_ode": 5, "rnn_paper": 2} and m["seeds"] == 1
    with pytest.raises(ValueError, match="latent_iters must be None"):
        E.run(dataclasses.replace(config, latent_iters=0), Run(tmp_path / "bad"))
