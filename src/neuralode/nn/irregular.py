"""Models for irregularly sampled, partially observed multivariate time series.

The model set of Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series"
(NeurIPS 2019), for data such as PhysioNet 2012 (37 channels observed at variable-specific times):

- :class:`ODERNN` - a GRU whose hidden state follows a learned ODE between observation times
  and is updated (masked input + mask) at each observation.
- :class:`GRUDelta` - "RNN-Δt": a GRU fed the time since the previous observation.
- :class:`GRUDecay` - "RNN-decay" / GRU-D (Che et al., 2018): hidden state and inputs decay
  exponentially with the time since the last observation, inputs towards the training mean.
- :class:`LatentODE` - a VAE whose latent initial state ``z0`` is encoded by a backwards ODE-RNN
  (or a backwards GRU-Δt) and decoded by an ODE solve, emitting all channels; trained with a
  masked Gaussian likelihood and the KL divergence to the N(0, I) prior.
- :class:`ClassifierHead` - an MLP on a model's final state (in-hospital mortality).

Every model takes a batch either on each patient's own time grid (``times`` (B, T): patient ``b``'s
row ``i`` at ``times[b, i]``, shorter patients padded by repeating their last time with mask 0 -
:func:`neuralode.data.physionet.collate`'s default ``"compact"`` layout) or on one grid shared by
the batch (``times`` (T,), e.g. the union of the patients' times, Rubanova et al.'s batching)::

    out = model(times, values, mask)      # times (T,) or (B, T) hours; values, mask (B, T, C)
    out.pred    # (B, T, C) prediction of every entry from information *before* its row
                #   (sequence models) or from the latent trajectory (latent ODE)
    out.state   # (B, H) final state, input of the classifier head
    out.kl      # (B,) KL(q(z0) || p(z0)); zeros for the sequence models
    out.nfe     # field evaluations of every ODE solve of this forward pass

The sequence models predict row ``i`` from the state just before the observation at row ``i`` is
read, so their predictions of held-out rows never see those rows. Rows where ``mask`` is all
zero for a patient leave that patient's state untouched (no update), which is how held-out,
future and padding rows are handled. Every gap is the patient's own: between rows the ODE
models carry each patient's state over its own gap (Euler inline with per-patient step sizes,
other methods by one :func:`neuralode.solve` of the field rescaled to each patient's gap), a zero
gap (a padding row) changes nothing, and a patient's state starts moving at its first observed
row (before it the state is 0), so a patient's outputs do not depend on its batch-mates' times.
Time is multiplied by ``time_scale`` (default 1/48: 48 h -> 1) before it reaches the solver.

Both layouts give the RNN models (GRU-Δt, GRU-D) the same predictions at a patient's observed
entries and the same final state (their Δt's run from time 0 or the patient's last observation,
never from the batch's grid); the ODE models' Euler steps follow each patient's own gaps, so on
the union grid a gap split at a batch-mate's time takes different (smaller) steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Union, cast

import torch
from torch import Tensor, nn

__all__ = [
    "SolverConfig",
    "ModelOutput",
    "ODEFunc",
    "ODERNN",
    "GRUDelta",
    "GRUDecay",
    "LatentODE",
    "ClassifierHead",
    "RubanovaGRUUnit",
    "init_normal_",
    "masked_mse",
    "masked_gaussian_nll",
    "build_model",
    "MODEL_NAMES",
    "IrregularModel",
]


@dataclass(frozen=True)
class SolverConfig:
    """How an ODE is integrated: ``method`` name of :func:`neuralode.solve`.

    Fixed-step methods (``euler``, ``midpoint``, ``rk4``) take ``ceil(dt / max_step)`` equal steps
    over an interval of (scaled) length ``dt``; adaptive ones (``dopri5``, ...) use ``rtol``/``atol``.
    """

    method: str = "euler"
    max_step: float = 0.05
    rtol: float = 1e-3
    atol: float = 1e-4

    @property
    def fixed(self) -> bool:
        """True for a fixed-grid method (explicit or implicit RK, the Adams family), which takes ``step_size``."""
        from neuralode.methods import get_method

        return not get_method(self.method).adaptive


class _Scan(NamedTuple):
    before: Tensor  # (B, T, H) states before each row's update
    after: Tensor  # (B, T, H) states after it
    h: Tensor  # (B, H) final state
    s: Tensor  # (B, H) final std state (Rubanova et al.'s GRU unit; 0 otherwise)
    nfe: int


@dataclass
class ModelOutput:
    pred: Tensor
    state: Tensor
    kl: Tensor
    nfe: int = 0


def _solve(func: nn.Module, y0: Tensor, t: Tensor, solver: SolverConfig) -> tuple[Tensor, int]:
    """Integrate ``func`` from ``t[0]`` over the (increasing) times ``t``; return (ys, nfe)."""
    import neuralode

    if solver.fixed:
        span = float(t[-1] - t[0])
        n = max(1, math.ceil(span / solver.max_step - 1e-9))
        options = {"step_size": span / n}
        sol = neuralode.solve(func, y0, t, method=solver.method, options=options, gradient="direct")
    else:
        sol = neuralode.solve(
            func, y0, t, method=solver.method, rtol=solver.rtol, atol=solver.atol, gradient="direct"
        )
    return cast(Tensor, sol.ys), int(sol.stats.nfe)  # a tensor y0 gives stacked tensor states


class ODEFunc(nn.Module):
    """Autonomous field ``dh/dt = net(h)``: MLP with tanh.

    Initialisation: ``init_std`` given - every weight ``N(0, init_std²)``, every bias 0 (Rubanova
    et al.'s ``init_network_weights``, std 0.1, used by their ODE-RNN and latent ODE fields);
    otherwise ``small_init`` starts the last layer near zero (the field starts near ``dh/dt = 0``),
    else PyTorch's default initialisation (as torchdiffeq's examples)."""

    def __init__(self, dim: int, hidden: int, layers: int = 2, small_init: bool = True,
                 init_std: float | None = None):
        super().__init__()
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        last = nn.Linear(width, dim)
        self.net = nn.Sequential(*mods, last)
        if init_std is not None:
            if not init_std > 0:
                raise ValueError(f"init_std must be > 0 or None, got {init_std!r}")
            init_normal_(self.net, init_std)
        elif small_init:
            nn.init.normal_(last.weight, std=1e-2)
            nn.init.zeros_(last.bias)

    @property
    def output_layer(self) -> nn.Linear:
        """The last linear layer (zero it for a field that is 0 everywhere)."""
        return cast(nn.Linear, self.net[-1])  # built so in __init__

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.net(h)


def _euler_steps(dt: Tensor, max_step: float) -> Tensor:
    """Per-patient Euler step counts for gaps ``dt`` (any shape, >= 0): ``ceil(dt / max_step)``,
    at least one for a positive gap, none for a zero gap."""
    n = torch.ceil(dt / max_step - 1e-9).clamp_min(1)
    return torch.where(dt > 0, n, torch.zeros_like(n)).long()


class _Rescaled:
    """``dh/ds = dt_b * f(h)`` for ``s`` in [0, 1]: patient ``b``'s gap of length ``dt_b`` as one
    unit interval, so that one solve carries every patient over its own gap (autonomous fields)."""

    def __init__(self, func: nn.Module, dt: Tensor):
        self.func, self.dt = func, dt.unsqueeze(-1)

    def __call__(self, s: Tensor, h: Tensor) -> Tensor:
        return self.dt * self.func(s, h)


def _evolve_rows(func: nn.Module, h: Tensor, dt: Tensor, solver: SolverConfig,
                 n_steps: Tensor | None = None) -> tuple[Tensor, int]:
    """Each patient's state ``h[b]`` (B, H) carried over its own gap ``dt[b] >= 0`` (scaled time);
    returns (h, NFE). A zero gap leaves the row exactly as it is.

    Euler is stepped inline: patient ``b`` takes ``n_b = ceil(dt_b / max_step)`` equal steps
    ``h += (dt_b / n_b) f(h)`` - one step for a gap shorter than ``max_step``, as Rubanova et al.'s
    ``run_odernn`` does for small gaps - the very steps :func:`neuralode.solve` would take for that
    patient alone, without a solve's set-up per row (the ODE-RNN meets one gap per row). The field
    is evaluated ``max_b n_b`` times on the whole batch; a patient whose steps are done keeps its
    state. ``n_steps`` (B,) may pass the counts in when already computed. Other methods: one
    :func:`neuralode.solve` of :class:`_Rescaled` over [0, 1] (fixed-step methods with
    ``ceil(max_b dt_b / max_step)`` steps, i.e. steps ``dt_b / n`` of at most ``max_step``).
    """
    if solver.method == "euler":
        n = _euler_steps(dt, solver.max_step) if n_steps is None else n_steps
        n_max = int(n.max()) if n.numel() else 0
        if n_max == 0:
            return h, 0
        step = (dt / n.clamp_min(1)).to(h.dtype).unsqueeze(-1)
        t = h.new_zeros(())
        uniform = bool((n == n_max).all())
        for k in range(n_max):
            moved = h + step * func(t, h)
            h = moved if uniform else torch.where((n > k).unsqueeze(-1), moved, h)
        return h, n_max
    return _solve_rows(func, h, dt, solver)


def _solve_rows(func: nn.Module, h: Tensor, dt: Tensor, solver: SolverConfig) -> tuple[Tensor, int]:
    """:func:`_evolve_rows` by one :func:`neuralode.solve` of :class:`_Rescaled` (any method)."""
    span = float(dt.max()) if dt.numel() else 0.0
    if span <= 0:
        return h, 0
    import neuralode

    g = _Rescaled(func, dt.to(h.dtype))
    unit = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
    if solver.fixed:
        n = max(1, math.ceil(span / solver.max_step - 1e-9))
        sol = neuralode.solve(g, h, unit, method=solver.method, options={"step_size": 1.0 / n}, gradient="direct")
    else:
        sol = neuralode.solve(g, h, unit, method=solver.method, rtol=solver.rtol, atol=solver.atol,
                              gradient="direct")
    return cast(Tensor, sol.ys)[-1], int(sol.stats.nfe)  # a tensor y0 gives stacked tensor states


def _row_times(times: Tensor, values: Tensor) -> Tensor:
    """The (B, T) row times of a batch whose ``times`` are shared (T,) or per patient (B, T)."""
    B, T = values.shape[:2]
    if times.dim() == 1 and times.shape[0] == T:
        return times.unsqueeze(0).expand(B, T)
    if times.dim() == 2 and tuple(times.shape) == (B, T):
        return times
    raise ValueError(f"times must have shape (T,) = ({T},) or (B, T) = ({B}, {T}) for values of shape "
                     f"{tuple(values.shape)}, got {tuple(times.shape)}")


def _row_observed(mask_row: Tensor) -> Tensor:
    return (mask_row.sum(-1) > 0).unsqueeze(-1)  # (B, 1)


def init_normal_(module: nn.Module, std: float = 0.1) -> nn.Module:
    """Every ``nn.Linear`` in ``module``: weights ``N(0, std²)``, biases 0 (Rubanova et al.'s
    ``init_network_weights``, applied to their GRU unit, decoders, z0 heads and classifier)."""
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=std)
            nn.init.zeros_(mod.bias)
    return module


def _decoder(dim: int, n_channels: int, hidden: int) -> nn.Module:
    """``Linear(dim, C)`` for ``hidden == 0``, else ``Linear(dim, hidden) -> tanh -> Linear(hidden, C)``
    (Rubanova et al.'s ODE-RNN and RNN decoders)."""
    if hidden == 0:
        return nn.Linear(dim, n_channels)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_channels))


def _shifted(decoder: nn.Module, after: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Rubanova et al.'s ``shift_outputs``: row ``i > 0`` predicted by ``decoder`` from the state
    *after* row ``i - 1``'s update (not carried to ``t_i``); row 0 "predicted" by the (masked) input
    row itself, so that it counts as error 0 in their losses and MSE."""
    first = (values[:, :1] * mask[:, :1]).to(after.dtype)
    return torch.cat([first, decoder(after[:, :-1])], 1)


def _need_decoder(decoder: nn.Module | None, model: nn.Module) -> nn.Module:
    if decoder is None:
        raise ValueError(f"this {type(model).__name__} was built with decoder=False (an encoder): it has no "
                         "predictions; call scan() / run() for its states, or build it with decoder=True")
    return decoder


PREDICTIONS = ("before", "shifted")


def _check_predict(predict: str) -> str:
    if predict not in PREDICTIONS:
        raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")
    return predict


class RubanovaGRUUnit(nn.Module):
    """The GRU update of Rubanova et al.'s released code (``GRU_unit`` in ``lib/encoder_decoder.py``).

    The state is a mean ``h`` and a std ``s`` (both ``(B, H)``); the input ``x = [values * mask,
    mask]``. Each gate and the new state come from a one-hidden-layer tanh MLP of ``units`` on
    ``[h, s, x]`` (not the affine maps of a ``GRUCell``)::

        u = sigmoid(MLP_u([h, s, x]))            r = sigmoid(MLP_r([h, s, x]))
        n, n_s = MLP_n([h * r, s * r, x]) split in two;  n_s = |n_s|
        h' = (1 - u) * n + u * h                  s' = |(1 - u) * n_s + u * s|

    and where a patient's row has no observed entry (``mask`` all 0) the state is kept:
    ``h' = h``, ``s' = s``. Every linear layer starts ``N(0, 0.1²)`` with zero biases, as theirs.
    """

    def __init__(self, hidden: int, input_dim: int, units: int = 100, init_std: float = 0.1):
        super().__init__()
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be an int >= 1, got {units!r}")
        width = 2 * hidden + input_dim
        self.hidden = hidden
        self.update_gate = nn.Sequential(nn.Linear(width, units), nn.Tanh(), nn.Linear(units, hidden), nn.Sigmoid())
        self.reset_gate = nn.Sequential(nn.Linear(width, units), nn.Tanh(), nn.Linear(units, hidden), nn.Sigmoid())
        self.new_state = nn.Sequential(nn.Linear(width, units), nn.Tanh(), nn.Linear(units, 2 * hidden))
        init_normal_(self, init_std)

    def forward(self, h: Tensor, s: Tensor, x: Tensor, mask_row: Tensor) -> tuple[Tensor, Tensor]:
        """``h, s (B, H)``, ``x (B, I)``, ``mask_row (B, C)``: the updated ``(h, s)``."""
        hsx = torch.cat([h, s, x], -1)
        u, r = self.update_gate(hsx), self.reset_gate(hsx)
        n, n_s = self.new_state(torch.cat([h * r, s * r, x], -1)).chunk(2, -1)
        h_new = (1 - u) * n + u * h
        s_new = (1 - u) * n_s.abs() + u * s
        obs = _row_observed(mask_row)
        return torch.where(obs, h_new, h), torch.where(obs, s_new, s).abs()


class ODERNN(nn.Module):
    """ODE-RNN (Rubanova et al. 2019, Alg. 1): ODE between observations, GRU update at them.

    Args:
        n_channels: C, channels of the data.
        hidden: hidden state size.
        ode_hidden: width of the ODE field's MLP.
        solver: integrator of the hidden state between rows (Rubanova et al.: Euler).
        time_scale: hours -> solver time.
        field_layers: linear layers of the ODE field (2: one hidden layer; Rubanova et al.'s
            ``--rec-layers 3`` is 5).
        field_init_std: ``None`` starts the field near zero (the ODE-RNN starts as a GRU blind to
            the gaps); a std initialises every weight of the field ``N(0, std²)`` (Rubanova et al.:
            0.1), so the state moves between observations from the first step.
        cell: ``"gru"`` (a ``GRUCell`` on ``[x * m, m]``) or ``"rubanova"`` (their
            :class:`RubanovaGRUUnit`: MLP gates and a std state carried beside the mean; the ODE
            moves the mean only, as theirs).
        gru_units: width of the :class:`RubanovaGRUUnit`'s MLPs (their ``--gru-units``).
        decoder_hidden: 0 for a linear decoder, else one tanh layer of this width (theirs: 100,
            the ``ODE_RNN`` default that ``run_models.py`` does not override).
        predict: ``"before"`` - row ``i`` from the state carried to ``t_i`` before its update (the
            ODE-RNN's own one-step-ahead prediction); ``"shifted"`` - Rubanova et al.'s
            ``shift_outputs`` (row ``i`` from the state after row ``i - 1``, row 0 = its input).
    """

    def __init__(self, n_channels: int, hidden: int = 50, ode_hidden: int = 50,
                 solver: SolverConfig = SolverConfig(), time_scale: float = 1 / 48, decoder: bool = True,
                 field_layers: int = 2, field_init_std: float | None = None, cell: str = "gru",
                 gru_units: int = 100, decoder_hidden: int = 0, predict: str = "before"):
        super().__init__()
        if cell not in ("gru", "rubanova"):
            raise ValueError(f"cell must be 'gru' or 'rubanova', got {cell!r}")
        self.hidden, self.solver, self.time_scale = hidden, solver, time_scale
        self.state_dim = hidden
        self.cell_kind, self.predict = cell, _check_predict(predict)
        self.func = ODEFunc(hidden, ode_hidden, layers=field_layers, init_std=field_init_std)
        if cell == "gru":
            self.cell: nn.Module = nn.GRUCell(2 * n_channels, hidden)
        else:
            self.cell = RubanovaGRUUnit(hidden, 2 * n_channels, gru_units)
        self.decoder = _decoder(hidden, n_channels, decoder_hidden) if decoder else None  # None: encoder use only
        if self.decoder is not None and cell == "rubanova":
            init_normal_(self.decoder)

    def scan(self, times: Tensor, values: Tensor, mask: Tensor, reverse: bool = False) -> _Scan:
        """Walk the rows (last to first if ``reverse``, then evolve back to time 0): the states
        before and after each row's update (B, T, H, in time order), the final mean and std (the
        std stays 0 for ``cell="gru"``), and the NFE.

        ``times`` (T,) or (B, T). Each patient's state is 0 until its first observed row (in scan
        order) and from then on carried over the patient's own gaps (:func:`_evolve_rows`).
        """
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        s = values.new_zeros(B, self.hidden)
        order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
        ts = _row_times(times, values)[:, order] * self.time_scale  # (B, T) in scan order
        obs = (mask.sum(-1) > 0)[:, order]
        seen = torch.cumsum(obs.long(), 1) > 0  # the patient's state has started at or before this row
        gaps = torch.zeros_like(ts)
        gaps[:, 1:] = (ts[:, 1:] - ts[:, :-1]).abs() * seen[:, :-1]  # no motion before the first observation
        gaps = gaps.to(h.dtype)
        euler = self.solver.method == "euler"
        steps = _euler_steps(gaps, self.solver.max_step) if euler else None
        before: list[Tensor] = []
        after: list[Tensor] = []
        nfe = 0
        for j, i in enumerate(order):
            if j > 0:
                h, n = _evolve_rows(self.func, h, gaps[:, j], self.solver, None if steps is None else steps[:, j])
                nfe += n
            before.append(h)
            m = mask[:, i]
            x = torch.cat([values[:, i] * m, m], -1)
            if self.cell_kind == "gru":
                h = torch.where(_row_observed(m), self.cell(x, h), h)
            else:
                h, s = self.cell(h, s, x, m)
            after.append(h)
        if reverse:
            before.reverse()
            after.reverse()
            back = (ts[:, -1].abs() * seen[:, -1]).to(h.dtype)  # from row 0's time back to t = 0
            h, n = _evolve_rows(self.func, h, back, self.solver)
            nfe += n
        return _Scan(torch.stack(before, 1), torch.stack(after, 1), h, s, nfe)

    def run(self, times: Tensor, values: Tensor, mask: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor, int]:
        """Hidden states before each row's update (B, T, H), the final state, and NFE.

        ``reverse=True`` walks the rows from last to first (the latent ODE's encoder) and, at the
        end, evolves the state back to time 0.
        """
        sc = self.scan(times, values, mask, reverse)
        return sc.before, sc.h, sc.nfe

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        decoder = _need_decoder(self.decoder, self)
        sc = self.scan(times, values, mask)
        zero = values.new_zeros(values.shape[0])
        if self.predict == "shifted":
            return ModelOutput(_shifted(decoder, sc.after, values, mask), sc.h, zero, sc.nfe)
        return ModelOutput(decoder(sc.before), sc.h, zero, sc.nfe)


class GRUDelta(nn.Module):
    """RNN-Δt: a GRU that reads ``[x * m, m, Δt]``, Δt = time since the patient's last update.

    ``predict="before"``: the prediction of a row is ``decoder([h, Δt])``, the state before the row
    plus the gap. ``predict="shifted"``: Rubanova et al.'s ``Classic_RNN`` output - row ``i`` is
    ``decoder(h)`` of the state after row ``i - 1``, row 0 its own input (see :class:`ODERNN`).
    ``decoder_hidden``: 0 linear, else one tanh layer (theirs: ``--units``, 50).
    """

    def __init__(self, n_channels: int, hidden: int = 50, time_scale: float = 1 / 48, decoder: bool = True,
                 decoder_hidden: int = 0, predict: str = "before"):
        super().__init__()
        self.hidden, self.time_scale = hidden, time_scale
        self.state_dim = hidden
        self.predict = _check_predict(predict)
        self.cell = nn.GRUCell(2 * n_channels + 1, hidden)
        extra = 1 if self.predict == "before" else 0  # the "before" decoder also reads the gap
        self.decoder = _decoder(hidden + extra, n_channels, decoder_hidden) if decoder else None
        if self.decoder is not None and self.predict == "shifted":
            init_normal_(self.decoder)

    def run(self, times: Tensor, values: Tensor, mask: Tensor, reverse: bool = False,
            afters: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``[h, Δt]`` before each row (B, T, H + 1) and the final state; the states after each
        row's update are appended to ``afters`` when given (forward order only)."""
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        ts = _row_times(times, values) * self.time_scale
        if reverse:  # Δt from the patient's last observation (0 at the first row read)
            rows = torch.arange(T, device=ts.device).expand(B, T)
            last_row = torch.where(mask.sum(-1) > 0, rows, torch.full_like(rows, -1)).amax(1)
            last = ts.gather(1, last_row.clamp_min(0).unsqueeze(-1))
        else:  # Δt from time 0 (admission) up to the first observation
            last = ts.new_zeros(B, 1)
        order = range(T - 1, -1, -1) if reverse else range(T)
        feats: list[Tensor] = []
        for i in order:
            dt = (ts[:, i:i + 1] - last).abs()
            feats.append(torch.cat([h, dt], -1))
            m = mask[:, i]
            obs = _row_observed(m)
            h = torch.where(obs, self.cell(torch.cat([values[:, i] * m, m, dt], -1), h), h)
            last = torch.where(obs, ts[:, i:i + 1], last)
            if afters is not None:
                afters.append(h)
        if reverse:
            feats.reverse()
        return torch.stack(feats, 1), h

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        decoder = _need_decoder(self.decoder, self)
        zero = values.new_zeros(values.shape[0])
        if self.predict == "shifted":
            afters: list[Tensor] = []
            _, h = self.run(times, values, mask, afters=afters)
            return ModelOutput(_shifted(decoder, torch.stack(afters, 1), values, mask), h, zero, 0)
        feats, h = self.run(times, values, mask)
        return ModelOutput(decoder(feats), h, zero, 0)


class GRUDecay(nn.Module):
    """RNN-decay / GRU-D (Che et al., "Recurrent Neural Networks for Multivariate Time Series
    with Missing Values", Sci. Rep. 2018).

    With δ the per-channel time since each channel was last observed: the hidden state decays
    as ``h <- exp(-relu(W δ + b)) * h`` and a missing input is imputed as
    ``γ x_last + (1 - γ) x_mean`` with ``γ = exp(-relu(w δ + b))`` per channel. The GRU reads
    ``[x_hat, m]``. ``x_mean`` is a buffer: the training means (set by :meth:`set_mean`).
    ``predict`` and ``decoder_hidden`` as :class:`ODERNN`'s (``"before"``: from the decayed state).
    """

    x_mean: Tensor  # a buffer (set_mean)

    def __init__(self, n_channels: int, hidden: int = 50, time_scale: float = 1 / 48, decoder_hidden: int = 0,
                 predict: str = "before"):
        super().__init__()
        self.hidden, self.time_scale = hidden, time_scale
        self.state_dim = hidden
        self.predict = _check_predict(predict)
        self.decay_h = nn.Linear(n_channels, hidden)
        self.decay_x_w = nn.Parameter(torch.zeros(n_channels))
        self.decay_x_b = nn.Parameter(torch.zeros(n_channels))
        self.cell = nn.GRUCell(2 * n_channels, hidden)
        self.decoder = _decoder(hidden, n_channels, decoder_hidden)
        if self.predict == "shifted":
            init_normal_(self.decoder)
        self.register_buffer("x_mean", torch.zeros(n_channels))

    def set_mean(self, mean: Tensor) -> None:
        self.x_mean.copy_(torch.as_tensor(mean, dtype=self.x_mean.dtype))

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        B, T, C = values.shape
        h = values.new_zeros(B, self.hidden)
        ts = _row_times(times, values) * self.time_scale
        x_last = self.x_mean.expand(B, C)
        t_last = ts.new_zeros(B, C)  # δ runs from time 0 (admission) until a channel's first observation
        before: list[Tensor] = []
        after: list[Tensor] = []
        for i in range(T):
            delta = ts[:, i:i + 1] - t_last
            h_dec = torch.exp(-torch.relu(self.decay_h(delta))) * h
            before.append(h_dec)
            m = mask[:, i]
            gx = torch.exp(-torch.relu(self.decay_x_w * delta + self.decay_x_b))
            x_hat = m * values[:, i] + (1 - m) * (gx * x_last + (1 - gx) * self.x_mean)
            h = torch.where(_row_observed(m), self.cell(torch.cat([x_hat, m], -1), h_dec), h)
            after.append(h)
            x_last = torch.where(m > 0, values[:, i], x_last)
            t_last = torch.where(m > 0, ts[:, i:i + 1].expand(B, C), t_last)
        if self.predict == "shifted":
            return ModelOutput(_shifted(self.decoder, torch.stack(after, 1), values, mask), h, values.new_zeros(B), 0)
        return ModelOutput(self.decoder(torch.stack(before, 1)), h, values.new_zeros(B), 0)


class LatentODE(nn.Module):
    """Latent ODE (Rubanova et al. 2019): ``z0 ~ q(z0 | x)`` by a backwards encoder, ``z(t)`` by an
    ODE solve from ``z0`` at t = 0, each channel decoded linearly from ``z(t)``.

    Args:
        encoder: ``"odernn"`` (ODE-RNN encoder) or ``"rnn"`` (GRU-Δt encoder).
        latent: size of z.
        rec_hidden: encoder state size.
        units: width of the latent ODE field.
        enc_solver / dec_solver: integrators (Rubanova et al.: Euler in the encoder, dopri5 with
            rtol 1e-3 / atol 1e-4 in the decoder).
        enc_layers / dec_layers: linear layers of the encoder's and the latent ODE's fields
            (Rubanova et al.'s ``--rec-layers 3 --gen-layers 3``: 5 each).
        field_init_std: as :class:`ODERNN`'s, for the encoder's and the latent ODE's fields.
        heads: ``"ours"`` - a ``GRUCell`` encoder and ``z0 = Linear-tanh-Linear(h)`` with a softplus
            std; ``"rubanova"`` - their released code's: the ODE-RNN encoder updates with
            :class:`RubanovaGRUUnit` (``gru_units``) and ``transform_z0`` reads its mean and std
            (``Linear(2 rec, 100) - tanh - Linear(100, 2 L)``), the RNN encoder's
            ``hiddens_to_z0`` is ``Linear(rec, 50) - tanh - Linear(50, 2 L)``, the std is
            ``|.|``, and these heads and the linear decoder start ``N(0, 0.1²)``.

    ``state`` is the posterior mean of z0 (input of the classifier). Training samples z0
    (reparameterised); evaluation uses the mean.
    """

    def __init__(self, n_channels: int, encoder: str = "odernn", latent: int = 20, rec_hidden: int = 40,
                 units: int = 50, enc_solver: SolverConfig = SolverConfig(),
                 dec_solver: SolverConfig = SolverConfig("dopri5"), time_scale: float = 1 / 48,
                 enc_layers: int = 2, dec_layers: int = 3, field_init_std: float | None = None,
                 heads: str = "ours", gru_units: int = 100):
        super().__init__()
        if encoder not in ("odernn", "rnn"):
            raise ValueError(f"encoder must be 'odernn' or 'rnn', got {encoder!r}")
        if heads not in ("ours", "rubanova"):
            raise ValueError(f"heads must be 'ours' or 'rubanova', got {heads!r}")
        self.latent, self.time_scale, self.heads = latent, time_scale, heads
        self.state_dim = latent
        rub = heads == "rubanova"
        if encoder == "odernn":
            self.encoder: ODERNN | GRUDelta = ODERNN(n_channels, rec_hidden, units, enc_solver, time_scale, decoder=False,
                                             field_layers=enc_layers, field_init_std=field_init_std,
                                             cell="rubanova" if rub else "gru", gru_units=gru_units)
        else:
            self.encoder = GRUDelta(n_channels, rec_hidden, time_scale, decoder=False)
        self.to_z0: nn.Module
        if not rub:
            self.to_z0 = nn.Sequential(nn.Linear(rec_hidden, units), nn.Tanh(), nn.Linear(units, 2 * latent))
        elif encoder == "odernn":
            self.to_z0 = init_normal_(nn.Sequential(nn.Linear(2 * rec_hidden, 100), nn.Tanh(),
                                                    nn.Linear(100, 2 * latent)))
        else:
            self.to_z0 = init_normal_(nn.Sequential(nn.Linear(rec_hidden, 50), nn.Tanh(), nn.Linear(50, 2 * latent)))
        self.func = ODEFunc(latent, units, layers=dec_layers, init_std=field_init_std)
        self.dec_solver = dec_solver
        self.decoder = nn.Linear(latent, n_channels)
        if rub:
            init_normal_(self.decoder)

    def encode(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, int]:
        """Posterior mean and std of z0 from the rows up to the last observed one."""
        rows = torch.nonzero(mask.sum((0, 2)) > 0).flatten()
        last = int(rows[-1]) + 1 if len(rows) else 1
        times, values, mask = times[..., :last], values[:, :last], mask[:, :last]
        if isinstance(self.encoder, ODERNN):
            sc = self.encoder.scan(times, values, mask, reverse=True)
            h, nfe = (torch.cat([sc.h, sc.s], -1) if self.heads == "rubanova" else sc.h), sc.nfe
        else:
            _, h = self.encoder.run(times, values, mask, reverse=True)
            nfe = 0
        mean, raw_std = self.to_z0(h).chunk(2, -1)
        if self.heads == "rubanova":  # theirs: |.| (floored here so that the KL's log std stays finite)
            return mean, raw_std.abs().clamp_min(1e-6), nfe
        return mean, nn.functional.softplus(raw_std) + 1e-4, nfe

    def decode(self, z0: Tensor, times: Tensor) -> tuple[Tensor, int]:
        """Channels (N, T, C) at ``times`` from ``z0`` (N, L) at t = 0: ``times`` (T,) shared, or
        (N, T) per trajectory (each row non-decreasing, hours).

        One solve from t = 0 over the sorted union of the times (the dense output of an adaptive
        method places every output inside its steps), then each trajectory's rows gathered - so a
        row's prediction does not depend on which other times the batch holds, up to the solver's
        tolerance (adaptive) or grid (fixed-step methods step from output to output).
        """
        N = z0.shape[0]
        ts = times * self.time_scale
        if ts.dim() == 1:
            ts = ts.unsqueeze(0).expand(N, -1)
        elif ts.shape[0] != N:
            raise ValueError(f"times must be (T,) or (N, T) with N = {N} trajectories, got {tuple(times.shape)}")
        grid, index = torch.unique(ts.detach().flatten(), sorted=True, return_inverse=True)
        if float(grid[0]) > 0:
            grid, index = torch.cat([grid.new_zeros(1), grid]), index + 1
        if len(grid) > 1:
            zs, nfe = _solve(self.func, z0, grid, self.dec_solver)  # (G, N, L)
        else:
            zs, nfe = z0.unsqueeze(0), 0
        rows = torch.arange(N, device=z0.device).unsqueeze(-1)
        z = zs[index.view(ts.shape), rows]  # (N, T, L)
        return self.decoder(z), nfe

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        mean, std, nfe_enc = self.encode(times, values, mask)
        z0 = mean + std * torch.randn_like(std) if self.training else mean
        pred, nfe_dec = self.decode(z0, times)
        kl = 0.5 * (mean**2 + std**2 - 1 - 2 * torch.log(std)).sum(-1)
        return ModelOutput(pred, mean, kl, nfe_enc + nfe_dec)


class ClassifierHead(nn.Module):
    """Logit of a binary outcome from a final state: ``layers`` hidden ReLU layers of ``hidden``
    units, then ``Linear -> 1`` (Rubanova et al.: two of 300, every weight ``N(0, 0.1²)`` and
    biases 0 - ``init_std=0.1``; ``None``: PyTorch's default initialisation)."""

    def __init__(self, dim: int, hidden: int = 300, layers: int = 1, init_std: float | None = None):
        super().__init__()
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*mods, nn.Linear(width, 1))
        if init_std is not None:
            init_normal_(self.net, init_std)

    def forward(self, state: Tensor) -> Tensor:
        return self.net(state).squeeze(-1)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the entries where ``mask`` is 1 (unobserved entries ignored)."""
    n = mask.sum()
    return ((pred - target) ** 2 * mask).sum() / n.clamp_min(1)


def masked_gaussian_nll(pred: Tensor, target: Tensor, mask: Tensor, std: float) -> Tensor:
    """Per-patient mean Gaussian NLL (constant dropped) over observed entries: (B,).

    Patients with no observed entry contribute 0.
    """
    sq = ((pred - target) ** 2 * mask).flatten(1).sum(-1)
    n = mask.flatten(1).sum(-1)
    return sq / (2 * std**2) / n.clamp_min(1)


#: What :func:`build_model` returns.
IrregularModel = Union["GRUDelta", "GRUDecay", "ODERNN", "LatentODE"]

MODEL_NAMES = ("gru_dt", "gru_decay", "ode_rnn", "latent_ode_rnn", "latent_ode_odernn")


def build_model(name: str, n_channels: int, *, hidden: int = 50, latent: int = 20, rec_hidden: int = 40,
                units: int = 50, enc_solver: SolverConfig = SolverConfig(),
                dec_solver: SolverConfig = SolverConfig("dopri5"), time_scale: float = 1 / 48,
                enc_layers: int = 2, dec_layers: int = 3, field_init_std: float | None = None,
                rubanova: bool = False, gru_units: int = 100) -> IrregularModel:
    """One of :data:`MODEL_NAMES` with its sizes (``enc_layers``: the ODE-RNN's field, also as an
    encoder; ``dec_layers``: the latent ODE's field; ``field_init_std``: their initialisation).

    ``rubanova=True`` builds the model as Rubanova et al.'s released code does
    (``run_models.py``): the ODE-RNN with their :class:`RubanovaGRUUnit` (``gru_units``) and a
    decoder with one tanh layer of 100; the RNN baselines with a decoder with one tanh layer of
    ``units``; all three predicting ``"shifted"`` (their ``shift_outputs``); the latent ODEs with
    their z0 heads (``heads="rubanova"``)."""
    predict, decoder_hidden = ("shifted", units) if rubanova else ("before", 0)
    if name == "gru_dt":
        return GRUDelta(n_channels, hidden, time_scale, decoder_hidden=decoder_hidden, predict=predict)
    if name == "gru_decay":
        return GRUDecay(n_channels, hidden, time_scale, decoder_hidden=decoder_hidden, predict=predict)
    if name == "ode_rnn":
        return ODERNN(n_channels, hidden, units, enc_solver, time_scale, field_layers=enc_layers,
                      field_init_std=field_init_std, cell="rubanova" if rubanova else "gru", gru_units=gru_units,
                      decoder_hidden=100 if rubanova else 0, predict=predict)
    if name in ("latent_ode_rnn", "latent_ode_odernn"):
        return LatentODE(n_channels, "rnn" if name == "latent_ode_rnn" else "odernn", latent, rec_hidden, units,
                         enc_solver, dec_solver, time_scale, enc_layers=enc_layers, dec_layers=dec_layers,
                         field_init_std=field_init_std, heads="rubanova" if rubanova else "ours",
                         gru_units=gru_units)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
