"""Per-sample adaptive stepping: neuralode.persample vs torchode, and vs one shared step size.

Run from the repository root (one process, one thread):

    .venv/bin/python benchmarks/bench_persample.py [--batch 256] [--repeats 3] [--device cpu]

Problems (float64, forward solves without autograd, dopri5, rtol = atol = 1e-6):

  (a) "vdp-mu": a batch of Van der Pol oscillators, μ log-uniform in [0.1, 10] (seeded), y0 = (2, 0),
      t ∈ [0, 10], 11 shared output times. A per-row μ is a per-row parameter, so the field sees the
      whole batch every stage (finished rows are frozen, not dropped).
  (b) "mlp-grids": an autonomous 2→32→32→2 tanh MLP field, each sample with its own 8 sorted random
      output times in [0, T_b], T_b uniform in [0.5, 5] (irregular series: no union grid). Run with
      ``compact=True`` (finished rows leave the batch), next to torchode's per-sample ``t_eval``.

Per contender: CPU time (median), batched field calls (NFE), rows evaluated, the sum and max of
per-sample steps, and the max error against per-sample float64 dopri8 solves at 1e-11.

  (c) "mlp-grids gradients": problem (b) with a loss ``sum(ys**2)`` differentiated to y0 and the
      parameters: per-sample direct backprop and the per-sample adjoint against torchode's
      AutoDiffAdjoint and BacksolveAdjoint (field calls forward + backward, CPU time, relative
      gradient error against direct backprop of a 1e-10 solve). The
shared-step ``neuralode.solve`` is shown on (a) to show what per-sample control saves.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, import_peer, setup  # noqa: E402

import neuralode  # noqa: E402
from neuralode.persample import solve_per_sample  # noqa: E402


class VdPBatch(nn.Module):
    def __init__(self, mu):
        super().__init__()
        self.register_buffer("mu", mu)
        self.calls = 0
        self.rows = 0

    def forward(self, t, y, args=None):
        self.calls += 1
        self.rows += y.shape[0]
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], -1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
        self.calls = 0
        self.rows = 0

    def forward(self, t, y, args=None):
        self.calls += 1
        self.rows += y.shape[0]
        return self.net(y)


def cpu_median(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def reference(field, y0, t):
    """Per-sample float64 dopri8 at rtol = atol = 1e-11, batched (tests/test_persample.py shows that
    per-sample stepping equals solving each sample alone; solo reference solves of 256 samples
    took most of this script's time)."""
    return solve_per_sample(field, y0, t, method="dopri8", rtol=1e-11, atol=1e-11).ys


def run_case(name, field, y0, t, tol, repeats, to, compact, shared):
    y_ref = reference(field, y0, t)
    rows = []

    def ours():
        return solve_per_sample(field, y0, t, rtol=tol, atol=tol, options={"compact": compact})

    field.calls = field.rows = 0
    sol = ours()
    calls, nrows = field.calls, field.rows
    rows.append(("neuralode per-sample" + (" (compact)" if compact else ""), cpu_median(ours, repeats), calls, nrows, int(sol.n_accepted_per_sample.sum() + sol.n_rejected_per_sample.sum()),
                 int((sol.n_accepted_per_sample + sol.n_rejected_per_sample).max()),
                 float((sol.ys - y_ref).abs().max())))
    if shared:
        def shared_solve():
            return neuralode.solve(field, y0, t[0], rtol=tol, atol=tol)

        field.calls = field.rows = 0
        s = shared_solve()
        calls, nrows = field.calls, field.rows
        rows.append(("neuralode shared step", cpu_median(shared_solve, repeats), calls, nrows,
                     s.stats.n_steps * y0.shape[0], s.stats.n_steps,
                     float((s.ys.transpose(0, 1) - y_ref).abs().max())))
    if to is not None:
        def theirs():
            term = to.ODETerm(field)
            solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term))
            return solver.solve(to.InitialValueProblem(y0=y0, t_eval=t))

        field.calls = field.rows = 0
        s = theirs()
        calls, nrows = field.calls, field.rows
        steps = s.stats["n_steps"]
        rows.append(("torchode", cpu_median(theirs, repeats), calls, nrows, int(steps.sum()),
                     int(steps.max()), float((s.ys - y_ref).abs().max())))
    print(f"\n## {name}")
    print(f"{'contender':28s} {'CPU ms':>9s} {'NFE':>6s} {'rows':>9s} {'steps sum':>10s} {'steps max':>10s} {'max err':>9s}  ratio")
    base = rows[0][1]
    for label, cpu, nfe, nrows, ssum, smax, err in rows:
        print(f"{label:28s} {cpu * 1e3:9.1f} {nfe:6d} {nrows:9d} {ssum:10d} {smax:10d} {err:9.1e}  {cpu / base:.2f}")
    return rows


def gradient_case(name, field, y0, t, tol, repeats, to):
    """Forward + backward of ``sum(ys**2)`` to the field's parameters and ``y0``: per-sample direct and adjoint
    against torchode's AutoDiffAdjoint (backprop) and BacksolveAdjoint; gradient error against direct
    backprop of a tight (1e-10) per-sample solve."""
    params = list(field.parameters())

    def grads(run):
        x = y0.detach().clone().requires_grad_(True)
        ys = run(x)
        return torch.autograd.grad(ys.square().sum(), [x, *params])

    ref = grads(lambda x: solve_per_sample(field, x, t, rtol=1e-10, atol=1e-10).ys)
    contenders = {
        "neuralode per-sample direct": lambda x: solve_per_sample(field, x, t, rtol=tol, atol=tol).ys,
        "neuralode per-sample adjoint": lambda x: solve_per_sample(field, x, t, rtol=tol, atol=tol,
                                                                   gradient="adjoint").ys,
    }
    if to is not None:
        def torchode(kind):
            def run(x):
                term = to.ODETerm(field)
                step, control = to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term)
                solver = to.AutoDiffAdjoint(step, control) if kind == "autodiff" else to.BacksolveAdjoint(term, step,
                                                                                                        control)
                return solver.solve(to.InitialValueProblem(y0=x, t_eval=t)).ys
            return run

        contenders["torchode AutoDiffAdjoint"] = torchode("autodiff")
        contenders["torchode BacksolveAdjoint"] = torchode("backsolve")
    rows = []
    for label, run in contenders.items():
        try:
            field.calls = field.rows = 0
            got = grads(run)
            calls = field.calls
            err = max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, ref))
            rows.append((label, cpu_median(lambda run=run: grads(run), repeats), calls, err))
        except Exception as exc:  # a peer's mode that does not take this field
            print(f"note: {label} failed: {type(exc).__name__}: {str(exc)[:200]}")
    print(f"\n## {name}")
    print(f"{'contender':32s} {'CPU ms':>9s} {'NFE f+b':>8s} {'grad rel err':>12s}  ratio")
    base = rows[0][1]
    for label, cpu, calls, err in rows:
        print(f"{label:32s} {cpu * 1e3:9.1f} {calls:8d} {err:12.1e}  {cpu / base:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    setup(threads=1)
    device = torch.device(args.device)
    to = import_peer("torchode")
    print(f"environment: {environment()}; device {device}; batch {args.batch}; CPU-time medians of {args.repeats}")
    g = torch.Generator().manual_seed(0)
    b = args.batch
    mu = torch.exp(torch.empty(b, dtype=torch.float64).uniform_(math.log(0.1), math.log(10.0), generator=g))
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64).expand(b, 2).contiguous().to(device)
    t = torch.linspace(0, 10, 11, dtype=torch.float64).expand(b, 11).contiguous().to(device)
    with torch.no_grad():
        run_case(f"(a) vdp-mu: {b} Van der Pol, mu log-uniform [0.1, 10], t in [0, 10], dopri5 tol {args.tol:g}",
                 VdPBatch(mu.to(device)), y0, t, args.tol, args.repeats, to, compact=False, shared=True)
        torch.manual_seed(0)
        field = MLP().double().to(device)
        ends = torch.empty(b, 1, dtype=torch.float64).uniform_(0.5, 5.0, generator=g)
        grid = torch.sort(torch.rand(b, 7, dtype=torch.float64, generator=g), dim=1).values * ends
        t2 = torch.cat([torch.zeros(b, 1, dtype=torch.float64), grid], 1).to(device)
        y02 = torch.randn(b, 2, dtype=torch.float64, generator=g).to(device)
        run_case(f"(b) mlp-grids: {b} samples, own 8 output times in [0, T_b], T_b in [0.5, 5], tol {args.tol:g}",
                 field, y02, t2, args.tol, args.repeats, to, compact=True, shared=False)
    gradient_case(f"(c) mlp-grids gradients: problem (b), forward + backward of sum(ys^2), tol {args.tol:g}",
                  field, y02, t2, args.tol, args.repeats, to)


if __name__ == "__main__":
    main()
