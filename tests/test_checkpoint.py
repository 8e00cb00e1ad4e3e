"""Checkpointed backprop replays the solver's own steps: its gradients are direct backprop's, to
round-off, for every kind of step the loop can take."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from neuralode import ADAPTIVE_METHODS, FIXED_METHODS, solve
from neuralode.adjoint import Checkpoint


class Field(nn.Module):
    """Nonlinear, time-dependent, with parameters."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[-0.2, 1.1], [-0.9, -0.3]], dtype=dtype))
        self.b = nn.Parameter(torch.tensor([0.1, -0.2], dtype=dtype))

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T) + self.b * torch.sin(3 * t)


class TupleField(Field):
    def forward(self, t, state):
        x, z = state
        dx = super().forward(t, x)
        return dx, -(dx * dx).sum(-1, keepdim=True)


def grads(gradient, method, t, *, y0=None, func=None, t_grad=True, **kwargs):
    func = func or Field()
    y0 = torch.tensor([[0.5, -0.4], [1.0, 0.3]], dtype=torch.float64) if y0 is None else y0
    y0 = tuple(y.clone().requires_grad_(True) for y in y0) if isinstance(y0, tuple) else y0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(t_grad)
    sol = solve(func, y0, t, method=method, gradient=gradient, **kwargs)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    loss = sum((y.pow(2) * torch.arange(1, y.numel() + 1, dtype=y.dtype).view_as(y)).sum() for y in ys)
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), *func.parameters()] + ([t] if t_grad else [])
    return torch.autograd.grad(loss, inputs), sol


def assert_round_off(got, expected):
    # 1e-9 rather than 1e-15: the derivative of a high-degree dense-output polynomial w.r.t. an
    # output time amplifies round-off (perturbing y0 by 1e-15 moves dopri8's dL/dt by 2e-10).
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


T = torch.tensor([0.0, 0.37, 0.8, 1.3], dtype=torch.float64)


@pytest.mark.parametrize("t_grad", [True, False], ids=["t-grad", "no-t-grad"])
@pytest.mark.parametrize("method", list(ADAPTIVE_METHODS))
def test_adaptive_methods_equal_direct_backprop(method, t_grad):
    expected, sol_d = grads("direct", method, T, t_grad=t_grad, rtol=1e-6, atol=1e-6)
    got, sol_c = grads("checkpoint", method, T, t_grad=t_grad, rtol=1e-6, atol=1e-6)
    assert_round_off(got, expected)
    assert sol_c.stats.n_accepted_backward == sol_c.stats.n_accepted == sol_d.stats.n_accepted


@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("method", list(FIXED_METHODS))
def test_fixed_methods_equal_direct_backprop(method, interp):
    options = dict(step_size=0.1, interp=interp)
    expected, _ = grads("direct", method, T, options=options)
    got, sol = grads("checkpoint", method, T, options=options)
    assert_round_off(got, expected)
    assert sol.stats.n_accepted_backward == sol.stats.n_accepted == 13


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_decreasing_time_and_tuple_state(method):
    t = torch.tensor([1.0, 0.6, -0.2], dtype=torch.float64)
    y0 = (torch.tensor([[0.5, -0.4]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    kwargs = dict(options=dict(step_size=0.07)) if method == "rk4" else dict(rtol=1e-7, atol=1e-7)
    expected, _ = grads("direct", method, t, y0=y0, func=TupleField(), **kwargs)
    got, _ = grads("checkpoint", method, t, y0=y0, func=TupleField(), **kwargs)
    assert_round_off(got, expected)


def test_output_times_on_a_grid_of_output_times():
    """The default fixed grid is t itself: every output is a step's end."""
    expected, _ = grads("direct", "midpoint", T)
    got, _ = grads("checkpoint", "midpoint", T)
    assert_round_off(got, expected)


def test_perturb_and_grid_constructor():
    def grid(func, y0, t):
        return torch.cat([t[:1] + torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=t.dtype), t[-1:]])

    for options in (dict(step_size=0.1, perturb=True), dict(grid_constructor=grid)):
        expected, _ = grads("direct", "heun3", T, options=options)
        got, _ = grads("checkpoint", "heun3", T, options=options)
        assert_round_off(got, expected)


@pytest.mark.parametrize("method", ["dopri5", "adaptive_heun"])
def test_jump_and_step_times(method):
    options = dict(jump_t=[0.5], step_t=[0.9, 0.37])
    expected, _ = grads("direct", method, T, options=options, rtol=1e-6, atol=1e-6)
    got, _ = grads("checkpoint", method, T, options=options, rtol=1e-6, atol=1e-6)
    assert_round_off(got, expected)


def test_float32():
    """Without time gradients both run the same float-time loop: equal to float32 round-off.

    (With time gradients direct backprop runs the loop on graph-carrying time tensors, whose
    round-off can flip an accept/reject decision in float32: the two would then differentiate
    two different, equally valid discretisations.)"""
    func = Field(torch.float32)
    y0 = torch.tensor([[0.5, -0.4]], dtype=torch.float32)
    t = T.float()
    expected, _ = grads("direct", "dopri5", t, y0=y0, func=func, t_grad=False, rtol=1e-5, atol=1e-5)
    got, _ = grads("checkpoint", "dopri5", t, y0=y0, func=func, t_grad=False, rtol=1e-5, atol=1e-5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_the_forward_pass_keeps_no_graph():
    """What the forward pass saves: the state at each accepted step's start, no autograd graph."""
    from neuralode.problem import make_problem

    saved = []
    func = Field()
    y0 = torch.tensor([[0.5, -0.4]], dtype=torch.float64, requires_grad=True)
    problem = make_problem(func, y0, T, method="dopri5", rtol=1e-6, atol=1e-6, options=None)
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        sol = Checkpoint().solve(problem)
    assert saved == []
    sol.ys.sum().backward()
    assert func.W.grad is not None and y0.grad is not None


def test_loss_on_some_outputs_only_and_explicit_params():
    w = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    results = []
    for gradient in ("direct", Checkpoint(params=[w])):
        sol = solve(lambda t, y: -w * y * torch.cos(t), y0, T, gradient=gradient, rtol=1e-8, atol=1e-8)
        results.append(torch.autograd.grad(sol.ys[1].sum(), w))
    assert_round_off(results[1], results[0])
