"""Headline numbers: the two to five results of an experiment that matter, beside their targets.

A report that lists every metric an experiment records (classify-2d has over twenty) does not
tell a reader what was reproduced and what was not. A *headline* picks one key of the run's
``result.json``, names it for a reader, and compares it with the published (or agreed target)
value, giving a verdict:

``reproduced``
    within the headline's tolerance of the published value;
``better``
    beyond the tolerance, on the good side;
``short by X``
    beyond the tolerance, on the bad side (X is the distance, in the value's own units);
``met`` / ``missed by X``
    for a threshold target (``goal="at_least"`` or ``"at_most"``) rather than a published value;
``off by X``
    for ``goal="match"`` (a value that should equal the published one, neither side better);
``measured``
    when there is no target to compare with (the number is still worth reading).

Experiments declare their headlines without touching the report code, either in their own
module at import time::

    from neuralode.report.headlines import Headline, declare

    declare("cnf-2d",
            Headline("nll_test_plain", "test NLL, FFJORD (nats)", target=2.42, goal="lower", tol=0.05,
                     source="KDE on the same sample"),
            ...)

or in :data:`DEFAULTS` below (the table the report falls back on). A declaration from the
experiment's module replaces the default for that name. Reports only read files: the verdicts
are recomputed from ``result.json`` whenever a report is rebuilt (``neuralode report DIR``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from neuralode.report.markdown import format_value, metrics_table

__all__ = [
    "DEFAULTS",
    "Headline",
    "Verdict",
    "declare",
    "declared",
    "evaluate",
    "headline_rows",
    "headline_table",
    "headlines_for",
    "judge",
    "missing_headlines",
    "target_text",
]

Goal = Literal["higher", "lower", "match", "at_least", "at_most", "info"]
_GOALS = ("higher", "lower", "match", "at_least", "at_most", "info")


@dataclass(frozen=True)
class Headline:
    """One headline number of an experiment.

    Args:
        key: the key of ``result.json`` holding the measured value (a number).
        label: what the number is, for a reader ("test accuracy, ODE-Net (%)").
        target: the published or target value; ``None`` for a number shown without a verdict.
        goal: ``"higher"`` / ``"lower"`` (which side is better; within ``tol`` is
            ``reproduced``), ``"match"`` (neither side better), ``"at_least"`` / ``"at_most"``
            (a threshold: ``met`` or ``missed by``), or ``"info"`` (no verdict).
        tol: absolute tolerance within which the value counts as reproduced.
        rtol: relative tolerance (of ``|target|``), added to ``tol``.
        source: where the target comes from ("Chen et al. 2018, Table 2", "issue 3 target").
        scale: the value and target are shown multiplied by this (100 for a fraction shown in %);
            verdict distances are shown on the same scale. ``target`` and ``tol`` are given in
            the *unscaled* units of ``result.json``.
        value: optional function of the whole ``result.json`` dict giving the value, for a
            headline derived from several keys (a ratio, a difference); ``key`` then names it.
            It may return ``None`` when its inputs are absent.
    """

    key: str
    label: str
    target: float | None = None
    goal: Goal = "higher"
    tol: float = 0.0
    rtol: float = 0.0
    source: str = ""
    scale: float = 1.0
    value: Callable[[Mapping[str, Any]], Any] | None = field(default=None, compare=False)

    def measured(self, metrics: Mapping[str, Any]) -> Any:
        """The measured value from a run's ``result.json`` dict (None when absent)."""
        if self.value is None:
            return metrics.get(self.key)
        try:
            return self.value(metrics)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"Headline key must be a non-empty string (a result.json key), got {self.key!r}")
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"Headline {self.key!r}: label must be a non-empty string, got {self.label!r}")
        if self.goal not in _GOALS:
            raise ValueError(f"Headline {self.key!r}: goal={self.goal!r}; accepted: {', '.join(_GOALS)}")
        if self.target is not None and not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"Headline {self.key!r}: target must be a finite number or None, got {self.target!r}")
        if self.goal != "info" and self.target is None:
            raise ValueError(f"Headline {self.key!r}: goal={self.goal!r} needs a target (or use goal='info')")
        for name in ("tol", "rtol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Headline {self.key!r}: {name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Headline {self.key!r}: scale must be a positive number, got {self.scale!r}")


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing one measured value with its headline's target.

    ``status`` is one of ``reproduced``, ``better``, ``short``, ``met``, ``missed``, ``off``,
    ``measured`` or ``missing``; ``text`` is what the report prints.
    """

    status: str
    text: str


def _fmt(x: float) -> str:
    return format_value(float(x), 3)


_NOT_IN_RUN = "not in this run"


def judge(value: Any, spec: Headline) -> Verdict:
    """The verdict for ``value`` (a number from result.json, or None when absent)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return Verdict("missing", _NOT_IN_RUN if value is None else f"not a number ({value!r})")
    v = float(value)
    if not math.isfinite(v):
        return Verdict("missed" if spec.target is not None else "measured", f"not finite ({v})")
    if spec.target is None or spec.goal == "info":
        return Verdict("measured", "measured")
    t = float(spec.target)
    tol = spec.tol + spec.rtol * abs(t)
    gap = abs(v - t) * spec.scale
    if spec.goal == "at_least":
        return Verdict("met", "met") if v >= t else Verdict("missed", f"missed by {_fmt(gap)}")
    if spec.goal == "at_most":
        return Verdict("met", "met") if v <= t else Verdict("missed", f"missed by {_fmt(gap)}")
    if abs(v - t) <= tol:
        return Verdict("reproduced", "reproduced")
    if spec.goal == "match":
        return Verdict("off", f"off by {_fmt(gap)}")
    good = v > t if spec.goal == "higher" else v < t
    return Verdict("better", "better") if good else Verdict("short", f"short by {_fmt(gap)}")


_DECLARED: dict[str, tuple[Headline, ...]] = {}


def declare(experiment: str, *headlines: Headline) -> None:
    """Declare ``experiment``'s headlines (replacing any earlier declaration or default).

    Call it at import time in the experiment's module, next to ``register(...)``. Two to five
    headlines read best; more are allowed.
    """
    if not isinstance(experiment, str) or not experiment:
        raise ValueError(f"experiment must be a non-empty name, got {experiment!r}")
    if not headlines:
        raise ValueError(f"declare({experiment!r}): give at least one Headline")
    for h in headlines:
        if not isinstance(h, Headline):
            raise TypeError(f"declare({experiment!r}): expected Headline objects, got {type(h).__name__}")
    _DECLARED[experiment] = tuple(headlines)


def declared() -> dict[str, tuple[Headline, ...]]:
    """Every experiment with headlines: the defaults overlaid by the declarations."""
    return {**DEFAULTS, **_DECLARED}


def headlines_for(experiment: str) -> tuple[Headline, ...]:
    """The headlines of ``experiment`` (empty when it declares none)."""
    return _DECLARED.get(experiment, DEFAULTS.get(experiment, ()))


def evaluate(experiment: str, metrics: Mapping[str, Any] | None,
             specs: Sequence[Headline] | None = None) -> list[tuple[Headline, Any, Verdict]]:
    """``(headline, measured value, verdict)`` for each headline of ``experiment``."""
    specs = headlines_for(experiment) if specs is None else specs
    m = metrics if isinstance(metrics, Mapping) else {}
    out = []
    for h in specs:
        v = h.measured(m)
        out.append((h, v, judge(v, h)))
    return out


def _shown(value: Any, spec: Headline) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_value(value * spec.scale if spec.scale != 1 else value)
    return format_value(value)


def target_text(spec: Headline) -> str:
    """The published/target column of a headline: ``≥ 99 (source)``, ``0.135 ± 0.013 (source)``, ``—``."""
    if spec.target is None:
        return "—"
    t = format_value(spec.target * spec.scale if spec.scale != 1 else spec.target)
    prefix = {"at_least": "≥ ", "at_most": "≤ "}.get(spec.goal, "")
    tol = spec.tol + spec.rtol * abs(spec.target)
    within = f" ± {tol * spec.scale:.2g}" if tol > 0 and spec.goal in ("higher", "lower", "match") else ""
    return f"{prefix}{t}{within}" + (f" ({spec.source})" if spec.source else "")


def headline_rows(experiment: str, metrics: Mapping[str, Any] | None,
                  specs: Sequence[Headline] | None = None) -> list[dict[str, str]]:
    """Rows ``{experiment, result, measured, published / target, verdict}`` for a table."""
    return [{"experiment": experiment, "result": h.label, "measured": _shown(v, h),
             "published / target": target_text(h), "verdict": verdict.text}
            for h, v, verdict in evaluate(experiment, metrics, specs)]


def headline_table(runs: Iterable[tuple[str, Mapping[str, Any] | None]], *, with_experiment: bool = True,
                   skip_missing: bool = False) -> str:
    """A markdown table of the headlines of ``(experiment, metrics)`` pairs.

    Experiments without headlines are left out; an empty string when none has any. With
    ``skip_missing`` the headlines the runs did not measure (a quick configuration leaves some
    variants out) are left out too; :func:`missing_headlines` names them.
    """
    rows: list[dict[str, str]] = []
    for name, metrics in runs:
        rows.extend(row for row in headline_rows(name, metrics)
                    if not (skip_missing and row["verdict"] == _NOT_IN_RUN))
    if not rows:
        return ""
    cols = ["experiment", "result", "measured", "published / target", "verdict"]
    return metrics_table(rows, cols if with_experiment else cols[1:])


def missing_headlines(runs: Iterable[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """``"experiment: label"`` for each headline that the runs did not measure."""
    return [f"{name}: {h.label}" for name, metrics in runs
            for h, _, verdict in evaluate(name, metrics) if verdict.text == _NOT_IN_RUN]


# ------------------------------------------------------------------------------------------
# Defaults: the headlines of the experiments whose modules declare none of their own. Keys are
# those the experiments' run() functions return; targets are the published values (with the
# paper) or the targets agreed for this project (README's results table).



def _ratio(num: str, den: str) -> Callable[[Mapping[str, Any]], float]:
    return lambda m: float(m[num]) / float(m[den])


_CHEN = "Chen et al. 2018"

DEFAULTS: dict[str, tuple[Headline, ...]] = {
    "cnf-2d": (
        Headline("gap_to_kde", "test NLL minus KDE's (nats)", 0.05, "at_most", source="project target"),
        Headline("test_nll", "test NLL, first variant (nats)", goal="info"),
        Headline("nfe_ratio_rnode_plain", "forward NFE, RNODE / FFJORD", 1.0, "at_most",
                 source="Finlay et al. 2020: fewer", value=_ratio("rnode/nfe_forward", "plain/nfe_forward")),
    ),
    "fit-spiral": (
        Headline("traj_mse", "trajectory MSE", goal="info"),
        Headline("traj_mse_reduction", "trajectory MSE, initial / final", 10.0, "at_least",
                 source="learns the field", value=_ratio("traj_mse_initial", "traj_mse")),
    ),
    "fit-linear": (
        Headline("matrix_error", "relative error of the recovered matrix", 0.01, "at_most",
                 source="recovers A"),
        Headline("traj_mse", "trajectory MSE", goal="info"),
    ),
    "digits": (
        Headline("odenet_test_accuracy", "ODE-Net test accuracy (%)", 0.97, "at_least", scale=100,
                 source="project target"),
        Headline("resnet_test_accuracy", "ResNet test accuracy (%)", 0.97, "at_least", scale=100,
                 source="project target"),
        Headline("odenet_nfe_forward", "ODE-Net forward NFE", goal="info"),
    ),
    "mnist": (
        Headline("odenet_test_accuracy", "ODE-Net test accuracy (%)", 1 - 0.0042, "higher", tol=0.001, scale=100,
                 source=f"{_CHEN}, Table 1"),
        Headline("resnet_test_accuracy", "ResNet test accuracy (%)", 1 - 0.0041, "higher", tol=0.001, scale=100,
                 source=f"{_CHEN}, Table 1"),
        Headline("rknet_test_accuracy", "RK-Net test accuracy (%)", 1 - 0.0047, "higher", tol=0.001, scale=100,
                 source=f"{_CHEN}, Table 1"),
        Headline("odenet_params", "ODE-Net parameters", 0.22e6, "match", rtol=0.1, source=f"{_CHEN}, Table 1"),
    ),
    "cifar10": (
        Headline("odenet_test_accuracy", "ODE-Net test accuracy (%)", goal="info", scale=100),
        Headline("resnet_test_accuracy", "ResNet test accuracy (%)", goal="info", scale=100),
        Headline("odenet_nfe_forward", "ODE-Net forward NFE", goal="info"),
    ),
    "latent-spirals": (
        Headline("rmse_latent_ode_30", "latent ODE extrapolation RMSE, 30 obs", 0.1642, "lower", rtol=0.1,
                 source=f"{_CHEN}, Table 2"),
        Headline("rmse_latent_ode_50", "latent ODE extrapolation RMSE, 50 obs", 0.1502, "lower", rtol=0.1,
                 source=f"{_CHEN}, Table 2"),
        Headline("rmse_latent_ode_100", "latent ODE extrapolation RMSE, 100 obs", 0.1346, "lower", rtol=0.1,
                 source=f"{_CHEN}, Table 2"),
        Headline("rmse_rnn_100", "RNN extrapolation RMSE, 100 obs", 0.1813, "lower", rtol=0.1,
                 source=f"{_CHEN}, Table 2"),
    ),
    "physionet": (
        Headline("best_ode_auc", "best ODE model, mortality AUC", 0.80, "at_least", source="project target"),
        Headline("best_rnn_auc", "best RNN baseline, mortality AUC", goal="info"),
        Headline("best_ode_interp_mse", "best ODE model, interpolation MSE", goal="info"),
        Headline("best_rnn_interp_mse", "best RNN baseline, interpolation MSE", goal="info"),
    ),
    "trajectory-pca": (
        Headline("head_accuracy_t0", "head accuracy on z(0) (%)", goal="info", scale=100),
        Headline("head_accuracy_t1", "head accuracy on z(1) (%)", goal="info", scale=100),
    ),
}
