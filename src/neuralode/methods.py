"""The registry of methods: every name ``method=`` accepts, and what it is.

Explicit Runge–Kutta methods are data (:mod:`neuralode.tableaus`); each tableau becomes a
:class:`~neuralode.stepping.Method` whose stepper is :class:`RKStepper`. Other families (the
Adams methods, implicit methods, the SciPy bridge) live in their own modules and are added with
:func:`register`. :func:`get_method` is what the rest of the package asks.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .interpolate import dense_rows, needs_end_derivative
from .options import ADAPTIVE_OPTIONS, FIXED_OPTIONS, parse_adaptive, parse_fixed
from .rk import Scalar, combine_row, plan_for, rk_step
from .stepping import Evaluate, Method
from .tableaus import DEFAULT_METHOD, METHODS as TABLEAUS, ButcherTableau

__all__ = ["RKStepper", "register", "get_method", "method_names", "REGISTRY", "DEFAULT_METHOD"]


class RKStepper:
    """The :class:`~neuralode.stepping.Stepper` of an explicit RK tableau (stateless)."""

    replayable = True

    def __init__(self, tableau: ButcherTableau, interp: str = "linear"):
        self.tableau = tableau
        self.plan = plan_for(tableau)
        self.fsal = tableau.fsal
        self.order = tableau.controller_order
        self.rows = dense_rows(tableau, interp)
        self.needs_f1 = needs_end_derivative(self.rows, tableau)
        self._nfe = tableau.n_stages - 1

    def step(self, evaluate: Evaluate, t0: Scalar, h: Scalar, t1: Scalar, y0: torch.Tensor, f0: torch.Tensor,
             perturb_end: int) -> Tuple[torch.Tensor, List[torch.Tensor], int]:
        y1, ks = rk_step(evaluate, self.tableau, t0, h, t1, y0, f0, perturb_end, self.plan)
        return y1, ks, self._nfe

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        return combine_row(None, ks, self.plan.error, h)


def rk_method(tableau: ButcherTableau, *, name: Optional[str] = None,
              stepper: Optional[Callable[[Any, str], Any]] = None, reference: Optional[str] = None) -> Method:
    """The :class:`Method` of an explicit RK tableau.

    ``stepper(problem, interp)`` builds its stepper (default :class:`RKStepper`); ``name`` and
    ``reference`` default to the tableau's (the compiled twins pass their own).
    """
    make = stepper if stepper is not None else (lambda problem, interp: RKStepper(tableau, interp))
    name = tableau.name if name is None else name
    reference = tableau.reference if reference is None else reference
    if tableau.adaptive:
        return Method(name, tableau.order, True, parse_adaptive, ADAPTIVE_OPTIONS,
                      make_stepper=lambda problem: make(problem, "linear"), tableau=tableau,
                      callbacks=("callback_step", "callback_accept_step", "callback_reject_step"),
                      reference=reference)
    return Method(name, tableau.order, False, parse_fixed, FIXED_OPTIONS,
                  make_stepper=lambda problem: make(problem, problem.options.interp), tableau=tableau,
                  reference=reference)


REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` under its name (replacing a method of the same name)."""
    if not isinstance(method, Method):
        raise TypeError(f"register() takes a neuralode.stepping.Method; got {type(method).__name__}")
    REGISTRY[method.name] = method
    return method


def get_method(name) -> Method:
    """The method called ``name`` (``None``: the default, dopri5), or a ValueError listing the valid ones."""
    name = DEFAULT_METHOD if name is None else name
    method = REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        fixed = [n for n, m in REGISTRY.items() if not m.adaptive]
        adaptive = [n for n, m in REGISTRY.items() if m.adaptive]
        raise ValueError(f"unknown method {name!r}; valid methods: fixed-step {fixed}, adaptive {adaptive}")
    return method


def method_names() -> Tuple[str, ...]:
    return tuple(REGISTRY)


for _tab in TABLEAUS.values():
    register(rk_method(_tab))

# Other families, each in its own module (imported here so that every name resolves).
from .adams import METHODS as _ADAMS  # noqa: E402
from .implicit_methods import implicit_methods  # noqa: E402
from .scipy_solver import SCIPY_SOLVER  # noqa: E402

for _method in (*_ADAMS, SCIPY_SOLVER, *implicit_methods()):
    register(_method)
