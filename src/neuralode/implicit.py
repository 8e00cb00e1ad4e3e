"""Implicit Runge–Kutta steps: diagonally implicit (SDIRK/ESDIRK) stage by stage, fully implicit
(Radau IIA, Gauss–Legendre) all stages at once.

A stage ``i`` of a diagonally implicit method solves ``Y_i = base_i + hγ_i f(t0 + c_i h, Y_i)``
with ``base_i = y0 + h Σ_{j<i} a_ij k_j``, starting from the tableau's predictor; its derivative
is then recovered as ``k_i = (Y_i - base_i)/(hγ_i)`` rather than re-evaluated, which keeps the
Newton error from being amplified by a stiff ``f`` (Hairer & Wanner, Solving ODEs II, IV.8).
A fully implicit method solves for all stage increments ``Z_i = Y_i - y0`` together
(``Z = (hA ⊗ I) F(Z)``) and recovers ``K = A⁻¹Z/h``.

The Newton matrices come from :class:`NewtonMatrices`, which keeps one Jacobian across steps
while Newton converges fast and refreshes it when it does not (see :meth:`ImplicitRKStepper.step`).
A step whose Newton iteration still fails reports an infinite error estimate, so the adaptive
loop rejects it and shrinks the step; a fixed-step solve returns a non-finite state that the
loop reports as the failure time (:data:`Status.NEWTON_FAILURE` once mapped by the method's
driver). Nothing here can hang: every iteration count is bounded.

Gradients: with ``gradient='direct'`` autograd follows the Newton iterates (the Jacobian is a
constant of the iteration), which gives the derivative of the implicit stage equations to the
Newton tolerance. The adjoint's backward solve runs the same method on the adjoint system.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .implicit_tableaus import ImplicitTableau
from .newton import JACOBIAN_MODES, KrylovOp, linearise, newton, resolve_mode
from .tableaus import hermite_dense

Scalar = "float | torch.Tensor"
NEWTON_KAPPA = 0.03  # stop when the predicted Newton error is below 3% of the tolerance (Hairer's fnewt)
FIRST_ETA_FLOOR = 0.5  # smallest carried-over θ/(1-θ) in the first iteration's convergence test
REFRESH_RATE = 1e-3  # refresh the Jacobian after a solve that contracted slower than this (RADAU5's THET)


@dataclass
class NewtonCounters:
    """Counts of the nonlinear solves of one solve (copied into :class:`neuralode.SolveStats`)."""

    newton_iterations: int = 0
    jacobian_evaluations: int = 0
    factorizations: int = 0
    newton_failures: int = 0
    failed_last: bool = False  # the last step attempt failed its Newton iteration


class NewtonMatrices:
    """The Jacobian of one solve's field and the factorised Newton matrices ``I - C ⊗ J``.

    The Jacobian is taken at a step's start ``(t0, y0)`` and reused for later steps until
    :meth:`stale` says otherwise; factorisations are cached per coefficient matrix ``C`` (step
    size) while the Jacobian stays.
    """

    def __init__(self, func: Callable, mode: str, counters: NewtonCounters, tolerance_scale=None):
        if mode not in JACOBIAN_MODES:
            raise ValueError(f"options['jacobian'] must be one of {list(JACOBIAN_MODES)}; got {mode!r}")
        self.func, self.mode, self.counters = func, mode, counters
        self.op: Any = None
        self.at: Optional[Tuple[float, torch.Tensor]] = None
        self.cache: Dict[Tuple[float, ...], object] = {}
        self.refresh_next = False

    def is_fresh(self, t0: float, y0: torch.Tensor) -> bool:
        return self.at is not None and self.at[0] == t0 and self.at[1] is y0

    def ensure(self, t0: float, y0: torch.Tensor, force: bool = False, create_graph: bool = False) -> None:
        """A Jacobian to work with at a step from ``(t0, y0)``: the kept one unless it is missing,
        marked for refresh, or ``force`` asks for a fresh one here."""
        if self.op is not None and not force and not self.refresh_next:
            return
        if self.is_fresh(t0, y0) and not create_graph:
            return
        if self.mode == "auto" and getattr(self.func, "newton_linearise", None) is None:
            self.mode = resolve_mode(self.func, t0, y0.detach(), "auto")
        self.op = linearise(self.func, t0, y0 if create_graph else y0.detach(), self.mode, create_graph)
        self.at = (t0, y0)
        self.cache.clear()
        self.refresh_next = False
        self.counters.jacobian_evaluations += 1

    @property
    def krylov(self) -> bool:
        return isinstance(self.op, KrylovOp)

    def factor(self, coef: torch.Tensor):
        key = tuple(coef.reshape(-1).tolist())
        f = self.cache.get(key)
        if f is None:
            if len(self.cache) >= 4:
                self.cache.clear()
            f = self.op.factor(coef)
            self.cache[key] = f
            self.counters.factorizations += 1
        return f


def _time(t0, c: float, h, t1):
    """The time of a stage at fraction ``c`` of the step (exactly ``t1`` when ``c == 1``)."""
    if c == 1.0:
        return t1
    if c == 0.0:
        return t0
    return t0 + c * h


class ImplicitRKStepper:
    """The :class:`~neuralode.stepping.Stepper` of an :class:`ImplicitTableau`.

    Args:
        tableau: the method.
        func: the problem's field (internal form), for its Jacobian.
        rtol, atol, norm: the tolerances and norm that scale the Newton convergence test.
        max_iters: Newton iterations allowed per stage solve.
        jacobian: the Jacobian form (:data:`neuralode.newton.JACOBIAN_MODES`).
        interp: ``'linear'`` or ``'cubic'`` dense output (fixed-step methods; adaptive ones use
            cubic Hermite).
    """

    replayable = True

    def __init__(self, tableau: ImplicitTableau, func: Callable, rtol, atol, norm, max_iters: int,
                 jacobian: str = "auto", interp: str = "cubic"):
        self.tableau = tableau
        self.order = tableau.controller_order
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self.max_iters = max_iters
        self.counters = NewtonCounters()
        self.matrices = NewtonMatrices(func, jacobian, self.counters)
        s = tableau.n_stages
        self.s = s
        # FSAL: the recovered last stage derivative (at t1, stage value y1) starts the next step.
        self.fsal = tableau.explicit_first and tableau.stiffly_accurate and tableau.c[-1] == 1.0
        if interp == "cubic":
            self.rows = hermite_dense(tableau.b, fsal=self.fsal)
        else:
            self.rows = tuple((w,) for w in tableau.b)
        self.needs_f1 = len(self.rows) > s
        self.eta = 1.0
        self.A = torch.tensor(tableau.a, dtype=torch.float64)
        if not tableau.diagonally_implicit:
            A_inv = torch.linalg.inv(self.A)
            self.A_inv = A_inv
            self.d = (torch.tensor(tableau.b, dtype=torch.float64) @ A_inv).tolist()
        self.error_weights = tableau.b_err
        self._failed = False
        self._last_start: Optional[Tuple[float, torch.Tensor]] = None

    # ------------------------------------------------------------------ helpers

    def _scale(self, y0: torch.Tensor) -> torch.Tensor:
        return y0.detach().abs().reshape(-1).mul(self.rtol).add(self.atol)

    def _norm(self, dz: torch.Tensor, scale: torch.Tensor) -> float:
        """The largest tolerance-scaled norm over the stage rows of ``dz`` (``[s, N]``)."""
        scaled = dz.detach() / scale
        if scaled.shape[0] == 1:
            return float(self.norm(scaled[0]))
        return max(float(self.norm(row)) for row in scaled)

    # ------------------------------------------------------------------ the step

    def step(self, evaluate, t0, h, t1, y0: torch.Tensor, f0: torch.Tensor, perturb_end: int = 0):
        """One step from ``(t0, y0)``; returns ``(y1, ks, nfe)`` (see the Stepper contract)."""
        t0f = float(t0.detach()) if isinstance(t0, torch.Tensor) else float(t0)
        hf = float(h.detach()) if isinstance(h, torch.Tensor) else float(h)
        if isinstance(h, torch.Tensor):
            h = h.to(y0.dtype)
        if hf == 0.0:
            return y0, [f0] * self.s, 0
        m = self.matrices
        # A retry from the same start means the last attempt was rejected: with an old Jacobian,
        # take a fresh one here (Hairer's RADAU5 heuristic).
        retry = self._last_start is not None and self._last_start[0] == t0f and self._last_start[1] is y0
        self._last_start = (t0f, y0)
        m.ensure(t0f, y0, force=retry)
        if m.krylov and torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad):
            raise ValueError("options['jacobian']='krylov' solves its linear systems without a graph, so "
                             "gradient='direct' cannot differentiate through it; use gradient='adjoint' "
                             "(or jacobian='dense'/'batched')")
        scale = self._scale(y0)
        nfe_total = 0
        for attempt in range(2):
            out, nfe, ok = self._attempt(evaluate, t0, h, t1, y0, f0, perturb_end, scale)
            nfe_total += nfe
            if ok:
                self._failed = False
                self.counters.failed_last = False
                return out[0], out[1], nfe_total
            if m.is_fresh(t0f, y0):
                break
            m.ensure(t0f, y0, force=True)  # a stale Jacobian may be why: retry once with a fresh one
        self.counters.newton_failures += 1
        self.counters.failed_last = True
        self._failed = True
        self.eta = 1.0
        m.refresh_next = True
        bad = torch.full_like(y0, math.nan) if not self.tableau.adaptive else y0
        return bad, [f0] * self.s, nfe_total

    def _attempt(self, evaluate, t0, h, t1, y0, f0, perturb_end, scale):
        if self.tableau.diagonally_implicit:
            return self._dirk(evaluate, t0, h, t1, y0, f0, perturb_end, scale)
        return self._firk(evaluate, t0, h, t1, y0, f0, perturb_end, scale)

    def _solve(self, residual, z0, coef, scale):
        factor = self.matrices.factor(coef)
        result = newton(residual, z0, factor, lambda dz: self._norm(dz, scale), NEWTON_KAPPA, self.max_iters,
                        max(self.eta, FIRST_ETA_FLOOR) ** 0.8)
        self.counters.newton_iterations += result.iterations
        if result.converged:
            self.eta = result.rate / (1 - result.rate) if result.rate > 0 else self.eta
            if result.rate > REFRESH_RATE or result.iterations > 4:
                self.matrices.refresh_next = True
        return result

    def _dirk(self, evaluate, t0, h, t1, y0, f0, perturb_end, scale):
        tab = self.tableau
        hf = float(h.detach()) if isinstance(h, torch.Tensor) else float(h)
        ks: List[torch.Tensor] = []
        nfe = 0
        shape = y0.shape
        y_stage = y0
        for i in range(self.s):
            row = tab.a[i]
            gamma = row[i]
            if gamma == 0.0:  # an explicit stage (the first stage of an ESDIRK)
                if i == 0 and tab.c[0] == 0.0:
                    ks.append(f0)
                    continue
                base = _combine(y0, ks, row[:i], h)
                ks.append(evaluate(_time(t0, tab.c[i], h, t1), base, perturb_end if tab.c[i] == 1.0 else 0))
                nfe += 1
                y_stage = base
                continue
            base = _combine(y0, ks, row[:i], h)
            if tab.predictor is not None and i > 0:
                guess = _combine(None, ks, tab.predictor[i], 1.0)
            else:
                guess = ks[-1] if ks else f0
            ti = _time(t0, tab.c[i], h, t1)
            pert = perturb_end if tab.c[i] == 1.0 else 0
            hg = h * gamma
            counter = [0]

            def residual(z, base=base, ti=ti, pert=pert, hg=hg):
                counter[0] += 1
                yi = z.reshape(shape)
                return (yi - base - hg * evaluate(ti, yi, pert)).reshape(1, -1)

            z0 = (base + hg * guess).reshape(1, -1)
            coef = torch.tensor([[hf * gamma]], dtype=torch.float64)
            result = self._solve(residual, z0, coef, scale)
            nfe += counter[0]
            if not result.converged:
                return None, nfe, False
            y_stage = result.z.reshape(shape)
            ks.append((y_stage - base) / hg)
        if tab.stiffly_accurate:
            y1 = y_stage
        else:
            y1 = _combine(y0, ks, tab.b, h)
        return (y1, ks), nfe, True

    def _firk(self, evaluate, t0, h, t1, y0, f0, perturb_end, scale):
        tab = self.tableau
        hf = float(h.detach()) if isinstance(h, torch.Tensor) else float(h)
        s = self.s
        shape = y0.shape
        dtype = y0.dtype
        A = self.A.to(dtype=dtype, device=y0.device)
        times = [_time(t0, c, h, t1) for c in tab.c]
        perts = [perturb_end if c == 1.0 else 0 for c in tab.c]
        y0f = y0.reshape(1, -1)
        counter = [0]

        def residual(Z):
            F = torch.stack([evaluate(times[i], (y0f[0] + Z[i]).reshape(shape), perts[i]).reshape(-1)
                             for i in range(s)])
            counter[0] += s
            return Z - (A @ F) * h

        c = torch.tensor(tab.c, dtype=dtype, device=y0.device)
        Z0 = (c[:, None] * f0.reshape(1, -1)) * h
        result = self._solve(residual, Z0, self.A * hf, scale)
        if not result.converged:
            return None, counter[0], False
        Z = result.z
        K = (self.A_inv.to(dtype=dtype, device=y0.device) @ Z) / h
        ks = [K[i].reshape(shape) for i in range(s)]
        if tab.stiffly_accurate:
            y1 = (y0f[0] + Z[-1]).reshape(shape)
        else:
            y1 = _combine(y0, ks, tab.b, h)
        return (y1, ks), counter[0], True

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        """``h Σ b_err_i k_i``; infinite after a failed Newton iteration (the loop then shrinks ``h``)."""
        if self._failed:
            return torch.full_like(ks[0], math.inf)
        return _combine(None, ks, self.error_weights, h).detach().clone()


def _combine(base: Optional[torch.Tensor], ks: List[torch.Tensor], weights, h) -> torch.Tensor:
    """``base + h Σ_j weights[j] ks[j]`` over the non-zero weights (``base=None``: zero)."""
    acc = None
    for w, k in zip(weights, ks):
        if w != 0:
            term = k * w
            acc = term if acc is None else acc + term
    if acc is None:
        return torch.zeros_like(ks[0]) if base is None else base
    acc = acc * h
    return acc if base is None else base + acc


__all__ = ["ImplicitRKStepper", "NewtonMatrices", "NewtonCounters"]
