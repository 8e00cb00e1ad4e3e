"""PhysioNet 2012: do ODE-RNNs and Latent ODEs beat recurrent baselines on real irregular data?

Reproduces the PhysioNet comparison of Rubanova, Chen & Duvenaud, "Latent ODEs for
Irregularly-Sampled Time Series" (NeurIPS 2019): ODE-RNN and Latent ODE (ODE-RNN encoder, and
plain RNN encoder) against RNN-Δt and RNN-decay (GRU-D style), measured side by side in one run.

Per model, one training run with a joint objective (as Rubanova et al. train with ``--classif``):

- reconstruction: masked Gaussian likelihood (std ``obs_std``) of every observed entry - for the
  sequence models from the state *before* the entry's row is read (one step ahead), for the latent
  ODEs from the decoded trajectory - plus KL(q(z0) || N(0, I)) for the latent ODEs;
- each batch either drops a random ``holdout_frac`` of every patient's observation times from the
  input (interpolation mode) or shows only the first ``extrap_hours`` (extrapolation mode,
  probability ``p_extrap``);
- mortality: binary cross-entropy of a classifier head on the final state (interpolation-mode
  batches), with ``pos_weight = #survivors / #deaths`` for the class imbalance, weight ``ce_weight``.

Evaluation on the held-out test patients (never seen in training or normalisation):

- interpolation MSE: a fixed, seeded ``holdout_frac`` of each patient's observation times is
  removed from the input; MSE on those held-out entries (normalised units);
- extrapolation MSE: input = the first 24 h, MSE on the observed entries of the last 24 h;
- AUC-ROC of in-hospital mortality from the full 48 h (scikit-learn);
- forward NFE per batch, parameters, training seconds per epoch;
- the "predict each channel's training mean" baseline on the same entries.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neuralode.experiments.registry import register

MODEL_LABELS = {
    "gru_dt": "RNN-Δt (GRU)",
    "gru_decay": "RNN-decay (GRU-D)",
    "ode_rnn": "ODE-RNN",
    "latent_ode_rnn": "Latent ODE (RNN enc.)",
    "latent_ode_odernn": "Latent ODE (ODE-RNN enc.)",
}
ODE_MODELS = ("ode_rnn", "latent_ode_rnn", "latent_ode_odernn")


@dataclass
class Config:
    """Defaults = the full configuration (all of set a, Rubanova et al.'s protocol and sizes)."""

    models: tuple[str, ...] = ("gru_dt", "gru_decay", "ode_rnn", "latent_ode_rnn", "latent_ode_odernn")
    n_patients: int | None = None  # None: all 4,000 stays of set a; else the first n of a seeded permutation
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test, by patient
    split_seed: int = 0  # the split is fixed by this seed alone (not by the run's seed)
    round_hours: float | None = 0.1  # time grid (Rubanova et al.'s default quantisation); None: exact minutes
    normalisation: str = "minmax"  # "minmax" (Rubanova et al.) or "zscore"; training statistics only
    epochs: int = 100
    batch_size: int = 50
    lr: float = 1e-2
    lr_decay: float = 0.999  # multiplied into the learning rate after every step (Rubanova et al.)
    hidden: int = 50  # GRU / ODE-RNN state size
    latent: int = 20  # latent ODE z size
    rec_hidden: int = 40  # latent ODE encoder state size
    units: int = 50  # width of the ODE fields
    enc_method: str = "euler"  # ODE-RNN integrator between observation rows (Rubanova et al.: Euler)
    enc_max_step: float = 0.05  # largest fixed step, scaled time (0.05 = 2.4 h)
    dec_method: str = "dopri5"  # latent ODE decoder integrator
    dec_rtol: float = 1e-3
    dec_atol: float = 1e-4
    time_scale: float = 1 / 48  # hours -> solver time
    obs_std: float = 0.01  # Gaussian likelihood std (normalised units)
    kl_wait: int = 10  # KL weight 0 for this many steps, then 1 - 0.99^(step - kl_wait)
    ce_weight: float = 100.0  # weight of the mortality cross-entropy (Rubanova et al.)
    classifier_hidden: int = 300
    holdout_frac: float = 0.2  # interpolation: fraction of each patient's observation times held out
    extrap_hours: float = 24.0
    p_extrap: float = 0.5  # fraction of training batches in extrapolation mode
    eval_batch_size: int = 100
    test_on_b: bool = False  # also evaluate on all of set b (trained on set a)
    plot_patients: int = 3
    threads: int = 1  # torch intra-op threads

    @classmethod
    def quick(cls) -> Config:
        """A subset of patients, small models, 1 h grid: all five models in well under 3 min on a CPU."""
        return cls(n_patients=400, round_hours=1.0, epochs=4, batch_size=40, lr=1e-2, hidden=24, latent=10,
                   rec_hidden=24, units=24, classifier_hidden=32, eval_batch_size=100, plot_patients=2)


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    train: list
    val: list
    test: list
    extra_test: list | None
    normaliser: Any
    n_train: int


def _load(config: Config, run) -> _Data:
    from neuralode.data import physionet as P

    data = P.load_set("a")
    if config.n_patients is not None:
        if not 10 <= config.n_patients <= len(data):
            raise ValueError(f"n_patients must be in 10..{len(data)} or None, got {config.n_patients}")
        pick = np.random.default_rng(config.split_seed).permutation(len(data))[: config.n_patients]
        data = data.subset(np.sort(pick))
    split = P.split_patients(data.record_id, tuple(config.split), seed=config.split_seed)
    norm = P.Normaliser.fit(data, split.train, kind=config.normalisation)
    to = lambda idx: P.to_patients(data.subset(idx), norm, config.round_hours)  # noqa: E731
    extra = None
    if config.test_on_b:
        extra = P.to_patients(P.load_set("b"), norm, config.round_hours)
    out = _Data(to(split.train), to(split.val), to(split.test), extra, norm, len(split.train))
    deaths = sum(p.label for p in out.train)
    empty = int((np.diff(data.offsets) == 0).sum())
    run.info(f"physionet: set a, {len(data)} patients -> train {len(out.train)} ({deaths} deaths), "
             f"val {len(out.val)}, test {len(out.test)}; grid {config.round_hours} h; {empty} stays without "
             "any time-series observation (kept: they still count for mortality)")
    return out


def _holdout_keep(patients: list, frac: float, seed: int) -> list[np.ndarray]:
    """Per patient, a fixed boolean keep-mask over its observation times (False = held out)."""
    keeps = []
    for p in patients:
        rng = np.random.default_rng([seed, int(p.record_id)])
        keep = rng.random(len(p.times)) >= frac
        if len(p.times) > 1 and keep.all():
            keep[rng.integers(len(p.times))] = False
        if len(keep) and not keep.any():
            keep[0] = True  # (stays without any observation exist in set a: nothing to hold out)
        keeps.append(keep)
    return keeps


def _batch_with_keep(patients: list, keeps: list[np.ndarray] | None):
    """Collate; also return the keep mask on the union grid (B, T, 1), 1 = row is input."""
    from neuralode.data.physionet import collate

    batch = collate(patients)
    keep = torch.ones(batch.mask.shape[:2] + (1,))
    if keeps is not None:
        times = batch.times.numpy()
        for b, (p, k) in enumerate(zip(patients, keeps)):
            rows = np.searchsorted(times, p.times)
            keep[b, rows[~k], 0] = 0.0
    return batch, keep


# --------------------------------------------------------------------------- models


def _solvers(config: Config):
    from neuralode.nn.irregular import SolverConfig

    enc = SolverConfig(config.enc_method, config.enc_max_step)
    dec = SolverConfig(config.dec_method, config.enc_max_step, config.dec_rtol, config.dec_atol)
    return enc, dec


class _Full(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.model, self.head = model, head


def _make(name: str, config: Config, data: _Data) -> _Full:
    from neuralode.data.physionet import PARAMS
    from neuralode.nn.irregular import ClassifierHead, GRUDecay, build_model

    enc, dec = _solvers(config)
    model = build_model(name, len(PARAMS), hidden=config.hidden, latent=config.latent,
                        rec_hidden=config.rec_hidden, units=config.units, enc_solver=enc,
                        dec_solver=dec, time_scale=config.time_scale)
    mean = torch.as_tensor(data.normaliser.mean)
    with torch.no_grad():  # start every decoder at the training means: the baseline to beat
        model.decoder.bias.copy_(mean)
    if isinstance(model, GRUDecay):
        model.set_mean(mean)
    return _Full(model, ClassifierHead(model.state_dim, config.classifier_hidden))


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- train / evaluate


def _train_epoch(full: _Full, opt, sched, data: _Data, config: Config, run, step: int, epoch: int,
                 model_index: int, pos_weight: torch.Tensor, nfe_log: list) -> int:
    from neuralode.nn.irregular import masked_gaussian_nll

    full.train()
    dev = run.device
    order = np.random.default_rng([config.split_seed, model_index, epoch]).permutation(len(data.train))
    n_batches = math.ceil(len(order) / config.batch_size)
    for k in range(n_batches):
        patients = [data.train[i] for i in order[k * config.batch_size:(k + 1) * config.batch_size]]
        batch, keep = _batch_with_keep(patients, None)
        batch = batch.to(dev)
        extrap = bool(torch.rand(()) < config.p_extrap)
        if extrap:
            keep = (batch.times <= config.extrap_hours).float().view(1, -1, 1).expand(len(patients), -1, 1)
        else:
            keep = (torch.rand(keep.shape) >= config.holdout_frac).float()
        keep = keep.to(dev)
        out = full.model(batch.times, batch.values, batch.mask * keep)
        recon = masked_gaussian_nll(out.pred, batch.values, batch.mask, config.obs_std)
        kl_weight = 0.0 if step < config.kl_wait else 1 - 0.99 ** (step - config.kl_wait)
        loss = (recon + kl_weight * out.kl).mean()
        if not extrap:
            logits = full.head(out.state)
            ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, pos_weight=pos_weight)
            loss = loss + config.ce_weight * ce
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(full.parameters(), 10.0)
        opt.step()
        sched.step()
        step += 1
        nfe_log.append(out.nfe)
        run.log(step, model=full.model.__class__.__name__, loss=loss.item(), nfe=out.nfe,
                mode="extrap" if extrap else "interp")
    return step


@torch.no_grad()
def _evaluate(full: _Full, patients: list, config: Config, run, *, keep_seed: int = 1234) -> dict[str, Any]:
    """Interpolation MSE, extrapolation MSE, AUC, forward NFE on ``patients``."""
    from sklearn.metrics import roc_auc_score

    full.eval()
    dev = run.device
    keeps = _holdout_keep(patients, config.holdout_frac, keep_seed)
    sums = {"interp": [0.0, 0.0], "extrap": [0.0, 0.0]}
    probs, labels, nfes = [], [], []
    preds_interp = []
    bs = config.eval_batch_size
    for k in range(0, len(patients), bs):
        chunk = patients[k:k + bs]
        batch, keep = _batch_with_keep(chunk, keeps[k:k + bs])
        batch, keep = batch.to(dev), keep.to(dev)
        out = full.model(batch.times, batch.values, batch.mask * keep)
        target = batch.mask * (1 - keep)
        sums["interp"][0] += float(((out.pred - batch.values) ** 2 * target).sum())
        sums["interp"][1] += float(target.sum())
        if not preds_interp:  # the figures show patients of the first batch only
            preds_interp.append((batch, out.pred.cpu()))
        early = (batch.times <= config.extrap_hours).float().view(1, -1, 1)
        out_x = full.model(batch.times, batch.values, batch.mask * early)
        target = batch.mask * (1 - early)
        sums["extrap"][0] += float(((out_x.pred - batch.values) ** 2 * target).sum())
        sums["extrap"][1] += float(target.sum())
        out_f = full.model(batch.times, batch.values, batch.mask)
        probs.append(torch.sigmoid(full.head(out_f.state)).cpu())
        labels.append(batch.labels.cpu())
        nfes.append(out_f.nfe)
    y = torch.cat(labels).numpy()
    p = torch.cat(probs).numpy()
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "interp_mse": sums["interp"][0] / max(sums["interp"][1], 1),
        "extrap_mse": sums["extrap"][0] / max(sums["extrap"][1], 1),
        "auc": auc,
        "nfe_forward": float(np.mean(nfes)),
        "probs": p,
        "labels": y,
        "preds_interp": preds_interp,
    }


def _mean_baseline(patients: list, config: Config, mean: np.ndarray, keep_seed: int = 1234) -> dict[str, float]:
    """MSE of predicting every held-out / future entry by its channel's training mean."""
    keeps = _holdout_keep(patients, config.holdout_frac, keep_seed)
    si = ni = sx = nx = 0.0
    for p, keep in zip(patients, keeps):
        err = (p.values - mean[None]) ** 2 * p.mask
        si += float(err[~keep].sum())
        ni += float(p.mask[~keep].sum())
        late = p.times > config.extrap_hours
        sx += float(err[late].sum())
        nx += float(p.mask[late].sum())
    return {"interp_mse": si / max(ni, 1), "extrap_mse": sx / max(nx, 1)}


# --------------------------------------------------------------------------- the experiment


def run(config: Config, run) -> dict[str, Any]:
    """Train every model of ``config.models``, evaluate on the test split, write the report."""
    from neuralode.nn.irregular import MODEL_NAMES

    unknown = [m for m in config.models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if config.normalisation not in ("minmax", "zscore"):
        raise ValueError(f"normalisation must be 'minmax' or 'zscore', got {config.normalisation!r}")
    torch.set_num_threads(config.threads)
    data = _load(config, run)
    labels = np.array([p.label for p in data.train])
    pos_weight = torch.tensor(float((labels == 0).sum()) / max(float(labels.sum()), 1.0), device=run.device)

    state = run.load_checkpoint()
    done: dict[str, dict] = dict(state["extra"]["done"]) if state and "extra" in state else {}
    rows, curves, recon, nfe_curves = [], {}, {}, {}
    baseline = _mean_baseline(data.test, config, data.normaliser.mean)
    for index, name in enumerate(config.models):
        if name in done:
            result = done[name]
        else:
            result = _train_and_evaluate(index, name, config, data, run, pos_weight, done)
            done[name] = result
        rows.append(result["row"])
        curves[name] = result["roc"]
        recon[name] = result["recon"]
        nfe_curves[name] = result["nfe_train"]
        if index < len(config.models) - 1:  # a partial report after each model: long runs never lose work
            _report(run, config, data, rows, baseline, curves, recon, nfe_curves,
                     _headline(rows, baseline, config), figures=False)
    metrics = _headline(rows, baseline, config)
    _report(run, config, data, rows, baseline, curves, recon, nfe_curves, metrics)
    return metrics


def _train_and_evaluate(index: int, name: str, config: Config, data: _Data, run, pos_weight, done: dict) -> dict:
    from sklearn.metrics import roc_curve

    torch.manual_seed(run.seed * 1000 + index)
    full = _make(name, config, data).to(run.device)
    opt = torch.optim.Adam(full.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    epoch, step, epoch_times, nfe_log = 0, 0, [], []
    ckpt = run.last_checkpoint
    if ckpt is not None and ckpt.get("extra", {}).get("model_name") == name:
        full.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        run.restore_rng(ckpt["rng"])
        extra = ckpt["extra"]
        epoch, step = int(extra["epoch"]), int(ckpt["step"])
        epoch_times, nfe_log = list(extra["epoch_times"]), list(extra["nfe_log"])
        run.info(f"{name}: resumed at epoch {epoch}")
    bar = run.progress(config.epochs, MODEL_LABELS[name], initial=epoch)

    def state() -> dict:
        return run.training_state(step, full, opt, sched, model_name=name, epoch=epoch, epoch_times=epoch_times,
                                  nfe_log=nfe_log, done=done)

    while epoch < config.epochs:
        run.check_interrupt(state)
        t0 = time.perf_counter()
        step = _train_epoch(full, opt, sched, data, config, run, step, epoch, index, pos_weight, nfe_log)
        epoch_times.append(time.perf_counter() - t0)
        epoch += 1
        val = _evaluate(full, data.val, config, run)
        run.log(step, model=name, epoch=epoch, epoch_s=epoch_times[-1], val_interp_mse=val["interp_mse"],
                val_extrap_mse=val["extrap_mse"], val_auc=val["auc"])
        run.info(f"{name} epoch {epoch}/{config.epochs}: {epoch_times[-1]:.1f} s, val interp "
                 f"{val['interp_mse']:.4g}, extrap {val['extrap_mse']:.4g}, AUC {val['auc']:.3f}")
        bar.update()
        run.save_checkpoint(state())
    bar.close()
    if run.is_main:  # the trained weights, for later evaluation (e.g. on set b) without retraining
        from neuralode.io import atomic_torch_save

        atomic_torch_save(full.state_dict(), run.dir / "models" / f"{name}.pt")
    test = _evaluate(full, data.test, config, run)
    row = {
        "model": MODEL_LABELS[name],
        "key": name,
        "interp_mse": test["interp_mse"],
        "extrap_mse": test["extrap_mse"],
        "auc": test["auc"],
        "params": _n_params(full),
        "s_per_epoch": float(np.mean(epoch_times)) if epoch_times else float("nan"),
        "nfe_forward": test["nfe_forward"],
    }
    if data.extra_test is not None:
        b = _evaluate(full, data.extra_test, config, run)
        row.update(auc_set_b=b["auc"], interp_mse_set_b=b["interp_mse"], extrap_mse_set_b=b["extrap_mse"])
    fpr, tpr, _ = roc_curve(test["labels"], test["probs"])
    recon = _recon_data(test["preds_interp"], data.test, config)
    run.log(step, model=name, **{f"test_{k}": v for k, v in row.items() if k not in ("model", "key")})
    return {"row": row, "roc": [fpr.tolist(), tpr.tolist()], "recon": recon, "nfe_train": list(nfe_log)}


def _recon_data(preds_interp: list, patients: list, config: Config) -> dict:
    """Predictions of the first ``plot_patients`` test patients on their own observation rows."""
    out = {}
    if not preds_interp:
        return out
    batch, pred = preds_interp[0]
    times = batch.times.numpy()
    for b, p in enumerate(patients[: min(config.plot_patients, len(batch.record_ids))]):
        rows = np.searchsorted(times, p.times)
        out[str(p.record_id)] = pred[b, rows].numpy().T.tolist()  # (C, T_i)
    return out


def _headline(rows: list[dict], baseline: dict, config: Config) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "mean_baseline_interp_mse": baseline["interp_mse"],
        "mean_baseline_extrap_mse": baseline["extrap_mse"],
    }
    for r in rows:
        for k in ("interp_mse", "extrap_mse", "auc", "params", "s_per_epoch", "nfe_forward"):
            metrics[f"{r['key']}/{k}"] = r[k]
    ode = [r for r in rows if r["key"] in ODE_MODELS]
    rnn = [r for r in rows if r["key"] not in ODE_MODELS]
    if ode:
        metrics["best_ode_auc"] = max(r["auc"] for r in ode)
        metrics["best_ode_interp_mse"] = min(r["interp_mse"] for r in ode)
    if rnn:
        metrics["best_rnn_auc"] = max(r["auc"] for r in rnn)
        metrics["best_rnn_interp_mse"] = min(r["interp_mse"] for r in rnn)
    metrics["best_interp_mse"] = min(r["interp_mse"] for r in rows) if rows else float("nan")
    return metrics


def _report(run, config, data, rows, baseline, curves, recon, nfe_curves, metrics, figures: bool = True) -> None:
    from neuralode.data.physionet import PARAMS
    from neuralode.report.markdown import image, metrics_table

    figs = []
    try:
        if figures:
            figs = _figures(run, data, rows, curves, recon, nfe_curves, config)
    except Exception as exc:  # noqa: BLE001 - a figure must not lose the measured table
        run.info(f"figures failed: {type(exc).__name__}: {exc}")
    columns = ["model", "interp_mse", "extrap_mse", "auc", "params", "s_per_epoch", "nfe_forward"]
    if config.test_on_b:
        columns += ["auc_set_b", "interp_mse_set_b", "extrap_mse_set_b"]
    table_rows = [{k: r.get(k) for k in columns} for r in rows]
    table_rows.append({"model": "predict training mean", "interp_mse": baseline["interp_mse"],
                       "extrap_mse": baseline["extrap_mse"]})
    lines = [
        "# PhysioNet 2012 (set a): ODE-RNN and Latent ODE vs recurrent baselines",
        "",
        f"Patients: {len(data.train)} train / {len(data.val)} validation / {len(data.test)} test "
        f"(split seed {config.split_seed}); time grid {config.round_hours} h; {config.normalisation} "
        f"normalisation from the training split; {config.epochs} epochs, batch {config.batch_size}. "
        f"ODE-RNN integrator {config.enc_method} (max step {config.enc_max_step} scaled), latent ODE decoder "
        f"{config.dec_method} (rtol {config.dec_rtol}, atol {config.dec_atol}).",
        "",
        "MSE on normalised values (interpolation: held-out "
        f"{config.holdout_frac:.0%} of each patient's observation times; extrapolation: observe the first "
        f"{config.extrap_hours:g} h, predict the rest). AUC: in-hospital mortality on the test split. "
        "s_per_epoch: training wall time per epoch; nfe_forward: field evaluations per test forward pass.",
        "",
        metrics_table(table_rows, columns),
        "",
    ]
    missing = [MODEL_LABELS[m] for m in config.models if m not in {r["key"] for r in rows}]
    if missing:
        lines += [f"*Partial report: still training {', '.join(missing)}.*", ""]
    if "best_ode_auc" in metrics and "best_rnn_auc" in metrics:
        lines += [
            f"- best ODE model interpolation MSE {metrics['best_ode_interp_mse']:.4g} vs best RNN baseline "
            f"{metrics['best_rnn_interp_mse']:.4g}",
            f"- best ODE model AUC {metrics['best_ode_auc']:.3f} vs best RNN baseline {metrics['best_rnn_auc']:.3f}",
            "- full-configuration targets: ODE interpolation MSE <= RNN baselines: "
            f"{_yes(metrics['best_ode_interp_mse'] <= metrics['best_rnn_interp_mse'])}; ODE AUC >= RNN baselines: "
            f"{_yes(metrics['best_ode_auc'] >= metrics['best_rnn_auc'])}; best ODE AUC >= 0.80: "
            f"{_yes(metrics['best_ode_auc'] >= 0.80)}",
            "",
        ]
    lines += [image(f, f) for f in figs]
    lines += ["", f"Channels: {', '.join(PARAMS)}."]
    run.write_report("\n".join(lines))


def _yes(ok: bool) -> str:
    return "met" if ok else "not met"


def _figures(run, data, rows, curves, recon, nfe_curves, config) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuralode.data.physionet import PARAMS

    paths = []
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for r in rows:
        fpr, tpr = curves[r["key"]]
        ax.plot(fpr, tpr, label=f"{r['model']} (AUC {r['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="In-hospital mortality (test)")
    ax.legend(fontsize=7)
    paths.append(run.save_figure(fig, "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, nfe in nfe_curves.items():
        if key in ODE_MODELS and nfe:
            ax.plot(np.arange(1, len(nfe) + 1), nfe, label=MODEL_LABELS[key], lw=0.8)
    ax.set(xlabel="training step", ylabel="forward NFE", title="NFE over training")
    ax.legend(fontsize=7)
    paths.append(run.save_figure(fig, "nfe.png"))

    keeps = _holdout_keep(data.test, config.holdout_frac, 1234)
    for j, p in enumerate(data.test[: config.plot_patients]):
        counts = p.mask.sum(0)
        channels = [c for c in np.argsort(-counts, kind="stable")[:4] if counts[c] > 0]
        if not channels:
            continue
        fig, axes = plt.subplots(1, len(channels), figsize=(3.2 * len(channels), 2.8), squeeze=False)
        for ax, c in zip(axes[0], channels):
            obs = p.mask[:, c] > 0
            ax.plot(p.times[obs & keeps[j]], p.values[obs & keeps[j], c], "ko", ms=3, label="observed (input)")
            ax.plot(p.times[obs & ~keeps[j]], p.values[obs & ~keeps[j], c], "rx", ms=5, label="held out")
            for r in rows:
                pred = recon[r["key"]].get(str(p.record_id))
                if pred is not None:
                    ax.plot(p.times, pred[c], lw=0.9, label=r["model"])
            ax.set(title=PARAMS[c], xlabel="hours")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"test patient {p.record_id}: observed vs reconstructed (interpolation)", fontsize=9)
        paths.append(run.save_figure(fig, f"patient_{p.record_id}.png"))
    return paths


register(
    "physionet",
    config=Config,
    run=run,
    description="PhysioNet 2012 ICU data: ODE-RNN and Latent ODEs vs GRU-Δt / GRU-D on interpolation, "
    "extrapolation and mortality AUC (Rubanova et al. 2019)",
    quick_time="~2 min",
    in_demo=False,  # needs the PhysioNet files (NEURALODE_DATA), not embedded data
)
