"""Rosenbrock23: a linearly implicit (Rosenbrock–W) method — no nonlinear solve at all.

Shampine & Reichelt, "The MATLAB ODE Suite", SIAM J. Sci. Comput. 18 (1997) — MATLAB's
``ode23s`` and OrdinaryDiffEq.jl's ``Rosenbrock23``. Each step factorises ``W = I - h d J``
once (``d = 1/(2+√2)``) and solves three linear systems with it: two stage increments
``k1``, ``k2`` give the second-order solution ``y1 = y0 + h k2``; a third, using ``f(t1, y1)``
(which is also the next step's first evaluation), gives the embedded third-order error
estimate ``h/6 (k1 - 2 k2 + k3)``. L-stable, with a free second-order continuous extension.
Two function evaluations and one Jacobian per step: the method of choice at loose tolerances,
and for batches of small stiff systems (one batched LU per step).

For a field that depends on ``t`` the time derivative ``∂f/∂t`` enters the stages; it is
formed by a forward difference (one extra evaluation per step) only when autograd shows the
field to depend on ``t`` at all.
"""
from __future__ import annotations

import math
from typing import Callable, List

import torch

from .implicit import NewtonCounters, NewtonMatrices

_D = 1 / (2 + math.sqrt(2))
_E32 = 6 + math.sqrt(2)


def _f(x) -> float:
    """A step's time or size as a float (a graph-carrying tensor when t has gradients)."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class Rosenbrock23Stepper:
    """The :class:`~neuralode.stepping.Stepper` of Rosenbrock23.

    ``ks = [f0, k1, k2, k3, f1]``; the dense output is ``y0 + h(w1(θ) k1 + w2(θ) k2)`` with
    ``w1 = θ(1-θ)/(1-2d)``, ``w2 = θ(θ-2d)/(1-2d)``.
    """

    order = 3  # the error estimate is O(h³)
    fsal = True
    needs_f1 = False
    replayable = True
    rows = (
        (0.0, 0.0),
        (1 / (1 - 2 * _D), -1 / (1 - 2 * _D)),
        (-2 * _D / (1 - 2 * _D), 1 / (1 - 2 * _D)),
        (0.0, 0.0),
        (0.0, 0.0),
    )

    def __init__(self, func: Callable, jacobian: str = "auto"):
        self.func = func
        self.counters = NewtonCounters()
        self.matrices = NewtonMatrices(func, jacobian, self.counters)
        # A field may declare its time dependence (the interpolating adjoint's does); else probed.
        self.time_dependent = getattr(func, "time_dependent", None)

    def _dfdt(self, evaluate, t0, y0, f0, h):
        """``∂f/∂t`` at ``(t0, y0)`` by a forward difference, or ``None`` for autonomous fields."""
        if self.time_dependent is None:
            with torch.enable_grad():
                tt = torch.scalar_tensor(_f(t0), dtype=y0.dtype, device=y0.device, requires_grad=True)
                out = self.func(tt, y0.detach())
                self.time_dependent = out.requires_grad and torch.autograd.grad(
                    out.sum(), tt, allow_unused=True)[0] is not None
        if not self.time_dependent:
            return None, 0
        delta = math.sqrt(2.2e-16) * max(abs(_f(t0)), abs(_f(h)), 1e-8)
        return (evaluate(t0 + delta, y0, 0) - f0) / delta, 1

    def step(self, evaluate, t0, h, t1, y0: torch.Tensor, f0: torch.Tensor, perturb_end: int = 0):
        if getattr(self.func, "newton_linearise", None) is not None and not getattr(self.func, "exact_linearisation",
                                                                                     False):
            raise ValueError("rosenbrock23 needs the exact Jacobian of the field, which the back-solved adjoint "
                             "system only approximates; use the interpolating adjoint (Adjoint(interpolate=True), "
                             "the default for implicit methods) or a Newton-based backward method: "
                             "odeint_adjoint(..., adjoint_method='kvaerno5') or gradient=Adjoint(method='kvaerno5')")
        hf, t0f = _f(h), _f(t0)
        if isinstance(h, torch.Tensor):
            h = h.to(y0.dtype)
        grad = torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad)
        # W depends on J: for exact direct gradients J itself must be differentiable.
        self.matrices.ensure(t0f, y0, force=True, create_graph=grad)
        if self.matrices.krylov and grad:
            raise ValueError("options['jacobian']='krylov' solves its linear systems without a graph, so "
                             "gradient='direct' cannot differentiate through it; use gradient='adjoint'")
        W = self.matrices.factor(torch.tensor([[hf * _D]], dtype=torch.float64))
        shape = y0.shape

        def solve(rhs: torch.Tensor) -> torch.Tensor:
            return W.solve(rhs.reshape(1, -1)).reshape(shape)

        T, nfe = self._dfdt(evaluate, t0, y0, f0, hf)
        hdT = None if T is None else T * (h * _D)
        k1 = solve(f0 if hdT is None else f0 + hdT)
        f_mid = evaluate(t0 + 0.5 * h, y0 + (0.5 * h) * k1, 0)
        k2 = solve(f_mid - k1) + k1
        y1 = y0 + h * k2
        f1 = evaluate(t1, y1, perturb_end)
        rhs = f1 - _E32 * (k2 - f_mid) - 2 * (k1 - f0)
        k3 = solve(rhs if hdT is None else rhs + hdT)
        ks: List[torch.Tensor] = [f0, k1, k2, k3, f1]
        return y1, ks, nfe + 2

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        return ((ks[1] - 2 * ks[2] + ks[3]) * (h / 6)).detach().clone()


__all__ = ["Rosenbrock23Stepper"]
