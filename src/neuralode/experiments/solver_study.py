"""Solver study for the image ODE-Net: cost of each solver and gradient mode, memory vs horizon.

For the ODE-Net on MNIST and CIFAR-10 (the same weights for every row, first trained briefly
with a cheap solver so that the dynamics are not those of a random network), one training step
(forward + backward on a batch) is measured for

    dopri5 at rtol = atol = 1e-3 (the paper's setting) and 1e-1,
    rk4, midpoint and euler with a fixed step,

each with ``adjoint`` gradients (O(1) memory in the number of steps) and ``direct``
backpropagation through the solver. Columns: forward and backward NFE, time per step, peak
memory of the step (CUDA allocator on GPU; growth of the resident set on CPU, with glibc told
to return freed blocks at once), the activations the forward pass saves for backward (exact),
and the test accuracy the trained weights reach when evaluated with that solver.

Second part (Chen et al. 2018, Sec. 2/Table 1 "memory O(1) vs O(L)"): peak memory against
the integration horizon T (ODE block on [0, T], fixed-step rk4, so the number of steps grows
with T) for adjoint vs direct gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from neuralode.experiments.base import Run
from neuralode.experiments.registry import register

if TYPE_CHECKING:
    from neuralode.nn.image import ImageClassifier

# (label, method, rtol/atol, fixed step)
SETTINGS = [
    ("dopri5 tol 1e-3", "dopri5", 1e-3, None),
    ("dopri5 tol 1e-1", "dopri5", 1e-1, None),
    ("rk4", "rk4", None, "fixed"),
    ("midpoint", "midpoint", None, "fixed"),
    ("euler", "euler", None, "fixed"),
]
GRADIENTS = ("adjoint", "direct")


@dataclass
class Config:
    datasets: str = "mnist,cifar10"   # comma list of mnist, cifar10, digits
    pretrain_steps: int = 1000        # Adam steps with rk4 (step 0.5) before measuring
    pretrain_batch: int = 128
    batch_size: int = 128             # batch of the measured training steps
    measure_steps: int = 10           # measured steps per row (after one warm-up step)
    fixed_step: float = 0.25          # step of rk4 / midpoint / euler
    eval_images: int = 2000           # test images for the per-solver accuracy
    horizons: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    horizon_method: str = "rk4"
    horizon_batch: int = 64
    # trained ODE-Nets to study instead of pretraining here: a .pt state dict or a run folder of
    # the mnist / cifar10 experiment (holding odenet.pt)
    mnist_weights: str | None = None
    cifar10_weights: str | None = None

    @classmethod
    def quick(cls) -> "Config":
        return cls(pretrain_steps=150, pretrain_batch=64, batch_size=32, measure_steps=2,
                   eval_images=500, horizons=(0.5, 1.0, 2.0, 4.0), horizon_batch=32)


def _load(dataset: str) -> tuple[Any, Any]:
    if dataset == "mnist":
        from neuralode.data.mnist import load_mnist

        return load_mnist("train"), load_mnist("test")
    if dataset == "cifar10":
        from neuralode.data.cifar10 import load_cifar10

        return load_cifar10("train"), load_cifar10("test")
    if dataset == "digits":
        from neuralode.data.digits import load_digits

        return load_digits("train"), load_digits("test")
    raise ValueError(f"dataset {dataset!r}; expected mnist, cifar10 or digits")


def _make(dataset: str, n_classes: int, method: str, tol: float | None, step: float | None,
          gradient: str, t_end: float = 1.0) -> ImageClassifier:
    from neuralode.nn.image import make_image_classifier

    kw: dict[str, Any] = {"method": method, "gradient": gradient, "t_end": t_end}
    if tol is not None:
        kw["rtol"] = kw["atol"] = tol
    if step is not None:
        kw["options"] = {"step_size": step}
    return make_image_classifier("odenet", dataset, n_classes=n_classes, **kw)


def _load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy the trained parameters only (the ODE block may keep its time span as a buffer)."""
    params = {k: v for k, v in weights.items() if k in dict(model.named_parameters())}
    missing = set(dict(model.named_parameters())) - set(params)
    if missing:
        raise RuntimeError(f"trained weights lack parameters {sorted(missing)}")
    model.load_state_dict(params, strict=False)


def _measure(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, steps: int,
             device: torch.device) -> dict[str, float]:
    """Mean NFE / time and peak memory of ``steps`` forward+backward passes (after a warm-up)."""
    from neuralode.experiments.image_training import MemoryMeter, count_saved_bytes

    meter = MemoryMeter(device)
    nfe_f = nfe_b = 0.0
    elapsed = 0.0
    saved = 0
    peak = 0.0
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        meter.reset()
        t0 = time.perf_counter()
        with count_saved_bytes() as c:
            loss = F.cross_entropy(model(x), y)
        stats = model.ode_stats()
        f = float(stats.nfe)
        loss.backward()
        b = float(getattr(model.ode_stats(), "nfe_backward", 0) or 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up
        peak = max(peak, meter.peak() - meter.baseline)
        saved = max(saved, c["bytes"])
        nfe_f += f
        nfe_b += b
        elapsed += dt
    model.zero_grad(set_to_none=True)
    return {"nfe_forward": nfe_f / steps, "nfe_backward": nfe_b / steps,
            "time_per_step_s": elapsed / steps, "peak_memory_mb": peak,
            "saved_activations_mb": saved / 2**20}


def _study_dataset(config: Config, run: Run, dataset: str) -> tuple[list[dict], list[dict]]:
    from neuralode.experiments.image_training import (
        Normaliser,
        TrainSettings,
        evaluate,
        train_classifier,
    )

    train, test = _load(dataset)
    n_classes = len(train.classes)
    device = run.device
    # 1. a briefly trained ODE-Net (cheap solver), whose weights every row below shares
    torch.manual_seed(run.seed)
    base = _make(dataset, n_classes, "rk4", None, 0.5, "direct").to(device)
    n_train = min(len(train), config.pretrain_steps * config.pretrain_batch)
    settings = TrainSettings(epochs=1.0, batch_size=config.pretrain_batch, optimizer="adam", lr=2e-3,
                             schedule="cosine", warmup_steps=20, max_train=n_train,
                             max_test=config.eval_images, log_every=25, checkpoint_every=10**9)
    wpath = getattr(config, f"{dataset}_weights", None)
    if wpath:
        p = Path(wpath) / "odenet.pt" if Path(wpath).is_dir() else Path(wpath)
        _load_weights(base, torch.load(p, map_location="cpu", weights_only=True))
        norm = Normaliser(train)
        source = f"weights from {p}"
    else:
        pre = train_classifier(base, train, test, settings, run, tag=f"{dataset}-pretrain")
        norm = Normaliser(train.subset(n_train, seed=run.seed))
        source = (f"pretrained here: {config.pretrain_steps} Adam steps with rk4 h=0.5, "
                  f"test accuracy {pre['test_accuracy']:.4f}")
    run.info(f"{dataset}: ODE-Net {source}")
    weights = base.state_dict()
    g = torch.Generator().manual_seed(run.seed + 1)
    idx = torch.randperm(len(train), generator=g)[: config.batch_size]
    x, y = norm(train.images[idx], device), train.labels[idx].to(device)
    test_sub = test.subset(config.eval_images, seed=run.seed)

    rows = []
    for label, method, tol, step in SETTINGS:
        step_size = config.fixed_step if step == "fixed" else None
        for gradient in GRADIENTS:
            model = _make(dataset, n_classes, method, tol, step_size, gradient).to(device)
            _load_weights(model, weights)
            m = _measure(model, x, y, config.measure_steps, device)
            preds = evaluate(model, test_sub, norm, device, 500)
            acc = (preds == test_sub.labels).float().mean().item()
            row = {"dataset": train.name, "model": source, "solver": label if step is None else f"{label} h={step_size:g}",
                   "gradient": gradient, **m, "test_accuracy": acc}
            rows.append(row)
            run.log(len(rows), **{f"{dataset}/{row['solver']}/{gradient}/{k}": v for k, v in m.items()})
            run.info(f"{dataset} {row['solver']:>22} {gradient:>7}: NFE {m['nfe_forward']:.0f}/"
                     f"{m['nfe_backward']:.0f}, {m['time_per_step_s']:.3f} s, "
                     f"+{m['peak_memory_mb']:.1f} MiB, saved {m['saved_activations_mb']:.1f} MiB, acc {acc:.4f}")

    # 2. memory against integration horizon
    hx, hy = x[: config.horizon_batch], y[: config.horizon_batch]
    horizon_rows = []
    for T in config.horizons:
        for gradient in GRADIENTS:
            model = _make(dataset, n_classes, config.horizon_method, None, config.fixed_step,
                          gradient, t_end=T).to(device)
            _load_weights(model, weights)
            m = _measure(model, hx, hy, 1, device)
            horizon_rows.append({"dataset": train.name, "T": T, "gradient": gradient, **m})
            run.info(f"{dataset} T={T:g} {gradient:>7}: +{m['peak_memory_mb']:.1f} MiB, "
                     f"saved {m['saved_activations_mb']:.1f} MiB, NFE {m['nfe_forward']:.0f}")
    return rows, horizon_rows


def _figures(run: Run, rows: list[dict], horizon_rows: list[dict]) -> list[str]:
    import numpy as np

    from neuralode.report.plots import figure, line_plot

    paths = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        solvers = list(dict.fromkeys(r["solver"] for r in sub))
        fig, axes = figure(1, 4, size=(4.2, 3.4))
        for ax, key, title in zip(axes, ["nfe_forward", "nfe_backward", "time_per_step_s", "peak_memory_mb"],
                                  ["forward NFE", "backward NFE", "time per step (s)", "peak memory (MiB)"]):
            xs = np.arange(len(solvers))
            for j, gradient in enumerate(GRADIENTS):
                vals = [next(r[key] for r in sub if r["solver"] == s and r["gradient"] == gradient)
                        for s in solvers]
                ax.bar(xs + (j - 0.5) * 0.4, vals, width=0.4, label=gradient)
            ax.set_xticks(xs, solvers, rotation=45, ha="right", fontsize="small")
            ax.set_title(title)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"ODE-Net solver study: {ds}")
        paths.append(run.save_figure(fig, f"solvers_{ds.split()[0].lower().replace('-', '')}.png"))
    fig, axes = figure(1, 2, size=(4.5, 3.4))
    for ds in dict.fromkeys(r["dataset"] for r in horizon_rows):
        for gradient in GRADIENTS:
            sub = [r for r in horizon_rows if r["dataset"] == ds and r["gradient"] == gradient]
            line_plot({f"{ds} {gradient}": ([r["T"] for r in sub], [r["peak_memory_mb"] for r in sub])},
                      ax=axes[0], xlabel="horizon T", ylabel="peak memory of a step (MiB)")
            line_plot({f"{ds} {gradient}": ([r["T"] for r in sub], [r["saved_activations_mb"] for r in sub])},
                      ax=axes[1], xlabel="horizon T", ylabel="activations saved for backward (MiB)")
    for ax in axes:
        ax.legend(fontsize="small")
    paths.append(run.save_figure(fig, "memory_vs_horizon.png"))
    return paths


def run(config: Config, run: Run) -> dict[str, Any]:
    from neuralode.experiments.image_training import return_freed_memory_to_os
    from neuralode.io import atomic_write_json
    from neuralode.report.markdown import image, metrics_table

    if run.device.type == "cpu":
        return_freed_memory_to_os()
    rows: list[dict] = []
    horizon_rows: list[dict] = []
    for ds in [d.strip() for d in config.datasets.split(",") if d.strip()]:
        table, horizon = _study_dataset(config, run, ds)
        rows += table
        horizon_rows += horizon
    if run.is_main:
        atomic_write_json(run.dir / "solver_table.json", rows)
        atomic_write_json(run.dir / "memory_vs_horizon.json", horizon_rows)
    figs = _figures(run, rows, horizon_rows)
    memory_kind = "CUDA max_memory_allocated" if run.device.type == "cuda" else "growth of peak RSS"
    run.write_report(
        "# ODE-Net solver study\n\n"
        f"One training step (batch {config.batch_size}) of a trained ODE-Net, mean of "
        f"{config.measure_steps} steps after a warm-up. Models: "
        + "; ".join(f"{d}: {m}" for d, m in dict.fromkeys((r["dataset"], r["model"]) for r in rows)) + ". "
        f"Fixed-step methods use h={config.fixed_step:g}. Peak memory: {memory_kind} during the "
        "step, MiB; saved activations: bytes autograd keeps for backward (exact); test accuracy on "
        f"{config.eval_images} test images with that solver.\n\n"
        + metrics_table(rows, ["dataset", "solver", "gradient", "nfe_forward", "nfe_backward",
                               "time_per_step_s", "peak_memory_mb", "saved_activations_mb", "test_accuracy"])
        + f"\n## Peak memory against integration horizon ({config.horizon_method}, h={config.fixed_step:g}, "
        f"batch {config.horizon_batch})\n\n"
        + metrics_table(horizon_rows, ["dataset", "T", "gradient", "nfe_forward", "nfe_backward",
                                       "peak_memory_mb", "saved_activations_mb", "time_per_step_s"])
        + "\n" + "\n".join(image(p) for p in figs)
    )
    out: dict[str, Any] = {}
    for r in rows:
        key = f"{r['dataset'].split()[0].lower().replace('-', '')}_{r['solver'].split()[0]}"
        if r["solver"].startswith("dopri5"):
            key += "_tol" + r["solver"].split()[-1]
        out[f"{key}_{r['gradient']}_nfe_forward"] = r["nfe_forward"]
        out[f"{key}_{r['gradient']}_time_per_step_s"] = r["time_per_step_s"]
    for ds in dict.fromkeys(r["dataset"] for r in horizon_rows):
        last = max(r["T"] for r in horizon_rows if r["dataset"] == ds)
        for gradient in GRADIENTS:
            r = next(r for r in horizon_rows if r["dataset"] == ds and r["T"] == last and r["gradient"] == gradient)
            out[f"{ds.split()[0].lower().replace('-', '')}_T{last:g}_{gradient}_saved_mb"] = r["saved_activations_mb"]
    return out


register("solver-study", config=Config, run=run,
         description="ODE-Net on MNIST/CIFAR-10: NFE, time, memory per solver (dopri5 1e-3/1e-1, rk4, midpoint, euler) "
                     "x adjoint/direct; memory vs horizon",
         quick_time="~5-10 min (CPU)", in_demo=False)
