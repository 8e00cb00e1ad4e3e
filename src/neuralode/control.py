"""Step-size control: error norms, the initial step, and a PI controller."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch

Norm = Callable[[torch.Tensor], Union[torch.Tensor, float]]
Tolerance = Union[float, torch.Tensor]
# The rules below (first step, step-size factor, step spreading) are written once, elementwise:
# on Python floats for the shared loop (one step size, decided on the host) and on tensors of one
# value per sample for per-sample stepping (neuralode.persample), so the two cannot drift apart.
Value = Any  # a float, or a tensor of per-sample values

# Chosen from the work–precision data (benchmarks/bench_work_precision.py; BENCHMARKS.md has the
# variants tried and their counts).
START_CONSTANT = 0.1  # the first step aims at this local error, in tolerance units (HNW: 0.01)
SPREAD_STEPS = 2  # the last steps before a boundary are made equal when it is at most this many away
# True: after the first accepted step (no history yet), I-control with exponent 1/order. Tried:
# fewer evaluations on the neural-ODE problems, more points above a peer's curve (BENCHMARKS.md).
FIRST_STEP_I = False
# True: a second rejected first step is cut with the error's observed order (observed_order_factor).
# Measured: the ODE-Net block's dopri8 rejects 2 first steps instead of 5-7 (NFE 236/496/1120 ->
# 197/444/1029 at 1e-4/1e-5/1e-6), NFE-identical on the other work-precision problems. Per-sample
# stepping (neuralode.persample) passes each row's last rejected (h, ratio), so per-sample solves
# still equal solo solves (tests/test_persample_control.py).
OBSERVED_ORDER = True


def _where(condition: Value, a: Value, b: Value) -> Value:
    if isinstance(condition, torch.Tensor):
        return torch.where(condition, a, b)
    return a if condition else b


def _clamp(x: Value, low: Optional[float] = None, high: Optional[float] = None) -> Value:
    if isinstance(x, torch.Tensor):
        return x.clamp(low, high)
    if low is not None and not x > low:  # as max(low, x)
        x = low
    return x if high is None or x < high else high


def _ceil(x: Value) -> Value:
    if isinstance(x, torch.Tensor):
        return torch.ceil(x)
    return float(math.ceil(x)) if math.isfinite(x) else x


def _isfinite(x: Value) -> Value:
    return torch.isfinite(x) if isinstance(x, torch.Tensor) else math.isfinite(x)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over all elements (torchdiffeq's default error norm)."""
    norm: torch.Tensor = torch.linalg.vector_norm(x)
    return norm / math.sqrt(max(x.numel(), 1))


def mixed_norm(sizes: Sequence[int]) -> Norm:
    """For tuple states: the largest RMS over the tuple's components (torchdiffeq's default)."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([rms_norm(part) for part in x.split(list(sizes))]).max()

    return norm


def rms_norm_rows(x: torch.Tensor) -> torch.Tensor:
    """RMS over each row's elements (the leading dimension indexes samples): shape ``(n,)``."""
    norm: torch.Tensor = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
    return norm / math.sqrt(max(x[0].numel(), 1))


def tolerance_scale(y0: torch.Tensor, y1: Optional[torch.Tensor], rtol: Tolerance, atol: Tolerance) -> torch.Tensor:
    """``atol + rtol·max(|y0|, |y1|)`` (``atol + rtol·|y0|`` without ``y1``): errors are measured in these units."""
    if y1 is None:
        return y0.abs().mul(rtol).add_(atol)
    return torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)


def error_ratio(error: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: Tolerance, atol: Tolerance, norm: Norm) -> float:
    """``norm(error / (atol + rtol·max(|y0|, |y1|)))``: the step is accepted when this is ≤ 1.

    Call under ``torch.no_grad()``. ``error`` must be a temporary owned by the caller (it is
    divided in place). The default RMS norm is evaluated as one reduction and a host-side
    division, the only synchronisation a step needs.
    """
    scaled = error.div_(tolerance_scale(y0, y1, rtol, atol))
    if norm is rms_norm:
        return float(torch.linalg.vector_norm(scaled)) / math.sqrt(max(scaled.numel(), 1))
    return float(norm(scaled))


@torch.no_grad()
def initial_step(evaluate: Callable[[float, torch.Tensor, int], torch.Tensor], t0: float, y0: torch.Tensor, f0: torch.Tensor, order: int,
                 rtol: Tolerance, atol: Tolerance, norm: Norm) -> float:
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4); one function evaluation.

    ``h1 = (START_CONSTANT / max(d1, d2))^(1/(order+1))``, at most ``100·h0``. Two departures
    from HINIT, both measured on the work–precision problems (data in BENCHMARKS.md):

    - the exponent uses the method's own order (as torchdyn and torchode do; torchdiffeq and
      HINIT pass ``order - 1``);
    - the constant is 0.1 instead of 0.01. HINIT's step is built for a first-order (Euler)
      error model and is very cautious for a high-order method: on the neural-ODE problems the
      first dopri5 step came back with an error ratio of ~1e-8, so the solve spent a step only
      growing into its stride. With 0.1 the first step is 1.47x longer for dopri5 (1.29x for
      dopri8, 1.78x for bosh3). It costs a few more rejected first steps on long solves (24
      solves per problem: Van der Pol 0 → 1, cubic spiral 4 → 11, ODE-Net block 17 → 23) and
      lowers the evaluations at equal error (with the step spreading of :func:`step_towards`,
      the geometric-mean NFE ratio against same-family peers went 0.96 → 0.91 on the MLP,
      0.85 → 0.79 on the CNF, 0.84 → 0.79 on Van der Pol, 0.88 → 0.89 on the spiral).

    Two host transfers: ``d0`` and ``d1`` together, then ``d2``.
    """
    scale = tolerance_scale(y0, None, rtol, atol)
    if norm is rms_norm:
        d0, d1 = torch.stack([rms_norm(y0 / scale), rms_norm(f0 / scale)]).abs().tolist()
    else:
        d0, d1 = abs(float(norm(y0 / scale))), abs(float(norm(f0 / scale)))
    h0 = trial_step(d0, d1)
    y1 = torch.add(y0, f0, alpha=h0)
    f1 = evaluate(t0 + h0, y1, 0)
    d2 = abs(float(norm((f1 - f0) / scale))) / h0
    h: float = first_step(h0, d1, d2, order)
    return h


def trial_step(d0: Value, d1: Value) -> Value:
    """HINIT's trial step ``h0 = 0.01·d0/d1`` (``1e-6`` when either is below ``1e-5``), from the
    scaled norms of the state (``d0``) and of its derivative (``d1``); elementwise."""
    small = (d0 < 1e-5) | (d1 < 1e-5)
    return _where(small, 1e-6, 0.01 * d0 / _clamp(d1, low=1e-300))


def first_step(h0: Value, d1: Value, d2: Value, order: int) -> Value:
    """The starting step from the trial step ``h0``, the scaled derivative norm ``d1`` and the
    scaled second-derivative estimate ``d2 = |f(t0 + h0, y0 + h0·f0) - f0| / h0`` (see
    :func:`initial_step`); elementwise."""
    dmax = torch.maximum(d1, d2) if isinstance(d1, torch.Tensor) else max(d1, d2)
    h1 = _where(dmax <= 1e-15, _clamp(h0 * 1e-3, low=1e-6),
                (START_CONSTANT / _clamp(dmax, low=1e-300)) ** (1.0 / (order + 1)))
    return _where(h1 < 100 * h0, h1, 100 * h0)


class PIController:
    """Proportional–integral step-size control (Gustafsson; the defaults of Hairer's DOPRI5).

    ``h_new = h · safety · ratio^(-α) · ratio_prev^(β)`` with ``β = 0.2/k`` and
    ``α = 1/k - 0.75β`` for a method of order ``k``, clipped to ``[dfactor, ifactor]``; after a
    rejection the step never grows. The integral part damps the oscillating step sequences of
    a pure I-controller, so fewer steps are rejected.

    With ``OBSERVED_ORDER`` (on by default, see there): before the first accepted step (the
    step came from :func:`initial_step`'s guess, with no history yet), a rejection that follows a
    rejection uses the error's order as observed
    between the two attempts (Gustafsson's estimate, :func:`observed_order_factor`): on fields
    with kinks (ReLU) the error of a high-order method falls far slower than ``h^k`` there, and
    the PI factor cut the first step 5–7 times in a row (the ODE-Net block, dopri8; 2 with the
    estimate). Later in a solve the PI memory holds what the field did and the rule is not used.
    On a one-hidden-layer ReLU MLP (piecewise linear: steps inside one piece are exact, steps
    across a kink fail) the evaluations vary by ±15 % with a 0.2 % change of ``y0``, with or
    without the rule (dopri8, 15 such starts: means within 5 %, inside that spread).
    """

    def __init__(self, order: int, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2):
        self.beta = 0.2 / order
        self.alpha = 1.0 / order - 0.75 * self.beta
        self.safety = safety
        self.ifactor = ifactor
        self.dfactor = dfactor
        self.order = order
        self.previous_ratio = 1e-4
        self.last_rejected = False
        self.history = False  # whether a step has been accepted
        # (h, ratio) of the last attempt when it was a rejected one with a finite error, else (0, 0)
        self.rejected_h = 0.0
        self.rejected_ratio = 0.0

    def propose(self, h: float, ratio: float, accepted: bool) -> float:
        """The next step size after a step of size ``h`` with error ratio ``ratio``."""
        factor: float = self.factor(ratio, accepted, self.previous_ratio, self.last_rejected, self.history,
                                    h=h, rejected_h=self.rejected_h, rejected_ratio=self.rejected_ratio)
        if accepted:
            self.previous_ratio = self.remember(ratio, accepted, self.previous_ratio)
            self.history = True
        self.last_rejected = not accepted
        self.rejected_h, self.rejected_ratio = self.remember_rejection(h, ratio, accepted)
        return h * factor

    def factor(self, ratio: Value, accepted: Value, previous_ratio: Value, last_rejected: Value,
               history: Value, h: Value = None, rejected_h: Value = None, rejected_ratio: Value = None) -> Value:
        """The step-size factor, elementwise (floats, or per-sample tensors with the controller's
        state held by the caller): ``dfactor`` after a non-finite error, ``ifactor`` after a zero
        one, else the PI formula clipped to ``[dfactor, ifactor]``; at most 1 after a rejection and
        on the step accepted right after one. ``history``: whether a step was accepted before.

        With ``h`` (the step just tried) and ``rejected_h``/``rejected_ratio`` (the previous
        attempt, from :meth:`remember_rejection`), a rejection before any accepted step that
        follows a rejection is cut by :func:`observed_order_factor` when ``OBSERVED_ORDER`` is
        on; without them (the older call) that rule is off."""
        r = _clamp(ratio, low=1e-300)
        factor = self.safety * r ** (-self.alpha) * _where(accepted, _clamp(previous_ratio, low=1e-4) ** self.beta, 1.0)
        if FIRST_STEP_I:
            factor = _where(history, factor, _where(accepted, self.safety * r ** (-1.0 / self.order), factor))
        factor = _clamp(factor, self.dfactor, self.ifactor)
        factor = _where(ratio == 0, self.ifactor, factor)
        factor = _where(_isfinite(ratio), factor, self.dfactor)
        capped = _clamp(factor, high=1.0)
        factor = _where(accepted, _where(last_rejected, capped, factor), capped)
        if OBSERVED_ORDER and h is not None and rejected_h is not None and rejected_ratio is not None:
            use = _where(accepted, False, _where(history, False, _isfinite(ratio)))
            if isinstance(use, torch.Tensor) or use:  # the shared loop: only a rejection before any acceptance
                factor = _where(use, observed_order_factor(factor, h, ratio, rejected_h, rejected_ratio, self.order,
                                                           self.safety, self.dfactor), factor)
        return factor

    @staticmethod
    def remember_rejection(h: Value, ratio: Value, accepted: Value) -> Tuple[Value, Value]:
        """``(h, ratio)`` for the next :meth:`factor` when this attempt was rejected with a finite
        error, else ``(0, 0)`` (no estimate); elementwise."""
        keep = _where(accepted, False, _isfinite(ratio))
        return _where(keep, h, 0.0 * h), _where(keep, ratio, 0.0 * h)

    @staticmethod
    def remember(ratio: Value, accepted: Value, previous_ratio: Value) -> Value:
        """The error ratio the next factor's integral part uses: an accepted step's (at least
        1e-4; 1 if it was not finite), else the previous one; elementwise."""
        return _where(accepted, _where(_isfinite(ratio), _clamp(ratio, low=1e-4), 1.0), previous_ratio)


def observed_order_factor(factor: Value, h: Value, ratio: Value, h_before: Value, ratio_before: Value, order: int,
                          safety: float, dfactor: float) -> Value:
    """The step factor after a second rejection in a row, from the order the error showed; elementwise.

    Two rejected attempts from the same point, ``(h_before, ratio_before)`` then the smaller
    ``(h, ratio)``, give the error's observed order ``q = log(ratio_before/ratio) / log(h_before/h)``
    (clamped to ``[1, order]``); the next step aims at ``safety`` with it:
    ``safety · ratio^(-1/q)``, clipped to ``[dfactor, 1]``. The controller's own ``factor`` is
    returned unchanged when the two attempts give no estimate (the error did not fall, or the
    step did not shrink; ``h_before = ratio_before = 0`` means no earlier rejection).

    Why: the PI factor assumes ``error ∝ h^k``. On the ODE-Net block (ReLU field) dopri8's error
    fell like ``h^2.3`` over its first attempts, so each rejection cut the step by 0.5–0.8 where
    0.2 was needed, and the solve rejected 5–7 first steps (12 evaluations each); with the
    observed order it rejects 2 (work–precision data in BENCHMARKS.md). On smooth fields ``q``
    is about ``k`` and the step is the I-controller's: ``ratio^(0.15/k)`` smaller than the PI
    formula's (1.15x at a ratio of 100 for dopri5).
    """
    if not isinstance(ratio, torch.Tensor):
        if not (0.0 < ratio < ratio_before and 0.0 < h < h_before):
            return factor
        q = min(float(order), max(1.0, math.log(ratio_before / ratio) / math.log(h_before / h)))
        aimed: float = safety * ratio ** (-1.0 / q)
        return min(1.0, max(dfactor, aimed))
    valid = (ratio > 0) & (ratio < ratio_before) & (h > 0) & (h < h_before)
    r = ratio.clamp(min=1e-300)
    observed = torch.log(ratio_before / r) / torch.log(h_before / torch.as_tensor(h).clamp(min=1e-300))
    observed = torch.where(valid, observed, torch.full_like(observed, float(order)))
    observed = observed.nan_to_num(float(order)).clamp(1.0, float(order))
    return torch.where(valid, (safety * r ** (-1.0 / observed)).clamp(dfactor, 1.0), factor)


def step_towards(t: Value, h: Value, bound: Value, min_step: float = 0.0) -> Tuple[Value, Value]:
    """The step to take from ``t`` with the proposed size ``h`` towards ``bound`` (the next place
    a step must end: the last output time or a ``step_t``/``jump_t`` time), and whether it lands.

    A step within 1 % of ``bound`` is stretched to land on it (as DOPRI5 does). When ``bound``
    is 2 proposed steps away (``SPREAD_STEPS``), both are made half the distance, as RKSUITE
    does: the same number of steps, but no short last step after a long one, so a smaller
    largest step, a smaller error and fewer rejections. On short neural-ODE solves (two or
    three steps in all) this is most of the difference between libraries at equal work (MLP
    problem, dopri5 at 1e-6: the same 20 evaluations, error 2.5e-10 → 3.4e-11; work–precision
    data in BENCHMARKS.md).

    Elementwise: with tensors (one value per sample) both results are tensors.
    """
    remaining = bound - t
    lands = t + 1.01 * h >= bound
    n = _clamp(_ceil(remaining / _where(h > 0, h, 1.0)), low=1.0)
    spread = (n <= SPREAD_STEPS) & (remaining / n >= min_step)
    return _where(lands, remaining, _where(spread, remaining / n, h)), lands


def fixed_grid(t: torch.Tensor, step_size: Optional[float]) -> torch.Tensor:
    """The grid of a fixed-step solve: the output times, or ``t[0] + n·step_size`` ending at ``t[-1]``."""
    if step_size is None:
        return t
    span = float(t[-1].detach() - t[0].detach())
    ratio = span / step_size
    n = round(ratio) if abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio) else math.ceil(ratio)
    n = max(int(n), 1)
    steps = torch.arange(n, dtype=t.dtype, device=t.device) * step_size
    return torch.cat([t[:1] + steps, t[-1:]])
