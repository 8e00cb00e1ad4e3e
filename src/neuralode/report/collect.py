"""Reports rebuilt from run folders: nothing here trains, everything reads files.

:func:`collect` gathers what one run folder holds; :func:`summary_report` turns several of
them into the top-level ``report.md`` that ``neuralode demo`` writes, and
:func:`write_summary` rebuilds it from disk (``neuralode report DIR``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralode.io import atomic_write_text, read_jsonl
from neuralode.report.markdown import format_value, image, link, metrics_table

__all__ = ["collect", "find_runs", "read_metrics", "summary_report", "write_summary"]


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return {"_error": f"{path.name} is not valid JSON: {e}"}


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a truncated last line from a crash is skipped)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def collect(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a report needs from one run folder.

    Returns a dict with ``dir``, ``name`` (experiment), ``config`` (config.json content or
    None), ``metrics`` (result.json or None), ``status`` (``completed``, ``failed``,
    ``interrupted``, ``running`` or ``missing``), ``error``, ``wall_time_s``, ``report``
    (``report.md`` path or None) and ``figures`` (relative paths).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"run_dir={str(d)!r} is not a directory")
    config = _read_json(d / "config.json")
    result = _read_json(d / "result.json")
    status = _read_json(d / "status.json") or {}
    fig_dir = d / "figures"
    figures = sorted(p.relative_to(d).as_posix() for p in fig_dir.rglob("*") if p.is_file()) if fig_dir.is_dir() else []
    if figures and (d / "report.md").exists():
        # the order the run's own report shows them in; figures it does not link go last
        text = (d / "report.md").read_text(encoding="utf-8", errors="replace").replace("%20", " ")
        figures.sort(key=lambda f: (text.find(f) if f in text else len(text), f))
    state = status.get("status") or ("completed" if result is not None else "missing")
    return {
        "dir": d,
        "name": (config or {}).get("experiment") or d.name,
        "config": config,
        "metrics": result,
        "status": state,
        "error": status.get("error"),
        "wall_time_s": status.get("wall_time_s"),
        "report": d / "report.md" if (d / "report.md").exists() else None,
        "figures": figures,
    }


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Sub-folders of ``root`` that are run folders (hold a config.json or status.json)."""
    r = Path(root)
    return sorted(p for p in r.iterdir() if p.is_dir() and ((p / "config.json").exists() or (p / "status.json").exists()))


_WIDE = 8  # a run with more headline metrics than this gets a metric | value table


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def summary_report(runs: Sequence[Mapping[str, Any]], root: str | os.PathLike[str], *,
                   title: str = "neuralode demo") -> str:
    """Markdown linking each run's report and figures, with a status/metrics overview.

    ``runs`` are :func:`collect` dicts; a run may also carry ``status="failed"`` and an
    ``error`` without a folder on disk (an experiment that failed before writing anything).
    """
    root = Path(root)
    overview = []
    for r in runs:
        m = r.get("metrics") or {}
        headline = ", ".join(f"{k}={format_value(v)}" for k, v in m.items()) if isinstance(m, Mapping) else ""
        overview.append({
            "experiment": r["name"],
            "status": r["status"],
            "time (s)": r.get("wall_time_s"),
            "headline metrics": headline or (r.get("error") or "")[:200],
        })
    n_failed = sum(r["status"] != "completed" for r in runs)
    env = next((r["config"] for r in runs if isinstance(r.get("config"), Mapping)), None)
    env_line = ""
    if env is not None:
        commit = (env.get("git_commit") or "unknown")[:10]
        env_line = (f"Commit `{commit}` · torch {env.get('torch')} · python {env.get('python')} · "
                    f"device {env.get('device')} · seed {env.get('seed')} · started {env.get('started_at')}\n")
    parts = [f"# {title}\n",
             f"{len(runs)} experiment(s), {len(runs) - n_failed} completed, {n_failed} not completed.\n",
             env_line,
             metrics_table(overview, ["experiment", "status", "time (s)", "headline metrics"])]
    for r in runs:
        parts.append(f"\n## {r['name']}\n")
        d = r.get("dir")
        if d is not None and Path(d).exists():
            parts.append(f"Run folder: {link(_rel(Path(d), root) + '/')}"
                         + (f" · {link(_rel(Path(r['report']), root), 'report')}" if r.get("report") else "") + "\n")
        if r["status"] != "completed":
            parts.append(f"**{r['status'].upper()}**" + (f": `{r.get('error')}`" if r.get("error") else "") + "\n")
        m = r.get("metrics")
        if isinstance(m, Mapping) and m:
            if len(m) > _WIDE:  # one row of many columns is unreadable: one row per metric
                parts.append(metrics_table([{"metric": k, "value": v} for k, v in m.items()]))
            else:
                parts.append(metrics_table([m]))
        for fig in r.get("figures") or []:
            parts.append(image(_rel(Path(d) / fig, root), Path(fig).stem.replace("_", " ")))
    return "\n".join(parts)


def write_summary(root: str | os.PathLike[str], runs: Sequence[Mapping[str, Any]] | None = None, *,
                  title: str = "neuralode demo") -> Path:
    """Write ``root/report.md`` from ``runs`` (default: every run folder found under root)."""
    root = Path(root)
    if runs is None:
        runs = [collect(p) for p in find_runs(root)]
    return atomic_write_text(root / "report.md", summary_report(runs, root, title=title))
