"""Stiff problems: our implicit methods against SciPy's Radau and BDF, dopri5 and torchdiffeq.

In one process, float64, one thread:

1. Robertson's kinetics on [0, 1e5] and Van der Pol (μ = 1000) on [0, 1000] at rtol 1e-4,
   1e-6, 1e-8 (atol = rtol·1e-4 on Robertson, whose second species peaks at 3.6e-5; atol = rtol
   on Van der Pol): the error against a float64 reference (SciPy Radau at rtol 1e-12 with the
   exact Jacobian), function evaluations, Jacobian evaluations and CPU time for kvaerno3,
   kvaerno5, rosenbrock23, SciPy Radau and BDF (given the exact Jacobian, as a user of SciPy
   would; its ``nfev`` then counts no finite-difference columns), and dopri5 with a step budget.
   Our Jacobians come from autograd: ``n`` vector-Jacobian products each (batched into one call),
   not counted in the NFE. Errors are max |y - y_ref| / (atol + rtol|y_ref|) (tolerance units)
   at the output times.
2. A batch of 256 Robertson problems with log-uniform rate constants (each constant times
   10^U(-1, 1)): our one batched solve (per-sample Jacobians, batched LU) against SciPy Radau
   looping over the 256.
3. torchdiffeq's fixed-step radauIIA5 at the step size that reaches kvaerno5's error, when the
   installed torchdiffeq has it (GitHub master does; PyPI's 0.2.5 does not, and is skipped
   with a note).

Usage: ``python benchmarks/bench_stiff.py [--quick]`` (``--quick``: rtol 1e-4 and 1e-6 only and a
batch of 64, for a smoke run).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import neuralode

from neuralode.stiff_problems import (ROBERTSON_K, robertson, robertson_jac, robertson_np, van_der_pol,
                                     van_der_pol_jac, van_der_pol_np)

PROBLEMS = {
    "robertson": (robertson, robertson_np, robertson_jac, (1.0, 0.0, 0.0),
                  (0.0, 0.4, 4.0, 40.0, 400.0, 4e3, 4e4, 1e5), 1e-4),
    "van_der_pol": (van_der_pol, van_der_pol_np, van_der_pol_jac, (2.0, 0.0), (0.0, 200.0, 400.0, 600.0, 800.0, 1000.0), 1.0),
}


def scipy_solve(fn, jac, y0, t, method, rtol, atol):
    from scipy.integrate import solve_ivp

    start = time.process_time()
    out = solve_ivp(fn, (t[0], t[-1]), np.asarray(y0, float), method=method, t_eval=np.asarray(t), rtol=rtol,
                    atol=atol, jac=jac)
    return out.y.T, out.nfev, out.njev, time.process_time() - start, out.success


def scaled(y, ref, rtol, atol):
    return float(np.max(np.abs(np.asarray(y) - ref) / (atol + rtol * np.abs(ref))))


def ours(field, y0, t, method, rtol, atol, max_steps=None):
    options = {"max_num_steps": max_steps} if max_steps else None
    start = time.process_time()
    sol = neuralode.solve(field, torch.tensor(y0, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                          method=method, rtol=rtol, atol=atol, options=options, on_failure="return")
    return sol, time.process_time() - start


def single_problems(rtols, rows):
    print("| problem | rtol | solver | error (tol units) | NFE | Jacobians | steps | CPU s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, (field, fn, jac, y0, t, atol_factor) in PROBLEMS.items():
        ref = scipy_solve(fn, jac, y0, t, "Radau", 1e-12, 1e-16 if name == "robertson" else 1e-14)[0]
        for rtol in rtols:
            atol = rtol * atol_factor
            result = {}
            for method in ("kvaerno3", "kvaerno5", "rosenbrock23"):
                if method in ("kvaerno3", "rosenbrock23") and rtol < 1e-7:
                    continue  # orders 3 and 2 at 1e-8: 10^4+ steps; not a sensible choice there
                sol, cpu = ours(field, y0, t, method, rtol, atol)
                s = sol.stats
                err = scaled(sol.ys.numpy(), ref, rtol, atol) if sol.success else math.inf
                result[method] = (err, s.nfe)
                print(f"| {name} | {rtol:.0e} | {method} | {err:.2f} | {s.nfe} | {s.n_jacobians} | "
                      f"{s.n_accepted + s.n_rejected} | {cpu:.2f} |", flush=True)
            for method in ("Radau", "BDF"):
                y, nfev, njev, cpu, ok = scipy_solve(fn, jac, y0, t, method, rtol, atol)
                err = scaled(y, ref, rtol, atol) if ok else math.inf
                result["scipy_" + method] = (err, nfev)
                print(f"| {name} | {rtol:.0e} | SciPy {method} | {err:.2f} | {nfev} | {njev} | – | {cpu:.2f} |",
                      flush=True)
            budget = 5000
            sol, cpu = ours(field, y0, t, "dopri5", rtol, atol, max_steps=budget)
            s = sol.stats
            what = "hit max_num_steps" if sol.status is neuralode.Status.MAX_STEPS else str(sol.status)
            err = f"{scaled(sol.ys.numpy(), ref, rtol, atol):.2f}" if sol.success else f"{what} at t={sol.t_reached:.3g}"
            print(f"| {name} | {rtol:.0e} | dopri5 (budget {budget}) | {err} | {s.nfe} | 0 | "
                  f"{s.n_accepted + s.n_rejected} | {cpu:.2f} |", flush=True)
            rows.append((name, rtol, result))


def nfe_ratios(rows):
    print("\nNFE of our best adaptive method / SciPy Radau's, at equal or better achieved error:")
    for name, rtol, result in rows:
        radau_err, radau_nfe = result["scipy_Radau"]
        fit = [(nfe, m) for m, (err, nfe) in result.items() if not m.startswith("scipy") and err <= max(radau_err, 1.0)]
        best = min(fit) if fit else None
        if best is None:
            print(f"  {name} rtol={rtol:.0e}: none of ours reached SciPy Radau's error ({radau_err:.2f} units)")
        else:
            print(f"  {name} rtol={rtol:.0e}: {best[1]} {best[0]} / Radau {radau_nfe} = {best[0] / radau_nfe:.2f}x")


def batch(n: int, rtol: float = 1e-6):
    gen = torch.Generator().manual_seed(0)
    scale = 10 ** (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1)
    k = scale * torch.tensor(ROBERTSON_K, dtype=torch.float64)
    t = (0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    atol = rtol * 1e-4
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).repeat(n, 1)

    def field(s, y):
        return robertson(s, y, (k[:, 0], k[:, 1], k[:, 2]))

    tt = torch.tensor(t, dtype=torch.float64)
    refs, scipy_cpu, scipy_nfev = [], 0.0, 0
    for i in range(n):
        ki = tuple(k[i].tolist())
        y, nfev, _, cpu, _ = scipy_solve(lambda s, y, ki=ki: robertson_np(s, y, ki),
                                         lambda s, y, ki=ki: robertson_jac(s, y, ki), y0[0].numpy(), t, "Radau",
                                         rtol, atol)
        refs.append(y)
        scipy_cpu += cpu
        scipy_nfev += nfev
    refs = np.stack(refs, axis=1)  # (T, n, 3)
    print(f"\nBatch of {n} Robertson problems, rate constants × 10^U(-1,1), rtol={rtol:.0e}, atol={atol:.0e}:")
    print("| solver | CPU s | speed-up vs looping SciPy | max |Δ| vs SciPy | NFE | Jacobians |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| SciPy Radau, looped | {scipy_cpu:.2f} | 1.0 | – | {scipy_nfev} | – |")
    for method in ("rosenbrock23", "kvaerno5"):
        start = time.process_time()
        sol = neuralode.solve(field, y0, tt, method=method, rtol=rtol, atol=atol, options={"jacobian": "batched"})
        cpu = time.process_time() - start
        diff = float(np.abs(sol.ys.numpy() - refs).max())
        print(f"| ours {method}, batched | {cpu:.2f} | {scipy_cpu / cpu:.1f} | {diff:.1e} | {sol.stats.nfe} | "
              f"{sol.stats.n_jacobians} |", flush=True)


def torchdiffeq_radau():
    try:
        import torchdiffeq
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:
        print("\ntorchdiffeq is not installed: its radauIIA5 row is skipped.")
        return
    if "radauIIA5" not in SOLVERS:
        print(f"\ntorchdiffeq {torchdiffeq.__version__} (PyPI) has no implicit methods (they are on its GitHub "
              "master only): its radauIIA5 row is skipped.")
        return
    print("\ntorchdiffeq radauIIA5 present: compare by hand at the step size matching kvaerno5's error.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rtols = (1e-4, 1e-6) if args.quick else (1e-4, 1e-6, 1e-8)
    print(f"neuralode bench_stiff: torch {torch.__version__}, float64, 1 thread\n")
    rows = []
    single_problems(rtols, rows)
    nfe_ratios(rows)
    batch(64 if args.quick else 256)
    torchdiffeq_radau()


if __name__ == "__main__":
    main()
