"""Sampled ODE trajectories to learn dynamics from, and minibatches of trajectory snippets.

* :func:`cubic_spiral` — torchdiffeq's ``examples/ode_demo.py`` problem: ``dy/dt = y**3 @ A``
  (``y`` a row vector) with ``A = [[-0.1, 2], [-2, -0.1]]``, ``y0 = [2, 0]``, observed at 1,000
  equally spaced times on ``[0, 25]``; solved here with dopri5 at rtol 1e-9 / atol 1e-10 in
  float64 (the reference), returned in float32.
* :func:`linear_system` — ``dy/dt = A y`` for a known stable matrix (default :data:`LINEAR_3D`,
  a damped rotation coupled to a decaying third coordinate), several trajectories from seeded
  random initial states; the states are exact (``expm(t A) y0``, no integration error).
* :func:`snippet_batch` — ode_demo's ``get_batch``: ``batch_size`` random starts, each followed
  for ``batch_time`` observations; indices are drawn from the global torch RNG (or a given
  generator), so a training loop that checkpoints the RNG state resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

__all__ = ["CUBIC_A", "LINEAR_2D", "LINEAR_3D", "Trajectories", "cubic_spiral", "linear_system", "snippet_batch"]

#: torchdiffeq ode_demo's matrix: the field is ``y**3 @ CUBIC_A`` for a row vector ``y``.
CUBIC_A = ((-0.1, 2.0), (-2.0, -0.1))

#: A stable 2-D system: a damped rotation (eigenvalues -0.1 +- 1i).
LINEAR_2D = ((-0.1, -1.0), (1.0, -0.1))

#: A stable 3-D system: a damped rotation in (y1, y2), fed into a slower-decaying y3
#: (eigenvalues -0.1 +- 1i and -0.3); not symmetric, not normal.
LINEAR_3D = ((-0.1, -1.0, 0.0), (1.0, -0.1, 0.0), (0.3, 0.2, -0.3))


@dataclass
class Trajectories:
    """Observed states ``y`` of shape ``(T, B, D)`` at times ``t`` (T,), from ``y0`` (B, D).

    ``matrix`` is the true system matrix (the field is ``y @ matrix.T`` for linear systems, and
    ``y**3 @ matrix`` for the cubic spiral); ``name`` says which.
    """

    t: torch.Tensor
    y: torch.Tensor
    y0: torch.Tensor
    matrix: torch.Tensor
    name: str

    @property
    def dim(self) -> int:
        return self.y.shape[-1]

    def field(self, y: torch.Tensor) -> torch.Tensor:
        """The true vector field at states ``y`` (..., D)."""
        m = self.matrix.to(y)
        return (y**3) @ m if self.name == "cubic_spiral" else y @ m.T


def cubic_spiral(n_points: int = 1000, t_max: float = 25.0, y0: tuple[float, float] = (2.0, 0.0)) -> Trajectories:
    """torchdiffeq's demo data: ``dy/dt = y**3 @ A`` from ``y0`` at ``n_points`` times on ``[0, t_max]``."""
    from neuralode import solve

    if n_points < 2 or t_max <= 0:
        raise ValueError(f"need n_points >= 2 and t_max > 0; got n_points={n_points}, t_max={t_max}")
    a = torch.tensor(CUBIC_A, dtype=torch.float64)
    t = torch.linspace(0.0, t_max, n_points, dtype=torch.float64)
    start = torch.tensor([y0], dtype=torch.float64)
    ys = cast(torch.Tensor, solve(lambda _t, y: (y**3) @ a, start, t, method="dopri5", rtol=1e-9, atol=1e-10).ys)
    return Trajectories(t.float(), ys.float(), start.float(), a.float(), "cubic_spiral")


def linear_system(matrix=LINEAR_3D, *, n_traj: int = 8, n_points: int = 200, t_max: float = 10.0,
                  y0_scale: float = 1.0, seed: int = 0) -> Trajectories:
    """Exact trajectories of ``dy/dt = A y`` from ``n_traj`` seeded initial states ~ N(0, y0_scale² I)."""
    a = torch.as_tensor(matrix, dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(a.shape)}")
    if n_traj < 1 or n_points < 2 or t_max <= 0:
        raise ValueError(f"need n_traj >= 1, n_points >= 2, t_max > 0; got {n_traj}, {n_points}, {t_max}")
    g = torch.Generator().manual_seed(seed)
    y0 = y0_scale * torch.randn(n_traj, a.shape[0], generator=g, dtype=torch.float64)
    t = torch.linspace(0.0, t_max, n_points, dtype=torch.float64)
    prop = torch.linalg.matrix_exp(t[:, None, None] * a)  # (T, D, D)
    ys = torch.einsum("tij,bj->tbi", prop, y0)
    return Trajectories(t.float(), ys.float(), y0.float(), a.float(), "linear")


def snippet_batch(data: Trajectories, batch_time: int, batch_size: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y0, t, y)``: ``batch_size`` snippets of ``batch_time`` consecutive observations.

    Returns ``y0`` (S, D), the relative times ``t`` (batch_time,) starting at 0 (the grid is
    uniform, so every snippet shares them) and targets ``y`` (batch_time, S, D), ``y[0] == y0``.
    Starts are uniform over all trajectories and all times that leave room for the snippet.
    """
    T, B, D = data.y.shape
    if not 2 <= batch_time <= T:
        raise ValueError(f"batch_time must be in 2..{T}, got {batch_time}")
    n_starts = T - batch_time + 1
    idx = torch.randint(0, n_starts * B, (batch_size,), generator=generator)
    start, traj = idx // B, idx % B
    steps = torch.arange(batch_time)
    y = data.y[start[None, :] + steps[:, None], traj[None, :]]  # (batch_time, S, D)
    t = data.t[:batch_time] - data.t[0]
    return y[0], t, y
