"""Validating the arguments of a solve, once, into a :class:`Problem` the integrator can trust.

Everything the user passes is checked here with errors that name the argument, the value and
what is accepted; nothing in the per-step loop re-checks it. Tuple states are flattened into
one vector and decreasing times are turned into increasing ones by negating time (the field
becomes ``-f(-s, y)``), so the integrator only ever sees one increasing problem.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .control import Norm, mixed_norm, rms_norm
from .tableaus import ADAPTIVE_METHODS, DEFAULT_METHOD, FIXED_METHODS, METHODS, ButcherTableau

ADAPTIVE_OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "max_num_steps", "dtype", "step_t",
                    "jump_t", "norm", "min_step", "max_step")
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp")
ON_FAILURE = ("raise", "return")
CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


@dataclass(frozen=True)
class AdaptiveOptions:
    """Options of the adaptive methods (torchdiffeq's names and defaults)."""

    first_step: Optional[float] = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    max_num_steps: int = 2**31 - 1
    dtype: torch.dtype = torch.float64
    step_t: Tuple[float, ...] = ()
    jump_t: Tuple[float, ...] = ()
    norm: Optional[Norm] = None
    min_step: float = 0.0
    max_step: float = math.inf


@dataclass(frozen=True)
class FixedOptions:
    """Options of the fixed-step methods (torchdiffeq's names and defaults)."""

    step_size: Optional[float] = None
    grid_constructor: Optional[Callable] = None
    perturb: bool = False
    interp: str = "linear"


@dataclass
class Callbacks:
    """``callback_step``/``callback_accept_step``/``callback_reject_step`` found on ``func``."""

    step: Optional[Callable] = None
    accept: Optional[Callable] = None
    reject: Optional[Callable] = None


@dataclass
class Problem:
    """A validated solve in the integrator's internal form.

    ``func(t, y)`` takes a 0-d time tensor and the flat/internal state; ``t`` is increasing.
    """

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t: torch.Tensor
    tableau: ButcherTableau
    rtol: Union[float, torch.Tensor]
    atol: Union[float, torch.Tensor]
    options: Union[AdaptiveOptions, FixedOptions]
    norm: Norm
    callbacks: Callbacks = field(default_factory=Callbacks)
    on_failure: str = "raise"
    reversed: bool = False
    shapes: Optional[List[torch.Size]] = None
    user_func: Any = None

    @property
    def is_tuple(self) -> bool:
        return self.shapes is not None

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)

    def to_user_time(self, t: float) -> float:
        return -t if self.reversed else t

    def unpack(self, ys: torch.Tensor):
        """Stacked internal states ``(T, *state)`` -> the user's form (a tuple for tuple states)."""
        if self.shapes is None:
            return ys
        return unflatten(ys, self.shapes, leading=ys.shape[:1])


# --------------------------------------------------------------------------- tuple states

def flatten(ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([y.reshape(-1) for y in ys])


def unflatten(flat: torch.Tensor, shapes: Sequence[torch.Size], leading: Tuple[int, ...] = ()) -> Tuple[torch.Tensor, ...]:
    sizes = [math.prod(s) for s in shapes]
    parts = flat.split(sizes, dim=len(leading))
    return tuple(p.reshape(tuple(leading) + tuple(s)) for p, s in zip(parts, shapes))


class _TupleField:
    """The user's field on tuple states, as a field on the flat vector."""

    def __init__(self, func: Callable, shapes: List[torch.Size]):
        self.func = func
        self.shapes = shapes

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.func(t, unflatten(y, self.shapes))
        _check_tuple_output(out, self.shapes)
        return torch.cat([o.reshape(-1) for o in out])


def _check_tuple_output(out: Any, shapes: List[torch.Size]) -> None:
    if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
        raise ValueError(
            f"func must return a tuple of {len(shapes)} tensors (one per component of the tuple y0); "
            f"got {type(out).__name__}{'' if not isinstance(out, (tuple, list)) else ' of length ' + str(len(out))}")
    for i, (o, s) in enumerate(zip(out, shapes)):
        if not isinstance(o, torch.Tensor) or o.shape != s:
            got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise ValueError(f"func returned component {i} with shape {got}; expected {tuple(s)} (the shape of y0[{i}])")


class _ReversedField:
    """``-f(-s, y)``: integrating in ``s = -t`` forward is integrating in ``t`` backward."""

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.func(-s, y)


# --------------------------------------------------------------------------- validation

def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_float(name: str, value: Any, *, minimum: float = None, positive: bool = False, maximum: float = None) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number; got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {_describe(value)}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return value


def _tolerance(name: str, tol: Any, shapes: Optional[List[torch.Size]], like: torch.Tensor):
    """A scalar tolerance, or (tuple states) one per component expanded over the flat vector."""
    if isinstance(tol, (tuple, list)) and shapes is not None:
        if len(tol) != len(shapes):
            raise ValueError(f"{name} given per component must have {len(shapes)} entries (one per y0 "
                             f"component); got {len(tol)}")
        values = [_as_float(f"{name}[{i}]", v, minimum=0.0) for i, v in enumerate(tol)]
        return torch.cat([torch.full((math.prod(s),), v, dtype=like.dtype, device=like.device)
                          for v, s in zip(values, shapes)])
    if isinstance(tol, torch.Tensor) and tol.numel() > 1:
        if tol.requires_grad:
            raise ValueError(f"{name} must not require gradient")
        if (tol < 0).any() or not torch.isfinite(tol).all():
            raise ValueError(f"{name} must be finite and >= 0 everywhere")
        return tol.to(dtype=like.dtype, device=like.device).expand_as(like) if shapes is None else tol
    return _as_float(name, tol, minimum=0.0)


def _time_points(name: str, value: Any, sign: float) -> Tuple[float, ...]:
    if value is None:
        return ()
    values = value.detach().reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value)
    out = []
    for v in values:
        v = _as_float(name, v)
        if not math.isfinite(v):
            raise ValueError(f"options['{name}'] must hold finite times; got {v}")
        out.append(sign * v)
    return tuple(sorted(out))


def _parse_options(tableau: ButcherTableau, options: Optional[Dict[str, Any]], reversed_: bool):
    options = dict(options or {})
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict; got {_describe(options)}")
    valid = ADAPTIVE_OPTIONS if tableau.adaptive else FIXED_OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        other = FIXED_OPTIONS if tableau.adaptive else ADAPTIVE_OPTIONS
        hint = ""
        if any(u in other for u in unknown):
            kind = "fixed-step" if tableau.adaptive else "adaptive"
            hint = f" ({', '.join(u for u in unknown if u in other)} applies to {kind} methods only)"
        raise ValueError(f"unknown option(s) {unknown} for method '{tableau.name}'{hint}; valid options: {list(valid)}")
    if tableau.adaptive:
        kw: Dict[str, Any] = {}
        if options.get("first_step") is not None:
            kw["first_step"] = _as_float("options['first_step']", options["first_step"], positive=True)
        for name, lo, hi in (("safety", 0.0, 1.0), ("dfactor", 0.0, 1.0)):
            if name in options:
                kw[name] = _as_float(f"options['{name}']", options[name], positive=True, maximum=hi)
        if "ifactor" in options:
            kw["ifactor"] = _as_float("options['ifactor']", options["ifactor"], minimum=1.0)
        if "max_num_steps" in options:
            n = options["max_num_steps"]
            if isinstance(n, torch.Tensor):
                n = int(n.item())
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"options['max_num_steps'] must be a positive integer; got {_describe(n)}")
            kw["max_num_steps"] = n
        if "dtype" in options:
            dt = options["dtype"]
            if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
                raise TypeError(f"options['dtype'] must be a floating torch.dtype; got {_describe(dt)}")
            kw["dtype"] = dt
        if "min_step" in options:
            kw["min_step"] = _as_float("options['min_step']", options["min_step"], minimum=0.0)
        if "max_step" in options:
            kw["max_step"] = _as_float("options['max_step']", options["max_step"], positive=True)
        if kw.get("min_step", 0.0) > kw.get("max_step", math.inf):
            raise ValueError(f"options['min_step']={kw['min_step']} exceeds options['max_step']={kw['max_step']}")
        sign = -1.0 if reversed_ else 1.0
        kw["step_t"] = _time_points("step_t", options.get("step_t"), sign)
        kw["jump_t"] = _time_points("jump_t", options.get("jump_t"), sign)
        if set(kw["step_t"]) & set(kw["jump_t"]):
            raise ValueError("options['step_t'] and options['jump_t'] must not share any time")
        if options.get("norm") is not None:
            if not callable(options["norm"]):
                raise TypeError(f"options['norm'] must be callable (tensor -> scalar); got {_describe(options['norm'])}")
            kw["norm"] = options["norm"]
        return AdaptiveOptions(**kw)
    kw = {}
    if options.get("step_size") is not None:
        kw["step_size"] = _as_float("options['step_size']", options["step_size"], positive=True)
    if options.get("grid_constructor") is not None:
        if "step_size" in kw:
            raise ValueError("options['step_size'] and options['grid_constructor'] are mutually exclusive")
        if not callable(options["grid_constructor"]):
            raise TypeError("options['grid_constructor'] must be callable (func, y0, t) -> grid tensor")
        kw["grid_constructor"] = options["grid_constructor"]
    if "perturb" in options:
        if not isinstance(options["perturb"], bool):
            raise TypeError(f"options['perturb'] must be True or False; got {_describe(options['perturb'])}")
        kw["perturb"] = options["perturb"]
    if "interp" in options:
        if options["interp"] not in ("linear", "cubic"):
            raise ValueError(f"options['interp'] must be 'linear' or 'cubic'; got {_describe(options['interp'])}")
        kw["interp"] = options["interp"]
    return FixedOptions(**kw)


def _find_callbacks(func: Any, problem_reversed: bool, shapes) -> Callbacks:
    found = {}
    for name, key in zip(CALLBACKS, ("step", "accept", "reject")):
        cb = getattr(func, name, None)
        if cb is None or not callable(cb):
            continue

        def wrapped(t0, y0, dt, _cb=cb):
            if shapes is not None:
                y0 = unflatten(y0, shapes)
            if problem_reversed:  # report in the user's time: t0 and dt both run backward
                return _cb(-t0, y0, -dt)
            return _cb(t0, y0, dt)

        found[key] = wrapped
    return Callbacks(**found)


def make_problem(func: Callable, y0: Any, t: Any, *, method: Optional[str], rtol: Any, atol: Any,
                 options: Optional[Dict[str, Any]], on_failure: str = "raise") -> Problem:
    """Check every argument of a solve and build its internal :class:`Problem`."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_describe(func)}")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}; got {_describe(on_failure)}")
    method = DEFAULT_METHOD if method is None else method
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {_describe(method)}; valid methods: fixed-step {list(FIXED_METHODS)}, "
                         f"adaptive {list(ADAPTIVE_METHODS)}")
    tableau = METHODS[method]

    # --- state
    shapes = None
    if isinstance(y0, (tuple, list)):
        if len(y0) == 0:
            raise ValueError("y0 must be a tensor or a non-empty tuple of tensors; got an empty tuple")
        for i, part in enumerate(y0):
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"y0[{i}] must be a torch.Tensor; got {_describe(part)}")
        dtypes = {p.dtype for p in y0}
        devices = {p.device for p in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(f"the tensors of a tuple y0 must share one dtype and device; got dtypes "
                            f"{sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}")
        shapes = [p.shape for p in y0]
        first = y0[0]
        if not first.is_floating_point():
            raise TypeError(f"y0 must be floating point; got dtype {first.dtype} (convert with y0.float())")
        y0_internal = flatten(y0)
    elif isinstance(y0, torch.Tensor):
        if not y0.is_floating_point():
            raise TypeError(f"y0 must be a floating point tensor; got dtype {y0.dtype} (convert with y0.float())")
        y0_internal = y0
    else:
        raise TypeError(f"y0 must be a torch.Tensor or a tuple of tensors; got {_describe(y0)}")

    # --- times
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=y0_internal.dtype, device=y0_internal.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"t must be a 1-D tensor of times; got {_describe(t)}") from None
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating point tensor; got dtype {t.dtype}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}")
    if t.device != y0_internal.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0_internal.device}; put both on one device "
                         f"(e.g. t = t.to(y0.device))")
    if not torch.isfinite(y0_internal).all():
        raise ValueError("y0 must be finite; it contains NaN or inf")
    if not torch.isfinite(t).all():
        raise ValueError(f"t must be finite; got {_describe(t.detach().tolist())}")
    reversed_ = False
    if t.numel() > 1:
        diffs = t.detach()[1:] - t.detach()[:-1]
        if bool((diffs > 0).all()):
            pass
        elif bool((diffs < 0).all()):
            reversed_ = True
        else:
            raise ValueError(f"t must be strictly increasing or strictly decreasing; got {_describe(t.detach().tolist())}")

    # --- tolerances and options
    rtol_v = _tolerance("rtol", rtol, shapes, y0_internal)
    atol_v = _tolerance("atol", atol, shapes, y0_internal)
    opts = _parse_options(tableau, options, reversed_)
    if tableau.adaptive and isinstance(rtol_v, float) and isinstance(atol_v, float) and rtol_v == 0 and atol_v == 0:
        raise ValueError("rtol and atol are both 0: an adaptive method needs a positive tolerance")

    # --- the field in internal form
    internal = func
    if shapes is not None:
        internal = _TupleField(internal, shapes)
    if reversed_:
        internal = _ReversedField(internal)
        t = -t
        if isinstance(opts, FixedOptions) and opts.grid_constructor is not None:
            user_gc = opts.grid_constructor
            opts = dataclasses.replace(opts, grid_constructor=lambda f, y, tt: -user_gc(f, y, -tt))

    if isinstance(opts, AdaptiveOptions) and opts.norm is not None:
        norm = opts.norm
        if shapes is not None:
            user_norm = norm
            norm = lambda x: user_norm(unflatten(x, shapes))  # noqa: E731
    elif shapes is not None:
        norm = mixed_norm([math.prod(s) for s in shapes])
    else:
        norm = rms_norm

    return Problem(func=internal, y0=y0_internal, t=t, tableau=tableau, rtol=rtol_v, atol=atol_v, options=opts,
                   norm=norm, callbacks=_find_callbacks(func, reversed_, shapes), on_failure=on_failure,
                   reversed=reversed_, shapes=shapes, user_func=func)
