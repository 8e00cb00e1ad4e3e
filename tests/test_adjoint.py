"""The adjoint gradient strategies and odeint_adjoint: agreement with direct backprop, the
seminorm, parameters/buffers/callbacks, statistics and errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import neuralode
from neuralode import SolverError, odeint, odeint_adjoint, solve
from neuralode.adjoint import SHORTHANDS, Adjoint, Checkpoint
from neuralode.gradient import resolve_gradient

TIGHT = dict(rtol=1e-10, atol=1e-10)
MODES = ["adjoint", "adjoint-seminorm", "checkpoint"]


# --------------------------------------------------------------------------- problems

class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.3, 1.2, 0.0], [-1.2, -0.3, 0.4], [0.0, -0.4, -0.7]],
                                           dtype=torch.float64))

    def forward(self, t, y):
        return y @ self.A.T


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, t, y):
        return self.net(y)


class TupleField(nn.Module):
    """(x, z): x' = W x, z' = -|x|^2 w (a CNF-like running integral)."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[-0.2, 1.0], [-1.0, -0.1]], dtype=torch.float64))
        self.w = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, t, state):
        x, z = state
        return x @ self.W.T, -self.w * (x * x).sum(-1, keepdim=True)


class TimeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[0.1, 0.9], [-0.8, -0.2]], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T) * torch.cos(2 * t) + self.b * t


def make(name):
    torch.manual_seed(1)
    if name == "linear":
        return Linear(), torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    if name == "mlp":
        return MLP(), torch.randn(5, 2, dtype=torch.float64)
    if name == "tuple":
        return TupleField(), (torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    return TimeDependent(), torch.randn(3, 2, dtype=torch.float64)


PROBLEMS = ["linear", "mlp", "tuple", "time"]


def leaves(y0):
    if isinstance(y0, tuple):
        return tuple(y.clone().requires_grad_(True) for y in y0)
    return y0.clone().requires_grad_(True)


def gradients(func, y0, t, gradient, **kwargs):
    """Gradients of a loss using every output time w.r.t. (y0..., t, params...)."""
    y0 = leaves(y0)
    t = t.clone().requires_grad_(True)
    sol = solve(func, y0, t, gradient=gradient, **kwargs)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    weights = torch.linspace(0.5, 1.5, len(t), dtype=torch.float64)
    loss = sum((w * (y ** 2).reshape(len(t), -1).sum(1)).sum() + y[-1].sum() for y, w in zip(ys, [weights] * len(ys)))
    inputs = (*(y0 if isinstance(y0, tuple) else (y0,)), t, *func.parameters())
    return torch.autograd.grad(loss, inputs), sol


# --------------------------------------------------------------------------- agreement with direct

@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("mode", MODES)
def test_gradients_agree_with_direct_backprop(mode, name):
    func, y0 = make(name)
    t = torch.tensor([0.0, 0.4, 0.9, 1.5], dtype=torch.float64)
    expected, _ = gradients(func, y0, t, "direct", **TIGHT)
    got, sol = gradients(func, y0, t, mode, **TIGHT)
    n_y = len(y0) if isinstance(y0, tuple) else 1
    for i, (g, e) in enumerate(zip(got, expected)):
        # dL/dt_i at a time between steps: direct backprop differentiates the dense-output
        # polynomial, whose derivative is a few orders less accurate than its value.
        tol = dict(rtol=1e-5, atol=1e-6) if i == n_y else dict(rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(g, e, **tol, msg=lambda m: f"input {i}: {m}")
    assert sol.stats.nfe_backward > 0


@pytest.mark.parametrize("mode", MODES)
def test_decreasing_time_agrees_with_direct(mode):
    func, y0 = make("time")
    t = torch.tensor([1.2, 0.7, -0.3], dtype=torch.float64)
    expected, _ = gradients(func, y0, t, "direct", **TIGHT)
    got, _ = gradients(func, y0, t, mode, **TIGHT)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_loss_on_an_intermediate_time_only():
    """Later outputs get zero gradient: the adjoint is zero there and those segments are skipped."""
    func, y0 = make("mlp")
    t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    grads = []
    for mode in ("direct", "adjoint"):
        p0 = y0.clone().requires_grad_(True)
        sol = solve(func, p0, t, gradient=mode, **TIGHT)
        grads.append(torch.autograd.grad(sol.ys[1].sum(), (p0, *func.parameters())))
    for g, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)


def test_odeint_adjoint_matches_odeint_gradients():
    func, y0 = make("mlp")
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64, requires_grad=True)
    p0 = y0.clone().requires_grad_(True)
    out_d = odeint(func, p0, t, **TIGHT)
    g_d = torch.autograd.grad(out_d.pow(2).sum(), (p0, t, *func.parameters()))
    out_a = odeint_adjoint(func, p0, t, **TIGHT)
    torch.testing.assert_close(out_a, out_d.detach(), rtol=1e-9, atol=1e-9)
    g_a = torch.autograd.grad(out_a.pow(2).sum(), (p0, t, *func.parameters()))
    for g, e in zip(g_a, g_d):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_adjoint_with_a_fixed_step_method_and_another_backward_method():
    func, y0 = make("linear")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    p0 = y0.clone().requires_grad_(True)
    exact = odeint(func, p0, t, **TIGHT)
    g_exact = torch.autograd.grad(exact[-1].sum(), (p0, func.A))
    out = odeint_adjoint(func, p0, t, method="rk4", options=dict(step_size=0.01), adjoint_method="dopri5",
                         adjoint_options={}, adjoint_rtol=1e-10, adjoint_atol=1e-10)
    g = torch.autograd.grad(out[-1].sum(), (p0, func.A))
    for a, b in zip(g, g_exact):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- seminorm

def test_seminorm_uses_no_more_backward_evaluations_than_the_plain_adjoint():
    func, y0 = make("mlp")
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    nfe = {}
    grads = {}
    for mode in ("adjoint", "adjoint-seminorm"):
        got, sol = gradients(func, y0, t, mode, rtol=1e-8, atol=1e-8)
        nfe[mode] = sol.stats.nfe_backward
        grads[mode] = got
    assert nfe["adjoint-seminorm"] <= nfe["adjoint"]
    for g, e in zip(grads["adjoint-seminorm"], grads["adjoint"]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


def test_odeint_adjoint_seminorm_option_is_the_seminorm_strategy():
    func, y0 = make("mlp")
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    counts = {}
    for key, opts in (("plain", None), ("semi", dict(norm="seminorm"))):
        calls = []
        func.callback_step_adjoint = lambda t0, y, dt: calls.append(float(dt))
        out = odeint_adjoint(func, y0, t, rtol=1e-8, atol=1e-8, adjoint_options=opts)
        out[-1].sum().backward()
        counts[key] = len(calls)
    del func.callback_step_adjoint
    _, sol = gradients(func, y0, t, Adjoint(seminorm=True), rtol=1e-8, atol=1e-8)
    assert counts["semi"] < counts["plain"]
    assert counts["semi"] == sol.stats.n_accepted_backward + sol.stats.n_rejected_backward


def test_a_custom_adjoint_norm_receives_torchdiffeqs_tuple():
    func, y0 = make("linear")
    seen = []

    def norm(parts):
        seen.append(tuple(p.shape for p in parts))
        return max(float(p.abs().max()) for p in parts)

    out = odeint_adjoint(func, y0.requires_grad_(True), torch.tensor([0.0, 1.0], dtype=torch.float64),
                         adjoint_options=dict(norm=norm))
    out[-1].sum().backward()
    assert seen and seen[0] == ((), (3,), (3,), (3, 3))


# --------------------------------------------------------------------------- parameters

def test_parameters_that_do_not_require_grad_and_buffers():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64))
            self.frozen = nn.Parameter(torch.tensor([0.1, 0.2], dtype=torch.float64), requires_grad=False)
            self.register_buffer("scale", torch.tensor(0.9, dtype=torch.float64))

        def forward(self, t, y):
            return self.scale * (y @ self.W.T) + self.frozen

    func = Frozen()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out_d = odeint(func, y0, t, **TIGHT)
    (g_d,) = torch.autograd.grad(out_d[-1].sum(), func.W)
    out = odeint_adjoint(func, y0, t, **TIGHT)
    out[-1].sum().backward()
    torch.testing.assert_close(func.W.grad, g_d, rtol=1e-7, atol=1e-9)
    assert func.frozen.grad is None


def test_function_without_parameters_with_empty_adjoint_params():
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)

    def f(tt, y):
        return -y * torch.sin(tt)

    g_d = torch.autograd.grad(odeint(f, y0, t, **TIGHT).sum(), (y0, t))
    g_a = torch.autograd.grad(odeint_adjoint(f, y0, t, adjoint_params=(), **TIGHT).sum(), (y0, t))
    torch.testing.assert_close(g_a[0], g_d[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g_a[1], g_d[1], rtol=1e-6, atol=1e-7)  # dL/dt_0 = 0 exactly here


def test_explicit_params_for_a_closure():
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = solve(lambda tt, y: -w * y, y0, t, gradient=Adjoint(params=[w]), **TIGHT)
    (g,) = torch.autograd.grad(sol.ys[-1].sum(), w)
    torch.testing.assert_close(g, torch.tensor(-math.exp(-0.7), dtype=torch.float64), rtol=1e-7, atol=1e-9)


def test_odeint_adjoint_needs_a_module_or_adjoint_params():
    y0 = torch.tensor([1.0])
    with pytest.raises(ValueError, match="nn.Module.*adjoint_params"):
        odeint_adjoint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="not an nn.Module"):
        solve(lambda t, y: -y, y0.requires_grad_(True), torch.tensor([0.0, 1.0]), gradient="adjoint")


def test_adjoint_method_without_adjoint_options_is_rejected():
    func, y0 = make("linear")
    with pytest.raises(ValueError, match="adjoint_options"):
        odeint_adjoint(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4",
                       options=dict(step_size=0.1), adjoint_method="dopri5")


def test_unknown_adjoint_option_is_rejected_when_the_forward_runs():
    func, y0 = make("linear")
    with pytest.raises(ValueError, match="unknown option"):
        odeint_adjoint(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), adjoint_options=dict(bogus=1))


# --------------------------------------------------------------------------- strategies and stats

def test_shorthands_resolve_to_strategy_objects():
    assert set(SHORTHANDS) == {"adjoint", "adjoint-seminorm", "checkpoint"}
    assert isinstance(resolve_gradient("adjoint"), Adjoint) and not resolve_gradient("adjoint").seminorm
    assert resolve_gradient("adjoint-seminorm").seminorm
    assert isinstance(resolve_gradient("checkpoint"), Checkpoint)
    assert repr(Adjoint(rtol=1e-3, seminorm=True)) == "Adjoint(rtol=0.001, seminorm=True)"
    with pytest.raises(ValueError, match="unknown adjoint method"):
        Adjoint(method="rk45")


def test_backward_statistics_land_in_the_users_stats_object():
    func, y0 = make("mlp")
    sol = solve(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), gradient="adjoint", rtol=1e-6, atol=1e-6)
    stats = sol.stats
    assert stats.nfe > 0 and stats.nfe_backward == 0
    sol.ys[-1].sum().backward()
    assert stats.nfe_backward > 0 and stats.n_accepted_backward > 0
    assert stats.nfe_backward >= 6 * (stats.n_accepted_backward + stats.n_rejected_backward)


def test_without_gradients_no_graph_is_built():
    func, y0 = make("mlp")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        out = odeint_adjoint(func, y0, t)
    assert not out.requires_grad
    torch.testing.assert_close(out, odeint(func, y0, t).detach())


def test_adjoint_callbacks_run_during_the_backward_pass_only():
    func, y0 = make("linear")
    events = []
    func.callback_step = lambda t0, y, dt: events.append(("forward", float(t0)))
    func.callback_step_adjoint = lambda t0, state, dt: events.append(("backward", float(t0), len(state)))
    func.callback_accept_step_adjoint = lambda t0, state, dt: events.append(("accept", float(t0)))
    out = odeint_adjoint(func, y0.requires_grad_(True), torch.tensor([0.0, 1.0], dtype=torch.float64))
    n_forward = len(events)
    assert n_forward > 0 and all(e[0] == "forward" for e in events)
    out[-1].sum().backward()
    backward = events[n_forward:]
    assert backward and {e[0] for e in backward} == {"backward", "accept"}
    times = [e[1] for e in backward if e[0] == "backward"]
    # Backwards from t=1; a rejected step is attempted again from the same time.
    assert times[0] == 1.0 and all(a >= b for a, b in zip(times, times[1:])) and times[-1] > 0.0
    assert len(set(times)) > 1
    assert all(e[2] == 3 for e in backward if e[0] == "backward")  # (y, a, dL/dA)


# --------------------------------------------------------------------------- errors

class NaNBackward(torch.autograd.Function):
    """Identity forward; NaN gradient. A field whose adjoint blows up only in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, math.nan)


class BadBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def forward(self, t, y):
        return -self.k * NaNBackward.apply(y)


@pytest.mark.parametrize("mode", ["adjoint", "adjoint-seminorm"])
def test_non_finite_adjoint_state_raises_solver_error_in_the_backward_pass(mode):
    func = BadBackward()
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    sol = solve(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), gradient=mode)
    assert sol.success
    with pytest.raises(SolverError, match=r"backward \(adjoint\) pass at t=") as info:
        sol.ys[-1].sum().backward()
    assert info.value.backward is True
    assert info.value.status is neuralode.Status.NONFINITE
    assert 0.0 <= info.value.t <= 1.0


def test_non_finite_incoming_gradient_names_the_output_time():
    func, y0 = make("linear")
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    out = odeint_adjoint(func, y0.requires_grad_(True), t)
    with pytest.raises(SolverError, match="t=0.5") as info:
        (out[1] * math.inf).sum().backward()
    assert info.value.backward


def test_step_budget_exhausted_in_the_backward_pass():
    func, y0 = make("mlp")
    out = odeint_adjoint(func, y0.requires_grad_(True), torch.tensor([0.0, 5.0], dtype=torch.float64),
                         adjoint_options=dict(max_num_steps=2))
    with pytest.raises(SolverError, match="backward") as info:
        out[-1].sum().backward()
    assert info.value.backward and info.value.status is neuralode.Status.MAX_STEPS


def test_the_backward_solve_starts_with_the_forward_step_size():
    """Not Hairer's heuristic, which the zero-initialised parameter channels drive to ~1e-3."""
    func, y0 = make("mlp")
    forward, backward = [], []
    func.callback_accept_step = lambda t0, y, dt: forward.append(float(dt))
    func.callback_step_adjoint = lambda t0, state, dt: backward.append(float(dt))
    out = odeint_adjoint(func, y0.requires_grad_(True), torch.tensor([0.0, 1.0], dtype=torch.float64),
                         rtol=1e-6, atol=1e-6)
    out[-1].sum().backward()
    # The forward's last step size, which the loop spreads evenly over the two steps it takes to
    # cover the span when it does not reach the end in one (neuralode.control.step_towards).
    h = forward[-1]
    expected = 0.5 if 1.01 * h < 1.0 and math.ceil(1.0 / h) == 2 else h
    assert backward[0] == pytest.approx(-expected, rel=1e-12)
    assert len(backward) <= len(forward) + 2


def test_per_component_tolerances_of_a_tuple_state():
    func, y0 = make("tuple")
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    expected, _ = gradients(func, y0, t, "direct", rtol=(1e-10, 1e-9), atol=(1e-10, 1e-9))
    got, sol = gradients(func, y0, t, Adjoint(rtol=(1e-10, 1e-9), atol=(1e-10, 1e-9)),
                         rtol=(1e-10, 1e-9), atol=(1e-10, 1e-9))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert sol.stats.nfe_backward > 0


@pytest.mark.parametrize("mode", MODES)
def test_a_finished_solve_is_freed_without_the_garbage_collector(mode):
    """No reference cycle (output -> autograd node -> strategy state -> output): a training loop's
    stored states are released as soon as the graph is, not at the next GC pass."""
    import gc
    import weakref

    func, y0 = make("mlp")
    gc.disable()
    try:
        sol = solve(func, y0.requires_grad_(True), torch.tensor([0.0, 1.0], dtype=torch.float64), gradient=mode)
        ref = weakref.ref(sol.ys)
        sol.ys.sum().backward()
        del sol
        assert ref() is None
    finally:
        gc.enable()
