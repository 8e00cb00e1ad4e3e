"""Measured convergence against the declared order of every method.

Fixed-step methods: the global error at t1 on problems with exact solutions must fall like
h**order as the step halves; we fit the log-log slope over four step sizes (float64) and allow
0.3 either side of the order. The step sizes are powers of two dividing the interval exactly,
and chosen per order so that the smallest error stays far above float64 round-off (rk4 at the
finest step is still ~1e-7), where the slope would flatten.

Adaptive methods: tightening rtol = atol by decades must tighten the error, strictly, and by a
real margin over the whole range.
"""

from __future__ import annotations

import copy

import pytest
import torch

import neuralode
from problems import LINEAR_PROBLEMS, log_log_slope, max_abs_error

FIXED_ORDERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}

# Steps per unit interval (T = 2, so h = 2 / n): coarse enough to stay above round-off,
# fine enough to be in the asymptotic regime.
FIXED_STEP_COUNTS = {1: (16, 32, 64, 128), 2: (16, 32, 64, 128), 3: (8, 16, 32, 64), 4: (8, 16, 32, 64)}

ADAPTIVE_METHODS = ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
# Low-order methods need ~tol**(-1/2) steps, so they get looser decades to stay fast.
ADAPTIVE_TOLS = {
    "adaptive_heun": (1e-2, 1e-4, 1e-6),
    "fehlberg2": (1e-2, 1e-4, 1e-6),
    "bosh3": (1e-3, 1e-5, 1e-7),
    "dopri5": (1e-3, 1e-5, 1e-7, 1e-9),
    "tsit5": (1e-3, 1e-5, 1e-7, 1e-9),
    "dopri8": (1e-3, 1e-5, 1e-7, 1e-9),
}


@pytest.mark.parametrize("make_problem", LINEAR_PROBLEMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", FIXED_ORDERS)
def test_fixed_step_global_error_falls_at_the_declared_order(method, make_problem):
    problem = make_problem()
    order = FIXED_ORDERS[method]
    t = torch.tensor([problem.t0, problem.t1], dtype=torch.float64)
    exact = problem.exact(t)[-1]
    hs, errors = [], []
    for n in FIXED_STEP_COUNTS[order]:
        h = (problem.t1 - problem.t0) / n
        ys = neuralode.odeint(problem.func, problem.y0, t, method=method, options={"step_size": h})
        hs.append(h)
        errors.append(max_abs_error(ys[-1], exact))
    slope = log_log_slope(hs, errors)
    assert abs(slope - order) <= 0.3, f"{method}: measured order {slope:.2f}, declared {order}; errors {errors}"


@pytest.mark.parametrize("method", FIXED_ORDERS)
def test_fixed_step_grid_defaults_to_the_output_times(method):
    # With no step_size the steps are the intervals of t itself; halving them must still
    # show the declared order (so the method really steps on t, not on a hidden grid).
    problem = LINEAR_PROBLEMS[0]()
    order = FIXED_ORDERS[method]
    exact = problem.exact(torch.tensor([problem.t1], dtype=torch.float64))[0]
    hs, errors = [], []
    for n in FIXED_STEP_COUNTS[order]:
        t = torch.linspace(problem.t0, problem.t1, n + 1, dtype=torch.float64)
        ys = neuralode.odeint(problem.func, problem.y0, t, method=method)
        hs.append((problem.t1 - problem.t0) / n)
        errors.append(max_abs_error(ys[-1], exact))
    assert abs(log_log_slope(hs, errors) - order) <= 0.3, errors


@pytest.mark.parametrize("make_problem", LINEAR_PROBLEMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_error_tightens_with_the_tolerance(method, make_problem):
    problem = make_problem()
    t = problem.times(5)
    exact = problem.exact(t)
    tols = ADAPTIVE_TOLS[method]
    errors = []
    for tol in tols:
        ys = neuralode.odeint(problem.func, problem.y0, t, method=method, rtol=tol, atol=tol)
        errors.append(max_abs_error(ys, exact))
    for looser, tighter in zip(errors, errors[1:]):
        assert tighter < looser, f"{method}: error did not fall with the tolerance: {errors}"
    # Over the whole range (4-6 decades of tolerance) the error must drop by at least 2 decades.
    # (Whether the error meets the tolerance is test_oracle.py's business.)
    assert errors[-1] * 100 < errors[0], f"{method}: error hardly responds to the tolerance: {errors}"


@pytest.mark.parametrize("method", FIXED_ORDERS)
def test_float32_rounding_does_not_pile_up_over_many_fixed_steps(method):
    # The same grid in float32 and float64: truncation errors are identical, so the difference
    # is rounding alone. Adding a step's stage terms into y one by one rounds y once per stage,
    # and on a smooth field those roundings drift together (0.1-0.3 ulp(|y|) per step measured
    # for rk4 and heun3); forming the increment h * sum(b_i k_i) first and adding it to y once,
    # as torchdiffeq does, leaves ~0.01-0.035 ulp per step, which is what euler and midpoint
    # (one term) show. The bound sits between the two.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(256, 2)
    net64 = copy.deepcopy(net).double()
    n = 1000
    with torch.no_grad():
        y32 = neuralode.odeint(lambda t, y: net(y), y0, torch.tensor([0.0, 1.0]), method=method,
                               options={"step_size": 1.0 / n})[-1]
        y64 = neuralode.odeint(lambda t, y: net64(y), y0.double(), torch.tensor([0.0, 1.0], dtype=torch.float64),
                               method=method, options={"step_size": 1.0 / n})[-1]
    ulp = torch.finfo(torch.float32).eps * float(y64.abs().max())
    per_step = float((y32.double() - y64).abs().max()) / ulp / n
    assert per_step <= 0.06, f"{method}: float32 rounding drifts {per_step:.3f} ulp(|y|) per step over {n} steps"
