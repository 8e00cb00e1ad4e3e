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

Fixed-step solves over a known grid are captured *whole* by :class:`FixedGridSolve`: the grid
and the output placement are worked out on the host once, and every step, stage and output
interpolation of the solve becomes one graph (the loop unrolled at trace time), with the grid
times and the output fractions as tensor inputs (a new grid with the same number of steps and
the same output placement reuses the graph). No host synchronisation happens inside; with
``mode="reduce-overhead"`` on a GPU the graph is replayed as a CUDA graph.

Separately, the integration loop (:func:`neuralode.integrate.integrate`) is excluded from
``torch.compile`` tracing: inside a compiled model the solve runs eagerly (a graph break), the
rest of the model compiled. Traced, the adaptive loop went wrong (an MLP solve that takes 3
steps eagerly ended in a step-size underflow after 104 rejected steps, torch 2.14.1).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .control import fixed_grid
from .interpolate import DenseRows, dense_rows, needs_end_derivative
from .methods import RKStepper, register, rk_method
from .rk import Plan, plan_for
from .stepping import Method
from .tableaus import ADAPTIVE_METHODS, METHODS as TABLEAUS, ButcherTableau

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


# --------------------------------------------------------------------------- whole fixed-grid solves

Placement = Tuple[Tuple[int, ...], ...]  # per step: the outputs it writes, as ±(k + 1) (negative: at its end)


def _dense_graph(rows: DenseRows, y0: torch.Tensor, ks: List[torch.Tensor], h: torch.Tensor,
                 theta: torch.Tensor) -> torch.Tensor:
    """``y0 + h Σ_i w_i(θ) k_i`` with the weights formed as :func:`neuralode.interpolate.weights` does."""
    powers = [theta]
    for _ in range(len(rows[0]) - 1):
        powers.append(powers[-1] * theta)
    acc = None
    for row, k in zip(rows, ks):
        w = None
        for p, x in zip(powers, row):
            if x != 0:
                w = p * x if w is None else w + p * x
        if w is not None:
            term = k * w.to(y0.dtype)
            acc = term if acc is None else acc + term
    return y0 if acc is None else y0 + acc * h.to(y0.dtype)


def _unrolled_solve(func: Callable[..., Any], plan: Plan, fsal: bool, rows: DenseRows, needs_f1: bool,
                    placement: Placement, y0: torch.Tensor, grid: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Every step of a fixed-grid solve, unrolled: ``(T, *y0.shape)`` states at the output times."""
    dtype = y0.dtype
    n_steps = len(placement)
    outputs: List[Optional[torch.Tensor]] = [None] * (1 + sum(len(p) for p in placement))
    outputs[0] = y0
    y, f0 = y0, func(grid[0].to(dtype), y0)
    for n in range(n_steps):
        t0, h = grid[n], grid[n + 1] - grid[n]
        y1, ks, _ = _step_graph(func, plan, fsal, False, t0, h, y, f0)
        placed = placement[n]
        f1: Optional[torch.Tensor] = ks[-1] if fsal else None
        if f1 is None and (n < n_steps - 1 or (needs_f1 and any(code > 0 for code in placed))):
            f1 = func(grid[n + 1].to(dtype), y1)
        for code in placed:
            k = abs(code) - 1
            if code < 0:
                outputs[k] = y1
            else:
                ks_ext = ks + [f1] if needs_f1 and f1 is not None else ks
                outputs[k] = _dense_graph(rows, y, ks_ext, h, thetas[k])
        y = y1
        if f1 is not None:
            f0 = f1
    return torch.stack([o for o in outputs if o is not None])


class FixedGridSolve:
    """A fixed-step solve over a known grid, captured whole as one ``torch.compile`` graph.

    Equal (to floating-point reassociation) to ``neuralode.odeint(func, y0, t, method=method,
    options={"step_size": step_size, "interp": interp})``: the same grid
    (``t[0] + n·step_size``, ending at ``t[-1]``; the output times themselves without
    ``step_size``), outputs on grid nodes taken exactly and the others from the method's
    interpolant. Gradients flow to ``y0`` and the field's parameters by backprop through the
    graph (not to ``t``, which is fixed at construction).

    Args:
        func: the field ``func(t, y)`` (``t`` a 0-d tensor).
        t: 1-D strictly increasing output times.
        method: a fixed-step explicit method (``'euler'``, ``'midpoint'``, ``'heun2'``, ``'heun3'``, ``'rk4'``).
        step_size: the grid spacing (default: the output times are the grid).
        interp: ``'linear'`` or ``'cubic'`` (Hermite) for outputs between grid nodes.
        backend, mode: ``torch.compile``'s (default ``'inductor'``; ``mode='reduce-overhead'`` uses CUDA graphs).

    Call it with ``y0`` to get the states ``(len(t), *y0.shape)``. The graph is specialised to the
    number of steps, the output placement, ``y0``'s shape, dtype and device; ``retarget(t)``
    moves the grid (no recompilation when the structure is unchanged). Compile time grows with
    the number of steps (the loop is unrolled): a few hundred steps compile in tens of seconds.
    """

    def __init__(self, func: Callable[..., Any], t: torch.Tensor, method: str = "rk4",
                 step_size: Optional[float] = None, interp: str = "linear", backend: Any = "inductor",
                 mode: Optional[str] = None) -> None:
        if method not in TABLEAUS or method in ADAPTIVE_METHODS:
            fixed = [m for m in TABLEAUS if m not in ADAPTIVE_METHODS]
            raise ValueError(f"FixedGridSolve needs a fixed-step method; got {method!r}; valid: {fixed}")
        if interp not in ("linear", "cubic"):
            raise ValueError(f"interp must be 'linear' or 'cubic'; got {interp!r}")
        if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                      or not step_size > 0 or not math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number or None; got {step_size!r}")
        tableau = TABLEAUS[method]
        self.func = func
        self.method, self.step_size = method, step_size
        self.plan, self.fsal = plan_for(tableau), tableau.fsal
        self.rows = dense_rows(tableau, interp)
        self.needs_f1 = needs_end_derivative(self.rows, tableau)
        self._graph = torch.compile(_unrolled_solve, dynamic=False, backend=backend, mode=mode)
        self.retarget(t)

    def retarget(self, t: torch.Tensor) -> None:
        """Solve over new output times ``t`` from now on."""
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 2 or not t.is_floating_point():
            raise ValueError(f"t must be a 1-D floating tensor of at least two times; got {t!r}")
        ts = t.detach().double()
        if not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("t must be strictly increasing for FixedGridSolve")
        grid = fixed_grid(ts, self.step_size)
        grid_f: List[float] = grid.tolist()
        t_f: List[float] = ts.tolist()
        placement: List[Tuple[int, ...]] = []
        thetas = [0.0] * len(t_f)
        i = 1
        for n in range(len(grid_f) - 1):
            t0, t1 = grid_f[n], grid_f[n + 1]
            placed = []
            while i < len(t_f) and t_f[i] <= t1:
                if t_f[i] == t1:
                    placed.append(-(i + 1))
                else:
                    placed.append(i + 1)
                    thetas[i] = (t_f[i] - t0) / (t1 - t0)
                i += 1
            placement.append(tuple(placed))
        self.placement: Placement = tuple(placement)
        self.grid = grid
        self.thetas = torch.tensor(thetas, dtype=torch.float64)
        self.t = t

    @property
    def n_steps(self) -> int:
        return len(self.placement)

    def __call__(self, y0: torch.Tensor) -> torch.Tensor:
        if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
            raise TypeError(f"y0 must be a floating tensor; got {type(y0).__name__}")
        device = y0.device
        grid = self.grid.to(device)
        thetas = self.thetas.to(device)
        out: torch.Tensor = self._graph(self.func, self.plan, self.fsal, self.rows, self.needs_f1, self.placement,
                                        y0, grid, thetas)
        return out
