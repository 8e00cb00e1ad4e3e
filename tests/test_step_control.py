"""The step-size controller's rules (neuralode.control.PIController): the observed-order cut
after a second rejected first step (control.OBSERVED_ORDER), on floats and elementwise."""
from __future__ import annotations

import math

import torch

import neuralode
from neuralode import control
from neuralode.control import PIController, observed_order_factor

F64 = torch.float64


def test_a_second_rejected_first_step_is_cut_with_the_order_the_error_showed(monkeypatch):
    monkeypatch.setattr(control, "OBSERVED_ORDER", True)
    # error ∝ h²: 16 at h = 1, 4 at h = 0.5, so the next step aims at 0.9 with q = 2
    controller = PIController(order=8)
    controller.propose(1.0, 16.0, False)
    h = controller.propose(0.5, 4.0, False)
    assert math.isclose(h, 0.5 * 0.9 * 4.0 ** -0.5)
    assert 4.0 * (h / 0.5) ** 2 <= 1.0  # that step is accepted where the error really falls like h²
    pi = 0.5 * 0.9 * 4.0 ** -controller.alpha
    assert 4.0 * (pi / 0.5) ** 2 > 1.0  # the PI factor (which assumes h⁸) would be rejected again


def test_with_the_rule_off_the_pi_factor_cuts(monkeypatch):
    monkeypatch.setattr(control, "OBSERVED_ORDER", False)
    controller = PIController(order=8)
    controller.propose(1.0, 16.0, False)
    assert math.isclose(controller.propose(0.5, 4.0, False), 0.5 * 0.9 * 4.0 ** -controller.alpha)


def test_the_observed_order_is_clamped_to_the_methods_and_the_cut_to_dfactor():
    # an error that falls faster than h^order is taken as h^order
    assert math.isclose(observed_order_factor(0.7, 0.5, 2.0, 1.0, 2.0 * 2 ** 12, 5, 0.9, 0.2), 0.9 * 2.0 ** -0.2)
    # a slowly falling error asks for a cut beyond dfactor: dfactor it is
    assert observed_order_factor(0.7, 0.5, 100.0, 1.0, 150.0, 5, 0.9, 0.2) == 0.2
    # no estimate when the error did not fall or the step did not shrink: the controller's factor
    assert observed_order_factor(0.7, 0.5, 3.0, 1.0, 2.0, 5, 0.9, 0.2) == 0.7
    assert observed_order_factor(0.7, 1.0, 2.0, 1.0, 4.0, 5, 0.9, 0.2) == 0.7


def test_after_an_accepted_step_rejections_use_the_pi_factor_again(monkeypatch):
    monkeypatch.setattr(control, "OBSERVED_ORDER", True)
    controller = PIController(order=5)
    controller.propose(1.0, 16.0, False)
    controller.propose(0.5, 0.5, True)
    controller.propose(0.5, 16.0, False)
    h = controller.propose(0.25, 4.0, False)
    assert math.isclose(h, 0.25 * max(0.2, 0.9 * 4.0 ** -controller.alpha))


def test_a_relu_field_rejects_fewer_first_steps_and_keeps_its_accuracy(monkeypatch):
    monkeypatch.setattr(control, "OBSERVED_ORDER", True)
    # A ReLU network's field: dopri8's error falls like h^2.3, not h^8, over the first
    # attempts (the ODE-Net block's behaviour in the work–precision benchmark).
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(F64)
    y0 = torch.randn(16, 8, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    rejected_at_start = []

    class Field(torch.nn.Module):
        def forward(self, t, y):
            return net(y)

        def callback_reject_step(self, t0, y0, dt):
            if float(t0) == 0.0:
                rejected_at_start.append(float(dt))

    with torch.no_grad():
        sol = neuralode.solve(Field(), y0, t, method="dopri8", rtol=1e-6, atol=1e-6)
        ref = neuralode.odeint(lambda t, y: net(y), y0, t, method="dopri8", rtol=1e-11, atol=1e-11)[-1]
    # the PI factor alone cut the first step 5 times in a row here (0.207, 0.154, 0.135, 0.118, 0.101)
    assert len(rejected_at_start) <= 3, rejected_at_start
    error = float(((sol.ys[-1] - ref) / (1e-6 + 1e-6 * ref.abs())).pow(2).mean().sqrt())
    assert error < 10.0


def test_the_elementwise_factor_on_tensors_equals_the_float_controller(monkeypatch):
    monkeypatch.setattr(control, "OBSERVED_ORDER", True)
    # per-sample stepping holds one controller state per row and calls factor() on tensors
    attempts = [(1.0, 16.0, False), (0.5, 4.0, False), (0.2, 0.5, True), (0.3, 2.0, False), (0.25, 1.5, False)]
    controller = PIController(order=8)
    rows = PIController(order=8)
    prev = torch.tensor([rows.previous_ratio], dtype=F64)
    last = torch.tensor([False])
    history = torch.tensor([False])
    rej_h = torch.zeros(1, dtype=F64)
    rej_r = torch.zeros(1, dtype=F64)
    for h, ratio, accepted in attempts:
        expected = controller.propose(h, ratio, accepted) / h
        hh, rr, acc = torch.tensor([h], dtype=F64), torch.tensor([ratio], dtype=F64), torch.tensor([accepted])
        got = rows.factor(rr, acc, prev, last, history, h=hh, rejected_h=rej_h, rejected_ratio=rr * 0 + rej_r)
        assert math.isclose(float(got), expected, rel_tol=1e-12)
        prev = rows.remember(rr, acc, prev)
        history = history | acc
        last = ~acc
        rej_h, rej_r = rows.remember_rejection(hh, rr, acc)
