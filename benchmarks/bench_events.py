"""Events: the bouncing ball of torchdiffeq's example, against torchdiffeq, and per-sample events.

1. **Bouncing ball** — dropped from 10 m (g = 9.81, restitution 0.7), eight bounces chained with
   ``odeint_event`` (default tolerances rtol=1e-7, atol=1e-9, dopri5, float64), then the sum of the
   bounce times backpropagated to the height, gravity and restitution. neuralode and torchdiffeq
   with ``odeint`` and with ``odeint_adjoint`` as the interface. Printed: time of forward +
   backward (median, interleaved), field evaluations, and the largest bounce-time error against
   the closed form ``T_n = T1 (1 + 2e + ... + 2e^(n-1))`` and of the gradient against its closed
   form. torchdiffeq needs its example's 1e-7 nudge of the height after each bounce (it fires at
   once on a start on the ground); ours runs with and without it.
2. **Per-sample events** — 64 balls from heights 1..10 m: one ``solve(..., per_sample_events=True)``
   against 64 separate solves, each stopping at its own landing. Printed: time ratio and NFE.

Usage: ``python benchmarks/bench_events.py [--repeats N]``. One intra-op thread.
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import neuralode
from _common import environment, interleaved_medians, setup

try:
    import torchdiffeq
except ImportError:  # pragma: no cover - optional peer
    torchdiffeq = None

DT = torch.float64
H, G, E, BOUNCES = 10.0, 9.81, 0.7, 8


class Ball(nn.Module):
    def __init__(self):
        super().__init__()
        self.gravity = nn.Parameter(torch.tensor(G, dtype=DT))
        self.nfe = 0

    def forward(self, t, state):
        self.nfe += 1
        x, v = state
        return v, -self.gravity * torch.ones_like(x)


def ground(t, state):
    return state[0]


def bounce(lib, interface_name, nudge):
    """One forward + backward; returns (bounce times, grads, nfe)."""
    ball = Ball()
    h = torch.tensor(H, dtype=DT, requires_grad=True)
    e = torch.tensor(E, dtype=DT, requires_grad=True)
    interface = getattr(lib, interface_name)
    state = (h, torch.zeros((), dtype=DT))
    t0 = torch.zeros((), dtype=DT)
    times = []
    for _ in range(BOUNCES):
        t0, sol = lib.odeint_event(ball, state, t0, event_fn=ground, odeint_interface=interface)
        x, v = (s[-1] for s in sol)
        state = (x + 1e-7 if nudge else x, -e * v)
        times.append(t0)
    total = torch.stack(times).sum()
    grads = torch.autograd.grad(total, (h, ball.gravity, e))
    return [t.item() for t in times], [g.item() for g in grads], ball.nfe


def closed_form():
    t1 = math.sqrt(2 * H / G)
    times = [t1 * (1 + sum(2 * E ** k for k in range(1, n))) for n in range(1, BOUNCES + 1)]
    total = sum(times)
    dt1_de = [t1 * sum(2 * k * E ** (k - 1) for k in range(1, n)) for n in range(1, BOUNCES + 1)]
    return times, [total / (2 * H), -total / (2 * G), sum(dt1_de)]


def ball_section(repeats: int) -> None:
    exact_t, exact_g = closed_form()
    runs = {}
    for interface in ("odeint", "odeint_adjoint"):
        runs[f"neuralode {interface}"] = (neuralode, interface, False)
        runs[f"neuralode {interface} +1e-7"] = (neuralode, interface, True)
        if torchdiffeq is not None:
            runs[f"torchdiffeq {interface} +1e-7"] = (torchdiffeq, interface, True)
    print(f"\n1. bouncing ball, {BOUNCES} bounces, forward + backward (dopri5, rtol=1e-7, atol=1e-9)")
    timings = interleaved_medians({name: (lambda a=args: bounce(*a)) for name, args in runs.items()}, repeats)
    print(f"{'':34s} {'wall ms':>9s} {'CPU ms':>9s} {'NFE':>6s} {'max |ΔT|':>10s} {'max grad rel err':>17s}")
    for name, args in runs.items():
        times, grads, nfe = bounce(*args)
        dt = max(abs(a - b) for a, b in zip(times, exact_t))
        dg = max(abs(a - b) / abs(b) for a, b in zip(grads, exact_g))
        tm = timings[name]
        print(f"{name:34s} {tm.wall * 1e3:9.1f} {tm.cpu * 1e3:9.1f} {nfe:6d} {dt:10.2e} {dg:17.2e}")
    if torchdiffeq is not None:
        for interface in ("odeint", "odeint_adjoint"):
            ours, theirs = timings[f"neuralode {interface}"], timings[f"torchdiffeq {interface} +1e-7"]
            print(f"ratio ours/torchdiffeq ({interface}): wall {ours.wall / theirs.wall:.2f}, "
                  f"CPU {ours.cpu / theirs.cpu:.2f}")


def batch_section(repeats: int, n: int = 64) -> None:
    heights = torch.linspace(1.0, 10.0, n, dtype=DT)
    y0 = torch.stack([heights, torch.zeros_like(heights)], dim=1)
    t = torch.tensor([0.0, 2.0], dtype=DT)
    counter = [0]

    def balls(t, y):
        counter[0] += 1
        return torch.stack([y[:, 1], torch.full_like(y[:, 0], -G)], dim=1)

    event = [neuralode.Event(lambda t, y: y[:, 0], terminal=True)]

    def batched():
        return neuralode.solve(balls, y0, t, events=event, per_sample_events=True).events.stop_t

    def separate():
        return torch.stack([neuralode.solve(balls, y0[b:b + 1], t, events=event).events.stop_t for b in range(n)])

    print(f"\n2. per-sample events: {n} balls, one batched solve vs {n} solves")
    timings = interleaved_medians({"batched": batched, "separate": separate}, repeats)
    err = float((batched() - torch.sqrt(2 * heights / G)).abs().max())
    for name, fn in (("batched", batched), ("separate", separate)):
        counter[0] = 0
        fn()
        tm = timings[name]
        print(f"{name:10s} wall {tm.wall * 1e3:8.1f} ms  CPU {tm.cpu * 1e3:8.1f} ms  NFE {counter[0]:6d}")
    print(f"batched/separate CPU time: {timings['batched'].cpu / timings['separate'].cpu:.2f}; "
          f"max landing-time error {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    setup(threads=1)
    print(environment())
    if torchdiffeq is None:
        print("torchdiffeq is not installed: peer rows skipped")
    ball_section(args.repeats)
    batch_section(args.repeats)


if __name__ == "__main__":
    main()
