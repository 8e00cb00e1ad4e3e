"""Peak memory of one forward + backward solve, by gradient mode and integration horizon.

A 2→64→64→2 tanh MLP field, batch 512, dopri5 rtol=atol=1e-5, horizons T ∈ {1, 10, 100}, for
the gradient modes ``adjoint``, ``direct`` and ``checkpoint``. Every measurement runs in a fresh
process (peak memory is a high-water mark that never comes down):

* CPU: peak resident set size (``resource.getrusage(...).ru_maxrss``) minus the same figure
  taken after the imports (including sympy, which ``torch.autograd.grad`` imports lazily), the
  model's creation and one evaluation of the field;
* GPU: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the solve.

Expected: ``adjoint`` flat in T (under 10 % growth from T=1 to T=100: O(1) memory in the
number of steps), ``direct`` growing with the number of steps (the whole graph is kept),
``checkpoint`` in between (one state per accepted step, then one step's graph at a time).

Usage: ``python benchmarks/bench_memory.py [--device cpu|cuda] [--horizons 1 10 100]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("adjoint", "direct", "checkpoint")


def child(mode: str, horizon: float, device_name: str) -> dict:
    """One measurement; runs in its own process."""
    import resource

    import torch
    from torch import nn

    import neuralode

    torch.set_num_threads(1)
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)).to(device)

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, x):
            return self.net(x)

    field = Field()
    x = torch.randn(512, 2, device=device)
    t = torch.tensor([0.0, horizon], device=device)
    with torch.no_grad():
        field(t[0], x)
    # torch.autograd.grad with explicit grad_outputs imports sympy on first use (through
    # torch.fx.experimental.symbolic_shapes, ~35 MiB of modules); that one-time import is part of
    # the baseline "after the imports", not memory of the solve.
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    sol = neuralode.solve(field, x, t, rtol=1e-5, atol=1e-5, gradient=mode)
    sol.ys[-1].pow(2).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"mode": mode, "T": horizon, "peak_bytes": peak, "nfe": sol.stats.nfe,
            "steps": sol.stats.n_accepted, "nfe_backward": sol.stats.nfe_backward}


def measure(mode: str, horizon: float, device: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_memory; print(json.dumps(bench_memory.child({mode!r}, {horizon!r}, {device!r})))")
    # glibc raises its mmap threshold after the first large free, after which freed activations
    # stay in the heap: RSS would then grow with the number of allocations made, not with the
    # memory alive at once. A fixed threshold returns every large block to the system on free.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--horizons", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args(argv)
    what = "peak RSS above baseline" if args.device == "cpu" else "max_memory_allocated above baseline"
    print(f"Peak memory of one forward+backward: MLP 2-64-64-2 tanh, batch 512, dopri5 rtol=atol=1e-5; "
          f"{what}; device {args.device}; one process per cell")
    results = {}
    for mode in MODES:
        for horizon in args.horizons:
            results[mode, horizon] = measure(mode, horizon, args.device)
    header = f"{'mode':12s}" + "".join(f"{'T=' + format(h, 'g'):>22s}" for h in args.horizons) + f"{'growth':>10s}"
    print(header)
    for mode in MODES:
        cells = []
        for h in args.horizons:
            r = results[mode, h]
            cells.append(f"{r['peak_bytes'] / 2**20:8.1f} MiB ({r['steps']:4d} st)")
        first, last = results[mode, args.horizons[0]]["peak_bytes"], results[mode, args.horizons[-1]]["peak_bytes"]
        growth = last / first - 1 if first > 0 else float("inf")
        print(f"{mode:12s}" + "".join(f"{c:>22s}" for c in cells) + f"{100 * growth:9.0f}%")
    adj = [results["adjoint", h]["peak_bytes"] for h in args.horizons]
    direct = [results["direct", h]["peak_bytes"] for h in args.horizons]
    ckpt = [results["checkpoint", h]["peak_bytes"] for h in args.horizons]
    growth = adj[-1] / adj[0] - 1
    checks = [
        ("adjoint grows by under 10% from the first to the last horizon", growth < 0.10, f"{100 * growth:+.1f}%"),
        ("direct grows with the number of steps", direct[-1] > 2 * direct[0],
         f"{direct[0] / 2**20:.1f} -> {direct[-1] / 2**20:.1f} MiB"),
        ("checkpoint between adjoint and direct at the last horizon", adj[-1] <= ckpt[-1] <= direct[-1],
         f"{adj[-1] / 2**20:.1f} <= {ckpt[-1] / 2**20:.1f} <= {direct[-1] / 2**20:.1f} MiB"),
    ]
    for label, ok, detail in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
