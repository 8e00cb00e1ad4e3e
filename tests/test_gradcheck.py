"""``torch.autograd.gradcheck`` of odeint and odeint_adjoint w.r.t. y0, t and parameters, every method.

What each check proves:

* ``odeint`` (direct backprop) differentiates the discretised solve itself, so it must pass
  gradcheck at its default tolerances for every method. Fixed-step methods use a
  ``step_size`` grid with the output times between grid nodes: the piecewise interpolant has
  kinks at the nodes, where the finite differences would be meaningless.
* ``odeint_adjoint`` computes the gradient of the *exact* flow, to the backward tolerance.
  For adaptive methods at rtol=atol=1e-10 that equals the discrete gradient to ~1e-8 and must
  pass at gradcheck's default tolerances. For fixed-step methods the continuous adjoint
  differs from the discrete gradient by O(h^p) (p = the method's order), so the check is run
  at the documented tolerance ``C h^p`` — and a separate test shows that this difference
  shrinks at the method's order when h is halved, which is what makes the comparison
  meaningful rather than merely loose.
"""
from __future__ import annotations

import pytest
import torch

import neuralode
from neuralode import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, odeint, odeint_adjoint

TIGHT = dict(rtol=1e-10, atol=1e-10)


# Adaptive step-size decisions are piecewise-constant functions of the inputs: a decision that
# flips inside a finite difference changes the result by about the tolerance, which a difference
# of width eps amplifies by 1/eps. A wider eps (1e-4; truncation error ~eps^2) keeps that noise
# below gradcheck's atol at these tolerances.
ADAPTIVE_EPS = 1e-4


def tight(method):
    """Tolerances and output times: rtol=atol=1e-10, looser and a shorter span for the low-order
    pairs (which would need ~10^4 steps at 1e-10)."""
    order = METHODS[method].order
    if order >= 4:
        return TIGHT, (0.0, 0.33, 0.71)
    if order == 3:
        return dict(rtol=1e-8, atol=1e-8), (0.0, 0.33, 0.71)
    if method == "adaptive_heun":  # its error estimate is first order: steps grow as tol^(-1/2)
        return dict(rtol=1e-6, atol=1e-6), (0.0, 0.1, 0.23)
    return dict(rtol=1e-8, atol=1e-8), (0.0, 0.1, 0.23)


def field(t, y, w):
    """A small nonlinear, time-dependent field with parameters ``w`` (4 numbers)."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([w[0] * v + 0.1 * torch.sin(t), -w[1] * x - w[2] * v + w[3] * torch.tanh(x) * t], dim=-1)


def inputs(times=(0.0, 0.33, 0.71)):
    y0 = torch.tensor([0.8, -0.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor(times, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 1.3, 0.2, 0.5], dtype=torch.float64, requires_grad=True)
    return y0, t, w


def fixed_options(method, h=0.05):
    return dict(step_size=h)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_odeint(method):
    if method in ADAPTIVE_METHODS:
        kwargs, times = tight(method)
        eps = ADAPTIVE_EPS
    else:
        kwargs, times, eps = dict(options=fixed_options(method)), (0.0, 0.33, 0.71), 1e-6
    y0, t, w = inputs(times)

    def fn(y0, t, w):
        return odeint(lambda tt, y: field(tt, y, w), y0, t, method=method, **kwargs)

    assert torch.autograd.gradcheck(fn, (y0, t, w), eps=eps)


@pytest.mark.parametrize("method", list(ADAPTIVE_METHODS))
def test_gradcheck_odeint_adjoint_adaptive(method):
    tolerances, times = tight(method)
    y0, t, w = inputs(times)

    def fn(y0, t, w):
        return odeint_adjoint(lambda tt, y: field(tt, y, w), y0, t, method=method, adjoint_params=(w,),
                              **tolerances)

    assert torch.autograd.gradcheck(fn, (y0, t, w), eps=ADAPTIVE_EPS)


# Documented tolerance of the continuous adjoint against the discrete forward solve with a
# fixed step h: C·h^p with C = 2 on this problem (the measured constants are 0.08 to 0.94).
# Output times between grid nodes use the cubic Hermite interpolant: the default linear one
# is second-order accurate, so with it the discrete gradient of heun3/rk4 is only O(h^2)
# close to the exact one (and the t-gradient, the chord's slope, only O(h)).
FIXED_H = {"euler": 0.005, "midpoint": 0.02, "heun2": 0.02, "heun3": 0.05, "rk4": 0.05}


@pytest.mark.parametrize("method", list(FIXED_METHODS))
def test_gradcheck_odeint_adjoint_fixed(method):
    y0, t, w = inputs()
    h = FIXED_H.get(method, 0.01)
    tol = 2.0 * h ** METHODS[method].order

    def fn(y0, t, w):
        return odeint_adjoint(lambda tt, y: field(tt, y, w), y0, t, method=method,
                              options=dict(step_size=h, interp="cubic"), adjoint_params=(w,))

    assert torch.autograd.gradcheck(fn, (y0, t, w), atol=tol, rtol=0.0)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_adjoint_converges_to_the_discrete_gradient_at_the_method_order(method):
    """|adjoint grad - direct grad| (w.r.t. y0 and the parameters) falls by ~2^p when h is halved.

    Output times on grid nodes for every h, so that only the stepping differs."""
    order = METHODS[method].order
    errors = []
    for h in (0.04, 0.02, 0.01):
        grads = []
        for fn in (odeint, odeint_adjoint):
            y0, t, w = inputs((0.0, 0.32, 0.64))
            extra = dict(adjoint_params=(w,)) if fn is odeint_adjoint else {}
            ys = fn(lambda tt, y: field(tt, y, w), y0, t.detach(), method=method, options=dict(step_size=h), **extra)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(ys.pow(2).sum(), (y0, w))]))
        errors.append(float((grads[0] - grads[1]).abs().max()))
    rates = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(2 ** order * 0.7 < r < 2 ** order * 1.4 for r in rates), (errors, rates)


def test_gradcheck_odeint_adjoint_tuple_state_and_decreasing_time():
    y0, t, w = inputs((0.7, 0.4, -0.1))
    z0 = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)

    def fn(y0, z0, t, w):
        def f(tt, state):
            y, z = state
            return field(tt, y, w), -w[0] * z * y[..., :1]
        ys, zs = odeint_adjoint(f, (y0, z0), t, adjoint_params=(w,), **TIGHT)
        return ys, zs

    assert torch.autograd.gradcheck(fn, (y0, z0, t, w), eps=ADAPTIVE_EPS)


def test_gradcheck_checkpoint_strategy():
    y0, t, w = inputs()

    class Field(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, tt, y):
            return field(tt, y, self.w)

    def fn(y0, t, w):
        return neuralode.solve(Field(w), y0, t, gradient=neuralode.adjoint.Checkpoint(params=(w,)), rtol=1e-6,
                               atol=1e-6).ys

    assert torch.autograd.gradcheck(fn, (y0, t, w), eps=ADAPTIVE_EPS)
