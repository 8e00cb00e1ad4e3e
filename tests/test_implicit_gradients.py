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


def test_rosenbrock23_adjoint_asks_for_a_newton_based_backward_method():
    w = torch.tensor([1.0, -0.7], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    ys = odeint_adjoint(lambda t, y: stiff_field(t, y, w), y0, T[:2], method="rosenbrock23", adjoint_params=(w,))
    with pytest.raises(ValueError, match="adjoint_method='kvaerno5'"):
        ys.sum().backward()
