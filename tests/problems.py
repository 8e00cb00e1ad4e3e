"""Reusable ODE test problems, with exact solutions where they exist.

Every problem is a :class:`Problem`: a vector field ``func(t, y)`` that works in any floating
dtype and for any leading batch dimensions of ``y`` (the last dimension is the state), an
initial value, a time span, and, for the linear ones, the exact solution.

Linear problems (exact solution known):
    :func:`linear_system`        dy/dt = A y, solved by ``torch.linalg.matrix_exp``
    :func:`exponential_decay`    dy/dt = -k y
    :func:`harmonic_oscillator`  x'' = -w^2 x as a first-order system

Nonlinear problems (reference from :func:`scipy_reference`, DOP853 at rtol=atol=1e-12):
    :func:`van_der_pol`          mu = 1
    :func:`lotka_volterra`       classic predator-prey
    :func:`cubic_spiral`         dy/dt = A y**3, A = [[-0.1, 2], [-2, -0.1]] (torchdiffeq demo)

Helpers: :class:`CountingFunc` wraps a field as an ``nn.Module`` that counts its calls and
records the solver callbacks (``callback_step``, ``callback_accept_step``,
``callback_reject_step``); :func:`scaled_error` expresses an error in units of the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Problem:
    """An initial value problem dy/dt = func(t, y), y(t0) = y0 on [t0, t1].

    ``y0`` is float64; use :meth:`y0_as` for another dtype. ``exact(t)`` maps a 1-D tensor of
    times to the solution stacked along a new leading dimension, ``(len(t), *y0.shape)``;
    it is ``None`` for problems without a closed form.
    """

    name: str
    func: Field
    y0: Tensor
    t0: float
    t1: float
    exact: Optional[Callable[[Tensor], Tensor]] = None

    def y0_as(self, dtype: torch.dtype) -> Tensor:
        return self.y0.to(dtype)

    def times(self, n: int = 2, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` equally spaced output times from t0 to t1 (both included)."""
        return torch.linspace(self.t0, self.t1, n, dtype=dtype)

    def __repr__(self) -> str:  # short ids in pytest output
        return f"Problem({self.name})"


class LinearField(torch.nn.Module):
    """dy/dt = A y for y of shape (..., d); works in any dtype (A is cast on the fly)."""

    def __init__(self, A: Tensor):
        super().__init__()
        self.register_buffer("A", A.to(torch.float64))
        self._cast: dict[torch.dtype, Tensor] = {}

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        A = self._cast.get(y.dtype)
        if A is None:
            A = self._cast[y.dtype] = self.A.to(y.dtype)
        return y @ A.T


def linear_solution(A: Tensor, y0: Tensor, t0: float) -> Callable[[Tensor], Tensor]:
    """Exact solution y(t) = expm(A (t - t0)) y0 of dy/dt = A y, in float64."""
    A = A.to(torch.float64)
    y0 = y0.to(torch.float64)

    def exact(t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        return torch.stack([y0 @ torch.linalg.matrix_exp(A * (ti - t0)).T for ti in t])

    return exact


def linear_system(A: Optional[Tensor] = None, y0: Optional[Tensor] = None, t1: float = 2.0) -> Problem:
    """dy/dt = A y on [0, t1]; default A is a damped 3-D rotation with a real mode."""
    if A is None:
        A = torch.tensor([[-0.3, 1.2, 0.0], [-1.2, -0.3, 0.4], [0.0, -0.4, -0.7]], dtype=torch.float64)
    if y0 is None:
        y0 = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    return Problem("linear", LinearField(A), y0.to(torch.float64), 0.0, t1, linear_solution(A, y0, 0.0))


def exponential_decay(k: float = 0.7, y0: float = 1.5, t1: float = 2.0) -> Problem:
    """dy/dt = -k y, y(t) = y0 exp(-k t); a one-element state."""

    def func(t: Tensor, y: Tensor) -> Tensor:
        return -k * y

    def exact(t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        return y0 * torch.exp(-k * t)

    return Problem("decay", func, torch.tensor([y0], dtype=torch.float64), 0.0, t1, exact)


def harmonic_oscillator(omega: float = 2.0, t1: float = 2.0) -> Problem:
    """x'' = -omega^2 x as (x, v); x(0)=1, v(0)=0, so x = cos(w t), v = -w sin(w t)."""

    def func(t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, -(omega**2) * x], dim=-1)

    def exact(t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        return torch.stack([torch.cos(omega * t), -omega * torch.sin(omega * t)], dim=-1)

    return Problem("harmonic", func, torch.tensor([1.0, 0.0], dtype=torch.float64), 0.0, t1, exact)


def van_der_pol(mu: float = 1.0, t1: float = 6.0) -> Problem:
    """x'' = mu (1 - x^2) x' - x as (x, x'); y0 = (2, 0) is on the limit cycle's neighbourhood."""

    def func(t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    return Problem("van_der_pol", func, torch.tensor([2.0, 0.0], dtype=torch.float64), 0.0, t1)


def lotka_volterra(a: float = 1.5, b: float = 1.0, c: float = 3.0, d: float = 1.0, t1: float = 6.0) -> Problem:
    """Predator-prey: x' = a x - b x y, y' = -c y + d x y; y0 = (1, 1) (scipy's example)."""

    def func(t: Tensor, y: Tensor) -> Tensor:
        u, v = y[..., 0], y[..., 1]
        return torch.stack([a * u - b * u * v, -c * v + d * u * v], dim=-1)

    return Problem("lotka_volterra", func, torch.tensor([1.0, 1.0], dtype=torch.float64), 0.0, t1)


CUBIC_A = ((-0.1, 2.0), (-2.0, -0.1))


def cubic_spiral(t1: float = 10.0) -> Problem:
    """dy/dt = A y**3 with A = [[-0.1, 2], [-2, -0.1]], y0 = (2, 0) (the torchdiffeq demo field)."""
    A64 = torch.tensor(CUBIC_A, dtype=torch.float64)

    def func(t: Tensor, y: Tensor) -> Tensor:
        return (y**3) @ A64.to(y.dtype).T

    return Problem("cubic_spiral", func, torch.tensor([2.0, 0.0], dtype=torch.float64), 0.0, t1)


LINEAR_PROBLEMS: tuple[Callable[[], Problem], ...] = (linear_system, exponential_decay, harmonic_oscillator)
NONLINEAR_PROBLEMS: tuple[Callable[[], Problem], ...] = (van_der_pol, lotka_volterra, cubic_spiral)


def scipy_reference(problem: Problem, t: Tensor, rtol: float = 1e-12, atol: float = 1e-12,
                    method: str = "DOP853") -> Tensor:
    """The solution at times ``t`` (increasing from t0) from scipy's ``solve_ivp``, in float64.

    With the defaults, an independent oracle: a different code base, an 8th-order method, and
    tolerances far below anything the tests ask of our solvers. Other ``method``/tolerances give
    scipy's own result for comparison (e.g. "RK45" is the same Dormand-Prince pair as dopri5).
    """
    from scipy.integrate import solve_ivp

    t_np = torch.as_tensor(t, dtype=torch.float64).numpy()
    shape = problem.y0.shape

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        yt = torch.from_numpy(y).reshape(shape)
        return problem.func(torch.tensor(s, dtype=torch.float64), yt).reshape(-1).numpy()

    out = solve_ivp(rhs, (float(t_np[0]), float(t_np[-1])), problem.y0.reshape(-1).numpy(),
                    method=method, t_eval=t_np, rtol=rtol, atol=atol)
    if not out.success:  # pragma: no cover - the oracle itself failing is a test-set bug
        raise RuntimeError(f"scipy reference failed on {problem.name}: {out.message}")
    return torch.from_numpy(out.y.T.copy()).reshape(len(t_np), *shape)


def scaled_error(y: Tensor, y_ref: Tensor, rtol: float, atol: float) -> float:
    """max |y - y_ref| / (atol + rtol |y_ref|): the error in units of the requested tolerance."""
    y = y.to(torch.float64)
    y_ref = y_ref.to(torch.float64)
    return float(((y - y_ref).abs() / (atol + rtol * y_ref.abs())).max())


def max_abs_error(y: Tensor, y_ref: Tensor) -> float:
    return float((y.to(torch.float64) - y_ref.to(torch.float64)).abs().max())


class CountingFunc(torch.nn.Module):
    """Wraps a field, counting its calls and recording the solver callbacks.

    ``calls`` is the number of evaluations; ``steps``, ``accepted`` and ``rejected`` hold the
    ``(t0, dt)`` pairs (as Python floats) passed to ``callback_step``, ``callback_accept_step``
    and ``callback_reject_step``; ``callback_args`` keeps the raw arguments of every callback
    call, for tests that check their types and shapes.
    """

    def __init__(self, func: Field):
        super().__init__()
        self.func = func
        self.calls = 0
        self.steps: list[tuple[float, float]] = []
        self.accepted: list[tuple[float, float]] = []
        self.rejected: list[tuple[float, float]] = []
        self.callback_args: list[tuple[str, object, object, object]] = []

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.func(t, y)

    def _record(self, name: str, store: list, t0, y0, dt) -> None:
        self.callback_args.append((name, t0, y0, dt))
        store.append((float(t0), float(dt)))

    def callback_step(self, t0, y0, dt) -> None:
        self._record("step", self.steps, t0, y0, dt)

    def callback_accept_step(self, t0, y0, dt) -> None:
        self._record("accept", self.accepted, t0, y0, dt)

    def callback_reject_step(self, t0, y0, dt) -> None:
        self._record("reject", self.rejected, t0, y0, dt)

    def step_ends(self) -> list[float]:
        """End times t0 + dt of the accepted steps."""
        return [t0 + dt for t0, dt in self.accepted]


def log_log_slope(hs, errors) -> float:
    """Least-squares slope of log(error) against log(h)."""
    return float(np.polyfit(np.log(np.asarray(hs, dtype=float)), np.log(np.asarray(errors, dtype=float)), 1)[0])


__all__ = [
    "Problem", "LinearField", "linear_solution", "linear_system", "exponential_decay",
    "harmonic_oscillator", "van_der_pol", "lotka_volterra", "cubic_spiral", "LINEAR_PROBLEMS",
    "NONLINEAR_PROBLEMS", "scipy_reference", "scaled_error", "max_abs_error", "CountingFunc",
    "log_log_slope",
]
