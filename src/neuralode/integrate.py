"""The integration loop: step, accept or reject, emit outputs by dense interpolation, count.

This module is the one home of the stepping rules: where steps end (``step_t``/``jump_t``
boundaries, the last output), how ``f`` is evaluated around discontinuities (``perturb``),
which outputs a step writes and whether from its end or its dense output, and how the time
tensors are chained when gradients must reach ``t``. Every accepted step is reported as an
:class:`~neuralode.stepping.AcceptedStep` to the solve's observers, and checkpointed gradients
(:mod:`neuralode.adjoint`) replay those records with :func:`replay_step` instead of re-deriving
the rules. Methods come in through a :class:`~neuralode.stepping.Stepper`.

Control decisions (step sizes, acceptance, where outputs fall) are made on Python floats, so
the only host synchronisation per step is the error norm that decides acceptance. The times
handed to the field and used in the state arithmetic are the same floats, unless gradients
must reach the output times ``t``: then they are 0-d tensors tied to ``t`` by autograd (the
step sizes chosen by the controller stay constants, as in torchdiffeq).
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, cast

import torch

from .control import PIController, error_ratio, fixed_grid, initial_step, step_towards
from .interpolate import evaluate_dense
from .problem import AdaptiveOptions, Problem
from .solution import Solution, SolveStats, Status
from .stepping import AcceptedStep, AdaptiveStepper, DenseRows, Evaluate, Scalar, Stepper, StepObserver

_EPS = 2.220446049250313e-16
Placement = Tuple[Tuple[int, bool], ...]


def make_evaluate(func: Callable[..., Any], y0: torch.Tensor) -> Evaluate:
    """``evaluate(t, y, perturb)`` calls the field with ``t`` as a 0-d tensor of the state's dtype
    (its real dtype for a complex state) on the state's device.

    ``perturb`` = +1/-1 evaluates just after/before ``t`` (one ulp), for discontinuities.
    """
    dtype, device = real_dtype(y0), y0.device
    last: List[Any] = [None, None]  # the previous float time and its tensor: a step's end is the next one's start

    def evaluate(t: Scalar, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        if isinstance(t, float):
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
        out: torch.Tensor = func(tt, y)
        return out

    return evaluate


def _check_field_output(f0: Any, y0: torch.Tensor) -> None:
    """One check of the field's output (shape and dtype) before the loop trusts it."""
    if not isinstance(f0, torch.Tensor):
        raise TypeError(f"func must return a tensor (dy/dt); got {type(f0).__name__}")
    if f0.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(f0.shape)}; expected {tuple(y0.shape)} (the shape of y0)")
    if f0.dtype != y0.dtype:
        raise TypeError(f"func returned dtype {f0.dtype}; expected {y0.dtype} (the dtype of y0)")
    if f0.device != y0.device:
        raise ValueError(f"func returned a tensor on {f0.device}; expected {y0.device} (the device of y0)")


def real_dtype(y: torch.Tensor) -> torch.dtype:
    """The dtype of the state's real numbers (a complex state's real part)."""
    return y.real.dtype if y.is_complex() else y.dtype


def graph_time_dtype(problem: Problem) -> torch.dtype:
    """The dtype of the time tensors of a solve (callbacks, and the graph times when gradients must
    reach ``t``): the adaptive methods' ``dtype`` option promoted with the state's real dtype
    (torchdiffeq's), else the dtype of ``t``."""
    if isinstance(problem.options, AdaptiveOptions):
        return torch.promote_types(problem.options.dtype, real_dtype(problem.y0))
    return problem.t.dtype


def _time_tensors(problem: Problem, dtype: torch.dtype) -> Tuple[List[float], Optional[List[torch.Tensor]]]:
    """Output times as floats, and as graph-carrying tensors when gradients must reach ``t``."""
    t_float: List[float] = problem.t.detach().tolist()
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


# --------------------------------------------------------------------------- outputs

def dense_outputs(placement: Placement, y0: torch.Tensor, y1: torch.Tensor, ks: List[torch.Tensor],
                  f1: Optional[torch.Tensor], rows: DenseRows, needs_f1: bool, evaluate: Evaluate, t0g: Scalar, t1g: Scalar,
                  hg: Scalar, tout: Callable[[int], Scalar]) -> Tuple[List[torch.Tensor], Optional[torch.Tensor], int]:
    """The outputs one step writes: ``y1`` for those placed at its end, else its dense output at
    ``tout(i)``. Returns the states, ``f(t1, y1)`` (evaluated here once if the interpolant needs it
    and ``f1`` is None) and the number of evaluations made."""
    states: List[torch.Tensor] = []
    nfe = 0
    for i, at_end in placement:
        if at_end:
            states.append(y1)
            continue
        if needs_f1 and f1 is None:
            f1 = evaluate(t1g, y1, 0)
            nfe += 1
        ks_ext = ks + [f1] if needs_f1 and f1 is not None else ks
        states.append(evaluate_dense(rows, y0, ks_ext, hg, (tout(i) - t0g) / hg))
    return states, f1, nfe


class _Outputs:
    """The states at the requested times, written as the accepted steps pass them.

    An output on a step's end is that end; one inside a step comes from the method's dense
    output. When ``t`` requires gradients, an output that is not the graph-connected end time
    is interpolated even on a step's end, so its time stays in the graph.
    """

    def __init__(self, y0: torch.Tensor, ts: List[float], ts_graph: Optional[List[torch.Tensor]], stepper: Stepper,
                 evaluate: Evaluate, stats: SolveStats, problem_t_requires_grad: bool) -> None:
        self.states = [y0]
        self.ts, self.ts_graph = ts, ts_graph
        self.rows, self.needs_f1 = stepper.rows, stepper.needs_f1
        self.evaluate, self.stats = evaluate, stats
        # Placement follows whether t asks for gradients, not whether this pass records them, so
        # a checkpointed replay (which records them) places outputs as its forward pass did.
        self.exact_ends = not problem_t_requires_grad
        self.count = len(ts)
        self.next = 1
        self.next_time = ts[1] if self.count > 1 else math.inf  # lets the loops skip steps with no output
        self._tout: Callable[[int], Scalar] = (lambda i: ts[i]) if ts_graph is None else (lambda i: ts_graph[i])

    @property
    def done(self) -> bool:
        return self.next >= self.count

    def place(self, t1: float, end_is_node: bool) -> Placement:
        """Which outputs fall in the step ending at ``t1``: ``(index, taken as the step's end)``."""
        ts, i = self.ts, self.next
        out: List[Tuple[int, bool]] = []
        while i < self.count and ts[i] <= t1:
            out.append((i, ts[i] == t1 and (self.exact_ends or end_is_node or i == self.count - 1)))
            i += 1
        return tuple(out)

    def write(self, placement: Placement, y0: torch.Tensor, y1: torch.Tensor, ks: List[torch.Tensor],
              f1: Optional[torch.Tensor], t0g: Scalar, t1g: Scalar, hg: Scalar) -> Optional[torch.Tensor]:
        """Write the placed outputs; returns ``f(t1, y1)`` if it was evaluated (else ``f1``)."""
        states, f1, nfe = dense_outputs(placement, y0, y1, ks, f1, self.rows, self.needs_f1, self.evaluate,
                                        t0g, t1g, hg, self._tout)
        self.stats.nfe += nfe
        self.states.extend(states)
        self.next += len(placement)
        self.next_time = self.ts[self.next] if self.next < self.count else math.inf
        return f1


def _interpolant(outputs: _Outputs, y0: torch.Tensor, y1: torch.Tensor, ks: List[torch.Tensor],
                 f1_box: List[Optional[torch.Tensor]], t0g: Scalar, t1g: Scalar, hg: Scalar) -> Callable[[Scalar], torch.Tensor]:
    """The dense output of one step as a function of time (for observers)."""

    def interpolate(t: Scalar) -> torch.Tensor:
        if outputs.needs_f1 and f1_box[0] is None:
            f1_box[0] = outputs.evaluate(t1g, y1, 0)
            outputs.stats.nfe += 1
        f1 = f1_box[0]
        ks_ext = ks + [f1] if outputs.needs_f1 and f1 is not None else ks
        return evaluate_dense(outputs.rows, y0, ks_ext, hg, (t - t0g) / hg)

    return interpolate


def _observe(observers: Sequence[StepObserver], record: AcceptedStep, outputs: _Outputs) -> Optional[float]:
    """Report an accepted step; returns the stop time an observer asked for (placement updated)."""
    for observe in observers:
        t_stop = observe(record)
        if t_stop is not None:
            t_stop = float(t_stop)
            if not record.t0 < t_stop <= record.t1:
                raise ValueError(f"a step observer asked to stop at {t_stop}, outside its step "
                                 f"({record.t0}, {record.t1}]")
            record.outputs = tuple((i, False) for i, _ in outputs.place(t_stop, False))
            return t_stop
    return None


_F = TypeVar("_F", bound=Callable[..., Any])


def _eager(fn: _F) -> _F:
    """``torch.compiler.disable``, keeping ``fn``'s signature for the type checker."""
    return cast(_F, torch.compiler.disable(fn))


@_eager  # under torch.compile the loop runs eagerly: traced, it went wrong (see compiled.py)
def integrate(problem: Problem, on_accept: Optional[StepObserver] = None) -> Solution:
    """Solve ``problem``; returns a :class:`Solution` in internal form (flat state, internal time).

    ``on_accept`` (a :data:`~neuralode.stepping.StepObserver`) sees every accepted step before
    the observers of the problem (``problem.observers``); gradient strategies record steps with it.
    """
    observers = tuple(o for o in (on_accept, *problem.observers) if o is not None)
    method = problem.method
    if method.integrate is not None:
        return method.integrate(problem, observers)
    if method.make_stepper is None:
        raise TypeError(f"method {method.name!r} has neither a stepper nor its own integrate")
    stepper = method.make_stepper(problem)
    if method.adaptive:
        return _integrate_adaptive(problem, cast(AdaptiveStepper, stepper), observers)
    return _integrate_fixed(problem, stepper, observers)


def replay_step(stepper: Stepper, evaluate: Evaluate, record: AcceptedStep, y0: torch.Tensor, t0g: Scalar, t1g: Scalar,
                tout: Callable[[int], Scalar]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Take the accepted step ``record`` again from ``y0`` (a leaf) with the forward pass's rules.

    Returns the step's end and its outputs (in ``record.outputs`` order), for checkpointed
    gradients. The stepper must be replayable (its step depends on ``(t0, h, y0, f0)`` only).
    """
    hg = t1g - t0g
    f0 = evaluate(t0g, y0, record.perturb_start)
    y1, ks, _ = stepper.step(evaluate, t0g, hg, t1g, y0, f0, record.perturb_end)
    states, _, _ = dense_outputs(record.outputs, y0, y1, ks, None, stepper.rows, stepper.needs_f1, evaluate,
                                 t0g, t1g, hg, tout)
    return y1, states


# --------------------------------------------------------------------------- adaptive

def _integrate_adaptive(problem: Problem, stepper: AdaptiveStepper, observers: Tuple[StepObserver, ...]) -> Solution:
    opts: AdaptiveOptions = problem.options
    y = problem.y0
    device = y.device
    time_dtype = graph_time_dtype(problem)
    evaluate = make_evaluate(problem.func, y)
    ts, ts_graph = _time_tensors(problem, time_dtype)
    stats = SolveStats()
    n_out = len(ts)
    t: float = ts[0]
    tg: Scalar = ts_graph[0] if ts_graph else t

    f_start = evaluate(tg, y, 0)
    f0: Optional[torch.Tensor] = f_start
    f0_perturb = 0
    stats.nfe = 1
    _check_field_output(f_start, y)
    if n_out == 1:
        return _finish(problem, [y], n_out, stats, Status.SUCCESS, t)

    rtol, atol, norm = problem.rtol, problem.atol, problem.norm
    outputs = _Outputs(y, ts, ts_graph, stepper, evaluate, stats, problem.t.requires_grad)
    cb = problem.callbacks
    t_end = ts[-1]
    jumps = set(opts.jump_t)
    boundaries = sorted({x for x in opts.step_t + opts.jump_t if t < x < t_end}) + [t_end]
    b_index = 0
    min_step, max_step = opts.min_step, opts.max_step

    if opts.first_step is not None:
        h = opts.first_step
    else:
        h = initial_step(evaluate, t, y, f_start, stepper.order, rtol, atol, norm)
        stats.nfe += 1
    controller = PIController(stepper.order, opts.safety, opts.ifactor, opts.dfactor)
    span = abs(t_end - t)
    attempts = 0  # since the last output was reached: torchdiffeq's max_num_steps is per output interval
    last_nonfinite = False
    status = Status.SUCCESS
    h_step = h

    while True:
        h = min(max(h, min_step), max_step)
        if attempts >= opts.max_num_steps:
            status = Status.MAX_STEPS
            break
        bound = boundaries[b_index]
        h_step, lands = step_towards(t, h, bound, min_step)
        t1 = bound if lands else t + h_step
        if not h_step > 8 * _EPS * max(abs(t), span):  # also catches a NaN step (non-finite field)
            status = Status.NONFINITE if (last_nonfinite or h_step != h_step) else Status.STEP_UNDERFLOW
            break
        end_is_last = lands and bound == t_end
        if ts_graph is None:
            t1g: Scalar = t1
            hg: Scalar = h_step
        else:
            t1g = ts_graph[-1] if end_is_last else tg + h_step
            hg = t1g - tg
        if f0 is None:
            f0 = evaluate(tg, y, 0)
            f0_perturb = 0
            stats.nfe += 1
        if cb.step is not None:
            cb.step(torch.tensor(t, dtype=time_dtype, device=device), y,
                    torch.tensor(h_step, dtype=time_dtype, device=device))
        at_jump = lands and bound in jumps
        y1, ks, nfe = stepper.step(evaluate, tg, hg, t1g, y, f0, -1 if at_jump else 0)
        stats.nfe += nfe
        attempts += 1
        with torch.no_grad():
            ratio = error_ratio(stepper.error(ks, h_step), y, y1, rtol, atol, norm)
        finite = math.isfinite(ratio)
        last_nonfinite = not finite
        at_min_step = h_step <= min_step or h <= min_step  # a step at min_step (or clamped to it) is accepted
        if not finite and at_min_step:
            status = Status.NONFINITE
            break
        accept = finite and (ratio <= 1.0 or at_min_step)
        if accept:
            stats.n_accepted += 1
            if cb.accept is not None:
                cb.accept(torch.tensor(t, dtype=time_dtype, device=device), y,
                          torch.tensor(h_step, dtype=time_dtype, device=device))
            f1 = ks[-1] if stepper.fsal else None
            placement = outputs.place(t1, False)
            t_stop = None
            if observers:
                f1_box = [f1]
                record = AcceptedStep(t, t1, y, y1, tg, t1g, f0_perturb, -1 if at_jump else 0, placement,
                                      end_is_last, stats.n_accepted - 1,
                                      _interpolant(outputs, y, y1, ks, f1_box, tg, t1g, hg))
                t_stop = _observe(observers, record, outputs)
                f1, placement = f1_box[0], record.outputs
            f1 = outputs.write(placement, y, y1, ks, f1, tg, t1g, hg)
            if t_stop is not None:
                t = t_stop
                break
            if placement:
                attempts = 0
            if at_jump:
                f1 = evaluate(t1g, y1, +1)
                stats.nfe += 1
            f0, f0_perturb = f1, (1 if at_jump else 0)
            t, tg, y = t1, t1g, y1
            if lands:
                b_index += 1
            if outputs.done:
                break
        else:
            stats.n_rejected += 1
            if cb.reject is not None:
                cb.reject(torch.tensor(t, dtype=time_dtype, device=device), y,
                          torch.tensor(h_step, dtype=time_dtype, device=device))
        h = controller.propose(h_step, ratio, accept)

    stats.final_step = h_step
    return _finish(problem, outputs.states, n_out, stats, status, t)


# --------------------------------------------------------------------------- fixed grid

def fixed_step_grid(problem: Problem, t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The grid of a fixed-step solve (``t``: the output times, by default the problem's; pass a
    leaf to differentiate the grid with respect to them)."""
    opts = problem.options
    t = problem.t if t is None else t
    if opts.grid_constructor is not None:
        grid = opts.grid_constructor(problem.func, problem.y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
            raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times")
        g = grid.detach()
        t0, t1 = float(t[0].detach()), float(t[-1].detach())
        if float(g[0]) != t0 or float(g[-1]) != t1 or not bool((g[1:] > g[:-1]).all()):
            raise ValueError("options['grid_constructor'] must return a strictly monotonic grid that starts at "
                             "t[0] and ends at t[-1]")
        return grid.to(t.device)
    return fixed_grid(t, opts.step_size)


def grid_is_outputs(problem: Problem) -> bool:
    """True when the fixed grid is ``t`` itself (every output is a grid node)."""
    return problem.options.grid_constructor is None and problem.options.step_size is None


def _integrate_fixed(problem: Problem, stepper: Stepper, observers: Tuple[StepObserver, ...],
                     locate_nonfinite: bool = False) -> Solution:
    """Fixed-grid loop. Fixed steps have no error estimate that would notice a blow-up, so the
    outputs are checked once at the end; only when one is non-finite is the solve replayed
    (without gradients) checking every step, to name the time where it first appeared."""
    opts = problem.options
    y = problem.y0
    time_dtype = graph_time_dtype(problem)
    evaluate = make_evaluate(problem.func, y)
    ts, ts_graph = _time_tensors(problem, time_dtype)
    stats = SolveStats()
    n_out = len(ts)
    if n_out == 1:
        return _finish(problem, [y], n_out, stats, Status.SUCCESS, ts[0])

    grid = fixed_step_grid(problem)
    end_is_node = grid_is_outputs(problem)
    grid_f = grid.detach().tolist()
    grid_g = list(grid.unbind()) if ts_graph is not None else None
    outputs = _Outputs(y, ts, ts_graph, stepper, evaluate, stats, problem.t.requires_grad)
    perturb = opts.perturb
    first_perturb = 1 if perturb else 0
    end_perturb = -1 if perturb else 0
    cb_step = problem.callbacks.step
    f0: Optional[torch.Tensor] = None
    f0_perturb = first_perturb
    t0 = grid_f[0]
    n_last = len(grid_f) - 2
    nfe = 0
    t_stop = None
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
            f0_perturb = first_perturb
            nfe += 1
            if n == 0:
                _check_field_output(f0, y)
        if cb_step is not None:
            cb_step(torch.tensor(t0, dtype=time_dtype, device=y.device), y,
                    torch.tensor(h, dtype=time_dtype, device=y.device))
        y1, ks, step_nfe = stepper.step(evaluate, t0g, hg, t1g, y, f0, end_perturb)
        nfe += step_nfe
        f1 = ks[-1] if stepper.fsal else None
        if observers:
            placement = outputs.place(t1, end_is_node)
            f1_box = [f1]
            record = AcceptedStep(t0, t1, y, y1, t0g, t1g, f0_perturb, end_perturb, placement, n == n_last, n,
                                  _interpolant(outputs, y, y1, ks, f1_box, t0g, t1g, hg))
            t_stop = _observe(observers, record, outputs)
            f1 = outputs.write(record.outputs, y, y1, ks, f1_box[0], t0g, t1g, hg)
        elif t1 >= outputs.next_time:
            f1 = outputs.write(outputs.place(t1, end_is_node), y, y1, ks, f1, t0g, t1g, hg)
        if t_stop is not None:
            stats.nfe += nfe
            stats.n_accepted = n + 1
            return _finish(problem, outputs.states, n_out, stats, Status.SUCCESS, t_stop)
        f0 = f1 if stepper.fsal else (None if perturb else f1)
        f0_perturb = end_perturb if stepper.fsal else 0
        y, t0 = y1, t1
        if locate_nonfinite and not bool(torch.isfinite(y1).all()):
            return _finish(problem, outputs.states, n_out, stats, Status.NONFINITE, t1)
    n_steps = len(grid_f) - 1
    stats.nfe += nfe
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
        make_stepper = problem.method.make_stepper
        fresh = make_stepper(problem) if make_stepper is not None else stepper  # a stepper may keep history
        located = _integrate_fixed(problem, fresh, (),
                                   locate_nonfinite=True).t_reached
    t_bad = ts[first_bad] if located is None else problem.to_user_time(located)  # back to internal time
    return _finish(problem, outputs.states[:first_bad], n_out, stats, Status.NONFINITE, t_bad)
