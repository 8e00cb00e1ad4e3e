"""The implicit methods as :class:`~neuralode.stepping.Method` entries of the registry.

Fixed-step: torchdiffeq's implicit family (``implicit_euler``, ``implicit_midpoint``,
``trapezoid``, ``radauIIA3``, ``radauIIA5``, ``gl4``, ``gl6``, ``sdirk2``, ``trbdf2``) with
torchdiffeq's options (``step_size``, ``grid_constructor``, ``perturb``, ``interp``,
``max_iters``). Adaptive: Kværnø's ESDIRK pairs ``kvaerno3`` and ``kvaerno5``, the
Rosenbrock–W method ``rosenbrock23`` and the Rosenbrock method ``rodas5``, with the explicit methods' adaptive options.

Options of every implicit method, beyond the family's:
    ``max_iters``: Newton iterations per stage solve (torchdiffeq's name; default 100 for the
        fixed-step family as in torchdiffeq, 10 for the adaptive methods, which shrink the step
        instead of iterating on). Ignored by ``rosenbrock23`` and ``rodas5``, which solve no nonlinear system.
    ``jacobian``: ``'auto'`` (default), ``'dense'``, ``'batched'`` or ``'krylov'`` (see
        :mod:`neuralode.newton`).

The Newton iteration stops at 3% of the tolerance ``atol + rtol·|y|``; the fixed-step methods
take ``rtol``/``atol`` from the solve (torchdiffeq's fixed-step implicit solvers also read
``atol``). Newton failure: the adaptive methods refresh the Jacobian, then shrink the step; a
failure at the smallest step (or on a fixed grid) ends the solve with
``Status.NEWTON_FAILURE`` at the time reached.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List

from .implicit import ImplicitRKStepper
from .implicit_tableaus import IMPLICIT_METHODS, ImplicitTableau
from .newton import JACOBIAN_MODES
from .options import (ADAPTIVE_OPTIONS, FIXED_OPTIONS, AdaptiveOptions, FixedOptions, as_int, check_names, describe,
                      fixed_kwargs, parse_adaptive)
from .rodas import RODAS5, RosenbrockStepper, RosenbrockTableau
from .rosenbrock import Rosenbrock23Stepper
from .solution import Status
from .stepping import Method

IMPLICIT_OPTIONS = ("max_iters", "jacobian")
CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


@dataclass(frozen=True)
class ImplicitAdaptiveOptions(AdaptiveOptions):
    """The adaptive options plus the nonlinear solve's (see the module doc)."""

    max_iters: int = 10
    jacobian: str = "auto"


@dataclass(frozen=True)
class ImplicitFixedOptions(FixedOptions):
    """The fixed-grid options plus the nonlinear solve's (see the module doc)."""

    max_iters: int = 100
    jacobian: str = "auto"


def _implicit_kwargs(options: Dict[str, Any]) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    if "max_iters" in options:
        kw["max_iters"] = as_int("options['max_iters']", options.pop("max_iters"), minimum=1)
    if "jacobian" in options:
        mode = options.pop("jacobian")
        if mode not in JACOBIAN_MODES:
            raise ValueError(f"options['jacobian'] must be one of {list(JACOBIAN_MODES)}; got {describe(mode)}")
        kw["jacobian"] = mode
    return kw


def parse_implicit_adaptive(options: Dict[str, Any], reversed_: bool, method: str) -> ImplicitAdaptiveOptions:
    check_names(options, ADAPTIVE_OPTIONS + IMPLICIT_OPTIONS, method)
    extra = _implicit_kwargs(options)
    base = parse_adaptive(options, reversed_, method)
    return ImplicitAdaptiveOptions(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **extra)


def parse_implicit_fixed(options: Dict[str, Any], reversed_: bool, method: str) -> ImplicitFixedOptions:
    check_names(options, FIXED_OPTIONS + IMPLICIT_OPTIONS, method)
    extra = _implicit_kwargs(options)
    options.pop("norm", None)  # accepted and ignored, as by the explicit fixed-step methods
    return ImplicitFixedOptions(**fixed_kwargs(options), **extra)


MAX_LANDED_OUTPUTS = 100


def _land_on_outputs(problem):
    """The adaptive implicit methods step onto the output times (up to :data:`MAX_LANDED_OUTPUTS`
    of them) instead of interpolating: their dense output is a cubic Hermite (second order for
    rosenbrock23), which over the huge steps of a stiff solve costs tolerance units (measured:
    up to 20 units on Robertson at rtol 1e-6, against 1.6 at the step ends)."""
    opts = problem.options
    inner = problem.t.detach()[1:-1].tolist()
    if not inner or len(inner) > MAX_LANDED_OUTPUTS:
        return problem
    jumps = set(opts.jump_t)
    step_t = tuple(sorted(set(opts.step_t) | {x for x in inner if x not in jumps}))
    return problem.replace(options=dataclasses.replace(opts, step_t=step_t))


def _drive(problem, observers, stepper):
    """Run the package's loop with ``stepper`` and add the nonlinear solve's counts to the stats."""
    from .integrate import _integrate_adaptive, _integrate_fixed  # the loop; imported at solve time

    if problem.method.adaptive:
        solution = _integrate_adaptive(_land_on_outputs(problem), stepper, observers)
    else:
        solution = _integrate_fixed(problem, stepper, observers)
    c = stepper.counters
    stats = solution.stats
    stats.n_newton_iters += c.newton_iterations
    stats.n_jacobians += c.jacobian_evaluations
    stats.n_factorizations += c.factorizations
    if not solution.success and c.failed_last and solution.status in (Status.NONFINITE, Status.STEP_UNDERFLOW):
        solution.status = Status.NEWTON_FAILURE
    return solution


def _rk_method(tableau: ImplicitTableau) -> Method:
    def make_stepper(problem):
        opts = problem.options
        interp = "cubic" if tableau.adaptive else opts.interp
        return ImplicitRKStepper(tableau, problem.func, problem.rtol, problem.atol, problem.norm, opts.max_iters,
                                 opts.jacobian, interp)

    def drive(problem, observers):
        return _drive(problem, observers, make_stepper(problem))

    if tableau.adaptive:
        return Method(tableau.name, tableau.order, True, parse_implicit_adaptive, ADAPTIVE_OPTIONS + IMPLICIT_OPTIONS,
                      make_stepper=make_stepper, integrate=drive, callbacks=CALLBACKS, reference=tableau.reference)
    return Method(tableau.name, tableau.order, False, parse_implicit_fixed, FIXED_OPTIONS + IMPLICIT_OPTIONS,
                  make_stepper=make_stepper, integrate=drive, reference=tableau.reference)


def _rosenbrock23() -> Method:
    def make_stepper(problem):
        return Rosenbrock23Stepper(problem.func, problem.options.jacobian)

    def drive(problem, observers):
        return _drive(problem, observers, make_stepper(problem))

    return Method("rosenbrock23", 2, True, parse_implicit_adaptive, ADAPTIVE_OPTIONS + IMPLICIT_OPTIONS,
                  make_stepper=make_stepper, integrate=drive, callbacks=CALLBACKS,
                  reference="Shampine & Reichelt (1997), MATLAB's ode23s: a 2(3) Rosenbrock–W method, L-stable.")


def _rosenbrock_method(tableau: RosenbrockTableau) -> Method:
    def make_stepper(problem):
        return RosenbrockStepper(tableau, problem.func, problem.options.jacobian)

    def drive(problem, observers):
        return _drive(problem, observers, make_stepper(problem))

    return Method(tableau.name, tableau.order, True, parse_implicit_adaptive, ADAPTIVE_OPTIONS + IMPLICIT_OPTIONS,
                  make_stepper=make_stepper, integrate=drive, callbacks=CALLBACKS, reference=tableau.reference)


def implicit_methods() -> List[Method]:
    """Every implicit method, for the registry."""
    return [_rk_method(tab) for tab in IMPLICIT_METHODS.values()] + [_rosenbrock23(), _rosenbrock_method(RODAS5)]


IMPLICIT_METHOD_NAMES = tuple(IMPLICIT_METHODS) + ("rosenbrock23", RODAS5.name)

__all__ = ["implicit_methods", "IMPLICIT_METHOD_NAMES", "ImplicitAdaptiveOptions", "ImplicitFixedOptions"]
