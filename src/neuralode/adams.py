"""torchdiffeq's fixed-grid Adams methods: ``explicit_adams``, ``implicit_adams``, ``fixed_adams``.

Variable-order Adams–Bashforth (explicit) and Adams–Bashforth–Moulton predictor–corrector
(implicit; ``fixed_adams`` is torchdiffeq's alias of it) on the fixed grid, as torchdiffeq 0.2.5
implements them (``torchdiffeq/_impl/fixed_adams.py``), step for step:

* every step evaluates ``f0 = f(t0, y0)`` and pushes it onto a history of at most
  ``max_order - 1`` derivatives (newest first);
* the order is ``k = min(len(history), max_order - 1)``; while ``k < 3`` the step is an ``rk4``
  step (Kutta's 3/8 rule), so ``max_order < 4`` is ``rk4`` throughout (with a warning, as
  torchdiffeq gives);
* otherwise the predictor is the ``k``-step Adams–Bashforth formula (order ``k``); the implicit
  method then iterates the ``k+1``-coefficient Adams–Moulton corrector (order ``k+1``) up to
  ``max_iters`` times, until successive increments agree within ``rtol``/``atol`` in the max
  norm (relative to the increments, torchdiffeq's test). If it does not converge it warns and
  drops the oldest derivative from the history (lowering the next step's order), as torchdiffeq.
  The corrected derivative at ``t1`` is not kept: the next step evaluates ``f(t1, y1)`` afresh.

So with ``max_order=4`` the explicit method is third order (AB3) and the implicit one fourth
order (AB3 predictor, AM4 corrector); the default ``max_order=12`` ramps up to order 11/12.
Dense output between grid points is linear, or cubic Hermite with ``interp='cubic'``.

The coefficients are the integrals of the Lagrange basis polynomials over the step, computed
exactly with fractions (equal, as doubles, to torchdiffeq's tables of every order used).
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Tuple

import torch

from .options import FIXED_OPTIONS, as_int, check_names, fixed_kwargs
from .rk import plan_for, rk_step
from .stepping import Method
from .tableaus import RK4, hermite_dense

MAX_ORDER = 12  # torchdiffeq's _MAX_ORDER
MIN_ORDER = 4  # below it, torchdiffeq's Adams methods reduce to rk4
ADAMS_OPTIONS = FIXED_OPTIONS + ("max_iters", "max_order")


def _lagrange_integrals(nodes: List[Fraction]) -> Tuple[float, ...]:
    """``∫_0^1 L_j(s) ds`` for the Lagrange basis ``L_j`` on ``nodes`` (in units of the step)."""
    out = []
    for j, xj in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients, lowest power first
        for i, xi in enumerate(nodes):
            if i == j:
                continue
            scale = 1 / (xj - xi)
            shifted = [Fraction(0)] + poly  # s * poly
            poly = [(a - xi * b) * scale for a, b in zip(shifted, poly + [Fraction(0)])]
        out.append(float(sum(c / (p + 1) for p, c in enumerate(poly))))
    return tuple(out)


# BASHFORTH[k]: the k-step Adams–Bashforth weights of f_n, f_{n-1}, ... (order k).
BASHFORTH = [()] + [_lagrange_integrals([Fraction(-i) for i in range(k)]) for k in range(1, MAX_ORDER + 1)]
# MOULTON[m]: the m-coefficient Adams–Moulton weights of f_{n+1}, f_n, f_{n-1}, ... (order m).
MOULTON = [()] + [_lagrange_integrals([Fraction(1)] + [Fraction(-i) for i in range(m - 1)])
                  for m in range(1, MAX_ORDER + 1)]


@dataclass(frozen=True)
class AdamsOptions:
    """torchdiffeq's Adams options: the fixed-grid ones plus ``max_iters`` and ``max_order``."""

    step_size: Any = None
    grid_constructor: Any = None
    perturb: bool = False
    interp: str = "linear"
    max_iters: int = 4
    max_order: int = MAX_ORDER


def parse_adams(options: Dict[str, Any], reversed_: bool, method: str) -> AdamsOptions:
    check_names(options, ADAMS_OPTIONS, method)
    kw = fixed_kwargs(options)
    if "max_iters" in options:
        kw["max_iters"] = as_int("options['max_iters']", options["max_iters"], minimum=1)
    if "max_order" in options:
        kw["max_order"] = as_int("options['max_order']", options["max_order"], minimum=1, maximum=MAX_ORDER)
        if kw["max_order"] < MIN_ORDER:
            warnings.warn(f"max_order is below {MIN_ORDER}, so the solver reduces to `rk4`.", stacklevel=5)
    return AdamsOptions(**kw)


class AdamsStepper:
    """One Adams step (see the module docstring); keeps the derivative history between steps."""

    fsal = False
    needs_f1 = False
    replayable = False  # a step depends on the derivatives of earlier steps

    def __init__(self, implicit: bool, options: AdamsOptions, rtol, atol):
        self.implicit = implicit
        self.max_iters = options.max_iters
        self.max_order = options.max_order
        self.rtol, self.atol = rtol, atol
        self.history: collections.deque = collections.deque(maxlen=max(self.max_order - 1, 1))
        self.plan = plan_for(RK4)
        # ks = [f0, (y1 - y0)/h]: linear interpolation, or cubic Hermite with f(t1, y1) added.
        if options.interp == "cubic":
            self.rows = hermite_dense((0.0, 1.0), fsal=False)
            self.needs_f1 = True
        else:
            self.rows = ((0.0,), (1.0,))

    def _converged(self, dy_old: torch.Tensor, dy: torch.Tensor) -> bool:
        with torch.no_grad():
            tol = torch.maximum(dy_old.abs(), dy.abs()) * self.rtol + self.atol
            return bool(((dy_old - dy).abs() / tol).max() < 1)

    def step(self, evaluate, t0, h, t1, y0, f0, perturb_end):
        history = self.history
        if self.max_order > 1:
            history.appendleft(f0)
        order = min(len(history), self.max_order - 1)
        if order < MIN_ORDER - 1:
            y1, _ = rk_step(evaluate, RK4, t0, h, t1, y0, f0, perturb_end, self.plan)
            return y1, [f0, (y1 - y0) / h], RK4.n_stages - 1
        dy = _weighted_sum(BASHFORTH[order], history, h)
        nfe = 0
        if self.implicit:
            moulton = MOULTON[order + 1]
            delta = _weighted_sum(moulton[1:], history, h)
            converged = False
            for _ in range(self.max_iters):
                dy_old = dy
                f = evaluate(t1, y0 + dy, perturb_end)
                nfe += 1
                dy = f * (h * moulton[0]) + delta
                converged = self._converged(dy_old, dy)
                if converged:
                    break
            if not converged:
                warnings.warn("Functional iteration did not converge. Solution may be incorrect.", stacklevel=2)
                history.pop()
        return y0 + dy, [f0, dy / h], nfe


def _weighted_sum(weights, fs, h):
    """``h Σ_j weights[j] fs[j]`` (the weights scaled by the step first, as torchdiffeq)."""
    acc = None
    for w, f in zip(weights, fs):
        term = f * (h * w)
        acc = term if acc is None else acc + term
    return acc


def _adams_method(name: str, implicit: bool, reference: str) -> Method:
    return Method(name, 4, False, parse_adams, ADAMS_OPTIONS,
                  make_stepper=lambda problem: AdamsStepper(implicit, problem.options, problem.rtol, problem.atol),
                  reference=reference)


EXPLICIT_ADAMS = _adams_method("explicit_adams", False, "torchdiffeq's AdamsBashforth (variable-order Adams–Bashforth, "
                                                         "rk4 start).")
IMPLICIT_ADAMS = _adams_method("implicit_adams", True, "torchdiffeq's AdamsBashforthMoulton (Adams–Bashforth predictor, "
                                                        "iterated Adams–Moulton corrector, rk4 start).")
FIXED_ADAMS = _adams_method("fixed_adams", True, "torchdiffeq's alias of implicit_adams.")
METHODS = (EXPLICIT_ADAMS, IMPLICIT_ADAMS, FIXED_ADAMS)
