"""torch.compile on the benchmark problems: compile time, steady-state speed-up, recompilations.

Run from the repository root (one process; one thread unless --threads):

    .venv/bin/python benchmarks/bench_compile.py [--steps 50] [--repeats 7] [--device cpu] [--backend inductor]

Contenders, each against the eager solve of the same problem (float32, forward with autograd on, as
in training; ``--grad`` adds a backward pass):

  (a) "mlp16-rk4": field 2 -> 16 -> 2 tanh, batch 16, rk4 with ``--steps`` fixed steps on [0, 1]
      (bench_odeint's problem (b), with fewer steps: the whole-solve graph is unrolled).
      - ``rk4_compiled``: each step one compiled graph (the loop stays in Python);
      - ``FixedGridSolve``: the whole solve one compiled graph (``--mode reduce-overhead`` adds
        CUDA graphs on a GPU).
  (b) "mlp64-dopri5": field 2 -> 64 -> 64 -> 2 tanh, batch 512, dopri5 at rtol = atol = 1e-5 on
      [0, 1] (bench_odeint's problem (a)): ``dopri5_compiled`` (each adaptive step one graph, step
      size a tensor input).

Times are wall time on a GPU and CPU time on CPU (this process and its children: inductor's C++
compiler), so a loaded machine does not inflate them. Run with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1
for compile times that include code generation (otherwise a warm cache hides it).

Per contender: the first call's time (compile + run), the steady-state median time, the
ratio eager / compiled (> 1: compiled is faster), the number of graphs compiled by the first call,
and the graphs compiled again by the "recompile probes": for (a) a moved grid with the same
structure (``retarget``) and a new batch size; for (b) three other tolerances and a new y0 of the
same shape. Max |compiled - eager| is printed as a check.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no worker pool on a shared machine

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import TanhMLP, environment, setup  # noqa: E402

import neuralode  # noqa: E402
from neuralode import compiled  # noqa: E402


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles and hands them to a real one."""

    def __init__(self, name: str, mode=None):
        self.name, self.mode = name, mode
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.name == "inductor":
            import torch._inductor
            from torch._inductor.compile_fx import compile_fx

            patches = torch._inductor.list_mode_options(self.mode) if self.mode else {}
            return compile_fx(gm, example_inputs, config_patches=patches)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.name)(gm, example_inputs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Wall time on a GPU; on CPU the CPU time of this process and its children (the C++ compiler
    that inductor runs), which a loaded shared machine does not inflate."""
    if device.type == "cuda":
        return time.perf_counter()
    t = os.times()  # children: 10 ms ticks, fine for compiler runs
    return time.process_time() + t.children_user + t.children_system


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = clock(device)
    fn()
    sync(device)
    return clock(device) - start


def median_wall(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    timed(fn, device)
    return statistics.median(timed(fn, device) for _ in range(repeats))


def with_grad(run: Callable[[], torch.Tensor], params, grad: bool) -> Callable[[], torch.Tensor]:
    if not grad:
        return run

    def both():
        out = run()
        torch.autograd.grad(out.square().sum(), params)
        return out

    return both


def report(rows) -> None:
    print(f"{'contender':34s} {'first call s':>12s} {'steady ms':>10s} {'eager/this':>10s} {'graphs':>7s} "
          f"{'recompiles':>10s} {'max |diff|':>10s}")
    for label, first, steady, ratio, graphs, recompiles, diff in rows:
        first_s = "-" if first is None else f"{first:.1f}"
        print(f"{label:34s} {first_s:>12s} {steady * 1e3:10.2f} {ratio:10.2f} {graphs:>7} {recompiles:>10} "
              f"{diff:10.1e}")


def case_fixed(args, device: torch.device) -> None:
    torch.manual_seed(0)
    field = TanhMLP([2, 16, 2]).to(device)
    params = list(field.parameters())
    y0 = torch.randn(16, 2, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    h = 1.0 / args.steps
    opts = {"step_size": h}
    print(f"\n## (a) mlp16-rk4: batch 16, rk4, {args.steps} steps, grad={args.grad}")
    eager = with_grad(lambda: neuralode.odeint(field, y0, t, method="rk4", options=opts), params, args.grad)
    ref = neuralode.odeint(field, y0, t, method="rk4", options=opts).detach()
    t_eager = median_wall(eager, args.repeats, device)
    rows = [("eager odeint rk4", None, t_eager, 1.0, 0, 0, 0.0)]

    backend = CountingBackend(args.backend)  # per-step graphs: no CUDA graphs (outputs feed the next step)
    compiled.set_backend(backend)
    step = with_grad(lambda: neuralode.odeint(field, y0, t, method="rk4_compiled", options=opts), params, args.grad)
    first = timed(step, device)
    graphs = backend.graphs
    steady = median_wall(step, args.repeats, device)
    neuralode.odeint(field, y0 * 2, t + 0.5, method="rk4_compiled", options=opts)  # new values, same shapes
    neuralode.odeint(field, y0[:8], t, method="rk4_compiled", options=opts)  # new batch size
    diff = float((neuralode.odeint(field, y0, t, method="rk4_compiled", options=opts).detach() - ref).abs().max())
    rows.append(("rk4_compiled (each step a graph)", first, steady, t_eager / steady, graphs, backend.graphs - graphs,
                 diff))
    compiled.set_backend()

    backend = CountingBackend(args.backend, args.mode)
    whole_solve = compiled.FixedGridSolve(field, t, method="rk4", step_size=h, backend=backend)
    whole = with_grad(lambda: whole_solve(y0), params, args.grad)
    first = timed(whole, device)
    graphs = backend.graphs
    steady = median_wall(whole, args.repeats, device)
    diff = float((whole_solve(y0).detach()[-1] - ref[-1]).abs().max())
    whole_solve.retarget(t + 0.5)  # moved grid, same structure
    whole_solve(y0)
    whole_solve.retarget(t)
    whole_solve(y0[:8])  # new batch size
    label = "FixedGridSolve (whole solve)" + (f" {args.mode}" if args.mode else "")
    rows.append((label, first, steady, t_eager / max(steady, 1e-9), graphs, backend.graphs - graphs, diff))
    report(rows)
    print("recompile probes: a moved grid (same step count), a batch of 8")


def case_adaptive(args, device: torch.device) -> None:
    torch.manual_seed(0)
    field = TanhMLP([2, 64, 64, 2]).to(device)
    params = list(field.parameters())
    y0 = torch.randn(512, 2, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    print(f"\n## (b) mlp64-dopri5: batch 512, dopri5, rtol = atol = 1e-5, grad={args.grad}")
    eager_solve = neuralode.solve(field, y0, t, rtol=1e-5, atol=1e-5)
    eager = with_grad(lambda: neuralode.odeint(field, y0, t, rtol=1e-5, atol=1e-5), params, args.grad)
    t_eager = median_wall(eager, args.repeats, device)
    rows = [(f"eager dopri5 ({eager_solve.stats.nfe} NFE)", None, t_eager, 1.0, 0, 0, 0.0)]
    backend = CountingBackend(args.backend)
    compiled.set_backend(backend)
    fast = with_grad(lambda: neuralode.odeint(field, y0, t, rtol=1e-5, atol=1e-5, method="dopri5_compiled"), params,
                     args.grad)
    first = timed(fast, device)
    graphs = backend.graphs
    steady = median_wall(fast, args.repeats, device)
    for tol in (1e-3, 1e-4, 1e-7):
        neuralode.odeint(field, y0, t, rtol=tol, atol=tol, method="dopri5_compiled")
    neuralode.odeint(field, torch.randn_like(y0), t, rtol=1e-5, atol=1e-5, method="dopri5_compiled")
    sol = neuralode.solve(field, y0, t, rtol=1e-5, atol=1e-5, method="dopri5_compiled")
    diff = float((sol.ys - eager_solve.ys).detach().abs().max())
    rows.append((f"dopri5_compiled ({sol.stats.nfe} NFE)", first, steady, t_eager / steady, graphs,
                 backend.graphs - graphs, diff))
    compiled.set_backend()
    report(rows)
    print("recompile probes: rtol = atol in {1e-3, 1e-4, 1e-7}, a new y0 of the same shape")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="fixed steps of problem (a) (unrolled in one graph)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grad", action="store_true", help="time forward + backward instead of forward only")
    parser.add_argument("--only", choices=["fixed", "adaptive"], default=None)
    args = parser.parse_args(argv)
    setup(threads=args.threads)
    device = torch.device(args.device)
    kind = "wall" if device.type == "cuda" else "CPU"
    print(f"environment: {environment()}; device {device}; backend {args.backend}, mode {args.mode}; "
          f"{kind}-time medians of {args.repeats}")
    if args.only in (None, "fixed"):
        case_fixed(args, device)
    if args.only in (None, "adaptive"):
        case_adaptive(args, device)


if __name__ == "__main__":
    main()
