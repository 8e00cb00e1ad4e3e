"""classify-2d: the 2-D data sets, the models, the quick run and resume."""

from __future__ import annotations

import json

import pytest
import torch

from neuralode.data.toy2d import DATASETS, annuli, load_toy2d, make_toy2d, spirals
from neuralode.experiments import classify_2d as E
from neuralode.experiments import registry
from neuralode.experiments.base import Run

# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", DATASETS)
def test_data_sets_are_seeded_balanced_enough_and_split(name):
    train, test = load_toy2d(name, n_train=300, n_test=120, seed=4)
    assert train.x.shape == (300, 2) and train.x.dtype == torch.float32
    assert test.x.shape == (120, 2) and train.y.dtype == torch.int64
    assert set(train.y.tolist()) == {0, 1}
    assert 0.25 < train.y.float().mean() < 0.75
    again, _ = load_toy2d(name, n_train=300, n_test=120, seed=4)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    assert not torch.equal(load_toy2d(name, n_train=300, seed=5)[0].x, train.x)
    assert not torch.equal(test.x[:100], train.x[:100])  # independent draws


def test_annuli_follow_dupont_et_al():
    x, y = annuli(3000, seed=0)
    r = torch.from_numpy(x).norm(dim=1)
    assert (r[y == 0] < 0.5).all()
    assert ((r[y == 1] > 1.0) & (r[y == 1] < 1.5)).all()
    assert (y == 0).sum() == 1000  # 1,000 inner and 2,000 outer points
    # uniform by area: half of the inner disc's points lie within radius 0.5/sqrt(2)
    assert abs(float((r[y == 0] < 0.5 / 2**0.5).float().mean()) - 0.5) < 0.05


def test_spirals_interleave_the_two_classes():
    x, y = spirals(2000, noise=0.0, seed=0)
    pts = torch.from_numpy(x)
    # the noise-free arms are point reflections of each other: -arm0 lies on arm1
    d = torch.cdist(-pts[y == 0], pts[y == 1]).min(dim=1).values
    assert float(d.max()) < 0.1  # (the gap between sampled points along an arm)
    # and every radius range holds both classes (interleaved, not split by radius)
    r = pts.norm(dim=1)
    for lo in (0.3, 0.8, 1.2):
        band = (r > lo) & (r < lo + 0.2)
        assert set(torch.from_numpy(y)[band].tolist()) == {0, 1}


def test_unknown_data_set_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown 2-D data set 'circles'.*moons"):
        make_toy2d("circles", 10)


# ----------------------------------------------------------------------------- models


def test_models_shapes_nfe_and_matched_parameter_counts():
    config = E.Config()
    x = torch.randn(16, 2)
    node, anode, resnet = (E.make_model(m, config) for m in ("node", "anode", "resnet"))
    for model in (node, anode, resnet):
        assert model(x).shape == (16,)
    assert node.nfe > 0 and anode.nfe > 0 and resnet.nfe == config.resnet_blocks
    assert node.trajectory(x, torch.linspace(0, 1, 3)).shape == (3, 16, 2)
    assert anode.trajectory(x, torch.linspace(0, 1, 3)).shape == (3, 16, 2 + config.augment_dim)
    n_node, n_resnet = E.count_params(node), E.count_params(resnet)
    assert n_node == 1221 and abs(n_resnet - n_node) / n_node < 0.05
    assert E.count_params(anode) == 1551


def test_anode_starts_from_zero_augmented_dims():
    model = E.make_model("anode", E.Config())
    x = torch.randn(8, 2)
    traj = model.trajectory(x, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(traj[0, :, :2], x)
    assert torch.equal(traj[0, :, 2:], torch.zeros(8, 5))


def test_time_dependent_field_sees_the_time_and_the_autonomous_one_does_not():
    z = torch.randn(6, 2)
    field = E.MLPField(2, 16, time_dependent=True)
    assert field.net[0].in_features == 3  # Dupont et al.'s ODEFunc: t concatenated to the input
    assert not torch.allclose(field(torch.tensor(0.0), z), field(torch.tensor(1.0), z))
    auto = E.MLPField(2, 16)
    torch.testing.assert_close(auto(torch.tensor(0.0), z), auto(torch.tensor(1.0), z))
    assert E.count_params(E.make_model("node", E.Config(time_dependent=True))) == 1221 + 32


def test_nfe_metrics_are_epoch_means_and_the_headline_compares_training_means():
    from neuralode.report.headlines import evaluate

    config = E.Config(datasets=("annuli",), models=("node", "anode"), n_train=128, batch_size=64)  # 2 steps/epoch
    assert E.epoch_steps(config) == 2
    nfe = {"node": [14, 20, 20, 26, 32, 32], "anode": [14, 20, 20, 20, 20, 26]}
    done = {f"{m}_annuli": {"accuracy": 1.0, "history": {"nfe": nfe[m]}} for m in nfe}
    models = {f"{m}_annuli": E.make_model(m, config) for m in nfe}
    m = E._headline(config, done, models)
    assert m["nfe_first_node_annuli"] == 17 and m["nfe_node_annuli"] == 32  # first and last epoch
    assert m["nfe_anode_annuli"] == 23 and m["nfe_train_anode_annuli"] == 20
    verdicts = {h.key: (v, verdict.status) for h, v, verdict in evaluate("classify-2d", m)}
    value, status = verdicts["nfe_ratio_node_anode_annuli"]
    assert value == 24 / 20 and status == "met"  # training means, not the last epoch's 32 / 23
    assert verdicts["nfe_growth_node_annuli"][0] == 32 / 17


def test_unknown_loss_is_rejected_with_the_accepted_ones(tmp_path):
    config = E.Config.quick()
    config.loss = "hinge"
    with pytest.raises(ValueError, match="loss must be one of 'huber', 'mse', 'bce', got 'hinge'"):
        E.run(config, Run(tmp_path))


def test_unknown_model_or_data_set_is_rejected_before_training(tmp_path):
    config = E.Config.quick()
    config.models = ("node", "transformer")
    with pytest.raises(ValueError, match="transformer"):
        E.run(config, Run(tmp_path))


# ----------------------------------------------------------------------------- experiment


@pytest.mark.slow
def test_quick_experiment_node_beats_95_percent_on_moons_and_writes_the_report(tmp_path):
    out = registry.run_experiment("classify-2d", quick=True, out=tmp_path / "run")
    m = out.metrics
    assert m["accuracy_node_moons"] > 0.95
    for dataset in E.Config.quick().datasets:
        for model in E.MODELS:
            assert 0.0 <= m[f"accuracy_{model}_{dataset}"] <= 1.0
            assert m[f"nfe_{model}_{dataset}"] > 0
        assert m[f"accuracy_anode_{dataset}"] > 0.7  # well above chance even in the quick budget
    assert m["params_node"] == 1221 and m["params_anode"] == 1551
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "result.json").read_text()) == m
    report = (run_dir / "report.md").read_text()
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"decision_regions.png", "nfe.png", "training.png", "flow_moons.png", "flow_annuli.png",
            "flow_spirals.png"} <= figures
    for name in figures:
        assert f"figures/{name}" in report
    assert "| data set | model |" in report


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_uninterrupted_parameters(tmp_path, monkeypatch):
    config = E.Config(datasets=("moons",), models=("node", "resnet"), n_train=200, n_test=100, steps=12,
                      eval_every=6, checkpoint_every=5, flow_points=50, flow_snapshots=2)
    full = registry.run_experiment("classify-2d", config=config, out=tmp_path / "a")
    original = Run.log
    calls = {"n": 0}

    def log(self, step, **metrics):  # "kill" in the middle of the second model (resnet, step 8)
        original(self, step, **metrics)
        calls["n"] += 1
        if calls["n"] == 12 + 8 and not self.resume:
            self.interrupt()

    monkeypatch.setattr(Run, "log", log)
    with pytest.raises(KeyboardInterrupt):
        registry.run_experiment("classify-2d", config=config, out=tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["extra"]["current"] == "resnet_moons" and ckpt["step"] == 8
    resumed = registry.run_experiment("classify-2d", config=config, out=tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["extra"]["done"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]["done"]
    for key in ("node_moons", "resnet_moons"):
        for name, tensor in a[key]["state"].items():
            assert torch.equal(tensor, b[key]["state"][name]), (key, name)
        assert a[key]["history"]["loss"] == b[key]["history"]["loss"]
    assert resumed.metrics == full.metrics
