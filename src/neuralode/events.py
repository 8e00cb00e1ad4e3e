"""Events: solves that notice when a function of the state crosses zero, and may stop there.

An *event* is a function ``g(t, y) -> tensor``; it fires where an element of ``g`` changes
sign along the solution. Detection runs on every accepted step (the loop's step observer, see
:mod:`neuralode.stepping`): the signs of ``g`` at the step's end are compared with those at its
start, and a crossing is located by bracketed root finding (Illinois' regula falsi with a
bisection safeguard) on the step's dense output, to a few ulps of the time. So events cost no
extra steps and no extra evaluations of the field, only evaluations of ``g`` on the interpolant.

Two front doors use this module:

* torchdiffeq's: ``odeint(func, y0, t, event_fn=g)``, ``odeint_adjoint(..., event_fn=g)`` and
  :func:`odeint_event` — the solve stops at the first sign change of any element of ``g`` and
  returns ``(event_t, solution)`` with ``solution = [y0, y(event_t)]``;
* :func:`neuralode.solve` with ``events=[...]`` — several :class:`Event` s, each rising, falling
  or both, terminal (the solve stops) or not (recorded, the solve goes on, as SciPy's
  ``solve_ivp`` does), and ``per_sample_events=True``: with a batched state (samples along the
  first dimension), each sample stops at its own terminal event and stays frozen there while the
  others go on. ``Solution.events`` (an :class:`EventRecord`) reports what fired.

Gradients. The event time ``T`` is defined implicitly by ``g(T, y(T; θ); θ) = 0``, so (implicit
function theorem) ``dT/dθ = -(∂g/∂θ + ∂g/∂y · ∂y(T)/∂θ) / (∂g/∂t + ∂g/∂y · f(T, y(T)))``, and
the state there moves with it: ``dy(T)/dθ = ∂y(T)/∂θ + f(T, y(T)) dT/dθ``. Both are built into
the returned tensors (one evaluation of ``f`` and of ``g``'s gradient per event), so event
times and event states are differentiable with respect to ``y0``, ``t[0]``, every parameter of
``func`` and of the event function, with every gradient strategy: with ``"direct"`` the
``∂y(T)/∂θ`` comes from backpropagating through the solve up to the event; with ``"adjoint"``,
``"adjoint-seminorm"`` and ``"checkpoint"`` the events are first located without a graph, then
the solve is repeated up to the event times under the strategy (one extra forward solve).
Terminal and non-terminal events, single and per-sample, are differentiable alike (first
derivatives; the ``f dT`` term is built from ``f`` evaluated without a graph, so second
derivatives through event times are not exact). A crossing's *existence* and which event fired
first are discrete and have no gradient.

Statistics: ``Solution.stats`` counts the forward evaluations of detection and replay (and one
evaluation of the field per event for its gradient); the backward counts of a replayed adjoint
or checkpointed solve are not gathered into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, cast

import torch

from .problem import Problem, unflatten
from .solution import Solution, SolveStats, Status, TensorOrTuple

__all__ = ["Event", "EventRecord", "odeint_event"]

_EPS = 2.220446049250313e-16
_T = TypeVar("_T")
_DIRECTIONS = {"both": 0, "rising": 1, "falling": -1}


# --------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Event:
    """An event for :func:`neuralode.solve` (``events=[Event(...), ...]``).

    Args:
        fn: ``fn(t, y) -> tensor``; the event fires where an element of it crosses zero. ``t`` is a
            0-d tensor, ``y`` the state as the field sees it (a tuple for tuple states). With
            ``per_sample_events=True`` its output has the samples along its first dimension.
        terminal: stop the solve (or, per sample, that sample) at the first crossing; else record
            every crossing and go on. Default ``False``, as in SciPy's ``solve_ivp``.
        direction: ``"rising"`` (negative to positive), ``"falling"`` (positive to negative) or
            ``"both"``; SciPy's numbers ``1``, ``-1``, ``0`` are accepted too.
        name: a label for reports (default: the function's name).

    A plain callable in ``events`` is taken as SciPy's are: its ``terminal`` and ``direction``
    attributes, when set, are read.
    """

    fn: Callable[..., torch.Tensor]
    terminal: bool = False
    direction: Union[str, int, float] = "both"
    name: Optional[str] = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Event fn must be callable as fn(t, y); got {self.fn!r}")
        if not isinstance(self.terminal, (bool, int)) or isinstance(self.terminal, float):
            raise TypeError(f"Event terminal must be True or False; got {self.terminal!r}")
        _direction_sign(self.direction)  # validates

    @property
    def sign(self) -> int:
        """+1 rising, -1 falling, 0 both."""
        return _direction_sign(self.direction)

    @property
    def label(self) -> str:
        return self.name or str(getattr(self.fn, "__name__", type(self.fn).__name__))


def _direction_sign(direction: Any) -> int:
    if isinstance(direction, str):
        if direction not in _DIRECTIONS:
            raise ValueError(f"Event direction must be one of {list(_DIRECTIONS)} (or 1, -1, 0); got {direction!r}")
        return _DIRECTIONS[direction]
    if isinstance(direction, (int, float)) and not isinstance(direction, bool) and math.isfinite(direction):
        return 0 if direction == 0 else (1 if direction > 0 else -1)
    raise ValueError(f"Event direction must be one of {list(_DIRECTIONS)} (or 1, -1, 0); got {direction!r}")


def as_events(events: Any) -> Tuple[Event, ...]:
    """``events=`` of :func:`neuralode.solve` as a tuple of :class:`Event` s (validated)."""
    if isinstance(events, Event) or callable(events):
        events = [events]
    if not isinstance(events, (list, tuple)) or len(events) == 0:
        raise TypeError(f"events must be an Event, a callable or a non-empty list of them; got {events!r}")
    out = []
    for i, ev in enumerate(events):
        if isinstance(ev, Event):
            out.append(ev)
        elif callable(ev):  # SciPy's convention: attributes on the function
            terminal = getattr(ev, "terminal", False)
            out.append(Event(ev, terminal=bool(terminal), direction=getattr(ev, "direction", 0)))
        else:
            raise TypeError(f"events[{i}] must be an Event or a callable g(t, y); got {ev!r}")
    return tuple(out)


# --------------------------------------------------------------------------- results

@dataclass
class EventRecord:
    """What the events of a solve did (``Solution.events``); times are user times.

    Every crossing, in the order it happened:
        t: ``(n,)`` times; ``which``: ``(n,)`` int64 index into ``events``; ``y``: ``(n, *state)``
        the state there (per sample: ``(n, *sample_shape)``, that sample's state); ``sample``:
        ``(n,)`` int64 sample index with ``per_sample_events=True``, else ``None``.
    How the solve (each sample) ended:
        stop_t: the time the solve stopped — a terminal event's time, or the last output time
        when none fired (0-d; ``(B,)`` per sample); ``stop_which``: the terminal event that
        stopped it, ``-1`` where none did; ``stop_y``: the state there (per sample ``(B, ...)``).

    ``t``, ``y``, ``stop_t``, ``stop_y`` carry gradients (see the module's notes).
    """

    t: torch.Tensor
    which: torch.Tensor
    y: TensorOrTuple
    sample: Optional[torch.Tensor]
    stop_t: torch.Tensor
    stop_which: torch.Tensor
    stop_y: TensorOrTuple
    names: Tuple[str, ...] = ()

    @property
    def terminated(self) -> torch.Tensor:
        """Whether a terminal event stopped the solve (bool; ``(B,)`` per sample)."""
        return self.stop_which >= 0

    def times(self, i: int) -> torch.Tensor:
        """The times at which event ``i`` fired (SciPy's ``t_events[i]``)."""
        return self.t[self.which == i]


# --------------------------------------------------------------------------- internal form

class _Layout:
    """Where the samples lie in the internal state (first dimension of the tensor, or of each
    component of a tuple state flattened into one vector)."""

    def __init__(self, problem: Problem):
        y0 = problem.y0
        self.shapes = problem.shapes
        if self.shapes is None:
            if y0.dim() == 0:
                raise ValueError("per_sample_events=True needs a batched y0 (samples along its first dimension); "
                                 "got a 0-d y0")
            self.n = y0.shape[0]
        else:
            leading = [s[0] for s in self.shapes if len(s)]
            if len(leading) != len(self.shapes) or len(set(leading)) != 1:
                raise ValueError(f"per_sample_events=True needs every component of y0 to have the samples along "
                                 f"its first dimension (one size); got shapes {[tuple(s) for s in self.shapes]}")
            self.n = leading[0]

    def keep(self, active: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A 0/1 multiplier of the internal state that zeroes the frozen samples."""
        a = active.to(like.dtype)
        if self.shapes is None:
            return a.reshape((self.n,) + (1,) * (like.dim() - 1))
        return torch.cat([a[:, None].expand(self.n, math.prod(s[1:])).reshape(-1) for s in self.shapes])

    def sample(self, y: torch.Tensor, b: int) -> TensorOrTuple:
        """Sample ``b`` of an internal state, in the user's form."""
        if self.shapes is None:
            return y[b]
        return tuple(c[b] for c in unflatten(y, self.shapes))


class _EventFunction:
    """The user's ``g(t, y)`` on internal time and state; returns ``(samples, elements)``."""

    def __init__(self, event: Event, index: int, problem: Problem, n_samples: Optional[int]):
        self.fn = event.fn
        self.index = index
        self.shapes = problem.shapes
        self.reversed = problem.reversed
        self.n_samples = n_samples
        self.label = event.label

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = -s if self.reversed else s
        state = y if self.shapes is None else unflatten(y, self.shapes)
        out = self.fn(t, state)
        if not isinstance(out, torch.Tensor) or out.is_complex():
            got = f"a complex tensor ({out.dtype})" if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"event function {self.label!r} must return a real tensor (its zeros are the "
                            f"events); got {got}")
        if self.n_samples is None:
            return out.reshape(1, -1)
        if out.dim() == 0 or out.shape[0] != self.n_samples:
            raise ValueError(f"with per_sample_events=True, event function {self.label!r} must return the samples "
                             f"along its first dimension ({self.n_samples}); got shape {tuple(out.shape)}")
        return out.reshape(self.n_samples, -1)


class _Frozen:
    """The field with the frozen samples' derivatives zeroed: they stay at their event states."""

    def __init__(self, func: Callable, keep: torch.Tensor):
        self.func = func
        self.keep = keep

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.func(t, y) * self.keep


# --------------------------------------------------------------------------- root finding

def bracket_root(fun: Callable[[float], float], a: float, b: float, fa: float, fb: float,
                 max_iter: int = 200) -> Tuple[float, float]:
    """Narrow ``[a, b]`` with ``fun(a) > 0 >= fun(b)`` to a few ulps around a root of ``fun``.

    Illinois' modified regula falsi (superlinear on smooth functions) with a bisection
    safeguard (each two iterations must halve the bracket), so it always terminates. Returns
    the final bracket ``(a, b)``: ``fun(a) > 0 >= fun(b)`` still holds, so ``b`` lies on or just
    past the crossing.
    """
    if not (fa > 0 >= fb):
        raise ValueError(f"bracket_root needs fun(a) > 0 >= fun(b); got fun({a})={fa}, fun({b})={fb}")
    kept = 0  # +1: a kept last time, -1: b kept last time
    width_before = b - a
    for it in range(max_iter):
        width = b - a
        if width <= 4 * _EPS * max(abs(a), abs(b)) or width <= 1e-300:
            break
        if it % 2 == 0:
            if it > 0 and width > 0.5 * width_before:
                c = 0.5 * (a + b)
            else:
                c = b - fb * (b - a) / (fb - fa)
            width_before = width
        else:
            c = b - fb * (b - a) / (fb - fa)
        if not a < c < b:
            c = 0.5 * (a + b)
            if not a < c < b:
                break
        fc = fun(c)
        if fc > 0:
            a, fa = c, fc
            if kept == -1:
                fb *= 0.5
            kept = -1
        else:
            b, fb = c, fc
            if kept == 1:
                fa *= 0.5
            kept = 1
    return a, b


# --------------------------------------------------------------------------- detection

@dataclass
class Firing:
    """One located crossing (internal time ``t``, the far side of its bracket)."""

    t: float
    event: int
    sample: int
    element: int
    terminal: bool
    y: Optional[torch.Tensor] = None  # full internal state there (graph-connected in a direct solve)


class Detector:
    """The step observer that finds crossings; one per solve segment (see :meth:`start`).

    Elements keep the sign they had at the last step's end (``last``); an element fires in a
    step when that sign was non-zero and differs at the step's end. Starting exactly on zero is
    not a crossing (torchdiffeq reports one at ``t0``; restarting from an event state would then
    fire again at once).
    """

    def __init__(self, fns: Sequence[_EventFunction], events: Sequence[Event], per_sample: bool, n_samples: int):
        self.fns = list(fns)
        self.events = list(events)
        self.per_sample = per_sample
        self.n_samples = n_samples
        self.active: Optional[torch.Tensor] = None  # (S,) bool: samples still running
        self.last: List[torch.Tensor] = []
        self.firings: List[Firing] = []
        self.stopped: List[Firing] = []
        self.start_values: Dict[int, torch.Tensor] = {}
        self.n_eval = 0

    def _values(self, t: float, y: torch.Tensor, which: Optional[Sequence[int]] = None) -> Dict[int, torch.Tensor]:
        tt = torch.scalar_tensor(t, dtype=y.dtype, device=y.device)
        idx = range(len(self.fns)) if which is None else which
        self.n_eval += 1
        with torch.no_grad():
            return {k: self.fns[k](tt, y).detach() for k in idx}

    def start(self, t0: float, y0: torch.Tensor, active: Optional[torch.Tensor]) -> None:
        """Begin a segment at ``(t0, y0)``; ``active`` marks the samples still running."""
        vals = self._values(t0, y0)
        self.last = [torch.sign(vals[k]) for k in range(len(self.fns))]
        self.start_values = vals
        self.active = active
        self.firings, self.stopped = [], []
        self.end_state: Optional[torch.Tensor] = None

    def __call__(self, step) -> Optional[float]:
        t0, t1 = step.t0, step.t1
        vals = self._values(t1, step.y1)
        fires = []
        for k, ev in enumerate(self.events):
            s1 = torch.sign(vals[k])
            last = self.last[k]
            fire = (last != 0) & (s1 != last)
            if ev.sign > 0:
                fire &= last < 0
            elif ev.sign < 0:
                fire &= last > 0
            if self.active is not None:
                fire &= self.active[:, None]
            fires.append(fire)
        any_fire = torch.stack([f.any() for f in fires]).tolist()
        if not any(any_fire):
            self.last = [torch.sign(vals[k]) for k in range(len(self.fns))]
            self.start_values = vals
            return None

        interp_cache: Dict[float, torch.Tensor] = {}

        def state_at(t: float) -> torch.Tensor:
            if t == t1:
                return step.y1
            if t not in interp_cache:
                with torch.no_grad():
                    interp_cache[t] = step.interpolate(t)
            return interp_cache[t]

        # Terminal crossings. Without per_sample: the earliest one, the first root of
        # min over candidates of g·sign(before), ends the solve. Per sample: every sample that
        # crosses is located on its own and the segment ends at the step's end, where the
        # driver freezes those samples at their event states (one restart per step, not per sample).
        term = [k for k, ev in enumerate(self.events) if ev.terminal and any_fire[k]]
        t_stop = None
        if term:
            samples = sorted({b for k in term for b in fires[k].any(dim=1).nonzero().flatten().tolist()}) \
                if self.per_sample else [None]
            for smp in samples:
                rows = slice(None) if smp is None else slice(smp, smp + 1)

                def h(t: float, rows=rows) -> float:
                    v = self._values(t, state_at(t), term)
                    return min(float((v[k] * self.last[k])[rows][fires[k][rows]].min()) for k in term
                               if bool(fires[k][rows].any()))
                h0 = min(float((self.start_values[k] * self.last[k])[rows][fires[k][rows]].min()) for k in term
                         if bool(fires[k][rows].any()))
                a, b = bracket_root(h, t0, t1, h0, h(t1))
                # Stop just before the crossing (g keeps its sign there), so a solve restarted from
                # the event state, e.g. a ball after its bounce, does not see the same crossing
                # again; on an exact zero, stop there (a restart on zero sees no crossing either).
                t_event = b if (h(b) == 0 or not a > t0) else a
                v = self._values(b, state_at(b), term)
                by_sample: Dict[int, Tuple[Firing, float]] = {}
                for k in term:
                    crossed = v[k] * self.last[k]
                    hit = fires[k] & (crossed <= 0)
                    if smp is not None:
                        hit[:smp] = False
                        hit[smp + 1:] = False
                    for sm, e in hit.nonzero().tolist():  # one firing per sample: the most crossed value
                        val = float(crossed[sm, e])
                        if sm not in by_sample or val < by_sample[sm][1]:
                            by_sample[sm] = (Firing(t_event, k, sm, e, True), val)
                self.stopped.extend(fv[0] for fv in by_sample.values())
            self.stopped.sort(key=lambda f: f.t)
            t_stop = t1 if self.per_sample else self.stopped[0].t
            self.end_state = step.y1
        end = t1 if t_stop is None else t_stop

        # Every non-terminal crossing before the stop.
        found = []
        for k, ev in enumerate(self.events):
            if ev.terminal or not any_fire[k]:
                continue
            cand = fires[k]
            if t_stop is not None and t_stop < t1:
                at_end = self._values(end, state_at(end), [k])[k]
                cand = cand & (at_end * self.last[k] <= 0)
            g0 = self.start_values[k]
            for b, e in cand.nonzero().tolist():
                sgn = float(self.last[k][b, e])

                def g(t: float, k=k, b=b, e=e, sgn=sgn) -> float:
                    return float(self._values(t, state_at(t), [k])[k][b, e]) * sgn
                ge = float(self._values(end, state_at(end), [k])[k][b, e]) * sgn
                _, tr = bracket_root(g, t0, end, float(g0[b, e]) * sgn, ge)
                found.append(Firing(tr, k, b, e, False))
        if self.per_sample and self.stopped:
            own = {f.sample: f.t for f in self.stopped}
            found = [f for f in found if f.t <= own.get(f.sample, math.inf)]
        found.sort(key=lambda f: f.t)
        for f in found + self.stopped:  # the states there, with the graph of the solve when it has one
            f.y = step.y1 if f.t == t1 else step.interpolate(f.t)
        self.firings.extend(found)
        if t_stop is not None:
            return t_stop
        self.last = [torch.sign(vals[k]) for k in range(len(self.fns))]
        self.start_values = vals
        return None


# --------------------------------------------------------------------------- gradients

def implicit_time(fn: _EventFunction, sample: int, element: int, field: Callable, t: float,
                  y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The event time as a differentiable tensor, and the state there with its ``f dT`` term.

    ``y`` is the (graph-connected) internal state at the located time ``t``, as a function of
    everything upstream at *fixed* ``t``. Returns ``(T, y_T)`` with ``T == t`` and
    ``y_T == y`` in value, and the implicit-function-theorem derivatives (module notes). Costs
    one evaluation of ``field`` and a gradient of ``g``.
    """
    dtype, device = y.dtype, y.device
    tt = torch.scalar_tensor(t, dtype=dtype, device=device)
    if not torch.is_grad_enabled():
        return tt, y
    with torch.enable_grad():
        t_leaf = tt.clone().requires_grad_(True)
        y_leaf = y.detach().requires_grad_(True)
        g = fn(t_leaf, y_leaf)[sample, element]
        dg_dt, dg_dy = torch.autograd.grad(g, (t_leaf, y_leaf), allow_unused=True)
    with torch.no_grad():
        f = field(tt, y.detach())
        dgdt = (dg_dt if dg_dt is not None else torch.zeros((), dtype=dtype, device=device))
        if dg_dy is not None:
            dgdt = dgdt + (dg_dy * f).sum()
    if float(dgdt) == 0.0:
        raise ValueError(f"event function {fn.label!r} crosses zero with zero time derivative at t={t}: "
                         "the event time is not differentiable there (a tangential crossing)")
    g_graph = fn(tt, y)[sample, element]
    delta = -g_graph / dgdt
    T = tt + (delta - delta.detach())
    if fn.n_samples is not None:
        mask = torch.zeros(fn.n_samples, dtype=dtype, device=device)
        mask[sample] = 1
        f = f * _sample_mask(mask, y, fn)
    y_T = y + f * (T - T.detach())
    return T, y_T


def _sample_mask(mask: torch.Tensor, like: torch.Tensor, fn: _EventFunction) -> torch.Tensor:
    n = mask.shape[0]  # fn.n_samples
    if fn.shapes is None:
        return mask.reshape((n,) + (1,) * (like.dim() - 1))
    return torch.cat([mask[:, None].expand(n, math.prod(s[1:])).reshape(-1) for s in fn.shapes])


# --------------------------------------------------------------------------- the solve

@dataclass
class _Segment:
    """A stretch of the solve between restarts (a per-sample stop, or a horizon window)."""

    t_start: float
    t_end: float
    func: Callable
    outputs: List[int]
    firings: List[Firing]
    stopped: List[Firing]
    end_state: Optional[torch.Tensor] = None  # per sample: the state at t_end before the freeze


@dataclass
class _Run:
    """Everything a solve with events produces, in internal form."""

    outputs: List[Optional[torch.Tensor]]
    stats: SolveStats
    status: Status
    t_reached: float
    segments: List[_Segment] = field(default_factory=list)
    times: Dict[int, torch.Tensor] = field(default_factory=dict)   # id(firing) -> T (internal, graph)
    states: Dict[int, torch.Tensor] = field(default_factory=dict)  # id(firing) -> y(T) (internal, graph)
    final: Optional[torch.Tensor] = None


def _integrate_observed(problem: Problem, observer) -> Solution:
    from .integrate import integrate

    return integrate(problem.replace(observers=(*problem.observers, observer)))


def _add_stats(total: SolveStats, part: SolveStats) -> None:
    total.nfe += part.nfe
    total.n_accepted += part.n_accepted
    total.n_rejected += part.n_rejected
    total.final_step = part.final_step


def _times_tensor(problem: Problem, first_is_t0: bool, t_start: float, later: Sequence[Tuple[float, Optional[int]]]):
    """Segment times: the start (``t[0]`` itself on the first segment), then ``later`` times, each
    ``(time, output index or None)``: outputs keep their graph, other times are constants."""
    t = problem.t
    dtype, device = t.dtype, t.device
    parts = [t[:1] if first_is_t0 else torch.tensor([t_start], dtype=dtype, device=device)]
    for value, i in later:
        parts.append(t[i:i + 1] if i is not None else torch.tensor([value], dtype=dtype, device=device))
    return torch.cat(parts)


class EventSolve:
    """One solve with events: detection (phase 1) and, for gradient strategies that keep no
    graph, a replay of the located segments under the strategy (phase 2)."""

    MAX_WINDOWS = 64  # doublings of the first window before giving up on an event
    MAX_FIXED_STEPS = 20000  # torchdiffeq's limit for fixed-step event handling

    def __init__(self, problem: Problem, events: Tuple[Event, ...], strategy: Any, per_sample: bool,
                 horizon: bool = False):
        from .gradient import Direct

        self.problem = problem
        self.events = events
        self.strategy = strategy
        self.per_sample = per_sample
        self.horizon = horizon
        self.layout = _Layout(problem) if per_sample else None
        n = self.layout.n if self.layout is not None else None
        self.fns = [_EventFunction(ev, k, problem, n) for k, ev in enumerate(events)]
        self.detector = Detector(self.fns, events, per_sample, n or 1)
        self.replay = not isinstance(strategy, Direct) and torch.is_grad_enabled()
        self.nfe = 0
        if horizon and not problem.method.adaptive and getattr(problem.options, "step_size", None) is None:
            raise ValueError(f"event handling with the fixed-step method '{problem.method.name}' needs "
                             "options['step_size'] (as in torchdiffeq)")

    @property
    def samples(self) -> _Layout:
        """Where the samples lie (a solve with ``per_sample_events=True`` only)."""
        return _known(self.layout, "the per-sample layout")

    # ------------------------------------------------------------------ phase 1
    def detect(self) -> _Run:
        problem = self.problem
        ts = problem.t.detach().tolist()
        n_out = len(ts)
        outputs: List[Optional[torch.Tensor]] = [None] * n_out
        outputs[0] = problem.y0
        run = _Run(outputs=outputs, stats=SolveStats(), status=Status.SUCCESS, t_reached=ts[0])
        active = torch.ones(self.samples.n, dtype=torch.bool, device=problem.y0.device) if self.per_sample else None
        y, t_start, first = problem.y0, ts[0], True
        window = ts[-1] - ts[0]
        if self.horizon and not problem.method.adaptive:
            step = problem.options.step_size
            window = step * max(1, round(window / step))
        options = problem.options
        for _ in range(self.MAX_WINDOWS if self.horizon else 10**9):
            if self.horizon:
                later: List[Tuple[float, Optional[int]]] = [(t_start + window, None)]
            else:
                later = [(ts[i], i) for i in range(n_out) if ts[i] > t_start]
                if not later:
                    break
            func = problem.func
            if active is not None and not bool(active.all()):
                func = _Frozen(problem.func, self.samples.keep(active, y))
            seg_problem = problem.replace(y0=y, t=_times_tensor(problem, first, t_start, later), func=func,
                                          options=options)
            self.detector.start(t_start, y, active)
            sol = _integrate_observed(seg_problem, self.detector)
            _add_stats(run.stats, sol.stats)
            t_reached = problem.to_user_time(_known(sol.t_reached, "the time a segment reached"))  # the internal time (negation is its own inverse)
            for j, (value, i) in enumerate(later):
                if i is not None and value <= t_reached:
                    outputs[i] = sol.ys[j + 1]
            run.t_reached = t_reached
            if not sol.success:
                run.status = sol.status
                return run
            stopped = self.detector.stopped
            seg = _Segment(t_start, t_reached, func, [i for _, i in later if i is not None and ts[i] <= t_reached],
                           list(self.detector.firings), list(stopped))
            run.segments.append(seg)
            if not self.replay:
                for f in seg.firings:
                    run.times[id(f)], run.states[id(f)] = self._implicit(f, func)
            if not stopped:
                y = sol.ys[-1]
                if not self.horizon:
                    break
                t_start, first = t_reached, False
                window *= 2
                steps = run.stats.n_accepted + run.stats.n_rejected
                if not problem.method.adaptive and steps >= self.MAX_FIXED_STEPS:
                    raise RuntimeError(f"no event within {steps} fixed steps (up to t={problem.to_user_time(t_start)}; "
                                       f"torchdiffeq stops at {self.MAX_FIXED_STEPS} too): check the event function, "
                                       f"or that it can reach zero")
                if steps >= getattr(problem.options, "max_num_steps", math.inf):
                    run.status = Status.MAX_STEPS
                    return run
                if problem.method.adaptive and sol.stats.final_step:
                    options = _with_first_step(problem.options, sol.stats.final_step)
                continue
            if not self.per_sample:
                y = _known(stopped[0].y, "the state where the solve stopped")
                if not self.replay:
                    f = stopped[0]
                    run.times[id(f)], run.states[id(f)] = self._implicit(f, func)
                    y = run.states[id(f)]
                break
            seg.end_state = end_state = _known(self.detector.end_state, "the state where samples stopped")
            y = self._freeze(run, seg, end_state, func, implicit=not self.replay)
            if problem.method.adaptive and sol.stats.final_step:  # go on with the step size reached
                options = _with_first_step(problem.options, sol.stats.final_step)
            still = _known(active, "the per-sample activity mask")
            for f in stopped:
                still[f.sample] = False
            t_start, first = t_reached, False
            if not bool(still.any()):
                break
        else:
            raise RuntimeError(f"no event found up to t={problem.to_user_time(t_start)} (the solve went on through "
                               f"{self.MAX_WINDOWS} doubling windows); check the event function, or that it can "
                               f"reach zero")
        run.final = y
        return run

    def _implicit(self, f: Firing, func: Callable):
        """IFT tensors ``(T, y(T))`` of one firing (internal time and state)."""
        if torch.is_grad_enabled():
            self.nfe += 1  # the field at the event
        return implicit_time(self.fns[f.event], f.sample, f.element, func, f.t, _known(f.y, "the state at a firing"))

    def _freeze(self, run: _Run, seg: _Segment, y: torch.Tensor, func: Callable, implicit: bool) -> torch.Tensor:
        """Per sample: the state to restart from at ``seg.t_end`` (``y`` there), with each stopped
        sample put back to its event state; outputs after a sample's event get that state too."""
        ts = self.problem.t.detach().tolist()
        for f in seg.stopped:
            if implicit:
                run.times[id(f)], run.states[id(f)] = self._implicit(f, func)
            y_T = run.states[id(f)] if id(f) in run.states else _known(f.y, "the state at a firing")
            one = torch.zeros(self.samples.n, dtype=torch.bool, device=y.device)
            one[f.sample] = True
            mask = self.samples.keep(one, y).to(torch.bool)
            y = torch.where(mask, y_T, y)
            for i in seg.outputs:
                if ts[i] > f.t:
                    run.outputs[i] = torch.where(mask, y_T, _known(run.outputs[i], "an output before the stop"))
        return y

    # ------------------------------------------------------------------ phase 2
    def replay_segments(self, run: _Run) -> None:
        """Solve again up to the located times under the gradient strategy (graph-free ones)."""
        problem = self.problem
        ts = problem.t.detach().tolist()
        y = problem.y0
        first = True
        groups: List[List[_Segment]] = [[]]
        for seg in run.segments:  # horizon windows without a stop merge into one solve
            groups[-1].append(seg)
            if seg.stopped:
                groups.append([])
        for group in groups:
            if not group:
                continue
            t_start, t_end = group[0].t_start, group[-1].t_end
            outs = [i for seg in group for i in seg.outputs]
            firings = [f for seg in group for f in seg.firings]
            stopped = group[-1].stopped
            marks: Dict[float, Optional[int]] = {}
            for f in firings + stopped:
                marks.setdefault(f.t, None)
            for i in outs:
                marks[ts[i]] = i
            marks.setdefault(t_end, None)
            later = sorted((v, i) for v, i in marks.items() if v > t_start)
            func = group[0].func
            sol = self.strategy.solve(problem.replace(y0=y, t=_times_tensor(problem, first, t_start, later),
                                                      func=func))
            if not sol.success:
                from .errors import SolverError

                raise SolverError(sol.status, sol.t_reached, detail="replaying the solve up to the located events")
            _add_stats(run.stats, sol.stats)  # forward counts only: its backward pass counts in sol.stats
            # Values stay those of the detection (so an event state keeps g's sign before the
            # crossing, as in a direct solve); gradients come from the strategy's solve.
            rows = {v: sol.ys[j + 1] for j, (v, _) in enumerate(later)}
            for i in outs:
                run.outputs[i] = _graft(run.outputs[i], rows[ts[i]])
            for f in firings:
                f.y = _graft(f.y, rows[f.t])
                run.times[id(f)], run.states[id(f)] = self._implicit(f, func)
            if not stopped:
                y = _graft(run.final, rows[t_end])
            elif not self.per_sample:
                f = stopped[0]
                f.y = _graft(f.y, rows[t_end])
                run.times[id(f)], run.states[id(f)] = self._implicit(f, func)
                y = run.states[id(f)]
            else:
                for f in stopped:
                    f.y = _graft(f.y, rows[f.t])
                y = self._freeze(run, group[-1], _graft(group[-1].end_state, rows[t_end]), func, implicit=True)
            first = False
        run.final = y

    def run(self) -> _Run:
        if not self.replay:
            run = self.detect()
        else:
            with torch.no_grad():
                run = self.detect()
            if run.status is Status.SUCCESS:
                self.replay_segments(run)
        run.stats.nfe += self.nfe
        return run

    # ------------------------------------------------------------------ results
    def user_state(self, y: torch.Tensor, sample: Optional[int]) -> TensorOrTuple:
        if sample is not None and self.per_sample:
            return self.samples.sample(y, sample)
        return y if self.problem.shapes is None else unflatten(y, self.problem.shapes)

    def record(self, run: _Run) -> EventRecord:
        problem = self.problem
        sign = -1.0 if problem.reversed else 1.0
        firings = sorted((f for seg in run.segments for f in seg.firings + seg.stopped), key=lambda f: f.t)
        dtype, device = problem.t.dtype, problem.t.device
        times = [sign * run.times[id(f)].to(dtype) for f in firings]
        t = torch.stack(times) if times else torch.zeros(0, dtype=dtype, device=device)
        which = torch.tensor([f.event for f in firings], dtype=torch.long, device=device)
        sample = torch.tensor([f.sample for f in firings], dtype=torch.long, device=device) if self.per_sample else None
        states = [self.user_state(run.states[id(f)], f.sample) for f in firings]
        template = self.user_state(problem.y0, 0 if self.per_sample else None)
        y = _stack_states(states, template)
        final_t = torch.tensor(sign * run.t_reached, dtype=dtype, device=device)
        stops = {f.sample: f for seg in run.segments for f in seg.stopped}
        final = run.final if run.final is not None else problem.y0
        if self.per_sample:
            n = self.samples.n
            stop_t = torch.stack([sign * run.times[id(stops[b])].to(dtype) if b in stops else final_t
                                  for b in range(n)])
            stop_which = torch.tensor([stops[b].event if b in stops else -1 for b in range(n)], dtype=torch.long,
                                      device=device)
            stop_y = _stack_states([self.user_state(run.states[id(stops[b])] if b in stops else final, b)
                                    for b in range(n)], template)
        else:
            f = stops.get(0)
            stop_t = sign * run.times[id(f)].to(dtype) if f is not None else final_t
            stop_which = torch.tensor(f.event if f is not None else -1, dtype=torch.long, device=device)
            stop_y = self.user_state(run.states[id(f)] if f is not None else final, None)
        return EventRecord(t=t, which=which, y=y, sample=sample, stop_t=stop_t, stop_which=stop_which, stop_y=stop_y,
                           names=tuple(ev.label for ev in self.events))


def _known(value: Optional[_T], what: str) -> _T:
    """``value``, which this point of the solve guarantees is set (an internal invariant)."""
    if value is None:
        raise RuntimeError(f"internal error in the event solve: {what} is missing")
    return value


def _graft(value: Optional[torch.Tensor], graph: torch.Tensor) -> torch.Tensor:
    """``value`` with the gradient of ``graph`` (equal to it up to the solver's tolerance)."""
    if value is None:
        return graph
    return value.detach() + (graph - graph.detach())


def _with_first_step(options, h: float):
    import dataclasses

    if dataclasses.is_dataclass(options) and not isinstance(options, type) and any(f.name == "first_step" for f in dataclasses.fields(options)):
        return dataclasses.replace(options, first_step=h)
    return options


def _stack_states(states: List[TensorOrTuple], template: TensorOrTuple) -> TensorOrTuple:
    if isinstance(template, tuple):
        if not states:
            return tuple(c.new_zeros((0,) + tuple(c.shape)) for c in template)
        return tuple(torch.stack(parts) for parts in zip(*states))
    if not states:
        return template.new_zeros((0,) + tuple(template.shape))
    return torch.stack(cast(List[torch.Tensor], states))  # a tensor template: every state is a tensor


def solve_with_events(problem: Problem, events: Any, strategy: Any, per_sample: bool = False) -> Solution:
    """:func:`neuralode.solve` with ``events``: a :class:`Solution` in internal form whose ``ys``
    stop at the last output reached (a terminal event without ``per_sample``), with ``events``."""
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample_events must be True or False; got {per_sample!r}")
    engine = EventSolve(problem, as_events(events), strategy, per_sample)
    run = engine.run()
    n = 0
    while n < len(run.outputs) and run.outputs[n] is not None:
        n += 1
    if per_sample and run.status is Status.SUCCESS:  # every sample stopped: the rest stays frozen
        run.outputs[n:] = [run.final] * (len(run.outputs) - n)
        n = len(run.outputs)
    ys = torch.stack([_known(y, "an output reached") for y in run.outputs[:n]])
    if run.status is not Status.SUCCESS:
        nan = torch.full_like(problem.y0, math.nan)
        ys = torch.cat([ys, nan.expand((len(run.outputs) - n,) + tuple(nan.shape))])
    solution = Solution(ys=ys, ts=problem.t[:ys.shape[0]], stats=run.stats, status=run.status,
                        t_reached=problem.to_user_time(run.t_reached))
    solution.events = engine.record(run) if run.status is Status.SUCCESS else None
    return solution


def solve_until_event(problem: Problem, event_fn: Callable, strategy: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """torchdiffeq's event mode: solve from ``t[0]`` until ``event_fn`` first changes sign in any
    element (``t[1]`` only sets the first window's length); returns ``(event_t, [y0, y(event_t)])``
    with the states in internal form."""
    if problem.t.numel() != 2:
        raise ValueError(f"with event_fn, t must hold exactly 2 times (only t[0] is used, as in torchdiffeq); "
                         f"got {problem.t.numel()}")
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y); got {event_fn!r}")
    engine = EventSolve(problem, (Event(event_fn, terminal=True, name="event_fn"),), strategy, per_sample=False,
                        horizon=True)
    run = engine.run()
    if run.status is not Status.SUCCESS:
        from .errors import SolverError

        raise SolverError(run.status, problem.to_user_time(run.t_reached), detail="solving until the event")
    stop = [f for seg in run.segments for f in seg.stopped][0]
    t_event = run.times[id(stop)].to(problem.t.dtype)
    if problem.reversed:
        t_event = -t_event
    return t_event, torch.stack([problem.y0, run.states[id(stop)]])


# --------------------------------------------------------------------------- torchdiffeq's entry

def odeint_event(func: Callable, y0: TensorOrTuple, t0: torch.Tensor, *, event_fn: Callable,
                 reverse_time: bool = False, odeint_interface: Optional[Callable] = None, **kwargs):
    """Drop-in replacement for ``torchdiffeq.odeint_event``: solve from ``t0`` until ``event_fn``
    first crosses zero.

    Args:
        func, y0: as for :func:`neuralode.odeint`.
        t0: the start time (a tensor; it may require gradient).
        event_fn: ``event_fn(t, y) -> tensor``; the solve stops at the first sign change of any
            of its elements (starting exactly on zero is not a crossing).
        reverse_time: solve backward in time from ``t0``.
        odeint_interface: :func:`neuralode.odeint` (default) or :func:`neuralode.odeint_adjoint`
            (then the gradients come from the adjoint method; ``func`` must be an ``nn.Module`` or
            ``adjoint_params`` given).
        **kwargs: passed on (``rtol``, ``atol``, ``method``, ``options``, ``adjoint_*``).

    Returns:
        ``(event_t, solution)``: the event time (0-d, dtype of ``t0``) and ``solution`` of shape
        ``(2, *y0.shape)`` holding ``y0`` and the state at ``event_t`` (tuples for tuple states).
        Both are differentiable with respect to ``y0``, ``t0`` and the parameters of ``func`` and
        of ``event_fn`` (implicit function theorem; torchdiffeq leaves out ``event_fn``'s).
    """
    from .solve import odeint

    interface = odeint if odeint_interface is None else odeint_interface
    if not isinstance(t0, torch.Tensor):
        t0 = torch.as_tensor(t0, dtype=torch.get_default_dtype())
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    return interface(func, y0, t, event_fn=event_fn, **kwargs)
