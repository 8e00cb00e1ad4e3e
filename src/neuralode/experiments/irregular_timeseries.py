"""ODE-RNN and Latent ODE vs GRU-Δt and GRU-D on public irregular data sets beside PhysioNet: UEA
JapaneseVowels or UCR PickupGestureWiimoteZ with 30% and 50% of each series' points dropped
(Kidger et al. 2020's irregular-sampling protocol).

A second check, after PhysioNet, of the claim of Rubanova et al. (2019) that ODE-based sequence
models handle irregular sampling better than RNNs fed the time gap or decayed toward the mean.
Data (:mod:`neuralode.data.timeseries`): 270 training / 370 test utterances, 12 LPC channels,
7-29 points, 9 speakers; per series a seeded random ``drop_frac`` of its points is removed (train
and test alike), times are ``index / 29`` (the longest series spans ~1), channels are
standardised with the training statistics. ``dataset="PickupGestureWiimoteZ"``: 50 training / 50
test accelerometer gestures (1 channel, unequal lengths 29-361, 10 classes, 5 per class in each
split), times ``index / 361``; same protocol. Models (:mod:`neuralode.nn.irregular`, the PhysioNet
models, batched on the union of their observation times): GRU-Δt, GRU-D, ODE-RNN (Euler between
rows), Latent ODE with an ODE-RNN encoder (dopri5 decoder); each with a ``[state] -> 64 -> 9`` ReLU
classifier head. Loss: cross-entropy; the latent ODE adds its ELBO (masked Gaussian likelihood of
the observed points, std ``obs_std``, plus the KL averaged over its latents) weighted by
``elbo_weight``. Adam, ``epochs`` full passes, every model trained from ``seeds`` seeds.

Result keys: ``{model}/acc_{pct}`` (mean test accuracy over seeds, ``pct`` = percent dropped),
``{model}/acc_{pct}_std``, ``best_ode_acc_{pct}``, ``best_rnn_acc_{pct}``. Kidger et al. report
(Table 1, ``CharacterTrajectories``, not these sets) no numbers for either; there is no
published row here - the comparison is ours, side by side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from neuralode.experiments.registry import register

MODEL_LABELS = {"gru_dt": "RNN-Δt (GRU)", "gru_decay": "GRU-D", "ode_rnn": "ODE-RNN",
                "latent_ode_odernn": "Latent ODE (ODE-RNN enc.)"}
ODE_MODELS = ("ode_rnn", "latent_ode_odernn")
ARCHIVE = {"JapaneseVowels": "UEA", "PickupGestureWiimoteZ": "UCR"}


@dataclass
class Config:
    dataset: str = "JapaneseVowels"  # or "PickupGestureWiimoteZ" (UCR, univariate, unequal lengths)
    models: tuple[str, ...] = ("gru_dt", "gru_decay", "ode_rnn", "latent_ode_odernn")
    drop_fracs: tuple[float, ...] = (0.3, 0.5)  # fraction of each series' points dropped (Kidger et al.: 30/50/70%)
    seeds: int = 3
    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-3
    hidden: int = 32  # GRU / ODE-RNN state
    latent: int = 16
    rec_hidden: int = 32
    units: int = 32  # ODE field width
    head_hidden: int = 64
    enc_max_step: float = 0.05  # Euler step of the ODE-RNN (time: index / 29)
    obs_std: float = 0.1  # latent ODE likelihood std (standardised units)
    elbo_weight: float = 0.01  # per-point ELBO weight in the latent ODE's loss, beside the cross-entropy
    threads: int = 1

    @classmethod
    def quick(cls) -> Config:
        """50% dropped, one seed, 8 epochs."""
        return cls(drop_fracs=(0.5,), seeds=1, epochs=8)


def _data(config: Config, frac: float):
    from neuralode.data.timeseries import drop_points, load, to_patients

    train, test = load(config.dataset, "TRAIN"), load(config.dataset, "TEST")
    allv = np.concatenate(train.values)
    mean, std = np.nanmean(allv, 0), np.nanstd(allv, 0)
    std = np.where(std > 0, std, 1.0)
    t_max = max(len(v) for v in train.values + test.values)
    unit = 1.0 / t_max
    tr = to_patients(train, drop_points([len(v) for v in train.values], frac, seed=1), mean, std, unit)
    te = to_patients(test, drop_points([len(v) for v in test.values], frac, seed=2), mean, std, unit)
    return tr, te, len(train.classes), train.n_channels, mean


class _Full(torch.nn.Module):
    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head


def _make(name: str, config: Config, n_channels: int, n_classes: int) -> _Full:
    from neuralode.nn.irregular import GRUDecay, SolverConfig, build_model

    model = build_model(name, n_channels, hidden=config.hidden, latent=config.latent, rec_hidden=config.rec_hidden,
                        units=config.units, enc_solver=SolverConfig("euler", config.enc_max_step),
                        dec_solver=SolverConfig("dopri5"), time_scale=1.0)
    if isinstance(model, GRUDecay):
        model.set_mean(torch.zeros(n_channels))  # standardised: the training mean is 0
    head = torch.nn.Sequential(torch.nn.Linear(model.state_dim, config.head_hidden), torch.nn.ReLU(),
                               torch.nn.Linear(config.head_hidden, n_classes))
    return _Full(model, head)


def _forward(full: _Full, batch, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    from neuralode.nn.irregular import LatentODE, masked_gaussian_nll

    out = full.model(batch.times, batch.values, batch.mask)
    logits = full.head(out.state)
    extra = logits.new_zeros(())
    if isinstance(full.model, LatentODE):
        nll = masked_gaussian_nll(out.pred, batch.values, batch.mask, config.obs_std)
        extra = config.elbo_weight * (nll + out.kl / full.model.latent).mean()
    return logits, extra


def _train(name: str, seed: int, frac: float, config: Config, data, run, key: str, done: dict) -> dict:
    from neuralode.data.physionet import collate

    train, test, n_classes, n_channels, _ = data
    torch.manual_seed(run.seed * 1000 + 100 * seed + list(MODEL_LABELS).index(name))
    full = _make(name, config, n_channels, n_classes).to(run.device)
    opt = torch.optim.Adam(full.parameters(), lr=config.lr)
    epoch, step, train_s = 0, 0, 0.0
    ckpt = run.last_checkpoint
    if ckpt is not None and ckpt.get("extra", {}).get("key") == key:
        full.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        run.restore_rng(ckpt["rng"])
        epoch, step, train_s = int(ckpt["extra"]["epoch"]), int(ckpt["step"]), float(ckpt["extra"]["train_s"])

    def state() -> dict:
        return run.training_state(step, full, opt, key=key, epoch=epoch, train_s=train_s, done=done)

    while epoch < config.epochs:
        run.check_interrupt(state)
        t0 = time.perf_counter()
        full.train()
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        for k in range(math.ceil(len(order) / config.batch_size)):
            batch = collate([train[i] for i in order[k * config.batch_size:(k + 1) * config.batch_size]]).to(run.device)
            logits, extra = _forward(full, batch, config)
            loss = torch.nn.functional.cross_entropy(logits, batch.labels.long()) + extra
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(full.parameters(), 10.0)
            opt.step()
            step += 1
        train_s += time.perf_counter() - t0
        epoch += 1
        run.log(step, model=name, seed=seed, drop=frac, epoch=epoch, loss=float(loss.detach()))
        run.save_checkpoint(state())
    acc = _accuracy(full, test, config, run)
    run.log(step, model=name, seed=seed, drop=frac, test_acc=acc)
    run.info(f"{key}: test accuracy {acc:.3f} ({train_s:.0f} s)")
    return {"acc": acc, "train_s": train_s}


@torch.no_grad()
def _accuracy(full: _Full, patients: list, config: Config, run) -> float:
    from neuralode.data.physionet import collate

    full.eval()
    correct = 0
    for k in range(0, len(patients), 128):
        batch = collate(patients[k:k + 128]).to(run.device)
        logits, _ = _forward(full, batch, config)
        correct += int((logits.argmax(-1) == batch.labels.long()).sum())
    return correct / len(patients)


def run(config: Config, run) -> dict[str, Any]:
    """Train every model for every drop fraction and seed; report mean ± std test accuracy."""
    from neuralode.experiments._physionet_protocol import mean_std

    unknown = [m for m in config.models if m not in MODEL_LABELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_LABELS)}")
    if not isinstance(config.seeds, int) or config.seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {config.seeds!r}")
    torch.set_num_threads(config.threads)
    state = run.load_checkpoint()
    done: dict[str, dict] = dict(state["extra"]["done"]) if state and "extra" in state else {}
    for frac in config.drop_fracs:
        data = _data(config, frac)
        for seed in range(config.seeds):
            for name in config.models:
                key = f"{name}@{frac:g}#{seed}"
                if key not in done:
                    done[key] = _train(name, seed, frac, config, data, run, key, done)
                    run.save_checkpoint({"step": 0, "extra": {"key": "", "done": done}})
    metrics: dict[str, Any] = {}
    rows = []
    for frac in config.drop_fracs:
        pct = int(round(frac * 100))
        for name in config.models:
            accs = [done[f"{name}@{frac:g}#{s}"]["acc"] for s in range(config.seeds)]
            m, sd = mean_std(accs)
            metrics[f"{name}/acc_{pct}"], metrics[f"{name}/acc_{pct}_std"] = m, sd
            rows.append({"model": MODEL_LABELS[name], "dropped": f"{pct}%", "seeds": config.seeds,
                         "test accuracy": f"{m:.3f} ± {sd:.3f}", "per seed": ", ".join(f"{a:.3f}" for a in accs)})
        for group, members in (("ode", ODE_MODELS), ("rnn", [m for m in MODEL_LABELS if m not in ODE_MODELS])):
            vals = [metrics[f"{m}/acc_{pct}"] for m in config.models if m in members]
            if vals:
                metrics[f"best_{group}_acc_{pct}"] = max(vals)
    _report(run, config, rows)
    return metrics


def _report(run, config: Config, rows: list[dict]) -> None:
    from neuralode.report.markdown import metrics_table

    lines = [
        f"# Irregular {config.dataset}: ODE-RNN / Latent ODE vs GRU-Δt / GRU-D",
        "",
        f"{ARCHIVE.get(config.dataset, '')} {config.dataset}, points dropped at random per series ({', '.join(f'{f:.0%}' for f in config.drop_fracs)};"
        f" Kidger et al. 2020's protocol), {config.epochs} epochs, batch {config.batch_size}, Adam lr {config.lr:g}, "
        f"{config.seeds} seed(s); state {config.hidden}, latent {config.latent}, fields {config.units} units. "
        "Test accuracy mean ± std over seeds. No published numbers for this set: the comparison is side by side.",
        "",
        metrics_table(rows),
        "",
    ]
    run.write_report("\n".join(lines))


def _gap(pct: int) -> Callable[[Mapping[str, Any]], float]:
    """The headline value "best ODE minus best RNN accuracy" at ``pct``% dropped."""
    return lambda m: m[f"best_ode_acc_{pct}"] - m[f"best_rnn_acc_{pct}"]


def _declare_headlines() -> None:
    from neuralode.report.headlines import Headline, declare

    heads = []
    for pct in (30, 50):
        heads.append(Headline(f"ode_minus_rnn_acc_{pct}", f"best ODE model - best RNN accuracy, {pct}% dropped (pts)",
                              0.0, "at_least", scale=100, source="Rubanova et al.'s claim: ODE models >= RNNs",
                              value=_gap(pct)))
        heads.append(Headline(f"best_ode_acc_{pct}", f"best ODE model test accuracy, {pct}% dropped (%)", goal="info",
                              scale=100))
    declare("irregular-timeseries", *heads)


_declare_headlines()

register(
    "irregular-timeseries",
    config=Config,
    run=run,
    description="ODE-RNN / Latent ODE vs GRU-Δt / GRU-D on UEA JapaneseVowels (or UCR PickupGestureWiimoteZ) with "
    "30%/50% of points dropped (a second irregular data set beside PhysioNet)",
    quick_time="~1 min",
    in_demo=False,
)
