"""A ``torch.compile`` fast path: each Runge–Kutta step, with its error estimate, as one graph.

The integration loop is Python control flow on data-dependent values (accept or reject, how
many steps), which a compiler cannot capture as one graph; the step itself is a fixed
dataflow of ``s`` field evaluations and stage combinations. :class:`CompiledRKStepper` compiles
that dataflow — every stage, the new solution and the embedded error estimate — into one graph
with the step's start ``t0`` and size ``h`` as 0-d tensor inputs, so that new step sizes reuse
the graph instead of recompiling (one compilation per field, tableau, dtype, device and state
shape). The loop, the controller and the dense output stay as they are.

Use it by name: ``method="dopri5_compiled"`` (and ``tsit5_``, ``bosh3_``, ``dopri8_``, ``rk4_``,
``midpoint_``, ``euler_`` + ``compiled``) gives the same results as the plain method up to
floating-point reassociation. It pays off when the solver's own per-step operations are a
noticeable part of the cost (small fields, many steps, GPUs where each kernel launch costs);
the first solve pays the compilation (seconds). Steps at a discontinuity (``jump_t``) or with
time-gradients (``t.requires_grad``) take the eager path.

Separately, the integration loop (:func:`neuralode.integrate.integrate`) is excluded from
``torch.compile`` tracing: inside a compiled model the solve runs eagerly (a graph break), the
rest of the model compiled. Traced, the adaptive loop went wrong (an MLP solve that takes 3
steps eagerly ended in a step-size underflow after 104 rejected steps, torch 2.14.1).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from .interpolate import dense_rows, needs_end_derivative
from .methods import register
from .options import ADAPTIVE_OPTIONS, FIXED_OPTIONS, parse_adaptive, parse_fixed
from .rk import Plan, combine_row, plan_for, rk_step
from .stepping import Method
from .tableaus import METHODS as TABLEAUS, ButcherTableau

COMPILED_SUFFIX = "_compiled"
BASES = ("euler", "midpoint", "rk4", "bosh3", "dopri5", "tsit5", "dopri8")


def _terms_sum(y0, ks, terms, h):
    acc = None
    for j, w in terms:
        acc = ks[j] * w if acc is None else acc + ks[j] * w
    return y0 if acc is None else y0 + acc * h


def _step_graph(func, plan: Plan, fsal: bool, adaptive: bool, t0: torch.Tensor, h: torch.Tensor,
                y0: torch.Tensor, f0: torch.Tensor):
    """Stages, solution and (adaptive) error estimate of one step; ``t0``, ``h`` are 0-d tensors."""
    hh = h.to(y0.dtype)
    ks = [f0]
    yi = y0
    for row, c_i, at_end in plan.stage_list:
        yi = _terms_sum(y0, ks, row.terms, hh)
        ks.append(func((t0 + h).to(y0.dtype) if at_end else (t0 + c_i * h).to(y0.dtype), yi))
    y1 = yi if fsal else _terms_sum(y0, ks, plan.solution.terms, hh)
    err = _terms_sum(torch.zeros_like(y0), ks, plan.error.terms, hh).detach() if adaptive else None
    return y1, ks, err


_CONFIG: Dict[str, object] = {"backend": "inductor", "mode": None}
_COMPILED: Dict[str, object] = {}


def set_backend(backend="inductor", mode=None) -> None:
    """The ``torch.compile`` backend (a name or a callable) and mode of the compiled steps.

    ``'inductor'`` (the default) generates fused kernels; ``'aot_eager'`` only captures the
    graph (fast to compile, for tests). Later solves compile afresh with the new setting.
    """
    _CONFIG["backend"], _CONFIG["mode"] = backend, mode
    _COMPILED.clear()


def _compiled_graph():
    fn = _COMPILED.get("step")
    if fn is None:
        fn = torch.compile(_step_graph, dynamic=False, backend=_CONFIG["backend"], mode=_CONFIG["mode"])
        _COMPILED["step"] = fn
    return fn


class CompiledRKStepper:
    """A :class:`~neuralode.stepping.Stepper` whose steps run as one compiled graph.

    Same contract as :class:`~neuralode.methods.RKStepper`; ``error(ks, h)`` returns the
    estimate the compiled step computed (a fresh tensor each step).
    """

    replayable = True

    def __init__(self, tableau: ButcherTableau, func, interp: str = "linear"):
        self.tableau = tableau
        self.func = func
        self.plan = plan_for(tableau)
        self.fsal = tableau.fsal
        self.order = tableau.controller_order
        self.rows = dense_rows(tableau, interp)
        self.needs_f1 = needs_end_derivative(self.rows, tableau)
        self._nfe = tableau.n_stages - 1
        self._graph = _compiled_graph()
        self._err = None

    def step(self, evaluate, t0, h, t1, y0: torch.Tensor, f0: torch.Tensor, perturb_end: int
             ) -> Tuple[torch.Tensor, List[torch.Tensor], int]:
        if perturb_end or type(h) is not float:  # discontinuity or time-gradients: the eager step
            y1, ks = rk_step(evaluate, self.tableau, t0, h, t1, y0, f0, perturb_end, self.plan)
            self._err = None
            return y1, ks, self._nfe
        tt = torch.tensor([t0, h], dtype=torch.float64 if y0.dtype != torch.float16 else torch.float32,
                          device=y0.device)
        y1, ks, err = self._graph(self.func, self.plan, self.fsal, self.tableau.adaptive, tt[0], tt[1], y0, f0)
        self._err = err
        return y1, list(ks), self._nfe

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        err, self._err = self._err, None
        if err is None:
            return combine_row(None, ks, self.plan.error, h)
        return err.clone()


def compiled_method(tableau: ButcherTableau) -> Method:
    """The ``<name>_compiled`` twin of an explicit RK method."""
    name = tableau.name + COMPILED_SUFFIX
    if tableau.adaptive:
        return Method(name, tableau.order, True, parse_adaptive, ADAPTIVE_OPTIONS,
                      make_stepper=lambda problem: CompiledRKStepper(tableau, problem.func),
                      tableau=tableau, callbacks=("callback_step", "callback_accept_step", "callback_reject_step"),
                      reference=tableau.reference + " (steps compiled by torch.compile)")
    return Method(name, tableau.order, False, parse_fixed, FIXED_OPTIONS,
                  make_stepper=lambda problem: CompiledRKStepper(tableau, problem.func, problem.options.interp),
                  tableau=tableau, reference=tableau.reference + " (steps compiled by torch.compile)")


for _name in BASES:
    register(compiled_method(TABLEAUS[_name]))
