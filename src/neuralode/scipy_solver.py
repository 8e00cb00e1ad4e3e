"""``method="scipy_solver"``: SciPy's ``solve_ivp`` as a method, like torchdiffeq's bridge.

``options={"solver": name}`` picks SciPy's integrator (``RK45``, ``RK23``, ``DOP853``,
``Radau``, ``BDF`` or ``LSODA``; default ``LSODA`` as in torchdiffeq), with ``rtol``/``atol``
and the options ``min_step`` (LSODA only: SciPy's other integrators have none, so a positive
value with them is an error rather than silently ignored) and ``max_step``. ``norm`` is
accepted and ignored, as torchdiffeq does.

Forward only: the state goes through NumPy, so no gradient can flow through the steps.
torchdiffeq silently returns a result without a graph; here asking for one (``y0`` or ``t``
requiring grad, or a parameter of an ``nn.Module`` field requiring grad, with direct or
checkpointed gradients) is an error that says so. The adjoint needs no graph of the forward
solve, so ``odeint_adjoint``/``gradient='adjoint'`` work, as in torchdiffeq. The field is called without gradients, with times and states as tensors of the
state's dtype on its device.

Accepted steps are reported to the solve's observers (:data:`~neuralode.stepping.StepObserver`)
from SciPy's dense output after the solve, so step observers (event detection) work here too;
an observer's stop ends the trajectory there. Statistics: ``nfe`` is SciPy's count of function
evaluations, ``n_accepted`` its number of steps; SciPy does not report rejected steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Tuple

import numpy as np
import torch

from .options import as_float, check_names, describe, step_bounds
from .solution import Solution, SolveStats, Status
from .stepping import AcceptedStep, Method, StepObserver

if TYPE_CHECKING:  # pragma: no cover
    from .problem import Problem

SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
SCIPY_OPTIONS = ("solver", "min_step", "max_step", "norm")


@dataclass(frozen=True)
class ScipyOptions:
    solver: str = "LSODA"
    min_step: float = 0.0
    max_step: float = math.inf


def parse_scipy(options: Dict[str, Any], reversed_: bool, method: str) -> ScipyOptions:
    check_names(options, SCIPY_OPTIONS, method)
    kw: Dict[str, Any] = step_bounds(options)
    if "solver" in options:
        if options["solver"] not in SOLVERS:
            raise ValueError(f"options['solver'] must be one of {list(SOLVERS)} (SciPy's solve_ivp methods); got "
                             f"{describe(options['solver'])}")
        kw["solver"] = options["solver"]
    opts = ScipyOptions(**kw)
    if opts.min_step > 0 and opts.solver != "LSODA":
        raise ValueError(f"options['min_step']={as_float('min_step', opts.min_step)} needs solver 'LSODA': SciPy's "
                         f"{opts.solver} has no minimum step")
    return opts


def _tolerance(tol) -> Any:
    return tol.detach().cpu().numpy().astype(np.float64) if isinstance(tol, torch.Tensor) else tol


def integrate_scipy(problem: "Problem", observers: Tuple[StepObserver, ...]) -> Solution:
    """Solve ``problem`` (internal form: increasing time) with ``scipy.integrate.solve_ivp``."""
    from scipy.integrate import solve_ivp

    opts: ScipyOptions = problem.options
    y0 = problem.y0
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    real = y0.real.dtype if y0.is_complex() else dtype
    func = problem.func
    stats = SolveStats()
    ts = problem.t.detach().cpu().numpy().astype(np.float64)
    n_out = len(ts)

    def to_torch(y):
        return torch.as_tensor(np.asarray(y)).to(device=device, dtype=dtype).reshape(shape)

    def field(t, y):
        with torch.no_grad():
            f = func(torch.tensor(t, dtype=real, device=device), to_torch(y))
        return f.detach().cpu().numpy().reshape(-1)

    if n_out == 1:
        return Solution(ys=y0.detach()[None], ts=problem.t, stats=stats, status=Status.SUCCESS,
                        t_reached=problem.to_user_time(float(ts[0])))
    kwargs: Dict[str, Any] = dict(method=opts.solver, rtol=_tolerance(problem.rtol), atol=_tolerance(problem.atol),
                                  max_step=opts.max_step, t_eval=ts, dense_output=True)
    if opts.solver == "LSODA":
        kwargs["min_step"] = opts.min_step
    sol = solve_ivp(field, (float(ts[0]), float(ts[-1])), y0.detach().cpu().numpy().reshape(-1), **kwargs)
    stats.nfe = int(sol.nfev)
    grid = sol.sol.ts if sol.sol is not None else np.array([ts[0]])
    stats.n_accepted = len(grid) - 1
    if len(grid) > 1:
        stats.final_step = float(grid[-1] - grid[-2])
    values = [y0.detach()] + [to_torch(sol.y[:, i]) for i in range(1, sol.y.shape[1])]
    t_reached = float(sol.t[-1]) if len(sol.t) else float(ts[0])
    status = Status.SUCCESS if sol.status == 0 else Status.STEP_UNDERFLOW
    if status is not Status.SUCCESS and len(grid) > 1:
        t_reached = float(grid[-1])

    if observers:
        stop = _observe(observers, problem, sol.sol, grid, ts, to_torch)
        if stop is not None:
            t_reached, n_keep = stop
            values = values[:n_keep]
            status = Status.SUCCESS
    while len(values) < n_out:
        values.append(torch.full_like(y0, math.nan).detach())
    return Solution(ys=torch.stack(values[:n_out]), ts=problem.t, stats=stats, status=status,
                    t_reached=problem.to_user_time(t_reached))


def _observe(observers, problem, dense, grid, ts, to_torch):
    """Report SciPy's steps to the observers; returns ``(t_stop, outputs kept)`` on a stop."""
    y_prev = problem.y0.detach()
    next_out = 1
    for k in range(len(grid) - 1):
        t0, t1 = float(grid[k]), float(grid[k + 1])
        y1 = to_torch(dense(t1))
        outs = []
        while next_out + len(outs) < len(ts) and ts[next_out + len(outs)] <= t1:
            outs.append((next_out + len(outs), False))
        step = AcceptedStep(t0, t1, y_prev, y1, t0, t1, 0, 0, tuple(outs), t1 == float(ts[-1]), k,
                            lambda t: to_torch(dense(float(t))))
        for observe in observers:
            t_stop = observe(step)
            if t_stop is not None:
                t_stop = float(t_stop)
                if not t0 < t_stop <= t1:
                    raise ValueError(f"a step observer asked to stop at {t_stop}, outside its step ({t0}, {t1}]")
                kept = next_out + sum(1 for i, _ in outs if ts[i] <= t_stop)
                return t_stop, kept
        next_out += len(outs)
        y_prev = y1
    return None


SCIPY_SOLVER = Method("scipy_solver", 5, True, parse_scipy, SCIPY_OPTIONS, integrate=integrate_scipy,
                      callbacks=(), differentiable=False,
                      reference="SciPy's solve_ivp (RK45, RK23, DOP853, Radau, BDF, LSODA), as torchdiffeq's "
                                "ScipyWrapperODESolver.")
