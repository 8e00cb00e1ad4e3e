"""The ODE block: a continuous-depth layer mapping z(t0) to z(t1) by solving dz/dt = f(t, z)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union, cast

import torch
from torch import nn

from ..solution import SolveStats
from ..solve import solve


class SolveStatsMixin:
    """``nfe``/``nfe_backward`` of the last solve, for modules that keep it in ``self.stats``."""

    stats: Optional[SolveStats]

    @property
    def nfe(self) -> int:
        """Forward function evaluations of the last call (0 before any call)."""
        return self.stats.nfe if self.stats is not None else 0

    @property
    def nfe_backward(self) -> int:
        """Backward function evaluations of the last call's backward pass (0 if none ran)."""
        return self.stats.nfe_backward if self.stats is not None else 0


class ODEBlock(SolveStatsMixin, nn.Module):
    """``z(t0) -> z(t1)`` (or the trajectory at given times) for the field ``func(t, z)``.

    Args:
        func: an ``nn.Module`` computing ``dz/dt = func(t, z)`` (``t`` a 0-d tensor).
        t: the integration interval ``(t0, t1)``, or any increasing/decreasing times whose
            last entry is the output time.
        method, rtol, atol, options: passed to :func:`neuralode.solve`.
        gradient: ``'adjoint'`` (O(1) memory, the default as in Chen et al. 2018),
            ``'adjoint-seminorm'``, ``'direct'``, ``'checkpoint'`` or a strategy object.

    After each call ``block.stats`` holds the solve's :class:`~neuralode.SolveStats`; its
    backward fields are filled once ``loss.backward()`` has run, so training loops can log
    forward and backward NFE (``block.nfe``, ``block.nfe_backward``).
    """

    t: torch.Tensor  # a buffer: the default output times

    def __init__(
        self,
        func: nn.Module,
        t: Union[Sequence[float], torch.Tensor] = (0.0, 1.0),
        *,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: Optional[Dict[str, Any]] = None,
        gradient: Any = "adjoint",
    ):
        super().__init__()
        self.func = func
        self.register_buffer("t", torch.as_tensor(t, dtype=torch.get_default_dtype()).reshape(-1), persistent=False)
        if self.t.numel() < 2:
            raise ValueError(f"t must hold at least a start and an end time; got {t!r}")
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.stats: Optional[SolveStats] = None

    def forward(self, z0: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``z(t1)`` from ``z0``; with ``t`` given, the states at all times in ``t`` (leading dim)."""
        times = self.t if t is None else torch.as_tensor(t)
        times = times.to(device=z0.device, dtype=z0.dtype)
        solution = solve(self.func, z0, times, method=self.method, rtol=self.rtol, atol=self.atol,
                         options=self.options, gradient=self.gradient)
        self.stats = solution.stats
        ys = cast(torch.Tensor, solution.ys)  # z0 is a tensor, so are the states
        return ys if t is not None else ys[-1]

    def extra_repr(self) -> str:
        return (f"t={self.t.tolist()}, method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
                f"gradient={self.gradient!r}")
