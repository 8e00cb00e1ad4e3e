"""Butcher tableaus as data: every explicit Runge–Kutta method of the package is one of these.

A :class:`ButcherTableau` checks its own consistency (row sums equal ``c``, weights sum to one,
error weights sum to zero, the dense output reproduces the step's end) and works out whether
it is FSAL ("first same as last": the last stage is ``f(t1, y1)`` and becomes the next step's
first stage). Adding a method means adding a tableau here, nothing else.

Dense output is data too: ``dense[i]`` holds the coefficients of the polynomial
``w_i(θ) = Σ_k dense[i][k] θ^(k+1)`` such that ``y(t0 + θh) = y0 + h Σ_i w_i(θ) k_i`` over the
*extended stages*: the stages of the step followed, for non-FSAL methods, by ``f(t1, y1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

_TOL = 1e-10


class TableauShape:
    """What the stepping loop asks of any Runge–Kutta tableau, explicit or implicit.

    Mixed into the frozen dataclasses :class:`ButcherTableau` and
    :class:`~neuralode.implicit_tableaus.ImplicitTableau`, which carry ``order``, ``error_order``,
    ``b_err`` and ``c``.
    """

    order: int
    error_order: Optional[int]
    b_err: Optional[Tuple[float, ...]]
    c: Tuple[float, ...]

    @property
    def controller_order(self) -> int:
        """The exponent base ``k`` of the step-size controller (``error ∝ h^k``)."""
        return self.error_order if self.error_order is not None else self.order

    @property
    def adaptive(self) -> bool:
        """True when the tableau has an embedded error estimate (adaptive stepping)."""
        return self.b_err is not None

    @property
    def n_stages(self) -> int:
        return len(self.c)


@dataclass(frozen=True)
class ButcherTableau(TableauShape):
    """An explicit Runge–Kutta method.

    Attributes:
        name: the method's name (``method=`` in :func:`neuralode.odeint`).
        order: the order of the propagated solution.
        c: stage times as fractions of the step, ``c[0] == 0``.
        a: the strictly lower-triangular stage matrix, row ``i`` has ``i`` entries.
        b: the solution weights.
        b_err: error weights (propagated minus embedded solution); ``None`` for fixed-step methods.
        dense: dense-output polynomial coefficients over the extended stages (see module doc);
            ``None`` means linear interpolation between the step's ends.
        error_order: the power of ``h`` of the local error estimate, which sets the step-size
            controller's exponents; defaults to ``order`` (an estimate of order ``order - 1``
            under local extrapolation has local error ``O(h^order)``).
        reference: where the coefficients come from.
    """

    name: str
    order: int
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_err: Optional[Tuple[float, ...]] = None
    dense: Optional[Tuple[Tuple[float, ...], ...]] = None
    error_order: Optional[int] = None
    reference: str = ""
    fsal: bool = field(init=False)
    a_terms: Tuple[Tuple[Tuple[int, float], ...], ...] = field(init=False, repr=False)
    b_terms: Tuple[Tuple[int, float], ...] = field(init=False, repr=False)
    err_terms: Tuple[Tuple[int, float], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise ValueError(f"tableau {self.name}: c, a and b must have one entry per stage ({s})")
        if self.c[0] != 0:
            raise ValueError(f"tableau {self.name}: c[0] must be 0, got {self.c[0]}")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name}: row {i} of a must have {i} entries, has {len(row)}")
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"tableau {self.name}: row {i} of a sums to {sum(row)}, not c[{i}]={self.c[i]}")
        if abs(sum(self.b) - 1) > _TOL:
            raise ValueError(f"tableau {self.name}: b sums to {sum(self.b)}, not 1")
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise ValueError(f"tableau {self.name}: b_err must have {s} entries")
            if abs(sum(self.b_err)) > _TOL:
                raise ValueError(f"tableau {self.name}: b_err sums to {sum(self.b_err)}, not 0")
        fsal = (
            s > 1
            and self.c[-1] == 1
            and self.b[-1] == 0
            and all(abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b[:-1]))
        )
        object.__setattr__(self, "fsal", fsal)
        if self.dense is not None:
            n_ext = s if fsal else s + 1
            if len(self.dense) != n_ext:
                raise ValueError(f"tableau {self.name}: dense needs {n_ext} rows (extended stages)")
            at_one = [sum(row) for row in self.dense]
            b_ext = list(self.b) + ([] if fsal else [0.0])
            if any(abs(x - y) > 1e-8 for x, y in zip(at_one, b_ext)):
                raise ValueError(f"tableau {self.name}: dense output at θ=1 does not reproduce b")
        def nonzero(row: Sequence[float]) -> tuple[tuple[int, float], ...]:
            return tuple((j, float(w)) for j, w in enumerate(row) if w != 0)

        object.__setattr__(self, "a_terms", tuple(nonzero(row) for row in self.a))
        object.__setattr__(self, "b_terms", nonzero(self.b))
        object.__setattr__(self, "err_terms", nonzero(self.b_err) if self.b_err is not None else ())

    @property
    def new_evaluations_per_step(self) -> int:
        """Function evaluations a step costs beyond the first stage carried over by FSAL."""
        return len(self.c) - 1 if self.fsal else len(self.c)


# --------------------------------------------------------------------------- dense outputs

def _quartic_dense(b: Sequence[float], c_mid: Sequence[float]) -> Tuple[Tuple[float, ...], ...]:
    """The quartic through y0, y1, the mid-step value and the end derivatives (torchdiffeq's).

    With ``y1 = y0 + h b·k``, ``y_mid = y0 + h c_mid·k``, ``f0 = k_0`` and ``f1 = k_last`` the
    polynomial ``y0 + dθ + cθ² + bθ³ + aθ⁴`` becomes stage weights (the ``y0`` terms cancel).
    """
    n = len(b)
    rows = []
    for i in range(n):
        e0 = 1.0 if i == 0 else 0.0
        e1 = 1.0 if i == n - 1 else 0.0
        rows.append((
            e0,
            e1 - 4 * e0 - 5 * b[i] + 16 * c_mid[i],
            5 * e0 - 3 * e1 + 14 * b[i] - 32 * c_mid[i],
            2 * e1 - 2 * e0 - 8 * b[i] + 16 * c_mid[i],
        ))
    return tuple(rows)


def hermite_dense(b: Sequence[float], fsal: bool) -> Tuple[Tuple[float, ...], ...]:
    """Cubic Hermite through (y0, f0) and (y1, f1): third order, free for any method."""
    n = len(b) if fsal else len(b) + 1
    b_ext = list(b) + ([] if fsal else [0.0])
    rows = []
    for i in range(n):
        e0 = 1.0 if i == 0 else 0.0
        e1 = 1.0 if i == n - 1 else 0.0
        # h10 = θ - 2θ² + θ³ (f0), h01 = 3θ² - 2θ³ (y1 - y0), h11 = -θ² + θ³ (f1)
        rows.append((e0, -2 * e0 + 3 * b_ext[i] - e1, e0 - 2 * b_ext[i] + e1))
    return tuple(rows)


def _poly_mul(p: Sequence[float], q: Sequence[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _poly_from_factors(scale: float, factors: Sequence[Sequence[float]]) -> list[float]:
    poly = [scale]
    for f in factors:
        poly = _poly_mul(poly, f)
    return poly


def _tsit5_dense() -> Tuple[Tuple[float, ...], ...]:
    """Tsitouras' own quartic interpolant (Tsitouras 2011, as in OrdinaryDiffEq.jl/torchode)."""
    T = [0.0, 1.0]  # the polynomial θ
    basis = [
        _poly_from_factors(-1.0530884977290216, [T, [-1.3299890189751412, 1.0], [0.7139816917074209, -1.4364028541716351, 1.0]]),
        _poly_from_factors(0.1017, [T, T, [1.2949852507374631, -2.1966568338249754, 1.0]]),
        _poly_from_factors(2.490627285651252793, [T, T, [1.57803468208092486, -2.38535645472061657, 1.0]]),
        _poly_from_factors(-16.54810288924490272, [[-1.21712927295533244, 1.0], [-0.61620406037800089, 1.0], T, T]),
        _poly_from_factors(47.37952196281928122, [[-1.203071208372362603, 1.0], [-0.658047292653547382, 1.0], T, T]),
        _poly_from_factors(-34.87065786149660974, [[-1.2, 1.0], [-0.666666666666666667, 1.0], T, T]),
        _poly_from_factors(2.5, [[-1.0, 1.0], [-0.6, 1.0], T, T]),
    ]
    return tuple(tuple(p[1:5]) for p in basis)


# --------------------------------------------------------------------------- fixed-step methods

EULER = ButcherTableau(
    "euler", 1, c=(0.0,), a=((),), b=(1.0,), reference="Euler's method.")
MIDPOINT = ButcherTableau(
    "midpoint", 2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), reference="Explicit midpoint rule.")
HEUN2 = ButcherTableau(
    "heun2", 2, c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), reference="Heun's second-order method.")
HEUN3 = ButcherTableau(
    "heun3", 3, c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75),
    reference="Heun's third-order method.")
RK4 = ButcherTableau(
    "rk4", 4, c=(0.0, 1 / 3, 2 / 3, 1.0), a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    reference="Kutta's 3/8 rule (the 'rk4' of torchdiffeq; smaller error than the classic RK4).")

# --------------------------------------------------------------------------- adaptive methods

_AH_B = (0.5, 0.5)
ADAPTIVE_HEUN = ButcherTableau(
    "adaptive_heun", 2, c=(0.0, 1.0), a=((), (1.0,)), b=_AH_B, b_err=(0.5, -0.5),
    dense=hermite_dense(_AH_B, fsal=False),
    reference="Heun's method with an embedded Euler error estimate; cubic Hermite dense output.")

_FE_B = (1 / 512, 255 / 256, 1 / 512)
FEHLBERG2 = ButcherTableau(
    "fehlberg2", 2, c=(0.0, 0.5, 1.0), a=((), (0.5,), (1 / 256, 255 / 256)), b=_FE_B,
    b_err=(-1 / 512, 0.0, 1 / 512), dense=hermite_dense(_FE_B, fsal=False),
    reference="Fehlberg's RK1(2) pair propagating the second-order solution, as torchdiffeq's "
              "'fehlberg2'. Its error estimate is the first-order formula's h²/512 term only, which "
              "under-states the true local error once |hλ| exceeds ~0.01: use it for loose "
              "tolerances only. Unlike torchdiffeq, the last stage (taken at the first-order "
              "point) is not reused as f(t1, y1), so a step costs three evaluations.")

_BS_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3 = ButcherTableau(
    "bosh3", 3, c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)), b=_BS_B,
    b_err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8), dense=hermite_dense(_BS_B, fsal=True),
    reference="Bogacki & Shampine (1989), a 3(2) FSAL pair; cubic Hermite dense output (3rd order).")

_DP5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP5_C_MID = (
    6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)
DOPRI5 = ButcherTableau(
    "dopri5", 5,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=_DP5_B,
    b_err=(35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
           -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60),
    dense=_quartic_dense(_DP5_B, _DP5_C_MID),
    reference="Dormand & Prince (1980), 5(4) FSAL pair; Shampine's (1986) mid-step value for the "
              "quartic dense output.")

_TS5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
          2.324710524099774, 0.0)
TSIT5 = ButcherTableau(
    "tsit5", 5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((), (0.161,), (-0.008480655492356989, 0.335480655492357),
       (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838),
       _TS5_B[:6]),
    b=_TS5_B,
    b_err=(0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995, 0.1447110071732629,
           -0.5823571654525552, 0.45808210592918697, -1 / 66),
    dense=_tsit5_dense(),
    reference="Tsitouras (2011), 5(4) FSAL pair with its own quartic interpolant (error-weight sign "
              "of the last stage as corrected in OrdinaryDiffEq.jl #1654).")


def _dopri8() -> ButcherTableau:
    c = (0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821, 13 / 20,
         1201146811 / 1299019798, 1.0, 1.0, 1.0)
    a = ((),
         (1 / 18,),
         (1 / 48, 1 / 16),
         (1 / 32, 0, 3 / 32),
         (5 / 16, 0, -75 / 64, 75 / 64),
         (3 / 80, 0, 0, 3 / 16, 3 / 20),
         (29443841 / 614563906, 0, 0, 77736538 / 692538347, -28693883 / 1125000000, 23124283 / 1800000000),
         (16016141 / 946692911, 0, 0, 61564180 / 158732637, 22789713 / 633445777, 545815736 / 2771057229,
          -180193667 / 1043307555),
         (39632708 / 573591083, 0, 0, -433636366 / 683701615, -421739975 / 2616292301, 100302831 / 723423059,
          790204164 / 839813087, 800635310 / 3783071287),
         (246121993 / 1340847787, 0, 0, -37695042795 / 15268766246, -309121744 / 1061227803,
          -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457, 123872331 / 1001029789),
         (-1028468189 / 846180014, 0, 0, 8478235783 / 508512852, 1311729495 / 1432422823,
          -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
          -45442868181 / 3398467696, 3065993473 / 597172653),
         (185892177 / 718116043, 0, 0, -3185094517 / 667107341, -477755414 / 1098053517,
          -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563, -4093664535 / 808688257,
          3962137247 / 1805957418, 65686358 / 487910083),
         (403863854 / 491063109, 0, 0, -5068492393 / 434740067, -411421997 / 543043805, 652783627 / 914296604,
          11173962825 / 925320556, -13158990841 / 6184727034, 3936647629 / 1978049680, -160528059 / 685178525,
          248638103 / 1413531060, 0),
         (14005451 / 335480064, 0, 0, 0, 0, -59238493 / 1068277825, 181606767 / 758867731,
          561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299, 118820643 / 751138087,
          -528747749 / 2220607170, 1 / 4))
    b = a[13] + (0.0,)
    b_hat = (13451932 / 455176623, 0, 0, 0, 0, -808719846 / 976000145, 1757004468 / 5645159321,
             656045339 / 265891186, -3867574721 / 1518517206, 465885868 / 322736535, 53011238 / 667516719,
             2 / 45, 0, 0)
    b_err = tuple(x - y for x, y in zip(b, b_hat))
    # Continuous extension w_i(θ) = θ·p_i(θ), p_i of degree 5 (coefficients from torchdiffeq's dopri8,
    # which uses them only at θ = 1/2): here they serve every output time directly, rows in θ^1..θ^6.
    ext = {
        0: (1.0, -6.6910181737837595697, 19.9990069333683970610, -30.0610568289666450593,
            22.1396504998094068976, -6.3448349392860401388),
        5: (0.0, -7.6142658045872677172, 52.2273532792945524050, -121.4999627731334642623,
            116.4422149550342161651, -39.6107919852202505218),
        6: (0.0, 10.7281392630428866124, -46.8919164181093621583, 83.1721004639847717481,
            -67.1451318825957197185, 20.3761213808791436958),
        7: (0.0, 0.5526637063753648783, -0.1890893225010595467, 9.5724507555993664382,
            -16.5672243527496524646, 7.3347098826795362023),
        8: (0.0, 4.2186562625665153803, -35.7075975946222072821, 87.8406057677205645007,
            -89.9916014847245016028, 32.8801774352459155182),
        9: (0.0, -0.6627209125361597559, 6.2736448083240352160, -17.4152107770762969005,
            22.6237489648532849093, -10.1588990526426760954),
        10: (0.0, -1.2636789001135462218, 10.3160881272450748458, -28.5903289514790976966,
             32.2362340167355370113, -12.5401268098782561200),
        11: (0.0, 5.4106037898590422230, -34.7650769866611817349, 81.6630950584341412934,
             -82.1020315488359848644, 29.5553001484516038033),
        12: (0.0, -7.0321379067945741781, 47.7457971078225540396, -114.9375291377009418170,
             116.2662185791119533462, -41.7923486424390588923),
        13: (0.0, 2.3537586759714983486, -19.0082099341608028453, 50.2558364226176017553,
             -53.9020777466385396792, 20.3006925822100825485),
    }
    dense = tuple(ext.get(i, (0.0,) * 6) for i in range(14))
    return ButcherTableau(
        "dopri8", 8, c=c, a=tuple(tuple(float(x) for x in row) for row in a), b=b, b_err=b_err,
        dense=dense,
        reference="Dormand & Prince 8(5,3) as in Hairer's DOP853 (coefficients as in torchdiffeq) with a "
                  "degree-6 continuous extension over the 14 stages.")


DOPRI8 = _dopri8()

METHODS: Dict[str, ButcherTableau] = {
    tab.name: tab
    for tab in (EULER, MIDPOINT, HEUN2, HEUN3, RK4, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
FIXED_METHODS = tuple(name for name, tab in METHODS.items() if not tab.adaptive)
ADAPTIVE_METHODS = tuple(name for name, tab in METHODS.items() if tab.adaptive)
DEFAULT_METHOD = "dopri5"

__all__ = ["ButcherTableau", "METHODS", "FIXED_METHODS", "ADAPTIVE_METHODS", "DEFAULT_METHOD"]
