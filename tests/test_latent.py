"""Latent ODE, RNN baseline and the spiral generator: shapes, ELBO terms, times, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuralode
from neuralode.data.spirals import generate_spirals, spiral_curves
from neuralode.nn import LatentODE, RNNBaseline
from neuralode.nn.latent import gaussian_log_likelihood, kl_standard_normal

torch.set_num_threads(1)


def _model(**kw) -> LatentODE:
    torch.manual_seed(0)
    kw.setdefault("gradient", "direct")
    model = LatentODE(2, 3, 8, 8, 8, rtol=1e-6, atol=1e-7, **kw)
    with torch.no_grad():  # a field that does something, so that times matter
        model.dynamics.func.net[-1].weight.normal_(0, 0.5)
    return model


def _obs(B: int = 3, N: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 2, generator=g)
    t = torch.rand(B, N, generator=g) * 2.0
    return x, t


# --------------------------------------------------------------------------- helpers


def test_gaussian_log_likelihood_and_kl_by_hand():
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    mean = torch.zeros_like(x)
    std = 2.0
    by_hand = sum(-0.5 * math.log(2 * math.pi) - math.log(std) - 0.5 * (v / std) ** 2 for v in (1.0, 0.0, 3.0, 2.0))
    assert gaussian_log_likelihood(x, mean, std).item() == pytest.approx(by_hand)
    masked = sum(-0.5 * math.log(2 * math.pi) - math.log(std) - 0.5 * (v / std) ** 2 for v in (1.0, 0.0))
    assert gaussian_log_likelihood(x, mean, std, torch.tensor([[True, False]])).item() == pytest.approx(masked)
    # KL(N(1, e^0) || N(0, 1)) = 1/2; KL(N(0, e^2) || N(0, 1)) = (e^2 - 1 - 2) / 2
    kl = kl_standard_normal(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert kl.item() == pytest.approx(0.5 + 0.5 * (math.exp(2) - 3))
    m, lv = torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m, (0.5 * lv).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(m, lv), ref)


def test_elbo_is_log_likelihood_at_the_sampled_z0_minus_analytic_kl():
    model = _model(obs_std=0.3)
    x, t = _obs()
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    torch.manual_seed(5)
    terms = model.elbo(x, t, mask)
    torch.manual_seed(5)
    mean, logvar = model.encode(x, t, mask)
    z0 = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    x_hat = model.decode(z0, t)
    loglik = torch.stack([
        sum(torch.distributions.Normal(x_hat[b, i], 0.3).log_prob(x[b, i]).sum() for i in range(6) if mask[b, i])
        for b in range(3)
    ])
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(terms.log_lik, loglik)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.elbo, loglik - kl)
    assert terms.n_obs.tolist() == [6, 4, 6]
    assert model.loss(x, t, mask).shape == ()


# --------------------------------------------------------------------------- shapes and times


def test_shapes_of_every_entry():
    model = _model()
    x, t = _obs(B=4, N=5)
    mean, logvar = model.encode(x, t)
    assert mean.shape == logvar.shape == (4, 3)
    assert model.decode(mean, torch.linspace(0, 3, 7)).shape == (4, 7, 2)
    assert model.reconstruct(x, t, torch.rand(4, 9)).shape == (4, 9, 2)
    assert model.extrapolate(x, t[0], torch.linspace(2, 5, 11)).shape == (4, 11, 2)
    rnn = RNNBaseline(2, 8, 8)
    assert rnn.predict(x, t, torch.linspace(0, 4, 10)).shape == (4, 10, 2)
    assert rnn.extrapolate(x, t, torch.rand(4, 3) + 2).shape == (4, 3, 2)
    assert rnn.loss(x, t).shape == ()


def test_decoded_trajectory_equals_a_direct_solve_of_the_field():
    model = _model()
    z0 = torch.randn(2, 3)
    times = torch.tensor([0.7, -0.4, 1.5, 0.0])  # unsorted, on both sides of t0 = 0
    got = model.latent_trajectory(z0, times)
    fwd = neuralode.solve(model.dynamics.func, z0, torch.tensor([0.0, 0.7, 1.5]), rtol=1e-9, atol=1e-10).ys
    bwd = neuralode.solve(model.dynamics.func, z0, torch.tensor([0.0, -0.4]), rtol=1e-9, atol=1e-10).ys
    want = torch.stack([fwd[1], bwd[1], fwd[2], z0], 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_target_times_in_any_order_give_the_same_values():
    model = _model()
    x, t = _obs()
    times = torch.tensor([0.1, 0.5, 1.3, 2.2, 3.0, 4.5])
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    with torch.no_grad():
        a = model.extrapolate(x, t, times)
        b = model.extrapolate(x, t, times[perm])
    torch.testing.assert_close(b, a[:, perm], rtol=1e-4, atol=1e-5)


def test_observation_order_does_not_matter_but_times_do():
    model = _model()
    x, t = _obs()
    perm = torch.tensor([3, 1, 5, 0, 4, 2])
    with torch.no_grad():
        a = model.encode(x, t)
        b = model.encode(x[:, perm], t[:, perm])
        c = model.encode(x, t * 1.5)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], c[0])  # the encoder reads the gaps


def test_per_example_times_are_independent_of_the_rest_of_the_batch():
    """Each example of a batch with its own observation and query times (and padding) equals
    the same example run alone."""
    model = _model()
    rnn = RNNBaseline(2, 8, 8)
    x, t = _obs(B=3, N=6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 3:] = False
    x_pad = x.clone()
    x_pad[0, 3:] = float("nan")  # padding is never read
    queries = torch.tensor([[2.5, 0.2, 3.1], [0.05, 1.9, 4.0], [3.3, 2.9, 0.6]])
    with torch.no_grad():
        for m in (model, rnn):
            batch = m.predict(x_pad, t, queries, mask)
            assert torch.isfinite(batch).all()
            for b in range(3):
                n = int(mask[b].sum())
                alone = m.predict(x[b : b + 1, :n], t[b : b + 1, :n], queries[b : b + 1])
                torch.testing.assert_close(batch[b : b + 1], alone, rtol=1e-4, atol=1e-5)


def test_nan_padding_leaves_losses_and_gradients_finite():
    model = _model()
    x, t = _obs()
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 2:] = False
    x[2, 2:] = float("nan")
    t[2, 2:] = float("nan")  # padded times are never used either
    for m in (model, RNNBaseline(2, 8, 8)):
        m.zero_grad()
        loss = m.loss(x, t, mask)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_rnn_predicts_observations_one_step_ahead_and_rolls_out_beyond_them():
    torch.manual_seed(0)
    rnn = RNNBaseline(2, 8, 8)
    x, t = _obs(B=2, N=5)
    t, _ = t.sort(1)
    poked = x.clone()
    poked[:, 2] += 10.0
    with torch.no_grad():
        a, b = rnn.predict(x, t, t), rnn.predict(poked, t, t)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # prediction at t_2 has not read x_2
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    # the teacher-forced loss is the likelihood of exactly these predictions (first observation excluded)
    want = -gaussian_log_likelihood(x[:, 1:], a[:, 1:], rnn.obs_std).mean()
    torch.testing.assert_close(rnn.loss(x, t), want)
    # beyond the last observation the prediction is fed back: a later query depends on an earlier one
    future = t[:, -1:] + torch.tensor([[0.3, 0.6]])
    with torch.no_grad():
        both = rnn.predict(x, t, future)
        second_alone = rnn.predict(x, t, future[:, 1:])
    assert not torch.allclose(both[:, 1:], second_alone)


def test_invalid_inputs_are_rejected_with_names():
    model = _model()
    x, t = _obs()
    with pytest.raises(ValueError, match="at least one observation"):
        model.encode(x, t, torch.zeros(3, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="obs_times must have shape"):
        model.encode(x, t[:, :4])
    with pytest.raises(ValueError, match="mask must have shape"):
        model.encode(x, t, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="obs must be a"):
        model.encode(x[0], t)
    with pytest.raises(ValueError, match="obs_std"):
        LatentODE(obs_std=0.0)
    with pytest.raises(ValueError, match="act must be one of .*'sigmoid'"):
        LatentODE(ode_act="sigmoid")


def test_latent_field_is_torchdiffeqs_elu_mlp_by_default():
    torch.manual_seed(0)
    field = LatentODE(2, 4, 25, 20, 20).dynamics.func
    layers = list(field.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ELU", "Linear"]  # one hidden layer of 20
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (4, 20, 4)
    z = torch.randn(5, 4)
    torch.testing.assert_close(field(torch.tensor(0.0), z), layers[2](torch.nn.functional.elu(layers[0](z))))
    deep = LatentODE(2, 4, 25, 20, 20, ode_layers=3, ode_act="tanh").dynamics.func
    assert [type(m).__name__ for m in deep.net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]


def test_adjoint_and_direct_gradients_agree():
    x, t = _obs()
    grads = {}
    for gradient in ("direct", "adjoint"):
        model = _model(gradient=gradient)
        model.zero_grad()
        mean, _ = model.encode(x, t)
        model.decode(mean, torch.linspace(0.0, 2.0, 5)).pow(2).sum().backward()
        grads[gradient] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["direct"], grads["adjoint"]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_a_short_training_reduces_the_negative_elbo():
    data = generate_spirals(64, n_total=150, n_window=40, obs_counts=(20,), seed=1)
    x, t = data.observations(20)
    x = (x - x.mean((0, 1))) / x.std()
    torch.manual_seed(0)
    model = LatentODE(2, 4, 16, 16, 16, obs_std=0.3, gradient="direct")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    first = model.loss(x, t).item()
    for _ in range(40):
        loss = model.loss(x, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(1)
    assert model.loss(x, t).item() < 0.5 * first


# --------------------------------------------------------------------------- data


def test_spirals_are_seeded_balanced_and_within_the_window():
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = generate_spirals(100, seed=3)
    b = generate_spirals(100, seed=3)
    assert torch.equal(torch.get_rng_state(), state[0]) and np.array_equal(np.random.get_state()[1], state[1])
    torch.testing.assert_close(a.noisy, b.noisy)
    assert not torch.equal(a.noisy, generate_spirals(100, seed=4).noisy)
    assert a.true.shape == (100, 200, 2) and int(a.clockwise.sum()) == 50
    assert a.times[0] == 0 and len(a.times) == 200
    assert 0.08 < float((a.noisy - a.true).std()) < 0.12  # noise std 0.1
    for n in (30, 50, 100):
        idx = a.obs_index[n]
        assert idx.shape == (100, n)
        assert (idx.diff(dim=1) > 0).all() and idx.min() >= 0 and idx.max() < 100  # distinct, sorted, first half
        v, t = a.observations(n)
        assert v.shape == (100, n, 2) and (t <= a.times[99]).all()
        assert a.observation_mask(n).sum(1).eq(n).all()
    assert (a.start_index >= 100).all() and (a.start_index <= 300).all()


def test_spiral_windows_lie_on_the_named_curves():
    data = generate_spirals(20, seed=0)
    _, cw, cc = spiral_curves()
    for k in range(20):
        s = int(data.start_index[k])
        curve = cw if bool(data.clockwise[k]) else cc
        np.testing.assert_allclose(data.true[k].numpy(), curve[s : s + 200], rtol=1e-5, atol=1e-5)
    # the clockwise family turns clockwise: the signed area swept around its centre is negative
    rel = torch.tensor(cw) - torch.tensor([-5.0, 0.0])
    assert float((rel[:-1, 0] * rel[1:, 1] - rel[:-1, 1] * rel[1:, 0]).sum()) < 0
    rel = torch.tensor(cc) - torch.tensor([5.0, 0.0])
    assert float((rel[:-1, 0] * rel[1:, 1] - rel[:-1, 1] * rel[1:, 0]).sum()) > 0


def test_archimedean_clockwise_family_is_the_mirror_image_of_the_counter_clockwise_one():
    t, cw, cc = spiral_curves(clockwise="archimedean")
    np.testing.assert_allclose(cw[:, 0] + 5.0, cc[:, 0] - 5.0, atol=1e-12)
    np.testing.assert_allclose(cw[:, 1], -cc[:, 1], atol=1e-12)
    np.testing.assert_allclose(np.hypot(cw[:, 0] + 5.0, cw[:, 1]), 0.3 * t, atol=1e-12)
    data = generate_spirals(10, clockwise="archimedean", seed=0)
    assert data.meta["clockwise"] == "archimedean"
    with pytest.raises(ValueError, match="clockwise must be one of"):
        generate_spirals(10, clockwise="hyperbolic")


def test_extrapolation_windows_are_of_the_family_the_observation_windows_teach():
    """The law: with the Archimedean families the radius grows by b per radian at every radius, both
    ways; torchdiffeq's hyperbolic clockwise family leaves most of its extrapolated radii unseen (an
    oracle that knows each spiral's phase but caps its radius at the largest observed one: > 0.5)."""
    from neuralode.data.spirals import capped_radius_oracle_rmse

    data = generate_spirals(1000, seed=0)
    assert data.meta["clockwise"] == "archimedean"
    hyperbolic = generate_spirals(1000, clockwise="torchdiffeq", seed=0)
    assert capped_radius_oracle_rmse(hyperbolic) > 0.5
    assert capped_radius_oracle_rmse(hyperbolic) > 2 * capped_radius_oracle_rmse(data)
    for k in range(4):
        for cw in (True, False):
            sel = (data.clockwise == cw).nonzero().flatten()[k]
            centre = torch.tensor([-5.0 if cw else 5.0, 0.0])
            r = (data.true[sel] - centre).norm(dim=-1)
            torch.testing.assert_close(r.diff(), torch.full_like(r.diff(), 0.3 * 6 * math.pi / 499), rtol=1e-3,
                                       atol=1e-5)


@pytest.mark.parametrize(("n_total", "n_window"), [(500, 100), (400, 100), (1000, 100), (160, 40)])
def test_covered_test_windows_extrapolate_only_over_grid_points_training_observations_cover(n_total, n_window):
    """The radii: windows from covered_start_range end (extrapolation included) where observation
    windows from the default range end at the latest, and start no earlier than they start."""
    from neuralode.data.spirals import covered_start_range, default_start_range

    (lo, hi), (c_lo, c_hi) = default_start_range(n_total, n_window), covered_start_range(n_total, n_window)
    assert c_lo >= lo and c_hi + 2 * n_window - 1 == hi + n_window - 1  # last extrapolated = last observable point
    test = generate_spirals(50, n_total=n_total, n_window=n_window, obs_counts=(10,), start_range=(c_lo, c_hi), seed=2)
    assert (test.start_index >= c_lo).all() and (test.start_index <= c_hi).all()
    assert test.meta["start_range"] == (c_lo, c_hi)


def test_capped_radius_oracle_is_exact_on_covered_test_windows_and_not_on_the_training_range():
    """The coverage property the experiment's split relies on: the held-out spirals' extrapolations
    on windows from covered_start_range need no radius the training observation windows lack
    (oracle ~0, far below the noise 0.1); on windows from the training range they do (~0.2)."""
    from neuralode.data.spirals import capped_radius_oracle_rmse, covered_start_range

    train = generate_spirals(800, seed=0)
    covered = generate_spirals(200, start_range=covered_start_range(500, 100), seed=1)
    same_range = generate_spirals(200, seed=1)
    assert capped_radius_oracle_rmse(covered, train) < 0.01
    assert 0.1 < capped_radius_oracle_rmse(same_range, train) < 0.3
    # the same seed with another start range: the same directions, other windows
    other = generate_spirals(800, start_range=covered_start_range(500, 100), seed=0)
    assert torch.equal(other.clockwise, train.clockwise) and not torch.equal(other.start_index, train.start_index)
    with pytest.raises(ValueError, match="n_total >= 4"):
        covered_start_range(350, 100)


def test_spiral_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_total"):
        generate_spirals(10, n_total=200, n_window=100)
    with pytest.raises(ValueError, match="obs_counts"):
        generate_spirals(10, obs_counts=(150,))
    with pytest.raises(ValueError, match="n_spirals"):
        generate_spirals(1)
    with pytest.raises(ValueError, match="start_range"):
        generate_spirals(10, start_range=(100, 301))
    with pytest.raises(ValueError, match="start_range"):
        generate_spirals(10, start_range=(200, 100))


def test_papers_rnn_baseline_is_a_tanh_rnn_with_a_linear_head_and_bad_choices_are_named():
    from neuralode.nn.latent import RNNBaseline

    model = RNNBaseline(2, 25, 0, obs_std=0.1, cell="rnn")
    assert isinstance(model.cell, torch.nn.RNNCell) and model.cell.nonlinearity == "tanh"
    assert [type(m) for m in model.head] == [torch.nn.Linear]
    x, t = torch.randn(3, 7, 2), torch.linspace(0, 1, 7)
    assert model.predict(x, t, torch.linspace(1, 2, 5)).shape == (3, 5, 2)
    assert torch.isfinite(model.loss(x, t))
    with pytest.raises(ValueError, match="cell must be one of"):
        RNNBaseline(cell="lstm")
    with pytest.raises(ValueError, match="ode_layers"):
        LatentODE(ode_layers=1)
