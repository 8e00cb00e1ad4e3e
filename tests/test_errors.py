"""Errors are part of the API.

Bad input is rejected at the entry with ValueError/TypeError whose message names the argument;
numerical failures raise ``neuralode.SolverError`` (a RuntimeError) that carries the status and
the time reached, names that time in its message and suggests remedies. With
``on_failure="return"`` a failed solve instead returns what it has: outputs up to the failure,
NaN past it, and the status.
"""

from __future__ import annotations

import re

import pytest
import torch

import neuralode
from neuralode import SolverError, Status

T01 = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


def blow_up(t, y):
    # y' = y**2, y(0) = 1  =>  y = 1 / (1 - t): infinite at t = 1.
    return y * y


def _numbers_in(message: str) -> list[float]:
    return [float(m) for m in re.findall(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", message)]


ENTRIES = {
    "odeint": lambda *a, **k: neuralode.odeint(*a, **k),
    "solve": lambda *a, **k: neuralode.solve(*a, **k),
}


@pytest.fixture(params=list(ENTRIES))
def entry(request):
    """Both public entries validate the same way."""
    return ENTRIES[request.param]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_non_finite_y0_is_rejected_naming_y0(entry, bad, method):
    y0 = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match=r"\by0\b") as info:
        entry(decay, y0, T01, method=method)
    info.match(r"(?i)finite|nan|inf")


def test_non_finite_element_of_a_tuple_state_is_rejected(entry):
    with pytest.raises(ValueError, match=r"\by0\b"):
        entry(lambda t, y: (-y[0], -y[1]), (torch.ones(2), torch.tensor([float("nan")])), T01)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_times_are_rejected_naming_t(entry, bad):
    with pytest.raises(ValueError, match=r"\bt\b") as info:
        entry(decay, torch.ones(1), torch.tensor([0.0, 0.5, bad]))
    info.match(r"(?i)finite|nan|inf")


@pytest.mark.parametrize("t", [torch.tensor(1.0), torch.tensor([[0.0, 1.0]]), torch.zeros(2, 2)], ids=["0-d", "row", "2-d"])
def test_times_that_are_not_one_dimensional_are_rejected(entry, t):
    with pytest.raises(ValueError, match=r"\bt\b") as info:
        entry(decay, torch.ones(1), t)
    info.match(r"(?i)1-?d|one-dimensional|dimension|shape")


@pytest.mark.parametrize(
    "t",
    [[0.0, 1.0, 1.0, 2.0], [0.0, 2.0, 1.0, 3.0], [3.0, 2.0, 2.5, 1.0], [1.0, 1.0]],
    ids=["repeated", "zigzag", "zigzag-decreasing", "constant"],
)
@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_times_that_are_not_strictly_monotonic_are_rejected(entry, t, method):
    with pytest.raises(ValueError, match=r"\bt\b") as info:
        entry(decay, torch.ones(1), torch.tensor(t), method=method)
    info.match(r"(?i)monoton|increasing|decreasing|sorted")


@pytest.mark.parametrize("y0", [torch.tensor([1, 2]), torch.tensor([True]), (torch.ones(1), torch.tensor([3]))],
                         ids=["int", "bool", "tuple-with-int"])
def test_y0_that_is_not_floating_point_is_a_type_error(entry, y0):
    with pytest.raises(TypeError, match=r"\by0\b") as info:
        entry(lambda t, y: y, y0, T01)
    info.match(r"(?i)float")


def test_t_on_another_device_than_y0_is_moved_there_with_a_warning():
    # torchdiffeq warns and moves t to y0's device. The meta device stands in for an accelerator
    # on CPU-only machines (t's values are checked on the CPU before the move).
    from neuralode.problem import make_problem

    y0 = torch.ones(2, device="meta")
    with pytest.warns(UserWarning, match=r"\bt is on cpu but y0 is on meta"):
        problem = make_problem(decay, y0, T01, method=None, rtol=1e-7, atol=1e-9, options=None)
    assert problem.t.device.type == "meta"
    assert problem.t.shape == T01.shape


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_func_returning_the_wrong_shape_is_rejected_naming_func(entry, method):
    with pytest.raises((ValueError, TypeError), match=r"\bfunc\b") as info:
        entry(lambda t, y: y[:1], torch.ones(3), T01, method=method)
    info.match(r"\(3,\)|\[3\]|shape")


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_func_returning_the_wrong_dtype_is_rejected_naming_func(entry, method):
    with pytest.raises((ValueError, TypeError), match=r"\bfunc\b") as info:
        entry(lambda t, y: -y.double(), torch.ones(3, dtype=torch.float32), T01, method=method)
    info.match(r"float64|float32|dtype")


def test_func_returning_a_tensor_for_a_tuple_state_is_rejected(entry):
    with pytest.raises((ValueError, TypeError), match=r"\bfunc\b"):
        entry(lambda t, y: -y[0], (torch.ones(2), torch.ones(2)), T01)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_tolerances_are_rejected_naming_them(entry, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        entry(decay, torch.ones(1), T01, **{name: -1e-6})


def test_unknown_method_lists_the_valid_ones(entry):
    with pytest.raises(ValueError, match=r"\bmethod\b") as info:
        entry(decay, torch.ones(1), T01, method="dopri7")
    info.match("dopri7")
    for valid in ("euler", "rk4", "dopri5", "tsit5", "dopri8", "bosh3"):
        info.match(valid)


def test_unknown_on_failure_mode_is_rejected():
    with pytest.raises(ValueError, match=r"on_failure"):
        neuralode.solve(decay, torch.ones(1), T01, on_failure="ignore")


# --------------------------------------------------------------------------------------------
# Numerical failures
# --------------------------------------------------------------------------------------------


def test_solver_error_is_a_runtime_error():
    assert issubclass(SolverError, RuntimeError)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_blow_up_raises_solver_error_naming_the_time_reached(method):
    y0 = torch.tensor([1.0], dtype=torch.float64)
    with pytest.raises(SolverError) as info:
        neuralode.odeint(blow_up, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), method=method)
    err = info.value
    assert err.status in (Status.STEP_UNDERFLOW, Status.NONFINITE, Status.MAX_STEPS)
    assert err.status != Status.SUCCESS
    assert abs(float(err.t) - 1.0) < 0.01, f"time reached should be just before the singularity, got {err.t}"
    message = str(err)
    assert any(abs(x - float(err.t)) < 0.01 for x in _numbers_in(message)), message
    # Remedies: a looser tolerance, a minimum step, or a fixed-step method.
    assert re.search(r"(?i)tolerance|rtol|atol", message), message
    assert re.search(r"min_step", message), message
    assert re.search(r"(?i)fixed", message), message


def test_step_underflow_names_the_stiff_methods_with_rodas5_first():
    # rodas5 takes the fewest evaluations at equal error on the stiff benchmarks (bench_stiff.py)
    with pytest.raises(SolverError) as info:
        neuralode.odeint(blow_up, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64),
                         method="dopri5")
    assert info.value.status == Status.STEP_UNDERFLOW
    message = str(info.value)
    assert re.search(r"method='rodas5'.*'kvaerno5'.*'rosenbrock23'", message), message
    assert "adjoint_method='kvaerno5'" in message, message


def test_non_finite_field_in_a_fixed_step_solve_raises_at_the_time_it_appears():
    def poisoned(t, y):
        return -y if t < 0.5 else y * float("nan")

    with pytest.raises(SolverError) as info:
        neuralode.odeint(poisoned, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.1})
    assert info.value.status == Status.NONFINITE
    assert 0.35 <= float(info.value.t) <= 0.65, info.value.t


def test_non_finite_field_in_an_adaptive_solve_raises_at_the_time_it_appears():
    def poisoned(t, y):
        return -y if t < 0.5 else y * float("nan")

    with pytest.raises(SolverError) as info:
        neuralode.odeint(poisoned, torch.ones(2), torch.tensor([0.0, 1.0]), method="dopri5")
    # Either it sees the NaN state, or it keeps shrinking the step in front of t = 0.5.
    assert info.value.status in (Status.NONFINITE, Status.STEP_UNDERFLOW)
    assert 0.35 <= float(info.value.t) <= 0.5 + 1e-6, info.value.t


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_exhausted_step_budget_raises_solver_error(method):
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    with pytest.raises(SolverError, match="max_num_steps") as info:
        neuralode.odeint(decay, y0, t, method=method, rtol=1e-10, atol=1e-12, options={"max_num_steps": 5})
    assert info.value.status == Status.MAX_STEPS
    assert 0.0 < float(info.value.t) < 10.0


def test_failed_solve_returns_trajectory_up_to_the_failure_when_asked():
    t = torch.linspace(0.0, 2.0, 21, dtype=torch.float64)
    sol = neuralode.solve(blow_up, torch.tensor([1.0], dtype=torch.float64), t, on_failure="return")
    assert sol.status != Status.SUCCESS
    assert sol.ys.shape == (21, 1)
    before, after = t < 0.95, t > 1.0
    assert torch.isfinite(sol.ys[before]).all()
    torch.testing.assert_close(sol.ys[before, 0], 1 / (1 - t[before]), rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[after]).all(), sol.ys[after]


def test_returned_failure_from_an_exhausted_budget_keeps_the_outputs_reached():
    t = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)
    sol = neuralode.solve(decay, torch.ones(1, dtype=torch.float64), t, rtol=1e-10, atol=1e-12,
                          options={"max_num_steps": 20}, on_failure="return")
    assert sol.status == Status.MAX_STEPS
    finite = torch.isfinite(sol.ys[:, 0])
    assert finite[0] and not finite[-1]
    # Finite outputs form a prefix, and they are right.
    n = int(finite.sum())
    assert finite[:n].all() and not finite[n:].any()
    torch.testing.assert_close(sol.ys[:n, 0], torch.exp(-t[:n]), rtol=1e-8, atol=1e-10)


def test_successful_solve_reports_success():
    sol = neuralode.solve(decay, torch.ones(1), T01, on_failure="return")
    assert sol.status == Status.SUCCESS
    assert torch.isfinite(sol.ys).all()
