"""How a loss reaches ``y0``, ``t`` and the parameters: the gradient strategy of a solve.

A strategy is an object with ``solve(problem) -> Solution`` (internal form). ``Direct`` backprops
through the solver's operations; the adjoint and checkpointed strategies live in
:mod:`neuralode.adjoint`. Strings are shorthands: ``"direct"``, ``"adjoint"``,
``"adjoint-seminorm"``, ``"checkpoint"``.
"""
from __future__ import annotations

from typing import Any, Protocol

from .integrate import integrate
from .problem import Problem
from .solution import Solution


class GradientMethod(Protocol):
    """The contract of a gradient strategy."""

    def solve(self, problem: Problem) -> Solution:  # pragma: no cover - protocol
        ...


class Direct:
    """Autograd through every operation of the solver: exact gradients of the discretised solve;
    memory grows with the number of steps (the whole graph is kept)."""

    name = "direct"

    def solve(self, problem: Problem) -> Solution:
        return integrate(problem)

    def __repr__(self) -> str:
        return "Direct()"


def resolve_gradient(gradient: Any) -> GradientMethod:
    """A strategy object from a strategy or its string shorthand."""
    if isinstance(gradient, str):
        if gradient == "direct":
            return Direct()
        from . import adjoint  # the higher-level strategies; imported lazily

        factories = getattr(adjoint, "SHORTHANDS", {})
        if gradient in factories:
            return factories[gradient]()
        valid = ["direct", *factories]
        raise ValueError(f"unknown gradient {gradient!r}; valid: {valid} or a strategy object")
    if hasattr(gradient, "solve") and callable(gradient.solve):
        return gradient
    raise TypeError(f"gradient must be a string shorthand or a strategy object with solve(problem); got {gradient!r}")
