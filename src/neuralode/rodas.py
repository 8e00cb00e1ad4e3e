"""Rodas5: a stiffly accurate, L-stable Rosenbrock method of order 5(4) with a 4th-order dense output.

Di Marzo, "RODAS5(4) – Méthodes de Rosenbrock d'ordre 5(4) adaptées aux problèmes
différentiels-algébriques" (Université de Genève, 1993); the coefficients and the dense output
of OrdinaryDiffEq.jl's ``Rodas5``. Like every Rosenbrock method it solves no nonlinear system:
each step takes one Jacobian ``J = ∂f/∂y`` at its start, factorises ``W = I - hγJ`` once and
solves one linear system per stage with it. That makes it the natural method for batches of
small stiff systems (one batched Jacobian and one batched LU per step, no Newton iterations
whose convergence the slowest sample would decide) and for tight tolerances.

The method is stored in Hairer & Wanner's transformed form (Solving ODEs II, IV.7, (7.25)):
with stage increments ``u_i``, stage values ``U_i = y0 + Σ_j a_ij u_j`` and times
``t0 + c_i h``,

    (I/(hγ) - J) u_i = f(t0 + c_i h, U_i) + Σ_{j<i} (C_ij / h) u_j + h d_i ∂f/∂t,

so ``u_i = W⁻¹ (hγ f_i + γ Σ_j C_ij u_j + h²γ d_i ∂f/∂t)``. The last three stages sit at ``t1``
and each adds its increment to the running solution (the method is stiffly accurate): the new
solution is ``y1 = U_8 + u_8`` and the last increment ``u_8`` is the difference to the embedded
4th-order solution, the error estimate. Eight function evaluations per step (the first is the
loop's ``f0``), plus one for ``∂f/∂t`` when the field depends on ``t``.

Dense output (OrdinaryDiffEq.jl's): ``y(t0 + θh) = (1-θ) y0 + θ (y1 + (1-θ)(K1 + θ(K2 + θ K3)))``
with ``K_r = Σ_j H_rj u_j``.

The Jacobian must be the field's exact one (a Rosenbrock method with another matrix loses its
order), so adjoint systems, whose Newton matrices leave out the quadrature couplings, are refused
with a pointer to a Newton-based backward method (``adjoint_method='kvaerno5'``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from .implicit import NewtonCounters, NewtonMatrices

Matrix = Tuple[Tuple[float, ...], ...]


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in transformed form (see the module doc).

    Attributes:
        name: the method's name.
        order: the order of the propagated solution.
        gamma: the diagonal ``γ`` of the method (one ``W`` per step).
        c: stage times as fractions of the step (``s`` entries).
        a: ``a[i]`` has ``i`` entries: the stage value ``U_i = y0 + Σ_j a[i][j] u_j``.
        C: ``C[i]`` has ``i`` entries: the coupling ``Σ_j C[i][j] u_j / h`` in stage ``i``.
        d: the ``∂f/∂t`` weight of each stage (``γ_i = Σ_j γ_ij``).
        b: the solution ``y1 = y0 + Σ_j b_j u_j``.
        b_err: the error estimate ``Σ_j b_err_j u_j`` (propagated minus embedded).
        dense: ``H`` rows of the dense output (see the module doc).
        reference: where the coefficients come from.
    """

    name: str
    order: int
    gamma: float
    c: Tuple[float, ...]
    a: Matrix
    C: Matrix
    d: Tuple[float, ...]
    b: Tuple[float, ...]
    b_err: Tuple[float, ...]
    dense: Matrix
    reference: str = ""

    def __post_init__(self) -> None:
        s = len(self.c)
        for label, rows in (("a", self.a), ("C", self.C)):
            if len(rows) != s or any(len(row) != i for i, row in enumerate(rows)):
                raise ValueError(f"tableau {self.name}: {label} must be strictly lower triangular with {s} rows "
                                 f"(row i has i entries)")
        for label, vec in (("d", self.d), ("b", self.b), ("b_err", self.b_err)):
            if len(vec) != s:
                raise ValueError(f"tableau {self.name}: {label} must have {s} entries")
        if any(len(row) != s for row in self.dense):
            raise ValueError(f"tableau {self.name}: every dense-output row must have {s} entries")

    @property
    def rows(self) -> Tuple[Tuple[float, ...], ...]:
        """The dense output as the loop's stage weights (see :class:`neuralode.stepping.Stepper`)
        over ``ks = [f0, u_1/h, …, u_s/h]``: ``y(θ) - y0 = θ Σ b_j u_j + θ K1 + θ²(K2 - K1) +
        θ³(K3 - K2) - θ⁴ K3``."""
        H = self.dense
        if len(H) != 3:
            raise ValueError(f"tableau {self.name}: the dense output needs three H rows")
        stage_rows = tuple((self.b[j] + H[0][j], H[1][j] - H[0][j], H[2][j] - H[1][j], -H[2][j])
                           for j in range(len(self.c)))
        return ((0.0, 0.0, 0.0, 0.0),) + stage_rows


_A6 = (-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062)

RODAS5 = RosenbrockTableau(
    name="rodas5",
    order=5,
    gamma=0.19,
    c=(0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580, 1.0, 1.0, 1.0),
    a=((),
       (2.0,),
       (3.040894194418781, 1.041747909077569),
       (2.576417536461461, 1.622083060776640, -0.9089668560264532),
       (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
       _A6,
       _A6 + (1.0,),
       _A6 + (1.0, 1.0)),
    C=((),
       (-10.31323885133993,),
       (-21.04823117650003, -7.234992135176716),
       (32.22751541853323, -4.943732386540191, 19.44922031041879),
       (-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146),
       (-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147),
       (34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365, 1.408950972071624,
        -6.551835421242162),
       (42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503, -31.58359187223370,
        -6.685968952921985, -5.810979938412932)),
    d=(0.19, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343, -0.377417564392089818,
       0.0, 0.0, 0.0),
    b=_A6 + (1.0, 1.0, 1.0),
    b_err=(0.0,) * 7 + (1.0,),
    dense=((27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979, -4.699151156849391,
            -1.6008677469422725, -1.5306074446748028, -1.3929872940716344),
           (44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154, -181.91095152160645,
            3.4116351403665033, 2.5793540257308067, 2.2435122582734066),
           (-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676, 183.21182741427398,
            -7.480257918273637, -5.792426076169686, -5.32503859794143)),
    reference="Di Marzo (1993), RODAS5(4); coefficients and dense output as in OrdinaryDiffEq.jl's Rodas5: "
              "a 5(4) Rosenbrock method, stiffly accurate and L-stable.",
)


class RosenbrockStepper:
    """The :class:`~neuralode.stepping.Stepper` of a :class:`RosenbrockTableau`.

    ``ks = [f0, u_1/h, …, u_s/h]`` (stage increments scaled to derivatives, so that the loop's
    dense output ``y0 + h Σ w_i(θ) k_i`` applies).
    """

    fsal = False
    needs_f1 = False
    replayable = True

    def __init__(self, tableau: RosenbrockTableau, func: Callable, jacobian: str = "auto"):
        self.tableau = tableau
        self.order = tableau.order  # the estimate u_s is the embedded 4th-order solution's local error: O(h^5)
        self.rows = tableau.rows
        self.func = func
        self.counters = NewtonCounters()
        self.matrices = NewtonMatrices(func, jacobian, self.counters)
        self.time_dependent: Optional[bool] = None

    def _dfdt(self, evaluate, t0, y0: torch.Tensor, f0: torch.Tensor, h: float):
        """``∂f/∂t`` at ``(t0, y0)`` by a forward difference, or ``None`` for a field that autograd
        shows not to depend on ``t`` (checked once per solve)."""
        if self.time_dependent is None:
            with torch.enable_grad():
                tt = torch.scalar_tensor(float(t0), dtype=y0.dtype, device=y0.device, requires_grad=True)
                out = self.func(tt, y0.detach())
                self.time_dependent = bool(out.requires_grad) and torch.autograd.grad(
                    out.sum(), tt, allow_unused=True)[0] is not None
        if not self.time_dependent:
            return None, 0
        delta = math.sqrt(torch.finfo(y0.dtype).eps) * max(abs(float(t0)), abs(h), 1e-8)
        return (evaluate(t0 + delta, y0, 0) - f0) / delta, 1

    def step(self, evaluate, t0, h, t1, y0: torch.Tensor, f0: torch.Tensor, perturb_end: int = 0):
        if getattr(self.func, "newton_linearise", None) is not None:
            raise ValueError(f"{self.tableau.name} needs the exact Jacobian of the system it solves, and an adjoint "
                             "system's Newton matrix leaves out couplings (the quadrature channels'), which costs a "
                             "Rosenbrock method its order; run the adjoint's backward solve with a Newton-based method: "
                             "odeint_adjoint(..., adjoint_method='kvaerno5') or gradient=Adjoint(method='kvaerno5')")
        tab = self.tableau
        hf = float(h)
        if isinstance(h, torch.Tensor):
            h = h.to(y0.dtype)
        if hf == 0.0:
            return y0, [f0] * (len(tab.c) + 1), 0
        grad = torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad)
        # W depends on J: for exact direct gradients J itself must be differentiable.
        self.matrices.ensure(float(t0), y0, force=True, create_graph=grad)
        if self.matrices.krylov and grad:
            raise ValueError("options['jacobian']='krylov' solves its linear systems without a graph, so "
                             "gradient='direct' cannot differentiate through it; use gradient='adjoint'")
        gamma = tab.gamma
        W = self.matrices.factor(torch.tensor([[hf * gamma]], dtype=torch.float64))
        shape = y0.shape

        def solve(rhs: torch.Tensor) -> torch.Tensor:
            return W.solve(rhs.reshape(1, -1)).reshape(shape)

        T, nfe = self._dfdt(evaluate, t0, y0, f0, hf)
        us: List[torch.Tensor] = []
        for i, ci in enumerate(tab.c):
            if i == 0:
                fi = f0
            else:
                Ui = y0
                for w, u in zip(tab.a[i], us):
                    if w != 0.0:
                        Ui = Ui + w * u
                ti = t1 if ci == 1.0 else t0 + ci * h
                fi = evaluate(ti, Ui, perturb_end if ci == 1.0 else 0)
                nfe += 1
            rhs = fi * (h * gamma)
            for w, u in zip(tab.C[i], us):
                if w != 0.0:
                    rhs = rhs + (gamma * w) * u
            if T is not None and tab.d[i] != 0.0:
                rhs = rhs + T * (h * h * gamma * tab.d[i])
            us.append(solve(rhs))
        y1 = y0
        for w, u in zip(tab.b, us):
            if w != 0.0:
                y1 = y1 + w * u
        self._error = sum((w * u for w, u in zip(tab.b_err, us) if w != 0.0), torch.zeros_like(y0)).detach()
        ks: List[torch.Tensor] = [f0] + [u / h for u in us]
        return y1, ks, nfe

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        """``Σ b_err_j u_j`` of the last step (``u_8`` for Rodas5)."""
        return self._error.clone()


__all__ = ["RosenbrockTableau", "RosenbrockStepper", "RODAS5"]
