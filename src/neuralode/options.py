"""The options of each family of methods: their names, defaults and validation.

torchdiffeq's names and defaults. Each method names its parser (see
:class:`neuralode.stepping.Method`), so a method family with options of its own (the Adams
methods' ``max_order``, the SciPy bridge's ``solver``) adds a parser here or in its own module.
Every parser takes the user's dict (already copied), the solve's time direction and the method
name, and returns a frozen options object; an unknown name is an error naming the valid ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .control import Norm

ADAPTIVE_OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "max_num_steps", "dtype", "step_t",
                    "jump_t", "norm", "min_step", "max_step")
# ``norm`` is accepted and ignored by the fixed-step methods, as in torchdiffeq.
FIXED_OPTIONS = ("step_size", "grid_constructor", "perturb", "interp", "norm")


@dataclass(frozen=True)
class AdaptiveOptions:
    """Options of the adaptive methods (torchdiffeq's names and defaults).

    ``dtype`` is the dtype of torchdiffeq's internal time arithmetic; here every control
    decision is made on Python floats (float64) whatever it says, and ``func`` is handed times
    in the state's dtype (as torchdiffeq does), so the option is validated and otherwise inert.
    """

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


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_float(name: str, value: Any, *, minimum: Optional[float] = None, positive: bool = False,
             maximum: Optional[float] = None) -> float:
    """``value`` as a float, or a ValueError/TypeError naming ``name``, the value and the range."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number; got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {describe(value)}")
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


def as_int(name: str, value: Any, *, minimum: int = 1, maximum: Optional[int] = None) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{bound}; got {describe(value)}")
    return value


def check_names(options: Dict[str, Any], valid: Sequence[str], method: str) -> None:
    """Reject unknown option names, hinting when a name belongs to the other family of methods."""
    unknown = sorted(set(options) - set(valid))
    if not unknown:
        return
    hint = ""
    for family, names in (("adaptive", ADAPTIVE_OPTIONS), ("fixed-step", FIXED_OPTIONS)):
        other = [u for u in unknown if u in names]
        if other:
            hint = f" ({', '.join(other)} applies to {family} methods only)"
            break
    raise ValueError(f"unknown option(s) {unknown} for method '{method}'{hint}; valid options: {list(valid)}")


def time_points(name: str, value: Any, sign: float) -> Tuple[float, ...]:
    if value is None:
        return ()
    values = value.detach().reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value)
    out = []
    for v in values:
        v = as_float(name, v)
        if not math.isfinite(v):
            raise ValueError(f"options['{name}'] must hold finite times; got {v}")
        out.append(sign * v)
    return tuple(sorted(out))


def step_bounds(options: Dict[str, Any]) -> Dict[str, float]:
    """``min_step``/``max_step`` (shared by the adaptive methods and the SciPy bridge)."""
    kw: Dict[str, float] = {}
    if "min_step" in options:
        kw["min_step"] = as_float("options['min_step']", options["min_step"], minimum=0.0)
    if "max_step" in options:
        kw["max_step"] = as_float("options['max_step']", options["max_step"], positive=True)
    if kw.get("min_step", 0.0) > kw.get("max_step", math.inf):
        raise ValueError(f"options['min_step']={kw['min_step']} exceeds options['max_step']={kw['max_step']}")
    return kw


def parse_adaptive(options: Dict[str, Any], reversed_: bool, method: str) -> AdaptiveOptions:
    check_names(options, ADAPTIVE_OPTIONS, method)
    kw: Dict[str, Any] = {}
    if options.get("first_step") is not None:
        kw["first_step"] = as_float("options['first_step']", options["first_step"], positive=True)
    for name in ("safety", "dfactor"):
        if name in options:
            kw[name] = as_float(f"options['{name}']", options[name], positive=True, maximum=1.0)
    if "ifactor" in options:
        kw["ifactor"] = as_float("options['ifactor']", options["ifactor"], minimum=1.0)
    if "max_num_steps" in options:
        kw["max_num_steps"] = as_int("options['max_num_steps']", options["max_num_steps"])
    if "dtype" in options:
        dt = options["dtype"]
        if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
            raise TypeError(f"options['dtype'] must be a floating torch.dtype; got {describe(dt)}")
        kw["dtype"] = dt
    kw.update(step_bounds(options))
    sign = -1.0 if reversed_ else 1.0
    kw["step_t"] = time_points("step_t", options.get("step_t"), sign)
    kw["jump_t"] = time_points("jump_t", options.get("jump_t"), sign)
    if set(kw["step_t"]) & set(kw["jump_t"]):
        raise ValueError("options['step_t'] and options['jump_t'] must not share any time")
    if options.get("norm") is not None:
        if not callable(options["norm"]):
            raise TypeError(f"options['norm'] must be callable (tensor -> scalar); got {describe(options['norm'])}")
        kw["norm"] = options["norm"]
    return AdaptiveOptions(**kw)


def fixed_kwargs(options: Dict[str, Any]) -> Dict[str, Any]:
    """The fixed-grid options as keyword arguments (for option classes that extend them)."""
    kw: Dict[str, Any] = {}
    if options.get("step_size") is not None:
        kw["step_size"] = as_float("options['step_size']", options["step_size"], positive=True)
    if options.get("grid_constructor") is not None:
        if "step_size" in kw:
            raise ValueError("options['step_size'] and options['grid_constructor'] are mutually exclusive")
        if not callable(options["grid_constructor"]):
            raise TypeError("options['grid_constructor'] must be callable (func, y0, t) -> grid tensor")
        kw["grid_constructor"] = options["grid_constructor"]
    if "perturb" in options:
        if not isinstance(options["perturb"], bool):
            raise TypeError(f"options['perturb'] must be True or False; got {describe(options['perturb'])}")
        kw["perturb"] = options["perturb"]
    if "interp" in options:
        if options["interp"] not in ("linear", "cubic"):
            raise ValueError(f"options['interp'] must be 'linear' or 'cubic'; got {describe(options['interp'])}")
        kw["interp"] = options["interp"]
    return kw


def parse_fixed(options: Dict[str, Any], reversed_: bool, method: str) -> FixedOptions:
    check_names(options, FIXED_OPTIONS, method)
    return FixedOptions(**fixed_kwargs(options))
