"""2-D classification: Neural ODE vs Augmented Neural ODE vs ResNet (Dupont et al. 2019).

Data (:mod:`neuralode.data.toy2d`): half moons, concentric annuli (class 0 for r < 0.5,
class 1 for 1 < r < 1.5, Dupont et al.'s *concentric spheres* in 2-D) and two interleaved
spirals; ``n_train`` / ``n_test`` points, seeded. Of these, Dupont et al. (paper and released
code, ``config.json``) use only the concentric spheres (and shifted sines); moons and spirals are
this project's additions, and their targets are project targets.

Models, each followed by a linear readout to one number, trained as a regression to -1 (class 0)
/ +1 (class 1), the predicted class being the sign. Dupont et al.'s code uses the Huber loss
(``SmoothL1Loss``; ``loss="huber"``); the default is the mean squared error, which equals it up
to a factor 1/2 wherever ``|output - target| < 1`` (a factor Adam's normalisation removes), so
the two differ only on badly misclassified points. ``loss="bce"`` trains the output as a logit
instead; with an unbounded ReLU field that lets the flow push points ever farther out to shrink
the loss, and the NFE grows with it. ``time_dependent=True`` concatenates ``t`` to the field's
input, as Dupont et al.'s released configuration does (the default field is autonomous; on the
quick configuration the two give the same verdicts):

* ``node`` — a Neural ODE on the data dimension: ``dz/dt = f(z)``, ``z(0) = x`` in R², ``f`` an
  MLP 2 → hidden → hidden → 2 (ReLU, as Dupont et al.), solved on ``[0, 1]`` with adaptive
  dopri5 at rtol = atol = 1e-3, readout of ``z(1)``. Its flow is a homeomorphism of the plane,
  so the annuli cannot be pulled apart without very thin, stretched shapes — which costs NFE.
* ``anode`` — the same with ``augment_dim = 5`` zero dimensions appended (state in R⁷).
* ``resnet`` — ``resnet_blocks`` residual blocks ``x + g(x)`` on the data dimension, ``g`` an
  MLP 2 → w → 2 (ReLU), with ``w`` chosen so the ResNet's parameter count matches the NODE's
  (the defaults give 1,221 NODE parameters and 10 blocks of width 24, 1,223 parameters; the
  ANODE has 1,551). A discrete ResNet is not a homeomorphism, so it is not constrained as NODE is.

Every (data set, model) pair is trained on its own with Adam, ``batch_size`` random training
points per step drawn from the global RNG; each pair re-seeds torch with ``seed`` + a hash of
its name before building the model, so its result does not depend on which other pairs ran.
Gradients are ``"direct"`` (backprop through dopri5; exact for the discretised solve and the
fastest choice for a 2-7 dimensional state; ``--set gradient=adjoint`` switches).

Headline metrics (``result.json``):

* ``accuracy_<model>_<dataset>`` — test accuracy (fraction in [0, 1]) at the end of training;
* ``nfe_<model>_<dataset>``, ``nfe_first_<model>_<dataset>``, ``nfe_train_<model>_<dataset>`` —
  forward function evaluations per training step, averaged over the last epoch, the first
  epoch and all of training (an epoch is ``ceil(n_train / batch_size)`` steps). Dupont et al.
  record the forward NFE of every step and plot its mean per epoch over training: NODE's grows
  over training on concentric spheres while ANODE's stays nearly flat. The headline compares
  the training means, NODE / ANODE, i.e. the two curves over the whole of training; the
  last-epoch value alone is a count of dopri5 steps (6 evaluations each) in a short run, so a
  single extra step of either model swings that ratio between 1.0 and 1.3. For the ResNet all
  three are its number of blocks (the field evaluations of one forward pass);
* ``params_<model>`` — trainable parameters (on 2-D data, readout included).

Figures: decision regions of each model on each data set; the flow of test points through time
for NODE and ANODE (snapshots of the hidden state; ANODE's 7-D state shown in the plane spanned
by the readout direction and the top principal direction orthogonal to it, so the horizontal
axis is exactly what the readout sees); forward NFE over training, NODE vs ANODE per data set;
training loss and test accuracy over training.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register
from neuralode.report.headlines import Headline, declare

MODELS = ("node", "anode", "resnet")
LOSSES = ("huber", "mse", "bce")
NFE_RATIO_TARGET = 1.1  # the headline's threshold for NODE / ANODE forward NFE over training
LABELS = {"node": "NODE", "anode": "ANODE", "resnet": "ResNet"}


@dataclass
class Config:
    """Defaults = the full configuration (Dupont et al.'s field sizes and solver tolerances)."""

    datasets: tuple[str, ...] = ("moons", "annuli", "spirals")
    models: tuple[str, ...] = MODELS
    n_train: int = 2000
    n_test: int = 1000
    data_seed: int = 0             # fixes the data alone (not the run's seed)
    hidden: int = 32               # field MLP width (two hidden layers)
    activation: str = "relu"       # "relu" (Dupont et al.), "tanh" or "softplus"
    time_dependent: bool = False   # f(t, z): time concatenated to the field's input (Dupont et al.'s config)
    augment_dim: int = 5           # ANODE's extra dimensions
    t1: float = 1.0                # integrate on [0, t1]
    resnet_blocks: int = 10        # ResNet depth; width is chosen to match the NODE's parameters
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    gradient: str = "direct"
    steps: int = 3000              # Adam steps per (data set, model)
    batch_size: int = 64
    lr: float = 3e-3
    loss: str = "mse"              # regression to -1/+1: "mse", or "huber" (Dupont et al.'s SmoothL1); "bce": logistic
    schedule: str = "cosine"       # "cosine" (to 0 over the steps) or "constant"
    eval_every: int = 250          # steps between test-accuracy evaluations
    checkpoint_every: int = 250
    flow_points: int = 400         # test points drawn in the flow figures
    flow_snapshots: int = 5
    threads: int = 1

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_train=1000, n_test=500, steps=300, eval_every=100, flow_points=300)


# --------------------------------------------------------------------------------- models


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class MLPField(nn.Module):
    """Field ``f(t, z)``: (1 +) dim → hidden → hidden → dim (Dupont et al.'s ODEFunc).

    With ``time_dependent`` (Dupont et al.'s released configuration) the time is concatenated to
    the input of the first layer; otherwise the field is autonomous, ``f(z)``.
    """

    def __init__(self, dim: int, hidden: int, activation: str = "relu", time_dependent: bool = False):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.time_dependent = time_dependent
        self.net = nn.Sequential(nn.Linear(dim + int(time_dependent), hidden), act(), nn.Linear(hidden, hidden),
                                 act(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.time_dependent:
            z = torch.cat([torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(*z.shape[:-1], 1), z], -1)
        return self.net(z)


class ODEClassifier(nn.Module):
    """``readout(ODEBlock(augment(x)))``: NODE for ``augment_dim=0``, ANODE otherwise."""

    def __init__(self, data_dim: int, augment_dim: int, hidden: int, activation: str, t1: float,
                 method: str, rtol: float, atol: float, gradient: str, time_dependent: bool = False):
        from neuralode.nn import Augment, ODEBlock

        super().__init__()
        self.augment = Augment(augment_dim)
        dim = data_dim + augment_dim
        self.block = ODEBlock(MLPField(dim, hidden, activation, time_dependent), t=(0.0, t1), method=method,
                              rtol=rtol, atol=atol, gradient=gradient)
        self.readout = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.block(self.augment(x))).squeeze(-1)

    def trajectory(self, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``times`` (leading dim), shape ``(len(times), N, data_dim + augment_dim)``."""
        return self.block(self.augment(x), t=times)

    @property
    def nfe(self) -> int:
        return self.block.nfe

    @property
    def nfe_backward(self) -> int:
        return self.block.nfe_backward


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, width: int, activation: str):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), _ACTIVATIONS[activation](), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetClassifier(nn.Module):
    """``n_blocks`` residual blocks on the data dimension, then a linear readout."""

    def __init__(self, data_dim: int, n_blocks: int, width: int, activation: str):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(data_dim, width, activation) for _ in range(n_blocks)))
        self.readout = nn.Linear(data_dim, 1)
        self.n_blocks = n_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.blocks(x)).squeeze(-1)

    @property
    def nfe(self) -> int:
        return self.n_blocks

    @property
    def nfe_backward(self) -> int:
        """0: backprop through the blocks evaluates no field (its cost is in ``nfe``'s blocks)."""
        return 0


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resnet_width(target_params: int, data_dim: int, n_blocks: int) -> int:
    """The block width whose ResNet has the parameter count closest to ``target_params``."""
    # one block: (d*w + w) + (w*d + d); readout d + 1
    per_block = (target_params - (data_dim + 1)) / n_blocks
    return max(1, round((per_block - data_dim) / (2 * data_dim + 1)))


def make_model(name: str, config: Config, data_dim: int = 2) -> ODEClassifier | ResNetClassifier:
    if name in ("node", "anode"):
        return ODEClassifier(data_dim, config.augment_dim if name == "anode" else 0, config.hidden,
                             config.activation, config.t1, config.method, config.rtol, config.atol,
                             config.gradient, config.time_dependent)
    if name == "resnet":
        node_params = count_params(make_model("node", config, data_dim))
        width = resnet_width(node_params, data_dim, config.resnet_blocks)
        return ResNetClassifier(data_dim, config.resnet_blocks, width, config.activation)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


# --------------------------------------------------------------------------------- training


def _job_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**62


def _accuracy(model: nn.Module, data) -> float:
    with torch.no_grad():
        return float(((model(data.x) > 0).long() == data.y).float().mean())


def _train_one(config: Config, run: Run, key: str, model: nn.Module, train, test,
               ckpt: dict[str, Any] | None, done: dict[str, Any]) -> dict[str, Any]:
    """Train one (data set, model) pair; resumable from a mid-pair checkpoint ``ckpt``."""
    from neuralode.data.toy2d import Toy2D

    train, test = (Toy2D(d.x.to(run.device), d.y.to(run.device), d.name) for d in (train, test))
    model.to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = 0
    hist: dict[str, list] = {"loss": [], "nfe": [], "nfe_backward": [], "acc_step": [], "acc": []}
    seconds = 0.0
    if ckpt is not None and ckpt.get("extra", {}).get("current") == key:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        run.restore_rng(ckpt["rng"])
        step = int(ckpt["step"])
        hist = {k: list(v) for k, v in ckpt["extra"]["history"].items()}
        seconds = float(ckpt["extra"]["seconds"])
        run.info(f"resumed {key} at step {step}")

    def state() -> dict[str, Any]:
        return run.training_state(step, model, opt, sched, done=done, current=key, history=hist, seconds=seconds)

    bar = run.progress(config.steps, key, initial=step)
    target = train.y.float() if config.loss == "bce" else 2.0 * train.y.float() - 1.0
    while step < config.steps:
        run.check_interrupt(state)
        t0 = time.perf_counter()
        idx = torch.randint(0, len(train), (config.batch_size,))
        out = model(train.x[idx])
        if config.loss == "mse":
            loss = ((out - target[idx]) ** 2).mean()
        elif config.loss == "huber":
            loss = nn.functional.smooth_l1_loss(out, target[idx])
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(out, target[idx])
        nfe = model.nfe
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        seconds += time.perf_counter() - t0
        step += 1
        nfe_b = model.nfe_backward
        hist["loss"].append(loss.item())
        hist["nfe"].append(nfe)
        hist["nfe_backward"].append(nfe_b)
        record: dict[str, Any] = {"job": key, "loss": hist["loss"][-1], "nfe": nfe, "nfe_backward": nfe_b}
        if step % config.eval_every == 0 or step == config.steps:
            hist["acc_step"].append(step)
            hist["acc"].append(_accuracy(model, test))
            record["test_accuracy"] = hist["acc"][-1]
        run.log(step, **record)
        bar.update()
        bar.set_postfix(loss=f"{hist['loss'][-1]:.3g}", nfe=nfe)
        if step % config.checkpoint_every == 0 and step < config.steps:
            run.save_checkpoint(state())
    bar.close()
    result = {"accuracy": _accuracy(model, test), "train_accuracy": _accuracy(model, train)}
    model.to("cpu")  # figures are drawn on the CPU; checkpoints hold CPU tensors
    return {"state": model.state_dict(), "history": hist, "seconds": seconds, **result}


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.data.toy2d import DATASETS, load_toy2d

    bad = [d for d in config.datasets if d not in DATASETS] + [m for m in config.models if m not in MODELS]
    if bad:
        raise ValueError(f"unknown data sets/models {bad}; data sets: {DATASETS}, models: {MODELS}")
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {config.loss!r}")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {config.schedule!r}")
    if config.activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {config.activation!r}")
    torch.set_num_threads(config.threads)
    data = {d: load_toy2d(d, n_train=config.n_train, n_test=config.n_test, seed=config.data_seed)
            for d in config.datasets}
    ckpt = run.load_checkpoint()
    done: dict[str, Any] = dict(ckpt["extra"]["done"]) if ckpt is not None else {}
    models: dict[str, nn.Module] = {}
    for dataset in config.datasets:
        train, test = data[dataset]
        for name in config.models:
            key = f"{name}_{dataset}"
            torch.manual_seed(_job_seed(run.seed, key))
            model = make_model(name, config)
            if key not in done:
                done[key] = _train_one(config, run, key, model, train, test, ckpt, done)
                run.save_checkpoint(run.training_state(config.steps, model, None, done=done, current=""))
            model.load_state_dict(done[key]["state"])
            models[key] = model
            run.info(f"{key}: test accuracy {done[key]['accuracy']:.4f}, "
                     f"NFE {_final_nfe(done[key], model, config):.1f}")
    metrics = _headline(config, done, models)
    _report(config, run, data, models, done, metrics)
    return metrics


def epoch_steps(config: Config) -> int:
    """Training steps per epoch: ``ceil(n_train / batch_size)`` (Dupont et al. train by epochs)."""
    return max(1, math.ceil(config.n_train / config.batch_size))


def epoch_means(values: list[float], config: Config) -> np.ndarray:
    """Per-epoch means of a per-step history (the last epoch may be partial)."""
    n = epoch_steps(config)
    return np.array([np.mean(values[i:i + n]) for i in range(0, len(values), n)], dtype=float)


def _epoch_nfe(result: dict[str, Any], model: nn.Module, config: Config, which: int) -> float:
    """Forward NFE per step, mean over epoch ``which`` (0: first, -1: last), as Dupont et al.'s
    ``epoch_nfe_history``; the ResNet's is its number of blocks."""
    if isinstance(model, ResNetClassifier):
        return float(model.n_blocks)
    means = epoch_means(result["history"]["nfe"], config)
    return float(means[which]) if len(means) else float("nan")


def _training_nfe(result: dict[str, Any], model: nn.Module) -> float:
    """Forward NFE per step, mean over all of training (the forward cost of training)."""
    if isinstance(model, ResNetClassifier):
        return float(model.n_blocks)
    nfe = result["history"]["nfe"]
    return float(np.mean(nfe)) if len(nfe) else float("nan")


def _final_nfe(result: dict[str, Any], model: nn.Module, config: Config) -> float:
    return _epoch_nfe(result, model, config, -1)


def _headline(config: Config, done: dict[str, Any], models: dict[str, nn.Module]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for dataset in config.datasets:
        for name in config.models:
            key = f"{name}_{dataset}"
            metrics[f"accuracy_{key}"] = done[key]["accuracy"]
            metrics[f"nfe_{key}"] = _final_nfe(done[key], models[key], config)
            metrics[f"nfe_first_{key}"] = _epoch_nfe(done[key], models[key], config, 0)
            metrics[f"nfe_train_{key}"] = _training_nfe(done[key], models[key])
    for name in config.models:
        metrics[f"params_{name}"] = count_params(make_model(name, config))
    return metrics


# --------------------------------------------------------------------------------- figures


_LIMITS = {"moons": (-2.0, 2.0, -1.5, 1.5), "annuli": (-2.0, 2.0, -2.0, 2.0), "spirals": (-2.0, 2.0, -2.0, 2.0)}


def _decision_figure(config: Config, data, models, done):
    from neuralode.report.plots import figure

    rows, cols = len(config.datasets), len(config.models)
    fig, axes = figure(rows, cols, size=(3.2, 3.0))
    axes = np.asarray(axes).reshape(rows, cols)
    for i, dataset in enumerate(config.datasets):
        lim = _LIMITS[dataset]
        xx, yy = np.meshgrid(np.linspace(lim[0], lim[1], 150), np.linspace(lim[2], lim[3], 150))
        grid = torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)
        test = data[dataset][1]
        for j, name in enumerate(config.models):
            key = f"{name}_{dataset}"
            ax = axes[i, j]
            with torch.no_grad():
                out = models[key](grid)
                prob = (torch.sigmoid(out) if config.loss == "bce" else (out.clamp(-1, 1) + 1) / 2)
                prob = prob.reshape(xx.shape).numpy()
            ax.contourf(xx, yy, prob, levels=np.linspace(0, 1, 11), cmap="coolwarm", alpha=0.55)
            ax.contour(xx, yy, prob, levels=[0.5], colors="k", linewidths=0.8)
            ax.scatter(test.x[:, 0], test.x[:, 1], c=test.y, cmap="coolwarm", s=3, edgecolors="none")
            ax.set_xlim(lim[0], lim[1])
            ax.set_ylim(lim[2], lim[3])
            ax.set_aspect("equal")
            ax.set_title(f"{LABELS[name]} on {dataset}: {100 * done[key]['accuracy']:.1f}%", fontsize=9)
    colour = "p(class 1)" if config.loss == "bce" else "output clipped to [-1, 1]"
    fig.suptitle(f"decision regions (colour: {colour}; black: the decision boundary) and test points")
    return fig


def _projection(model: ODEClassifier, states: torch.Tensor) -> tuple[np.ndarray, str, str]:
    """2-D coordinates of hidden states ``(T, N, D)``: raw for D = 2, else (readout, PC⊥)."""
    if states.shape[-1] == 2:
        return states.numpy(), "z1", "z2"
    w = model.readout.weight.detach()[0]
    u = w / w.norm()
    flat = states.reshape(-1, states.shape[-1])
    rest = flat - (flat @ u)[:, None] * u
    rest = rest - rest.mean(0)
    v = torch.linalg.svd(rest, full_matrices=False).Vh[0]
    return torch.stack([states @ u, states @ v], -1).numpy(), "readout direction", "top PC ⊥ readout"


def _flow_figure(config: Config, dataset: str, data, models):
    from neuralode.report.plots import figure

    names = [m for m in config.models if m in ("node", "anode")]
    test = data[dataset][1]
    x, y = test.x[: config.flow_points], test.y[: config.flow_points].numpy()
    times = torch.linspace(0.0, config.t1, config.flow_snapshots)
    fig, axes = figure(len(names), config.flow_snapshots, size=(2.6, 2.6))
    axes = np.asarray(axes).reshape(len(names), config.flow_snapshots)
    for i, name in enumerate(names):
        model = models[f"{name}_{dataset}"]
        with torch.no_grad():
            states = model.trajectory(x, times)
        pts, xl, yl = _projection(model, states)
        flat = pts.reshape(-1, 2)
        lo, hi = flat.min(0), flat.max(0)
        pad = 0.05 * (hi - lo)
        w = model.readout.weight.detach()[0].numpy()
        b = float(model.readout.bias.detach()[0])
        for j in range(config.flow_snapshots):
            ax = axes[i, j]
            ax.scatter(pts[j, :, 0], pts[j, :, 1], c=y, cmap="coolwarm", s=4, edgecolors="none")
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_title(f"{LABELS[name]}, t = {float(times[j]):.2f}", fontsize=9)
            ax.tick_params(labelsize=7)
            if j == config.flow_snapshots - 1:  # the readout's decision boundary acts on z(t1)
                if pts.shape[-1] == 2 and states.shape[-1] == 2 and abs(w[1]) > 1e-9:
                    xs = np.array([lo[0] - pad[0], hi[0] + pad[0]])
                    ax.plot(xs, -(b + w[0] * xs) / w[1], "k--", lw=0.8)
                elif states.shape[-1] > 2:
                    ax.axvline(-b / float(np.linalg.norm(w)), color="k", ls="--", lw=0.8)
            if j == 0:
                ax.set_ylabel(yl, fontsize=8)
            ax.set_xlabel(xl, fontsize=8)
    fig.suptitle(f"{dataset}: test points flowing through the ODE block (dashed: readout boundary at t = {config.t1:g})")
    return fig


def _smooth(values: list[float], width: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    width = max(1, min(width, len(v)))
    return np.convolve(v, np.ones(width) / width, mode="valid")


def _nfe_figure(config: Config, done):
    from neuralode.report.plots import figure

    fig, axes = figure(1, len(config.datasets), size=(3.8, 3.0))
    axes = np.atleast_1d(axes)
    for ax, dataset in zip(axes, config.datasets):
        for name in ("node", "anode"):
            key = f"{name}_{dataset}"
            if key in done:
                means = epoch_means(done[key]["history"]["nfe"], config)
                ax.plot(np.arange(1, len(means) + 1), means, marker=".", label=LABELS[name])
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel("forward NFE per step (epoch mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("forward NFE over training (dopri5, rtol = atol = %g)" % config.rtol)
    return fig


def _training_figure(config: Config, done):
    from neuralode.report.plots import figure

    fig, axes = figure(2, len(config.datasets), size=(3.8, 2.8))
    axes = np.asarray(axes).reshape(2, len(config.datasets))
    width = max(1, config.steps // 30)
    for j, dataset in enumerate(config.datasets):
        for name in config.models:
            h = done[f"{name}_{dataset}"]["history"]
            s = _smooth(h["loss"], width)
            axes[0, j].plot(np.arange(len(s)) + width, s, label=LABELS[name])
            axes[1, j].plot(h["acc_step"], h["acc"], marker=".", label=LABELS[name])
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"{dataset}: training loss")
        axes[1, j].set_title(f"{dataset}: test accuracy")
        axes[1, j].set_xlabel("training step")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    return fig


def _report(config: Config, run: Run, data, models, done, metrics) -> None:
    from neuralode.report.markdown import image, metrics_table

    figs = [image(run.save_figure(_decision_figure(config, data, models, done), "decision_regions.png"),
                  "decision regions per model (columns) and data set (rows), with test points")]
    if any(m in config.models for m in ("node", "anode")):
        for dataset in config.datasets:
            figs.append(image(run.save_figure(_flow_figure(config, dataset, data, models), f"flow_{dataset}.png"),
                              f"{dataset}: hidden states of test points at {config.flow_snapshots} times "
                              "(ANODE: readout direction vs the top principal direction orthogonal to it)"))
        figs.append(image(run.save_figure(_nfe_figure(config, done), "nfe.png"),
                          "forward NFE per training step, NODE vs ANODE (mean per epoch, as Dupont et al. plot it)"))
    figs.append(image(run.save_figure(_training_figure(config, done), "training.png"),
                      "training loss (moving average) and test accuracy"))
    rows = []
    for dataset in config.datasets:
        for name in config.models:
            key = f"{name}_{dataset}"
            h = done[key]["history"]
            rows.append({"data set": dataset, "model": LABELS[name],
                         "test accuracy %": 100 * done[key]["accuracy"],
                         "train accuracy %": 100 * done[key]["train_accuracy"],
                         "forward NFE (end)": metrics[f"nfe_{key}"],
                         "forward NFE (first epoch)": metrics[f"nfe_first_{key}"],
                         "forward NFE (training mean)": metrics[f"nfe_train_{key}"],
                         "backward NFE (end)": float(epoch_means(h["nfe_backward"], config)[-1]),
                         "params": metrics[f"params_{name}"],
                         "train s": done[key]["seconds"]})
    targets = []
    checks = [("node", "moons", 0.99, "NODE ≥ 99% on moons"), ("anode", "annuli", 1.0, "ANODE 100% on annuli"),
              ("anode", "spirals", 1.0, "ANODE 100% on spirals")]
    for name, dataset, bar, text in checks:
        k = f"accuracy_{name}_{dataset}"
        if k in metrics:
            targets.append(f"- {text}: {100 * metrics[k]:.2f}% — {'met' if metrics[k] >= bar else 'not met'}")
    if "nfe_train_node_annuli" in metrics and "nfe_train_anode_annuli" in metrics:
        a, b = metrics["nfe_train_node_annuli"], metrics["nfe_train_anode_annuli"]
        growth = {m: (metrics[f"nfe_first_{m}_annuli"], metrics[f"nfe_{m}_annuli"]) for m in ("node", "anode")}
        targets.append(
            f"- Dupont et al.'s NFE effect on annuli (over training NODE needs more forward evaluations than "
            f"ANODE; NODE's grow, ANODE's hardly): mean per step over training NODE {a:.1f} vs ANODE {b:.1f} "
            f"(ratio {a / b:.2f}, target ≥ {NFE_RATIO_TARGET:g}) — {'seen' if a / b >= NFE_RATIO_TARGET else 'not seen'}; "
            + ", ".join(f"{LABELS[m]} {first:.1f} → {last:.1f} (×{last / first:.2f})" for m, (first, last) in growth.items())
            + " from the first to the last epoch")
    width = resnet_width(metrics.get("params_node", 0) or count_params(make_model("node", config)), 2,
                         config.resnet_blocks)
    run.write_report(
        "# classify-2d: Neural ODE vs Augmented Neural ODE vs ResNet on 2-D data (Dupont et al. 2019)\n\n"
        f"{config.n_train} training / {config.n_test} test points per data set. "
        f"Field: MLP {config.hidden}-{config.hidden} ({config.activation}), "
        f"{config.method} rtol={config.rtol:g} atol={config.atol:g} on [0, {config.t1:g}], {config.gradient} "
        f"gradients; ANODE augment_dim={config.augment_dim}; ResNet: {config.resnet_blocks} residual blocks of "
        f"width {width} (parameter count matched to the NODE). Adam lr={config.lr:g} ({config.schedule} schedule), {config.steps} steps of "
        f"{config.batch_size} points per model and data set.\n\n"
        + metrics_table(rows)
        + f"\nForward NFE: mean per training step over the last (end) or first epoch of {epoch_steps(config)} "
        "steps, as Dupont et al. record it (ResNet: its depth).\n\n"
        + ("Targets of the full configuration, checked on this "
           + ("quick run (a shorter training budget, not expected to meet them all)" if run.quick else "run")
           + ":\n\n" + "\n".join(targets) + "\n\n" if targets else "")
        + "\n".join(figs))


def _ratio(num: str, den: str):
    return lambda m: float(m[num]) / float(m[den])


declare(
    "classify-2d",
    Headline("accuracy_node_moons", "NODE test accuracy, moons (%)", 0.99, "at_least", scale=100,
             source="project target; moons are not in Dupont et al."),
    Headline("accuracy_anode_annuli", "ANODE test accuracy, annuli (%)", 1.0, "at_least", scale=100,
             source="Dupont et al. 2019, concentric spheres"),
    Headline("accuracy_anode_spirals", "ANODE test accuracy, spirals (%)", 1.0, "at_least", scale=100,
             source="project target; spirals are not in Dupont et al."),
    Headline("nfe_ratio_node_anode_annuli", "forward NFE per step over training, NODE / ANODE on annuli",
             NFE_RATIO_TARGET, "at_least", source="Dupont et al. 2019: NODE needs more",
             value=_ratio("nfe_train_node_annuli", "nfe_train_anode_annuli")),
    Headline("nfe_growth_node_annuli", "NODE forward NFE on annuli, last / first epoch", goal="info",
             value=_ratio("nfe_node_annuli", "nfe_first_node_annuli")),
)

register("classify-2d", config=Config, run=run,
         description="2-D classification (moons, annuli, spirals): NODE vs ANODE vs ResNet, accuracy and NFE",
         quick_time="~60 s")
