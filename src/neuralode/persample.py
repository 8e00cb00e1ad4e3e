"""Per-sample adaptive stepping: every sample of a batch has its own time, step size and outputs.

:func:`neuralode.solve` controls one step size for the whole state: the error norm runs over
every sample, so one hard (stiff, fast) sample shrinks the step of all the others, and samples
observed at different times need the union of their time grids. Here the batch's leading
dimension is a batch of *independent* problems. Each sample ``b`` has its own time ``t_b``,
step size ``h_b``, error norm (RMS over that sample's elements), accept/reject decision and
PI-controller memory, and optionally its own output times (``t`` of shape ``[B, T]``). The
field is still called once per stage on the whole batch, with a time *vector*: the design of
torchode (Lienen & Günnemann, 2022), whose per-sample semantics this follows.

Contract of the field: ``func(t, y)`` with ``y`` of shape ``(n, *state)`` and ``t`` of shape
``(n,)`` — one time per row (broadcast it yourself, e.g. ``t[:, None]``). Rows must not
interact (no batch norm across the batch). With ``options={'compact': True}`` finished samples
stop costing work: the field is called on the unfinished rows only, so it must also have no
per-row parameters (a per-sample parameter belongs in the state, with zero derivative).

Gradients: ``'direct'`` (autograd through the steps) and ``'checkpoint'`` (each step's stages
recomputed in the backward pass, :func:`torch.utils.checkpoint.checkpoint`), and the adjoint
(``'adjoint'``, ``'adjoint-seminorm'`` or a :class:`neuralode.Adjoint`), whose backward solve is
per-sample too: see :mod:`neuralode.persample_adjoint`.

Host synchronisation: one small device→host transfer per attempted step (how many outputs the
step passes and how many samples remain), plus one index computation when some samples finish
in compact mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, cast

import torch
from torch.utils.checkpoint import checkpoint

from .control import PIController, first_step, rms_norm_rows, step_towards, tolerance_scale, trial_step
from .errors import SolverError
from .interpolate import dense_rows, needs_end_derivative
from .options import AdaptiveOptions, parse_adaptive
from .rk import plan_for
from .solution import Solution, Status
from .tableaus import ADAPTIVE_METHODS, DEFAULT_METHOD, METHODS, ButcherTableau

OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "max_num_steps", "compact")
GRADIENTS = ("direct", "checkpoint", "adjoint", "adjoint-seminorm")


@dataclass
class PerSampleSolution(Solution):
    """A :class:`Solution` with per-sample step counts.

    ``ys`` has shape ``(B, T, *state)`` (batch first, since the samples' times differ);
    ``stats.nfe`` counts calls of the field (each on the whole or the unfinished batch) and
    ``stats.n_accepted`` / ``n_rejected`` are summed over samples. ``row_evaluations`` counts
    rows passed to the field (less than ``nfe·B`` when finished samples were left out).
    """

    n_accepted_per_sample: Optional[torch.Tensor] = None
    n_rejected_per_sample: Optional[torch.Tensor] = None
    row_evaluations: int = 0
    n_accepted_backward_per_sample: Optional[torch.Tensor] = None  # filled by the adjoint's backward pass
    n_rejected_backward_per_sample: Optional[torch.Tensor] = None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(func, y0, t, method, rtol, atol, options, gradient) -> Tuple[ButcherTableau, torch.Tensor, dict]:
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_describe(func)}")
    if method not in METHODS or method not in ADAPTIVE_METHODS:
        raise ValueError(f"per-sample stepping needs an adaptive method; got {_describe(method)}; "
                         f"valid: {list(ADAPTIVE_METHODS)}")
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point() or y0.dim() < 1:
        raise TypeError(f"y0 must be a floating tensor with a leading batch dimension; got {_describe(y0)}")
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"t must be a floating tensor of shape [T] or [B, T]; got {_describe(t)}")
    batch = y0.shape[0]
    if t.dim() == 1:
        t = t.expand(batch, -1)
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] < 1:
        raise ValueError(f"t must have shape [T] or [B, T] with B = y0.shape[0] = {batch}; got {tuple(t.shape)}")
    if t.device != y0.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0.device}; put both on one device")
    td = t.detach()
    if t.shape[1] > 1 and not bool((td[:, 1:] > td[:, :-1]).all()):
        raise ValueError("t must be strictly increasing along each row (per-sample stepping integrates forward; "
                         "negate time in the field for a backward solve)")
    if not bool(torch.isfinite(td).all()) or not bool(torch.isfinite(y0.detach()).all()):
        raise ValueError("t and y0 must be finite")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"{name} must be a number >= 0; got {_describe(tol)}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol are both 0: an adaptive method needs a positive tolerance")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for per-sample stepping; valid options: {list(OPTIONS)}")
    _settings(options, method)
    if isinstance(gradient, str):
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient={_describe(gradient)} is not available with per-sample stepping; valid: "
                             f"{list(GRADIENTS)} or a neuralode.Adjoint(...)")
    else:
        from .adjoint import Adjoint

        if not isinstance(gradient, Adjoint):
            raise TypeError(f"gradient must be one of {list(GRADIENTS)} or a neuralode.Adjoint(...) with per-sample "
                            f"stepping; got {_describe(gradient)}")
    return METHODS[method], t, options


def _settings(options: Dict[str, Any], method: str) -> AdaptiveOptions:
    """The step-control options (validated, with the shared loop's defaults); ``compact`` is ours."""
    return parse_adaptive({key: value for key, value in options.items() if key != "compact"}, False, method)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _combine(y: torch.Tensor, ks: List[torch.Tensor], terms, h: torch.Tensor) -> torch.Tensor:
    """``y + h Σ w_j k_j`` with a per-row step ``h`` (already broadcast)."""
    acc = None
    for j, w in terms:
        acc = ks[j] * w if acc is None else acc + ks[j] * w
    return y if acc is None else y + h * acc


@torch.no_grad()
def _initial_step(func, t0, y0, f0, order, rtol, atol) -> torch.Tensor:
    """:func:`neuralode.control.initial_step` per sample (each row's norms, the same rules); one
    evaluation of the batch."""
    scale = tolerance_scale(y0, None, rtol, atol)
    d1 = rms_norm_rows(f0 / scale)
    h0 = trial_step(rms_norm_rows(y0 / scale), d1)
    f1 = func(t0 + h0.to(t0.dtype), y0 + _bcast(h0, y0) * f0)
    return first_step(h0, d1, rms_norm_rows((f1 - f0) / scale) / h0, order)


class _Step:
    """One RK step of every row with its own ``h``; returns the new state, stages and error ratio."""

    def __init__(self, func, tableau: ButcherTableau, rtol: float, atol: float):
        self.func, self.tab, self.rtol, self.atol = func, tableau, rtol, atol
        self.plan = plan_for(tableau)

    def __call__(self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, f0: torch.Tensor):
        hb = _bcast(h, y).to(y.dtype)
        ks = [f0]
        yi = y
        for row, c_i, at_end in self.plan.stage_list:
            yi = _combine(y, ks, row.terms, hb)
            ks.append(self.func((t + h) if at_end else (t + c_i * h), yi))
        y1 = yi if self.tab.fsal else _combine(y, ks, self.plan.solution.terms, hb)
        with torch.no_grad():
            err = _combine(torch.zeros_like(y), ks, self.plan.error.terms, hb)
            ratio = rms_norm_rows(err.div_(tolerance_scale(y, y1, self.rtol, self.atol)))
        return y1, ks, ratio


class _Interpolant:
    """The dense output of one step for every row at once: ``y0 + h Σ_i w_i(θ) k_i`` with per-row ``h``
    and ``θ``. The stages are stacked once per step, the weights of all rows come from one small
    matrix product and the sum from one batched product (a handful of operations per output column
    instead of one per stage and power)."""

    def __init__(self, rows, dtype: torch.dtype, device: torch.device):
        self.rows = torch.tensor(rows, dtype=dtype, device=device).T.contiguous()  # (degree, stages)
        self.degree = self.rows.shape[0]

    def stack(self, ks: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack([k.reshape(k.shape[0], -1) for k in ks], 1)  # (n, stages, state size)

    def __call__(self, y0: torch.Tensor, stages: torch.Tensor, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        th = theta.to(y0.dtype)[:, None].expand(-1, self.degree).cumprod(1)  # θ, θ², ...
        w = (th @ self.rows) * h.to(y0.dtype)[:, None]  # (n, stages)
        return y0 + torch.bmm(w[:, None, :], stages).reshape(y0.shape)


def solve_per_sample(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    method: Optional[str] = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: Optional[Dict[str, Any]] = None,
    on_failure: str = "raise",
    gradient: Any = "direct",
) -> PerSampleSolution:
    """Solve a batch of independent problems ``dy_b/dt = func(t, y)_b``, each with its own steps.

    Args:
        func: ``func(t, y) -> dy/dt`` with ``y`` of shape ``(n, *state)`` and ``t`` of shape ``(n,)``.
        y0: ``(B, *state)``; row ``b`` is sample ``b``'s initial state at ``t[b, 0]``.
        t: ``[T]`` (shared output times) or ``[B, T]`` (each sample's own, strictly increasing).
        method: an adaptive method (default ``'dopri5'``).
        rtol, atol: scalar tolerances; each sample's error is normed over its own elements.
        options: ``first_step``, ``safety``, ``ifactor``, ``dfactor``, ``max_num_steps`` (per sample),
            ``compact`` (call the field on unfinished rows only; see the module doc).
        on_failure: ``'raise'`` or ``'return'`` (unreached outputs are NaN).
        gradient: ``'direct'``, ``'checkpoint'``, ``'adjoint'``/``'adjoint-seminorm'`` (the same here: the
            parameter gradients never enter the error norm) or a :class:`neuralode.Adjoint`.

    Returns:
        :class:`PerSampleSolution` with ``ys`` of shape ``(B, T, *state)``.
    """
    method = DEFAULT_METHOD if method is None else method
    tab, t2, opts = _check(func, y0, t, method, rtol, atol, options, gradient)
    if on_failure not in ("raise", "return"):
        raise ValueError(f"on_failure must be 'raise' or 'return'; got {_describe(on_failure)}")
    if not (isinstance(gradient, str) and gradient in ("direct", "checkpoint")):
        from .persample_adjoint import solve_adjoint

        adjoint_solution = solve_adjoint(func, y0, t2, tab, float(rtol), float(atol), opts, on_failure, gradient)
        adjoint_solution.ts = t
        return adjoint_solution
    solution, _ = _integrate(func, y0, t2, tab, float(rtol), float(atol), opts, gradient == "checkpoint")
    solution.ts = t
    return _finish(solution, tab, on_failure)


def _finish(solution: "PerSampleSolution", tab: ButcherTableau, on_failure: str) -> "PerSampleSolution":
    """Raise the solve's failure (``on_failure='raise'``) or hand the solution back."""
    if solution.status is not Status.SUCCESS and on_failure == "raise":
        stats = solution.stats
        batch = cast(torch.Tensor, solution.ys).shape[0]
        raise SolverError(solution.status, solution.t_reached if solution.t_reached is not None else float("nan"),
                          detail=f"method={tab.name}, per-sample stepping, {stats.n_accepted} accepted and "
                                 f"{stats.n_rejected} rejected steps over {batch} samples, {stats.nfe} function "
                                 f"evaluations")
    return solution


class Quadrature(Protocol):
    """A hook of :func:`_integrate` for integrals that ride along the steps without entering the
    error estimate (the adjoint's parameter gradients): ``begin()`` before each attempted step,
    whose stage evaluations the field then records; ``commit(h)`` once the step's fate is known,
    with ``h`` per row the step taken (0 for rejected and finished rows)."""

    def begin(self) -> None: ...

    def commit(self, h: torch.Tensor) -> None: ...


def _integrate(func: Callable, y0: torch.Tensor, t2: torch.Tensor, tab: ButcherTableau, rtol: float, atol: float,
               opts: Dict[str, Any], checkpointing: bool, quadrature: Optional[Quadrature] = None,
               first_h: Optional[torch.Tensor] = None) -> Tuple["PerSampleSolution", torch.Tensor]:
    """The per-sample loop on checked arguments; returns the solution (status not raised) and
    each row's proposed next step size. With ``quadrature``, every step evaluates its first stage
    afresh (no first-same-as-last reuse) so that all its stages are recorded."""
    settings = _settings(opts, tab.name)
    max_steps = settings.max_num_steps
    compact = bool(opts.get("compact", False))
    batch, n_out = t2.shape
    device, dtype = y0.device, y0.dtype
    time_dtype = torch.promote_types(torch.float64 if device.type != "mps" else torch.float32, dtype)
    ts = t2.detach().to(time_dtype).contiguous()
    stats_nfe = [0]
    rows_evaluated = [0]

    def field(tt: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        stats_nfe[0] += 1
        rows_evaluated[0] += yy.shape[0]
        return func(tt.to(dtype), yy)

    rows = dense_rows(tab)
    needs_f1 = needs_end_derivative(rows, tab)
    interpolant = _Interpolant(rows, dtype, device)
    k = tab.controller_order
    controller = PIController(k, settings.safety, settings.ifactor, settings.dfactor)  # its rules; the state is ours
    step = _Step(field, tab, float(rtol), float(atol))

    t_cur = ts[:, 0].clone()
    t_end = ts[:, -1]
    y = y0
    f0 = y0  # replaced by the derivative below (with a quadrature, each step evaluates its own)
    if quadrature is None or first_h is None:
        f0 = field(t_cur, y)
        if f0.shape != y0.shape:
            raise ValueError(f"func returned shape {tuple(f0.shape)}; expected {tuple(y0.shape)} (the shape of y0)")
    if first_h is not None:
        h = first_h.to(time_dtype)
    elif settings.first_step is not None:
        h = torch.full((batch,), settings.first_step, dtype=time_dtype, device=device)
    else:
        h = _initial_step(field, t_cur, y0.detach(), f0.detach(), k, float(rtol), float(atol)).to(time_dtype)
    prev_ratio = torch.full((batch,), controller.previous_ratio, dtype=time_dtype, device=device)
    last_rejected = torch.full((batch,), controller.last_rejected, dtype=torch.bool, device=device)
    rej_h = torch.zeros(batch, dtype=time_dtype, device=device)  # (h, ratio) of a row's last attempt if rejected
    rej_r = torch.zeros(batch, dtype=time_dtype, device=device)
    n_acc = torch.zeros(batch, dtype=torch.long, device=device)
    n_rej = torch.zeros(batch, dtype=torch.long, device=device)
    next_out = torch.ones(batch, dtype=torch.long, device=device)
    span = (t_end - ts[:, 0]).abs()
    # outputs as (rows, columns, values); column n_out is a discard column for rows with nothing to write
    out_rows: List[torch.Tensor] = [torch.arange(batch, device=device)]
    out_cols: List[torch.Tensor] = [torch.zeros(batch, dtype=torch.long, device=device)]
    out_vals: List[torch.Tensor] = [y0]
    status = Status.SUCCESS
    idx = torch.arange(batch, device=device)
    n_active = batch if n_out > 1 else 0
    attempts = 0
    eps = torch.finfo(time_dtype).eps
    while n_active > 0:
        if attempts >= max_steps:
            status = Status.MAX_STEPS
            break
        full = n_active == batch or not compact
        sel = slice(None) if full else idx
        t_a, h_a, te_a = t_cur[sel], h[sel], t_end[sel]
        y_a = y if full else y[idx]
        if quadrature is not None:
            quadrature.begin()
            f_a = field(t_a, y_a)
        else:
            f_a = f0 if full else f0[idx]
        done_a = t_a >= te_a
        h_step, lands = step_towards(t_a, h_a, te_a)
        h_step = torch.where(done_a, torch.zeros_like(h_step), h_step)
        if checkpointing and torch.is_grad_enabled():
            y1, ks, ratio = checkpoint(step, t_a, h_step, y_a, f_a, use_reentrant=False)
        else:
            y1, ks, ratio = step(t_a, h_step, y_a, f_a)
        attempts += 1
        finite = torch.isfinite(ratio)
        accept = (finite & (ratio <= 1.0)) | done_a
        if quadrature is not None:
            quadrature.commit(torch.where(accept & ~done_a, h_step, torch.zeros_like(h_step)))
        t_new = torch.where(accept & ~done_a, torch.where(lands, te_a, t_a + h_step), t_a)
        # outputs inside (t_a, t_new] of the accepted rows
        ts_a = ts if full else ts[idx]
        nxt = next_out if full else next_out[idx]
        passed = torch.searchsorted(ts_a, t_new[:, None].contiguous(), right=True).squeeze(1)
        passed = torch.where(accept & ~done_a, passed, nxt)
        n_write = (passed - nxt).clamp_min(0)
        # controller (per row)
        r = torch.where(finite, ratio.to(time_dtype), torch.full_like(h_step, math.inf))
        factor = controller.factor(r, accept, prev_ratio[sel], last_rejected[sel], n_acc[sel] > 0, h=h_step,
                                   rejected_h=rej_h[sel], rejected_ratio=rej_r[sel])
        h_new = torch.where(done_a, h_a, h_step * factor)  # a finished row keeps its last proposal
        active_after = t_new < te_a
        tiny = (h_step <= 8 * eps * torch.maximum(t_a.abs(), span[sel])) & ~done_a
        counts = torch.stack([n_write.max() if n_write.numel() else n_write.new_zeros(()),
                              active_after.sum(), (tiny | ~finite & ~done_a).sum()]).tolist()
        max_write, n_active_after, n_bad = counts
        if n_bad:
            status = Status.NONFINITE if bool((~finite & ~done_a).any()) else Status.STEP_UNDERFLOW
            break
        if max_write:
            f1 = None
            if needs_f1:
                f1 = field(t_new, y1)
            stages = interpolant.stack(ks + [f1] if f1 is not None else ks)
            rows_a = idx if not full else torch.arange(batch, device=device)
            for j in range(max_write):
                col = nxt + j
                ok = j < n_write
                col_c = torch.where(ok, col, torch.zeros_like(col)).clamp_max(n_out - 1)
                tout = ts_a.gather(1, col_c[:, None]).squeeze(1)
                theta = torch.where(ok & (h_step > 0), (tout - t_a) / torch.where(h_step > 0, h_step, 1.0), 0.0)
                val = torch.where(_bcast(ok & (tout == t_new), y1), y1, interpolant(y_a, stages, h_step, theta))
                out_rows.append(rows_a)
                out_cols.append(torch.where(ok, col, torch.full_like(col, n_out)))
                out_vals.append(val)
        # commit
        acc_b = _bcast(accept, y_a)
        y_new = torch.where(acc_b, y1, y_a)
        f_new: Optional[torch.Tensor] = None
        if tab.fsal and quadrature is None:
            f_new = torch.where(acc_b, ks[-1], f_a)
        n_acc_a = (accept & ~done_a).long()
        n_rej_a = (~accept).long()
        prev_a = controller.remember(r, accept, prev_ratio[sel])
        rej_h_a, rej_r_a = controller.remember_rejection(h_step, r, accept)
        if full:
            y, t_cur, h, next_out = y_new, t_new, h_new, passed
            prev_ratio, last_rejected = prev_a, ~accept
            rej_h, rej_r = rej_h_a, rej_r_a
            n_acc, n_rej = n_acc + n_acc_a, n_rej + n_rej_a
            if quadrature is None:
                f0 = field(t_cur, y) if f_new is None else f_new
        else:
            y = y.index_copy(0, idx, y_new)
            t_cur = t_cur.index_copy(0, idx, t_new)
            h = h.index_copy(0, idx, h_new)
            next_out = next_out.index_copy(0, idx, passed)
            prev_ratio = prev_ratio.index_copy(0, idx, prev_a)
            last_rejected = last_rejected.index_copy(0, idx, ~accept)
            rej_h = rej_h.index_copy(0, idx, rej_h_a)
            rej_r = rej_r.index_copy(0, idx, rej_r_a)
            n_acc = n_acc.index_add(0, idx, n_acc_a)
            n_rej = n_rej.index_add(0, idx, n_rej_a)
            if quadrature is None:
                f0 = f0.index_copy(0, idx, field(t_new, y_new) if f_new is None else f_new)
        if compact and n_active_after < batch and n_active_after != n_active:
            idx = (t_cur < t_end).nonzero().squeeze(1)
        n_active = n_active_after if compact else int(n_active_after)

    buffer = torch.full((batch, n_out + 1) + tuple(y0.shape[1:]), math.nan, dtype=dtype, device=device)
    ys = buffer.index_put((torch.cat(out_rows), torch.cat(out_cols)), torch.cat(out_vals))[:, :n_out]
    total_acc, total_rej = (int(x) for x in torch.stack([n_acc.sum(), n_rej.sum()]).tolist())
    solution = PerSampleSolution(ys=ys, ts=t2, status=status, t_reached=float(t_cur.min()),
                                 n_accepted_per_sample=n_acc, n_rejected_per_sample=n_rej,
                                 row_evaluations=rows_evaluated[0])
    solution.stats.nfe = stats_nfe[0]
    solution.stats.n_accepted = total_acc
    solution.stats.n_rejected = total_rej
    return solution, h
