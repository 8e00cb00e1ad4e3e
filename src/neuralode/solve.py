"""The public entries: :func:`solve` (statistics and status), and torchdiffeq's :func:`odeint` and
:func:`odeint_dense`."""
from __future__ import annotations

import bisect

from typing import Any, Callable, Dict, List, Optional, Tuple, cast, overload

import torch
from torch import nn

from .errors import SolverError
from .gradient import resolve_gradient
from .integrate import integrate
from .problem import Problem, make_problem
from .solution import Solution, TensorOrTuple


def solve(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    method: Optional[str] = None,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    options: Optional[Dict[str, Any]] = None,
    on_failure: str = "raise",
    gradient: Any = "direct",
    events: Any = None,
    per_sample_events: bool = False,
    per_sample_steps: bool = False,
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
        events: an :class:`neuralode.Event` or a list of them (plain callables ``g(t, y)`` are read
            as SciPy's): located on the dense output, recorded in ``Solution.events``; a terminal
            one ends the solve there (``ys``/``ts`` then stop at the last output reached). Event
            times and states are differentiable (see :mod:`neuralode.events`).
        per_sample_events: the state is a batch (samples along the first dimension; the field must
            treat them independently): each sample stops at its own terminal event and stays
            frozen there while the others go on; ``ys`` keeps every output time.

        per_sample_steps: the state is a batch of independent problems (samples along the first
            dimension): each sample gets its own step size, accept/reject decision and, with ``t``
            of shape ``[B, T]``, its own output times; ``func`` then gets one time per row
            (``t`` of shape ``(n,)``). Returns a :class:`neuralode.persample.PerSampleSolution`
            whose ``ys`` is batch-first, ``(B, T, *state)``. See :mod:`neuralode.persample`.

    Returns:
        :class:`Solution` with ``ys`` of shape ``(len(t), *y0.shape)``, ``stats`` and ``status``.
    """
    if per_sample_steps:
        if events is not None or per_sample_events:
            raise ValueError("per_sample_steps=True does not take events (use per_sample_events with shared steps)")
        from .persample import solve_per_sample

        return solve_per_sample(func, cast(torch.Tensor, y0), t, method=method, rtol=rtol, atol=atol, options=options,
                                on_failure=on_failure, gradient=gradient)
    problem = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, on_failure=on_failure)
    strategy = resolve_gradient(gradient)
    if not problem.method.differentiable and getattr(strategy, "needs_forward_graph", True):
        _refuse_gradients(problem, func, gradient)
    if events is not None:
        from .events import solve_with_events

        solution = solve_with_events(problem, events, strategy, per_sample_events)
    elif per_sample_events:
        raise ValueError("per_sample_events=True needs events=[...]")
    else:
        solution = strategy.solve(problem)
    if not solution.success and on_failure == "raise":
        t_reached = solution.t_reached if solution.t_reached is not None else float("nan")
        raise SolverError(solution.status, t_reached, detail=_failure_detail(solution, problem))
    solution.ys = problem.unpack(cast(torch.Tensor, solution.ys))  # the strategies return the stacked form
    if isinstance(t, torch.Tensor):
        solution.ts = t[:len(solution.ts)]
    return solution


def _refuse_gradients(problem: Problem, func: Any, gradient: Any) -> None:
    """A forward-only method (the SciPy bridge) cannot give gradients by backprop through its
    steps (the adjoint needs none): say so when any are asked for."""
    wanted: List[str] = []
    if gradient != "direct":
        wanted.append(f"gradient={gradient!r}")
    if torch.is_grad_enabled():
        if problem.y0.requires_grad:
            wanted.append("y0 requires grad")
        if problem.t.requires_grad:
            wanted.append("t requires grad")
        if isinstance(func, nn.Module) and any(p.requires_grad for p in func.parameters()):
            wanted.append("parameters of func require grad")
    if wanted:
        raise ValueError(f"method '{problem.method.name}' is forward only (no gradient flows through it), but "
                         f"{', '.join(wanted)}; solve under torch.no_grad() (or detach y0 and t and freeze the "
                         f"parameters), use gradient='adjoint' (odeint_adjoint), which needs no graph of the forward "
                         f"solve, or use a method of this package")


def _failure_detail(solution: Solution, problem: Problem) -> str:
    stats = solution.stats
    return (f"method={problem.method.name}, {stats.n_accepted} accepted and {stats.n_rejected} rejected steps, "
            f"{stats.nfe} function evaluations")


@overload
def odeint(func: Callable[..., Any], y0: TensorOrTuple, t: torch.Tensor, *, rtol: Any = ..., atol: Any = ...,
           method: Optional[str] = ..., options: Optional[Dict[str, Any]] = ...,
           event_fn: None = ...) -> TensorOrTuple: ...


@overload
def odeint(func: Callable[..., Any], y0: TensorOrTuple, t: torch.Tensor, *, rtol: Any = ..., atol: Any = ...,
           method: Optional[str] = ..., options: Optional[Dict[str, Any]] = ...,
           event_fn: Callable[..., Any]) -> Tuple[torch.Tensor, TensorOrTuple]: ...


def odeint(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
    event_fn: Optional[Callable[..., Any]] = None,
) -> TensorOrTuple | Tuple[torch.Tensor, TensorOrTuple]:
    """Drop-in replacement for ``torchdiffeq.odeint``: same signature, defaults and results.

    Returns the solution at the times ``t`` stacked along a new leading dimension (a tuple of
    such tensors for tuple ``y0``). Gradients flow by backpropagation through the solver; for
    O(1)-memory adjoint gradients use :func:`neuralode.odeint_adjoint`. Raises
    :class:`SolverError` when the solve fails; use :func:`solve` for statistics and
    ``on_failure='return'``.

    With ``event_fn(t, y) -> tensor`` (torchdiffeq's event mode) ``t`` must hold two times and
    only ``t[0]`` is used: the solve runs from ``t[0]`` until an element of ``event_fn`` first
    changes sign and returns ``(event_t, solution)``, ``solution`` holding ``y0`` and the state at
    ``event_t``; both differentiable, the event time by the implicit function theorem (see
    :func:`neuralode.odeint_event` and :mod:`neuralode.events`).
    """
    if event_fn is not None:
        return solve_until_event(func, y0, t, event_fn, method=method, rtol=rtol, atol=atol, options=options,
                                 gradient="direct")
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options).ys


def solve_until_event(func: Callable[..., Any], y0: TensorOrTuple, t: torch.Tensor, event_fn: Callable[..., Any], *,
                      method: Optional[str], rtol: Any, atol: Any, options: Optional[Dict[str, Any]],
                      gradient: Any) -> Tuple[torch.Tensor, TensorOrTuple]:
    """torchdiffeq's event mode of ``odeint``/``odeint_adjoint``: ``(event_t, [y0, y(event_t)])``."""
    from .events import solve_until_event as run

    problem = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options)
    event_t, ys = run(problem, event_fn, resolve_gradient(gradient))
    return event_t, problem.unpack(ys)


def odeint_dense(
    func: Callable[..., Any],
    y0: TensorOrTuple,
    t0: Any,
    t1: Any,
    *,
    rtol: Any = 1e-7,
    atol: Any = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> Callable[[Any], TensorOrTuple]:
    """torchdiffeq's ``odeint_dense``: solve from ``t0`` to ``t1`` and return ``dense(t)``, the
    solution at any scalar time ``t`` between them from the accepted steps' dense output.

    Like torchdiffeq's (dopri5 only there), the steps are those of a solve to ``t1``; here every
    method of the package but ``scipy_solver`` works, ``t1 < t0`` is allowed, tuple states too,
    and ``dense(t)`` is differentiable (direct backprop) with respect to ``t``, ``y0`` and the
    parameters. A time outside ``[t0, t1]`` is a ValueError.
    """
    t0 = torch.as_tensor(t0)
    t = torch.stack([t0, torch.as_tensor(t1).to(t0)]) if t0.is_floating_point() else torch.tensor([float(t0), float(t1)])
    problem = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options)
    if problem.method.integrate is not None:
        raise ValueError(f"odeint_dense needs a method of this package; '{problem.method.name}' has no dense output "
                         f"of its own steps")
    steps: List[Tuple[float, float, Any]] = []  # (t0, t1, the step's interpolant)
    problem.observers = (lambda step: steps.append((step.t0, step.t1, step.interpolate)),)
    solution = integrate(problem)
    if not solution.success:
        t_reached = solution.t_reached if solution.t_reached is not None else float("nan")
        raise SolverError(solution.status, t_reached, detail=_failure_detail(solution, problem))
    starts = [s[0] for s in steps]
    lo, hi = float(problem.t[0]), float(problem.t[-1])
    sign = -1.0 if problem.reversed else 1.0

    def dense(t_eval: Any) -> TensorOrTuple:
        value = float(t_eval.detach()) if isinstance(t_eval, torch.Tensor) else float(t_eval)
        s = sign * value
        if not lo <= s <= hi:
            raise ValueError(f"odeint_dense: t={value} is outside the solved span "
                             f"[{problem.to_user_time(lo)}, {problem.to_user_time(hi)}]")
        if s == lo:
            y = problem.y0
        else:
            k = min(max(bisect.bisect_left(starts, s) - 1, 0), len(steps) - 1)
            tt = sign * t_eval if isinstance(t_eval, torch.Tensor) else s
            y = steps[k][2](tt)
        out = problem.unpack(y[None])
        return out[0] if problem.shapes is None else tuple(part[0] for part in out)

    return dense
