"""The GPU suite's own measurements (run by ``benchmarks/gpu_suite.sh``); each section appends rows to one table.

    python benchmarks/gpu_checks.py correctness|mnist|compile [--device cuda] [--table FILE]

* ``correctness``: on the device, float64 — dopri5/tsit5/dopri8 against the exact solution of a
  linear system (matrix exponential), the same solve on CPU and on the device agreeing, gradcheck
  of dopri5 for direct, adjoint and checkpoint gradients, per-sample stepping equal to solving
  each sample alone, per-sample adjoint gradients equal to direct backprop of solo solves, and the
  host synchronisations per step (``torch.cuda.set_sync_debug_mode``
  warnings counted).
* ``mnist``: the paper's MNIST ODE-Net (``make_image_classifier('odenet')``, dopri5 at 1e-3)
  trained on random 28×28 batches of 128: seconds per step (→ an epoch of 469 steps) and peak CUDA
  memory, per gradient mode (direct, adjoint, adjoint-seminorm, checkpoint).
* ``compile``: ``dopri5`` vs ``dopri5_compiled`` and ``rk4`` vs ``rk4_compiled`` on an MLP field,
  batch 4096: compile time (first solve), steady-state time per solve, speed-up, recompilations.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

import neuralode
from neuralode.persample import solve_per_sample


class NetField(nn.Module):
    """``f(t, y) = net(y)`` as an nn.Module (the adjoint finds its parameters)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def row(table, name, value, note=""):
    line = f"{name:58s} {value:>16s}  {note}"
    print(line, flush=True)
    if table:
        with open(table, "a") as fh:
            fh.write(line + "\n")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def correctness(device, table):
    torch.manual_seed(0)
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64, device=device)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, device=device)
    t = torch.linspace(0, 5, 6, dtype=torch.float64, device=device)
    exact = torch.stack([torch.linalg.matrix_exp(a * s) @ y0 for s in t])
    for method in ("dopri5", "tsit5", "dopri8"):
        ys = neuralode.odeint(lambda s, y: a @ y, y0, t, method=method, rtol=1e-10, atol=1e-10)
        err = float((ys - exact).abs().max())
        row(table, f"[{device.type}] {method} vs exact, rtol=atol=1e-10", f"{err:.1e}", "PASS" if err < 1e-7 else "FAIL")
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    tt = torch.tensor([0.0, 1.0], dtype=torch.float64)
    cpu = neuralode.odeint(lambda s, y: net(y), x, tt, rtol=1e-8, atol=1e-8)
    net_d = net.to(device)
    dev = neuralode.odeint(lambda s, y: net_d(y), x.to(device), tt.to(device), rtol=1e-8, atol=1e-8)
    diff = float((dev.detach().cpu() - cpu.detach()).abs().max())
    row(table, f"[{device.type}] MLP solve, device vs CPU (float64)", f"{diff:.1e}", "PASS" if diff < 1e-10 else "FAIL")
    small = NetField(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))).double().to(device)
    xs = torch.randn(3, 2, dtype=torch.float64, device=device, requires_grad=True)
    for gradient in ("direct", "adjoint", "checkpoint"):
        def fn(x0):
            return neuralode.solve(small, x0, tt.to(device), rtol=1e-10, atol=1e-10,
                                   gradient=gradient).ys[-1]
        ok = torch.autograd.gradcheck(fn, (xs,), atol=1e-5, rtol=1e-4)
        row(table, f"[{device.type}] gradcheck dopri5, gradient={gradient}", str(ok), "PASS" if ok else "FAIL")
    mu = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64, device=device)

    def vdp(s, y, mu=mu):
        return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)

    y0s = torch.tensor([[2.0, 0.0]] * 3, dtype=torch.float64, device=device)
    tv = torch.linspace(0, 5, 6, dtype=torch.float64, device=device)
    per = solve_per_sample(vdp, y0s, tv, rtol=1e-7, atol=1e-7)
    worst = 0.0
    for b in range(3):
        alone = neuralode.odeint(lambda s, y, b=b: vdp(s, y[None], mu[b:b + 1])[0], y0s[b], tv, rtol=1e-7, atol=1e-7)
        worst = max(worst, float((alone - per.ys[b]).abs().max()))
    row(table, f"[{device.type}] per-sample stepping vs each sample alone", f"{worst:.1e}", "PASS" if worst < 1e-9 else "FAIL")
    # per-sample adjoint: gradients against direct backprop through each sample's own solve
    field = NetField(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))).double().to(device)
    x3 = torch.randn(3, 2, dtype=torch.float64, device=device, requires_grad=True)
    grids = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.3, 2.0], [0.5, 1.0, 1.5]], dtype=torch.float64, device=device)
    sol = solve_per_sample(field, x3, grids, rtol=1e-9, atol=1e-9, gradient="adjoint")
    got = torch.autograd.grad(sol.ys.sin().sum(), [x3, *field.parameters()])
    x_solo = x3.detach().clone().requires_grad_(True)
    loss = sum(neuralode.solve(field, x_solo[b], grids[b], rtol=1e-9, atol=1e-9).ys.sin().sum() for b in range(3))
    want = torch.autograd.grad(loss, [x_solo, *field.parameters()])
    rel = max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)) for g, w in zip(got, want))
    row(table, f"[{device.type}] per-sample adjoint vs solo direct backprop (rel.)", f"{rel:.1e}",
        "PASS" if rel < 1e-5 else "FAIL")
    if device.type == "cuda":
        t5 = torch.tensor([0.0, 5.0], dtype=torch.float64, device=device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sol = neuralode.solve(vdp, y0s, t5, rtol=1e-6, atol=1e-6)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        n = sum("synchron" in str(w.message) for w in caught)
        row(table, "[cuda] host syncs of an adaptive solve / attempted steps", f"{n} / {sol.stats.n_steps}",
            "PASS" if n <= sol.stats.n_steps + 10 else "FAIL")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                per = solve_per_sample(vdp, y0s, t5, rtol=1e-6, atol=1e-6)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        n = sum("synchron" in str(w.message) for w in caught)
        attempts = int((per.n_accepted_per_sample + per.n_rejected_per_sample).max())
        row(table, "[cuda] host syncs of a per-sample solve / loop iterations", f"{n} / {attempts}",
            "PASS" if n <= attempts + 10 else "FAIL")


def mnist(device, table, steps):
    from neuralode.nn.image import make_image_classifier

    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    for gradient in ("direct", "adjoint", "adjoint-seminorm", "checkpoint"):
        torch.manual_seed(0)
        model = make_image_classifier("odenet", "mnist", gradient=gradient).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(steps + 1):
            sync(device)
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sync(device)
            if i:
                times.append(time.perf_counter() - start)
        step = statistics.median(times)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        row(table, f"[{device.type}] MNIST ODE-Net step, gradient={gradient}", f"{step * 1e3:.0f} ms",
            f"epoch (469 steps) ~{step * 469:.0f} s; peak memory {peak:.0f} MiB")


def compile_speed(device, table, batch, repeats, backend="inductor"):
    from neuralode import compiled

    compiled.set_backend(backend)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)).to(device)
    x = torch.randn(batch, 2, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    import torch._dynamo.utils as dyn_utils

    for base, kwargs in (("dopri5", dict(rtol=1e-5, atol=1e-5)), ("rk4", dict(options={"step_size": 0.01}))):
        def run(method):
            out = neuralode.solve(lambda s, y: net(y), x, t, method=method, **kwargs)
            sync(device)
            return out

        frames_before = dyn_utils.counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        run(base + "_compiled")
        first = time.perf_counter() - start
        timings = {}
        for method in (base, base + "_compiled"):
            run(method)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(method)
                samples.append(time.perf_counter() - start)
            timings[method] = statistics.median(samples)
        graphs = dyn_utils.counters["stats"]["unique_graphs"] - frames_before
        speedup = timings[base] / timings[base + "_compiled"]
        row(table, f"[{device.type}] {base}_compiled vs {base}, MLP batch {batch}, {backend}", f"{speedup:.2f}x",
            f"eager {timings[base] * 1e3:.1f} ms, compiled {timings[base + '_compiled'] * 1e3:.1f} ms, "
            f"first solve (compiling) {first:.1f} s, graphs compiled {graphs}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", choices=["correctness", "mnist", "compile"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--table", default=None, help="append the rows to this file")
    parser.add_argument("--steps", type=int, default=5, help="timed MNIST training steps per gradient mode")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compile section "
                        "(aot_eager: capture only, for a quick dry run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.section == "correctness":
        correctness(device, args.table)
    elif args.section == "mnist":
        mnist(device, args.table, args.steps)
    else:
        compile_speed(device, args.table, args.batch, args.repeats, args.backend)


if __name__ == "__main__":
    main()
