"""The contracts between a method and the integration loop.

A *method* (``method="dopri5"``) is a :class:`Method`: its name, order, option parser and how
it is driven. Most methods are driven by the one loop in :mod:`neuralode.integrate` through a
:class:`Stepper`, which takes single steps; a method that brings its own driver (the SciPy
bridge) gives ``integrate`` instead. :mod:`neuralode.methods` holds the registry.

The loop reports every accepted step as an :class:`AcceptedStep` to the observers of the solve
(:data:`StepObserver`): gradient strategies record steps with them, and event detection looks
for sign changes with them and may end the solve inside a step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .problem import Problem
    from .solution import Solution
    from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]
# evaluate(t, y, perturb): f(t, y), with t moved one ulp after (+1) or before (-1) it when perturb != 0.
Evaluate = Callable[[Scalar, torch.Tensor, int], torch.Tensor]
DenseRows = Tuple[Tuple[float, ...], ...]


class Stepper(Protocol):
    """One step of a method, as the loop drives it (made once per solve by ``Method.make_stepper``).

    ``step(evaluate, t0, h, t1, y0, f0, perturb_end) -> (y1, ks, nfe)`` advances ``y0`` from
    ``t0`` to ``t1 = t0 + h`` given ``f0 = f(t0, y0)`` (evaluated by the loop). ``t0``, ``h``,
    ``t1`` are floats, or 0-d tensors when gradients must reach the output times. Evaluations
    at ``t1`` use ``perturb_end`` (−1 just before a discontinuity). It returns the new state, the
    step's stage derivatives ``ks`` (``ks[0] is f0``), and how many evaluations it made beyond
    ``f0``. Steps must be differentiable by autograd (gradients flow through them).

    Dense output is data: ``rows`` are stage weights over ``ks`` (followed by ``f(t1, y1)`` when
    ``needs_f1``), ``y(t0 + θh) = y0 + h Σ_i w_i(θ) k_i`` with ``w_i(θ) = Σ_k rows[i][k] θ^(k+1)``.
    ``fsal``: ``ks[-1]`` is ``f(t1, y1)`` and serves as the next step's ``f0``.

    Adaptive steppers also give ``order`` (the controller's exponent base: error ∝ h^order) and
    ``error(ks, h) -> tensor``, the local error estimate for a float step ``h``, a fresh tensor
    the loop may modify, called under ``torch.no_grad()`` right after ``step`` (a stepper whose
    estimate is not a combination of ``ks``, e.g. an implicit method's, may return what its last
    ``step`` computed).

    A stepper may keep state between steps (a multistep history); ``replayable`` says whether a
    step depends only on ``(t0, h, y0, f0)``, so that checkpointed gradients can recompute it
    alone. (The adaptive loop retries rejected steps, so adaptive steppers must not commit state
    in ``step``.)
    """

    fsal: bool
    rows: DenseRows
    needs_f1: bool
    replayable: bool

    def step(self, evaluate: Evaluate, t0: Scalar, h: Scalar, t1: Scalar, y0: torch.Tensor, f0: torch.Tensor,
             perturb_end: int) -> Tuple[torch.Tensor, List[torch.Tensor], int]: ...


class AdaptiveStepper(Stepper, Protocol):
    """A :class:`Stepper` of an adaptive method: ``order`` and ``error(ks, h)`` (see above)."""

    order: int

    def error(self, ks: List[torch.Tensor], h: float) -> torch.Tensor: ...


@dataclass
class AcceptedStep:
    """One accepted step, as the loop reports it to observers.

    Times are internal (increasing; the user's negated when ``t`` decreases: see
    ``Problem.to_user_time``). ``t0``/``t1`` are floats; ``t0_graph``/``t1_graph`` the same
    times as graph-carrying tensors when gradients must reach the output times (else the
    floats). ``perturb_start`` is how ``f0`` was evaluated (+1: just after ``t0``, after a jump
    or with ``perturb=True``), ``perturb_end`` how evaluations at ``t1`` were. ``outputs`` lists
    the outputs the step wrote as ``(index, at_end)``: at_end means ``y1`` itself was taken,
    else the dense output. ``end_is_last``: ``t1`` is the last output time (``t1_graph`` is then
    ``t[-1]`` itself). ``index``: the step's number among the accepted ones (its grid interval
    for fixed-grid methods).

    ``interpolate(t)`` is the dense output on ``[t0, t1]`` (differentiable in ``t`` and in the
    step's inputs; it may evaluate ``f(t1, y1)`` once, counted in the solve's statistics).
    """

    t0: float
    t1: float
    y0: torch.Tensor
    y1: Optional[torch.Tensor]
    t0_graph: Scalar
    t1_graph: Scalar
    perturb_start: int
    perturb_end: int
    outputs: Tuple[Tuple[int, bool], ...]
    end_is_last: bool
    index: int
    interpolate: Optional[Callable[[Scalar], torch.Tensor]]

    def checkpoint(self) -> "AcceptedStep":
        """A copy without ``y1`` and the interpolant, which hold the step's stages: what a
        recorder keeps when memory matters (the step is replayed from ``y0``)."""
        return AcceptedStep(self.t0, self.t1, self.y0, None, self.t0_graph, self.t1_graph, self.perturb_start,
                            self.perturb_end, self.outputs, self.end_is_last, self.index, None)


# An observer sees every accepted step. It returns None to go on, or a time ``t_stop`` in
# ``(t0, t1]`` (internal, float) to end the solve there: the loop then writes the outputs up to
# ``t_stop`` (by dense output; the step's ``outputs`` are updated to those), leaves the rest
# NaN, and returns a successful Solution with ``t_reached = t_stop`` (user time). The observer
# gets the state there from ``step.interpolate``. Observers run in order; the first stop wins.
StepObserver = Callable[[AcceptedStep], Optional[float]]


@dataclass(frozen=True)
class Method:
    """A method of the package, as the registry (:mod:`neuralode.methods`) holds it.

    Attributes:
        name: ``method=`` in :func:`neuralode.odeint`.
        order: the order of the propagated solution.
        adaptive: the step size is chosen by ``rtol``/``atol`` (else a fixed grid).
        parse_options: ``(options dict, reversed, name) -> options object`` (see :mod:`neuralode.options`).
        option_names: the accepted option names (for messages).
        make_stepper: ``(problem) -> Stepper`` for methods the loop drives, else ``None``.
        integrate: ``(problem, observers) -> Solution`` for methods with their own driver.
        tableau: the explicit RK tableau, for the methods that are one.
        callbacks: the ``callback_*`` names on ``func`` that the method calls (others warn).
        differentiable: gradients can flow through a solve (the SciPy bridge cannot).
        reference: where the method comes from.
    """

    name: str
    order: int
    adaptive: bool
    parse_options: Callable[[Dict[str, Any], bool, str], Any]
    option_names: Tuple[str, ...]
    make_stepper: Optional[Callable[["Problem"], Stepper]] = None
    integrate: Optional[Callable[["Problem", Tuple[StepObserver, ...]], "Solution"]] = None
    tableau: Optional["ButcherTableau"] = None
    callbacks: Tuple[str, ...] = ("callback_step",)
    differentiable: bool = True
    reference: str = ""
