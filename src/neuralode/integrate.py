"""The integration loop: step, accept or reject, emit outputs by dense interpolation, count.

Control decisions (step sizes, acceptance, where outputs fall) are made on Python floats, so
the only host synchronisation per step is the error norm that decides acceptance. The times
handed to the field and used in the state arithmetic are the same floats, unless gradients
must reach the output times ``t``: then they are 0-d tensors tied to ``t`` by autograd (the
step sizes chosen by the controller stay constants, as in torchdiffeq).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

from .control import PIController, error_ratio, fixed_grid, initial_step
from .interpolate import dense_rows, evaluate_dense, needs_end_derivative
from .problem import AdaptiveOptions, Problem
from .rk import Scalar, combine_row, plan_for, rk_step
from .solution import Solution, SolveStats, Status

OnAccept = Callable[[float, float, torch.Tensor], None]
_EPS = 2.220446049250313e-16


def _make_evaluate(func: Callable, y0: torch.Tensor, time_dtype: torch.dtype):
    """``evaluate(t, y, perturb)`` calls the field with ``t`` as a 0-d tensor of the state's dtype.

    ``perturb`` = +1/-1 evaluates just after/before ``t`` (one ulp), for discontinuities.
    """
    dtype, device = y0.dtype, y0.device
    last = [None, None]  # the previous float time and its tensor: a step's end is the next one's start

    def evaluate(t: Scalar, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        if type(t) is float:
            if t == last[0]:
                tt = last[1]
            else:
                tt = torch.scalar_tensor(t, dtype=dtype, device=device)
                last[0], last[1] = t, tt
        else:
            tt = t.to(dtype)
        if perturb:
            with torch.no_grad():
                moved = torch.nextafter(tt.detach(), tt.detach() + perturb)
            tt = tt + (moved - tt.detach())
        return func(tt, y)

    return evaluate


def _check_field_output(f0, y0: torch.Tensor, problem: Problem) -> None:
    """One check of the field's output (shape and dtype) before the loop trusts it."""
    if not isinstance(f0, torch.Tensor):
        raise TypeError(f"func must return a tensor (dy/dt); got {type(f0).__name__}")
    if f0.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(f0.shape)}; expected {tuple(y0.shape)} (the shape of y0)")
    if f0.dtype != y0.dtype:
        raise TypeError(f"func returned dtype {f0.dtype}; expected {y0.dtype} (the dtype of y0)")
    if f0.device != y0.device:
        raise ValueError(f"func returned a tensor on {f0.device}; expected {y0.device} (the device of y0)")


def _time_tensors(problem: Problem, dtype: torch.dtype):
    """Output times as floats, and as graph-carrying tensors when gradients must reach ``t``."""
    t_float = problem.t.detach().tolist()
    if problem.t.requires_grad and torch.is_grad_enabled():
        return t_float, list(problem.t.to(dtype).unbind())
    return t_float, None


def _finish(problem: Problem, outputs: List[torch.Tensor], n_out: int, stats: SolveStats, status: Status,
            t_reached: float) -> Solution:
    if len(outputs) < n_out:
        nan = torch.full_like(problem.y0, math.nan)
        outputs = outputs + [nan] * (n_out - len(outputs))
    return Solution(ys=torch.stack(outputs), ts=problem.t, stats=stats, status=status,
                    t_reached=problem.to_user_time(t_reached))


class _Outputs:
    """The states at the requested times, written as the accepted steps pass them.

    An output on a step's end is that end; one inside a step comes from the method's dense
    output (with ``f(t1, y1)`` evaluated once when the interpolant needs it and the method does
    not provide it). When gradients must reach ``t``, an output that is not the graph-connected
    end time is interpolated even on a step's end, so its time stays in the graph.
    """

    def __init__(self, y0: torch.Tensor, ts: List[float], ts_graph, rows, needs_f1: bool, evaluate, stats: SolveStats):
        self.states = [y0]
        self.ts, self.ts_graph, self.rows = ts, ts_graph, rows
        self.needs_f1, self.evaluate, self.stats = needs_f1, evaluate, stats
        self.count = len(ts)
        self.next = 1
        self.next_time = ts[1] if self.count > 1 else math.inf  # lets the loops skip steps with no output

    @property
    def done(self) -> bool:
        return self.next >= self.count

    def write(self, t1: float, y0: torch.Tensor, y1: torch.Tensor, ks: List[torch.Tensor], f1,
              t0g: Scalar, t1g: Scalar, hg: Scalar, end_is_node: bool):
        """Write every output in ``(t0, t1]``; returns ``f(t1, y1)`` if it was evaluated (else ``f1``)."""
        ts, ts_graph = self.ts, self.ts_graph
        while self.next < self.count and ts[self.next] <= t1:
            i = self.next
            if ts[i] == t1 and (ts_graph is None or end_is_node or i == self.count - 1):
                self.states.append(y1)
            else:
                if self.needs_f1 and f1 is None:
                    f1 = self.evaluate(t1g, y1, 0)
                    self.stats.nfe += 1
                ks_ext = ks + [f1] if self.needs_f1 else ks
                tout = ts[i] if ts_graph is None else ts_graph[i]
                self.states.append(evaluate_dense(self.rows, y0, ks_ext, hg, (tout - t0g) / hg))
            self.next += 1
        self.next_time = ts[self.next] if self.next < self.count else math.inf
        return f1


def integrate(problem: Problem, on_accept: Optional[OnAccept] = None) -> Solution:
    """Solve ``problem``; returns a :class:`Solution` in internal form (flat state, internal time).

    ``on_accept(t, h, y)`` is called after every accepted step with the step's start, size and
    start state (used by checkpointed gradients to replay steps).
    """
    if problem.tableau.adaptive:
        return _integrate_adaptive(problem, on_accept)
    return _integrate_fixed(problem, on_accept)


# --------------------------------------------------------------------------- adaptive

def _integrate_adaptive(problem: Problem, on_accept: Optional[OnAccept]) -> Solution:
    tab = problem.tableau
    opts: AdaptiveOptions = problem.options  # type: ignore[assignment]
    y = problem.y0
    time_dtype = torch.promote_types(opts.dtype, y.dtype)
    evaluate = _make_evaluate(problem.func, y, time_dtype)
    ts, ts_graph = _time_tensors(problem, time_dtype)
    stats = SolveStats()
    n_out = len(ts)
    t: float = ts[0]
    tg: Scalar = ts_graph[0] if ts_graph else t

    f0: Optional[torch.Tensor] = evaluate(tg, y, 0)
    stats.nfe = 1
    _check_field_output(f0, y, problem)
    if n_out == 1:
        return _finish(problem, [y], n_out, stats, Status.SUCCESS, t)

    rtol, atol, norm = problem.rtol, problem.atol, problem.norm
    rows = dense_rows(tab)
    needs_f1 = needs_end_derivative(rows, tab)
    plan = plan_for(tab, y.dtype, y.device)
    outputs = _Outputs(y, ts, ts_graph, rows, needs_f1, evaluate, stats)
    cb = problem.callbacks
    t_end = ts[-1]
    jumps = set(opts.jump_t)
    boundaries = sorted({x for x in opts.step_t + opts.jump_t if t < x < t_end}) + [t_end]
    b_index = 0
    min_step, max_step = opts.min_step, opts.max_step

    if opts.first_step is not None:
        h = opts.first_step
    else:
        h = initial_step(evaluate, t, y, f0, tab.controller_order - 1, rtol, atol, norm)
        stats.nfe += 1
    controller = PIController(tab.controller_order, opts.safety, opts.ifactor, opts.dfactor)
    span = abs(t_end - t)
    attempts = 0
    last_nonfinite = False
    status = Status.SUCCESS
    h_step = h

    while True:
        h = min(max(h, min_step), max_step)
        if attempts >= opts.max_num_steps:
            status = Status.MAX_STEPS
            break
        bound = boundaries[b_index]
        lands = t + 1.01 * h >= bound
        if lands:
            h_step = bound - t
            t1 = bound
        else:
            h_step = h
            t1 = t + h
        if not h_step > 8 * _EPS * max(abs(t), span):  # also catches a NaN step (non-finite field)
            status = Status.NONFINITE if (last_nonfinite or h_step != h_step) else Status.STEP_UNDERFLOW
            break
        if ts_graph is None:
            t1g: Scalar = t1
            hg: Scalar = h_step
        else:
            t1g = ts_graph[-1] if (lands and bound == t_end) else tg + h_step
            hg = t1g - tg
        if f0 is None:
            f0 = evaluate(tg, y, 0)
            stats.nfe += 1
        if cb.step is not None:
            cb.step(torch.tensor(t, dtype=time_dtype), y, torch.tensor(h_step, dtype=time_dtype))
        at_jump = lands and bound in jumps
        y1, ks = rk_step(evaluate, tab, tg, hg, t1g, y, f0, -1 if at_jump else 0, plan)
        stats.nfe += tab.n_stages - 1
        attempts += 1
        with torch.no_grad():
            ratio = error_ratio(combine_row(None, ks, plan.error, h_step), y, y1, rtol, atol, norm)
        finite = math.isfinite(ratio)
        last_nonfinite = not finite
        if not finite and h_step <= min_step:
            status = Status.NONFINITE
            break
        accept = finite and (ratio <= 1.0 or h_step <= min_step)
        if accept:
            stats.n_accepted += 1
            if cb.accept is not None:
                cb.accept(torch.tensor(t, dtype=time_dtype), y, torch.tensor(h_step, dtype=time_dtype))
            if on_accept is not None:
                on_accept(t, h_step, y)
            f1 = outputs.write(t1, y, y1, ks, ks[-1] if tab.fsal else None, tg, t1g, hg, end_is_node=False)
            if at_jump:
                f1 = evaluate(t1g, y1, +1)
                stats.nfe += 1
            f0 = f1
            t, tg, y = t1, t1g, y1
            if lands:
                b_index += 1
            if outputs.done:
                break
        else:
            stats.n_rejected += 1
            if cb.reject is not None:
                cb.reject(torch.tensor(t, dtype=time_dtype), y, torch.tensor(h_step, dtype=time_dtype))
        h = controller.propose(h_step, ratio, accept)

    stats.final_step = h_step
    return _finish(problem, outputs.states, n_out, stats, status, t)


# --------------------------------------------------------------------------- fixed grid

def _integrate_fixed(problem: Problem, on_accept: Optional[OnAccept], locate_nonfinite: bool = False) -> Solution:
    """Fixed-grid loop. Fixed steps have no error estimate that would notice a blow-up, so the
    outputs are checked once at the end; only when one is non-finite is the solve replayed
    (without gradients) checking every step, to name the time where it first appeared."""
    tab = problem.tableau
    opts = problem.options
    y = problem.y0
    evaluate = _make_evaluate(problem.func, y, y.dtype)
    ts, ts_graph = _time_tensors(problem, problem.t.dtype)
    stats = SolveStats()
    n_out = len(ts)
    if n_out == 1:
        return _finish(problem, [y], n_out, stats, Status.SUCCESS, ts[0])

    if opts.grid_constructor is not None:
        grid = opts.grid_constructor(problem.func, y, problem.t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times")
        g = grid.detach()
        if float(g[0]) != ts[0] or float(g[-1]) != ts[-1] or not bool((g[1:] > g[:-1]).all()):
            raise ValueError("options['grid_constructor'] must return a strictly monotonic grid that starts at "
                             "t[0] and ends at t[-1]")
    else:
        grid = fixed_grid(problem.t, opts.step_size)
    grid_is_t = opts.grid_constructor is None and opts.step_size is None
    grid_f = grid.detach().tolist()
    grid_g = list(grid.unbind()) if ts_graph is not None else None
    rows = dense_rows(tab, opts.interp)
    needs_f1 = needs_end_derivative(rows, tab)
    plan = plan_for(tab, y.dtype, y.device)
    outputs = _Outputs(y, ts, ts_graph, rows, needs_f1, evaluate, stats)
    perturb = opts.perturb
    first_perturb = 1 if perturb else 0
    end_perturb = -1 if perturb else 0
    cb_step = problem.callbacks.step
    f0: Optional[torch.Tensor] = None
    t0 = grid_f[0]
    for n in range(len(grid_f) - 1):
        t1 = grid_f[n + 1]
        h = t1 - t0
        if grid_g is None:
            t0g: Scalar = t0
            t1g: Scalar = t1
            hg: Scalar = h
        else:
            t0g, t1g = grid_g[n], grid_g[n + 1]
            hg = t1g - t0g
        if f0 is None:
            f0 = evaluate(t0g, y, first_perturb)
            stats.nfe += 1
            if n == 0:
                _check_field_output(f0, y, problem)
        if cb_step is not None:
            cb_step(torch.tensor(t0, dtype=problem.t.dtype), y, torch.tensor(h, dtype=problem.t.dtype))
        y1, ks = rk_step(evaluate, tab, t0g, hg, t1g, y, f0, end_perturb, plan)
        if on_accept is not None:
            on_accept(t0, h, y)
        f1 = None
        if t1 >= outputs.next_time:
            f1 = outputs.write(t1, y, y1, ks, None, t0g, t1g, hg, end_is_node=grid_is_t)
        f0 = ks[-1] if tab.fsal else (None if perturb else f1)
        y, t0 = y1, t1
        if locate_nonfinite and not bool(torch.isfinite(y1).all()):
            return _finish(problem, outputs.states, n_out, stats, Status.NONFINITE, t1)
    n_steps = len(grid_f) - 1
    stats.nfe += n_steps * (tab.n_stages - 1)  # the stages after the first; first stages are counted as taken
    stats.n_accepted = n_steps
    stats.final_step = grid_f[-1] - grid_f[-2]

    # Fixed steps have no error estimate to notice a blow-up; check the outputs once at the end.
    stacked = torch.stack(outputs.states)
    finite = torch.isfinite(stacked.detach().reshape(n_out, -1)).all(dim=1)
    if bool(finite.all()):
        return Solution(ys=stacked, ts=problem.t, stats=stats, status=Status.SUCCESS,
                        t_reached=problem.to_user_time(ts[-1]))
    first_bad = int((~finite).nonzero()[0])
    with torch.no_grad():
        located = _integrate_fixed(problem, None, locate_nonfinite=True).t_reached
    t_bad = ts[first_bad] if located is None else problem.to_user_time(located)  # back to internal time
    return _finish(problem, outputs.states[:first_bad], n_out, stats, Status.NONFINITE, t_bad)
