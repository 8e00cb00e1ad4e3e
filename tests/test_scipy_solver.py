"""``method="scipy_solver"``: SciPy's integrators behind torchdiffeq's interface (forward only)."""
from __future__ import annotations

import math

import pytest
import torch

import neuralode
from neuralode.problem import make_problem
from neuralode.integrate import integrate

F64 = torch.float64
SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def exact(t):
    return torch.stack([torch.cos(t), -torch.sin(t)], dim=-1)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_matches_the_analytic_solution(solver, direction):
    t = torch.linspace(0.0, 4.0, 9, dtype=F64)
    if direction == "backward":
        t = t.flip(0) - 2.0  # from 2 down to -2
    y0 = exact(t[:1])[0]
    sol = neuralode.solve(oscillator, y0, t, method="scipy_solver", rtol=1e-9, atol=1e-11,
                          options=dict(solver=solver))
    assert sol.success and sol.ys.dtype == F64 and sol.ys.shape == (9, 2)
    torch.testing.assert_close(sol.ys, exact(t), rtol=0, atol=1e-6)
    assert sol.stats.nfe > 0 and sol.stats.n_accepted > 0
    assert sol.t_reached == float(t[-1])


def test_default_solver_is_lsoda_and_float32_states_stay_float32():
    t = torch.linspace(0.0, 1.0, 3)
    ys = neuralode.odeint(oscillator, torch.tensor([1.0, 0.0]), t, method="scipy_solver")
    assert ys.dtype == torch.float32
    torch.testing.assert_close(ys, exact(t), rtol=0, atol=1e-5)


def test_tuple_states_and_per_component_tolerances():
    def field(t, state):
        x, v = state
        return v, -x

    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    x, v = neuralode.odeint(field, (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)), t, method="scipy_solver",
                            rtol=(1e-9, 1e-9), atol=1e-11, options=dict(solver="DOP853"))
    torch.testing.assert_close(x[:, 0], torch.cos(t), rtol=0, atol=1e-7)


def test_max_step_bounds_scipys_steps():
    t = torch.tensor([0.0, 2.0], dtype=F64)
    loose = neuralode.solve(oscillator, exact(t[:1])[0], t, method="scipy_solver", rtol=1e-3, atol=1e-3,
                            options=dict(solver="RK45"))
    bounded = neuralode.solve(oscillator, exact(t[:1])[0], t, method="scipy_solver", rtol=1e-3, atol=1e-3,
                              options=dict(solver="RK45", max_step=0.05))
    assert bounded.stats.n_accepted >= 40 > loose.stats.n_accepted
    assert bounded.stats.final_step <= 0.05 + 1e-12


def test_min_step_is_handed_to_lsoda_and_refused_where_scipy_has_none(monkeypatch):
    import scipy.integrate

    seen = {}
    real = scipy.integrate.solve_ivp

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.integrate, "solve_ivp", spy)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    neuralode.odeint(oscillator, torch.ones(2, dtype=F64), t, method="scipy_solver",
                     options=dict(solver="LSODA", min_step=1e-3, max_step=0.5))
    assert seen["min_step"] == 1e-3 and seen["max_step"] == 0.5 and seen["method"] == "LSODA"
    with pytest.raises(ValueError, match=r"min_step.*'LSODA'"):
        neuralode.odeint(oscillator, torch.ones(2), t, method="scipy_solver", options=dict(solver="RK45", min_step=0.1))


def test_unknown_solver_and_options_are_rejected_by_name():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"options\['solver'\] must be one of .*'LSODA'.*got 'rk45'"):
        neuralode.odeint(oscillator, torch.ones(2, dtype=F64), t, method="scipy_solver", options=dict(solver="rk45"))
    with pytest.raises(ValueError, match="step_size"):
        neuralode.odeint(oscillator, torch.ones(2, dtype=F64), t, method="scipy_solver", options=dict(step_size=0.1))
    # norm is accepted and ignored, as torchdiffeq does
    neuralode.odeint(oscillator, torch.ones(2, dtype=F64), t, method="scipy_solver", options=dict(norm=max))


class _Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, t, y):
        return self.w * oscillator(t, y)


def test_gradients_are_refused_with_a_clear_error():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="forward only.*y0 requires grad"):
        neuralode.odeint(oscillator, y0.clone().requires_grad_(True), t, method="scipy_solver")
    with pytest.raises(ValueError, match="forward only.*t requires grad"):
        neuralode.odeint(oscillator, y0, t.clone().requires_grad_(True), method="scipy_solver")
    with pytest.raises(ValueError, match="forward only.*parameters of func"):
        neuralode.odeint(_Field(), y0, t, method="scipy_solver")
    with pytest.raises(ValueError, match="forward only.*gradient='checkpoint'"):
        neuralode.solve(oscillator, y0, t, method="scipy_solver", gradient="checkpoint")
    with torch.no_grad():
        ys = neuralode.odeint(_Field(), y0, t, method="scipy_solver", rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ys, exact(t), rtol=0, atol=1e-7)


def test_matches_torchdiffeq_scipy_bridge():
    import torchdiffeq  # the test extra installs it

    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    for solver in ("RK45", "LSODA"):
        ours = neuralode.odeint(oscillator, y0, t, method="scipy_solver", rtol=1e-6, atol=1e-8,
                                options=dict(solver=solver))
        theirs = torchdiffeq.odeint(oscillator, y0, t, method="scipy_solver", rtol=1e-6, atol=1e-8,
                                    options=dict(solver=solver))
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_step_observers_see_scipys_steps_and_can_stop_the_solve():
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    steps = []

    def observe(step):
        steps.append((step.t0, step.t1))
        torch.testing.assert_close(step.interpolate(step.t1), step.y1)
        # stop where cos(t) crosses zero (t = π/2), located on the dense output by bisection
        if float(step.y1[0]) < 0 <= float(step.y0[0]):
            lo, hi = step.t0, step.t1
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if float(step.interpolate(mid)[0]) > 0 else (lo, mid)
            return hi
        return None

    problem = make_problem(oscillator, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12,
                           options=dict(solver="DOP853"))
    problem.observers = (observe,)
    sol = integrate(problem)
    assert abs(sol.t_reached - math.pi / 2) < 1e-8
    assert all(a[1] == b[0] for a, b in zip(steps, steps[1:]))
    torch.testing.assert_close(sol.ys[:4], exact(t[:4]), rtol=0, atol=1e-8)  # t = 0, 0.5, 1, 1.5
    assert torch.isnan(sol.ys[4:]).all()


class _Tanh(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=F64))

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T)


def test_odeint_adjoint_gives_gradients_through_scipy_solves_as_torchdiffeq():
    # The adjoint needs no graph of the forward solve, so SciPy can do both solves.
    import torchdiffeq  # the test extra installs it

    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    grads = []
    for odeint_adjoint, kw in ((neuralode.odeint_adjoint, dict(method="scipy_solver")),
                               (neuralode.odeint_adjoint, dict(method="dopri5")),
                               (torchdiffeq.odeint_adjoint, dict(method="scipy_solver"))):
        func = _Tanh()
        y0 = torch.tensor([1.0, 0.3], dtype=F64, requires_grad=True)
        options = dict(solver="DOP853") if kw["method"] == "scipy_solver" else None
        odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-12, options=options, **kw).pow(2).sum().backward()
        grads.append((func.w.grad, y0.grad))
    for other in grads[1:]:
        for g, e in zip(grads[0], other):
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
