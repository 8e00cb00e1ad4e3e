"""Implicit Runge–Kutta methods as data: a full ``A`` matrix per method, validated on creation.

An :class:`ImplicitTableau` is the implicit counterpart of :class:`neuralode.tableaus.ButcherTableau`:
``a`` is the full ``s × s`` stage matrix (``a[i][j]`` may be non-zero for ``j >= i``). The
tableau checks its own consistency — row sums equal ``c``, weights sum to one, error weights sum
to zero, the quadrature conditions ``Σ b_i c_i^(k-1) = 1/k`` up to the declared order — and
works out its structure: diagonally implicit (each stage solves only for itself), with an
explicit first stage (ESDIRK), stiffly accurate (the last stage is the new solution), and the
value of its stability function at infinity (``|R(∞)| = 0`` is L-stability).

The step that runs these lives in :mod:`neuralode.implicit`; the nonlinear solve in
:mod:`neuralode.newton`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from .tableaus import TableauShape

_TOL = 1e-10

Matrix = Tuple[Tuple[float, ...], ...]


@dataclass(frozen=True)
class ImplicitTableau(TableauShape):
    """An implicit Runge–Kutta method.

    Attributes:
        name: the method's name (``method=`` in :func:`neuralode.odeint`).
        order: the order of the propagated solution.
        c: stage times as fractions of the step.
        a: the full ``s × s`` stage matrix.
        b: the solution weights.
        b_err: error weights (propagated minus embedded solution); ``None`` for fixed-step methods.
        error_order: the power of ``h`` of the local error estimate (the step-size controller's
            exponent base); defaults to ``order``.
        predictor: for diagonally implicit methods, row ``i`` (``i`` entries) gives the initial
            Newton guess of stage ``i``'s derivative as ``Σ_j predictor[i][j] k_j``; ``None``
            means "the previous stage's derivative".
        reference: where the coefficients come from.
    """

    name: str
    order: int
    c: Tuple[float, ...]
    a: Matrix
    b: Tuple[float, ...]
    b_err: Optional[Tuple[float, ...]] = None
    error_order: Optional[int] = None
    predictor: Optional[Matrix] = None
    reference: str = ""
    diagonally_implicit: bool = field(init=False)
    explicit_first: bool = field(init=False)
    stiffly_accurate: bool = field(init=False)
    r_infinity: float = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or any(len(row) != s for row in self.a):
            raise ValueError(f"tableau {self.name}: a must be {s}×{s} and b must have {s} entries")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"tableau {self.name}: row {i} of a sums to {sum(row)}, not c[{i}]={self.c[i]}")
        if abs(sum(self.b) - 1) > _TOL:
            raise ValueError(f"tableau {self.name}: b sums to {sum(self.b)}, not 1")
        for k in range(1, self.order + 1):
            quad = sum(bi * ci ** (k - 1) for bi, ci in zip(self.b, self.c))
            if abs(quad - 1 / k) > 1e-9:
                raise ValueError(f"tableau {self.name}: Σ b_i c_i^{k - 1} = {quad}, not 1/{k}; "
                                 f"the method cannot have order {self.order}")
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise ValueError(f"tableau {self.name}: b_err must have {s} entries")
            if abs(sum(self.b_err)) > _TOL:
                raise ValueError(f"tableau {self.name}: b_err sums to {sum(self.b_err)}, not 0")
        dirk = all(self.a[i][j] == 0 for i in range(s) for j in range(i + 1, s))
        if self.predictor is not None:
            if not dirk:
                raise ValueError(f"tableau {self.name}: predictors are for diagonally implicit methods only")
            if len(self.predictor) != s or any(len(row) != i for i, row in enumerate(self.predictor)):
                raise ValueError(f"tableau {self.name}: predictor row i must have i entries")
            for i, row in enumerate(self.predictor[1:], start=1):
                if abs(sum(row) - 1) > _TOL:
                    raise ValueError(f"tableau {self.name}: predictor row {i} sums to {sum(row)}, not 1")
        object.__setattr__(self, "diagonally_implicit", dirk)
        object.__setattr__(self, "explicit_first", dirk and self.a[0][0] == 0 and self.c[0] == 0)
        object.__setattr__(self, "stiffly_accurate", all(abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b)))
        object.__setattr__(self, "r_infinity", abs(self.stability(-1e12)))

    def stability(self, z: float) -> float:
        """The stability function ``R(z) = det(I - zA + z 1bᵀ) / det(I - zA)`` at a real ``z`` (the
        growth factor of one step on ``y' = λy`` with ``z = hλ``); the determinant form stays
        accurate for huge ``|z|``, where ``1 + z bᵀ(I - zA)⁻¹1`` cancels catastrophically."""
        A = torch.tensor(self.a, dtype=torch.float64)
        s = A.shape[0]
        ones_b = torch.ones(s, 1, dtype=torch.float64) * torch.tensor(self.b, dtype=torch.float64)[None, :]
        eye = torch.eye(s, dtype=torch.float64)
        return float(torch.linalg.det(eye - z * A + z * ones_b) / torch.linalg.det(eye - z * A))

    @property
    def l_stable(self) -> bool:
        """True when the stability function vanishes at infinity (stiff components are damped)."""
        return self.r_infinity < 1e-6

    @property
    def implicit(self) -> bool:
        return True


_S2, _S3, _S6, _S15 = math.sqrt(2), math.sqrt(3), math.sqrt(6), math.sqrt(15)

# --------------------------------------------------------------------------- torchdiffeq's fixed-step family

IMPLICIT_EULER = ImplicitTableau(
    "implicit_euler", 1, c=(1.0,), a=((1.0,),), b=(1.0,),
    reference="Backward Euler (Radau IIA, one stage); L-stable.")
IMPLICIT_MIDPOINT = ImplicitTableau(
    "implicit_midpoint", 2, c=(0.5,), a=((0.5,),), b=(1.0,),
    reference="Implicit midpoint rule (Gauss–Legendre, one stage); A-stable, symplectic, not L-stable.")
TRAPEZOID = ImplicitTableau(
    "trapezoid", 2, c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5),
    reference="Trapezoidal rule (Crank–Nicolson, Lobatto IIIA two stages); A-stable, not L-stable.")
RADAU_IIA3 = ImplicitTableau(
    "radauIIA3", 3, c=(1 / 3, 1.0), a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)), b=(3 / 4, 1 / 4),
    reference="Radau IIA, two stages (Hairer & Wanner, Solving ODEs II, IV.5); L-stable.")
RADAU_IIA5 = ImplicitTableau(
    "radauIIA5", 5,
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
    a=(((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
       ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
       ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9)),
    b=((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    reference="Radau IIA, three stages (Hairer & Wanner, Solving ODEs II, IV.5; the method of RADAU5 and "
              "SciPy's Radau); L-stable.")
GL4 = ImplicitTableau(
    "gl4", 4, c=(0.5 - _S3 / 6, 0.5 + _S3 / 6),
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)), b=(0.5, 0.5),
    reference="Gauss–Legendre, two stages; A-stable, symplectic. (torchdiffeq's table repeats c[0] as "
              "c[1]; here c[1] = 1/2 + √3/6 as the row sums require.)")
GL6 = ImplicitTableau(
    "gl6", 6, c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    a=((5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
       (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
       (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36)),
    b=(5 / 18, 4 / 9, 5 / 18),
    reference="Gauss–Legendre, three stages; A-stable, symplectic.")
_G2 = 1 - _S2 / 2
SDIRK2 = ImplicitTableau(
    "sdirk2", 2, c=(_G2, 1.0), a=((_G2, 0.0), (1 - _G2, _G2)), b=(1 - _G2, _G2),
    reference="Two-stage SDIRK with γ = 1 - √2/2 (Alexander 1977); L-stable, stiffly accurate.")
_TB_G = 1 - _S2 / 2
_TB_W = _S2 / 4
TRBDF2 = ImplicitTableau(
    "trbdf2", 2, c=(0.0, 2 * _TB_G, 1.0),
    a=((0.0, 0.0, 0.0), (_TB_G, _TB_G, 0.0), (_TB_W, _TB_W, _TB_G)), b=(_TB_W, _TB_W, _TB_G),
    reference="TR-BDF2 as an ESDIRK (Bank et al. 1985; Hosea & Shampine 1996): a trapezoidal stage to "
              "2γh then BDF2; L-stable.")

# --------------------------------------------------------------------------- adaptive ESDIRK pairs (Kværnø 2004)

_K3 = 0.43586652150
_K3_A = (
    (0.0, 0.0, 0.0, 0.0),
    (_K3, _K3, 0.0, 0.0),
    ((-4 * _K3**2 + 6 * _K3 - 1) / (4 * _K3), (-2 * _K3 + 1) / (4 * _K3), _K3, 0.0),
    ((6 * _K3 - 1) / (12 * _K3), -1 / ((24 * _K3 - 12) * _K3), (-6 * _K3**2 + 6 * _K3 - 1) / (6 * _K3 - 3), _K3),
)
_K3_TH = 1 / (2 * _K3)
KVAERNO3 = ImplicitTableau(
    "kvaerno3", 3, c=(0.0, 2 * _K3, 1.0, 1.0), a=_K3_A, b=_K3_A[3],
    b_err=tuple(x - y for x, y in zip(_K3_A[3], _K3_A[2])),
    predictor=((), (1.0,), (1 - _K3_TH, _K3_TH), (_K3_A[2][0], _K3_A[2][1], _K3)),
    reference="Kværnø (2004), 'Singly diagonally implicit Runge–Kutta methods with an explicit first "
              "stage', BIT 44: the 3(2) ESDIRK pair, L-stable and stiffly accurate; coefficients and "
              "stage predictors as in diffrax's Kvaerno3.")

_K5 = 0.26
_K5_LOWER = (
    (),
    (_K5,),
    (0.13, 0.84033320996790809),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
    (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676),
    (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
     0.06962479448202728),
)
_K5_A = tuple(tuple(row) + ((_K5,) if i else (0.0,)) + (0.0,) * (6 - i) for i, row in enumerate(_K5_LOWER))
KVAERNO5 = ImplicitTableau(
    "kvaerno5", 5,
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=_K5_A, b=_K5_A[6],
    b_err=tuple(x - y for x, y in zip(_K5_A[6], _K5_A[5])),
    predictor=((), (1.0,), (-1.366025403784441, 2.3660254037844357),
               (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
               (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
               (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
               _K5_A[5][:6]),
    reference="Kværnø (2004), BIT 44: the 5(4) ESDIRK pair with seven stages, L-stable and stiffly "
              "accurate; coefficients and stage predictors as in diffrax's Kvaerno5.")


IMPLICIT_METHODS: Dict[str, ImplicitTableau] = {
    tab.name: tab
    for tab in (IMPLICIT_EULER, IMPLICIT_MIDPOINT, TRAPEZOID, RADAU_IIA3, RADAU_IIA5, GL4, GL6, SDIRK2, TRBDF2,
                KVAERNO3, KVAERNO5)
}

__all__ = ["ImplicitTableau", "IMPLICIT_METHODS"]
