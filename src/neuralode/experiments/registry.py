"""The experiment registry: discovery, lookup, and the runner that executes one experiment.

Each experiment module calls, at import time::

    register("spirals", config=Config, run=run, description="...", quick_time="~20 s")

:func:`discover` imports every module of the ``neuralode.experiments`` package (except the
infrastructure modules) so that all experiments register themselves. A module that fails to
import does not vanish: its error is kept and shown by ``neuralode list``, by
:func:`get` and by ``neuralode demo``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import os
import pkgutil
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Experiment",
    "ResumeMismatchError",
    "RunOutcome",
    "UnknownExperimentError",
    "discover",
    "experiments",
    "get",
    "import_errors",
    "names",
    "register",
    "run_experiment",
    "unregister",
]

_INFRASTRUCTURE = {"base", "registry", "config"}


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its config class, run function and how to describe it."""

    name: str
    config: type
    run: Callable[..., dict[str, Any]]
    description: str
    quick_time: str = "< 2 min"
    module: str = ""
    in_demo: bool = True


class UnknownExperimentError(ValueError):
    """Raised by :func:`get` for a name that is not registered."""


class ResumeMismatchError(ValueError):
    """Raised when ``--resume`` is asked with a config other than the one the run started with."""


_REGISTRY: dict[str, Experiment] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_discovered = False


def register(
    name: str,
    *,
    config: type,
    run: Callable[..., dict[str, Any]],
    description: str,
    quick_time: str = "< 2 min",
    in_demo: bool = True,
) -> Experiment:
    """Register an experiment under ``name`` (lowercase letters, digits, ``-`` and ``_``).

    ``config`` must be a dataclass with a ``quick()`` classmethod; ``run(config, run)`` returns
    the headline metrics as a dict. ``in_demo=False`` keeps an experiment out of
    ``neuralode demo`` (which runs on embedded or generated data only, in minutes): use it for
    experiments that need downloaded data or longer runs. Registering a name again from the same module (a reload)
    replaces it; from another module it is an error.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name) or name != name.lower():
        raise ValueError(f"experiment name must be lowercase letters, digits, '-' or '_', got {name!r}")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"register({name!r}): config must be a dataclass class, got {config!r}")
    if not callable(getattr(config, "quick", None)):
        raise TypeError(f"register({name!r}): {config.__name__} needs a quick() classmethod returning the quick config")
    if not callable(run):
        raise TypeError(f"register({name!r}): run must be callable run(config, run) -> dict, got {run!r}")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"register({name!r}): description must be a non-empty string")
    module = getattr(run, "__module__", "") or ""
    existing = _REGISTRY.get(name)
    if existing is not None and existing.module != module:
        raise ValueError(f"experiment {name!r} is already registered by module {existing.module!r}")
    exp = Experiment(name=name, config=config, run=run, description=description.strip(),
                     quick_time=quick_time, module=module, in_demo=in_demo)
    _REGISTRY[name] = exp
    return exp


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests that register toy experiments)."""
    _REGISTRY.pop(name, None)


def discover(force: bool = False) -> dict[str, str]:
    """Import every experiment module once; return ``{module: error}`` for those that failed."""
    global _discovered
    if _discovered and not force:
        return dict(_IMPORT_ERRORS)
    import neuralode.experiments as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
            continue
        full = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(full)
            _IMPORT_ERRORS.pop(full, None)
        except Exception as e:  # noqa: BLE001 - a broken module is reported, not fatal
            frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
            # A SyntaxError names its own file and line; otherwise point at the raising line.
            where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames and not isinstance(e, SyntaxError) else ""
            _IMPORT_ERRORS[full] = f"{type(e).__name__}: {e}{where}"
    _discovered = True
    return dict(_IMPORT_ERRORS)


def import_errors() -> dict[str, str]:
    """``{module: error}`` for experiment modules that failed to import (after discover())."""
    discover()
    return dict(_IMPORT_ERRORS)


def experiments() -> dict[str, Experiment]:
    """All registered experiments by name, sorted (runs discovery first)."""
    discover()
    return dict(sorted(_REGISTRY.items()))


def names() -> list[str]:
    """The registered experiment names, sorted."""
    return list(experiments())


def get(name: str) -> Experiment:
    """The experiment called ``name``; ``UnknownExperimentError`` lists the valid names."""
    registered = experiments()
    if name in registered:
        return registered[name]
    msg = f"unknown experiment {name!r}; valid names: {', '.join(registered) or '(none registered)'}"
    errors = import_errors()
    if errors:
        msg += "\nmodules that failed to import (their experiments are missing):\n" + "\n".join(
            f"  {m}: {e}" for m, e in errors.items())
    raise UnknownExperimentError(msg)


# --------------------------------------------------------------------------------------------
# running


@dataclass
class RunOutcome:
    """What :func:`run_experiment` hands back: the folder, config and headline metrics."""

    name: str
    dir: Path
    config: Any
    metrics: dict[str, Any]
    wall_time_s: float


def default_run_dir(name: str, *, resume: bool = False, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/NAME-<timestamp>`` for a fresh run; ``runs/NAME`` when resuming.

    When resuming and ``runs/NAME`` has no checkpoint, the newest ``runs/NAME-*`` folder that
    has one is used instead, so ``neuralode run NAME --resume`` picks up an interrupted run.
    """
    from neuralode.experiments.base import CHECKPOINT_NAME

    root = Path(root)
    if resume:
        plain = root / name
        if (plain / CHECKPOINT_NAME).exists() or not root.exists():
            return plain
        candidates = sorted((p for p in root.glob(f"{name}-*") if (p / CHECKPOINT_NAME).exists()),
                            key=lambda p: (p / CHECKPOINT_NAME).stat().st_mtime)
        return candidates[-1] if candidates else plain
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return path


def _check_resume_config(run_dir: Path, config_dict: dict[str, Any], seed: int, quick: bool) -> None:
    """A resumed run must use the config it started with, or it would not end the same."""
    import json

    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
            raise ValueError("not a run's config record")
    except (ValueError, UnicodeDecodeError) as e:
        raise ResumeMismatchError(
            f"cannot resume {run_dir}: {path.name} is unreadable ({type(e).__name__}: {e}); the folder was left "
            "untouched. Start afresh without --resume into a new --out folder, or restore config.json") from None
    diffs = [f"{k}: saved {saved['config'].get(k)!r}, now {v!r}" for k, v in config_dict.items()
             if saved.get("config", {}).get(k) != v]
    if saved.get("seed") != seed:
        diffs.append(f"seed: saved {saved.get('seed')!r}, now {seed!r}")
    if saved.get("quick") != quick:
        diffs.append(f"quick: saved {saved.get('quick')!r}, now {quick!r}")
    if diffs:
        raise ResumeMismatchError(
            f"cannot resume {run_dir}: the config differs from the one it started with "
            "(pass the same --quick/--seed/--set as the original run):\n  " + "\n  ".join(diffs))


def _write_reports(run: Any) -> None:
    """Open report.md with the headline table and write report.html; a failure here is only a warning."""
    from neuralode.report.collect import run_report

    try:
        run_report(run.dir)
    except Exception as e:  # noqa: BLE001 - the results are saved; a report bug must not lose the run
        run.info(f"warning: the headline table / report.html could not be written: {type(e).__name__}: {e} "
                 f"(rebuild with `neuralode report {run.dir}`)")


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    overrides: Iterable[str] | Mapping[str, Any] = (),
    resume: bool = False,
    config: Any = None,
) -> RunOutcome:
    """Resolve the config, run experiment ``name`` in its folder, write result.json.

    ``config`` (a ready config instance) takes the place of quick/overrides when given. A config
    with a ``resolved()`` method (one that fills fields from a named protocol, as physionet's
    ``protocol="rubanova"``) is replaced by what it returns before the run starts, so that
    config.json records, and a resume compares, the settings that actually run.
    On ``KeyboardInterrupt`` the status is recorded as ``interrupted`` and the exception
    propagates; on any other exception as ``failed`` with the error, and it propagates too.
    """
    from neuralode.experiments.base import Run
    from neuralode.experiments.config import config_to_dict, make_config
    from neuralode.io import atomic_write_json, to_jsonable

    exp = get(name)
    cfg = config if config is not None else make_config(exp.config, quick=quick, overrides=overrides)
    resolved = getattr(cfg, "resolved", None)
    if callable(resolved):  # a config that fills fields from a named protocol: record and run what actually runs
        cfg = resolved()
    run_dir = Path(out) if out is not None else default_run_dir(name, resume=resume)
    run = Run(run_dir, experiment=name, config=cfg, seed=seed, quick=quick, device=device, resume=resume)
    if resume and run.is_main:
        _check_resume_config(run_dir, config_to_dict(cfg), seed, quick)
    with run:
        run.start()
        try:
            metrics = exp.run(cfg, run)
        except KeyboardInterrupt:
            run.write_status("interrupted", checkpoint=run.checkpoint_path.exists())
            raise
        except BaseException as e:
            run.write_status("failed", error=f"{type(e).__name__}: {e}")
            raise
        if not isinstance(metrics, Mapping):
            run.write_status("failed", error=f"run() returned {type(metrics).__name__}, not a dict")
            raise TypeError(f"experiment {name!r}: run() must return a dict of headline metrics, "
                            f"got {type(metrics).__name__}")
        metrics = to_jsonable(dict(metrics))
        if run.is_main:
            atomic_write_json(run_dir / "result.json", metrics)
            _write_reports(run)
        run.write_status("completed")
    return RunOutcome(name=name, dir=run_dir, config=cfg, metrics=metrics, wall_time_s=run.elapsed)
