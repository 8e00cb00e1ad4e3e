"""The nonlinear solve of implicit methods: Jacobians from autograd, Newton matrices, Newton's iteration.

An implicit step solves ``G(Z) = Z - (C ⊗ I) F(Z) = 0`` for its stage values, where ``C = hA``
(the whole stage matrix for fully implicit methods, one diagonal entry ``hγ`` per stage for
diagonally implicit ones) and ``F`` stacks the field at the stages. Newton's iteration uses
the matrix ``M = I - C ⊗ J`` with ``J = ∂f/∂y`` taken at the step's start and kept across
steps while the iteration converges fast (a *simplified* Newton iteration; Hairer & Wanner,
Solving ODEs II, IV.8).

The Jacobian comes from autograd, in one of three forms (:data:`JACOBIAN_MODES`):

* ``"dense"`` — the full ``n × n`` matrix, one batched vector-Jacobian product; ``M`` is
  LU-factorised once per step size (``torch.linalg.lu_factor``).
* ``"batched"`` — for a state ``[B, ...]`` whose samples evolve independently (sample ``i``'s
  derivative depends only on sample ``i``): ``B`` per-sample ``m × m`` Jacobians, from ``m``
  vector-Jacobian products with one-hot cotangents repeated over the batch (batched into one
  backward call), and a batched LU. Cost and memory grow like ``B m²`` instead of ``(B m)²``.
* ``"krylov"`` — matrix-free Newton–Krylov for large states (convolutional fields): ``M`` is
  never formed; GMRES solves with it using Jacobian-vector products.

``"auto"`` (the default) picks ``batched`` when a probe shows the samples of a ``[B, ...]``
state to be independent, ``dense`` for states up to :data:`DENSE_LIMIT` elements and
``krylov`` beyond.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

JACOBIAN_MODES = ("auto", "dense", "batched", "krylov")
DENSE_LIMIT = 1024
BATCHED_LIMIT = 256  # largest per-sample size handled with per-sample matrices

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- linear operators

class Factor:
    """A factorised (or otherwise solvable) Newton matrix ``I - C ⊗ J``: ``solve(rhs)`` with
    ``rhs`` of shape ``[s, N]`` (stage-major, ``N`` the flat state size)."""

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class MatrixOp:
    """``J`` as ``B`` blocks ``[B, m, m]`` on a flat state of size ``B·m`` (``B = 1``: dense)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def scaled(self, sign: float = 1.0, transpose: bool = False) -> "MatrixOp":
        j = self.blocks.transpose(-1, -2) if transpose else self.blocks
        return MatrixOp(j * sign if sign != 1.0 else j)

    def factor(self, coef: torch.Tensor) -> Factor:
        return _LUFactor(self.blocks, coef)


class _LUFactor(Factor):
    def __init__(self, blocks: torch.Tensor, coef: torch.Tensor):
        B, m, _ = blocks.shape
        s = coef.shape[0]
        self.B, self.m, self.s = B, m, s
        c = coef.to(blocks.dtype)
        kron = (c[None, :, None, :, None] * blocks[:, None, :, None, :]).reshape(B, s * m, s * m)
        eye = torch.eye(s * m, dtype=blocks.dtype, device=blocks.device)
        self.lu, self.pivots = torch.linalg.lu_factor(eye - kron)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        s, B, m = self.s, self.B, self.m
        r = rhs.reshape(s, B, m).permute(1, 0, 2).reshape(B, s * m, 1)
        x = torch.linalg.lu_solve(self.lu, self.pivots, r)
        return x.reshape(B, s, m).permute(1, 0, 2).reshape(s, B * m)


class KrylovOp:
    """``J`` through its products: ``matvec(v) = J v`` on flat vectors (never formed)."""

    def __init__(self, matvec: Callable[[torch.Tensor], torch.Tensor],
                 vecmat: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, restart: int = 30,
                 max_restarts: int = 2, rtol: float = 1e-6):
        self.matvec, self.vecmat = matvec, vecmat
        self.restart, self.max_restarts, self.rtol = restart, max_restarts, rtol

    def scaled(self, sign: float = 1.0, transpose: bool = False) -> "KrylovOp":
        base = self.vecmat if transpose else self.matvec
        if base is None:
            raise ValueError("a transposed Krylov operator needs vector-Jacobian products")
        return KrylovOp(lambda v: sign * base(v), None, self.restart, self.max_restarts, self.rtol)

    def factor(self, coef: torch.Tensor) -> Factor:
        return _KrylovFactor(self, coef)


class _KrylovFactor(Factor):
    def __init__(self, op: KrylovOp, coef: torch.Tensor):
        self.op, self.coef = op, coef.tolist()

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``(I - C ⊗ J) v`` for ``v`` of shape ``[s, N]``."""
        jv = [self.op.matvec(v[j]) for j in range(v.shape[0])]
        out = v.clone()
        for i, row in enumerate(self.coef):
            for j, c in enumerate(row):
                if c != 0:
                    out[i] -= c * jv[j]
        return out

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        shape = rhs.shape
        x = gmres(lambda v: self.apply(v.reshape(shape)).reshape(-1), rhs.reshape(-1), self.op.restart,
                  self.op.max_restarts, self.op.rtol)
        return x.reshape(shape)


class IdentityOp:
    """``J = 0`` (channels whose derivative does not depend on the state, e.g. quadratures)."""

    def factor(self, coef: torch.Tensor) -> Factor:
        return _IdentityFactor()


class _IdentityFactor(Factor):
    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        return rhs


class BlockOp:
    """A block-diagonal ``J``: each ``(size, op)`` acts on its own slice of the flat state."""

    def __init__(self, blocks: Sequence[Tuple[int, Any]]):
        self.blocks = list(blocks)

    def factor(self, coef: torch.Tensor) -> Factor:
        return _BlockFactor([(size, op.factor(coef)) for size, op in self.blocks])


class _BlockFactor(Factor):
    def __init__(self, parts: List[Tuple[int, Factor]]):
        self.parts = parts

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        pieces = rhs.split([size for size, _ in self.parts], dim=1)
        return torch.cat([f.solve(p) for p, (_, f) in zip(pieces, self.parts)], dim=1)


def gmres(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, restart: int = 30,
          max_restarts: int = 2, rtol: float = 1e-6) -> torch.Tensor:
    """Restarted GMRES (Saad & Schultz 1986) for ``apply(x) = b``; returns the best iterate found.

    Never raises on non-convergence: the Newton iteration around it notices a poor solve as
    slow convergence and shrinks the step.
    """
    x = torch.zeros_like(b)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0 or not math.isfinite(b_norm):
        return x
    for _ in range(max_restarts + 1):
        r = b - apply(x) if x.any() else b.clone()
        beta = float(torch.linalg.vector_norm(r))
        if beta <= rtol * b_norm:
            break
        V = [r / beta]
        H = torch.zeros(restart + 1, restart, dtype=b.dtype, device=b.device)
        k_used = 0
        for k in range(restart):
            w = apply(V[k])
            for j in range(k + 1):  # modified Gram–Schmidt
                H[j, k] = torch.dot(w, V[j])
                w = w - H[j, k] * V[j]
            H[k + 1, k] = torch.linalg.vector_norm(w)
            k_used = k + 1
            e1 = torch.zeros(k_used + 1, dtype=b.dtype, device=b.device)
            e1[0] = beta
            y = torch.linalg.lstsq(H[:k_used + 1, :k_used], e1[:, None]).solution[:, 0]
            res = float(torch.linalg.vector_norm(H[:k_used + 1, :k_used] @ y - e1))
            if res <= rtol * b_norm or float(H[k + 1, k]) <= 1e-14 * beta:
                break
            V.append(w / H[k + 1, k])
        x = x + torch.stack(V[:k_used], dim=1) @ y
        if res <= rtol * b_norm:
            break
    return x


# --------------------------------------------------------------------------- Jacobians

def _time_tensor(t, like: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to(like.dtype)
    return torch.scalar_tensor(t, dtype=like.dtype, device=like.device)


def dense_jacobian(func: Field, t, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, y)`` as an ``[n, n]`` matrix (``n = y.numel()``), by vector-Jacobian products.

    ``create_graph=True`` keeps the matrix differentiable with respect to ``y`` and the field's
    parameters (Rosenbrock methods need it for exact direct gradients: ``J`` is part of the method).
    """
    n = y.numel()
    with torch.enable_grad():
        yy = y if create_graph and y.requires_grad else y.detach().requires_grad_(True)
        out = func(_time_tensor(t, y), yy)
        if not out.requires_grad:
            return torch.zeros(n, n, dtype=y.dtype, device=y.device)
        eye = torch.eye(n, dtype=y.dtype, device=y.device).reshape(n, *out.shape)
        try:
            (rows,) = torch.autograd.grad(out, yy, eye, is_grads_batched=True, allow_unused=True,
                                          create_graph=create_graph)
        except RuntimeError:  # fields whose operations have no batching rule: one product per row
            rows = torch.stack([_grad_or_zero(out, yy, e, retain=True, create_graph=create_graph) for e in eye])
    if rows is None:
        return torch.zeros(n, n, dtype=y.dtype, device=y.device)
    rows = rows.reshape(n, n)
    return rows if create_graph else rows.detach()


def _grad_or_zero(out, inp, v, retain: bool, create_graph: bool = False):
    (g,) = torch.autograd.grad(out, inp, v, retain_graph=retain or create_graph, allow_unused=True,
                               create_graph=create_graph)
    return torch.zeros_like(inp) if g is None else g


def batched_jacobian(func: Field, t, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-sample Jacobians ``[B, m, m]`` of a state ``[B, ...]`` whose samples are independent.

    One forward pass of the whole batch and ``m`` vector-Jacobian products whose one-hot
    cotangent is repeated over the batch (row ``i`` of every sample's Jacobian at once), batched
    into one backward call (``is_grads_batched``, i.e. ``vmap`` over the backward pass). This
    works for every field whose samples are independent, including fields with per-sample
    parameters (rate constants of shape ``[B]``), which ``torch.func.vmap(jacrev(...))`` over
    single samples cannot express (a sample would see every sample's parameters: measured
    27 ms per Jacobian instead of 2.8 ms at B = 32, and O(B²) work). For fields vmap can
    transform it is also the faster of the two (3.1 ms against 8.3 ms at B = 256, m = 3).
    """
    return _batched_jacobian_vjp(func, _time_tensor(t, y), y, create_graph)


def _batched_jacobian_vjp(func: Field, tt: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Per-sample Jacobians from ``m`` vector-Jacobian products of the whole batch."""
    B = y.shape[0]
    m = y[0].numel()
    with torch.enable_grad():
        yy = y if create_graph and y.requires_grad else y.detach().requires_grad_(True)
        out = func(tt, yy)
        if not out.requires_grad:
            return torch.zeros(B, m, m, dtype=y.dtype, device=y.device)
        eye = torch.eye(m, dtype=y.dtype, device=y.device)
        cot = eye[:, None, :].expand(m, B, m).reshape(m, *out.shape)
        try:
            (rows,) = torch.autograd.grad(out, yy, cot, is_grads_batched=True, allow_unused=True,
                                          create_graph=create_graph)
        except RuntimeError:
            rows = torch.stack([_grad_or_zero(out, yy, c, retain=True, create_graph=create_graph) for c in cot])
    if rows is None:
        return torch.zeros(B, m, m, dtype=y.dtype, device=y.device)
    rows = rows.reshape(m, B, m).permute(1, 0, 2)
    return rows if create_graph else rows.detach()


def samples_independent(func: Field, t, y: torch.Tensor) -> bool:
    """Probe whether sample ``i`` of a ``[B, ...]`` state drives only sample ``i``'s derivative.

    One vector-Jacobian product with a random cotangent on the first sample: a field that
    couples samples (batch norm, attention over the batch) shows a non-zero gradient on the
    others. A probe, not a proof; declare ``options['jacobian']`` to skip it.
    """
    if y.dim() < 2 or y.shape[0] < 2:
        return False
    with torch.enable_grad():
        yy = y.detach().requires_grad_(True)
        out = func(_time_tensor(t, y), yy)
        if not out.requires_grad:
            return True
        v = torch.zeros_like(out)
        gen = torch.Generator(device="cpu").manual_seed(0)
        v[0] = torch.randn(out[0].shape, generator=gen, dtype=out.dtype).to(out.device)
        g = _grad_or_zero(out, yy, v, retain=False)
    return bool(torch.isfinite(g).all()) and not bool(g[1:].any())


def krylov_operator(func: Field, t, y: torch.Tensor) -> KrylovOp:
    """``J`` at ``(t, y)`` as Jacobian-vector products (forward mode where ``torch.func`` can
    transform the field, else the double-vector-Jacobian trick), with vector-Jacobian products
    for the transpose."""
    tt = _time_tensor(t, y)
    y0 = y.detach()
    shape = y.shape

    def jvp(v: torch.Tensor) -> torch.Tensor:
        try:
            result = torch.func.jvp(lambda yy: func(tt, yy), (y0,), (v.reshape(shape),))
            return result[1].reshape(-1).detach()
        except Exception:  # noqa: BLE001
            with torch.enable_grad():
                yy = y0.requires_grad_(True) if not y0.requires_grad else y0
                out = func(tt, yy)
                u = torch.zeros_like(out, requires_grad=True)
                (g,) = torch.autograd.grad(out, yy, u, create_graph=True)
                (jv,) = torch.autograd.grad(g, u, v.reshape(shape))
            return jv.reshape(-1).detach()

    def vjp(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            yy = y0.clone().requires_grad_(True)
            out = func(tt, yy)
            return _grad_or_zero(out, yy, v.reshape(shape), retain=False).reshape(-1).detach()

    return KrylovOp(jvp, vjp)


def resolve_mode(func: Field, t, y: torch.Tensor, mode: str) -> str:
    """The Jacobian form ``"auto"`` stands for at this state (see the module doc)."""
    if mode != "auto":
        return mode
    if y.dim() >= 2 and y.shape[0] >= 2 and y[0].numel() <= BATCHED_LIMIT and samples_independent(func, t, y):
        return "batched"
    return "dense" if y.numel() <= DENSE_LIMIT else "krylov"


def linearise(func: Field, t, y: torch.Tensor, mode: str, create_graph: bool = False):
    """The Jacobian of ``func`` at ``(t, y)`` as an operator with ``factor(C)``.

    A field may provide its own ``newton_linearise(t, y, mode)`` (the adjoint system does: its
    Jacobian is assembled from the forward field's, block by block).
    """
    custom = getattr(func, "newton_linearise", None)
    if custom is not None:
        return custom(t, y, mode)
    mode = resolve_mode(func, t, y, mode)
    if mode == "batched":
        return MatrixOp(batched_jacobian(func, t, y, create_graph))
    if mode == "krylov":
        return krylov_operator(func, t, y)
    return MatrixOp(dense_jacobian(func, t, y, create_graph)[None])


def augmented_linearisation(func: Field, n: int, shape: torch.Size, r, z: torch.Tensor, mode: str) -> BlockOp:
    """The Newton Jacobian of the adjoint system ``z = [y, a, g]`` in reversed time ``r``.

    ``dy/dr = -f(-r, y)``, ``da/dr = Jᵀa``, ``dg/dr = aᵀ∂f/∂θ`` (``J = ∂f/∂y`` at ``(-r, y)``).
    For dense states the ``[y, a]`` block is exact: ``[[-J, 0], [H, Jᵀ]]`` with ``H = ∂²(a·f)/∂y²``
    (the adjoint's dependence on the state, large on strongly nonlinear stiff problems such as
    Robertson's). Batched and Krylov forms keep only ``diag(-J, Jᵀ)`` (a simplified Newton
    matrix; the dropped ``H`` coupling slows or, when it is stiff, stops convergence). The
    quadrature channels ``g`` never feed back, so their block is the identity: they converge one
    iteration after ``y`` and ``a``.
    """
    y = z[:n].reshape(shape)
    rt = _time_tensor(r, z)

    def forward_field(t, yy):
        return func(-t, yy)

    resolved = resolve_mode(forward_field, rt, y, mode)
    rest: List[Tuple[int, Any]] = [(z.numel() - 2 * n, IdentityOp())] if z.numel() > 2 * n else []
    if resolved == "dense":
        a = z[n:2 * n].reshape(shape).detach()
        eye = torch.eye(n, dtype=z.dtype, device=z.device)
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            out = forward_field(rt, yy)
            if out.requires_grad:
                (ja,) = torch.autograd.grad(out, yy, a, create_graph=True, allow_unused=True)
                J = torch.stack([_grad_or_zero(out, yy, e.reshape(shape), retain=True) for e in eye]).reshape(n, n)
                H = (torch.stack([_grad_or_zero(ja, yy, e.reshape(shape), retain=True) for e in eye]).reshape(n, n)
                     if ja is not None and ja.requires_grad else torch.zeros(n, n, dtype=z.dtype, device=z.device))
            else:
                J = H = torch.zeros(n, n, dtype=z.dtype, device=z.device)
        block = torch.zeros(2 * n, 2 * n, dtype=z.dtype, device=z.device)
        block[:n, :n] = -J.detach()
        block[n:, :n] = H.detach()
        block[n:, n:] = J.detach().T
        return BlockOp([(2 * n, MatrixOp(block[None]))] + rest)
    op = linearise(forward_field, rt, y, resolved)
    return BlockOp([(n, op.scaled(-1.0)), (n, op.scaled(1.0, transpose=True))] + rest)


# --------------------------------------------------------------------------- Newton's iteration

@dataclass
class NewtonResult:
    """The outcome of one nonlinear solve."""

    z: torch.Tensor
    converged: bool
    iterations: int
    rate: float  # the last observed contraction factor θ (0 when unknown)


def newton(residual: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, factor: Factor,
           norm: Callable[[torch.Tensor], float], kappa: float, max_iters: int, eta: float) -> NewtonResult:
    """Simplified Newton on ``residual(z) = 0`` from ``z0`` (shape ``[s, N]``).

    Stops when the predicted distance to the solution, ``θ/(1-θ)·‖Δz‖``, falls below ``kappa``
    in the tolerance-scaled ``norm`` (Hairer & Wanner IV.8, eq. 8.10), with ``θ`` the observed
    contraction; ``eta`` carries ``θ/(1-θ)`` over from the previous solve for the first test.
    Gives up (``converged=False``) on divergence (``θ ≥ 1``), on a rate too slow to converge
    within ``max_iters``, or on a non-finite iterate: the caller shrinks the step or refreshes
    the Jacobian. Runs with the caller's grad mode, so gradients flow through the iterates.
    """
    z = z0
    previous = None
    theta = 0.0
    for it in range(1, max_iters + 1):
        g = residual(z)
        dz = factor.solve(-g)
        z = z + dz
        with torch.no_grad():
            size = float(norm(dz))
        if not math.isfinite(size):
            return NewtonResult(z, False, it, math.inf)
        if size == 0.0:
            return NewtonResult(z, True, it, theta)
        if previous is not None:
            theta = size / previous
            if theta >= 1.0:
                return NewtonResult(z, False, it, theta)
            if theta ** (max_iters - it) / (1 - theta) * size > kappa:
                return NewtonResult(z, False, it, theta)
            eta = theta / (1 - theta)
        if eta * size <= kappa:
            return NewtonResult(z, True, it, theta)
        previous = size
    return NewtonResult(z, False, max_iters, theta)


__all__ = ["JACOBIAN_MODES", "linearise", "resolve_mode", "newton", "NewtonResult", "dense_jacobian",
           "batched_jacobian", "samples_independent", "gmres", "MatrixOp", "KrylovOp", "BlockOp", "IdentityOp"]
