"""The exceptions users of the integrators see."""
from __future__ import annotations

from typing import Optional

from .solution import Status


class SolverError(RuntimeError):
    """A solve failed numerically: non-finite state, step-size underflow or step budget exhausted.

    Attributes:
        status: which failure (a :class:`neuralode.Status`).
        t: the time the solver had reached when it stopped (float).
        backward: True when the failure happened in the backward (adjoint) pass.
    """

    def __init__(self, status: Status, t: float, *, backward: bool = False, detail: Optional[str] = None) -> None:
        self.status = status
        self.t = t
        self.backward = backward
        where = "in the backward (adjoint) pass " if backward else ""
        message = f"ODE solve failed {where}at t={t:.10g}: {status.explanation}"
        if detail:
            message += f" ({detail})"
        message += f" {status.remedy}"
        super().__init__(message)
