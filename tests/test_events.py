"""Events: location to tolerance, implicit-function-theorem gradients, torchdiffeq's event API,
several events with directions, terminal or not, and per-sample events on batches.

The bouncing ball has closed forms: dropped from height ``h`` under gravity ``g`` with
restitution ``e``, it first lands at ``T1 = sqrt(2h/g)`` and bounce ``n`` comes at
``T_n = T1 (1 + 2e + ... + 2e^(n-1))``.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import neuralode
from neuralode import Event, odeint, odeint_adjoint, odeint_event, solve
from neuralode.events import bracket_root

DT = torch.float64


class Ball(nn.Module):
    """Free fall: state (height, velocity), gravity a parameter."""

    def __init__(self, gravity: float = 9.81):
        super().__init__()
        self.gravity = nn.Parameter(torch.tensor(gravity, dtype=DT))

    def forward(self, t, state):
        x, v = state
        return v, -self.gravity * torch.ones_like(x)


def ground(t, state):
    return state[0]


def bounce_times(interface, h, g, e, n_bounces, **kwargs):
    """Bounce times by chaining odeint_event, as torchdiffeq's bouncing-ball example does."""
    ball = Ball(float(g))
    state = (h.reshape(()), torch.zeros((), dtype=DT))
    t0 = torch.zeros((), dtype=DT)
    times = []
    for _ in range(n_bounces):
        t0, solution = odeint_event(ball, state, t0, event_fn=ground, odeint_interface=interface,
                                    rtol=1e-10, atol=1e-12, **kwargs)
        x, v = (s[-1] for s in solution)
        state = (x, -e * v)
        times.append(t0)
    return times, ball


def closed_form(h, g, e, n):
    t1 = math.sqrt(2 * h / g)
    return t1 * (1 + sum(2 * e ** k for k in range(1, n)))


# --------------------------------------------------------------------------- bouncing ball

@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_bouncing_ball_bounce_times_match_closed_form(interface):
    h, g, e = 10.0, 9.81, 0.7
    times, _ = bounce_times(interface, torch.tensor(h, dtype=DT), torch.tensor(g, dtype=DT), e, 4)
    for n, t in enumerate(times, start=1):
        assert abs(t.item() - closed_form(h, g, e, n)) < 1e-6


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_bouncing_ball_bounce_time_gradients_match_closed_form_and_finite_differences(interface):
    h0, g0, e0, n = 10.0, 9.81, 0.7, 3
    h = torch.tensor(h0, dtype=DT, requires_grad=True)
    e = torch.tensor(e0, dtype=DT, requires_grad=True)
    times, ball = bounce_times(interface, h, torch.tensor(g0, dtype=DT), e, n)
    dh, dg, de = torch.autograd.grad(times[-1], (h, ball.gravity, e))
    t_n = closed_form(h0, g0, e0, n)
    exact = {"h": t_n / (2 * h0), "g": -t_n / (2 * g0), "e": math.sqrt(2 * h0 / g0) * (2 + 4 * e0)}
    for name, got in (("h", dh), ("g", dg), ("e", de)):
        assert abs(float(got) - exact[name]) < 1e-5 * max(1.0, abs(exact[name])), name

    def fd(name, eps=1e-5):
        vals = {"h": h0, "g": g0, "e": e0}
        out = []
        for s in (1, -1):
            v = dict(vals)
            v[name] += s * eps
            with torch.no_grad():
                ts, _ = bounce_times(odeint, torch.tensor(v["h"], dtype=DT), torch.tensor(v["g"], dtype=DT), v["e"], n)
            out.append(float(ts[-1]))
        return (out[0] - out[1]) / (2 * eps)

    for name, got in (("h", dh), ("g", dg), ("e", de)):
        assert abs(float(got) - fd(name)) < 1e-5 * max(1.0, abs(exact[name])), name


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_event_time_gradient_reaches_t0_and_event_function_parameters(interface):
    ball = Ball()
    level = torch.tensor(2.0, dtype=DT, requires_grad=True)
    t0 = torch.tensor(0.5, dtype=DT, requires_grad=True)
    state = (torch.tensor(10.0, dtype=DT), torch.zeros((), dtype=DT))
    event_t, _ = odeint_event(ball, state, t0, event_fn=lambda t, s: s[0] - level, odeint_interface=interface,
                              rtol=1e-10, atol=1e-12)
    assert abs(event_t.item() - (0.5 + math.sqrt(2 * 8.0 / 9.81))) < 1e-8
    d_t0, d_level = torch.autograd.grad(event_t, (t0, level))
    assert abs(float(d_t0) - 1.0) < 1e-7  # the event moves with the start
    assert abs(float(d_level) - (-1 / math.sqrt(2 * 9.81 * 8.0))) < 1e-7  # dT/dlevel = -1/|v(T)|


def test_event_state_gradient_includes_the_motion_of_the_event_time():
    # At the landing, the velocity is -sqrt(2 g h): its derivative in h is -sqrt(g / (2h)).
    h = torch.tensor(10.0, dtype=DT, requires_grad=True)
    _, solution = odeint_event(Ball(), (h, torch.zeros((), dtype=DT)), torch.tensor(0.0, dtype=DT),
                               event_fn=ground, rtol=1e-10, atol=1e-12)
    dx, dv = (torch.autograd.grad(s[-1], h, retain_graph=True)[0] for s in solution)
    assert abs(float(dv) + math.sqrt(9.81 / 20.0)) < 1e-7
    assert abs(float(dx)) < 1e-7  # the height at the event stays zero


def test_odeint_event_mode_returns_torchdiffeq_shapes_and_stops_at_any_element():
    y0 = torch.tensor([1.0, 2.0], dtype=DT)
    t = torch.tensor([0.0, 0.1], dtype=DT)  # t[1] is not a limit: the event lies far beyond
    event_t, solution = odeint(lambda t, y: -torch.ones_like(y), y0, t, event_fn=lambda t, y: y)
    assert solution.shape == (2, 2) and event_t.shape == () and event_t.dtype == DT
    assert abs(float(event_t) - 1.0) < 1e-9  # the first element reaches zero first
    assert torch.allclose(solution[0], y0) and abs(float(solution[1, 1]) - 1.0) < 1e-9


def test_event_mode_matches_torchdiffeq():
    import torchdiffeq  # the test extra installs it: the reference this test compares with

    ball = Ball()
    state = (torch.tensor(3.0, dtype=DT, requires_grad=True), torch.tensor(1.0, dtype=DT))
    t0 = torch.tensor(0.0, dtype=DT)
    ours_t, ours = odeint_event(ball, state, t0, event_fn=ground, rtol=1e-9, atol=1e-11)
    theirs_t, theirs = torchdiffeq.odeint_event(ball, state, t0, event_fn=ground, rtol=1e-9, atol=1e-11)
    assert abs(ours_t.item() - theirs_t.item()) < 1e-8
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-7)
    ours_grad = torch.autograd.grad(ours_t, (state[0], ball.gravity))
    theirs_grad = torch.autograd.grad(theirs_t, (state[0], ball.gravity))
    for a, b in zip(ours_grad, theirs_grad):
        assert abs(float(a) - float(b)) < 1e-6


def test_reverse_time_event_is_located_and_differentiated():
    # At rest at height h at t=0, so the ball was on the ground at t = -sqrt(2h/g).
    h = torch.tensor(5.0, dtype=DT, requires_grad=True)
    state = (h, torch.zeros((), dtype=DT))
    event_t, solution = odeint_event(Ball(), state, torch.tensor(0.0, dtype=DT), event_fn=ground, reverse_time=True,
                                     rtol=1e-10, atol=1e-12)
    assert abs(event_t.item() + math.sqrt(2 * 5.0 / 9.81)) < 1e-8
    (dh,) = torch.autograd.grad(event_t, h)
    assert abs(float(dh) + 1 / math.sqrt(2 * 9.81 * 5.0)) < 1e-7
    assert abs(float(solution[1][-1]) - math.sqrt(2 * 9.81 * 5.0)) < 1e-7  # it was rising then


def test_reverse_time_solve_records_events_in_user_time():
    # Backward from y(10) = 0 with y' = cos t: y(t) = sin t - sin 10, zero at 5π - 10 and 10 - 2π.
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.tensor([10.0, 0.0], dtype=DT), events=Event(lambda t, y: y[0]), rtol=1e-10, atol=1e-12)
    assert sol.events.t.tolist() == pytest.approx([5 * math.pi - 10, 10 - 2 * math.pi], abs=1e-8)


# --------------------------------------------------------------------------- solve(events=...)

def test_non_terminal_event_records_every_zero_of_sin_on_0_10():
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.linspace(0, 10, 11, dtype=DT), events=[Event(lambda t, y: y[0])], rtol=1e-10, atol=1e-12)
    assert sol.ys.shape == (11, 1) and sol.success
    assert sol.events.t.tolist() == pytest.approx([math.pi, 2 * math.pi, 3 * math.pi], abs=1e-8)
    assert sol.events.which.tolist() == [0, 0, 0]
    assert sol.events.y.shape == (3, 1) and float(sol.events.y.abs().max()) < 1e-8
    assert int(sol.events.stop_which) == -1 and float(sol.events.stop_t) == 10.0


def test_event_directions_select_rising_or_falling_crossings():
    events = [Event(lambda t, y: y[0], direction="rising"), Event(lambda t, y: y[0], direction=-1)]
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.tensor([0.0, 10.0], dtype=DT), events=events, rtol=1e-10, atol=1e-12)
    assert sol.events.times(0).tolist() == pytest.approx([2 * math.pi], abs=1e-8)
    assert sol.events.times(1).tolist() == pytest.approx([math.pi, 3 * math.pi], abs=1e-8)
    assert sol.events.which.tolist() == [1, 0, 1]


def test_terminal_event_ends_the_solve_and_truncates_outputs_after_recording_earlier_events():
    events = [Event(lambda t, y: y[0]), Event(lambda t, y: t - 7.0, terminal=True)]
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.linspace(0, 10, 11, dtype=DT), events=events, rtol=1e-10, atol=1e-12)
    assert sol.ts.tolist() == [float(i) for i in range(8)] and sol.ys.shape == (8, 1)
    assert torch.allclose(sol.ys[:, 0], torch.sin(sol.ts), atol=1e-8)
    assert sol.events.which.tolist() == [0, 0, 1]
    assert abs(float(sol.events.stop_t) - 7.0) < 1e-12 and int(sol.events.stop_which) == 1
    assert abs(float(sol.events.stop_y[0]) - math.sin(7.0)) < 1e-8
    assert abs(sol.t_reached - 7.0) < 1e-12


def test_scipy_style_callables_with_terminal_and_direction_attributes():
    def rising(t, y):
        return y[0]
    rising.terminal = True
    rising.direction = 1
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.tensor([0.0, 10.0], dtype=DT), events=[rising], rtol=1e-10, atol=1e-12)
    assert abs(float(sol.events.stop_t) - 2 * math.pi) < 1e-8


BALL_HEIGHTS = [1.0, 2.5, 5.0, 5.001, 10.0]  # two land within one step


def batch_ball(t, y):
    return torch.stack([y[:, 1], torch.full_like(y[:, 0], -9.81)], dim=1)


@pytest.mark.parametrize("gradient", ["direct", "adjoint", "checkpoint"])
def test_per_sample_events_stop_each_ball_at_its_own_time_like_solving_each_alone(gradient):
    y0 = torch.tensor([[h, 0.0] for h in BALL_HEIGHTS], dtype=DT, requires_grad=True)
    t = torch.linspace(0, 2, 9, dtype=DT)
    kw = dict(rtol=1e-10, atol=1e-12, events=[Event(lambda t, y: y[:, 0], terminal=True)])
    params = {} if gradient == "direct" else {"gradient": neuralode.adjoint.Adjoint(params=()) if gradient ==
                                              "adjoint" else neuralode.adjoint.Checkpoint(params=())}
    sol = solve(batch_ball, y0, t, per_sample_events=True, **kw, **params)
    stop_t = sol.events.stop_t
    n_balls = len(BALL_HEIGHTS)
    assert stop_t.shape == (n_balls,) and sol.events.stop_which.tolist() == [0] * n_balls
    assert stop_t.tolist() == pytest.approx([math.sqrt(2 * h / 9.81) for h in BALL_HEIGHTS], abs=1e-8)
    assert sol.ys.shape == (9, n_balls, 2)
    for b, h in enumerate(BALL_HEIGHTS):
        alone = solve(batch_ball, y0[b:b + 1].detach(), t, **kw)
        n = alone.ys.shape[0]
        assert torch.allclose(sol.ys[:n, b], alone.ys[:, 0], atol=1e-8)
        assert torch.allclose(sol.ys[n:, b], alone.events.stop_y[0].expand(9 - n, 2), atol=1e-8)  # frozen
        assert abs(float(alone.events.stop_t) - float(stop_t[b])) < 1e-9
    (grad,) = torch.autograd.grad(stop_t.sum(), y0)
    expected = [1 / math.sqrt(2 * 9.81 * h) for h in BALL_HEIGHTS]
    assert grad[:, 0].tolist() == pytest.approx(expected, abs=1e-7)
    assert grad[:, 1].tolist() == pytest.approx([1 / 9.81] * n_balls, abs=1e-7)


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_per_sample_event_gradients_of_the_whole_trajectory_agree_with_direct(gradient):
    class Drag(nn.Module):  # a falling ball with quadratic drag: no closed form, samples independent
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor(0.05, dtype=DT))

        def forward(self, t, y):
            return torch.stack([y[:, 1], -9.81 + self.c * y[:, 1] ** 2], dim=1)

    grads = []
    for g in ("direct", gradient):
        field = Drag()
        y0 = torch.tensor([[h, 0.0] for h in BALL_HEIGHTS], dtype=DT, requires_grad=True)
        sol = solve(field, y0, torch.linspace(0, 2, 9, dtype=DT), events=[Event(lambda t, y: y[:, 0], terminal=True)],
                    per_sample_events=True, gradient=g, rtol=1e-10, atol=1e-12)
        loss = sol.ys.pow(2).sum() + sol.events.stop_t.sum() + sol.events.stop_y[:, 1].sum()
        grads.append(torch.autograd.grad(loss, (y0, field.c)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_per_sample_events_on_a_tuple_state():
    heights = torch.tensor(BALL_HEIGHTS, dtype=DT, requires_grad=True)
    state = (heights, torch.zeros_like(heights))
    sol = solve(Ball(), state, torch.linspace(0, 2, 5, dtype=DT), events=[Event(ground, terminal=True)],
                per_sample_events=True, rtol=1e-10, atol=1e-12)
    exact = torch.sqrt(2 * heights.detach() / 9.81)
    assert torch.allclose(sol.events.stop_t, exact, atol=1e-9)
    assert isinstance(sol.events.stop_y, tuple) and float(sol.events.stop_y[0].abs().max()) < 1e-8
    assert torch.allclose(sol.events.stop_y[1], -9.81 * exact, atol=1e-7)  # velocity at landing
    assert torch.allclose(sol.ys[1][-1], sol.events.stop_y[1], atol=1e-12)  # frozen at the event
    (grad,) = torch.autograd.grad(sol.events.stop_t.sum(), heights)
    assert torch.allclose(grad, 1 / torch.sqrt(2 * 9.81 * heights.detach()), atol=1e-7)


def test_per_sample_non_terminal_events_are_recorded_with_their_sample():
    w = torch.tensor([1.0, 2.2, 3.1], dtype=DT)  # no two samples cross at once
    oscillators = lambda t, y: torch.stack([y[:, 1], -w ** 2 * y[:, 0]], dim=1)  # noqa: E731
    y0 = torch.tensor([[1.0, 0.0]] * 3, dtype=DT)
    sol = solve(oscillators, y0, torch.tensor([0.0, 4.0], dtype=DT), events=[Event(lambda t, y: y[:, 0])],
                per_sample_events=True, rtol=1e-10, atol=1e-12)
    expected = sorted(((k + 0.5) * math.pi / float(wb), b) for b, wb in enumerate(w) for k in range(12)
                      if (k + 0.5) * math.pi / float(wb) < 4.0)
    assert sol.events.t.tolist() == pytest.approx([t for t, _ in expected], abs=1e-8)
    assert sol.events.sample.tolist() == [b for _, b in expected]
    assert sol.events.y.shape == (len(expected), 2) and float(sol.events.y[:, 0].abs().max()) < 1e-8
    assert sol.events.stop_which.tolist() == [-1, -1, -1] and sol.events.stop_t.tolist() == [4.0] * 3


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
def test_event_gradients_agree_between_gradient_strategies(gradient):
    class Damped(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Parameter(torch.tensor(0.3, dtype=DT))

        def forward(self, t, y):
            return torch.stack([y[1], -y[0] - self.k * y[1]])

    events = [Event(lambda t, y: y[0]), Event(lambda t, y: y[1] + 0.5, terminal=True, direction="rising")]
    grads = []
    for g in ("direct", gradient):
        field = Damped()
        y0 = torch.tensor([1.0, 0.0], dtype=DT, requires_grad=True)
        sol = solve(field, y0, torch.linspace(0, 20, 5, dtype=DT), events=events, gradient=g, rtol=1e-10, atol=1e-12)
        loss = sol.events.t.sum() + sol.events.y.pow(2).sum() + sol.events.stop_y.sum()
        grads.append(torch.autograd.grad(loss, (y0, field.k)))
        assert len(sol.events.t) >= 2
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_tuple_state_events_and_fixed_step_event_mode():
    state = (torch.tensor(5.0, dtype=DT), torch.zeros((), dtype=DT))
    t = torch.tensor([0.0, 1.0], dtype=DT)
    exact = math.sqrt(2 * 5.0 / 9.81)
    for interp, tol in (("cubic", 1e-10), ("linear", 1e-5)):  # rk4 and cubic Hermite are exact on a parabola
        event_t, solution = odeint(Ball(), state, t, event_fn=ground, method="rk4",
                                   options={"step_size": 0.01, "interp": interp})
        assert isinstance(solution, tuple) and solution[0].shape == (2,)
        assert abs(float(event_t) - exact) < tol, interp
    with pytest.raises(ValueError, match="step_size"):
        odeint(Ball(), state, t, event_fn=ground, method="rk4")


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_events_on_scipy_solver(solver):
    options = {"solver": solver}
    events = [Event(lambda t, y: y[0]), Event(lambda t, y: t - 7.5, terminal=True)]
    sol = solve(lambda t, y: torch.cos(t) * torch.ones_like(y), torch.zeros(1, dtype=DT),
                torch.linspace(0, 10, 11, dtype=DT), events=events, method="scipy_solver", options=options,
                rtol=1e-8, atol=1e-10)
    assert sol.events.t.tolist() == pytest.approx([math.pi, 2 * math.pi, 7.5], abs=1e-6)
    assert sol.events.which.tolist() == [0, 0, 1] and sol.ts.tolist()[-1] == 7.0
    event_t, solution = odeint(lambda t, y: torch.stack([y[1], -9.81 * torch.ones_like(y[0])]),
                               torch.tensor([10.0, 0.0], dtype=DT), torch.tensor([0.0, 1.0], dtype=DT),
                               event_fn=lambda t, y: y[0], method="scipy_solver", options=options,
                               rtol=1e-8, atol=1e-10)
    assert abs(event_t.item() - math.sqrt(2 * 10.0 / 9.81)) < 1e-6 and solution.shape == (2, 2)


# --------------------------------------------------------------------------- pieces and errors

def test_bracket_root_converges_to_ulps_and_keeps_the_bracket():
    a, b = bracket_root(lambda x: math.cos(x), 0.0, 3.0, 1.0, math.cos(3.0))
    assert math.cos(a) > 0 >= math.cos(b) and b - a < 1e-14 and abs(b - math.pi / 2) < 1e-14
    a, b = bracket_root(lambda x: 1.0 if x < 0.3 else 0.0, 0.0, 1.0, 1.0, 0.0)  # a step: bisection safeguard
    assert a < 0.3 <= b and b - a < 1e-14


def test_event_arguments_are_checked(monkeypatch):
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match="exactly 2 times"):
        odeint(f, y0, torch.linspace(0, 1, 3, dtype=DT), event_fn=lambda t, y: y)
    with pytest.raises(ValueError, match="direction"):
        Event(lambda t, y: y, direction="up")
    with pytest.raises(ValueError, match="per_sample_events=True needs events"):
        solve(f, y0, torch.tensor([0.0, 1.0], dtype=DT), per_sample_events=True)
    with pytest.raises(ValueError, match="first dimension"):
        solve(f, y0, torch.tensor([0.0, 1.0], dtype=DT), events=[lambda t, y: y.sum()], per_sample_events=True)
    monkeypatch.setattr(neuralode.events.EventSolve, "MAX_FIXED_STEPS", 200)  # torchdiffeq's 20000 takes long
    with pytest.raises(RuntimeError, match="no event within 300 fixed steps"):  # windows of 1, then 2 time units
        odeint(f, y0, torch.tensor([0.0, 1.0], dtype=DT), event_fn=lambda t, y: y, method="euler",
               options={"step_size": 0.01})
    with pytest.raises(neuralode.SolverError, match="max_steps_reached|step budget"):
        odeint(f, y0, torch.tensor([0.0, 1.0], dtype=DT), event_fn=lambda t, y: y, options={"max_num_steps": 50})
    with pytest.raises(TypeError, match="must return a real tensor"):
        solve(f, y0, torch.tensor([0.0, 1.0], dtype=DT), events=[lambda t, y: 1.0])
