"""Rubanova et al.'s PhysioNet protocol: KL schedule and averaging, their masked averages, the IWAE
objective, the learning-rate floor, the static channels, and the AUC intervals - against values
computed by hand."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from neuralode.experiments import physionet as E
from neuralode.experiments._physionet_protocol import (
    bootstrap_auc_ci,
    delong_auc_ci,
    iwae_loss,
    kl_per_dim,
    kl_weight,
    mean_std,
    patient_channel_mean,
    rubanova_gaussian_loglik,
    rubanova_mse,
)


def test_kl_weight_is_zero_for_ten_epochs_then_rises_as_one_minus_point_99_to_the_epochs_since():
    assert [kl_weight(e) for e in range(11)] == [0.0] * 11  # still 0 at epoch 10: 1 - 0.99^0
    assert kl_weight(11) == pytest.approx(0.01)
    assert kl_weight(12) == pytest.approx(1 - 0.99**2)
    assert kl_weight(110) == pytest.approx(1 - 0.99**100)  # 0.634 after 100 epochs of annealing
    assert kl_weight(5, wait=0) == pytest.approx(1 - 0.99**5)
    with pytest.raises(ValueError, match="epoch and wait"):
        kl_weight(-1)


def test_kl_per_latent_dimension_by_hand_and_its_average():
    mean, std = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.5]])
    kl = kl_per_dim(mean, std)
    # 0.5 (m² + s² - 1) - log s: 0.5 for (1, 1); -0.375 + log 2 for (0, 0.5)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.375 + math.log(2)]]))
    assert float(kl.mean()) == pytest.approx((0.5 - 0.375 + math.log(2)) / 2)  # theirs: averaged over the latents


def test_patient_channel_average_counts_unobserved_channels_as_zero():
    sq = torch.tensor([[[1.0, 9.0, 5.0], [7.0, 4.0, 5.0], [3.0, 9.0, 5.0]],
                       [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])  # (B=2, T=3, C=3)
    mask = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [1, 0, 0]], [[1.0, 1, 1], [1, 1, 1], [1, 1, 1]]])
    # patient 0: channel 0 -> (1 + 3) / 2 = 2, channel 1 -> 4, channel 2 never observed -> 0; mean 2
    torch.testing.assert_close(patient_channel_mean(sq, mask), torch.tensor([2.0, 1.0]))
    pred, target = torch.zeros_like(sq), sq.sqrt()
    assert float(rubanova_mse(pred, target, mask)) == pytest.approx(1.5)
    # a sample dimension in front is kept
    assert patient_channel_mean(sq.expand(4, -1, -1, -1), mask).shape == (4, 2)


def test_their_gaussian_log_likelihood_by_hand():
    pred, target, mask = torch.zeros(1, 2, 1), torch.tensor([[[0.01], [5.0]]]), torch.tensor([[[1.0], [0.0]]])
    expected = -0.5 - math.log(0.01) - 0.5 * math.log(2 * math.pi)  # one observed entry, one std off
    assert float(rubanova_gaussian_loglik(pred, target, mask, 0.01)) == pytest.approx(expected)


def test_iwae_objective_by_hand():
    loglik = torch.tensor([[-1.0, -3.0], [-4.0, -2.0]])  # (K=2 samples, B=2 patients): means -2 and -3
    kl = torch.full((2, 5), 0.4)  # mean 0.4
    got = float(iwae_loss(loglik, kl, kl_coef=0.5))
    expected = -math.log(math.exp(-2 - 0.2) + math.exp(-3 - 0.2))
    assert got == pytest.approx(expected)


def test_the_experiment_averages_the_kl_over_latents_when_asked():
    """The same batch and z0 draws: summing the KL over L latents instead of averaging adds
    kl_coef x (L - 1) x the averaged KL to the loss."""
    from neuralode.nn.irregular import ClassifierHead, LatentODE

    class Batch:
        times = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
        values = torch.rand(4, 3, 5, dtype=torch.float64)
        mask = (torch.rand(4, 3, 5) < 0.6).double()
        labels = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)

    torch.manual_seed(0)
    model = LatentODE(5, "rnn", latent=3, rec_hidden=6, units=6)
    full = E._Full(model, ClassifierHead(3, 4)).double()
    base = dataclasses.replace(E.resolve(E.Config(protocol="rubanova")), z0_samples=2)
    keep = torch.ones(4, 3, 1, dtype=torch.float64)
    losses = {}
    for mean_kl in (True, False):
        torch.manual_seed(1)
        cfg = dataclasses.replace(base, kl_mean_over_dims=mean_kl)
        losses[mean_kl] = float(E._loss(full, Batch, keep, cfg, 0.5, None, classify=False)[0].detach())
    with torch.no_grad():
        mean, std, _ = model.encode(Batch.times, Batch.values, Batch.mask)
    kl_mean = float(kl_per_dim(mean, std).mean())
    assert losses[False] - losses[True] == pytest.approx(0.5 * 2 * kl_mean, rel=1e-8)


def test_rubanova_protocol_fills_the_fields_left_at_their_defaults():
    r = E.resolve(E.Config(protocol="rubanova"))
    assert (r.optimizer, r.lr, r.lr_floor, r.batch_size, r.latent, r.rec_hidden, r.units) == \
        ("adamax", 1e-2, 0.1, 50, 20, 40, 50)
    assert (r.kl_per_epoch, r.kl_mean_over_dims, r.z0_samples, r.obs_std, r.ce_weight) == (True, True, 3, 0.01, 100.0)
    assert (r.static_channels, r.pos_weight, r.classifier_layers, r.enc_layers, r.dec_layers) == (True, False, 2, 5, 5)
    assert r.split == (0.8, 0.0, 0.2) and r.round_hours == pytest.approx(1 / 60) and r.p_extrap == 0.0
    assert r.field_init_std == 0.1 and E.Config().field_init_std is None  # theirs: N(0, 0.1²); ours: near zero
    kept = E.resolve(E.Config(protocol="rubanova", epochs=3, latent=6))  # the user's own choices win
    assert (kept.epochs, kept.latent, kept.units) == (3, 6, 50)
    assert E.resolve(E.Config()) == E.Config()
    with pytest.raises(ValueError, match="protocol must be one of"):
        E.resolve(E.Config(protocol="theirs"))


def test_the_run_records_and_resumes_the_resolved_config(tmp_path):
    """config.json holds what ran (architecture "rubanova", the 1-minute grid), not the fields as
    typed; resolving twice changes nothing, so a resume with the same command compares equal."""
    import json

    from neuralode.experiments import registry

    seen = []

    def fake_run(config, run):
        seen.append(config)
        return {"x": 1.0}

    r = E.Config(protocol="rubanova").resolved()
    assert (r.architecture, r.round_hours, r.layout) == ("rubanova", pytest.approx(1 / 60), "compact")
    assert r.resolved() == r
    registry.register("physionet-resolve-probe", config=E.Config, run=fake_run, description="test probe",
                      in_demo=False)
    try:
        for resume in (False, True):
            registry.run_experiment("physionet-resolve-probe", overrides=["protocol=rubanova", "epochs=2"],
                                    out=tmp_path, resume=resume)
            saved = json.loads((tmp_path / "config.json").read_text())["config"]
            assert saved["architecture"] == "rubanova" and saved["optimizer"] == "adamax" and saved["epochs"] == 2
            assert saved["round_hours"] == pytest.approx(1 / 60)
        assert seen[0] == seen[1] == dataclasses.replace(r, epochs=2)
    finally:
        registry.unregister("physionet-resolve-probe")


def test_learning_rate_decays_per_step_to_a_floor_of_a_tenth():
    model = torch.nn.Linear(2, 1)
    opt, sched = E._optimizer(model, E.resolve(E.Config(protocol="rubanova")))
    assert isinstance(opt, torch.optim.Adamax)
    lrs = []
    for _ in range(3000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-2) and lrs[1] == pytest.approx(1e-2 * 0.999)
    assert lrs[1000] == pytest.approx(1e-2 * 0.999**1000)
    assert min(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3)  # 0.999^2302 < 0.1


def test_static_descriptors_become_four_channels_observed_at_time_zero():
    from neuralode.data.physionet import Patient

    p = Patient(1, np.array([0.5, 2.0], np.float32), np.ones((2, 37), np.float32), np.ones((2, 37), np.float32), 0,
                np.array([60.0, 1.0, -1.0, 3.0, 70.0], np.float32))  # Height missing (-1)
    stats = np.array([[20.0, 0.0, 150.0, 1.0], [60.0, 1.0, 50.0, 3.0]])  # min, range
    q = E._with_static(p, stats)
    assert q.times.tolist() == [0.0, 0.5, 2.0] and q.values.shape == (3, 41)  # a row at t = 0 was added
    np.testing.assert_allclose(q.values[0, 37:], [40 / 60, 1.0, 0.0, 2 / 3], rtol=1e-6)
    assert q.mask[0, 37:].tolist() == [1.0, 1.0, 0.0, 1.0] and q.mask[0, :37].sum() == 0
    assert q.mask[1:, 37:].sum() == 0 and np.array_equal(q.values[1:, :37], p.values)


def test_delong_interval_by_hand_and_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    y = [1, 1, 0, 0, 0]
    p = [0.9, 0.4, 0.5, 0.3, 0.1]
    auc, se, lo, hi = delong_auc_ci(y, p)
    # placements: positives outrank 3/3 and 2/3 of the negatives; negatives are outranked by 1/2, 1, 1
    assert auc == pytest.approx(5 / 6) == roc_auc_score(y, p)
    var = np.var([1, 2 / 3], ddof=1) / 2 + np.var([0.5, 1, 1], ddof=1) / 3  # 1/36 + 1/36
    assert se == pytest.approx(math.sqrt(var)) == pytest.approx(math.sqrt(1 / 18))
    assert (lo, hi) == (pytest.approx(5 / 6 - 1.959964 * se, abs=1e-5), 1.0)  # clipped at 1
    assert delong_auc_ci([1, 0], [0.5, 0.5])[0] == 0.5  # a tie counts one half
    with pytest.raises(ValueError, match="both classes"):
        delong_auc_ci([1, 1], [0.2, 0.3])


def test_bootstrap_interval_is_seeded_and_agrees_with_delong_on_a_large_sample():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.15).astype(int)
    p = rng.normal(y * 1.0, 1.0)
    auc, _, lo, hi = delong_auc_ci(y, p)
    b = bootstrap_auc_ci(y, p, n_boot=400, seed=3)
    assert b == bootstrap_auc_ci(y, p, n_boot=400, seed=3)
    assert b[0] < auc < b[1]
    assert abs(b[0] - lo) < 0.03 and abs(b[1] - hi) < 0.03


def test_mean_std_uses_the_sample_std_and_skips_missing_values():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([2.0, float("nan"), None]) == (2.0, 0.0)


# --------------------------------------------------------------------------- the experiment's own loop and metrics


def _patients():
    """Four stays, two channels: hand-sized values (hours; extrapolation split at 24 h)."""
    from neuralode.data.physionet import Patient

    def p(rid, times, values, mask, label):
        return Patient(rid, np.array(times, np.float32), np.array(values, np.float32), np.array(mask, np.float32),
                       label, np.zeros(5, np.float32))

    return [
        p(1, [1, 30], [[0.5, 0], [0.2, 0.4]], [[1, 0], [1, 1]], 1),
        p(2, [2], [[0.1, 0.3]], [[1, 1]], 0),
        p(3, [0, 25, 40], [[0.3, 0], [0, 0.6], [0.9, 0]], [[1, 0], [0, 1], [1, 0]], 0),
        p(4, [5, 26], [[0.4, 0], [0, 0.2]], [[1, 0], [0, 1]], 1),
    ]


class _ZeroModel(torch.nn.Module):
    """Predicts 0 for every entry; its state is the sum of the observed channel-1 values it was shown."""

    def forward(self, times, values, mask):
        from neuralode.nn.irregular import ModelOutput

        state = (values * mask)[:, :, 1].sum(1, keepdim=True)
        return ModelOutput(torch.zeros_like(values), state, values.new_zeros(len(values)), 0)


class _Logit(torch.nn.Module):
    def forward(self, state):
        return torch.logit(state.squeeze(-1).clamp(1e-6, 1 - 1e-6))  # sigmoid(logit) = the state itself


class _Run:
    device = torch.device("cpu")

    def log(self, *args, **kwargs):
        pass


def test_evaluation_metrics_match_hand_computed_values_across_batches():
    """Predicting 0 everywhere, the metrics are averages of the squared values: per patient and
    channel (theirs), pooled over entries (ours), and the AUC of the channel-1 sums."""
    patients = _patients()
    cfg = E.Config(holdout_frac=0.5, extrap_hours=24.0, eval_batch_size=3)  # batches [1, 2, 3] and [4]
    got = E._evaluate(E._Full(_ZeroModel(), _Logit()), patients, cfg, _Run())
    # theirs, all points as input: per patient the channel means of v², then the mean over channels
    # 1: ((.25 + .04) / 2 + .16) / 2 = .1525; 2: (.01 + .09) / 2 = .05; 3: ((.09 + .81) / 2 + .36) / 2 = .405;
    # 4: (.16 + .04) / 2 = .1
    assert got["mse_rpc"] == pytest.approx((0.1525 + 0.05 + 0.405 + 0.1) / 4)
    # theirs, extrapolation: only entries after 24 h, a channel with none counts 0
    # 1: (.04 + .16) / 2 = .1; 2: 0; 3: (.81 + .36) / 2 = .585; 4: (0 + .04) / 2 = .02
    assert got["extrap_mse_rpc"] == pytest.approx((0.1 + 0.0 + 0.585 + 0.02) / 4)
    # ours, extrapolation: pooled over the 5 entries after 24 h
    assert got["extrap_mse"] == pytest.approx((0.04 + 0.16 + 0.36 + 0.81 + 0.04) / 5)
    # ours, interpolation: pooled over the observed entries of the held-out times
    keeps = E._holdout_keep(patients, 0.5, 1234)
    held = np.concatenate([(p.values**2)[~k][p.mask[~k] > 0] for p, k in zip(patients, keeps)])
    assert len(held) > 0 and got["interp_mse"] == pytest.approx(held.mean())
    # AUC of the channel-1 sums .4, .3, .6, .2 for labels 1, 0, 0, 1: of the 4 (death, survivor)
    # pairs only (.4 > .3) is ranked right -> 1/4
    np.testing.assert_allclose(got["probs"], [0.4, 0.3, 0.6, 0.2], rtol=1e-5)
    assert got["labels"].tolist() == [1, 0, 0, 1]
    assert got["auc"] == pytest.approx(0.25)
    assert got["auc_ci"][0] <= 0.25 <= got["auc_ci"][1]


@pytest.mark.parametrize("per_epoch", [True, False])
def test_training_loop_anneals_the_kl_weight_per_epoch_or_per_step(monkeypatch, per_epoch):
    coefs = []

    def fake_loss(full, batch, keep, config, kl_coef, pos_weight, classify):
        coefs.append(kl_coef)
        return sum(p.sum() for p in full.parameters()) * 0.0, 0

    monkeypatch.setattr(E, "_loss", fake_loss)
    cfg = dataclasses.replace(E.resolve(E.Config(protocol="rubanova")), batch_size=2, kl_per_epoch=per_epoch)
    full = E._Full(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    opt, sched = E._optimizer(full, cfg)
    data = E._Data(_patients(), [], [], None, None, 4)
    step = E._train_epoch(full, opt, sched, data, cfg, _Run(), 37, 12, 0, None, [])
    assert step == 39  # two batches of two
    if per_epoch:  # epoch 12, wait 10: 1 - 0.99^2 for every batch of the epoch
        assert coefs == [pytest.approx(1 - 0.99**2)] * 2
    else:  # steps 37 and 38
        assert coefs == [pytest.approx(1 - 0.99**27), pytest.approx(1 - 0.99**28)]


def test_field_ablation_zeroes_only_a_copy_of_the_recurrent_field():
    from neuralode.nn.irregular import ClassifierHead, build_model

    torch.manual_seed(0)
    times, values, mask = torch.tensor([0.0, 10.0, 30.0]), torch.rand(2, 3, 4), torch.ones(2, 3, 4)
    for name in ("ode_rnn", "latent_ode_odernn"):
        full = E._Full(build_model(name, 4, hidden=6, latent=3, rec_hidden=6, units=6, field_init_std=0.1),
                       ClassifierHead(6 if name == "ode_rnn" else 3, 4))
        frozen = E._without_recurrent_field(full)
        rnn = frozen.model if name == "ode_rnn" else frozen.model.encoder
        assert float(rnn.func(0, torch.randn(5, 6)).abs().max()) == 0.0  # the copy's field is 0
        orig = full.model if name == "ode_rnn" else full.model.encoder
        assert float(orig.func(0, torch.randn(5, 6)).abs().max()) > 0.0  # the trained model is untouched
        if name == "ode_rnn":  # zero field: the state before row 2 is the state after row 1's update
            before, _, _ = frozen.model.run(times, values, mask)
            _, h1, _ = frozen.model.run(times[:2], values[:, :2], mask[:, :2])
            torch.testing.assert_close(before[:, 2], h1)
    for name in ("gru_dt", "gru_decay", "latent_ode_rnn"):
        assert E._without_recurrent_field(E._Full(build_model(name, 4), ClassifierHead(20, 4))) is None


# --------------------------------------------------------------------------- their normalisation, baseline MSE, CE


def test_their_normalisation_divides_by_the_maximum_not_the_range():
    """normalize_masked_data: (x - min) / max. Na at 98, 138, 177 -> 0, 40/177, 79/177 (the range
    would give 0, 0.506, 1); their fit uses every patient."""
    from neuralode.data.physionet import PARAMS, Normaliser, PhysioNetSet

    na, hr = PARAMS.index("Na"), PARAMS.index("HR")
    data = PhysioNetSet("a", np.array([1, 2]), np.array([0, 3, 5]), np.array([0, 60, 120, 0, 60]),
                        np.array([na, na, hr, na, hr]), np.array([98.0, 138.0, 50.0, 177.0, 150.0], np.float32),
                        np.zeros((2, 5), np.float32), np.zeros((2, 6), np.float32))
    norm = Normaliser.fit(data, None, kind="max")
    got = norm.transform(np.array([98.0, 138.0, 177.0, 50.0, 150.0], np.float32), np.array([na, na, na, hr, hr]))
    np.testing.assert_allclose(got, [0.0, 40 / 177, 79 / 177, 0.0, 100 / 150], rtol=1e-6)
    assert norm.mean[na] == pytest.approx((0 + 40 + 79) / 3 / 177, rel=1e-6)
    ranged = Normaliser.fit(data, None, kind="minmax")
    assert ranged.transform(np.array([177.0], np.float32), np.array([na]))[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'minmax', 'zscore' or 'max'"):
        Normaliser.fit(data, None, kind="range")


def test_the_training_mean_baseline_in_their_mse_definition_by_hand():
    """Predicting means (0.2, 0.3): per patient the channel means of (v - mean)², then the mean over
    channels (0 for a channel never observed), then over patients."""
    cfg = E.Config(holdout_frac=0.5, extrap_hours=24.0)
    got = E._mean_baseline(_patients(), cfg, np.array([0.2, 0.3], np.float32))
    # 1: ((.09 + 0) / 2 + .01) / 2 = .0275; 2: (.01 + 0) / 2 = .005;
    # 3: ((.01 + .49) / 2 + .09) / 2 = .17; 4: (.04 + .01) / 2 = .025
    assert got["mse_rpc"] == pytest.approx((0.0275 + 0.005 + 0.17 + 0.025) / 4)
    # each patient's first row given (their shift_outputs), its errors 0:
    # 1: ((0 + 0) / 2 + .01) / 2 = .005; 2: 0; 3: ((0 + .49) / 2 + .09) / 2 = .1675; 4: (0 + .01) / 2 = .005
    assert got["mse_rpc_row0"] == pytest.approx((0.005 + 0.0 + 0.1675 + 0.005) / 4)


def test_their_cross_entropy_is_divided_by_the_number_of_z0_samples_again():
    """compute_binary_CE_loss: BCE averaged over samples and patients, then / n_traj_samples."""
    from neuralode.data.physionet import collate
    from neuralode.nn.irregular import ClassifierHead, build_model

    torch.manual_seed(0)
    cfg = dataclasses.replace(E.resolve(E.Config(protocol="rubanova")), latent=3, rec_hidden=4, units=4,
                              static_channels=False, classifier_hidden=5, gru_units=4)
    full = E._Full(build_model("latent_ode_odernn", 2, latent=3, rec_hidden=4, units=4, rubanova=True, gru_units=4),
                   ClassifierHead(3, 5, 2, 0.1))
    batch = collate(_patients())
    keep = torch.ones(batch.mask.shape[:2] + (1,))
    losses = {}
    for classify in (False, True):
        torch.manual_seed(1)
        losses[classify], _ = E._loss(full, batch, keep, cfg, 0.0, None, classify)
    torch.manual_seed(1)
    mean, std, _ = full.model.encode(batch.times, batch.values, batch.mask)
    z0 = mean + std * torch.randn(3, *mean.shape)
    logits = full.head(z0)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels.expand(3, -1))
    assert float(losses[True] - losses[False]) == pytest.approx(float(100.0 * ce / 3), rel=1e-4)
