"""Validating the arguments of a solve, once, into a :class:`Problem` the integrator can trust.

Everything the user passes is checked here with errors that name the argument, the value and
what is accepted; nothing in the per-step loop re-checks it. Tuple states are flattened into
one vector and decreasing times are turned into increasing ones by negating time (the field
becomes ``-f(-s, y)``), so the integrator only ever sees one increasing problem.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .control import Norm, mixed_norm, rms_norm
from .methods import get_method
from .options import AdaptiveOptions, FixedOptions
from .options import as_float as _as_float
from .options import describe as _describe
from .stepping import Method, StepObserver
from .tableaus import ButcherTableau

__all__ = ["Problem", "Callbacks", "AdaptiveOptions", "FixedOptions", "make_problem", "parse_options"]

ON_FAILURE = ("raise", "return")
CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


@dataclass
class Callbacks:
    """``callback_step``/``callback_accept_step``/``callback_reject_step`` found on ``func``."""

    step: Optional[Callable[..., Any]] = None
    accept: Optional[Callable[..., Any]] = None
    reject: Optional[Callable[..., Any]] = None


@dataclass
class Problem:
    """A validated solve in the integrator's internal form.

    ``func(t, y)`` takes a 0-d time tensor and the flat/internal state; ``t`` is increasing.
    """

    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t: torch.Tensor
    method: Method
    rtol: Union[float, torch.Tensor]
    atol: Union[float, torch.Tensor]
    options: Any  # the method's options object (AdaptiveOptions, FixedOptions, ...)
    norm: Norm
    callbacks: Callbacks = field(default_factory=Callbacks)
    on_failure: str = "raise"
    reversed: bool = False
    shapes: Optional[List[torch.Size]] = None
    user_func: Any = None
    observers: Tuple[StepObserver, ...] = ()  # see neuralode.stepping.StepObserver

    @property
    def tableau(self) -> Optional[ButcherTableau]:
        """The explicit RK tableau of the method, if it is one."""
        return self.method.tableau

    @property
    def is_tuple(self) -> bool:
        return self.shapes is not None

    def replace(self, **changes: Any) -> "Problem":
        return dataclasses.replace(self, **changes)

    def to_user_time(self, t: float) -> float:
        return -t if self.reversed else t

    def unpack(self, ys: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
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

    def __init__(self, func: Callable[..., Any], shapes: List[torch.Size]) -> None:
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

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = -self.func(-s, y)
        return out


# --------------------------------------------------------------------------- validation

def _tolerance(name: str, tol: Any, shapes: Optional[List[torch.Size]], like: torch.Tensor) -> Union[float, torch.Tensor]:
    """A scalar tolerance, one per element (a tensor), or (tuple states) one per component —
    given as a tuple, a list or a 1-D tensor, as torchdiffeq accepts — expanded over the flat vector."""
    real = like.real.dtype if like.is_complex() else like.dtype
    if shapes is not None and (isinstance(tol, (tuple, list)) or (isinstance(tol, torch.Tensor) and tol.dim() >= 1)):
        if isinstance(tol, torch.Tensor) and tol.requires_grad:
            raise ValueError(f"{name} must not require gradient")
        if len(tol) != len(shapes):
            raise ValueError(f"{name} given per component must have {len(shapes)} entries (one per y0 "
                             f"component); got {len(tol)}")
        values = [_as_float(f"{name}[{i}]", v, minimum=0.0) for i, v in enumerate(tol)]
        return torch.cat([torch.full((math.prod(s),), v, dtype=real, device=like.device)
                          for v, s in zip(values, shapes)])
    if isinstance(tol, torch.Tensor) and tol.numel() > 1:
        if tol.requires_grad:
            raise ValueError(f"{name} must not require gradient")
        if (tol < 0).any() or not torch.isfinite(tol).all():
            raise ValueError(f"{name} must be finite and >= 0 everywhere")
        return tol.to(dtype=real, device=like.device).expand_as(like)
    return _as_float(name, tol, minimum=0.0)


def parse_options(method: Method, options: Optional[Dict[str, Any]], reversed_: bool) -> Any:
    """The options object of ``method`` from the user's dict (see :mod:`neuralode.options`)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict; got {_describe(options)}")
    return method.parse_options(dict(options or {}), reversed_, method.name)


def _find_callbacks(func: Any, problem_reversed: bool, shapes: Optional[List[torch.Size]]) -> Callbacks:
    found = {}
    for name, key in zip(CALLBACKS, ("step", "accept", "reject")):
        cb = getattr(func, name, None)
        if cb is None or not callable(cb):
            continue

        def wrapped(t0: float, y0: Any, dt: float, _cb: Callable[..., Any] = cb) -> Any:
            if shapes is not None:
                y0 = unflatten(y0, shapes)
            if problem_reversed:  # report in the user's time: t0 and dt both run backward
                return _cb(-t0, y0, -dt)
            return _cb(t0, y0, dt)

        found[key] = wrapped
    return Callbacks(**found)


def _warn_unused_callbacks(func: Any, method: Method) -> None:
    """Warn, as torchdiffeq does, about callbacks on ``func`` that the method never calls."""
    unused = [name for name in CALLBACKS if callable(getattr(func, name, None)) and name not in method.callbacks]
    if unused:
        warnings.warn(f"method '{method.name}' does not call the callbacks {unused} defined on func", stacklevel=4)


def make_problem(func: Callable[..., Any], y0: Any, t: Any, *, method: Optional[str], rtol: Any, atol: Any,
                 options: Optional[Dict[str, Any]], on_failure: str = "raise") -> Problem:
    """Check every argument of a solve and build its internal :class:`Problem`."""
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {_describe(func)}")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}; got {_describe(on_failure)}")
    meth = get_method(method)

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
        if not (first.is_floating_point() or first.is_complex()):
            raise TypeError(f"y0 must be floating point or complex; got dtype {first.dtype} (convert with y0.float())")
        y0_internal = flatten(y0)
    elif isinstance(y0, torch.Tensor):
        if not (y0.is_floating_point() or y0.is_complex()):
            raise TypeError(f"y0 must be a floating point or complex tensor; got dtype {y0.dtype} (convert with "
                            f"y0.float())")
        y0_internal = y0
    else:
        raise TypeError(f"y0 must be a torch.Tensor or a tuple of tensors; got {_describe(y0)}")

    # --- times
    if not isinstance(t, torch.Tensor):
        try:
            real = y0_internal.real.dtype if y0_internal.is_complex() else y0_internal.dtype
            t = torch.as_tensor(t, dtype=real, device=y0_internal.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"t must be a 1-D tensor of times; got {_describe(t)}") from None
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating point tensor; got dtype {t.dtype}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times; got shape {tuple(t.shape)}")
    # Values are checked where they live (a meta tensor has none to check).
    if y0_internal.device.type != "meta" and not torch.isfinite(y0_internal).all():
        raise ValueError("y0 must be finite; it contains NaN or inf")
    reversed_ = False
    if t.device.type != "meta":
        if not torch.isfinite(t).all():
            raise ValueError(f"t must be finite; got {_describe(t.detach().tolist())}")
        if t.numel() > 1:
            diffs = t.detach()[1:] - t.detach()[:-1]
            if bool((diffs > 0).all()):
                pass
            elif bool((diffs < 0).all()):
                reversed_ = True
            else:
                raise ValueError(f"t must be strictly increasing or strictly decreasing; got "
                                 f"{_describe(t.detach().tolist())}")
    if t.device != y0_internal.device:  # torchdiffeq's behaviour: warn and move t
        warnings.warn(f"t is on {t.device} but y0 is on {y0_internal.device}; moving t to {y0_internal.device} "
                      f"(put both on one device to silence this)", stacklevel=3)
        t = t.to(y0_internal.device)

    # --- tolerances and options
    rtol_v = _tolerance("rtol", rtol, shapes, y0_internal)
    atol_v = _tolerance("atol", atol, shapes, y0_internal)
    opts = parse_options(meth, options, reversed_)
    if meth.adaptive and isinstance(rtol_v, float) and isinstance(atol_v, float) and rtol_v == 0 and atol_v == 0:
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
            user_norm: Callable[..., Any] = norm  # takes the user's tuple
            norm = lambda x: user_norm(unflatten(x, shapes))  # noqa: E731
    elif shapes is not None:
        norm = mixed_norm([math.prod(s) for s in shapes])
    else:
        norm = rms_norm

    _warn_unused_callbacks(func, meth)
    return Problem(func=internal, y0=y0_internal, t=t, method=meth, rtol=rtol_v, atol=atol_v, options=opts,
                   norm=norm, callbacks=_find_callbacks(func, reversed_, shapes), on_failure=on_failure,
                   reversed=reversed_, shapes=shapes, user_func=func)
