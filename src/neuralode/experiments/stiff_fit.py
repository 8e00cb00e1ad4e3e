"""stiff-fit: learning the rate constants of Robertson's stiff kinetics with an implicit method.

Robertson's three-species reaction (rate constants 0.04, 3e7, 1e4; eigenvalues from ~0 to
~-1e4) is observed with 1% multiplicative noise at log-spaced times from 1e-5 to ``t_max``.
The model is the same kinetics with the three constants as parameters (in log10 space,
started half a decade off the truth). Each training step solves the ODE with an implicit
method (``kvaerno5`` by default) and gets gradients by backpropagation through the Newton
iterates (``gradient="direct"``). The adjoint (whose backward solve runs the same implicit method
on the adjoint system) is selectable but currently fails on this problem: its backward solve
underflows its step size just after the last observation (the observation scaling makes the
adjoint of the tiny second species ~1e9), which is an open issue. The explicit baseline,
``dopri5``, gets the same per-solve step budget as the implicit forward solves used on average
(times ``dopri5_budget_factor``): on this problem its steps are held to its stability limit
(h ≈ 1e-3·(2/|λ|)) and it cannot reach ``t_max``.

Report: recovered constants vs truth, loss curve, forward/backward NFE per iteration, time,
and the dopri5 attempt.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register

TRUE_K = (0.04, 3e7, 1e4)


@dataclass
class Config:
    """Robertson rate-constant recovery."""

    t_max: float = 1e4            # last observation time
    n_obs: int = 40               # log-spaced observation times in [1e-5, t_max]
    noise: float = 0.01           # multiplicative Gaussian noise on the observations
    offset: tuple = (0.5, -0.5, 0.5)  # initial log10 error of each constant
    steps: int = 60               # Adam steps
    lr: float = 0.05              # on log10 k
    method: str = "kvaerno5"
    rtol: float = 1e-6
    atol: float = 1e-10
    gradient: str = "direct"      # "adjoint" fails on this problem for now (backward step underflow)
    dopri5_budget_factor: float = 10.0  # dopri5's step budget, in multiples of the implicit solve's steps
    checkpoint_every: int = 10
    threads: int = 1

    @classmethod
    def quick(cls) -> "Config":
        return cls(t_max=10.0, n_obs=12, steps=8, lr=0.1)


class Robertson(nn.Module):
    """Robertson's kinetics with learnable log10 rate constants; works on any leading batch shape."""

    def __init__(self, log10_k):
        super().__init__()
        self.log10_k = nn.Parameter(torch.as_tensor(log10_k, dtype=torch.float64).clone())

    def forward(self, t, y):
        k1, k2, k3 = (10.0 ** self.log10_k).unbind()
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2**2, k2 * y2**2], dim=-1)


def observations(config: Config):
    """Noisy observations of the true kinetics (SciPy's Radau at rtol 1e-10 as the truth)."""
    from scipy.integrate import solve_ivp

    t = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-5, math.log10(config.t_max), config.n_obs, dtype=torch.float64)])
    truth = Robertson(torch.log10(torch.tensor(TRUE_K, dtype=torch.float64)))

    def fn(s, y):
        with torch.no_grad():
            return truth(None, torch.from_numpy(y)).numpy()

    out = solve_ivp(fn, (0.0, float(t[-1])), [1.0, 0.0, 0.0], method="Radau", t_eval=t.numpy(), rtol=1e-10,
                    atol=1e-14)
    clean = torch.from_numpy(out.y.T.copy())
    gen = torch.Generator().manual_seed(1234)
    noisy = clean * (1 + config.noise * torch.randn(clean.shape, generator=gen, dtype=torch.float64))
    return t, clean, noisy


def _loss(pred, obs, scale):
    return (((pred - obs) / scale) ** 2).mean()


def run(config: Config, run: Run) -> dict[str, Any]:
    import neuralode
    from neuralode.report.markdown import image, metrics_table

    torch.set_num_threads(config.threads)
    t, clean, obs = observations(config)
    scale = obs.abs().amax(dim=0)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    start = torch.log10(torch.tensor(TRUE_K, dtype=torch.float64)) + torch.tensor(config.offset, dtype=torch.float64)
    model = Robertson(start)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    step = run.restore_training(model, opt)
    history: dict[str, list] = {"loss": [], "nfe": [], "nfe_backward": [], "steps": [], "k_error": []}
    seconds = 0.0
    if step and run.last_checkpoint is not None:
        extra = run.last_checkpoint.get("extra", {})
        history = {k: list(v) for k, v in extra["history"].items()}
        seconds = float(extra["seconds"])

    def state():
        return run.training_state(step, model, opt, history=history, seconds=seconds)

    def k_error() -> float:
        k = 10.0 ** model.log10_k.detach()
        return float(((k - torch.tensor(TRUE_K, dtype=torch.float64)).abs() / torch.tensor(TRUE_K)).max())

    while step < config.steps:
        run.check_interrupt(state)
        t0 = time.perf_counter()
        sol = neuralode.solve(model, y0, t, method=config.method, rtol=config.rtol, atol=config.atol,
                              gradient=config.gradient)
        loss = _loss(sol.ys, obs, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
        step += 1
        record = {"loss": loss.item(), "nfe": sol.stats.nfe, "nfe_backward": sol.stats.nfe_backward,
                  "steps": sol.stats.n_accepted + sol.stats.n_rejected, "k_error": k_error()}
        for key, value in record.items():
            history[key].append(value)
        run.log(step, **record)
        run.info(f"step {step}: loss {record['loss']:.3g}, k error {record['k_error']:.3g}, "
                 f"NFE {record['nfe']}+{record['nfe_backward']}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.save_checkpoint(state())

    with torch.no_grad():
        final = neuralode.solve(model, y0, t, method=config.method, rtol=config.rtol, atol=config.atol)
    k_learned = (10.0 ** model.log10_k.detach()).tolist()

    # dopri5 with the same kind of budget: the implicit solve's steps times a factor
    mean_steps = sum(history["steps"]) / max(len(history["steps"]), 1)
    budget = max(int(config.dopri5_budget_factor * mean_steps), 10)
    baseline = Robertson(start)
    t0 = time.perf_counter()
    explicit = neuralode.solve(baseline, y0, t, method="dopri5", rtol=config.rtol, atol=config.atol,
                               options={"max_num_steps": budget}, on_failure="return")
    explicit_loss = _loss(explicit.ys, obs, scale) if explicit.success else None
    if explicit_loss is not None:
        explicit_loss.backward()
    dopri5_seconds = time.perf_counter() - t0

    metrics = {
        "k_rel_error_max": k_error(),
        "k_rel_error_initial": float(max(abs(10 ** o - 1) for o in config.offset)),
        "k1": k_learned[0], "k2": k_learned[1], "k3": k_learned[2],
        "final_loss": float(_loss(final.ys, obs, scale)),
        "initial_loss": history["loss"][0],
        "noise_floor_loss": float(_loss(clean, obs, scale)),
        "nfe_forward_mean": sum(history["nfe"]) / len(history["nfe"]),
        "nfe_backward_mean": sum(history["nfe_backward"]) / len(history["nfe_backward"]),
        "train_seconds": seconds,
        "dopri5_budget_steps": budget,
        "dopri5_status": explicit.status.code,
        "dopri5_t_reached": float(explicit.t_reached or 0.0),
        "dopri5_seconds": dopri5_seconds,
    }
    figures = _figures(run, history, t, obs, cast(torch.Tensor, final.ys).detach(), explicit)
    run.write_report(
        "# stiff-fit: Robertson's rate constants from noisy observations\n\n"
        f"Observations: {config.n_obs} log-spaced times in [1e-5, {config.t_max:g}], "
        f"{config.noise:.0%} multiplicative noise. Model: the kinetics with log10 k learned from "
        f"{list(config.offset)} decades off; {config.method} rtol={config.rtol:g} atol={config.atol:g}, "
        f"{config.gradient} gradients, Adam lr={config.lr:g}, {config.steps} steps.\n\n"
        "| constant | truth | start | learned |\n|---|---:|---:|---:|\n"
        + "".join(f"| k{i + 1} | {TRUE_K[i]:.4g} | {10 ** float(start[i]):.4g} | {k_learned[i]:.4g} |\n"
                  for i in range(3))
        + "\n" + metrics_table([metrics])
        + f"\ndopri5 with a budget of {budget} steps per solve ({config.dopri5_budget_factor:g}× the implicit "
          f"solve's mean): status `{explicit.status.code}`, reached t = {float(explicit.t_reached or 0.0):.3g} of "
          f"{config.t_max:g} in {dopri5_seconds:.1f} s.\n\n"
        + "\n".join(image(f, cap) for f, cap in figures))
    return metrics


def _figures(run: Run, history, t, obs, pred, explicit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].semilogy(history["loss"])
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].semilogy(history["k_error"])
    axes[1].set(xlabel="step", ylabel="max |k - k*| / k*", title="rate-constant error")
    axes[2].plot(history["nfe"], label="forward")
    axes[2].plot(history["nfe_backward"], label="backward (adjoint)")
    axes[2].set(xlabel="step", ylabel="NFE", title="evaluations per step")
    axes[2].legend()
    fig.tight_layout()
    out.append((run.save_figure(fig, "training.png"), "loss, rate-constant error and NFE per step"))
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    tt = t[1:].numpy()
    for i, ax in enumerate(axes):
        ax.semilogx(tt, obs[1:, i].numpy(), ".", label="observed")
        ax.semilogx(tt, pred[1:, i].numpy(), "-", label="learned model")
        ax.set(xlabel="t", title=f"species {i + 1}")
    axes[0].legend()
    fig.tight_layout()
    out.append((run.save_figure(fig, "fit.png"), "observations and the learned model's trajectories"))
    plt.close(fig)
    return out


register("stiff-fit", config=Config, run=run,
         description="Learn Robertson's stiff rate constants with an implicit method and the adjoint; dopri5 fails",
         quick_time="~1 min")

try:
    from neuralode.report.headlines import Headline, declare

    declare("stiff-fit",
            Headline("k_rel_error_max", "max relative error of the learned rate constants", target=0.05,
                     goal="at_most", source="issue 10: recover the constants"),
            Headline("nfe_forward_mean", "forward NFE per step (implicit)", goal="info"),
            Headline("dopri5_t_reached", "t reached by dopri5 within its budget", goal="info"))
except ImportError:  # pragma: no cover - the report package is optional for the experiment itself
    pass
