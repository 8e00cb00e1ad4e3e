"""Gradients through implicit solves: gradcheck of direct backprop and of the adjoint (whose
backward solve runs the same implicit method on the adjoint system), and adjoint against
direct on a stiff neural field.

Direct backprop follows the Newton iterates with the Jacobian held constant (the derivative of
the stage equations to the Newton tolerance); Rosenbrock23's matrix is built from a
differentiable Jacobian, since ``J`` is part of that method. Adaptive step-size decisions are
piecewise constant in the inputs, hence the wider finite-difference ``eps`` (as in
``test_gradcheck.py``).
"""
from __future__ import annotations

import pytest
import torch

import neuralode
from neuralode import odeint, odeint_adjoint

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


@pytest.mark.parametrize("method", ("kvaerno3", "kvaerno5", "rosenbrock23", "radauIIA5", "sdirk2"))
def test_gradcheck_direct_through_an_implicit_solve(method):
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    fixed = method in ("radauIIA5", "sdirk2")
    options = {"step_size": 0.05} if fixed else None

    def run(y0, w):
        return odeint(lambda t, y: stiff_field(t, y, w), y0, T, method=method, options=options, **_tols(method))

    assert torch.autograd.gradcheck(run, (y0, w), eps=1e-6 if fixed else EPS, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("method", ("kvaerno5", "rosenbrock23"))
def test_gradcheck_adjoint_runs_the_implicit_method_backward(method):
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)

    def run(y0, w):
        return odeint_adjoint(lambda t, y: stiff_field(t, y, w), y0, T, method=method, adjoint_params=(w,),
                              **_tols(method))

    assert torch.autograd.gradcheck(run, (y0, w), eps=EPS, atol=1e-4, rtol=1e-3)


class StiffNeuralField(torch.nn.Module):
    """An MLP plus a fast linear decay: stiff (rates up to ~300) and per-sample independent."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
        self.rates = torch.tensor([1.0, 30.0, 300.0], dtype=torch.float64)

    def forward(self, t, y):
        return self.net(y) - self.rates * y


@pytest.mark.parametrize("gradient", ("adjoint", "adjoint-seminorm"))
def test_adjoint_agrees_with_direct_on_a_stiff_neural_field(gradient):
    field = StiffNeuralField()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    target = torch.randn(4, 4, 3, dtype=torch.float64)

    def grads(mode):
        field.zero_grad()
        y = y0.clone().requires_grad_(True)
        sol = neuralode.solve(field, y, t, method="kvaerno5", rtol=1e-8, atol=1e-8, gradient=mode)
        ((sol.ys - target) ** 2).sum().backward()
        return [y.grad] + [p.grad.clone() for p in field.parameters()], sol.stats

    direct, _ = grads("direct")
    adjoint, stats = grads(gradient)
    assert stats.nfe_backward > 0
    for a, d in zip(adjoint, direct):
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-6)
