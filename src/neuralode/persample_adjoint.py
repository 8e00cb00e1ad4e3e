"""Adjoint gradients for per-sample stepping: each sample's backward solve takes its own steps.

The forward pass is :func:`neuralode.persample.solve_per_sample` without a graph. The backward
pass solves, per sample ``b`` and in reversed time ``r = -t``, the adjoint system
``dy/dr = -f(t, y)``, ``da/dr = aᵀ ∂f/∂y`` from ``t[b, -1]`` back to ``t[b, 0]``, with the
per-sample loop: every sample has its own step size, accept/reject decision and error norm
(RMS over its own ``[y, a]``), so one hard sample does not shorten the backward steps of the
others, just as in the forward pass. At each output time the state ``y`` is reset to the forward
solution and the loss's gradient is added to ``a`` (as torchdiffeq's adjoint does); each sample's
first backward step is the step size its forward solve ended with.

Parameter gradients ``dL/dθ = Σ_b ∫ a_bᵀ ∂f_b/∂θ dt`` are shared by the samples, so they are not
part of any sample's state: each sample's integral is accumulated with the quadrature weights of
its own accepted steps (the method's ``b_j h_b``), one vector-Jacobian product per step for the
whole batch (the stage graphs are kept until the step's accept/reject decision). They never enter
the error estimate — the seminorm of Kidger, Chen & Lyons (ICML 2021) is the only norm here.
To record every stage, each backward step evaluates its first stage afresh (no
first-same-as-last reuse): dopri5 costs 7 evaluations per backward step instead of 6.

Time gradients use the closed forms of :mod:`neuralode.adjoint`: ``dL/dt_{b,i} = <g_{b,i},
f(t_{b,i}, y_{b,i})>`` for ``i >= 1`` and ``dL/dt_{b,0} = -<a_b(t_{b,0}), f(t_{b,0}, y_{b,0})>``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from .adjoint import Adjoint, _module_parameters
from .errors import SolverError
from .persample import OPTIONS, PerSampleSolution, _bcast, _describe, _finish, _integrate, _settings
from .rk import plan_for
from .solution import SolveStats, Status
from .tableaus import ADAPTIVE_METHODS, METHODS, ButcherTableau


class _AdjointSystem:
    """The adjoint field on rows ``z = [y, a]`` (shape ``(n, 2, *state)``) in reversed time, and
    the quadrature of the parameter gradients over the accepted steps (a
    :class:`neuralode.persample.Quadrature`)."""

    def __init__(self, func: Callable, params: Sequence[torch.Tensor], tableau: ButcherTableau):
        self.func = func
        self.params = tuple(params)
        self.weights: Dict[int, float] = dict(plan_for(tableau).solution.terms)  # stage -> b_j
        self.records: List[Tuple[float, torch.Tensor, torch.Tensor]] = []
        self.stage = -1  # the next stage's index while a step records, else -1
        self.grads = [torch.zeros_like(p) for p in self.params]

    def begin(self) -> None:
        self.records.clear()
        self.stage = 0

    def __call__(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y, a = z[:, 0].detach(), z[:, 1].detach()
        weight = self.weights.get(self.stage, 0.0) if self.stage >= 0 else 0.0
        keep = weight != 0.0 and len(self.params) > 0
        if self.stage >= 0:
            self.stage += 1
        with torch.enable_grad():
            y = y.requires_grad_(True)
            f = self.func(-r, y)
            vjp = None
            if f.requires_grad:
                (vjp,) = torch.autograd.grad(f, y, a, retain_graph=keep, allow_unused=True)
        if vjp is None:
            vjp = torch.zeros_like(y)
        if keep and f.requires_grad:
            self.records.append((weight, f, a))
        return torch.stack([-f.detach(), vjp], 1)

    def commit(self, h: torch.Tensor) -> None:
        """Add ``Σ_j b_j h_b a_jᵀ ∂f_j/∂θ`` over the rows' accepted steps (``h`` is 0 elsewhere)."""
        self.stage = -1
        if not self.records:
            return
        with torch.enable_grad():
            terms = [(f * (_bcast(h.to(f.dtype) * weight, f) * a)).sum() for weight, f, a in self.records]
            total = torch.stack(terms).sum()
            grads = torch.autograd.grad(total, self.params, allow_unused=True)
        for acc, g in zip(self.grads, grads):
            if g is not None:
                acc.add_(g)
        self.records.clear()


class _Run:
    """Everything the backward pass needs besides the saved tensors (no reference to the outputs)."""

    def __init__(self, func: Callable, tab: ButcherTableau, rtol: float, atol: float, opts: Dict[str, Any],
                 on_failure: str, params: Tuple[torch.Tensor, ...], back_tab: ButcherTableau, back_rtol: float,
                 back_atol: float, back_opts: Dict[str, Any]):
        self.func, self.tab, self.rtol, self.atol, self.opts, self.on_failure = func, tab, rtol, atol, opts, on_failure
        self.params = params
        self.back_tab, self.back_rtol, self.back_atol, self.back_opts = back_tab, back_rtol, back_atol, back_opts
        self.solution: Optional[PerSampleSolution] = None
        self.h_last: Optional[torch.Tensor] = None
        self.stats: Optional[SolveStats] = None
        self.back_accepted: Optional[torch.Tensor] = None
        self.back_rejected: Optional[torch.Tensor] = None


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: _Run, y0: torch.Tensor, t2: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            solution, h_last = _integrate(run.func, y0, t2, run.tab, run.rtol, run.atol, run.opts, False)
        _finish(solution, run.tab, run.on_failure)
        batch = y0.shape[0]
        solution.n_accepted_backward_per_sample = torch.zeros(batch, dtype=torch.long, device=y0.device)
        solution.n_rejected_backward_per_sample = torch.zeros(batch, dtype=torch.long, device=y0.device)
        run.solution, run.h_last, run.stats = solution, h_last, solution.stats
        run.back_accepted = solution.n_accepted_backward_per_sample
        run.back_rejected = solution.n_rejected_backward_per_sample
        ctx.run = run
        ys = cast(torch.Tensor, solution.ys)
        ctx.save_for_backward(ys, t2)
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        run: _Run = ctx.run
        ys, t2 = ctx.saved_tensors
        batch, n_out = t2.shape
        ts = t2.detach()
        if not bool(torch.isfinite(ys).all()):
            raise SolverError(Status.NONFINITE, float("nan"), detail="per-sample adjoint: the forward solution holds "
                              "NaN (a failed forward solve with on_failure='return'); no gradient can be computed")
        system = _AdjointSystem(run.func, run.params, run.back_tab)
        z = torch.stack([ys[:, -1], grad_ys[:, -1]], 1)
        h = run.h_last
        need_t = ctx.needs_input_grad[2]
        t_grad = torch.zeros_like(ts) if need_t else None
        a = grad_ys[:, -1]
        for i in range(n_out - 1, 0, -1):
            r = torch.stack([-ts[:, i], -ts[:, i - 1]], 1)
            segment, h = _integrate(system, z, r, run.back_tab, run.back_rtol, run.back_atol, run.back_opts, False,
                                    quadrature=system, first_h=h)
            _count(run, segment)
            if segment.status is not Status.SUCCESS:
                reached = -segment.t_reached if segment.t_reached is not None else float("nan")
                raise SolverError(segment.status, reached,
                                  detail=f"per-sample adjoint (backward solve from t[:, {i}] to t[:, {i - 1}]), "
                                         f"method={run.back_tab.name}, {segment.stats.n_accepted} accepted and "
                                         f"{segment.stats.n_rejected} rejected steps, {segment.stats.nfe} evaluations")
            a = cast(torch.Tensor, segment.ys)[:, -1, 1]
            if i > 1:
                a = a + grad_ys[:, i - 1]
                z = torch.stack([ys[:, i - 1], a], 1)
        if t_grad is not None:
            with torch.no_grad():
                dtype = ys.dtype
                for i in range(n_out):
                    f = run.func(ts[:, i].to(dtype), ys[:, i])
                    weight = a if i == 0 else grad_ys[:, i]
                    dot = (weight * f).reshape(batch, -1).sum(1).to(ts.dtype)
                    t_grad[:, i] = -dot if i == 0 else dot
            if n_out == 1:
                t_grad.zero_()  # y(t0) = y0 does not depend on t0
            if run.stats is not None:
                run.stats.nfe_backward += n_out
        a0 = a + grad_ys[:, 0] if n_out > 1 else grad_ys[:, 0]
        return (None, a0, t_grad, *system.grads)


def _count(run: _Run, segment: PerSampleSolution) -> None:
    if run.stats is not None:
        run.stats.nfe_backward += segment.stats.nfe
        run.stats.n_accepted_backward += segment.stats.n_accepted
        run.stats.n_rejected_backward += segment.stats.n_rejected
    if run.back_accepted is not None and segment.n_accepted_per_sample is not None:
        run.back_accepted.add_(segment.n_accepted_per_sample)
    if run.back_rejected is not None and segment.n_rejected_per_sample is not None:
        run.back_rejected.add_(segment.n_rejected_per_sample)


def _strategy(gradient: Any) -> Adjoint:
    if isinstance(gradient, Adjoint):
        return gradient
    return Adjoint(seminorm=gradient == "adjoint-seminorm")


def _parameters(func: Callable, strategy: Adjoint) -> Tuple[torch.Tensor, ...]:
    if strategy.params is not None:
        params: Sequence[torch.Tensor] = strategy.params
    elif isinstance(func, nn.Module):
        params = _module_parameters(func)
    else:
        raise ValueError(f"the per-sample adjoint needs the parameters of func, but func is not an nn.Module (got "
                         f"{type(func).__name__}); make func an nn.Module or pass gradient=Adjoint(params=[...]) "
                         f"(params=() for a field without parameters)")
    return tuple(p for p in params if p.requires_grad)


def _backward_settings(strategy: Adjoint, tab: ButcherTableau, rtol: float, atol: float, opts: Dict[str, Any]
                       ) -> Tuple[ButcherTableau, float, float, Dict[str, Any]]:
    back_tab = tab
    if strategy.method is not None:
        if strategy.method not in METHODS or strategy.method not in ADAPTIVE_METHODS:
            raise ValueError(f"the per-sample adjoint's method must be an adaptive explicit method; got "
                             f"{_describe(strategy.method)}; valid: {list(ADAPTIVE_METHODS)}")
        back_tab = METHODS[strategy.method]
    tols = []
    for name, value, default in (("rtol", strategy.rtol, rtol), ("atol", strategy.atol, atol)):
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"the per-sample adjoint's {name} must be a number > 0; got {_describe(value)}")
        tols.append(float(value))
    back_opts = {key: value for key, value in opts.items() if key != "first_step"}
    if strategy.options is not None:
        unknown = sorted(set(strategy.options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown adjoint option(s) {unknown} for per-sample stepping; valid: {list(OPTIONS)} "
                             f"(the parameter gradients never enter the error norm here, so 'norm' is not needed)")
        back_opts.update(strategy.options)
    _settings(back_opts, back_tab.name)  # bad values fail here, not in the backward pass
    return back_tab, tols[0], tols[1], back_opts


def solve_adjoint(func: Callable, y0: torch.Tensor, t2: torch.Tensor, tab: ButcherTableau, rtol: float, atol: float,
                  opts: Dict[str, Any], on_failure: str, gradient: Any) -> PerSampleSolution:
    """:func:`neuralode.persample.solve_per_sample` with ``gradient='adjoint'``/``'adjoint-seminorm'``
    or an :class:`neuralode.Adjoint` (its ``rtol``, ``atol``, ``method``, ``options`` and
    ``params`` are used; the norm is always the seminorm)."""
    strategy = _strategy(gradient)
    params = _parameters(func, strategy)
    back_tab, back_rtol, back_atol, back_opts = _backward_settings(strategy, tab, rtol, atol, opts)
    if not (torch.is_grad_enabled() and (y0.requires_grad or t2.requires_grad or params)):
        solution, _ = _integrate(func, y0, t2, tab, rtol, atol, opts, False)
        return _finish(solution, tab, on_failure)
    run = _Run(func, tab, rtol, atol, opts, on_failure, params, back_tab, back_rtol, back_atol, back_opts)
    ys = _PerSampleAdjoint.apply(run, y0, t2, *params)
    forward, run.solution = run.solution, None  # no cycle: output -> ctx -> run -> solution -> output
    if forward is None:  # pragma: no cover - apply() always runs forward()
        raise RuntimeError("the per-sample adjoint's forward pass produced no solution")
    forward.ys = ys
    return forward
