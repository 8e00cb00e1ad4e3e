"""ODE-RNN training step: inline Euler between grid rows vs one ``neuralode.solve`` per row.

The ODE-RNN of :mod:`neuralode.nn.irregular` carries its state across every gap of a batch's
rows (PhysioNet: hundreds of rows per batch of 50 patients, most gaps a few minutes). It used to
call :func:`neuralode.solve` once per row; it now steps Euler inline (the same steps). Compact vs
union batches: ``bench_physionet_layout.py``.
This script times one forward + backward pass of a PhysioNet-sized batch both ways, interleaved,
and checks that both give the same loss. An epoch of set a's 3,200 training patients is 64 such
batches, so the per-batch ratio is the epoch-time ratio.

    .venv/bin/python benchmarks/bench_odernn.py             # 5 interleaved repeats
    .venv/bin/python benchmarks/bench_odernn.py --quick     # 2 repeats
    NEURALODE_DATA=... .venv/bin/python benchmarks/bench_odernn.py --epoch 400
        # one real training epoch of the physionet experiment's ODE-RNN (protocol rubanova: 1-minute
        # grid, batch 50, 5-layer field) on the training split of 400 patients of set a, both ways
"""

from __future__ import annotations

import argparse
import math

import torch

from _common import EpochRun, environment, interleaved_medians, setup
from neuralode.nn import irregular as I


def _solve_per_row(func, h, dt, solver, n_steps=None):
    """The previous way: one ``neuralode.solve`` per row (of the field rescaled to each patient's gap)."""
    return I._solve_rows(func, h, dt, solver)


def _batch(rows: int, batch: int, channels: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.randperm(480, generator=g)[:rows].double() / 10).values.float()  # 0.1 h grid, 48 h
    mask = (torch.rand(batch, rows, channels, generator=g) < density).float()
    values = torch.rand(batch, rows, channels, generator=g) * mask
    return times, values, mask


def epoch_times(n_patients: int, repeats: int, protocol: str) -> None:
    """Wall and CPU seconds of one training epoch of the physionet experiment's ODE-RNN, inline
    Euler vs one solve per row, interleaved in one process (the weights train on between epochs;
    fixed Euler steps make the work independent of them)."""
    from neuralode.experiments import physionet as E

    run = EpochRun()
    config = E.resolve(E.Config(protocol=protocol, n_patients=n_patients, models=("ode_rnn",)))
    data = E._load(config, run)
    torch.manual_seed(0)
    full = E._make("ode_rnn", config, data)
    opt, sched = E._optimizer(full, config)
    counter = {"epoch": 0}

    def epoch(evolve):
        def go():
            saved = I._evolve_rows
            I._evolve_rows = evolve
            try:
                E._train_epoch(full, opt, sched, data, config, run, 0, counter["epoch"], 0, None, [])
            finally:
                I._evolve_rows = saved
            counter["epoch"] += 1
        return go

    res = interleaved_medians({"inline Euler": epoch(I._evolve_rows), "solve per row": epoch(_solve_per_row)},
                              repeats, warmup=0)
    n_batches = math.ceil(len(data.train) / config.batch_size)
    print(f"physionet ODE-RNN, protocol {protocol}: one training epoch of {len(data.train)} patients "
          f"({n_batches} batches of {config.batch_size}, grid {config.round_hours:.4g} h, hidden {config.hidden}, "
          f"field {config.enc_layers} layers of {config.units}, Euler max step {config.enc_max_step:g}); "
          f"median of {repeats}")
    for name, t in res.items():
        print(f"  {name:14s} wall {t.wall:8.2f} s   CPU {t.cpu:8.2f} s")
    a, b = res["inline Euler"], res["solve per row"]
    print(f"  epoch speed-up (solve per row / inline): wall {b.wall / a.wall:.2f}x, CPU {b.cpu / a.cpu:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=300, help="union grid rows of a batch (PhysioNet, 0.1 h: ~300)")
    parser.add_argument("--epoch", type=int, default=0, metavar="N",
                        help="instead: time real training epochs of the physionet experiment on N patients of set a")
    parser.add_argument("--protocol", default="rubanova", help="the experiment's protocol for --epoch")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    setup(threads=1)
    print(environment())
    if args.epoch:
        epoch_times(args.epoch, repeats, args.protocol)
        return
    C, B = 41, 50
    times, values, mask = _batch(args.rows, B, C, density=0.02)
    model = I.ODERNN(C, hidden=50, ode_hidden=50, solver=I.SolverConfig("euler", max_step=1 / 50))

    def step(evolve):
        def go():
            saved = I._evolve_rows
            I._evolve_rows = evolve
            try:
                out = model(times, values, mask)
                loss = ((out.pred - values) ** 2 * mask).sum() / mask.sum()
                model.zero_grad()
                loss.backward()
            finally:
                I._evolve_rows = saved
            return float(loss.detach())
        return go

    inline, per_row = step(I._evolve_rows), step(_solve_per_row)
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
