"""Per-sample stepping uses the shared loop's step-control rules (neuralode.control), element by element.

The per-sample loop once kept its own vectorised copy of the first-step rule, the PI controller and
the end-of-span step spreading; a change to neuralode.control then left per-sample solves
different from solo solves. These tests compare the two paths row by row, also with control's
constants changed, so a copy that stops following control fails here.
"""
import itertools
import math

import pytest
import torch

import neuralode
from neuralode import control
from neuralode.persample import _initial_step, solve_per_sample

F64 = torch.float64


def _vdp_rows(mu):
    def field(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], -1)

    return field


def test_first_step_of_every_row_equals_the_shared_loops_first_step_of_that_row_alone():
    # rows: ordinary, large, a zero state (d0 < 1e-5), a zero field (d1 = d2 = 0), a tiny field
    y0 = torch.tensor([[2.0, 0.0], [300.0, -40.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1e-12]], dtype=F64)
    rate = torch.tensor([1.0, 3.0, 1.0, 0.0, 1e-9], dtype=F64)

    def field(rate):
        def rows(t, y):
            return rate[:, None] * torch.stack([y[:, 1] + 1e-3 * (rate > 0.5) * t, -y[:, 0]], 1)

        return rows

    rows = field(rate)
    t0 = torch.zeros(5, dtype=F64)
    for order, (rtol, atol) in itertools.product((2, 4, 5), ((1e-6, 1e-8), (1e-3, 1e-3))):
        h = _initial_step(rows, t0, y0, rows(t0, y0), order, rtol, atol)
        for b in range(5):
            def alone(t, y, n, row=field(rate[b:b + 1])):
                return row(torch.full((1,), float(t), dtype=F64), y[None])[0]

            expected = control.initial_step(alone, 0.0, y0[b], alone(0.0, y0[b], 0), order, rtol, atol, control.rms_norm)
            assert math.isclose(float(h[b]), expected, rel_tol=1e-12), (order, rtol, b, float(h[b]), expected)


def test_controller_factors_on_tensors_equal_the_scalar_controllers_element_by_element():
    ratios = [0.0, 1e-320, 1e-9, 0.3, 0.999, 1.0, 1.7, 80.0, math.inf, math.nan]
    previous = [1e-6, 0.5, 2.0]
    cases = list(itertools.product(ratios, (True, False), previous, (True, False), (True, False)))
    r, acc, prev, last, hist = (torch.tensor(column, dtype=F64 if i in (0, 2) else torch.bool)
                                for i, column in enumerate(zip(*cases)))
    for order, (safety, ifactor, dfactor) in itertools.product((2, 5, 8), ((0.9, 10.0, 0.2), (0.8, 5.0, 0.3))):
        pi = control.PIController(order, safety, ifactor, dfactor)
        factors, remembered = pi.factor(r, acc, prev, last, hist), pi.remember(r, acc, prev)
        for i, case in enumerate(cases):
            assert float(factors[i]) == pi.factor(*case), (order, case)
            expected = pi.remember(case[0], case[1], case[2])
            assert float(remembered[i]) == expected or (math.isnan(expected) and math.isnan(float(remembered[i])))


def test_propose_keeps_the_controllers_documented_decisions():
    pi = control.PIController(5)
    assert pi.propose(1.0, math.nan, False) == pytest.approx(0.2)  # non-finite error: dfactor
    assert pi.propose(1.0, 0.0, True) == 1.0  # zero error, but right after a rejection: no growth
    assert pi.propose(1.0, 0.0, True) == 10.0  # zero error: ifactor
    expected = 0.9 * 0.5 ** -(1 / 5 - 0.75 * 0.04) * 1e-4 ** 0.04  # PI with the previous ratio floored at 1e-4
    assert pi.propose(1.0, 0.5, True) == pytest.approx(expected, rel=1e-15)
    assert pi.propose(1.0, 3.0, False) < 1.0


def test_step_spreading_on_tensors_equals_the_scalar_rule_element_by_element():
    t = [0.0, 0.5, 0.9, 0.999]
    h = [1e-3, 0.3, 0.34, 0.5, 0.499, 1.0, 2.0]
    cases = list(itertools.product(t, h))
    tt, hh = (torch.tensor(column, dtype=F64) for column in zip(*cases))
    for min_step in (0.0, 0.2):
        steps, lands = control.step_towards(tt, hh, torch.ones_like(tt), min_step)
        for i, (t_i, h_i) in enumerate(cases):
            step, land = control.step_towards(t_i, h_i, 1.0, min_step)
            assert (float(steps[i]), bool(lands[i])) == (step, land), (t_i, h_i, min_step)


def _call_times(method, mu, t, rtol):
    """The times each row's field is evaluated at: per-sample on the batch, and solo per row."""
    batch = []

    def rows(tt, y):
        batch.append(tt.clone())
        return _vdp_rows(mu)(tt, y)

    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    solve_per_sample(rows, y0.expand(len(mu), 2), t, method=method, rtol=rtol, atol=rtol)
    per_sample = torch.stack(batch)
    out = []
    for b in range(len(mu)):
        solo = []

        def one(tt, y, m=float(mu[b])):
            solo.append(float(tt))
            return torch.stack([y[1], m * (1 - y[0] * y[0]) * y[1] - y[0]])

        neuralode.solve(one, y0, t, method=method, rtol=rtol, atol=rtol)
        out.append((per_sample[:len(solo), b].tolist(), solo))
    return out


@pytest.mark.parametrize("constants", [{}, {"START_CONSTANT": 0.01, "SPREAD_STEPS": 1, "FIRST_STEP_I": True},
                                       {"START_CONSTANT": 0.5, "SPREAD_STEPS": 4},
                                       {"START_CONSTANT": 0.5, "OBSERVED_ORDER": True}])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_each_row_is_evaluated_at_the_times_of_its_solo_solve_whatever_controls_constants(monkeypatch, method,
                                                                                          constants):
    for name, value in constants.items():
        monkeypatch.setattr(control, name, value)
    mu = torch.tensor([0.3, 1.0, 4.0], dtype=F64)
    for per_sample, solo in _call_times(method, mu, torch.linspace(0, 4, 5, dtype=F64), 1e-6):
        assert len(per_sample) == len(solo)
        # the same steps, up to the summation order of the error norms (relative 1e-12 per step)
        torch.testing.assert_close(torch.tensor(per_sample, dtype=F64), torch.tensor(solo, dtype=F64), rtol=0, atol=1e-9)
