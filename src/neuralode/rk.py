"""One generic explicit Runge–Kutta step, for every tableau.

The hot path of a solve is the function evaluation; everything here is overhead, counted in
tensor operations (each costs a few microseconds of dispatch and autograd bookkeeping on small
states). A stage combination ``y + h Σ a_ij k_j`` is one ``torch.add`` per term (accumulated
in place when autograd is off). The new
solution's increment ``h Σ b_j k_j`` is formed first and added to ``y`` once: adding term by
term rounds ``y`` once per term and, on smooth fields, those roundings drift the same way step
after step (0.3 ulp per step for rk4 in float32, against 0.035 with the increment formed first).
Stacking the stages for one matrix–vector product was measured slower on small states (more
dispatches) and ``addmv`` accumulates into ``y`` term by term anyway.

When gradients must flow to the output times, ``h`` is a 0-d tensor and the same sums are
built from differentiable tensor products instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]
Terms = Sequence[Tuple[int, float]]


@dataclass(frozen=True)
class Row:
    """One linear combination of stages: its non-zero ``(stage, weight)`` terms."""

    terms: Tuple[Tuple[int, float], ...]
    increment_first: bool = False  # a new solution: form h·Σ w_j k_j, then add it to y once

    @property
    def first(self) -> Optional[Tuple[int, float]]:
        return self.terms[0] if self.terms else None

    @property
    def rest(self) -> Tuple[Tuple[int, float], ...]:
        return self.terms[1:]


@dataclass(frozen=True)
class Plan:
    """A tableau's stage rows, solution row and error row."""

    stages: Tuple[Row, ...]
    solution: Row
    error: Row
    # (row, c_i, at_end) for the stages after the first, unpacked once for the per-step loop
    stage_list: Tuple[Tuple[Row, float, bool], ...] = ()


_PLANS: Dict[ButcherTableau, Plan] = {}


def plan_for(tableau: ButcherTableau, dtype: Optional[torch.dtype] = None, device: Any = None) -> Plan:
    """The cached :class:`Plan` of ``tableau`` (``dtype``/``device`` are accepted for callers
    that key plans by them; rows hold Python floats and serve every dtype and device).

    Plans are keyed by the tableau itself (its coefficients), never by its name: a different
    tableau under an existing name gets its own plan."""
    plan = _PLANS.get(tableau)
    if plan is None:
        last = len(tableau.c) - 1
        stages = tuple(Row(tuple(terms), increment_first=tableau.fsal and i == last and len(terms) >= 2)
                       for i, terms in enumerate(tableau.a_terms))
        solution = stages[last] if tableau.fsal else Row(tuple(tableau.b_terms), len(tableau.b_terms) >= 2)
        stage_list = tuple((stages[i], tableau.c[i], tableau.c[i] == 1.0) for i in range(1, len(tableau.c)))
        plan = Plan(stages=stages, solution=solution, error=Row(tuple(tableau.err_terms)), stage_list=stage_list)
        _PLANS[tableau] = plan
    return plan


def _accumulate(base: Optional[torch.Tensor], ks: Sequence[torch.Tensor], terms: Terms, h: float) -> torch.Tensor:
    """The float-step fast path of :func:`combine` for a non-empty ``terms``.

    In-place accumulation is cheaper without autograd; with it, out-of-place adds are (in-place
    ops on recorded tensors pay for rewriting their history).
    """
    j, w = terms[0]
    out = ks[j] * (w * h) if base is None else torch.add(base, ks[j], alpha=w * h)
    if len(terms) > 1:
        if torch.is_grad_enabled():
            for j, w in terms[1:]:
                out = torch.add(out, ks[j], alpha=w * h)
        else:
            for j, w in terms[1:]:
                out.add_(ks[j], alpha=w * h)
    return out


def combine_row(base: Optional[torch.Tensor], ks: Sequence[torch.Tensor], row: Row, h: Scalar) -> torch.Tensor:
    """``base + h Σ w_j ks[j]`` over the row's terms (``base=None`` means zero)."""
    if type(h) is float and row.terms:
        if row.increment_first and base is not None:
            return torch.add(base, _accumulate(None, ks, row.terms, h))
        return _accumulate(base, ks, row.terms, h)
    return combine(base, ks, row.terms, h)


def combine(base: Optional[torch.Tensor], ks: Sequence[torch.Tensor], terms: Terms, h: Scalar) -> torch.Tensor:
    """``base + h Σ w_j ks[j]`` for ``(j, w)`` in ``terms``, term by term (``base=None`` means zero)."""
    if isinstance(h, float):
        if not terms:
            return torch.zeros_like(ks[0]) if base is None else base
        return _accumulate(base, ks, tuple(terms), h)
    acc: Optional[torch.Tensor] = None
    for j, w in terms:
        term = ks[j] * w
        acc = term if acc is None else acc + term
    if acc is None:
        return torch.zeros_like(ks[0]) if base is None else base
    acc = acc * h.to(acc.dtype)
    return acc if base is None else base + acc


def combine_weights(base: torch.Tensor, ks: Sequence[torch.Tensor], weights: Sequence[Scalar], h: Scalar) -> torch.Tensor:
    """``base + h Σ weights[j] ks[j]`` (dense output) where the weights may be floats or 0-d tensors."""
    if type(h) is float and all(type(w) is float for w in weights):
        terms = [(j, float(w)) for j, w in enumerate(weights) if w != 0]
        return torch.add(base, combine(None, ks, terms, h)) if terms else base
    acc: Optional[torch.Tensor] = None
    for k, w in zip(ks, weights):
        term = k * (w.to(k.dtype) if isinstance(w, torch.Tensor) else w)
        acc = term if acc is None else acc + term
    if acc is None:
        return base
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
    plan: Optional[Plan] = None,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Take one step of ``tableau`` from ``(t0, y0)`` with ``f0 = f(t0, y0)`` already known.

    Stages with ``c == 1`` are evaluated at ``t1`` exactly (not ``t0 + h``), with time
    perturbation ``perturb_end`` (-1: just before ``t1``, for discontinuities). Returns the new
    state and the list of stage derivatives ``k`` (``k[0] is f0``). For FSAL tableaus the last
    stage is ``f(t1, y1)``.
    """
    if plan is None:
        plan = plan_for(tableau, y0.dtype, y0.device)
    ks = [f0]
    yi = y0
    for row, c_i, at_end in plan.stage_list:
        yi = combine_row(y0, ks, row, h)
        ks.append(evaluate(t1, yi, perturb_end) if at_end else evaluate(t0 + c_i * h, yi, 0))
    y1 = yi if tableau.fsal else combine_row(y0, ks, plan.solution, h)
    return y1, ks
