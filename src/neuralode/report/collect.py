"""Reports rebuilt from run folders: nothing here trains, everything reads files.

:func:`collect` gathers what one run folder holds; :func:`summary_report` turns several of
them into the top-level ``report.md`` that ``neuralode demo`` writes, and
:func:`write_summary` rebuilds it from disk (``neuralode report DIR``). :func:`run_report`
opens one run's ``report.md`` with its headline table (:mod:`neuralode.report.headlines`) and
writes the self-contained ``report.html`` beside it (:mod:`neuralode.report.html`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuralode.io import atomic_write_text, read_jsonl
from neuralode.report.markdown import image, link, metrics_table

__all__ = ["collect", "find_runs", "read_metrics", "run_report", "summary_report", "write_summary"]


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


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


_START, _END = "<!-- headlines:start -->", "<!-- headlines:end -->"
_MSTART, _MEND = "<!-- metrics:start -->", "<!-- metrics:end -->"
_QUICK_NOTE = ("Quick configuration (minutes on a CPU): the published values come from full runs, "
               "so a verdict here says how far the quick run is, not whether the full one reproduces.")


def _strip_block(text: str, start: str, end: str) -> str:
    while start in text and end in text[text.index(start):]:
        i = text.index(start)
        j = text.index(end, i) + len(end)
        text = text[:i].rstrip("\n") + "\n" + text[j:].lstrip("\n")
    return text


def _verdict_counts(name: str, metrics: Any) -> str:
    from collections import Counter

    from neuralode.report.headlines import evaluate

    counts = Counter(v.status for _, _, v in evaluate(name, metrics if isinstance(metrics, Mapping) else None))
    order = ["reproduced", "better", "met", "short", "missed", "off", "measured", "missing"]
    label = {"missing": "not in this run"}
    return ", ".join(f"{counts[k]} {label.get(k, k)}" for k in order if counts[k])


def run_report(run_dir: str | os.PathLike[str]) -> Path | None:
    """Open the run's ``report.md`` with its headline table, end it with every metric, write ``report.html``.

    The experiment's own markdown stays in between, untouched. The added blocks are marked,
    so calling this again (``neuralode report DIR``) replaces them rather than stacking copies.
    A run without ``result.json`` keeps its report as it is (only the HTML twin is written).
    Returns the HTML path, or None when the run has no report.md and no result.
    """
    from neuralode.report.headlines import headline_table
    from neuralode.report.html import write_html

    info = collect(run_dir)
    d = Path(info["dir"])
    md = d / "report.md"
    metrics = info["metrics"] if isinstance(info["metrics"], Mapping) else None
    if not md.exists() and metrics is None:
        return None
    text = md.read_text(encoding="utf-8") if md.exists() else f"# {info['name']}\n"
    text = _strip_block(_strip_block(text, _START, _END), _MSTART, _MEND)
    if metrics is not None:
        quick = bool((info["config"] or {}).get("quick"))
        table = headline_table([(info["name"], metrics)], with_experiment=False)
        if table:
            block = f"{_START}\n## Headlines\n\n" + (f"*{_QUICK_NOTE}*\n\n" if quick else "") + table + f"{_END}\n"
            lines = text.split("\n")
            if lines and lines[0].startswith("# "):
                text = lines[0] + "\n\n" + block + "\n" + "\n".join(lines[1:]).lstrip("\n")
            else:
                text = block + "\n" + text
        full = metrics_table([{"metric": k, "value": v} for k, v in metrics.items()])
        text = text.rstrip("\n") + f"\n\n{_MSTART}\n## All metrics (result.json)\n\n{full}{_MEND}\n"
        atomic_write_text(md, text)
    return write_html(md)


def summary_report(runs: Sequence[Mapping[str, Any]], root: str | os.PathLike[str], *,
                   title: str = "neuralode demo") -> str:
    """Markdown opening with every run's headline table, then one section per run.

    Each section links the run's folder and report, shows its status, all its metrics
    (one row per metric) and its figures. ``runs`` are :func:`collect` dicts; a run may also
    carry ``status="failed"`` and an ``error`` without a folder on disk (an experiment that
    failed before writing anything).
    """
    from neuralode.report.headlines import headline_table, missing_headlines

    root = Path(root)
    n_failed = sum(r["status"] != "completed" for r in runs)
    env = next((r["config"] for r in runs if isinstance(r.get("config"), Mapping)), None)
    env_line = ""
    if env is not None:
        commit = (env.get("git_commit") or "unknown")[:10]
        env_line = (f"Commit `{commit}` · torch {env.get('torch')} · python {env.get('python')} · "
                    f"device {env.get('device')} · seed {env.get('seed')} · started {env.get('started_at')}\n")
    parts = [f"# {title}\n",
             f"{len(runs)} experiment(s), {len(runs) - n_failed} completed, {n_failed} not completed.\n",
             env_line]
    completed = [(r["name"], r.get("metrics")) for r in runs if r["status"] == "completed"]
    headlines = headline_table(completed, skip_missing=True)
    if headlines:
        parts.append("## Headlines\n")
        if any(isinstance(r.get("config"), Mapping) and r["config"].get("quick") for r in runs):
            parts.append(f"*{_QUICK_NOTE}*\n")
        parts.append(headlines)
        missing = missing_headlines(completed)
        if missing:
            parts.append("Not measured by these runs' configurations (see each report): " + "; ".join(missing) + ".\n")
    overview = []
    for r in runs:
        d = r.get("dir")
        report = _rel(Path(r["report"]), root) if r.get("report") else None
        overview.append({
            "experiment": r["name"],
            "status": r["status"],
            "time (s)": r.get("wall_time_s"),
            "verdicts": _verdict_counts(r["name"], r.get("metrics")) if r["status"] == "completed"
            else (r.get("error") or "")[:200],
            "report": link(report, "report") if report else (link(_rel(Path(d), root) + "/") if d else ""),
        })
    parts.append("## Runs\n")
    parts.append(metrics_table(overview, ["experiment", "status", "time (s)", "verdicts", "report"]))
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
            parts.append(metrics_table([{"metric": k, "value": v} for k, v in m.items()]))
        run_dir = Path(d) if d is not None else root
        for fig in r.get("figures") or []:
            parts.append(image(_rel(run_dir / fig, root), Path(fig).stem.replace("_", " ")))
    return "\n".join(parts)


def write_summary(root: str | os.PathLike[str], runs: Sequence[Mapping[str, Any]] | None = None, *,
                  title: str = "neuralode demo") -> Path:
    """Write ``root/report.md`` and its self-contained twin ``root/report.html``.

    ``runs`` default to every run folder found under root. Each run's own report is rebuilt
    first (:func:`run_report`), so the summary's links reach up-to-date HTML reports.
    Returns the markdown path.
    """
    from neuralode.report.html import write_html

    root = Path(root)
    if runs is None:
        runs = [collect(p) for p in find_runs(root)]
    for r in runs:
        if r.get("dir") is not None and Path(r["dir"]).is_dir():
            run_report(r["dir"])
    path = atomic_write_text(root / "report.md", summary_report(runs, root, title=title))
    write_html(path)
    return path
