"""Gradients through implicit solves: gradcheck of direct backprop and of the adjoint (whose
backward solve runs the same implicit method on the adjoint system).

Direct backprop follows the Newton iterates with the Jacobian held constant (the derivative of
the stage equations to the Newton tolerance); Rosenbrock23's matrix is built from a
differentiable Jacobian, since ``J`` is part of that method. Adaptive step-size decisions are
piecewise constant in the inputs, hence the wider finite-difference ``eps`` (as in
``test_gradcheck.py``).
"""
from __future__ import annotations

import pytest
import torch

from neuralode import odeint, odeint_adjoint, solve
from neuralode.adjoint import Adjoint

EPS = 1e-4
T = torch.tensor([0.0, 0.1, 0.25], dtype=torch.float64)


def stiff_field(t, y, w):
    """A small nonlinear stiff field: a fast mode (rate 200·w0) pulls x to a slow, forced v."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([-200.0 * w[0] * (x - torch.sin(v)), w[1] * v - 0.5 * x * v + torch.cos(t)], dim=-1)


class StiffModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -0.7], dtype=torch.float64))

    def forward(self, t, y):
        return stiff_field(t, y, self.w)


def _tols(method):
    """Tight enough for gradcheck, loose enough for few steps (third and second order need more)."""
    return {"kvaerno5": dict(rtol=1e-9, atol=1e-9), "kvaerno3": dict(rtol=1e-7, atol=1e-7),
            "rosenbrock23": dict(rtol=1e-6, atol=1e-6)}.get(method, dict(rtol=1e-9, atol=1e-9))


@pytest.mark.parametrize("method", ("kvaerno3", "kvaerno5", "radauIIA5", "sdirk2"))
def test_gradcheck_direct_through_an_implicit_solve(method):
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    fixed = method in ("radauIIA5", "sdirk2")
    options = {"step_size": 0.05} if fixed else None

    def run(y0, w):
        return odeint(lambda t, y: stiff_field(t, y, w), y0, T, method=method, options=options, **_tols(method))

    assert torch.autograd.gradcheck(run, (y0, w), eps=1e-6 if fixed else EPS, atol=1e-5, rtol=1e-3)


def test_rosenbrock23_direct_gradients_agree_with_kvaerno5s():
    # Rosenbrock23's matrix is built from a differentiable Jacobian; at rtol 1e-6 its gradient
    # must agree with a tight kvaerno5 solve's to about the tolerance (gradcheck's finite
    # differences are too noisy for a second-order adaptive solve).
    def grad(method, tols):
        w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
        y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
        odeint(lambda t, y: stiff_field(t, y, w), y0, T, method=method, **tols)[-1].sum().backward()
        return torch.cat([y0.grad, w.grad])

    torch.testing.assert_close(grad("rosenbrock23", dict(rtol=1e-6, atol=1e-6)),
                               grad("kvaerno5", dict(rtol=1e-9, atol=1e-9)), rtol=1e-3, atol=1e-4)


def test_gradcheck_adjoint_runs_the_implicit_method_backward():
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    t = T[:2]

    def run(y0, w):
        return odeint_adjoint(lambda t, y: stiff_field(t, y, w), y0, t, method="kvaerno5", adjoint_params=(w,),
                              rtol=1e-8, atol=1e-8)

    assert torch.autograd.gradcheck(run, (y0, w), eps=EPS, atol=1e-4, rtol=1e-3)


def test_rosenbrock23_adjoint_agrees_with_kvaerno5s_direct_gradients():
    # The interpolating adjoint (the default for adaptive implicit methods) gives rosenbrock23 the
    # exact Jacobian of the stiff block of its backward system, so it can run backwards too.
    def grad(method, tols, gradient):
        y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
        field = StiffModule()
        ys = solve(field, y0, T, method=method, gradient=gradient, **tols).ys
        ys[-1].sum().backward()
        return torch.cat([y0.grad, field.w.grad])

    torch.testing.assert_close(grad("rosenbrock23", dict(rtol=1e-6, atol=1e-6), "adjoint"),
                               grad("kvaerno5", dict(rtol=1e-9, atol=1e-9), "direct"), rtol=1e-3, atol=1e-4)


def test_rosenbrock23_backsolve_adjoint_asks_for_the_interpolating_adjoint():
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    ys = solve(lambda t, y: stiff_field(t, y, w), y0, T[:2], method="rosenbrock23",
               gradient=Adjoint(params=(w,), interpolate=False)).ys
    with pytest.raises(ValueError, match="interpolate=True"):
        ys.sum().backward()


@pytest.mark.parametrize("method", ("kvaerno5", "rosenbrock23"))
def test_adjoint_time_gradients_through_an_implicit_solve_match_direct(method):
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    tols = _tols(method)

    def grad_t(gradient):
        t = torch.tensor([0.0, 0.1, 0.25], dtype=torch.float64, requires_grad=True)
        ys = solve(lambda tt, y: stiff_field(tt, y, w), y0, t, method=method, gradient=gradient, **tols).ys
        (ys[-1].sum() + ys[1].sum()).backward()
        return t.grad

    # dL/dt0 = -a(t0)·f(t0, y0), and f(t0, y0) is large here (x starts far from sin(v)): it
    # needs the adjoint at t0 accurate, which back-solving the state does not give (see
    # test_backsolve_is_wrong_on_a_stiff_field_where_interpolation_is_right).
    # (rosenbrock23 is second order: at rtol 1e-6 its two gradients agree to ~2e-4)
    close = 1e-4 if method == "kvaerno5" else 1e-3
    torch.testing.assert_close(grad_t(Adjoint(params=(w,))), grad_t("direct"), rtol=close, atol=close * 1e-2)


def test_direct_time_gradients_through_implicit_solves_match_finite_differences():
    w = torch.tensor([1.0, -0.7], dtype=torch.float64)
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    t = torch.tensor([0.013, 0.12, 0.27], dtype=torch.float64, requires_grad=True)

    def loss(t):
        ys = odeint(lambda tt, y: stiff_field(tt, y, w), y0, t, method="kvaerno5", rtol=1e-10, atol=1e-10)
        return ys[-1].sum() + ys[1].sum()

    (got,) = torch.autograd.grad(loss(t), t)
    eye = torch.eye(3, dtype=torch.float64) * 1e-6
    fd = torch.stack([(loss(t.detach() + e) - loss(t.detach() - e)) / 2e-6 for e in eye])
    torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-5)


class StiffNeuralField(torch.nn.Module):
    """``dy/dt = -R (y - net(y))`` with rates R = 1, 10, 100, 1000: a neural field with fast modes."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin1 = torch.nn.Linear(4, 16).double()
        self.lin2 = torch.nn.Linear(16, 4).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4)
        self.register_buffer("rates", torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64))

    def forward(self, t, y):
        return -self.rates * (y - self.lin2(torch.tanh(self.lin1(y))))


def _field_gradients(method, gradient, rtol):
    field = StiffNeuralField()
    y0 = torch.tensor([[1.0, -0.5, 0.3, 0.8], [0.2, 0.1, -0.4, 0.5]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sol = solve(field, y0, t, method=method, rtol=rtol, atol=rtol, gradient=gradient)
    (sol.ys ** 2).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in field.parameters()] + [y0.grad.reshape(-1)]), sol.stats


@pytest.mark.parametrize("gradient", ("adjoint", "adjoint-seminorm"))
def test_adjoint_agrees_with_direct_on_a_stiff_neural_field(gradient):
    # Measured: relative difference 1.3e-7 at rtol 1e-7 (2.4e-6 at 1e-5, 5e-9 at 1e-9).
    direct, _ = _field_gradients("kvaerno5", "direct", 1e-7)
    adjoint, stats = _field_gradients("kvaerno5", gradient, 1e-7)
    assert stats.nfe_backward > 0
    assert float((adjoint - direct).norm() / direct.norm()) < 2e-6


def test_a_stiff_interpolating_adjoint_solve_reports_its_backward_newton_work():
    field = StiffModule()
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    sol = solve(field, y0, T, method="kvaerno5", rtol=1e-6, atol=1e-6, gradient=Adjoint(interpolate=True))
    forward = dict(sol.stats.as_dict())
    assert forward["n_newton_iters"] > 0 and forward["n_newton_iters_backward"] == 0
    sol.ys.sum().backward()
    s = sol.stats
    backward_steps = s.n_accepted_backward + s.n_rejected_backward
    assert backward_steps > 0
    # every backward step solves its implicit stages by Newton's method: at least one iteration per step
    assert s.n_newton_iters_backward >= backward_steps
    assert 1 <= s.n_jacobians_backward <= s.n_factorizations_backward <= s.n_newton_iters_backward
    assert {k: v for k, v in s.as_dict().items() if "backward" not in k} == \
        {k: v for k, v in forward.items() if "backward" not in k}  # the forward counts are left alone


@pytest.mark.slow
def test_backsolve_is_wrong_on_a_stiff_field_where_interpolation_is_right():
    # Backsolve integrates y backwards, where the field's fast decaying modes grow as fast: with
    # dopri5 the gradients come out wrong by O(1) (measured: relative error 0.9 at rtol 1e-5); the
    # interpolating adjoint with the same explicit method agrees with direct to the tolerance
    # (measured 7e-4 at rtol 1e-5, where dopri5's direct gradient itself is off by 1e-5).
    direct, _ = _field_gradients("dopri5", "direct", 1e-5)
    interpolated, _ = _field_gradients("dopri5", Adjoint(interpolate=True), 1e-5)
    backsolved, _ = _field_gradients("dopri5", Adjoint(interpolate=False), 1e-5)
    assert float((interpolated - direct).norm() / direct.norm()) < 3e-3
    assert float((backsolved - direct).norm() / direct.norm()) > 0.1


@pytest.mark.slow
def test_adjoint_succeeds_on_robertson_to_1e5_and_matches_direct():
    # The back-solved adjoint underflowed its step size at t = 1e5 here; the interpolating one
    # runs kvaerno5 on the (linear, equally stiff) adjoint system.
    from neuralode.stiff_problems import robertson

    class Kinetics(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log10_k = torch.nn.Parameter(torch.log10(torch.tensor([0.04, 3e7, 1e4], dtype=torch.float64)))

        def forward(self, t, y):
            return robertson(t, y, (10.0 ** self.log10_k).unbind())

    t = torch.tensor([0.0, 1e-3, 1.0, 1e2, 1e5], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 1e-5, 1.0], dtype=torch.float64)  # species 2 stays below 4e-5
    grads = {}
    for gradient in ("direct", "adjoint"):
        model = Kinetics()
        sol = solve(model, y0, t, method="kvaerno5", rtol=1e-6, atol=1e-10, gradient=gradient)
        (sol.ys / scale).sum().backward()
        grads[gradient] = model.log10_k.grad
    torch.testing.assert_close(grads["adjoint"], grads["direct"], rtol=1e-4, atol=1e-6)
