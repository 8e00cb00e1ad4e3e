"""What a solve returns: the trajectory, its status and its statistics."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Union

import torch

TensorOrTuple = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class Status(enum.Enum):
    """How a solve ended. Each failure carries the explanation and the usual remedies."""

    SUCCESS = ("success", "the solve reached the last output time.", "")
    MAX_STEPS = (
        "max_steps_reached",
        "the step budget (option max_num_steps) was exhausted.",
        "Remedies: raise options['max_num_steps'], loosen rtol/atol, or use a fixed-step method "
        "(e.g. method='rk4' with options={'step_size': ...}).",
    )
    STEP_UNDERFLOW = (
        "step_size_underflow",
        "the step size underflowed (the problem may be stiff, or the solution may blow up here).",
        "Remedies: loosen rtol/atol, set options['min_step'] (steps of that size are always accepted), "
        "or use a fixed-step method. If the problem is stiff (fast decaying modes beside slow ones), use an "
        "implicit method: method='rodas5' (the fewest evaluations at equal error in benchmarks/bench_stiff.py), "
        "'kvaerno5' (tight tolerances) or 'rosenbrock23' (loose ones); with adjoint gradients the Rosenbrock "
        "methods need a Newton-based backward solve (adjoint_method='kvaerno5').",
    )
    NEWTON_FAILURE = (
        "newton_failure",
        "the implicit method's Newton iteration did not converge, even with a fresh Jacobian at the smallest "
        "step allowed.",
        "Remedies: raise options['max_iters'], loosen rtol/atol, check the field for points where it is not "
        "differentiable (its Jacobian comes from autograd), or use method='rosenbrock23' (no nonlinear solve).",
    )
    NONFINITE = (
        "nonfinite_state",
        "the state or its derivative became non-finite (NaN or inf).",
        "Remedies: check the vector field for overflow or division by zero, shorten the time span, "
        "tighten rtol/atol, or use a smaller fixed step.",
    )

    def __init__(self, code: str, explanation: str, remedy: str):
        self.code = code
        self.explanation = explanation
        self.remedy = remedy

    def __str__(self) -> str:
        return self.code


@dataclass
class SolveStats:
    """Counts of one solve. The backward fields are filled when a backward pass runs."""

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    final_step: Optional[float] = None
    nfe_backward: int = 0
    n_accepted_backward: int = 0
    n_rejected_backward: int = 0
    n_newton_iters: int = 0  # implicit methods: Newton iterations, Jacobian evaluations, LU factorisations
    n_jacobians: int = 0
    n_factorizations: int = 0
    n_newton_iters_backward: int = 0  # the same counts of an adjoint's backward solve
    n_jacobians_backward: int = 0
    n_factorizations_backward: int = 0

    @property
    def n_steps(self) -> int:
        """Attempted forward steps (accepted + rejected)."""
        return self.n_accepted + self.n_rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "n_accepted": self.n_accepted,
            "n_rejected": self.n_rejected,
            "final_step": self.final_step,
            "nfe_backward": self.nfe_backward,
            "n_accepted_backward": self.n_accepted_backward,
            "n_rejected_backward": self.n_rejected_backward,
            "n_newton_iters": self.n_newton_iters,
            "n_jacobians": self.n_jacobians,
            "n_factorizations": self.n_factorizations,
            "n_newton_iters_backward": self.n_newton_iters_backward,
            "n_jacobians_backward": self.n_jacobians_backward,
            "n_factorizations_backward": self.n_factorizations_backward,
        }


@dataclass
class Solution:
    """The result of :func:`neuralode.solve`.

    Attributes:
        ys: the states at the output times, stacked along a new leading dimension (a tuple of
            such tensors when ``y0`` was a tuple). After a failure returned with
            ``on_failure='return'``, the outputs past the failure are NaN.
        ts: the requested output times.
        stats: function evaluations and steps (:class:`SolveStats`).
        status: how the solve ended (:class:`Status`).
        t_reached: the time reached (the last output time on success).
        events: what the events did, when the solve had ``events=`` (a
            :class:`neuralode.events.EventRecord`), else ``None``.
    """

    ys: TensorOrTuple
    ts: torch.Tensor
    stats: SolveStats = field(default_factory=SolveStats)
    status: Status = Status.SUCCESS
    t_reached: Optional[float] = None
    events: Optional[Any] = None

    @property
    def success(self) -> bool:
        return self.status is Status.SUCCESS
