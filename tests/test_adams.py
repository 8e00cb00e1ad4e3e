"""torchdiffeq's fixed-grid Adams methods: ``explicit_adams``, ``implicit_adams``, ``fixed_adams``.

Convergence orders at ``max_order`` 1-4 (below 4 they are rk4, as torchdiffeq's), agreement with
SciPy's solution of a nonlinear problem, and step-for-step agreement with torchdiffeq itself.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import neuralode
from neuralode.adams import BASHFORTH, MOULTON
from problems import harmonic_oscillator, log_log_slope, scipy_reference, van_der_pol

F64 = torch.float64
ADAMS = ("explicit_adams", "implicit_adams", "fixed_adams")


def _end_error(method, h, **options):
    problem = harmonic_oscillator()
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ys = neuralode.odeint(problem.func, problem.y0, t, method=method, options=dict(step_size=h, **options))
    return float((ys[-1] - problem.exact(t)[-1]).abs().max())


# max_order 1-3 reduce to rk4 (order 4); at max_order 4 the explicit method is Adams–Bashforth 3
# (order 3) and the implicit one the AB3 predictor with the 4th-order Adams–Moulton corrector.
@pytest.mark.parametrize("method,max_order,order", [
    ("explicit_adams", 1, 4), ("explicit_adams", 2, 4), ("explicit_adams", 3, 4), ("explicit_adams", 4, 3),
    ("implicit_adams", 1, 4), ("implicit_adams", 2, 4), ("implicit_adams", 3, 4), ("implicit_adams", 4, 4),
])
def test_convergence_order_at_each_max_order(method, max_order, order):
    hs = [1 / 16, 1 / 32, 1 / 64, 1 / 128]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_order < 4 warns that the method is rk4
        errors = [_end_error(method, h, max_order=max_order) for h in hs]
    assert abs(log_log_slope(hs, errors) - order) < 0.25, errors


def test_a_max_order_below_four_warns_that_the_method_is_rk4():
    with pytest.warns(UserWarning, match="reduces to `rk4`"):
        err = _end_error("implicit_adams", 1 / 32, max_order=2)
    assert err == _end_error("rk4", 1 / 32)


@pytest.mark.parametrize("method", ("explicit_adams", "implicit_adams"))
def test_agrees_with_scipy_on_a_nonlinear_problem(method):
    # Outputs on grid nodes (h = 1/256, outputs every 0.5), so the error is the method's own.
    problem = van_der_pol()
    t = torch.linspace(0.0, 5.0, 11, dtype=F64)
    ys = neuralode.odeint(problem.func, problem.y0, t, method=method, options=dict(step_size=1 / 256, max_order=5))
    err = float((ys - scipy_reference(problem, t)).abs().max())
    assert err < 1e-7, err


def test_fixed_adams_is_implicit_adams():
    problem = harmonic_oscillator()
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    a = neuralode.solve(problem.func, problem.y0, t, method="fixed_adams", options=dict(step_size=0.05))
    b = neuralode.solve(problem.func, problem.y0, t, method="implicit_adams", options=dict(step_size=0.05))
    assert torch.equal(a.ys, b.ys) and a.stats.nfe == b.stats.nfe


def test_coefficients_are_the_textbook_ones():
    assert BASHFORTH[1] == (1.0,)
    assert BASHFORTH[2] == (1.5, -0.5)
    torch.testing.assert_close(torch.tensor(BASHFORTH[4], dtype=F64), torch.tensor([55, -59, 37, -9], dtype=F64) / 24)
    torch.testing.assert_close(torch.tensor(MOULTON[4], dtype=F64), torch.tensor([9, 19, -5, 1], dtype=F64) / 24)
    for k in range(1, 13):
        assert abs(sum(BASHFORTH[k]) - 1) < 1e-12 and abs(sum(MOULTON[k]) - 1) < 1e-12


@pytest.mark.parametrize("method", ADAMS)
@pytest.mark.parametrize("max_order", [4, 8])  # (explicit Adams of order 11 is unstable here, in both)
@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_matches_torchdiffeq_step_for_step(method, max_order, interp):
    import torchdiffeq  # the test extra installs it
    problem = van_der_pol()
    t = torch.tensor([0.0, 0.33, 1.0, 1.7], dtype=F64)
    options = dict(step_size=0.01, max_order=max_order, interp=interp)
    ours = neuralode.odeint(problem.func, problem.y0, t, method=method, options=options)
    theirs = torchdiffeq.odeint(problem.func, problem.y0, t, method=method, options=options)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


def test_corrector_that_does_not_converge_warns_as_torchdiffeq():
    problem = van_der_pol()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.warns(UserWarning, match="Functional iteration did not converge"):
        neuralode.odeint(problem.func, problem.y0, t, method="implicit_adams", rtol=1e-14, atol=1e-16,
                         options=dict(step_size=0.1, max_iters=1))


def test_nfe_counts_one_derivative_per_step_plus_the_corrector_and_the_rk4_start():
    problem = harmonic_oscillator()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    explicit = neuralode.solve(problem.func, problem.y0, t, method="explicit_adams", options=dict(step_size=0.01))
    assert explicit.stats.nfe == 100 + 2 * 3  # two rk4 starting steps with 3 more stages each
    implicit = neuralode.solve(problem.func, problem.y0, t, method="implicit_adams", options=dict(step_size=0.01))
    assert 100 + 2 * 3 + 98 <= implicit.stats.nfe <= 100 + 2 * 3 + 98 * 4


def test_bad_adams_options_are_rejected_by_name():
    problem = harmonic_oscillator()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"max_order.*<= 12"):
        neuralode.odeint(problem.func, problem.y0, t, method="implicit_adams", options=dict(max_order=13))
    with pytest.raises(ValueError, match="max_iters"):
        neuralode.odeint(problem.func, problem.y0, t, method="implicit_adams", options=dict(max_iters=0))
    with pytest.raises(ValueError, match="first_step"):
        neuralode.odeint(problem.func, problem.y0, t, method="explicit_adams", options=dict(first_step=0.1))


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.8, dtype=F64))

    def forward(self, t, y):
        return self.a * y + torch.sin(t)


@pytest.mark.parametrize("method", ("explicit_adams", "implicit_adams"))
def test_adjoint_gradients_agree_with_direct_backprop(method):
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    grads = {}
    for gradient in ("direct", "adjoint"):
        func = _Field()
        y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
        ys = neuralode.solve(func, y0, t, method=method, options=dict(step_size=1 / 64, max_order=5),
                             gradient=gradient).ys
        ys.pow(2).sum().backward()
        grads[gradient] = (y0.grad, func.a.grad)
    for g, e in zip(grads["adjoint"], grads["direct"]):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)


def test_checkpointed_gradients_are_refused_for_multistep_methods():
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="checkpoint.*'implicit_adams'"):
        neuralode.solve(_Field(), y0, torch.tensor([0.0, 1.0], dtype=F64), method="implicit_adams",
                        gradient="checkpoint")
