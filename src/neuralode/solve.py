"""The public entries: :func:`solve` (statistics and status) and :func:`odeint` (torchdiffeq's)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from .errors import SolverError
from .gradient import resolve_gradient
from .problem import make_problem
from .solution import Solution, TensorOrTuple


def solve(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    method: Optional[str] = None,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    options: Optional[Dict[str, Any]] = None,
    on_failure: str = "raise",
    gradient: Any = "direct",
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and return the states at the times ``t``.

    Args:
        func: the vector field ``func(t, y) -> dy/dt``; ``t`` is a 0-d tensor. For tuple ``y0``
            it takes and returns tuples. Methods ``callback_step``, ``callback_accept_step`` and
            ``callback_reject_step`` on it are called with ``(t0, y0, dt)`` as torchdiffeq does.
        y0: initial state, a floating tensor of any shape or a tuple of them.
        t: 1-D strictly increasing or strictly decreasing output times; ``t[0]`` is the start.
        method: one of ``neuralode.METHODS`` (default ``'dopri5'``).
        rtol, atol: relative and absolute tolerances of adaptive methods (per component for tuples).
        options: torchdiffeq's options; an unknown name is an error.
        on_failure: ``'raise'`` raises :class:`SolverError`; ``'return'`` returns the trajectory up
            to the failure (NaN after it) with the failure in ``status``.
        gradient: ``'direct'``, ``'adjoint'``, ``'adjoint-seminorm'``, ``'checkpoint'`` or a
            strategy object (see :mod:`neuralode.adjoint`).

    Returns:
        :class:`Solution` with ``ys`` of shape ``(len(t), *y0.shape)``, ``stats`` and ``status``.
    """
    problem = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, on_failure=on_failure)
    strategy = resolve_gradient(gradient)
    solution = strategy.solve(problem)
    if not solution.success and on_failure == "raise":
        raise SolverError(solution.status, solution.t_reached, detail=_failure_detail(solution, problem))
    solution.ys = problem.unpack(solution.ys)
    solution.ts = t if isinstance(t, torch.Tensor) else solution.ts
    return solution


def _failure_detail(solution: Solution, problem) -> str:
    stats = solution.stats
    return (f"method={problem.method.name}, {stats.n_accepted} accepted and {stats.n_rejected} rejected steps, "
            f"{stats.nfe} function evaluations")


def odeint(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> TensorOrTuple:
    """Drop-in replacement for ``torchdiffeq.odeint``: same signature, defaults and results.

    Returns the solution at the times ``t`` stacked along a new leading dimension (a tuple of
    such tensors for tuple ``y0``). Gradients flow by backpropagation through the solver; for
    O(1)-memory adjoint gradients use :func:`neuralode.odeint_adjoint`. Raises
    :class:`SolverError` when the solve fails; use :func:`solve` for statistics and
    ``on_failure='return'``.
    """
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options).ys
