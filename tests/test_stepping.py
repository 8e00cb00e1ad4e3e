"""The method/loop contracts: the registry dispatches to steppers, and the loop reports every
accepted step to observers, which may end the solve inside a step."""
from __future__ import annotations

import math

import pytest
import torch

import neuralode
from neuralode.methods import REGISTRY, get_method, register
from neuralode.options import FIXED_OPTIONS, parse_fixed
from neuralode.problem import make_problem
from neuralode.integrate import integrate
from neuralode.stepping import Method

F64 = torch.float64


def decay(t, y):
    return -y


class _ExplicitEulerStepper:
    """A stepper written outside the package, as a new method module would write one."""

    fsal = False
    rows = ((1.0,),)
    needs_f1 = False
    replayable = True

    def step(self, evaluate, t0, h, t1, y0, f0, perturb_end):
        return y0 + h * f0, [f0], 0


def test_a_registered_stepper_method_is_solved_by_the_loop():
    register(Method("test_euler", 1, False, parse_fixed, FIXED_OPTIONS, make_stepper=lambda p: _ExplicitEulerStepper()))
    try:
        t = torch.tensor([0.0, 1.0], dtype=F64)
        ours = neuralode.odeint(decay, torch.ones(1, dtype=F64), t, method="test_euler", options={"step_size": 0.125})
        euler = neuralode.odeint(decay, torch.ones(1, dtype=F64), t, method="euler", options={"step_size": 0.125})
        torch.testing.assert_close(ours, euler, rtol=0, atol=1e-15)
        torch.testing.assert_close(ours[-1], torch.tensor([(1 - 0.125) ** 8], dtype=F64), rtol=0, atol=1e-15)
    finally:
        del REGISTRY["test_euler"]


def test_unknown_method_names_every_registered_one():
    with pytest.raises(ValueError, match="unknown method 'rk45'") as info:
        get_method("rk45")
    for name in REGISTRY:
        info.match(name)


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.1, "interp": "cubic"})])
def test_observers_see_every_accepted_step_with_its_dense_output(method, options):
    seen = []

    def observe(step):
        seen.append((step.t0, step.t1, step.outputs, step.interpolate(step.t1), step.y1,
                     step.interpolate(0.5 * (step.t0 + step.t1))))

    t = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    problem = make_problem(decay, torch.ones(2, dtype=F64), t, method=method, rtol=1e-8, atol=1e-10, options=options)
    problem.observers = (observe,)
    sol = integrate(problem)
    assert len(seen) == sol.stats.n_accepted
    assert seen[0][0] == 0.0 and seen[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:])), "steps must be contiguous"
    assert [i for s in seen for i, _ in s[2]] == [1, 2], "each output written by exactly one step"
    for t0, t1, _, end, y1, mid in seen:
        torch.testing.assert_close(end, y1, rtol=1e-12, atol=1e-14)
        exact = torch.full((2,), math.exp(-0.5 * (t0 + t1)), dtype=F64)
        torch.testing.assert_close(mid, exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_an_observer_can_end_the_solve_inside_a_step(method, options):
    stop_at = 0.43

    def observe(step):
        return stop_at if step.t0 < stop_at <= step.t1 else None

    t = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0], dtype=F64)
    problem = make_problem(decay, torch.ones(1, dtype=F64), t, method=method, rtol=1e-9, atol=1e-11, options=options)
    problem.observers = (observe,)
    sol = integrate(problem)
    assert sol.success and sol.t_reached == stop_at
    torch.testing.assert_close(sol.ys[:3, 0], torch.exp(-t[:3]), rtol=1e-6, atol=1e-8)
    assert torch.isnan(sol.ys[3:]).all(), "outputs after the stop are NaN"


def test_a_stop_time_outside_the_step_is_an_error():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    problem = make_problem(decay, torch.ones(1, dtype=F64), t, method="dopri5", rtol=1e-6, atol=1e-8, options=None)
    problem.observers = (lambda step: step.t0 - 1.0,)
    with pytest.raises(ValueError, match="outside its step"):
        integrate(problem)


def test_step_plans_are_keyed_by_the_tableau_not_its_name():
    from neuralode.rk import plan_for
    from neuralode.tableaus import ButcherTableau

    a = ButcherTableau("same_name", 1, c=(0.0,), a=((),), b=(1.0,))
    b = ButcherTableau("same_name", 2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))
    assert plan_for(a).solution != plan_for(b).solution
    assert len(plan_for(b).stage_list) == 1 and len(plan_for(a).stage_list) == 0
