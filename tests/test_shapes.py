"""Shapes, dtypes, tuple states, time direction and gradients through the public entry.

The contract (torchdiffeq's): ``odeint(func, y0, t)`` returns ``(len(t), *y0.shape)`` in
y0's dtype, ``t[0]`` first, a tuple of such for a tuple ``y0``; ``t`` may decrease; a single
output time returns ``y0``; autograd reaches y0, t and the parameters of func.
"""

from __future__ import annotations

import pytest
import torch

import neuralode
from problems import exponential_decay, harmonic_oscillator, linear_system

FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4")
ADAPTIVE = ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
ALL_METHODS = FIXED + ADAPTIVE


def decay(t, y):
    return -0.5 * y


def _options(method):
    # Fixed-step methods get a step size so the grid is not just t.
    return {"step_size": 1 / 64} if method in FIXED else None


@pytest.mark.parametrize("shape", [(), (3,), (4, 3), (2, 3, 5)], ids=["rank0", "rank1", "rank2", "rank3"])
@pytest.mark.parametrize("method", ["rk4", "dopri5", "tsit5"])
def test_states_of_any_rank_keep_their_shape_and_are_solved_elementwise(shape, method, float_dtype):
    y0 = torch.rand(shape, dtype=float_dtype) + 0.5
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=float_dtype)  # on the fixed grid (h = 1/64)
    ys = neuralode.odeint(decay, y0, t, method=method, options=_options(method))
    assert ys.shape == (4, *shape)
    assert ys.dtype == float_dtype
    exact = y0.unsqueeze(0) * torch.exp(-0.5 * t).reshape(-1, *([1] * len(shape)))
    tol = 1e-4 if float_dtype == torch.float32 else 1e-6
    torch.testing.assert_close(ys, exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_output_is_time_major_in_the_dtype_of_y0_for_every_method(method, float_dtype):
    y0 = torch.ones(2, 3, dtype=float_dtype)
    t = torch.tensor([0.0, 0.25, 0.5], dtype=float_dtype)
    ys = neuralode.odeint(decay, y0, t, method=method, options=_options(method), rtol=1e-4, atol=1e-6)
    assert ys.shape == (3, 2, 3)
    assert ys.dtype == float_dtype
    assert torch.equal(ys[0], y0), "the first output must be y0 itself"


def test_batched_linear_system_matches_unbatched_solves():
    problem = linear_system()
    y0 = torch.randn(5, 3, dtype=torch.float64)
    t = problem.times(3)
    batched = neuralode.odeint(problem.func, y0, t, rtol=1e-9, atol=1e-11)
    for i in range(5):
        single = neuralode.odeint(problem.func, y0[i], t, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(batched[:, i], single, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["euler", "rk4", "bosh3", "dopri5", "tsit5"])
def test_tuple_state_returns_a_tuple_of_trajectories(method):
    # x' = v, v' = -4x as two tensors of different shapes and dtypes-compatible ranks.
    def func(t, state):
        x, v = state
        return v, -4.0 * x

    x0 = torch.ones(3, dtype=torch.float64)
    v0 = torch.zeros(3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    opts = {"step_size": 1e-3} if method in FIXED else None
    out = neuralode.odeint(func, (x0, v0), t, method=method, rtol=1e-8, atol=1e-10, options=opts)
    assert isinstance(out, tuple) and len(out) == 2
    xs, vs = out
    assert xs.shape == (5, 3) and vs.shape == (5, 3)
    tol = {"euler": 1e-2}.get(method, 1e-5)
    torch.testing.assert_close(xs, torch.cos(2 * t)[:, None].expand(5, 3), rtol=tol, atol=tol)
    torch.testing.assert_close(vs, (-2 * torch.sin(2 * t))[:, None].expand(5, 3), rtol=tol, atol=tol)


def test_tuple_state_with_different_shapes():
    def func(t, state):
        a, b = state
        return -a, b.sum() * torch.ones_like(b) * 0.0 + a.mean()

    a0 = torch.ones(2, 2, dtype=torch.float64)
    b0 = torch.zeros(3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a, b = neuralode.odeint(func, (a0, b0), t, rtol=1e-9, atol=1e-11)
    assert a.shape == (2, 2, 2) and b.shape == (2, 3)
    # b' = mean(a) = exp(-t)  =>  b(1) = 1 - exp(-1)
    torch.testing.assert_close(b[-1], torch.full((3,), 1 - torch.exp(torch.tensor(-1.0)).item(), dtype=torch.float64))


def test_solve_returns_tuple_ys_for_tuple_state():
    def func(t, state):
        return tuple(-s for s in state)

    y0 = (torch.ones(2), torch.ones(1, 3))
    sol = neuralode.solve(func, y0, torch.tensor([0.0, 1.0]))
    assert isinstance(sol.ys, tuple)
    assert [y.shape for y in sol.ys] == [(2, 2), (2, 1, 3)]


@pytest.mark.parametrize("method", ["euler", "rk4", "adaptive_heun", "bosh3", "dopri5", "tsit5", "dopri8"])
def test_decreasing_times_integrate_backward(method, float_dtype):
    problem = harmonic_oscillator()
    t = torch.linspace(2.0, 0.0, 5, dtype=float_dtype)  # t[0] = 2 first
    y_start = problem.exact(torch.tensor([2.0]))[0].to(float_dtype)
    opts = {"step_size": 1e-3} if method in FIXED else None
    ys = neuralode.odeint(problem.func, y_start, t, method=method, options=opts, rtol=1e-7, atol=1e-9)
    assert ys.shape == (5, 2)
    torch.testing.assert_close(ys[0], y_start)
    exact = problem.exact(t.double()).to(float_dtype)
    # Loose on purpose: this checks the direction of time, not the accuracy (test_oracle.py does).
    tol = 2e-2 if method == "euler" else 1e-3
    torch.testing.assert_close(ys, exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_single_output_time_returns_y0(method):
    y0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    ys = neuralode.odeint(func, y0, torch.tensor([0.3], dtype=torch.float64), method=method)
    assert ys.shape == (1, 1, 2)
    assert torch.equal(ys[0], y0)


def test_output_at_the_initial_time_only_with_tuple_state():
    y0 = (torch.ones(2), torch.zeros(3))
    out = neuralode.odeint(lambda t, y: (-y[0], y[1]), y0, torch.tensor([1.0]))
    assert isinstance(out, tuple)
    assert torch.equal(out[0][0], y0[0]) and torch.equal(out[1][0], y0[1])


@pytest.mark.parametrize("method", ["rk4", "dopri5", "tsit5", "dopri8"])
def test_gradient_flows_to_end_time_and_initial_state(method):
    # y' = -k y: y(t1) = y0 exp(-k (t1 - t0)); d/dt1 = -k y(t1); d/dt0 = k y(t1); d/dy0 = exp(-k (t1-t0)).
    k = 0.8
    t = torch.tensor([0.2, 1.1], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    opts = {"step_size": 0.9 / 200} if method == "rk4" else None
    ys = neuralode.odeint(lambda s, y: -k * y, y0, t, method=method, options=opts, rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    y1 = 1.5 * torch.exp(torch.tensor(-k * 0.9, dtype=torch.float64))
    assert t.grad is not None, "no gradient reached t"
    # d/dt1 goes through the dense output's time derivative, hence the looser tolerance.
    torch.testing.assert_close(t.grad, torch.stack([k * y1, -k * y1]), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(y0.grad, (y1 / 1.5).reshape(1), rtol=1e-7, atol=1e-9)


def test_gradient_flows_to_module_parameters(float_dtype):
    field = torch.nn.Linear(2, 2, dtype=float_dtype)
    y0 = torch.randn(4, 2, dtype=float_dtype)
    ys = neuralode.odeint(lambda t, y: torch.tanh(field(y)), y0, torch.tensor([0.0, 0.5], dtype=float_dtype), rtol=1e-5, atol=1e-6)
    ys[-1].square().sum().backward()
    assert field.weight.grad is not None and field.bias.grad is not None
    assert field.weight.grad.dtype == float_dtype
    assert torch.isfinite(field.weight.grad).all() and field.weight.grad.abs().sum() > 0


def test_gradient_matches_finite_differences_through_an_adaptive_solve():
    problem = exponential_decay()
    y0 = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.4], dtype=torch.float64)

    def f(y0_):
        return neuralode.odeint(problem.func, y0_, t, method="dopri5", rtol=1e-10, atol=1e-12)[1:].sum()

    assert torch.autograd.gradcheck(f, (y0,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_float32_inputs_use_float32_throughout(method):
    seen = set()

    def func(t, y):
        seen.add(y.dtype)
        return -y

    y0 = torch.ones(3, dtype=torch.float32)
    ys = neuralode.odeint(func, y0, torch.tensor([0.0, 1.0]), method=method)
    assert ys.dtype == torch.float32
    assert seen == {torch.float32}
