"""One generic explicit Runge–Kutta step, for every tableau.

The hot path of a solve is the function evaluation; everything here is overhead, so a stage
combination ``y + h Σ a_ij k_j`` is one ``torch.add`` and in-place ``add_`` per non-zero
coefficient (autograd-safe: additions save nothing for backward) when the step ``h`` is a
Python float. When gradients must flow to the output times, ``h`` is a 0-d tensor and the
same sums are built from differentiable tensor products instead.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]
Terms = Sequence[Tuple[int, float]]


def combine(base: Optional[torch.Tensor], ks: Sequence[torch.Tensor], terms: Terms, h: Scalar) -> torch.Tensor:
    """Return ``base + h Σ w_j ks[j]`` for ``(j, w)`` in ``terms`` (``base=None`` means zero)."""
    if isinstance(h, float):
        out = None
        for j, w in terms:
            if out is None:
                out = ks[j] * (w * h) if base is None else torch.add(base, ks[j], alpha=w * h)
            else:
                out.add_(ks[j], alpha=w * h)
        if out is None:
            return torch.zeros_like(ks[0]) if base is None else base
        return out
    acc = None
    for j, w in terms:
        term = ks[j] * w
        acc = term if acc is None else acc + term
    if acc is None:
        return torch.zeros_like(ks[0]) if base is None else base
    acc = acc * h.to(acc.dtype)
    return acc if base is None else base + acc


def combine_weights(base: torch.Tensor, ks: Sequence[torch.Tensor], weights: Sequence[Scalar], h: Scalar) -> torch.Tensor:
    """``base + h Σ weights[j] ks[j]`` where the weights may be floats or 0-d tensors."""
    if isinstance(h, float) and all(isinstance(w, float) for w in weights):
        return combine(base, ks, [(j, w) for j, w in enumerate(weights) if w != 0], h)
    acc = None
    for k, w in zip(ks, weights):
        term = k * (w.to(k.dtype) if isinstance(w, torch.Tensor) else w)
        acc = term if acc is None else acc + term
    hh = h.to(base.dtype) if isinstance(h, torch.Tensor) else h
    return base + acc * hh


Evaluate = Callable[[Scalar, torch.Tensor, int], torch.Tensor]


def rk_step(
    evaluate: Evaluate,
    tableau: ButcherTableau,
    t0: Scalar,
    h: Scalar,
    t1: Scalar,
    y0: torch.Tensor,
    f0: torch.Tensor,
    perturb_end: int = 0,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Take one step of ``tableau`` from ``(t0, y0)`` with ``f0 = f(t0, y0)`` already known.

    Stages with ``c == 1`` are evaluated at ``t1`` exactly (not ``t0 + h``), with time
    perturbation ``perturb_end`` (-1: just before ``t1``, for discontinuities). Returns the new
    state and the list of stage derivatives ``k`` (``k[0] is f0``). For FSAL tableaus the last
    stage is ``f(t1, y1)``.
    """
    ks = [f0]
    c = tableau.c
    yi = y0
    for i in range(1, len(c)):
        yi = combine(y0, ks, tableau.a_terms[i], h)
        if c[i] == 1.0:
            ks.append(evaluate(t1, yi, perturb_end))
        else:
            ks.append(evaluate(t0 + c[i] * h, yi, 0))
    y1 = yi if tableau.fsal else combine(y0, ks, tableau.b_terms, h)
    return y1, ks
