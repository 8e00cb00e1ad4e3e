"""Adaptive methods against an independent oracle: scipy's DOP853 at rtol = atol = 1e-12.

The problems are nonlinear (Van der Pol mu=1, Lotka-Volterra, the cubic spiral dy/dt = A y**3)
and have no closed form, so scipy's 8th-order solver, at tolerances four or more decades below
ours, stands in for the exact solution. Outputs are checked at 11 times, so the dense output
(interpolation inside steps) is checked as well as the step-end values.

The bound. A solver controls the *local* error of each step, err_step <= atol + rtol |y|
(in its norm); the *global* error is the sum of the local errors carried forward by the flow,
so it is not bounded by one tolerance unit in general. On these non-stiff problems over five
time units, with error estimates that over-estimate the local error (local extrapolation: the
propagated solution is of higher order than the estimate), a correct solver stays within a small
multiple: we allow

    max |y - y_ref| / (atol + rtol |y_ref|)  <=  C = 10.

A wrong tableau, a controller that ignores rtol/atol, a low-order interpolant or an error
estimate taken from the wrong solution overshoots this by one to three orders of magnitude.
float32 is checked at tol = 1e-4: its epsilon (1.2e-7) accumulated over hundreds of steps makes
tighter float32 tolerances meaningless. float64 is checked at a tolerance per method that keeps
the number of steps (and the test time) modest.
"""

from __future__ import annotations

import pytest
import torch

import neuralode
from problems import NONLINEAR_PROBLEMS, scaled_error, scipy_reference

C = 10.0
T1 = 5.0
N_OUTPUTS = 11

ADAPTIVE_METHODS = ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
FLOAT64_TOL = {
    "adaptive_heun": 1e-5,
    "fehlberg2": 1e-5,
    "bosh3": 1e-6,
    "dopri5": 1e-7,
    "tsit5": 1e-7,
    "dopri8": 1e-8,
}
FLOAT32_TOL = 1e-4

_references: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _reference(make_problem):
    """The scipy solution at the output times, computed once per problem."""
    problem = make_problem(t1=T1)
    if problem.name not in _references:
        t = problem.times(N_OUTPUTS)
        _references[problem.name] = (t, scipy_reference(problem, t))
    t, y_ref = _references[problem.name]
    return problem, t, y_ref


@pytest.mark.parametrize("make_problem", NONLINEAR_PROBLEMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_adaptive_solution_meets_its_tolerance_against_scipy(method, make_problem, dtype):
    problem, t, y_ref = _reference(make_problem)
    tol = FLOAT32_TOL if dtype == torch.float32 else FLOAT64_TOL[method]
    ys = neuralode.odeint(problem.func, problem.y0_as(dtype), t.to(dtype), method=method, rtol=tol, atol=tol)
    assert ys.dtype == dtype
    err = scaled_error(ys, y_ref, rtol=tol, atol=tol)
    assert err <= C, f"{method} on {problem.name} ({dtype}): error is {err:.1f} x tolerance (tol={tol:g})"


@pytest.mark.parametrize("make_problem", NONLINEAR_PROBLEMS, ids=lambda f: f.__name__)
def test_default_method_is_accurate_at_default_tolerances(make_problem):
    # odeint with no method and no tolerances: dopri5 at rtol=1e-7, atol=1e-9 (torchdiffeq's defaults).
    problem, t, y_ref = _reference(make_problem)
    ys = neuralode.odeint(problem.func, problem.y0, t)
    err = scaled_error(ys, y_ref, rtol=1e-7, atol=1e-9)
    assert err <= C, f"default solve on {problem.name}: error is {err:.1f} x tolerance"


@pytest.mark.parametrize("method", ("euler", "midpoint", "heun2", "heun3", "rk4"))
def test_fixed_step_methods_agree_with_scipy_on_a_fine_grid(method):
    # A sanity check of the fixed-step methods on a nonlinear field: error bounded by the
    # method's h**order with a generous constant (h = 1/200 on Van der Pol over [0, 5]).
    order = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}[method]
    problem, t, y_ref = _reference(NONLINEAR_PROBLEMS[0])
    h = 1.0 / 256
    ys = neuralode.odeint(problem.func, problem.y0, t, method=method, options={"step_size": h})
    err = float((ys - y_ref).abs().max())
    assert err <= 10 * h**order + 1e-12, f"{method}: error {err:.2e} vs h**{order} = {h**order:.2e}"
