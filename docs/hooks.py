"""MkDocs hook: the experiments table of docs/experiments.md, generated from the registry.

Runs at build time (``mkdocs build``/``serve``), so every registered experiment appears with its
command, quick run time, description and the targets of its declared headlines.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- experiments-table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def experiments_table() -> str:
    import matplotlib

    matplotlib.use("Agg")
    from neuralode.experiments import registry
    from neuralode.report.headlines import headlines_for, target_text

    rows = ["| experiment | command | quick run | what it reproduces | headlines (target) |", "|---|---|---|---|---|"]
    for name, exp in registry.experiments().items():
        heads = "; ".join(f"{h.label}: {target_text(h)}" for h in headlines_for(name)) or "—"
        demo = "" if exp.in_demo else " (not in the default demo)"
        rows.append(f"| `{name}` | `neuralode run {name} --quick` | {_cell(exp.quick_time)}{demo} | "
                    f"{_cell(exp.description)} | {_cell(heads)} |")
    errors = registry.import_errors()
    if errors:
        raise RuntimeError(f"experiment modules failed to import: {errors}")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, experiments_table())
    return markdown
