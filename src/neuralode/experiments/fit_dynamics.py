"""Learning dynamics from sampled trajectories: ``fit-spiral`` and ``fit-linear``.

``fit-spiral`` reproduces torchdiffeq's ``examples/ode_demo.py`` (Chen et al. 2018): the data
is one trajectory of ``dy/dt = y**3 @ A``, ``A = [[-0.1, 2], [-2, -0.1]]``, ``y0 = [2, 0]``,
1,000 points on ``t in [0, 25]``. The model is a Neural ODE whose field is the demo's MLP
**on cubic features**: ``f(y) = Linear(50 -> 2)(tanh(Linear(2 -> 50)(y**3)))`` (``field="cubic"``;
``field="mlp"`` feeds ``y`` itself to a two-hidden-layer tanh MLP instead, a harder problem).
Training as in the demo: minibatches of ``batch_size=20`` snippets of ``batch_time=10``
consecutive observations, each solved from its first observation with dopri5 (torchdiffeq's
default tolerances rtol 1e-7, atol 1e-9), mean absolute error, RMSprop, 2,000 steps — but at
lr 3e-3 decayed to 0 on a cosine rather than the demo's constant 1e-3: with the constant rate
the whole-span error keeps swinging between ~0.04 and ~0.7 from one evaluation to the next up
to the last step (final 0.12 in our run), while the decayed rate settles (0.027). The demo's
exact settings are ``--set lr=1e-3 --set schedule=constant``. The quick configuration takes
800 steps of the same recipe.

``fit-linear`` learns ``dy/dt = W y`` (``W`` a bias-free linear layer) from exact trajectories
of a known stable matrix (default the 3-D :data:`neuralode.data.trajectories.LINEAR_3D`,
8 trajectories from random starts, 200 points on ``[0, 10]``) with the same snippet minibatches
(MSE, Adam), and reads the recovered matrix off the layer.

Headline metrics (``result.json``):

* ``traj_mse`` — mean squared error of the learned trajectory against the true one over the
  whole span ``[0, t_max]``, integrated from the true initial state(s) only (no re-anchoring
  on observations), averaged over times, trajectories and coordinates.
* ``matrix_error`` (``fit-linear`` only) — relative Frobenius error ``||W - A||_F / ||A||_F``.
* ``traj_mse_initial`` — the same MSE for the untrained model (for scale); ``final_loss``;
  ``nfe_forward`` (NFE of the last training batch's solve); ``train_seconds``.

Figures: true vs learned trajectory (time series and phase plot), true vs learned vector field,
the training curves (loss and ``traj_mse`` over steps); for ``fit-linear`` also the true,
learned and difference matrices.

The gradient strategy defaults to ``"direct"`` (backprop through the solver): for a 2-D state
and 10-point snippets it is exact for the discretised solve and faster than the adjoint;
``--set gradient=adjoint`` switches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register


@dataclass
class SpiralConfig:
    """Defaults = torchdiffeq's ode_demo (2,000 iterations), except lr 3e-3 with a cosine decay."""

    n_points: int = 1000          # observations on [0, t_max]
    t_max: float = 25.0
    field: str = "cubic"          # "cubic": demo MLP on y**3 features; "mlp": tanh MLP on y
    hidden: int = 50
    batch_time: int = 10          # observations per snippet
    batch_size: int = 20          # snippets per step
    steps: int = 2000
    optimizer: str = "rmsprop"    # ode_demo: RMSprop
    lr: float = 3e-3              # ode_demo: 1e-3
    schedule: str = "cosine"      # to 0 over the steps; ode_demo: "constant"
    loss: str = "l1"              # ode_demo: mean |pred - y|
    method: str = "dopri5"
    rtol: float = 1e-7            # torchdiffeq defaults, as the demo
    atol: float = 1e-9
    gradient: str = "direct"
    eval_every: int = 50          # steps between whole-span traj_mse evaluations
    checkpoint_every: int = 200
    threads: int = 1

    @classmethod
    def quick(cls) -> "SpiralConfig":
        return cls(steps=800, eval_every=100)


@dataclass
class LinearConfig:
    """A stable 3-D linear system; its matrix is recovered from trajectory snippets."""

    dim: int = 3                  # 2 (LINEAR_2D) or 3 (LINEAR_3D)
    n_traj: int = 8               # trajectories from seeded random starts
    n_points: int = 200           # observations on [0, t_max] per trajectory
    t_max: float = 10.0
    data_seed: int = 0
    batch_time: int = 10
    batch_size: int = 20
    steps: int = 1500
    optimizer: str = "adam"
    lr: float = 1e-2
    schedule: str = "constant"
    loss: str = "mse"
    method: str = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    gradient: str = "direct"
    eval_every: int = 50
    checkpoint_every: int = 200
    threads: int = 1

    @classmethod
    def quick(cls) -> "LinearConfig":
        return cls(steps=400, eval_every=50)


# ----------------------------------------------------------------------------------- models


class CubicField(nn.Module):
    """torchdiffeq ode_demo's ``ODEFunc``: ``Linear(tanh(Linear(y**3)))``, weights ~ N(0, 0.1²)."""

    def __init__(self, dim: int = 2, hidden: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.1)
                nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


class MLPField(nn.Module):
    """A generic autonomous field: two tanh hidden layers on ``y`` itself."""

    def __init__(self, dim: int = 2, hidden: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class LinearField(nn.Module):
    """``dy/dt = W y``; ``W`` starts at zero (no prior on the dynamics)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y)

    @property
    def matrix(self) -> torch.Tensor:
        return self.linear.weight


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    makers = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name not in makers:
        raise ValueError(f"optimizer must be one of {sorted(makers)}, got {name!r}")
    return makers[name](params, lr=lr)


def _loss(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "l1":
        return (pred - target).abs().mean()
    if name == "mse":
        return ((pred - target) ** 2).mean()
    raise ValueError(f"loss must be 'l1' or 'mse', got {name!r}")


# ----------------------------------------------------------------------------------- training


def _trajectory(block, data) -> torch.Tensor:
    """The learned model's trajectory over the whole span from the true initial state(s)."""
    with torch.no_grad():
        return block(data.y0, t=data.t)


def _traj_mse(block, data) -> float:
    return float(((_trajectory(block, data) - data.y) ** 2).mean())


def _train(config, run: Run, data, field: nn.Module, name: str) -> dict[str, Any]:
    """The ode_demo loop, resumable: snippet batches from the global RNG, one solve per step."""
    from neuralode.data.trajectories import snippet_batch
    from neuralode.nn import ODEBlock

    torch.set_num_threads(config.threads)
    # the caller keeps the CPU copy for the figures
    data = dataclasses.replace(data, **{k: getattr(data, k).to(run.device) for k in ("t", "y", "y0", "matrix")})
    block = ODEBlock(field, t=data.t[:2], method=config.method, rtol=config.rtol, atol=config.atol,
                     gradient=config.gradient).to(run.device)
    opt = _optimizer(config.optimizer, block.parameters(), config.lr)
    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {config.schedule!r}")
    cosine = config.schedule == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)) if cosine else 1.0)
    initial_mse = _traj_mse(block, data)
    step = run.restore_training(block, opt, sched)
    history: dict[str, list] = {"step": [], "loss": [], "eval_step": [0], "traj_mse": [initial_mse]}
    train_seconds = 0.0
    last_nfe = 0
    if step and run.last_checkpoint is not None:
        extra = run.last_checkpoint.get("extra", {})
        history = {k: list(v) for k, v in extra["history"].items()}
        train_seconds = float(extra["train_seconds"])
        last_nfe = int(extra["last_nfe"])

    def state() -> dict[str, Any]:
        return run.training_state(step, block, opt, sched, history=history, train_seconds=train_seconds,
                                  last_nfe=last_nfe)

    bar = run.progress(config.steps, name, initial=step)
    while step < config.steps:
        run.check_interrupt(state)
        t0 = time.perf_counter()
        y0, t, y = snippet_batch(data, config.batch_time, config.batch_size)
        pred = block(y0, t=t)
        loss = _loss(config.loss, pred, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        train_seconds += time.perf_counter() - t0
        step += 1
        last_nfe = block.nfe
        record: dict[str, Any] = {"loss": loss.item(), "nfe": last_nfe, "nfe_backward": block.nfe_backward}
        history["step"].append(step)
        history["loss"].append(record["loss"])
        if step % config.eval_every == 0 or step == config.steps:
            record["traj_mse"] = _traj_mse(block, data)
            history["eval_step"].append(step)
            history["traj_mse"].append(record["traj_mse"])
        run.log(step, **record)
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.3g}", nfe=record["nfe"],
                        traj_mse=f"{history['traj_mse'][-1]:.3g}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.save_checkpoint(state())
    bar.close()
    traj_mse = _traj_mse(block, data)
    block.to("cpu")  # the figures and the recovered matrix are read on the CPU
    return {
        "block": block,
        "history": history,
        "traj_mse": traj_mse,
        "traj_mse_initial": history["traj_mse"][0],
        "final_loss": history["loss"][-1] if history["loss"] else float("nan"),
        "nfe_forward": last_nfe,
        "train_seconds": train_seconds,
    }


# ----------------------------------------------------------------------------------- figures


def _field_grid(fn, lim: tuple[float, float, float, float], n: int = 25):
    """A 2-D field ``fn(points (N, 2)) -> (N, 2)`` on an ``n x n`` grid: ``(xx, yy, u, v)``."""
    xx, yy = np.meshgrid(np.linspace(lim[0], lim[1], n), np.linspace(lim[2], lim[3], n))
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float32)
    with torch.no_grad():
        v = fn(pts).numpy()
    return xx, yy, v[:, 0].reshape(xx.shape), v[:, 1].reshape(xx.shape)


def _limits(points: np.ndarray, pad: float = 0.15) -> tuple[float, float, float, float]:
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-3)
    return (lo[0] - pad * span[0], hi[0] + pad * span[0], lo[1] - pad * span[1], hi[1] + pad * span[1])


def _trajectory_figure(data, learned: np.ndarray, title: str, n_show: int = 3):
    """Time series of each coordinate (first trajectories) and the (y1, y2) phase plot."""
    from neuralode.report.plots import figure

    true = data.y.numpy()
    t = data.t.numpy()
    n_show = min(n_show, true.shape[1])
    fig, axes = figure(1, 2, size=(5.2, 3.8))
    colors = ["C0", "C1", "C2", "C3"]
    for b in range(n_show):
        for d in range(data.dim):
            ax = axes[0]
            ax.plot(t, true[:, b, d], color=colors[d % 4], lw=1.6, alpha=0.45,
                    label=f"true y{d + 1}" if b == 0 else None)
            ax.plot(t, learned[:, b, d], color=colors[d % 4], lw=1.0, ls="--",
                    label=f"learned y{d + 1}" if b == 0 else None)
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("y")
    axes[0].set_title("time series" + (f" (first {n_show} trajectories)" if n_show > 1 else ""))
    axes[0].legend(fontsize="x-small", ncol=2)
    for b in range(true.shape[1]):
        axes[1].plot(true[:, b, 0], true[:, b, 1], color="C0", lw=1.6, alpha=0.45, label="true" if b == 0 else None)
        axes[1].plot(learned[:, b, 0], learned[:, b, 1], color="C3", lw=1.0, ls="--",
                     label="learned" if b == 0 else None)
        axes[1].plot(true[0, b, 0], true[0, b, 1], "k.", ms=5)
    axes[1].set_xlabel("y1")
    axes[1].set_ylabel("y2")
    axes[1].set_title("phase plot (y1, y2)")
    axes[1].set_aspect("equal", adjustable="datalim")
    axes[1].legend(fontsize="small")
    fig.suptitle(title)
    return fig


def _field_figure(data, block, title: str):
    """True vs learned vector field in the (y1, y2) plane (other coordinates at 0)."""
    from matplotlib.colors import Normalize

    from neuralode.report.plots import figure

    lim = _limits(data.y.reshape(-1, data.dim)[:, :2].numpy())
    dim = data.dim

    def lift(p: torch.Tensor) -> torch.Tensor:
        return torch.cat([p, p.new_zeros(p.shape[0], dim - 2)], dim=1) if dim > 2 else p

    fig, axes = figure(1, 2, size=(4.4, 4.2))
    grids = [_field_grid(lambda p: data.field(lift(p))[:, :2], lim),
             _field_grid(lambda p: block.func(torch.zeros(()), lift(p))[:, :2], lim)]
    speeds = [np.log1p(np.hypot(u, v)) for _, _, u, v in grids]
    norm = Normalize(vmin=min(s.min() for s in speeds), vmax=max(s.max() for s in speeds))
    for ax, (xx, yy, u, v), speed, name in zip(axes, grids, speeds, ("true field", "learned field")):
        ax.streamplot(xx, yy, u, v, color=speed, cmap="viridis", norm=norm, density=1.0, linewidth=0.8)
        ax.set_xlim(lim[0], lim[1])
        ax.set_ylim(lim[2], lim[3])
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.plot(data.y[:, 0, 0].numpy(), data.y[:, 0, 1].numpy(), color="k", lw=0.6, alpha=0.5)
        ax.set_xlabel("y1")
        ax.set_ylabel("y2")
    fig.suptitle(title + ("" if dim == 2 else " (slice y3 = 0)" if dim == 3 else f" (slice y3..y{dim} = 0)"))
    return fig


def _curves_figure(history: dict[str, list], title: str):
    from neuralode.report.plots import figure, line_plot

    fig, axes = figure(1, 2, size=(4.2, 3.2))
    loss = np.asarray(history["loss"], dtype=float)
    width = max(1, min(len(loss) // 40, len(loss)))
    smooth = np.convolve(loss, np.ones(width) / width, mode="valid") if len(loss) else loss
    axes[0].plot(history["step"], loss, color="C0", alpha=0.25, lw=0.6)
    line_plot({f"mean of {width} steps": (np.asarray(history["step"][width - 1:]), smooth)}, xlabel="step",
              ylabel="loss", logy=True, ax=axes[0], title="snippet loss (light: per step)")
    line_plot({"traj_mse": (history["eval_step"], history["traj_mse"])}, xlabel="step",
              ylabel="MSE over [0, t_max]", logy=True, ax=axes[1], title="whole-span trajectory MSE")
    fig.suptitle(title)
    return fig


def _matrix_figure(true: torch.Tensor, learned: torch.Tensor):
    from neuralode.report.plots import figure

    fig, axes = figure(1, 3, size=(3.2, 3.0))
    vmax = float(true.abs().max())
    diff = (learned - true).numpy()
    for ax, m, name in zip(axes, (true.numpy(), learned.numpy(), diff), ("true A", "learned W", "W - A")):
        scale = vmax if name != "W - A" else max(float(np.abs(diff).max()), 1e-12)
        im = ax.imshow(m, cmap="coolwarm", vmin=-scale, vmax=scale)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.1e}" if name == "W - A" else f"{v:.3f}", ha="center", va="center", fontsize=7)
        ax.set_title(name)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


# ----------------------------------------------------------------------------------- runs


def _common_report(run: Run, config, data, out: dict[str, Any], label: str) -> list[str]:
    from neuralode.report.markdown import image

    learned = _trajectory(out["block"], data).numpy()
    traj = run.save_figure(_trajectory_figure(data, learned, f"{label}: true vs learned trajectory"), "trajectory.png")
    field = run.save_figure(_field_figure(data, out["block"], label), "vector_field.png")
    curves = run.save_figure(_curves_figure(out["history"], label), "training.png")
    return [image(traj, "true (solid) vs learned (dashed) trajectory from the true initial state over the whole span"),
            image(field, "true vs learned vector field (streamlines, colour = log(1 + speed), same scale in both); black: a true trajectory"),
            image(curves, "training loss on snippets and the whole-span trajectory MSE during training")]


def run_spiral(config: SpiralConfig, run: Run) -> dict[str, Any]:
    from neuralode.data.trajectories import cubic_spiral
    from neuralode.report.markdown import metrics_table

    if config.field not in ("cubic", "mlp"):
        raise ValueError(f"field must be 'cubic' or 'mlp', got {config.field!r}")
    data = cubic_spiral(config.n_points, config.t_max)
    field = CubicField(2, config.hidden) if config.field == "cubic" else MLPField(2, config.hidden)
    out = _train(config, run, data, field, "fit-spiral")
    metrics = {k: out[k] for k in ("traj_mse", "traj_mse_initial", "final_loss", "nfe_forward", "train_seconds")}
    figures = _common_report(run, config, data, out, "dy/dt = y³A")
    field_text = ("the demo's MLP on cubic features, Linear(2→{h}) → tanh → Linear({h}→2) applied to y³"
                  if config.field == "cubic" else "a generic tanh MLP on y, 2→{h}→{h}→2").format(h=config.hidden)
    run.write_report(
        "# fit-spiral: learning dy/dt = y³A from trajectory snippets (torchdiffeq ode_demo)\n\n"
        f"Data: one trajectory from y0 = [2, 0], {config.n_points} points on [0, {config.t_max:g}], "
        "A = [[-0.1, 2], [-2, -0.1]].\n"
        f"Model: Neural ODE, field = {field_text}; {config.method} rtol={config.rtol:g} atol={config.atol:g}, "
        f"{config.gradient} gradients.\n"
        f"Training: {config.steps} steps of {config.batch_size} snippets × {config.batch_time} observations, "
        f"{config.loss} loss, {config.optimizer} lr={config.lr:g} ({config.schedule}).\n\n"
        + metrics_table([metrics])
        + "\n`traj_mse`: MSE of the learned trajectory integrated from y0 over the whole span vs the true one "
        "(`traj_mse_initial`: the untrained model).\n\n" + "\n".join(figures))
    return metrics


def run_linear(config: LinearConfig, run: Run) -> dict[str, Any]:
    from neuralode.data.trajectories import LINEAR_2D, LINEAR_3D, linear_system
    from neuralode.report.markdown import image, metrics_table

    matrices = {2: LINEAR_2D, 3: LINEAR_3D}
    if config.dim not in matrices:
        raise ValueError(f"dim must be 2 or 3, got {config.dim!r}")
    data = linear_system(matrices[config.dim], n_traj=config.n_traj, n_points=config.n_points,
                         t_max=config.t_max, seed=config.data_seed)
    field = LinearField(config.dim)
    out = _train(config, run, data, field, "fit-linear")
    learned = field.matrix.detach().clone()
    true = data.matrix
    matrix_error = float(torch.linalg.norm(learned - true) / torch.linalg.norm(true))
    metrics = {"traj_mse": out["traj_mse"], "matrix_error": matrix_error,
               **{k: out[k] for k in ("traj_mse_initial", "final_loss", "nfe_forward", "train_seconds")}}
    run.log(config.steps, matrix_error=matrix_error)
    figures = _common_report(run, config, data, out, f"dy/dt = A y ({config.dim}-D)")
    mat = run.save_figure(_matrix_figure(true, learned), "matrix.png")
    eig_true = torch.linalg.eigvals(true.double())
    eig_learned = torch.linalg.eigvals(learned.double())

    def fmt(e: torch.Tensor) -> str:
        ordered = sorted(e.tolist(), key=lambda z: (z.real, z.imag))
        return ", ".join(f"{z.real:.4f}{z.imag:+.4f}i" for z in ordered)

    run.write_report(
        f"# fit-linear: recovering a {config.dim}-D linear system from trajectory snippets\n\n"
        f"Data: {config.n_traj} exact trajectories (matrix exponential) from random N(0, I) starts, "
        f"{config.n_points} points each on [0, {config.t_max:g}].\n"
        f"Model: dy/dt = W y with W a bias-free linear layer starting at 0; {config.method} "
        f"rtol={config.rtol:g} atol={config.atol:g}, {config.gradient} gradients.\n"
        f"Training: {config.steps} steps of {config.batch_size} snippets × {config.batch_time} observations, "
        f"{config.loss} loss, {config.optimizer} lr={config.lr:g} ({config.schedule}).\n\n"
        + metrics_table([metrics])
        + "\n`matrix_error` = ‖W − A‖_F / ‖A‖_F; `traj_mse` over the whole span of every trajectory, "
        "integrated from the true initial states.\n\n"
        f"Eigenvalues of A: {fmt(eig_true)}  \nEigenvalues of W: {fmt(eig_learned)}\n\n"
        + "\n".join(figures) + "\n" + image(mat, "true matrix, recovered matrix and their difference"))
    return metrics


register("fit-spiral", config=SpiralConfig, run=run_spiral,
         description="Learn dy/dt = y³A (torchdiffeq's ode_demo) from trajectory snippets: trajectory MSE, fields",
         quick_time="~30 s")
register("fit-linear", config=LinearConfig, run=run_linear,
         description="Learn a stable 3-D linear system dy/dt = Ay from trajectory snippets and recover A",
         quick_time="~15 s")
