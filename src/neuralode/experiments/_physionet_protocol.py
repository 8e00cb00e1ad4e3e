"""Rubanova et al.'s training objective and metric definitions for PhysioNet, and AUC intervals.

The PhysioNet experiment (:mod:`neuralode.experiments.physionet`) runs under one of two
protocols; ``protocol="rubanova"`` follows the released code of Rubanova, Chen & Duvenaud,
"Latent ODEs for Irregularly-Sampled Time Series" (NeurIPS 2019; ``run_models.py``,
``lib/likelihood_eval.py``, ``lib/base_models.py``, ``lib/utils.py``), so that its numbers are
comparable with their Tables 4-6. The pieces that define those numbers live here, each checked
against hand-computed values in ``tests/test_physionet_protocol.py``:

- :func:`kl_weight` - the KL weight, annealed per **epoch**: 0 for ``wait`` epochs, then
  ``1 - 0.99 ** (epoch - wait)`` (theirs: ``wait_until_kl_inc = 10``); ours per step.
- :func:`kl_per_dim` - ``KL(N(mean, std²) || N(0, 1))`` per latent dimension; their loss
  averages it over the latent dimensions (``torch.mean(kldiv_z0, (1, 2))``), ours sums it.
- :func:`patient_channel_mean` - their masked averaging: per patient and channel the mean over
  that channel's observed times (0 for a channel never observed), then the mean over *all*
  channels, per patient. Used for the Gaussian log-likelihood (std 0.01) in the loss and for
  the MSE they report (then averaged over patients).
- :func:`iwae_loss` - their objective: ``-logsumexp_k(mean_b log p_k - kl_coef * mean KL)`` over
  ``k`` z0 samples (3), with ``log p_k`` the patient-mean of the masked likelihood.
- :func:`delong_auc_ci`, :func:`bootstrap_auc_ci` - 95% intervals for a test AUC: DeLong's
  (1988) variance via the placement values of Sun & Xu (2014), and the percentile bootstrap over
  patients. With ~110 deaths among 800 test patients a single AUC has a standard error of about
  0.02, so orderings closer than that need several seeds and these intervals to be read.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "bootstrap_auc_ci",
    "delong_auc_ci",
    "iwae_loss",
    "kl_per_dim",
    "kl_weight",
    "mean_std",
    "patient_channel_mean",
    "rubanova_gaussian_loglik",
    "rubanova_mse",
]


def kl_weight(epoch: int, wait: int = 10, rate: float = 0.99) -> float:
    """Rubanova et al.'s KL weight for (0-based) ``epoch``: 0 while ``epoch < wait``, then
    ``1 - rate ** (epoch - wait)`` (so it is still 0 at ``epoch == wait``)."""
    if epoch < 0 or wait < 0:
        raise ValueError(f"epoch and wait must be >= 0, got epoch={epoch}, wait={wait}")
    return 0.0 if epoch < wait else 1.0 - rate ** (epoch - wait)


def kl_per_dim(mean: Tensor, std: Tensor) -> Tensor:
    """``KL(N(mean, std²) || N(0, 1))`` elementwise: same shape as ``mean``."""
    return 0.5 * (mean**2 + std**2 - 1.0) - torch.log(std)


def patient_channel_mean(per_entry: Tensor, mask: Tensor) -> Tensor:
    """Their masked average of ``per_entry (..., B, T, C)``: per patient and channel the mean over
    the observed times (``mask`` 1), 0 for a channel with no observation; then the mean over all
    ``C`` channels. Returns ``(..., B)``."""
    n = mask.sum(-2)  # (..., B, C)
    per_channel = (per_entry * mask).sum(-2) / n.clamp_min(1)
    return torch.where(n > 0, per_channel, torch.zeros_like(per_channel)).mean(-1)


def rubanova_gaussian_loglik(pred: Tensor, target: Tensor, mask: Tensor, std: float) -> Tensor:
    """Masked Gaussian log-density with fixed ``std``, averaged as :func:`patient_channel_mean`: ``(..., B)``."""
    logp = -0.5 * ((target - pred) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return patient_channel_mean(logp, mask)


def rubanova_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Their reported MSE: squared error averaged as :func:`patient_channel_mean`, then over patients (scalar)."""
    return patient_channel_mean((pred - target) ** 2, mask).mean()


def iwae_loss(loglik: Tensor, kl: Tensor, kl_coef: float) -> Tensor:
    """Their objective from ``loglik (K, B)`` (per sample and patient) and ``kl (B, L)``:
    ``-logsumexp_k(mean_b loglik[k] - kl_coef * mean(kl))`` (a scalar; no ``- log K``, as theirs)."""
    per_sample = loglik.mean(-1) - kl_coef * kl.mean()
    return -torch.logsumexp(per_sample, 0)


# --------------------------------------------------------------------------- AUC intervals


def _placements(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUC needs both classes; got {len(pos)} positives and {len(neg)} negatives")
    # psi(x, y) = 1 if x > y, 1/2 if equal: the Mann-Whitney kernel
    cmp = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None, :])
    return float(cmp.mean()), cmp.mean(1), cmp.mean(0)


def delong_auc_ci(y, p, level: float = 0.95) -> tuple[float, float, float, float]:
    """AUC, its DeLong standard error, and the ``level`` normal interval (clipped to [0, 1]).

    ``V10`` (one per positive: the fraction of negatives it outranks) and ``V01`` (one per
    negative) are the placement values; ``var = var(V10) / m + var(V01) / n`` with sample
    variances (ddof 1).
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    auc, v10, v01 = _placements(y, p)
    m, n = len(v10), len(v01)
    var = (v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n
    se = math.sqrt(max(var, 0.0))
    z = _normal_quantile(0.5 + level / 2)
    return auc, se, max(0.0, auc - z * se), min(1.0, auc + z * se)


def bootstrap_auc_ci(y, p, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC over patients (resamples without both classes are redrawn)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    while len(aucs) < n_boot:
        idx = rng.integers(len(y), size=len(y))
        if 0 < y[idx].sum() < len(idx):
            aucs.append(_placements(y[idx], p[idx])[0])
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for a single value) of finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
