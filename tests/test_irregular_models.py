"""Models for irregular multivariate series: shapes, causality, masking, NFE, losses."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode.nn import irregular as I

torch.set_num_threads(1)
C = 5


def _batch(B: int = 3, T: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(T, generator=g) * 2 + 0.1, 0)
    values = torch.randn(B, T, C, generator=g)
    mask = (torch.rand(B, T, C, generator=g) < 0.5).float()
    mask[:, 0] = 1.0  # everyone observed at the first row
    return times, values, mask


def _models(rubanova: bool = False):
    return {name: I.build_model(name, C, hidden=8, latent=4, rec_hidden=8, units=8, rubanova=rubanova, gru_units=6)
            for name in I.MODEL_NAMES}


BOTH = [(name, rub) for rub in (False, True) for name in I.MODEL_NAMES]


@pytest.mark.parametrize("name, rubanova", BOTH)
def test_every_model_maps_a_batch_to_predictions_state_kl_and_nfe(name, rubanova):
    torch.manual_seed(0)
    model = _models(rubanova)[name]
    times, values, mask = _batch()
    out = model(times, values, mask)
    assert out.pred.shape == values.shape
    assert out.state.shape == (3, model.state_dim)
    assert out.kl.shape == (3,)
    if name.startswith("gru"):
        assert out.nfe == 0 and torch.all(out.kl == 0)
    else:
        assert out.nfe > 0
    loss = I.masked_mse(out.pred, values, mask) + out.kl.mean() + I.ClassifierHead(model.state_dim, 4)(out.state).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, rubanova", [(n, r) for n, r in BOTH if not n.startswith("latent")])
def test_sequence_models_predict_a_row_without_reading_it(name, rubanova):
    """Changing row i's values changes no prediction at rows <= i (one-step-ahead, causal)."""
    torch.manual_seed(0)
    model = _models(rubanova)[name].eval()
    times, values, mask = _batch()
    i = 4
    poked = values.clone()
    poked[:, i:] += 10.0
    with torch.no_grad():
        a, b = model(times, values, mask).pred, model(times, poked, mask).pred
    torch.testing.assert_close(a[:, : i + 1], b[:, : i + 1])
    assert not torch.allclose(a[:, i + 1 :], b[:, i + 1 :])


@pytest.mark.parametrize("name, rubanova", BOTH)
def test_unobserved_entries_do_not_influence_the_model(name, rubanova):
    """Values where mask == 0 (held-out or missing) are never read."""
    torch.manual_seed(0)
    model = _models(rubanova)[name].eval()
    times, values, mask = _batch()
    noisy = values + 100.0 * (1 - mask)
    with torch.no_grad():
        a, b = model(times, values, mask), model(times, noisy, mask)
    torch.testing.assert_close(a.pred, b.pred)
    torch.testing.assert_close(a.state, b.state)


def test_ode_rnn_with_a_zero_field_and_no_observations_keeps_its_state():
    model = I.ODERNN(C, hidden=6, ode_hidden=6)
    for p in model.func.parameters():
        torch.nn.init.zeros_(p)
    times, values, mask = _batch()
    mask[:, 1:] = 0.0
    with torch.no_grad():
        before, h, nfe = model.run(times, values, mask)
    torch.testing.assert_close(before[:, -1], h)  # nothing moves it after the first update
    assert nfe == len(times) - 1  # Euler, one step per gap shorter than max_step
    torch.testing.assert_close(before[:, 0], torch.zeros(3, 6))


def _evolve_shared(func, h, dt, solver):
    """Every row carried over the same gap ``dt`` (:func:`~neuralode.nn.irregular._evolve_rows`)."""
    return I._evolve_rows(func, h, h.new_full(h.shape[:1], dt), solver)


def test_fixed_step_solver_takes_ceil_of_gap_over_max_step():
    func = I.ODEFunc(2, 4)
    y0 = torch.zeros(1, 2)
    _, nfe = _evolve_shared(func, y0, 0.25, I.SolverConfig("euler", max_step=0.1))
    assert nfe == 3
    _, nfe = _evolve_shared(func, y0, 0.25, I.SolverConfig("rk4", max_step=0.1))
    assert nfe == 12
    # the fixed-grid Adams methods take the grid too (they are not adaptive): 3 steps, rk4 starts
    assert I.SolverConfig("explicit_adams").fixed and not I.SolverConfig("dopri5").fixed
    _, nfe = _evolve_shared(func, y0, 0.25, I.SolverConfig("explicit_adams", max_step=0.1))
    assert 3 <= nfe <= 12


def test_inline_euler_takes_the_steps_of_a_euler_solve_with_gradients():
    import neuralode

    torch.manual_seed(0)
    func = I.ODEFunc(3, 8, small_init=False)
    y0 = torch.randn(4, 3, requires_grad=True)
    for dt in (0.01, 0.25, 0.3):  # one step (a gap below max_step), then ceil(dt / max_step) steps
        got, nfe = _evolve_shared(func, y0, dt, I.SolverConfig("euler", max_step=0.1))
        n = max(1, math.ceil(dt / 0.1 - 1e-9))
        ref = neuralode.solve(func, y0, torch.tensor([0.0, dt]), method="euler", options={"step_size": dt / n},
                              gradient="direct").ys[-1]
        assert nfe == n
        torch.testing.assert_close(got, ref)
        g_got, = torch.autograd.grad(got.sum(), y0)
        g_ref, = torch.autograd.grad(ref.sum(), y0)
        torch.testing.assert_close(g_got, g_ref)


def test_latent_ode_samples_in_training_and_uses_the_mean_in_evaluation():
    torch.manual_seed(0)
    model = _models()["latent_ode_odernn"]
    times, values, mask = _batch()
    model.eval()
    with torch.no_grad():
        a, b = model(times, values, mask).pred, model(times, values, mask).pred
    torch.testing.assert_close(a, b)
    model.train()
    with torch.no_grad():
        c = model(times, values, mask).pred
    assert not torch.allclose(a, c)


def test_latent_ode_encodes_only_up_to_the_last_observed_row():
    """Trailing rows without input (extrapolation) do not change the encoding."""
    torch.manual_seed(0)
    model = _models()["latent_ode_odernn"].eval()
    times, values, mask = _batch()
    cut = mask.clone()
    cut[:, 4:] = 0
    with torch.no_grad():
        m1, s1, _ = model.encode(times, values, cut)
        m2, s2, _ = model.encode(times[:4], values[:, :4], cut[:, :4])
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(s1, s2)


def test_masked_losses_ignore_unobserved_entries():
    pred = torch.zeros(2, 3, C)
    target = torch.ones(2, 3, C)
    mask = torch.zeros(2, 3, C)
    mask[0, 0, 0] = 1
    target_garbage = target + 1e6 * (1 - mask)
    assert I.masked_mse(pred, target_garbage, mask).item() == pytest.approx(1.0)
    nll = I.masked_gaussian_nll(pred, target_garbage, mask, std=0.5)
    torch.testing.assert_close(nll, torch.tensor([1 / (2 * 0.25), 0.0]))
    assert I.masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_gru_decay_imputes_missing_inputs_towards_the_training_mean():
    model = I.GRUDecay(C, hidden=4)
    model.set_mean(torch.arange(C, dtype=torch.float32))
    assert torch.equal(model.x_mean, torch.arange(C, dtype=torch.float32))


def test_unknown_model_and_encoder_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'lstm'"):
        I.build_model("lstm", C)
    with pytest.raises(ValueError, match="encoder must be"):
        I.LatentODE(C, encoder="cnn")
    times, values, mask = _batch()
    for encoder in (I.ODERNN(C, hidden=4, decoder=False), I.GRUDelta(C, hidden=4, decoder=False)):
        with pytest.raises(ValueError, match="built with decoder=False"):
            encoder(times, values, mask)


def test_field_init_std_draws_every_weight_of_the_field_and_zeroes_the_biases():
    torch.manual_seed(0)
    func = I.ODEFunc(40, 200, layers=3, init_std=0.1)
    linears = [m for m in func.net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for lin in linears:
        assert float(lin.weight.std()) == pytest.approx(0.1, rel=0.1)
        assert torch.all(lin.bias == 0)
    small = I.ODEFunc(40, 200, layers=3)  # default: last layer near zero
    assert float(small.net[-1].weight.std()) < 0.02
    with pytest.raises(ValueError, match="init_std"):
        I.ODEFunc(4, 8, init_std=0.0)



# --------------------------------------------------------------------------- Rubanova et al.'s released architecture


def test_their_gru_unit_keeps_mean_and_std_where_a_row_is_unobserved_and_updates_elsewhere():
    torch.manual_seed(0)
    unit = I.RubanovaGRUUnit(hidden=4, input_dim=2 * C, units=6)
    h, s = torch.randn(3, 4), torch.rand(3, 4)
    m = torch.zeros(3, C)
    m[1, 2] = 1.0  # only patient 1 has an observation in this row
    x = torch.cat([torch.randn(3, C) * m, m], -1)
    h2, s2 = unit(h, s, x, m)
    assert h2.shape == (3, 4) and s2.shape == (3, 4)
    torch.testing.assert_close(h2[[0, 2]], h[[0, 2]])
    torch.testing.assert_close(s2[[0, 2]], s[[0, 2]])
    assert not torch.allclose(h2[1], h[1]) and not torch.allclose(s2[1], s[1])
    assert torch.all(s2 >= 0)
    for net in (unit.update_gate, unit.reset_gate, unit.new_state):  # MLPs of `units` on [h, s, x]
        lin = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in lin][0] == (2 * 4 + 2 * C, 6)
        assert all(torch.all(mod.bias == 0) for mod in lin)


def test_their_gru_unit_blends_the_new_state_by_the_update_gate_by_hand():
    """Weights zero and last biases set: u = sigmoid(b_u), new state (n, n_s) = its bias, so
    h' = (1 - u) n + u h and s' = |(1 - u) |n_s| + u s|."""
    unit = I.RubanovaGRUUnit(hidden=2, input_dim=2, units=3)
    for p in unit.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        unit.update_gate[2].bias.fill_(math.log(3.0))  # sigmoid = 0.75
        unit.new_state[2].bias.copy_(torch.tensor([2.0, -4.0, -1.0, 0.5]))  # n = (2, -4), n_s = (-1, 0.5)
    h, s = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 0.4]])
    x, m = torch.tensor([[0.3, 1.0]]), torch.tensor([[1.0]])
    h2, s2 = unit(h, s, x, m)
    torch.testing.assert_close(h2, torch.tensor([[0.25 * 2 + 0.75 * 1, 0.25 * -4 + 0.75 * 0]]))
    torch.testing.assert_close(s2, torch.tensor([[0.25 * 1 + 0.75 * 0.2, 0.25 * 0.5 + 0.75 * 0.4]]))


@pytest.mark.parametrize("name", ["gru_dt", "gru_decay", "ode_rnn"])
def test_shifted_outputs_are_the_input_row_then_the_decoded_state_after_the_previous_row(name):
    """Their shift_outputs: row 0 is the (masked) input itself, row i the decoder of the state after
    row i - 1's update - for the ODE-RNN not carried across the gap to t_i."""
    torch.manual_seed(0)
    model = _models(rubanova=True)[name].eval()
    times, values, mask = _batch()
    with torch.no_grad():
        out = model(times, values, mask)
        torch.testing.assert_close(out.pred[:, 0], values[:, 0] * mask[:, 0])
        if name == "ode_rnn":
            after = model.scan(times, values, mask).after
            torch.testing.assert_close(out.pred[:, 1:], model.decoder(after[:, :-1]))
            _, h1, _ = model.run(times[:2], values[:, :2], mask[:, :2])  # state after row 1
            torch.testing.assert_close(out.pred[:, 2], model.decoder(h1))
    dec = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(dec) == 2 and dec[0].out_features == (100 if name == "ode_rnn" else 8)  # theirs: 100 / --units


def test_their_ode_rnn_moves_the_mean_across_gaps_and_leaves_the_std():
    torch.manual_seed(0)
    model = I.ODERNN(C, hidden=6, ode_hidden=6, field_init_std=0.1, cell="rubanova", gru_units=5)
    times, values, mask = _batch()
    mask[:, 1:] = 0.0  # one update at row 0, then only gaps
    with torch.no_grad():
        sc = model.scan(times, values, mask)
        s0 = model.scan(times[:1], values[:, :1], mask[:, :1]).s
    torch.testing.assert_close(sc.s, s0)
    assert torch.all(sc.s > 0)
    assert not torch.allclose(sc.before[:, -1], sc.after[:, 0])  # the field moved the mean


@pytest.mark.parametrize("encoder, width", [("odernn", 2 * 8), ("rnn", 8)])
def test_their_latent_ode_heads_read_the_encoders_mean_and_std_and_give_a_positive_std(encoder, width):
    torch.manual_seed(0)
    model = I.LatentODE(C, encoder, latent=4, rec_hidden=8, units=8, heads="rubanova", gru_units=6)
    first = model.to_z0[0]
    assert (first.in_features, first.out_features) == (width, 100 if encoder == "odernn" else 50)
    assert isinstance(model.decoder, torch.nn.Linear) and torch.all(model.decoder.bias == 0)
    times, values, mask = _batch()
    mean, std, _ = model.encode(times, values, mask)
    assert mean.shape == std.shape == (3, 4) and torch.all(std > 0)
    with pytest.raises(ValueError, match="heads must be"):
        I.LatentODE(C, heads="theirs")
    with pytest.raises(ValueError, match="predict must be"):
        I.GRUDelta(C, predict="after")
    with pytest.raises(ValueError, match="cell must be"):
        I.ODERNN(C, cell="lstm")
