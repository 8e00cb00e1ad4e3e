"""Solver options and callbacks do what they say (torchdiffeq's option names and semantics).

Step ends are observed through the callbacks that torchdiffeq defines as methods of an
``nn.Module`` field: ``callback_step(t0, y0, dt)`` before every attempted step,
``callback_accept_step`` / ``callback_reject_step`` after the decision.
"""

from __future__ import annotations

import pytest
import torch

import neuralode
from problems import CountingFunc, exponential_decay, harmonic_oscillator, linear_system

FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4")
ADAPTIVE = ("adaptive_heun", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
F64 = torch.float64


def _t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _oscillator():
    problem = harmonic_oscillator()
    return CountingFunc(problem.func), problem


# --------------------------------------------------------------------------------------------
# Option names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_unknown_option_is_rejected_by_name(method):
    with pytest.raises(ValueError, match="step_sise"):
        neuralode.odeint(lambda t, y: -y, torch.ones(1), _t(0, 1), method=method, options={"step_sise": 0.1})


def test_adaptive_only_option_on_a_fixed_step_method_is_rejected():
    with pytest.raises(ValueError, match="first_step"):
        neuralode.odeint(lambda t, y: -y, torch.ones(1), _t(0, 1), method="rk4", options={"first_step": 0.1})


def test_fixed_step_only_option_on_an_adaptive_method_is_rejected():
    with pytest.raises(ValueError, match="step_size"):
        neuralode.odeint(lambda t, y: -y, torch.ones(1), _t(0, 1), method="dopri5", options={"step_size": 0.1})


# --------------------------------------------------------------------------------------------
# Adaptive options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
def test_step_t_points_are_step_ends(method):
    func, problem = _oscillator()
    step_t = [0.3, 0.55, 0.71, 1.3]
    # Loose tolerance => long steps, so the step_t points are not hit by chance.
    neuralode.odeint(func, problem.y0, _t(0, 2), method=method, rtol=1e-3, atol=1e-3, options={"step_t": step_t})
    ends = torch.tensor(func.step_ends(), dtype=F64)
    for s in step_t:
        assert (ends - s).abs().min() < 1e-12, f"no accepted step ends at {s}: {ends.tolist()}"

    control = CountingFunc(problem.func)
    neuralode.odeint(control, problem.y0, _t(0, 2), method=method, rtol=1e-3, atol=1e-3)
    control_ends = torch.tensor(control.step_ends(), dtype=F64)
    assert sum(bool((control_ends - s).abs().min() < 1e-12) for s in step_t) < len(step_t), "test is vacuous"


def test_step_t_accepts_a_tensor_and_points_outside_the_span():
    func, problem = _oscillator()
    step_t = torch.tensor([-1.0, 0.45, 5.0], dtype=F64)
    ys = neuralode.odeint(func, problem.y0, _t(0, 1), rtol=1e-4, atol=1e-4, options={"step_t": step_t})
    assert torch.isfinite(ys).all()
    ends = torch.tensor(func.step_ends(), dtype=F64)
    assert (ends - 0.45).abs().min() < 1e-12


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
def test_jump_t_ends_a_step_at_the_discontinuity_and_integrates_it_exactly(method):
    # y' = +1 before t = 0.5 and -1 after: y(1) = 0, y(0.5) = 0.5, piecewise linear.
    def square_wave(t, y):
        return torch.where(t < 0.5, torch.ones_like(y), -torch.ones_like(y))

    func = CountingFunc(square_wave)
    t = _t(0.0, 0.5, 1.0)
    ys = neuralode.odeint(func, torch.zeros(1, dtype=F64), t, method=method, rtol=1e-8, atol=1e-10,
                          options={"jump_t": [0.5]})
    ends = torch.tensor(func.step_ends(), dtype=F64)
    assert (ends - 0.5).abs().min() < 1e-12, ends.tolist()
    torch.testing.assert_close(ys[:, 0], _t(0.0, 0.5, 0.0), rtol=0, atol=1e-9)
    # Without jump_t the solver has to find the kink by rejecting steps around it.
    control = CountingFunc(square_wave)
    sol = neuralode.solve(control, torch.zeros(1, dtype=F64), t, method=method, rtol=1e-8, atol=1e-10)
    with_jump = neuralode.solve(CountingFunc(square_wave), torch.zeros(1, dtype=F64), t, method=method,
                                rtol=1e-8, atol=1e-10, options={"jump_t": [0.5]})
    assert with_jump.stats.nfe < sol.stats.nfe


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "dopri8"])
def test_max_step_bounds_every_step(method):
    func, problem = _oscillator()
    neuralode.odeint(func, problem.y0, _t(0, 2), method=method, rtol=1e-3, atol=1e-3, options={"max_step": 0.05})
    dts = [dt for _, dt in func.steps]
    assert max(dts) <= 0.05 * (1 + 1e-12), max(dts)
    assert len(func.accepted) >= 40


@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_min_step_bounds_every_step_but_the_last(method):
    func, problem = _oscillator()
    # A tight tolerance would want short steps; min_step forbids them.
    neuralode.odeint(func, problem.y0, _t(0, 2), method=method, rtol=1e-10, atol=1e-10, options={"min_step": 0.1})
    dts = [dt for _, dt in func.accepted]
    assert min(dts[:-1]) >= 0.1 * (1 - 1e-12), dts
    assert len(func.accepted) <= 21
    assert not func.rejected, "steps at min_step are accepted whatever their error"


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5", "dopri8"])
def test_first_step_is_the_first_attempted_step(method):
    func, problem = _oscillator()
    neuralode.odeint(func, problem.y0, _t(0, 1), method=method, rtol=1e-6, atol=1e-6, options={"first_step": 0.0123})
    t0, dt = func.steps[0]
    assert t0 == 0.0
    assert abs(dt - 0.0123) < 1e-12


def test_first_step_in_a_backward_solve_is_taken_backward():
    func, problem = _oscillator()
    neuralode.odeint(func, problem.y0, _t(1, 0), rtol=1e-6, atol=1e-6, options={"first_step": 0.02})
    t0, dt = func.steps[0]
    assert abs(abs(dt) - 0.02) < 1e-12
    # Whatever sign convention dt uses, the first step must go from 1 towards 0.
    ends = func.step_ends()
    assert all(0.0 - 1e-12 <= e <= 1.0 + 1e-12 for e in ends) or all(-1.0 - 1e-12 <= e <= 0 + 1e-12 for e in ends)


def test_safety_ifactor_dfactor_change_the_step_sequence():
    problem = harmonic_oscillator()
    base = neuralode.solve(problem.func, problem.y0, _t(0, 2), rtol=1e-6, atol=1e-6)
    cautious = neuralode.solve(problem.func, problem.y0, _t(0, 2), rtol=1e-6, atol=1e-6,
                               options={"safety": 0.5, "ifactor": 1.5, "dfactor": 0.5})
    assert cautious.stats.n_accepted > base.stats.n_accepted
    torch.testing.assert_close(cautious.ys, base.ys, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("time_dtype", [torch.float32, torch.float64])
def test_dtype_option_sets_the_time_dtype_not_the_state_dtype(time_dtype):
    # torchdiffeq: ``dtype`` is the dtype of the solver's times (promoted with the state's), the
    # state keeps its own dtype, and func is handed times in the state's dtype. The times the
    # step callbacks receive are the solver's times, so they show the option's dtype.
    problem = exponential_decay()
    func = CountingFunc(problem.func)
    seen = []
    inner = func.func
    func.func = lambda t, y: (seen.append((t.dtype, y.dtype)), inner(t, y))[1]
    ys = neuralode.odeint(func, problem.y0_as(torch.float32), torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-6,
                          options={"dtype": time_dtype})
    assert ys.dtype == torch.float32
    assert set(seen) == {(torch.float32, torch.float32)}
    assert {(t0.dtype, dt.dtype) for _, t0, _, dt in func.callback_args} == {(time_dtype, time_dtype)}
    torch.testing.assert_close(ys[-1], problem.exact(_t(1.0))[0].float(), rtol=1e-5, atol=1e-6)


def test_custom_norm_is_used_for_the_error():
    calls = []

    def max_norm(x):
        calls.append(x.shape)
        return x.abs().max()

    problem = linear_system()
    rms = neuralode.solve(problem.func, problem.y0, _t(0, 2), rtol=1e-6, atol=1e-6)
    inf = neuralode.solve(problem.func, problem.y0, _t(0, 2), rtol=1e-6, atol=1e-6, options={"norm": max_norm})
    assert calls, "the norm was never called"
    # max >= RMS, so the max norm can only make the controller more careful.
    assert inf.stats.n_accepted >= rms.stats.n_accepted
    torch.testing.assert_close(inf.ys, problem.exact(_t(0, 2)), rtol=1e-5, atol=1e-5)


def test_max_num_steps_large_enough_does_not_interfere():
    problem = exponential_decay()
    sol = neuralode.solve(problem.func, problem.y0, _t(0, 2), options={"max_num_steps": 10_000})
    assert sol.status == neuralode.Status.SUCCESS


# --------------------------------------------------------------------------------------------
# Fixed-step options
# --------------------------------------------------------------------------------------------


def _rk4_38(func, y, t0, dt):
    """The 3/8-rule RK4 step, written out independently of the library."""
    k1 = func(t0, y)
    k2 = func(t0 + dt / 3, y + dt * k1 / 3)
    k3 = func(t0 + 2 * dt / 3, y + dt * (k2 - k1 / 3))
    k4 = func(t0 + dt, y + dt * (k1 - k2 + k3))
    return y + dt * (k1 + 3 * (k2 + k3) + k4) / 8


def test_step_size_sets_the_fixed_grid_and_rk4_is_the_three_eighths_rule():
    problem = linear_system()
    func = CountingFunc(problem.func)
    ys = neuralode.odeint(func, problem.y0, _t(0, 1), method="rk4", options={"step_size": 0.125})
    assert [round(dt, 12) for _, dt in func.steps] == [0.125] * 8
    assert [round(t0, 12) for t0, _ in func.steps] == [0.125 * i for i in range(8)]
    y = problem.y0
    for i in range(8):
        y = _rk4_38(problem.func, y, torch.tensor(0.125 * i, dtype=F64), 0.125)
    torch.testing.assert_close(ys[-1], y, rtol=1e-13, atol=1e-14)


def test_step_size_that_does_not_divide_the_span_still_ends_at_t1():
    problem = exponential_decay()
    func = CountingFunc(problem.func)
    ys = neuralode.odeint(func, problem.y0, _t(0, 1), method="rk4", options={"step_size": 0.3})
    ends = [t0 + dt for t0, dt in func.steps]
    assert abs(ends[-1] - 1.0) < 1e-12
    assert len(func.steps) == 4
    torch.testing.assert_close(ys[-1], problem.exact(_t(1.0))[0], rtol=1e-3, atol=1e-3)


def test_grid_constructor_sets_the_steps():
    problem = exponential_decay()
    grid = _t(0.0, 0.1, 0.3, 0.6, 1.0)

    def constructor(func, y0, t):
        return grid

    func = CountingFunc(problem.func)
    ys = neuralode.odeint(func, problem.y0, _t(0, 1), method="euler", options={"grid_constructor": constructor})
    assert [round(t0, 12) for t0, _ in func.steps] == [0.0, 0.1, 0.3, 0.6]
    y = problem.y0.clone()
    for a, b in zip(grid[:-1], grid[1:]):
        y = y + (b - a) * problem.func(a, y)
    torch.testing.assert_close(ys[-1], y, rtol=1e-14, atol=1e-15)


def test_grid_constructor_and_step_size_together_are_rejected():
    with pytest.raises(ValueError, match="grid_constructor|step_size"):
        neuralode.odeint(lambda t, y: -y, torch.ones(1), _t(0, 1), method="rk4",
                         options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t})


def test_without_step_size_the_grid_is_t_itself():
    func = CountingFunc(lambda t, y: -y)
    t = _t(0.0, 0.2, 0.7, 1.0)
    neuralode.odeint(func, torch.ones(1, dtype=F64), t, method="midpoint")
    assert [round(t0, 12) for t0, _ in func.steps] == [0.0, 0.2, 0.7]


@pytest.mark.parametrize("method", FIXED)
def test_cubic_interpolation_between_grid_points_beats_linear(method):
    problem = harmonic_oscillator()
    t = torch.linspace(0.0, 2.0, 17, dtype=F64)  # outputs between the grid points (h = 0.25)
    exact = problem.exact(t)
    linear = neuralode.odeint(problem.func, problem.y0, t, method=method, options={"step_size": 0.25, "interp": "linear"})
    cubic = neuralode.odeint(problem.func, problem.y0, t, method=method, options={"step_size": 0.25, "interp": "cubic"})
    default = neuralode.odeint(problem.func, problem.y0, t, method=method, options={"step_size": 0.25})
    torch.testing.assert_close(default, linear, rtol=0, atol=0)  # linear is the default
    on_grid = torch.arange(0, 17, 2)
    torch.testing.assert_close(cubic[on_grid], linear[on_grid], rtol=1e-13, atol=1e-13)
    if method == "rk4":  # where the step error is small, the interpolation error dominates
        off_grid = torch.arange(1, 17, 2)
        err_lin = (linear[off_grid] - exact[off_grid]).abs().max()
        err_cub = (cubic[off_grid] - exact[off_grid]).abs().max()
        assert err_cub < err_lin / 10, (float(err_cub), float(err_lin))


def test_unknown_interp_is_rejected():
    with pytest.raises(ValueError, match="interp"):
        neuralode.odeint(lambda t, y: -y, torch.ones(1), _t(0, 1), method="rk4", options={"interp": "quintic"})


def test_perturb_option_is_accepted_and_changes_nothing_on_a_smooth_field():
    problem = exponential_decay()
    a = neuralode.odeint(problem.func, problem.y0, _t(0, 1), method="rk4", options={"step_size": 0.1})
    b = neuralode.odeint(problem.func, problem.y0, _t(0, 1), method="rk4", options={"step_size": 0.1, "perturb": True})
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Callbacks and statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
def test_callbacks_receive_t0_y0_dt_and_match_the_statistics(method):
    problem = linear_system()
    func = CountingFunc(problem.func)
    # A huge first step forces at least one rejection.
    sol = neuralode.solve(func, problem.y0, _t(0, 2), method=method, rtol=1e-8, atol=1e-8, options={"first_step": 1.5})
    assert func.rejected, "expected a rejected step"
    assert len(func.steps) == len(func.accepted) + len(func.rejected)
    assert len(func.accepted) == sol.stats.n_accepted
    assert len(func.rejected) == sol.stats.n_rejected
    for _, t0, y0, dt in func.callback_args:
        assert torch.is_tensor(t0) and t0.ndim == 0
        assert torch.is_tensor(y0) and y0.shape == problem.y0.shape
        assert torch.is_tensor(dt) and dt.ndim == 0
    # Accepted steps tile [0, t_end] with no gaps; a rejected step is retried from the same place.
    accepted = func.accepted
    assert accepted[0][0] == 0.0
    for (a0, adt), (b0, _) in zip(accepted, accepted[1:]):
        assert abs(a0 + adt - b0) < 1e-12
    assert accepted[-1][0] + accepted[-1][1] >= 2.0 - 1e-12
    for r0, _ in func.rejected:
        assert any(abs(r0 - a0) < 1e-15 for a0, _ in accepted), "a rejected step must be retried from its start"


def test_callback_step_is_called_on_every_fixed_step_with_the_state():
    func = CountingFunc(lambda t, y: -y)
    y0 = torch.ones(2, 3, dtype=F64)
    neuralode.odeint(func, y0, _t(0, 1), method="rk4", options={"step_size": 0.25})
    assert len(func.steps) == 4
    names = [a[0] for a in func.callback_args]
    assert set(names) == {"step"}
    _, t0, y_first, dt = func.callback_args[0]
    assert torch.equal(y_first, y0) and float(t0) == 0.0 and float(dt) == 0.25
    _, _, y_second, _ = func.callback_args[1]
    assert not torch.equal(y_second, y0), "callbacks must receive the state at the step's start"


@pytest.mark.parametrize("method", FIXED + ADAPTIVE)
def test_nfe_counts_every_call_of_func(method):
    problem = linear_system()
    func = CountingFunc(problem.func)
    opts = {"step_size": 0.1} if method in FIXED else None
    sol = neuralode.solve(func, problem.y0, _t(0, 0.5, 1), method=method, rtol=1e-5, atol=1e-5, options=opts)
    assert sol.stats.nfe == func.calls
    assert func.calls > 0
    if method in FIXED:
        stages = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}[method]
        assert sol.stats.n_accepted == 10 and sol.stats.n_rejected == 0
        assert func.calls == stages * 10, "a fixed-step method should cost exactly stages x steps"


def test_nfe_counts_the_extra_calls_of_cubic_interpolation():
    func = CountingFunc(lambda t, y: -y)
    sol = neuralode.solve(func, torch.ones(1, dtype=F64), torch.linspace(0, 1, 9, dtype=F64), method="rk4",
                          options={"step_size": 0.25, "interp": "cubic"})
    assert sol.stats.nfe == func.calls


def test_stats_final_step_is_the_last_step_size():
    func = CountingFunc(exponential_decay().func)
    sol = neuralode.solve(func, torch.ones(1, dtype=F64), _t(0, 3), rtol=1e-6, atol=1e-8)
    last_accepted_dt = func.accepted[-1][1]
    assert float(sol.stats.final_step) > 0
    # The last step may have been clipped to t1; final_step is either it or the proposal after it.
    assert float(sol.stats.final_step) >= last_accepted_dt * 0.1
    assert sol.ts.shape == (2,)
