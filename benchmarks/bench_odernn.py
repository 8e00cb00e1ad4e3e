"""ODE-RNN training step: inline Euler between grid rows vs one ``neuralode.solve`` per row.

The ODE-RNN of :mod:`neuralode.nn.irregular` carries its state across every gap of a batch's
union time grid (PhysioNet: hundreds of rows per batch of 50 patients, most gaps a few minutes).
It used to call :func:`neuralode.solve` once per row; it now steps Euler inline (the same steps).
This script times one forward + backward pass of a PhysioNet-sized batch both ways, interleaved,
and checks that both give the same loss. An epoch of set a's 3,200 training patients is 64 such
batches, so the per-batch ratio is the epoch-time ratio.

    .venv/bin/python benchmarks/bench_odernn.py             # 5 interleaved repeats
    .venv/bin/python benchmarks/bench_odernn.py --quick     # 2 repeats
"""

from __future__ import annotations

import argparse
import math

import torch

from _common import environment, interleaved_medians, setup
from neuralode.nn import irregular as I


def _solve_per_row(func, h, dt, solver):
    """The previous ``_evolve``: one ``neuralode.solve`` per gap."""
    if dt <= 0:
        return h, 0
    t = torch.tensor([0.0, dt], dtype=h.dtype, device=h.device)
    ys, nfe = I._solve(func, h, t, solver)
    return ys[-1], nfe


def _batch(rows: int, batch: int, channels: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.randperm(480, generator=g)[:rows].double() / 10).values.float()  # 0.1 h grid, 48 h
    mask = (torch.rand(batch, rows, channels, generator=g) < density).float()
    values = torch.rand(batch, rows, channels, generator=g) * mask
    return times, values, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=300, help="union grid rows of a batch (PhysioNet, 0.1 h: ~300)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    setup(threads=1)
    print(environment())
    C, B = 41, 50
    times, values, mask = _batch(args.rows, B, C, density=0.02)
    model = I.ODERNN(C, hidden=50, ode_hidden=50, solver=I.SolverConfig("euler", max_step=1 / 50))

    def step(evolve):
        def go():
            saved = I._evolve
            I._evolve = evolve
            try:
                out = model(times, values, mask)
                loss = ((out.pred - values) ** 2 * mask).sum() / mask.sum()
                model.zero_grad()
                loss.backward()
            finally:
                I._evolve = saved
            return float(loss.detach())
        return go

    inline, per_row = step(I._evolve), step(_solve_per_row)
    same = math.isclose(inline(), per_row(), rel_tol=1e-5)
    res = interleaved_medians({"inline Euler": inline, "solve per row": per_row}, repeats)
    print(f"ODE-RNN (hidden 50, field 50), batch {B} x {args.rows} grid rows x {C} channels, Euler max step 1/50; "
          f"forward + backward, median of {repeats}")
    for name, t in res.items():
        print(f"  {name:14s} wall {t.wall * 1e3:8.1f} ms   CPU {t.cpu * 1e3:8.1f} ms")
    a, b = res["inline Euler"], res["solve per row"]
    print(f"  speed-up (solve per row / inline): wall {b.wall / a.wall:.2f}x, CPU {b.cpu / a.cpu:.2f}x; "
          f"same loss: {'PASS' if same else 'FAIL'}")


if __name__ == "__main__":
    main()
