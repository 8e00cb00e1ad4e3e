"""Continuous normalizing flows: density estimation by the instantaneous change of variables.

A CNF (Chen et al. 2018, section 4; FFJORD, Grathwohl et al. 2019) transports data ``x`` at
``t = 0`` to a base point ``z = z(T)`` along ``dz/dt = f(t, z)``; the log-density changes as

    d log p(z(t)) / dt = -tr(∂f/∂z(t)),   so   log p(x) = log N(z(T); 0, I) + ∫_0^T tr(∂f/∂z) dt.

The solver integrates the augmented state ``(z, Δ)`` with ``dΔ/dt = -tr(∂f/∂z)`` forward from
``(x, 0)`` (FFJORD's convention: data at ``t = 0``, base at ``t = T``), so
``log p(x) = log N(z(T)) - Δ(T)``. Sampling solves the same ODE backwards from ``z ~ N(0, I)``
at ``t = T`` to ``t = 0``.

The trace ``tr(∂f/∂z)`` is computed either

* exactly (``trace='exact'``), with one backward pass per dimension — the right choice for low
  dimensions (cost grows with ``d``), or
* by Hutchinson's estimator (``trace='hutchinson'``, FFJORD): ``tr(J) = E[εᵀ J ε]`` with
  Rademacher or Gaussian ``ε``, one vector–Jacobian product per evaluation. ``ε`` is drawn
  once per solve and held fixed during it (forward and backward passes), which keeps the
  dynamics a deterministic ODE the adaptive solver can integrate.

RNODE regularisers (Finlay et al. 2020, "How to train your neural ODE") are integrated as extra
states alongside ``(z, Δ)``:

* kinetic energy ``∫_0^T ½‖f(t, z)‖² dt`` (``kinetic_weight``) — favours straight, constant-speed
  paths, which an adaptive solver integrates with fewer steps;
* Jacobian Frobenius norm ``∫_0^T ‖∂f/∂z‖_F² dt`` (``jacobian_weight``), estimated as
  ``‖εᵀ ∂f/∂z‖²`` reusing the Hutchinson noise; with ``trace='exact'`` the rows of the
  Jacobian are already at hand and the norm is computed exactly instead.

(RNODE's code averages over the ``d`` dimensions instead of summing; that is a factor ``d`` in
the weight.) The values of the last call are in :attr:`CNF.regularization` (batch means,
differentiable) and :attr:`CNF.regularization_loss` (their weighted sum, to add to the loss).

The per-sample trace assumes samples do not interact in ``f`` (no batch norm across the batch):
the exact trace sums ``∂f_i/∂z_i`` over the whole batch with one gradient per dimension.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from ..solution import SolveStats
from ..solve import solve
from .layers import ConcatLinear, ConcatSquashLinear
from .odeblock import SolveStatsMixin

__all__ = ["CNF", "CNFField", "divergence_exact", "divergence_hutchinson", "standard_normal_logprob"]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
LAYERS = {"concatsquash": ConcatSquashLinear, "concat": ConcatLinear}
ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "relu": nn.ReLU}
_LOG_2PI = math.log(2 * math.pi)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension: shape ``z.shape[:-1]``."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)


def divergence_exact(f: torch.Tensor, z: torch.Tensor, *, create_graph: bool = False
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact trace of ``∂f/∂z`` per sample, and the squared Frobenius norm of the Jacobian.

    ``f`` and ``z`` have shape ``(batch, d)`` and ``f`` must have been computed from ``z`` with
    samples independent of each other. Costs ``d`` backward passes. Returns two ``(batch,)``
    tensors: ``tr(∂f/∂z)`` and ``‖∂f/∂z‖_F²``.
    """
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    frob = torch.zeros_like(div)
    for i in range(z.shape[1]):
        row = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        div = div + row[:, i]
        frob = frob + row.pow(2).sum(1)
    return div, frob


def divergence_hutchinson(f: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, *, create_graph: bool = False
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson's estimate ``εᵀ (∂f/∂z) ε`` per sample, and ``‖εᵀ ∂f/∂z‖²``.

    One vector–Jacobian product. Unbiased for the trace (and, for ``E[εεᵀ] = I``, for the
    squared Frobenius norm) when ``ε`` has zero mean and identity covariance (Rademacher or
    standard Gaussian). Shapes as :func:`divergence_exact`; ``eps`` is ``(batch, d)``.
    """
    vjp = torch.autograd.grad(f, z, eps, create_graph=create_graph, retain_graph=True)[0]
    return (vjp * eps).sum(1), vjp.pow(2).sum(1)


def _mlp(dim: int, hidden: Sequence[int], layer: str, activation: str) -> nn.Module:
    return _TimeMLP(dim, hidden, LAYERS[layer], ACTIVATIONS[activation])


class _TimeMLP(nn.Module):
    """``f(t, z)``: time-conditioned layers with an activation between them (none at the end)."""

    def __init__(self, dim: int, hidden: Sequence[int], layer_cls: type, act_cls: type):
        super().__init__()
        widths = [dim, *hidden, dim]
        self.layers = nn.ModuleList(layer_cls(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(act_cls() for _ in hidden)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            z = layer(t, z)
            if i < len(self.acts):
                z = self.acts[i](z)
        return z


class CNFField(nn.Module):
    """The augmented dynamics ``(z, Δ[, E_kin][, E_jac]) -> (f, -tr, ½‖f‖², ‖∂f/∂z‖²)``.

    ``net(t, z)`` is the user's field. ``eps`` (the Hutchinson noise) is set by :class:`CNF`
    before each solve. ``kinetic`` / ``jacobian`` say which regulariser states are present.
    """

    def __init__(self, net: nn.Module, trace: str, kinetic: bool = False, jacobian: bool = False):
        super().__init__()
        self.net = net
        self.trace = trace
        self.kinetic = kinetic
        self.jacobian = jacobian
        self.eps: Optional[torch.Tensor] = None

    def forward(self, t: torch.Tensor, state: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        z = state[0]
        create_graph = torch.is_grad_enabled()  # the caller wants gradients through the field
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.net(t, z)
            if self.trace == "exact":
                div, frob = divergence_exact(f, z, create_graph=create_graph)
            else:
                if self.eps is None:
                    raise RuntimeError("CNFField.eps is not set: the Hutchinson noise is drawn by CNF before a solve")
                div, frob = divergence_hutchinson(f, z, self.eps, create_graph=create_graph)
        if not create_graph:
            f, div, frob = f.detach(), div.detach(), frob.detach()
        out = [f, -div]
        if self.kinetic:
            out.append(0.5 * f.pow(2).sum(1))
        if self.jacobian:
            out.append(frob)
        return tuple(out)


class _StateOnly(nn.Module):
    """The plain field on ``z`` alone (sampling needs no log-density)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(t, z)


class CNF(SolveStatsMixin, nn.Module):
    """A continuous normalizing flow on ``R^d`` with a standard normal base distribution.

    Args:
        dim: data dimension ``d``.
        hidden: widths of the hidden layers of the default field (FFJORD's toy field is
            ``(64, 64, 64)``; the seed study uses two 64-unit tanh layers, the default).
        net: a custom field ``net(t, z) -> dz/dt`` (an ``nn.Module``, samples independent);
            replaces the default MLP (``hidden``/``layer``/``activation`` are then unused).
        layer: ``'concatsquash'`` (FFJORD's ``ConcatSquashLinear``) or ``'concat'``.
        activation: ``'tanh'``, ``'softplus'``, ``'elu'`` or ``'relu'`` (the trace of a ReLU
            field's Jacobian is piecewise constant; prefer smooth activations).
        T: the flow's end time (data at ``t = 0``, base at ``t = T``).
        trace: ``'exact'`` (``d`` backward passes per evaluation) or ``'hutchinson'``.
        noise: Hutchinson noise, ``'rademacher'`` (lower variance) or ``'gaussian'``.
        kinetic_weight, jacobian_weight: RNODE weights ``λ_K``, ``λ_J`` (``>= 0``). A
            regulariser is integrated only when its weight is positive or ``track_regularizers``.
        track_regularizers: integrate both regulariser states even with zero weights (to
            measure them); note that extra states also enter the solver's error control.
        method, rtol, atol, options, gradient: passed to :func:`neuralode.solve` (FFJORD: dopri5,
            ``rtol = atol = 1e-5``, adjoint gradients).

    After each call, :attr:`stats` holds the solve's :class:`~neuralode.SolveStats` (backward
    fields filled once ``backward()`` has run with an adjoint strategy), :attr:`nfe` /
    :attr:`nfe_backward` its function evaluations, and :attr:`regularization` the regulariser
    values (batch means) of a :meth:`log_prob` call.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: Sequence[int] = (64, 64),
        *,
        net: Optional[nn.Module] = None,
        layer: str = "concatsquash",
        activation: str = "tanh",
        T: float = 1.0,
        trace: str = "exact",
        noise: str = "rademacher",
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        track_regularizers: bool = False,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: Optional[Dict[str, Any]] = None,
        gradient: Any = "adjoint",
    ):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer; got {dim!r}")
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}; got {trace!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}; got {noise!r}")
        for name, w in (("kinetic_weight", kinetic_weight), ("jacobian_weight", jacobian_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {w!r}")
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not (math.isfinite(T) and T > 0):
            raise ValueError(f"T must be a finite number > 0; got {T!r}")
        if net is None:
            if layer not in LAYERS:
                raise ValueError(f"layer must be one of {list(LAYERS)}; got {layer!r}")
            if activation not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {list(ACTIVATIONS)}; got {activation!r}")
            hidden = tuple(hidden)
            if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
                raise ValueError(f"hidden must be a sequence of positive integers; got {hidden!r}")
            net = _mlp(dim, hidden, layer, activation)
        elif not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module computing net(t, z); got {type(net).__name__}")
        self.dim = dim
        self.T = float(T)
        self.noise = noise
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.track_regularizers = bool(track_regularizers)
        self.field = CNFField(net, trace)
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.stats: Optional[SolveStats] = None
        self.regularization: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ settings

    @property
    def trace(self) -> str:
        return self.field.trace

    @property
    def net(self) -> nn.Module:
        """The field ``f(t, z)``."""
        return self.field.net

    @property
    def regularization_loss(self) -> torch.Tensor:
        """``λ_K · kinetic + λ_J · jacobian`` of the last :meth:`log_prob` call (0 if none)."""
        total = torch.zeros(())
        for name, weight in (("kinetic", self.kinetic_weight), ("jacobian", self.jacobian_weight)):
            if weight > 0 and name in self.regularization:
                total = total.to(self.regularization[name]) + weight * self.regularization[name]
        return total

    def _draw_noise(self, like: torch.Tensor, generator: Optional[torch.Generator]) -> Optional[torch.Tensor]:
        if self.field.trace == "exact":
            return None  # the exact trace and Frobenius norm need no noise
        if self.noise == "rademacher":
            bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
            return bits.to(like.dtype) * 2 - 1
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def _check_points(self, name: str, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape (batch, {self.dim}); got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}); got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point; got dtype {x.dtype}")

    def _solve(self, state, times, generator=None):
        self.field.kinetic = self.kinetic_weight > 0 or self.track_regularizers
        self.field.jacobian = self.jacobian_weight > 0 or self.track_regularizers
        self.field.eps = self._draw_noise(state[0], generator)
        if self.field.kinetic:
            state = state + (torch.zeros_like(state[1]),)
        if self.field.jacobian:
            state = state + (torch.zeros_like(state[1]),)
        solution = solve(self.field, state, times, method=self.method, rtol=self.rtol, atol=self.atol,
                         options=self.options, gradient=self.gradient)
        self.stats = solution.stats
        return solution.ys

    # ------------------------------------------------------------------ density

    def to_base(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Transport data ``x`` (``(batch, d)``) to the base: ``(z(T), Δ(T))``.

        ``log p(x) = log N(z(T)) - Δ(T)``. Also sets :attr:`regularization` (batch means of the
        integrated regulariser states that are switched on) and :attr:`stats`.
        ``generator`` draws the Hutchinson noise (default: torch's global RNG).
        """
        self._check_points("x", x)
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        times = torch.tensor([0.0, self.T], dtype=x.dtype, device=x.device)
        ys = self._solve((x, zero), times, generator=generator)
        final = [y[-1] for y in ys]
        reg: Dict[str, torch.Tensor] = {}
        k = 2
        if self.field.kinetic:
            reg["kinetic"] = final[k].mean()
            k += 1
        if self.field.jacobian:
            reg["jacobian"] = final[k].mean()
        self.regularization = reg
        return final[0], final[1]

    def log_prob(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``log p(x)`` in nats per sample, shape ``(batch,)``.

        With ``trace='hutchinson'`` it is an unbiased estimate (one noise draw per call); exact
        otherwise (up to the solver's tolerance).
        """
        z, delta = self.to_base(x, generator=generator)
        return standard_normal_logprob(z) - delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` (see :meth:`log_prob`)."""
        return self.log_prob(x)

    # ------------------------------------------------------------------ sampling

    def from_base(self, z: torch.Tensor, times: Optional[Sequence[float]] = None) -> torch.Tensor:
        """Transport base points ``z`` (``(batch, d)``) from ``t = T`` back to data at ``t = 0``.

        With ``times`` (decreasing, from ``T`` towards 0), returns the whole path
        ``(len(times), batch, d)`` instead: ``times=torch.linspace(cnf.T, 0, 5)`` shows noise
        becoming data. Only ``z`` is integrated (no trace): sampling needs no density.
        """
        self._check_points("z", z)
        if times is None:
            times_t = torch.tensor([self.T, 0.0], dtype=z.dtype, device=z.device)
        else:
            times_t = torch.as_tensor(times, dtype=z.dtype, device=z.device)
            if times_t.dim() != 1 or times_t.numel() < 2 or abs(float(times_t[0]) - self.T) > 1e-6 * self.T:
                raise ValueError(f"times must be a 1-D sequence of at least 2 times starting at T={self.T} "
                                 f"(decreasing towards 0); got {times!r}")
        solution = solve(_StateOnly(self.field.net), z, times_t, method=self.method, rtol=self.rtol,
                         atol=self.atol, options=self.options, gradient=self.gradient)
        self.stats = solution.stats
        ys = cast(torch.Tensor, solution.ys)  # a tensor state gives tensor states
        return ys if times is not None else ys[-1]

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Any = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``n`` samples ``(n, d)``: base draws ``z ~ N(0, I)`` solved backwards from ``T`` to 0."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        p = next(self.parameters(), None)
        device = device if device is not None else (p.device if p is not None else None)
        dtype = dtype if dtype is not None else (p.dtype if p is not None else torch.get_default_dtype())
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.from_base(z)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, T={self.T}, trace={self.trace!r}, noise={self.noise!r}, "
                f"kinetic_weight={self.kinetic_weight}, jacobian_weight={self.jacobian_weight}, "
                f"method={self.method!r}, rtol={self.rtol}, atol={self.atol}, gradient={self.gradient!r}")
