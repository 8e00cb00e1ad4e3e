"""Dense output: the state anywhere inside an accepted step, from the step's stages.

Every interpolant is a polynomial in the fraction ``θ`` of the step, written as stage weights
(see :mod:`neuralode.tableaus`): ``y(t0 + θh) = y0 + h Σ_i w_i(θ) k_i``. Output times are
served by this, never by shortening steps.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from .rk import Scalar, combine_weights
from .tableaus import ButcherTableau, hermite_dense

DenseRows = Tuple[Tuple[float, ...], ...]


def dense_rows(tableau: ButcherTableau, interp: str = "linear") -> DenseRows:
    """The interpolant of a method: its own for adaptive ones, ``interp`` for fixed-step ones."""
    if tableau.dense is not None:
        return tableau.dense
    if interp == "cubic":
        return hermite_dense(tableau.b, fsal=tableau.fsal)
    return tuple((w,) for w in tableau.b)  # linear: θ (y1 - y0)


def needs_end_derivative(rows: DenseRows, tableau: ButcherTableau) -> bool:
    """True when the interpolant uses ``f(t1, y1)`` beyond the step's own stages."""
    return len(rows) > tableau.n_stages


def weights(rows: DenseRows, theta: Scalar) -> Sequence[Scalar]:
    """Stage weights ``w_i(θ) = Σ_k rows[i][k] θ^(k+1)`` (floats, or tensors for a tensor θ)."""
    degree = len(rows[0])
    powers = [theta]
    for _ in range(degree - 1):
        powers.append(powers[-1] * theta)
    out = []
    for row in rows:
        w: Scalar = 0.0
        for p, x in zip(powers, row):
            if x != 0:
                w = w + p * x
        out.append(w)
    return out


def evaluate_dense(rows: DenseRows, y0: torch.Tensor, ks: Sequence[torch.Tensor], h: Scalar, theta: Scalar) -> torch.Tensor:
    """The interpolated state at fraction ``theta`` of a step that started at ``y0``."""
    return combine_weights(y0, ks, weights(rows, theta), h)
