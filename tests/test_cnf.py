"""Continuous normalizing flow: traces, Hutchinson, normalisation, inversion, regulariser states.

Plus the 2-D density generators the CNF experiment samples from.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neuralode.data import densities
from neuralode.nn import CNF
from neuralode.nn.cnf import divergence_exact, divergence_hutchinson, standard_normal_logprob


def _cnf(seed: int = 0, *, scale: float = 1.0, **kw) -> CNF:
    torch.manual_seed(seed)
    kw.setdefault("gradient", "direct")
    cnf = CNF(**kw).double()
    if scale != 1.0:  # a stronger random flow, so the tests see a density far from the base
        with torch.no_grad():
            for layer in cnf.net.layers:
                layer.linear.weight.mul_(scale)
    return cnf


class Linear(nn.Module):
    """``f(t, z) = z Aᵀ``: flows, densities and regularisers have closed forms."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z):
        return z @ self.a.T


# ----------------------------------------------------------------------------- traces


@pytest.mark.parametrize("dim", [2, 3])
def test_exact_trace_and_frobenius_equal_those_of_the_autograd_jacobian(dim):
    cnf = _cnf(1, dim=dim, hidden=(16, 16), scale=2.0)
    z = torch.randn(5, dim, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    div, frob = divergence_exact(cnf.net(t, z), z)
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: cnf.net(t, v[None])[0], z[i].detach())
        assert div[i].item() == pytest.approx(torch.trace(jac).item(), rel=1e-10, abs=1e-12)
        assert frob[i].item() == pytest.approx(jac.pow(2).sum().item(), rel=1e-10)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimator_is_unbiased_over_many_draws(noise):
    cnf = _cnf(2, dim=3, hidden=(16, 16), scale=2.0)
    n_points, draws = 4, 20000
    t = torch.tensor(0.5, dtype=torch.float64)
    z0 = torch.randn(n_points, 3, dtype=torch.float64)
    z = z0.repeat(draws, 1).requires_grad_(True)  # row k*n + i is point i
    gen = torch.Generator().manual_seed(0)
    if noise == "rademacher":
        eps = torch.randint(0, 2, z.shape, generator=gen).double() * 2 - 1
    else:
        eps = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    f = cnf.net(t, z)
    est, frob_est = (e.detach().reshape(draws, n_points) for e in divergence_hutchinson(f, z, eps))
    exact, frob = divergence_exact(f, z)
    exact, frob = exact.detach()[:n_points], frob.detach()[:n_points]
    for values, truth in ((est, exact), (frob_est, frob)):
        mean, se = values.mean(0), values.std(0) / math.sqrt(draws)
        assert (values.std(0) > 0).all()  # a real estimator, not the exact trace in disguise
        assert ((mean - truth).abs() < 4 * se + 1e-9).all(), (mean, truth, se)


def test_hutchinson_noise_is_drawn_once_per_solve_and_follows_the_generator():
    cnf = _cnf(3, trace="hutchinson", hidden=(8,))
    x = torch.randn(6, 2, dtype=torch.float64)
    seen = []
    net_forward = cnf.net.forward

    def recording(t, z):
        seen.append(cnf.field.eps)
        return net_forward(t, z)

    cnf.net.forward = recording
    a = cnf.log_prob(x, generator=torch.Generator().manual_seed(5))
    assert len(seen) > 6 and all(e is seen[0] for e in seen)  # one draw, fixed through the solve
    assert set(seen[0].unique().tolist()) <= {-1.0, 1.0} and seen[0].shape == x.shape
    b = cnf.log_prob(x, generator=torch.Generator().manual_seed(5))
    c = cnf.log_prob(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


# ----------------------------------------------------------------------------- the density


def test_log_density_matches_the_closed_form_of_a_linear_flow():
    a = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    cnf = CNF(net=Linear(a), T=1.5, rtol=1e-9, atol=1e-9, gradient="direct").double()
    x = torch.randn(7, 2, dtype=torch.float64)
    z = x @ torch.linalg.matrix_exp(a * 1.5).T
    expected = standard_normal_logprob(z) + 1.5 * torch.trace(a)
    torch.testing.assert_close(cnf.log_prob(x).detach(), expected, rtol=1e-7, atol=1e-7)


def test_log_density_integrates_to_one_over_a_grid():
    cnf = _cnf(4, scale=2.5, rtol=1e-5, atol=1e-5).float()
    n, lim = 200, 6.0
    xs = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        p = cnf.log_prob(pts).double().exp()
    cell = (xs[1] - xs[0]).item() ** 2
    base = standard_normal_logprob(pts).double().exp()
    assert (p - base).abs().sum().item() * cell > 0.3  # the flow moved the density far from the base
    assert p.sum().item() * cell == pytest.approx(1.0, abs=0.01)


def test_sample_then_invert_returns_the_base_points():
    cnf = _cnf(5, scale=2.0, rtol=1e-8, atol=1e-8)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x = cnf.from_base(z)
        z_back, delta = cnf.to_base(x)
        samples = cnf.sample(64, generator=torch.Generator().manual_seed(1))
        logp = cnf.log_prob(x)
    assert (x - z).abs().max() > 0.1  # a non-trivial flow
    torch.testing.assert_close(z_back, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(samples, x, rtol=1e-6, atol=1e-6)  # sample() = from_base(randn)
    torch.testing.assert_close(logp, standard_normal_logprob(z) - delta, rtol=1e-6, atol=1e-6)
    assert cnf.nfe > 0 and cnf.stats is not None


def test_trajectory_from_noise_to_data_starts_at_the_base_points():
    cnf = _cnf(6, scale=2.0)
    z = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        path = cnf.from_base(z, times=torch.linspace(1.0, 0.0, 5))
        end = cnf.from_base(z)
    assert path.shape == (5, 10, 2)
    torch.testing.assert_close(path[0], z)
    torch.testing.assert_close(path[-1], end, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- regularisers


def test_regulariser_states_equal_closed_forms_on_a_frozen_linear_field():
    a = torch.tensor([[0.2, -1.0], [0.7, -0.1]], dtype=torch.float64)
    T = 0.8
    x = torch.randn(5, 2, dtype=torch.float64)
    ts = torch.linspace(0, T, 2001, dtype=torch.float64)
    zs = torch.stack([x @ torch.linalg.matrix_exp(a * t).T for t in ts])  # (time, batch, 2)
    kin_t = 0.5 * (zs @ a.T).pow(2).sum(-1).mean(1)
    kinetic = torch.trapezoid(kin_t, ts).item()
    for trace in ("exact", "hutchinson"):
        cnf = CNF(net=Linear(a), T=T, trace=trace, kinetic_weight=0.3, jacobian_weight=0.2,
                  rtol=1e-10, atol=1e-10, gradient="direct").double()
        for p in cnf.parameters():
            p.requires_grad_(False)
        cnf.log_prob(x)
        reg = cnf.regularization
        assert reg["kinetic"].item() == pytest.approx(kinetic, rel=1e-6)
        if trace == "exact":
            jac = T * a.pow(2).sum().item()
        else:
            jac = T * (cnf.field.eps @ a).pow(2).sum(1).mean().item()  # ‖εᵀA‖² with the solve's ε
        assert reg["jacobian"].item() == pytest.approx(jac, rel=1e-8)
        assert cnf.regularization_loss.item() == pytest.approx(0.3 * kinetic + 0.2 * jac, rel=1e-6)


def test_regulariser_states_equal_quadrature_along_the_trajectory_of_a_frozen_mlp():
    cnf = _cnf(7, scale=2.0, kinetic_weight=1.0, jacobian_weight=1.0, rtol=1e-9, atol=1e-9)
    for p in cnf.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 2, dtype=torch.float64)
    cnf.log_prob(x)
    reg = {k: v.item() for k, v in cnf.regularization.items()}
    # independent route: the plain trajectory at many times, then the integrands and Simpson's rule
    ts = torch.linspace(0.0, 1.0, 401, dtype=torch.float64)
    from neuralode import solve

    zs = solve(lambda t, z: cnf.net(t, z), x, ts, rtol=1e-10, atol=1e-10).ys
    kin, frob = [], []
    for t, z in zip(ts, zs):
        z = z.clone().requires_grad_(True)
        f = cnf.net(t, z)
        frob.append(divergence_exact(f, z)[1].mean())
        kin.append(0.5 * f.detach().pow(2).sum(1).mean())
    h = (ts[1] - ts[0]).item()

    def simpson(v):
        v = torch.stack(v)
        return (h / 3 * (v[0] + v[-1] + 4 * v[1:-1:2].sum() + 2 * v[2:-1:2].sum())).item()

    assert reg["kinetic"] == pytest.approx(simpson(kin), rel=1e-6)
    assert reg["jacobian"] == pytest.approx(simpson(frob), rel=1e-6)


def test_regularisers_are_off_by_default_and_training_gradients_reach_every_parameter():
    cnf = _cnf(8, hidden=(8, 8))
    x = torch.randn(16, 2, dtype=torch.float64)
    loss = -cnf.log_prob(x).mean() + cnf.regularization_loss
    assert cnf.regularization == {} and cnf.regularization_loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cnf.parameters())
    cnf.zero_grad()
    cnf.kinetic_weight = 0.1
    loss = -cnf.log_prob(x).mean() + cnf.regularization_loss
    assert set(cnf.regularization) == {"kinetic"} and cnf.regularization_loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in cnf.parameters())


def test_log_prob_gradient_matches_finite_differences_of_a_parameter():
    cnf = _cnf(9, hidden=(6,), rtol=1e-10, atol=1e-10)
    x = torch.randn(4, 2, dtype=torch.float64)
    w = cnf.net.layers[0].linear.weight
    cnf.log_prob(x).sum().backward()
    grad = w.grad[1, 0].item()
    with torch.no_grad():
        eps = 1e-5
        w[1, 0] += eps
        up = cnf.log_prob(x).sum().item()
        w[1, 0] -= 2 * eps
        down = cnf.log_prob(x).sum().item()
    assert grad == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("gradient", ["adjoint", "adjoint-seminorm"])
def test_adjoint_gradients_match_direct_ones_and_count_backward_nfe(gradient):
    adjoint = pytest.importorskip("neuralode.adjoint")
    if gradient not in getattr(adjoint, "SHORTHANDS", {}):
        pytest.skip(f"{gradient} strategy not available")
    x = torch.randn(8, 2, dtype=torch.float64)
    grads, nfe_backward = [], []
    for strategy in ("direct", gradient):
        cnf = _cnf(10, hidden=(8, 8), gradient=strategy, rtol=1e-9, atol=1e-9, kinetic_weight=0.1,
                   jacobian_weight=0.1)
        (-cnf.log_prob(x).mean() + cnf.regularization_loss).backward()
        grads.append([p.grad.clone() for p in cnf.parameters()])
        nfe_backward.append(cnf.nfe_backward)
    for g_direct, g_adjoint in zip(*grads):
        torch.testing.assert_close(g_adjoint, g_direct, rtol=1e-5, atol=1e-7)
    assert nfe_backward[0] == 0 and nfe_backward[1] > 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    ({"trace": "approx"}, "trace must be one of"),
    ({"noise": "uniform"}, "noise must be one of"),
    ({"kinetic_weight": -1.0}, "kinetic_weight must be a finite number >= 0"),
    ({"jacobian_weight": float("nan")}, "jacobian_weight must be a finite number >= 0"),
    ({"T": 0.0}, "T must be a finite number > 0"),
    ({"dim": 0}, "dim must be a positive integer"),
    ({"layer": "dense"}, "layer must be one of"),
    ({"activation": "sigmoid"}, "activation must be one of"),
    ({"hidden": (64, -1)}, "hidden must be a sequence of positive integers"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNF(**kwargs)


def test_bad_call_arguments_are_named():
    cnf = _cnf(11, hidden=(4,))
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        CNF(net=lambda t, z: z)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\); got \(5, 3\)"):
        cnf.log_prob(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be floating point"):
        cnf.log_prob(torch.ones(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        cnf.sample(0)
    with pytest.raises(ValueError, match="times must be a 1-D sequence .* starting at T=1.0"):
        cnf.from_base(torch.randn(3, 2, dtype=torch.float64), times=[0.5, 0.0])


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", densities.dataset_names())
def test_densities_are_seeded_float32_points_and_leave_global_rngs_alone(name):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = densities.sample(name, 1000, 3)
    b = densities.sample(name, 1000, np.random.default_rng(3))
    c = densities.sample(name, 1000, 4)
    d = densities.sample(name, 1000, torch.Generator().manual_seed(3))
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert 0.3 < a.std(0).min() and a.abs().max() < 8  # FFJORD's scales: inside [-8, 8]^2


def test_moons_match_ffjords_scale_and_offset():
    x = densities.sample("moons", 20000, 0).double()
    # outer arc: centre (-1, -0.2), radius 2; inner arc: centre (1, 0.8), radius 2 (noise 0.2)
    r_outer = (x - torch.tensor([-1.0, -0.2], dtype=torch.float64)).norm(dim=1)
    r_inner = (x - torch.tensor([1.0, 0.8], dtype=torch.float64)).norm(dim=1)
    nearest = torch.minimum((r_outer - 2).abs(), (r_inner - 2).abs())
    assert nearest.median() < 0.2 and x[:, 0].min() > -4.0 and x[:, 0].max() < 4.0


def test_density_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown dataset 'swissroll'"):
        densities.sample("swissroll", 10, 0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        densities.sample("moons", 0, 0)
    with pytest.raises(TypeError, match="rng must be"):
        densities.sample("moons", 10, None)
