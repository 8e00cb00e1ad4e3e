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

Every model takes a batch on a shared time grid (the union of the batch's observation times)::

    out = model(times, values, mask)      # times (T,) hours; values, mask (B, T, C)
    out.pred    # (B, T, C) prediction of every entry from information *before* its row
                #   (sequence models) or from the latent trajectory (latent ODE)
    out.state   # (B, H) final state, input of the classifier head
    out.kl      # (B,) KL(q(z0) || p(z0)); zeros for the sequence models
    out.nfe     # field evaluations of every ODE solve of this forward pass

The sequence models predict row ``i`` from the state just before the observation at row ``i`` is
read, so their predictions of held-out rows never see those rows. Rows where ``mask`` is all
zero for a patient leave that patient's state untouched (no update), which is how held-out and
future rows are handled. Between rows, the ODE models integrate with :func:`neuralode.solve`;
time is multiplied by ``time_scale`` (default 1/48: 48 h -> 1) before it reaches the solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    "masked_mse",
    "masked_gaussian_nll",
    "build_model",
    "MODEL_NAMES",
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
    return sol.ys, int(sol.stats.nfe)


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
        if init_std is not None:
            if not init_std > 0:
                raise ValueError(f"init_std must be > 0 or None, got {init_std!r}")
            for mod in [*mods, last]:
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=init_std)
                    nn.init.zeros_(mod.bias)
        elif small_init:
            nn.init.normal_(last.weight, std=1e-2)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.net(h)


def _evolve(func: nn.Module, h: Tensor, dt: float, solver: SolverConfig) -> tuple[Tensor, int]:
    """``h`` carried over a gap of (scaled) length ``dt`` by ``solver``; returns (h, nfe).

    Euler is stepped inline - ``ceil(dt / max_step)`` equal steps ``h += step * f(h)``, one step
    for a gap shorter than ``max_step`` (Rubanova et al.'s ``run_odernn`` does the same for small
    gaps) - the very steps :func:`neuralode.solve` would take, without a solve's set-up per row:
    the ODE-RNN meets one gap per grid row, hundreds per batch, most of them tiny. Other methods
    go through :func:`neuralode.solve`.
    """
    if dt <= 0:
        return h, 0
    if solver.method == "euler":
        n = max(1, math.ceil(dt / solver.max_step - 1e-9))
        step = dt / n
        t = h.new_zeros(())
        for _ in range(n):
            h = h + step * func(t, h)
        return h, n
    t = torch.tensor([0.0, dt], dtype=h.dtype, device=h.device)
    ys, nfe = _solve(func, h, t, solver)
    return ys[-1], nfe


def _row_observed(mask_row: Tensor) -> Tensor:
    return (mask_row.sum(-1) > 0).unsqueeze(-1)  # (B, 1)


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
    """

    def __init__(self, n_channels: int, hidden: int = 50, ode_hidden: int = 50,
                 solver: SolverConfig = SolverConfig(), time_scale: float = 1 / 48, decoder: bool = True,
                 field_layers: int = 2, field_init_std: float | None = None):
        super().__init__()
        self.hidden, self.solver, self.time_scale = hidden, solver, time_scale
        self.state_dim = hidden
        self.func = ODEFunc(hidden, ode_hidden, layers=field_layers, init_std=field_init_std)
        self.cell = nn.GRUCell(2 * n_channels, hidden)
        self.decoder = nn.Linear(hidden, n_channels) if decoder else None  # None: encoder use only

    def run(self, times: Tensor, values: Tensor, mask: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor, int]:
        """Hidden states before each row's update (B, T, H), the final state, and NFE.

        ``reverse=True`` walks the rows from last to first (the latent ODE's encoder) and, at the
        end, evolves the state back to time 0.
        """
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        order = range(T - 1, -1, -1) if reverse else range(T)
        tl = (times * self.time_scale).tolist()
        before: list[Tensor] = []
        nfe, prev = 0, None
        for i in order:
            if prev is not None:
                h, n = _evolve(self.func, h, abs(tl[i] - tl[prev]), self.solver)
                nfe += n
            before.append(h)
            m = mask[:, i]
            h = torch.where(_row_observed(m), self.cell(torch.cat([values[:, i] * m, m], -1), h), h)
            prev = i
        if reverse:
            before.reverse()
            h, n = _evolve(self.func, h, tl[0], self.solver)  # back to t = 0
            nfe += n
        return torch.stack(before, 1), h, nfe

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        before, h, nfe = self.run(times, values, mask)
        return ModelOutput(self.decoder(before), h, values.new_zeros(values.shape[0]), nfe)


class GRUDelta(nn.Module):
    """RNN-Δt: a GRU that reads ``[x * m, m, Δt]``, Δt = time since the patient's last update.

    The prediction of a row is ``Linear([h, Δt])``: the state before the row plus the gap.
    """

    def __init__(self, n_channels: int, hidden: int = 50, time_scale: float = 1 / 48, decoder: bool = True):
        super().__init__()
        self.hidden, self.time_scale = hidden, time_scale
        self.state_dim = hidden
        self.cell = nn.GRUCell(2 * n_channels + 1, hidden)
        self.decoder = nn.Linear(hidden + 1, n_channels) if decoder else None  # None: encoder use only

    def run(self, times: Tensor, values: Tensor, mask: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
        B, T, _ = values.shape
        h = values.new_zeros(B, self.hidden)
        ts = times * self.time_scale
        last = (ts[-1] if reverse else ts[0]).expand(B).unsqueeze(-1)
        order = range(T - 1, -1, -1) if reverse else range(T)
        feats: list[Tensor] = []
        for i in order:
            dt = (ts[i] - last).abs()
            feats.append(torch.cat([h, dt], -1))
            m = mask[:, i]
            obs = _row_observed(m)
            h = torch.where(obs, self.cell(torch.cat([values[:, i] * m, m, dt], -1), h), h)
            last = torch.where(obs, ts[i].expand(B, 1), last)
        if reverse:
            feats.reverse()
        return torch.stack(feats, 1), h

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        feats, h = self.run(times, values, mask)
        return ModelOutput(self.decoder(feats), h, values.new_zeros(values.shape[0]), 0)


class GRUDecay(nn.Module):
    """RNN-decay / GRU-D (Che et al., "Recurrent Neural Networks for Multivariate Time Series
    with Missing Values", Sci. Rep. 2018).

    With δ the per-channel time since each channel was last observed: the hidden state decays
    as ``h <- exp(-relu(W δ + b)) * h`` and a missing input is imputed as
    ``γ x_last + (1 - γ) x_mean`` with ``γ = exp(-relu(w δ + b))`` per channel. The GRU reads
    ``[x_hat, m]``. ``x_mean`` is a buffer: the training means (set by :meth:`set_mean`).
    """

    def __init__(self, n_channels: int, hidden: int = 50, time_scale: float = 1 / 48):
        super().__init__()
        self.hidden, self.time_scale = hidden, time_scale
        self.state_dim = hidden
        self.decay_h = nn.Linear(n_channels, hidden)
        self.decay_x_w = nn.Parameter(torch.zeros(n_channels))
        self.decay_x_b = nn.Parameter(torch.zeros(n_channels))
        self.cell = nn.GRUCell(2 * n_channels, hidden)
        self.decoder = nn.Linear(hidden, n_channels)
        self.register_buffer("x_mean", torch.zeros(n_channels))

    def set_mean(self, mean: Tensor) -> None:
        self.x_mean.copy_(torch.as_tensor(mean, dtype=self.x_mean.dtype))

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        B, T, C = values.shape
        h = values.new_zeros(B, self.hidden)
        ts = times * self.time_scale
        x_last = self.x_mean.expand(B, C)
        t_last = ts[0].expand(B, C)
        before: list[Tensor] = []
        for i in range(T):
            delta = ts[i] - t_last
            h_dec = torch.exp(-torch.relu(self.decay_h(delta))) * h
            before.append(h_dec)
            m = mask[:, i]
            gx = torch.exp(-torch.relu(self.decay_x_w * delta + self.decay_x_b))
            x_hat = m * values[:, i] + (1 - m) * (gx * x_last + (1 - gx) * self.x_mean)
            h = torch.where(_row_observed(m), self.cell(torch.cat([x_hat, m], -1), h_dec), h)
            x_last = torch.where(m > 0, values[:, i], x_last)
            t_last = torch.where(m > 0, ts[i].expand(B, C), t_last)
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

    ``state`` is the posterior mean of z0 (input of the classifier). Training samples z0
    (reparameterised); evaluation uses the mean.
    """

    def __init__(self, n_channels: int, encoder: str = "odernn", latent: int = 20, rec_hidden: int = 40,
                 units: int = 50, enc_solver: SolverConfig = SolverConfig(),
                 dec_solver: SolverConfig = SolverConfig("dopri5"), time_scale: float = 1 / 48,
                 enc_layers: int = 2, dec_layers: int = 3, field_init_std: float | None = None):
        super().__init__()
        if encoder not in ("odernn", "rnn"):
            raise ValueError(f"encoder must be 'odernn' or 'rnn', got {encoder!r}")
        self.encoder_kind, self.latent, self.time_scale = encoder, latent, time_scale
        self.state_dim = latent
        if encoder == "odernn":
            self.encoder: nn.Module = ODERNN(n_channels, rec_hidden, units, enc_solver, time_scale, decoder=False,
                                             field_layers=enc_layers, field_init_std=field_init_std)
        else:
            self.encoder = GRUDelta(n_channels, rec_hidden, time_scale, decoder=False)
        self.to_z0 = nn.Sequential(nn.Linear(rec_hidden, units), nn.Tanh(), nn.Linear(units, 2 * latent))
        self.func = ODEFunc(latent, units, layers=dec_layers, init_std=field_init_std)
        self.dec_solver = dec_solver
        self.decoder = nn.Linear(latent, n_channels)

    def encode(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, int]:
        """Posterior mean and std of z0 from the rows up to the last observed one."""
        rows = torch.nonzero(mask.sum((0, 2)) > 0).flatten()
        last = int(rows[-1]) + 1 if len(rows) else 1
        times, values, mask = times[:last], values[:, :last], mask[:, :last]
        if self.encoder_kind == "odernn":
            _, h, nfe = self.encoder.run(times, values, mask, reverse=True)
        else:
            _, h = self.encoder.run(times, values, mask, reverse=True)
            nfe = 0
        mean, raw_std = self.to_z0(h).chunk(2, -1)
        return mean, nn.functional.softplus(raw_std) + 1e-4, nfe

    def decode(self, z0: Tensor, times: Tensor) -> tuple[Tensor, int]:
        """Channels (B, T, C) at ``times`` (hours, increasing) from z0 at t = 0."""
        ts = times * self.time_scale
        start = ts.new_zeros(1)
        if float(ts[0]) > 0:
            grid = torch.cat([start, ts])
            zs, nfe = _solve(self.func, z0, grid, self.dec_solver)
            zs = zs[1:]
        elif len(ts) > 1:
            zs, nfe = _solve(self.func, z0, ts, self.dec_solver)
        else:
            zs, nfe = z0.unsqueeze(0), 0
        return self.decoder(zs.transpose(0, 1)), nfe

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> ModelOutput:
        mean, std, nfe_enc = self.encode(times, values, mask)
        z0 = mean + std * torch.randn_like(std) if self.training else mean
        pred, nfe_dec = self.decode(z0, times)
        kl = 0.5 * (mean**2 + std**2 - 1 - 2 * torch.log(std)).sum(-1)
        return ModelOutput(pred, mean, kl, nfe_enc + nfe_dec)


class ClassifierHead(nn.Module):
    """Logit of a binary outcome from a final state: ``layers`` hidden ReLU layers of ``hidden``
    units, then ``Linear -> 1`` (Rubanova et al.: two of 300)."""

    def __init__(self, dim: int, hidden: int = 300, layers: int = 1):
        super().__init__()
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*mods, nn.Linear(width, 1))

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


MODEL_NAMES = ("gru_dt", "gru_decay", "ode_rnn", "latent_ode_rnn", "latent_ode_odernn")


def build_model(name: str, n_channels: int, *, hidden: int = 50, latent: int = 20, rec_hidden: int = 40,
                units: int = 50, enc_solver: SolverConfig = SolverConfig(),
                dec_solver: SolverConfig = SolverConfig("dopri5"), time_scale: float = 1 / 48,
                enc_layers: int = 2, dec_layers: int = 3, field_init_std: float | None = None) -> nn.Module:
    """One of :data:`MODEL_NAMES` with its sizes (``enc_layers``: the ODE-RNN's field, also as an
    encoder; ``dec_layers``: the latent ODE's field; ``field_init_std``: their initialisation)."""
    if name == "gru_dt":
        return GRUDelta(n_channels, hidden, time_scale)
    if name == "gru_decay":
        return GRUDecay(n_channels, hidden, time_scale)
    if name == "ode_rnn":
        return ODERNN(n_channels, hidden, units, enc_solver, time_scale, field_layers=enc_layers,
                      field_init_std=field_init_std)
    if name in ("latent_ode_rnn", "latent_ode_odernn"):
        return LatentODE(n_channels, "rnn" if name == "latent_ode_rnn" else "odernn", latent, rec_hidden, units,
                         enc_solver, dec_solver, time_scale, enc_layers=enc_layers, dec_layers=dec_layers,
                         field_init_std=field_init_std)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
