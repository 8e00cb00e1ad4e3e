"""neuralode: Neural ODEs in PyTorch.

Public names only; everything else is private and may change.
"""
from .errors import SolverError
from .events import Event, EventRecord, odeint_event
from .solution import Solution, SolveStats, Status
from .solve import odeint, odeint_dense, solve
from .tableaus import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, ButcherTableau
from . import compiled as _compiled  # noqa: F401,E402 - registers the torch.compile'd '<method>_compiled' twins

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "Event",
    "EventRecord",
    "odeint_dense",
    "solve",
    "Solution",
    "SolveStats",
    "Status",
    "SolverError",
    "ButcherTableau",
    "METHODS",
    "FIXED_METHODS",
    "ADAPTIVE_METHODS",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # odeint_adjoint lives with the gradient strategies; imported on first use.
    if name == "odeint_adjoint":
        from .adjoint import odeint_adjoint

        return odeint_adjoint
    raise AttributeError(f"module 'neuralode' has no attribute {name!r}")
