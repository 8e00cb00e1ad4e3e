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

from .methods import RKStepper, register, rk_method
from .rk import Plan
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


class CompiledRKStepper(RKStepper):
    """A :class:`~neuralode.stepping.Stepper` whose steps run as one compiled graph.

    Same contract as :class:`~neuralode.methods.RKStepper`; ``error(ks, h)`` returns the
    estimate the compiled step computed (a fresh tensor each step).
    """

    def __init__(self, tableau: ButcherTableau, func, interp: str = "linear"):
        super().__init__(tableau, interp)
        self.func = func
        self._graph = _compiled_graph()
        self._err = None

    def step(self, evaluate, t0, h, t1, y0: torch.Tensor, f0: torch.Tensor, perturb_end: int
             ) -> Tuple[torch.Tensor, List[torch.Tensor], int]:
        if perturb_end or type(h) is not float:  # discontinuity or time-gradients: the eager step
            self._err = None
            return super().step(evaluate, t0, h, t1, y0, f0, perturb_end)
        tt = torch.tensor([t0, h], dtype=torch.float64 if y0.dtype != torch.float16 else torch.float32,
                          device=y0.device)
        y1, ks, err = self._graph(self.func, self.plan, self.fsal, self.tableau.adaptive, tt[0], tt[1], y0, f0)
        self._err = err
        return y1, list(ks), self._nfe

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor:
        err, self._err = self._err, None
        if err is None:
            return super().error(ks, h)
        return err.clone()


def compiled_method(tableau: ButcherTableau) -> Method:
    """The ``<name>_compiled`` twin of an explicit RK method."""
    return rk_method(tableau, name=tableau.name + COMPILED_SUFFIX,
                     stepper=lambda problem, interp: CompiledRKStepper(tableau, problem.func, interp),
                     reference=tableau.reference + " (steps compiled by torch.compile)")


for _name in BASES:
    register(compiled_method(TABLEAUS[_name]))
