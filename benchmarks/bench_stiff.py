"""Stiff problems: our implicit methods against SciPy's Radau and BDF, dopri5 and torchdiffeq.

In one process, float64, one thread (run it with ``OMP_NUM_THREADS=1 nice -n 10``):

1. **One table** for Robertson's kinetics on [0, 1e5] and Van der Pol (μ = 1000) on [0, 1000]
   at rtol 1e-4, 1e-6, 1e-8 (atol = rtol·1e-4 on Robertson, whose second species peaks at
   3.6e-5; atol = rtol on Van der Pol): achieved error against a float64 reference (SciPy Radau
   at rtol 1e-12 with the exact Jacobian) in tolerance units, max |y - y_ref| / (atol + rtol|y_ref|)
   over the output times; function evaluations; Jacobians; LU factorisations; wall and CPU
   time. Ours: kvaerno3, kvaerno5, rosenbrock23, rodas5 (Jacobians from autograd, not counted
   in the NFE); SciPy Radau and BDF given the exact Jacobian (as a SciPy user would; their
   ``nfev`` then counts no finite-difference columns); dopri5 with a step budget.
2. **Equal achieved error**: the target is our best method's NFE ≤ 2× SciPy Radau's at the
   error Radau achieves. For rodas5 and kvaerno5 we sweep rtol (atol in the same ratio) over
   half-decades and interpolate log NFE against log error (errors measured in the units of
   Radau's tolerance) at Radau's achieved error.
3. **A batch of 256 Robertson problems** with log-uniform rate constants (each constant times
   10^U(-1, 1)): our one batched solve (per-sample Jacobians by ``torch.func.vmap(jacrev)``, one
   batched LU per step; the error norm is each problem's RMS, worst problem, as SciPy's per
   problem) against SciPy Radau looping over the 256; both measured against a tight reference.
4. torchdiffeq's fixed-step radauIIA5, where the installed torchdiffeq has it (its GitHub master
   does; PyPI's 0.2.5 does not, and the row is skipped with a note).

Usage: ``python benchmarks/bench_stiff.py [--quick] [--batch N]`` (``--quick``: rtol 1e-4 and
1e-6, no sweep, a batch of 32, for a smoke run).
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

import neuralode
from neuralode.stiff_problems import (ROBERTSON_K, robertson, robertson_jac, robertson_np, van_der_pol,
                                      van_der_pol_jac, van_der_pol_np)

PROBLEMS = {
    # name: field, NumPy field, Jacobian, y0, output times, atol/rtol
    "robertson": (robertson, robertson_np, robertson_jac, (1.0, 0.0, 0.0),
                  (0.0, 0.4, 4.0, 40.0, 400.0, 4e3, 4e4, 1e5), 1e-4),
    "van_der_pol": (van_der_pol, van_der_pol_np, van_der_pol_jac, (2.0, 0.0), (0.0, 200.0, 400.0, 600.0, 800.0, 1000.0),
                    1.0),
}
OURS = ("kvaerno3", "kvaerno5", "rosenbrock23", "rodas5")
LOW_ORDER_MIN_RTOL = 1e-7  # kvaerno3 and rosenbrock23 skip rtol 1e-8 (10^4+ steps; not a sensible choice there)
DOPRI5_BUDGET = 5000  # steps per output interval


class Row(dict):
    """One line of the table."""


def scipy_solve(fn, jac, y0, t, method, rtol, atol):
    from scipy.integrate import solve_ivp

    wall, cpu = time.perf_counter(), time.process_time()
    out = solve_ivp(fn, (t[0], t[-1]), np.asarray(y0, float), method=method, t_eval=np.asarray(t), rtol=rtol,
                    atol=atol, jac=jac)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def scaled(y, ref, rtol, atol) -> float:
    return float(np.max(np.abs(np.asarray(y) - ref) / (atol + rtol * np.abs(ref))))


def ours(field, y0, t, method, rtol, atol, **options):
    wall, cpu = time.perf_counter(), time.process_time()
    sol = neuralode.solve(field, torch.as_tensor(y0, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64),
                          method=method, rtol=rtol, atol=atol, options=options or None, on_failure="return")
    return sol, time.perf_counter() - wall, time.process_time() - cpu


def print_row(r: Row) -> None:
    print(f"| {r['problem']} | {r['rtol']:.0e} | {r['method']} | {r['error']} | {r['nfe']} | {r['jac']} | {r['lu']} | "
          f"{r['steps']} | {r['wall']:.2f} | {r['cpu']:.2f} |", flush=True)


def single_problems(rtols) -> Dict[Tuple[str, float], Dict[str, Tuple[float, int]]]:
    print("| problem | rtol | method | error (tol units) | NFE | Jacobians | LU | steps | wall s | CPU s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    results: Dict[Tuple[str, float], Dict[str, Tuple[float, int]]] = {}
    for name, (field, fn, jac, y0, t, atol_factor) in PROBLEMS.items():
        ref = scipy_solve(fn, jac, y0, t, "Radau", 1e-12, 1e-16 if name == "robertson" else 1e-14)[0].y.T
        for rtol in rtols:
            atol = rtol * atol_factor
            result: Dict[str, Tuple[float, int]] = {}
            for method in OURS:
                if method in ("kvaerno3", "rosenbrock23") and rtol < LOW_ORDER_MIN_RTOL:
                    continue
                sol, wall, cpu = ours(field, y0, t, method, rtol, atol)
                s = sol.stats
                err = scaled(sol.ys.numpy(), ref, rtol, atol) if sol.success else math.inf
                result[method] = (err, s.nfe)
                print_row(Row(problem=name, rtol=rtol, method=method, error=f"{err:.2f}", nfe=s.nfe,
                              jac=s.n_jacobians, lu=s.n_factorizations, steps=s.n_accepted + s.n_rejected,
                              wall=wall, cpu=cpu))
            for method in ("Radau", "BDF"):
                out, wall, cpu = scipy_solve(fn, jac, y0, t, method, rtol, atol)
                err = scaled(out.y.T, ref, rtol, atol) if out.success else math.inf
                result["SciPy " + method] = (err, out.nfev)
                print_row(Row(problem=name, rtol=rtol, method=f"SciPy {method}", error=f"{err:.2f}", nfe=out.nfev,
                              jac=out.njev, lu=out.nlu, steps="–", wall=wall, cpu=cpu))
            sol, wall, cpu = ours(field, y0, t, "dopri5", rtol, atol, max_num_steps=DOPRI5_BUDGET)
            s = sol.stats
            if sol.success:
                err = f"{scaled(sol.ys.numpy(), ref, rtol, atol):.2f}"
            else:
                what = "hit max_num_steps" if sol.status is neuralode.Status.MAX_STEPS else str(sol.status)
                err = f"{what} at t={sol.t_reached:.3g}"
            print_row(Row(problem=name, rtol=rtol, method=f"dopri5 (≤{DOPRI5_BUDGET} steps/interval)", error=err,
                          nfe=s.nfe, jac=0, lu=0, steps=s.n_accepted + s.n_rejected, wall=wall, cpu=cpu))
            results[(name, rtol)] = result
    return results


def equal_error(rtols, results, methods=("rodas5", "kvaerno5"), half_decades=(-4, -3, -2, -1, 0, 1)) -> None:
    """NFE at SciPy Radau's achieved error, by sweeping our rtol and interpolating log NFE vs log error."""
    print("\nEqual achieved error: our NFE interpolated at SciPy Radau's error (errors in Radau's tolerance units; "
          "our rtol swept over rtol·10^(k/2)):")
    print("| problem | Radau rtol | Radau error | Radau NFE | method | our rtol range | our NFE at that error | ratio |")
    print("|---|---|---:|---:|---|---|---:|---:|")
    for name, (field, fn, jac, y0, t, atol_factor) in PROBLEMS.items():
        ref = scipy_solve(fn, jac, y0, t, "Radau", 1e-12, 1e-16 if name == "robertson" else 1e-14)[0].y.T
        for rtol in rtols:
            atol = rtol * atol_factor
            r_err, r_nfe = results[(name, rtol)]["SciPy Radau"]
            for method in methods:
                errs, nfes = [], []
                for k in half_decades:
                    rt = rtol * 10 ** (k / 2)
                    if rt < 1e-11 or rt > 1e-2:
                        continue
                    sol, _, _ = ours(field, y0, t, method, rt, rt * atol_factor)
                    if sol.success:
                        errs.append(scaled(sol.ys.numpy(), ref, rtol, atol))
                        nfes.append(sol.stats.nfe)
                nfe_at = _interpolate(errs, nfes, r_err)
                span = f"{rtol * 10 ** (half_decades[0] / 2):.0e}…{rtol * 10 ** (half_decades[-1] / 2):.0e}"
                shown = "outside the swept range" if nfe_at is None else f"{nfe_at:.0f}"
                ratio = "–" if nfe_at is None else f"{nfe_at / r_nfe:.2f}"
                print(f"| {name} | {rtol:.0e} | {r_err:.3f} | {r_nfe} | {method} | {span} | {shown} | {ratio} |",
                      flush=True)


def _interpolate(errs: List[float], nfes: List[int], target: float):
    """log NFE at log error = log target, linear between the bracketing sweep points (errors sorted)."""
    pts = sorted(zip(errs, nfes))
    for (e0, n0), (e1, n1) in zip(pts, pts[1:]):
        if e0 <= target <= e1 and e0 > 0:
            if e1 == e0:
                return float(max(n0, n1))
            w = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


def batch(n: int, rtol: float = 1e-6) -> None:
    gen = torch.Generator().manual_seed(0)
    k = 10 ** (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor(ROBERTSON_K,
                                                                                          dtype=torch.float64)
    t = (0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    atol = rtol * 1e-4
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).repeat(n, 1)
    kk = (k[:, 0], k[:, 1], k[:, 2])

    def field(s, y):
        return robertson(s, y, kk)

    def per_problem_rms(x: torch.Tensor) -> torch.Tensor:
        # each problem's RMS, the worst problem: the step satisfies every problem's tolerance as SciPy's does
        return x.reshape(n, -1).pow(2).mean(-1).sqrt().max()

    def loop(rt, at):
        ys, nfev, njev, nlu, wall, cpu = [], 0, 0, 0, 0.0, 0.0
        for i in range(n):
            ki = tuple(k[i].tolist())
            out, w, c = scipy_solve(lambda s, y, ki=ki: robertson_np(s, y, ki), lambda s, y, ki=ki: robertson_jac(s, y, ki),
                                    y0[0].numpy(), t, "Radau", rt, at)
            ys.append(out.y.T)
            nfev, njev, nlu, wall, cpu = nfev + out.nfev, njev + out.njev, nlu + out.nlu, wall + w, cpu + c
        return np.stack(ys, axis=1), nfev, njev, nlu, wall, cpu

    ref = loop(1e-10, 1e-14)[0]  # (T, n, 3)
    print(f"\nBatch of {n} Robertson problems, rate constants × 10^U(-1,1), rtol={rtol:.0e}, atol={atol:.0e} "
          "(error: worst problem, tolerance units, against SciPy Radau at rtol 1e-10):")
    print("| solver | error (tol units) | NFE | Jacobians | LU | wall s | CPU s | speed-up vs looping SciPy (wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ys, nfev, njev, nlu, s_wall, s_cpu = loop(rtol, atol)
    print(f"| SciPy Radau, looped over {n} | {scaled(ys, ref, rtol, atol):.2f} | {nfev} | {njev} | {nlu} | "
          f"{s_wall:.2f} | {s_cpu:.2f} | 1.0 |", flush=True)
    tt = torch.tensor(t, dtype=torch.float64)
    for method in ("rodas5", "kvaerno5", "rosenbrock23"):
        wall, cpu = time.perf_counter(), time.process_time()
        sol = neuralode.solve(field, y0, tt, method=method, rtol=rtol, atol=atol,
                              options={"jacobian": "batched", "norm": per_problem_rms}, on_failure="return")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        s = sol.stats
        err = scaled(sol.ys.numpy(), ref, rtol, atol) if sol.success else math.inf
        print(f"| ours {method}, one batched solve | {err:.2f} | {s.nfe} (×{n} samples) | {s.n_jacobians} (batched) "
              f"| {s.n_factorizations} (batched) | {wall:.2f} | {cpu:.2f} | {s_wall / wall:.1f} |", flush=True)


def torchdiffeq_radau() -> None:
    try:
        import torchdiffeq
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:
        print("\ntorchdiffeq is not installed: its radauIIA5 row is skipped.")
        return
    if "radauIIA5" not in SOLVERS:
        print(f"\ntorchdiffeq {torchdiffeq.__version__} (the newest on PyPI) has no implicit methods (they are on its "
              "GitHub master only): its fixed-step radauIIA5 row is skipped.")
        return
    print("\ntorchdiffeq radauIIA5 (fixed step, the step size halved until it reaches rodas5's error at rtol 1e-6):")
    field, fn, jac, y0, t, atol_factor = PROBLEMS["robertson"]
    ref = scipy_solve(fn, jac, y0, t, "Radau", 1e-12, 1e-16)[0].y.T
    rtol, atol = 1e-6, 1e-10
    target = scaled(ours(field, y0, t, "rodas5", rtol, atol)[0].ys.numpy(), ref, rtol, atol)
    step = 1.0
    while step > 1e-4:
        wall = time.perf_counter()
        ys = torchdiffeq.odeint(field, torch.tensor(y0, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                                method="radauIIA5", options={"step_size": step})
        err = scaled(ys.numpy(), ref, rtol, atol)
        print(f"  step {step:g}: error {err:.2f} tolerance units, {time.perf_counter() - wall:.2f} s")
        if err <= target:
            break
        step /= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rtols = (1e-4, 1e-6) if args.quick else (1e-4, 1e-6, 1e-8)
    print(f"neuralode bench_stiff: torch {torch.__version__}, float64, {torch.get_num_threads()} thread\n")
    results = single_problems(rtols)
    if not args.quick:
        equal_error(rtols, results)
    batch(args.batch or (32 if args.quick else 256))
    torchdiffeq_radau()


if __name__ == "__main__":
    main()
